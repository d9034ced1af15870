"""
What an HTTP proxy session reports: bytes each way, spliced or copied, for
metrics, its status-page entry and its log event's fields.
"""

from splicing.relay.access import formatAddress


class SessionFigures:
    """
    The figures of an L{splicing.http.session.HTTPProxyProtocol}, read from
    its two flows (C{requests}, C{responses}), its backend and its factory.
    """

    @staticmethod
    def _spliced(flow):
        """Body bytes C{flow}'s splices moved, the running one's so far too."""
        return flow.spliced + (flow.splice.length if flow.splice is not None else 0)

    def _moved(self):
        """Bytes moved so far, both ways, copied or spliced."""
        return sum(self._spliced(flow) + flow.copied for flow in (self.requests, self.responses))

    def traffic(self):
        """
        The metrics' (direction, path, bytes): "out" is the requests (client
        to backend, as in the TCP relay), "in" the responses, the proxy's own
        error pages among them; path "splice" for spliced bodies, "copy" for
        what user land wrote (heads; on a transport that is not a socket,
        body bytes read together with a head).
        A session may end with a splice running (an idle abort): its bytes
        so far count.
        """
        requests, responses = self.requests, self.responses
        return [("out", "splice", self._spliced(requests)), ("out", "copy", requests.copied),
                ("in", "splice", self._spliced(responses)), ("in", "copy", responses.copied + self.ownBytes)]

    def status(self):
        """This running session for a status page: client, backend, bytes each way so far, age, path."""
        traffic = self.traffic()
        backend = self.backend.transport.getPeer() if self.backend is not None else None
        running = [f.splice.backend for f in (self.requests, self.responses) if f.splice is not None]
        return {"client": formatAddress(self.transport.getPeer()),
                "backend": formatAddress(backend) if backend is not None else None,
                "bytes_out": sum(n for way, _, n in traffic if way == "out"),
                "bytes_in": sum(n for way, _, n in traffic if way == "in"),
                "age": self.factory.reactor.seconds() - self.started, "path": running[0] if running else None}

    def statistics(self, how):
        """
        The session event's fields, named as the TCP relay's (C{relay},
        C{client}, C{backend}: its address, C{target}: its C{--connect}
        string).  C{bytes_out}/C{bytes_in}: every byte each way (requests /
        responses, the proxy's own error pages among them), the metrics'
        "out"/"in" (L{traffic}); C{spliced_in}/C{spliced_out}: the body
        bytes spliced from the client / from the backend.  A splice still
        running (a tunnel's other direction when one side closed it)
        counts with what it moved.
        """
        counts = {}
        for direction, path, n in self.traffic():
            counts[direction] = counts.get(direction, 0) + n
        backend = self.backend.transport.getPeer() if self.backend is not None else None
        fromClient, fromBackend = self._spliced(self.requests), self._spliced(self.responses)
        return {
            "relay": self.factory.name,
            "client": formatAddress(self.transport.getPeer()),
            "backend": formatAddress(backend) if backend is not None else None,
            "target": getattr(self.backend, "target", None),
            "requests": self.count,
            "bytes_out": counts["out"],
            "bytes_in": counts["in"],
            "spliced": fromClient + fromBackend,
            "copied": self.requests.copied + self.responses.copied,
            "spliced_in": fromClient,
            "spliced_out": fromBackend,
            "duration": self.factory.reactor.seconds() - self.started,
            "logs": list(self.logs),
            "how": how,
            "why": self.why,
        }


__all__ = ["SessionFigures"]
