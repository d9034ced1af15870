"""
How a relay reports to metrics it is given (an L{splicing.interfaces.IRelayMetrics},
such as L{splicing.app.metrics.RelayMetrics}) or to none: the relays never
import the application layer that serves the metrics.
"""


class Reporter:
    """
    One relay's line to an L{IRelayMetrics<splicing.interfaces.IRelayMetrics>},
    or to none: the relay reports unconditionally, C{report("refused",
    "allow")}, and its name is added.

    @param table: what C{metrics.watch} reads the relay's live sessions
        from, or None.
    """

    def __init__(self, metrics, relay, table=None):
        self.metrics = metrics
        self.relay = relay
        if metrics is not None and table is not None:
            metrics.watch(relay, table)

    def __call__(self, event, *args):
        if self.metrics is not None:
            getattr(self.metrics, event)(self.relay, *args)


class Readings:
    """
    What metrics and status pages read of a running TCP session, from its
    C{statistics(None)} and C{target}: a mixin for both kinds of session
    (L{splicing.relay.tcp.RelayProtocol}, L{splicing.relay.lean.LeanSession}).
    """

    __slots__ = ()

    def traffic(self):
        """Bytes so far as (direction, path, bytes): live, for metrics read while the session runs."""
        stats = self.statistics(None)
        path = stats["path"] or "none"
        return [("out", path, stats["bytes_out"]), ("in", path, stats["bytes_in"])]

    def status(self):
        """This running session for a status page: client, backend, bytes each way so far, age, path."""
        stats = self.statistics(None)
        return {"client": stats["client"], "backend": stats["backend"] or (self.target and self.target.address),
                "bytes_out": stats["bytes_out"], "bytes_in": stats["bytes_in"], "age": stats["duration"],
                "path": stats["path"]}


__all__ = ["Reporter", "Readings"]
