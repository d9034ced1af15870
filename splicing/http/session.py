"""
One client connection through the HTTP-filtering proxy: its session.

Each client connection gets one backend connection.  Two L{Flow}s carry the
requests and the responses: heads are parsed strictly and filtered in user
land, bodies are spliced.  Requests may be pipelined; responses are matched
to them in order.  Subclass L{HTTPProxyProtocol} to decide in Python
(L{HTTPProxyProtocol.filterRequest}, L{HTTPProxyProtocol.filterResponse},
L{HTTPProxyProtocol.chooseEndpoint}) beside or instead of the rules.  The
factory that makes these, with the proxy's settings, is
L{splicing.http.proxy.HTTPProxyFactory}.
"""

from collections import deque

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from splicing.relay import proxyheader
from splicing.relay.balance import BalancedEndpoint, NoBackendError, connectFrom
from splicing.relay.dispatch import dispatchDirectly
from splicing.relay.events import connectFailure, connectionFailure, plural
from splicing.core.endpoint import noDelay, shutWrite
from splicing.http.closing import HALF_CLOSED_STALL, Linger, StallWatch, isOpen, reset, writesPending
from splicing.http.deadline import Deadline
from splicing.http.errors import HTTPError
from splicing.http.figures import SessionFigures
from splicing.http.flow import CHUNKED, DONE, HEAD, LENGTH, UNTIL_EOF, Flow
from splicing.http.head import errorResponse, parseRequestHead, parseResponseHead


def _ruleBlock(status, label, answer, verdict):
    """
    A block by the rules; without C{answer} the connection just closes
    (relayd without C{return error}).  Its C{why} names the rule.
    """
    e = HTTPError(status, label)
    e.silent = not answer
    rule = verdict.rule
    where = " %s:%s" % (rule.filename, rule.line) if rule is not None else ""
    e.why = "blocked by the rule%s (%s)" % (where, label)
    return e


@implementer(IHalfCloseableProtocol)
class _BackendProtocol(Protocol):
    """The proxy's connection to the origin: its bytes feed the response flow."""

    proxy = None

    def dataReceived(self, data):
        if self.proxy is None:
            return  # the session is over: bytes a splice gave back go nowhere
        try:
            self.proxy.responses.dataReceived(data)
        except HTTPError as e:
            # whatever the parser found, for the client it is a bad gateway
            self.proxy.backendInvalid(e)

    def readConnectionLost(self):
        if self.proxy is not None:
            self.proxy.responses.readEnded()
            self.proxy.backendEnded()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        if self.proxy is not None:
            self.proxy.backendEnded(connectionFailure(reason, self.transport))


class _BackendFactory(Factory):
    protocol = _BackendProtocol
    noisy = False  # no "Starting factory"/"Stopping factory" per backend connection


@implementer(IHalfCloseableProtocol)
class HTTPProxyProtocol(SessionFigures, Protocol):
    """One client connection through the proxy."""

    #: The namespace it had before the protocol moved out of proxy.py: what
    #: operators' log filters match (the factory's is unchanged).
    log = Logger(namespace="splicing.http.proxy.HTTPProxyProtocol")
    why = None  # why the session failed, in words (the log event's "why")
    #: seconds a response may stall once the client ended its side (see L{_clientEnded})
    halfClosedStall = HALF_CLOSED_STALL
    #: True: the reactor wraps each readiness event of the session's sockets in
    #: Twisted's legacy log context, so a C{twisted.python.log} call in a hook
    #: carries the connection's C{[system]} prefix (about 1.3 µs an event).
    #: False: they are dispatched directly (L{splicing.relay.dispatch});
    #: C{twisted.logger} events, the proxy's own included, are the same either way.
    legacyLogContext = False

    def connectionMade(self):
        self.ended = False
        self.backend = None
        self.linger = Linger(self.factory.reactor, self.factory.idle)
        proxyheader.whenHeaderRejected(self.transport, lambda why: self.factory.rejected(self, why))
        if not self.legacyLogContext:
            dispatchDirectly(self.factory.reactor, self.transport)
        self.transport.pauseProducing()
        self.factory.admit(self)

    def begin(self):
        """A session slot is ours (see L{splicing.relay.sessions.SessionTable})."""
        f = self.factory
        self.requests = Flow(self, "request", f.headerLimit, f.maxHeaderLines, f.backendPath)
        self.responses = Flow(self, "response", f.headerLimit, f.maxHeaderLines, f.backendPath)
        self.requests.src = self.transport
        self.responses.dst = self.transport
        self.backend = None
        self.connecting = False
        self.pending = deque()  # request heads waiting for their responses
        self.pendingError = None
        self.closing = False
        self.ended = False
        self.started = f.reactor.seconds()
        self.count = 0
        self.ownBytes = 0  # the proxy's own error responses, for the metrics
        self.logs = []
        self.context = f.newContext(self.transport)
        self._filtersRequests, self._filtersResponses = self._hooks()
        self._headTimer = Deadline(f.reactor, f.headerTimeout, self._headerTimeout)
        self._headTimer.start()
        self._backendTimer = Deadline(f.reactor, f.backendTimeout, self._backendTimeout)
        self._idleTimer = None
        self._clientGone = StallWatch(f.reactor, self.halfClosedStall, self._moved, self._clientGoneStall)
        self._lastMoved, self._lastMove = 0, self.started
        if f.idle:
            self._idleTimer = f.reactor.callLater(f.idle / 4.0, self._idleCheck)
        self.transport.resumeProducing()

    # -- hooks for subclasses

    def _hooks(self):
        """Whether this class filters requests, responses in Python (see L{filterRequest})."""
        cls = type(self)
        return (cls.filterRequest is not HTTPProxyProtocol.filterRequest,
                cls.filterResponse is not HTTPProxyProtocol.filterResponse)

    def filterRequest(self, head):
        """Raise L{HTTPError} to refuse a request; may edit C{head}."""

    def filterResponse(self, request, response):
        """Raise L{HTTPError} to refuse a response; may edit C{response}."""

    def chooseEndpoint(self, head, group):
        """The client endpoint for this connection's backend (C{group}: a rule's C{forward to})."""
        return self.factory.endpointFor(group)

    def sessionEnded(self, stats):
        self.log.info(
            "http session ended: {client} -> {backend}: {requests_text}, {bytes_out_text} out, "
            "{bytes_in_text} in, {spliced_text} spliced, {copied_text} copied, {how}"
            + (": {why}" if stats.get("why") else ""),
            requests_text=plural(stats["requests"], "request"),
            bytes_out_text=plural(stats["bytes_out"], "byte"),
            bytes_in_text=plural(stats["bytes_in"], "byte"),
            spliced_text=plural(stats["spliced"], "byte"),
            copied_text=plural(stats["copied"], "byte"),
            **stats,
        )

    # -- client bytes

    def dataReceived(self, data):
        try:
            self.requests.dataReceived(data)
        except HTTPError as e:
            self.fail(e)

    def readConnectionLost(self):
        self.requests.readEnded()
        if self.ended:
            return
        if self.requests.state in (LENGTH, CHUNKED):
            self._requestCut()
            return
        tunnel = self.requests.state == UNTIL_EOF
        self.requests.stop()
        if not self.pending and self.backend is not None:
            self.backend.transport.loseConnection()
        if not self.pending:
            self.close("client-eof")
        elif not tunnel:
            self._clientEnded()

    def _clientEnded(self):
        """
        The client's EOF came with responses outstanding.  A client that
        half-closed reads on, so they are still forwarded; but one that
        closed and left (curl --max-time, a closed tab, an SSE client
        gone) is only found out by writing to it, which a stalled origin
        never makes us do: once the responses make no progress for
        L{halfClosedStall} seconds, the session ends (C{client-gone}).
        """
        self._clientGone.start()

    def _clientGoneStall(self):
        if self.ended:
            return
        self.why = "the client ended its side and the response made no progress for %g s" % (
            self.halfClosedStall,)
        self._cut("client-gone")

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        if not hasattr(self, "requests"):  # never began: it waited for a slot
            self.ended = True
            self.factory.table.release(self)
            return
        self.requests.stop()
        self.responses.stop()
        self._cancelTimers()
        self.linger.cancel()
        if self.backend is not None:
            self.backend.proxy = None
            if not self.ended or writesPending(self.backend.transport):
                # Nobody is left to answer: reset the origin's connection
                # rather than wait on writes it may never read.  (An ended
                # session closed it already, or aborted it: a second close
                # of an aborted transport asks for write events no handler
                # serves.)
                reset(self.backend.transport)
        self._finish("closed")

    # -- heads (called by the flows)

    def headReceived(self, flow, data):
        if flow is self.requests:
            self._request(data)
        else:
            self._response(data)

    def _request(self, data):
        f = self.factory
        head = parseRequestHead(data)
        head.dropUpgrade(b"h2c")  # withdrawn, as nginx does: HTTP/2 would hide later requests from the rules
        if head.upgrade and not f.allowUpgrade:
            raise HTTPError(403, "protocol upgrade (%s) is not allowed here" % (head.upgrade,))
        if head.isConnect and not f.allowConnect:
            raise HTTPError(403, "CONNECT is not allowed here")
        verdict = None
        if f.rules is not None:
            try:
                verdict = f.applyRules("request", head, self.context)
            except ValueError as e:  # an action the head refused (e.g. removing Host)
                raise HTTPError(500, "a filter rule could not be applied: %s" % (e,))
        if verdict is not None:
            self.logs.extend(verdict.logs)
            if verdict.action == "block":
                raise _ruleBlock(403, verdict.label or "blocked by a filter rule", f.rules.answers(verdict), verdict)
        if self._filtersRequests:
            head.forgetRaw()  # a hook may edit the fields in place
            self.filterRequest(head)
        self._headTimer.stop()
        self.count += 1
        f.report("httpRequest")
        self.pending.append(head)
        if self.backend is None and not self.connecting:
            self._connect(head, verdict.forward if verdict is not None else None)
        self.requests.write(head.serialize())
        if head.upgrade or head.isConnect:
            self._armBackendTimer()
            self.requests.wait()  # the response decides: tunnel or not
        else:
            self.requests.startBody(head.bodyKind, head.contentLength)

    def _response(self, data):
        if not self.pending:
            raise HTTPError(502, "the backend answered a request nobody made")
        request = self.pending[0]
        response = parseResponseHead(data, request.method)
        verdict = None
        if self.factory.rules is not None:
            try:
                verdict = self.factory.applyRules("response", response, self.context, request)
            except ValueError as e:
                raise HTTPError(502, "a filter rule could not be applied: %s" % (e,))
        if verdict is not None:
            self.logs.extend(verdict.logs)
            if verdict.action == "block":
                raise _ruleBlock(502, verdict.label or "response blocked by a filter rule",
                                 self.factory.rules.answers(verdict), verdict)
        if self._filtersResponses:
            response.forgetRaw()
            self.filterResponse(request, response)
        self._cancelBackendTimer()
        self.responses.write(response.serialize())
        self.factory.report("httpResponse", response.status)
        if 100 <= response.status < 200 and response.status != 101:
            return  # an interim response: the final one follows
        tunnel = (response.status == 101 and request.upgrade) or (
            request.isConnect and 200 <= response.status < 300
        )
        if tunnel:
            self.responses.startBody("until-eof")
            self.requests.tunnel()
            return
        if request.upgrade or request.isConnect:
            self.closing = True  # refused upgrade: the request may have been half-read
        if not (response.keepAlive and request.keepAlive):
            self.closing = True
        self.responses.startBody(response.bodyKind, response.contentLength)

    def _armBackendTimer(self):
        if not self._backendTimer.armed:
            self._backendTimer.start()

    def bodyDone(self, flow):
        if flow is self.requests:
            self._armBackendTimer()  # the request is all out: now the backend owes an answer
            if not self.pending[-1].keepAlive:
                self.requests.stop()
            return
        if flow.state == DONE:  # close-delimited body ended
            self.close("eof")
            return
        self.pending.popleft()
        if self.pendingError is not None and not self.pending:
            self._sendError(self.pendingError)
        elif self.closing:
            self.close("close")
        elif self.pending:
            self._armBackendTimer()
        elif not self.pending and self.requests.state == DONE:
            self.close("done")
        elif not self.pending and not self._headTimer.armed:
            self._headTimer.start()

    def sourceEnded(self, flow):
        if flow is self.requests and flow.state in (LENGTH, CHUNKED):
            self._requestCut()
        elif flow is self.requests:  # the client's half-close inside a tunnel
            if self.backend is not None:
                shutWrite(self.backend.transport)
        elif flow.state != DONE:
            self.close("backend-eof")

    def flowFailed(self, flow, reason, error):
        how = "%s-%s" % (flow.name, reason.name.lower())
        if flow is self.responses:
            self._responseCut(how)
        else:
            self.abort(how)

    def _requestCut(self):
        """
        The client's EOF came inside a request body: the request can never
        complete, and no answer is owed.  The origin must not wait for the
        rest, nor take the part for a request.
        """
        self._cut("request-incomplete")

    def _responseCut(self, how):
        """
        A response's splice failed: the origin reset or vanished (a TLS
        origin closing without close_notify looks so), or the client did.
        What the client was sent is still delivered before its connection
        closes (a client that is gone is closed by its own error): a
        close-delimited body ends there, as HTTP defines it; a body with a
        length or chunks stays short of its end, which tells the client it
        is incomplete.
        """
        self._cut("eof" if self.responses.state == UNTIL_EOF else how)

    def _cut(self, how):
        """End the session: reset the origin's connection, flush and close the client's."""
        self._finish(how)
        self.requests.stop()
        self.responses.stop()
        if self.backend is not None:
            reset(self.backend.transport)
        self.transport.loseConnection()
        self.linger.start(self.transport)

    def flowError(self, flow, error):
        """Bad framing found while a body was spliced, or a head refused that a flow read itself."""
        if flow is self.requests:
            self.fail(error)
        else:
            self.backendInvalid(error)

    # -- the backend

    def _connect(self, head, group):
        self.connecting = True
        endpoint = self.chooseEndpoint(head, group)
        d = connectFrom(endpoint, _BackendFactory(), self.transport.getPeer())
        d.addCallbacks(self._backendConnected, self._backendFailed, errbackArgs=(endpoint,))

    def _backendConnected(self, backend):
        self.connecting = False
        if self.ended:
            backend.transport.loseConnection()
            return
        self.backend = backend
        backend.proxy = self
        if not self.legacyLogContext:
            dispatchDirectly(self.factory.reactor, backend.transport)
        noDelay(self.transport)
        noDelay(backend.transport)
        self.responses.src = backend.transport
        try:
            self.requests.connect(backend.transport)
        except HTTPError as e:
            self.fail(e)

    def _backendFailed(self, reason, endpoint):
        self.connecting = False
        self.why = "backend connect failed: " + connectFailure(reason)
        if not isinstance(endpoint, BalancedEndpoint):  # a balancer counted each target it tried
            self.factory.report("connectFailed", getattr(endpoint, "description", repr(endpoint)))
        if reason.check(NoBackendError):
            self.factory.report("refused", "backends-down")
            self._sendError(HTTPError(502, "every backend is down"))
            return
        self._sendError(HTTPError(502, "the backend is unreachable"))

    def backendInvalid(self, error):
        self._sendError(HTTPError(502, "invalid response from the backend: %s" % (error.reason,)))

    def backendEnded(self, tlsFailed=None):
        """The backend closed (C{tlsFailed}: why its TLS failed, in words, if it did)."""
        if self.ended:
            return
        if tlsFailed is not None:
            self.why = "backend TLS failed: " + tlsFailed
        if self.pending and self.responses.state == HEAD:
            self._sendError(HTTPError(502, "TLS with the backend failed" if tlsFailed else
                                      "the backend closed the connection"))
        else:
            self.close("backend-closed")

    # -- timers

    def _headerTimeout(self):
        if self.pending:
            return
        if self.requests.reader.buffered:
            self._sendError(HTTPError(408, "the request head did not arrive in time"))
        else:
            self.close("idle")

    def _backendTimeout(self):
        if self.pending:
            self._sendError(HTTPError(504, "the backend did not answer in time"))

    def _idleCheck(self):
        """
        relayd's session timeout: end the session once no byte moved either
        way for C{idle} seconds.  A request body that stopped coming (a
        slowloris body, which the header timeout does not cover) gets 408.
        """
        f = self.factory
        self._idleTimer = None
        now, moved = f.reactor.seconds(), self._moved()
        if moved != self._lastMoved:
            self._lastMoved, self._lastMove = moved, now
        elif now - self._lastMove >= f.idle:
            if self.requests.state in (LENGTH, CHUNKED) and self.responses.state == HEAD:
                self.fail(HTTPError(408, "the request body did not arrive in time"))
            else:
                self.abort("idle")
            return
        self._idleTimer = f.reactor.callLater(
            min(f.idle / 4.0, self._lastMove + f.idle - now), self._idleCheck)

    def _cancelBackendTimer(self):
        self._backendTimer.stop()

    def _cancelTimers(self):
        self._headTimer.cancel()
        self._clientGone.cancel()
        self._backendTimer.cancel()
        if self._idleTimer is not None and self._idleTimer.active():
            self._idleTimer.cancel()
        self._idleTimer = None

    # -- endings

    def fail(self, error):
        """A request could not be accepted: answer once earlier responses are out."""
        inBody = self.requests.state in (LENGTH, CHUNKED)
        self.requests.stop()
        if inBody and self.pending:
            # its head went out, its body is broken: no answer will come for it
            self.pending.pop()
            if self.backend is not None:
                shutWrite(self.backend.transport)
        if self.pending:
            self.pendingError = error
        else:
            self._sendError(error)

    def _sendError(self, error):
        self.responses.stop()
        if self.ended:
            return
        self.logs.append("%d %s" % (error.status, error.reason))
        if self.why is None:
            self.why = getattr(error, "why", None) or error.reason
        if not getattr(error, "silent", False):
            response = errorResponse(error.status, error.reason, close=True)
            self.ownBytes += len(response)
            self.factory.report("httpResponse", error.status)
            self.transport.write(response)
        self.close("error-%d" % error.status)

    def close(self, how, abort=False):
        """End the session: flush and close both sides (or reset them)."""
        self._finish(how)
        self.requests.stop()
        self.responses.stop()
        transports = (self.transport, self.backend.transport if self.backend else None)
        for t in transports:
            if t is not None and isOpen(t):
                t.abortConnection() if abort else t.loseConnection()
        if not abort:
            self.linger.start(*transports)

    def abort(self, how):
        if not hasattr(self, "requests"):
            self.transport.abortConnection()
            return
        self.close(how, abort=True)

    def _finish(self, how):
        if self.ended:
            return
        self.ended = True
        self.factory.table.release(self)
        self._cancelTimers()
        self.factory.report("ended", how, self.traffic())
        self.sessionEnded(self.statistics(how))


__all__ = ["HTTPProxyProtocol"]
