"""
The TCP relay: a protocol and factory built on C{splice()}.

Each accepted connection gets a backend connection; then both directions are
spliced.  Half-close is relayed (EOF from one side shuts down the write side
toward the other) and the session ends when both directions are done, or
when neither moved a byte for C{idle} seconds.  Subclass L{RelayProtocol}
and override its hooks to choose the backend or see each session's end.
"""

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from splicing.result import Reason
from splicing.splice import splice


@implementer(IHalfCloseableProtocol)
class BackendProtocol(Protocol):
    """The relay's connection to the backend: bytes only move by splices."""

    relay = None

    def dataReceived(self, data):
        # Reached only between splices (e.g. before they start).
        self.relay.transport.write(data)

    def readConnectionLost(self):
        pass  # the splice's done(EOF) already relayed it

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        if self.relay is not None:
            self.relay.backendLost(reason)


@implementer(IHalfCloseableProtocol)
class RelayProtocol(Protocol):
    """
    One client session.  Hooks for subclasses: L{chooseEndpoint},
    L{sessionEnded}.
    """

    log = Logger()
    backend = None

    def connectionMade(self):
        self.transport.pauseProducing()
        self.started = self.factory.reactor.seconds()
        self.splices = []
        self.ended = False
        self._pending = []
        self._idleCall = None
        self._lastTotal = -1
        endpoint = self.chooseEndpoint()
        f = Factory.forProtocol(BackendProtocol)
        d = endpoint.connect(f)
        d.addCallbacks(self.backendConnected, self.backendFailed)

    # -- hooks

    def chooseEndpoint(self):
        """The client endpoint of this session's backend."""
        return self.factory.nextEndpoint()

    def sessionEnded(self, stats):
        """Called once per session with its statistics (a dict)."""
        self.log.info(
            "session ended: {client} -> {backend}: {bytes_out} bytes out, "
            "{bytes_in} bytes in, {duration:.3f}s, {path}, {how}",
            **stats,
        )

    # -- the session

    def dataReceived(self, data):
        # Only before the splices start, or after they ended.
        if self.backend is not None and self.backend.transport is not None:
            self.backend.transport.write(data)
        else:
            self._pending.append(data)

    def backendConnected(self, backend):
        if self.ended or not self.transport.connected:
            backend.transport.loseConnection()
            return
        self.backend = backend
        backend.relay = self
        for data in self._pending:
            backend.transport.write(data)
        self._pending = []
        f = self.factory
        out = splice(self.transport, backend.transport, backend=f.backendPath)
        back = splice(backend.transport, self.transport, backend=f.backendPath)
        self.splices = [out, back]
        out.done.addCallback(self._directionDone, backend.transport)
        back.done.addCallback(self._directionDone, self.transport)
        self.transport.resumeProducing()
        if f.idle:
            self._idleCall = f.reactor.callLater(f.idle, self._idleCheck)

    def backendFailed(self, reason):
        self.log.warn("backend connect failed: {reason}", reason=reason.getErrorMessage())
        self._finish("connect-failed")
        self.transport.loseConnection()

    def _directionDone(self, result, drain):
        if result.reason is Reason.EOF:
            if drain.connected and not drain.disconnecting:
                drain.loseWriteConnection()
        elif result.reason is not Reason.UNSPLICED:
            self._abort(result.reason.name.lower())
            return
        if all(s.result is not None for s in self.splices):
            self._close("eof")

    def _idleCheck(self):
        total = sum(s.length for s in self.splices)
        if total == self._lastTotal:
            self._idleCall = None
            self._abort("idle")
            return
        self._lastTotal = total
        self._idleCall = self.factory.reactor.callLater(self.factory.idle, self._idleCheck)

    def _close(self, how):
        self._finish(how)
        self.transport.loseConnection()
        if self.backend is not None:
            self.backend.transport.loseConnection()

    def _abort(self, how):
        self._finish(how)
        for s in self.splices:
            if s.result is None:
                s.unsplice()
        self.transport.abortConnection()
        if self.backend is not None:
            self.backend.transport.abortConnection()

    def _finish(self, how):
        if self.ended:
            return
        self.ended = True
        if self._idleCall is not None and self._idleCall.active():
            self._idleCall.cancel()
        self._idleCall = None
        lengths = [s.length for s in self.splices] or [0, 0]
        peer = self.transport.getPeer()
        backendPeer = self.backend.transport.getPeer() if self.backend else None
        self.sessionEnded(
            {
                "client": "%s:%s" % (peer.host, peer.port),
                "backend": "%s:%s" % (backendPeer.host, backendPeer.port) if backendPeer else None,
                "bytes_out": lengths[0],
                "bytes_in": lengths[1],
                "duration": self.factory.reactor.seconds() - self.started,
                "path": self.splices[0].backend if self.splices else None,
                "how": how,
            }
        )

    def readConnectionLost(self):
        pass  # the splice's done(EOF) already relayed it

    def writeConnectionLost(self):
        pass

    def backendLost(self, reason):
        if not self.ended and all(s.result is not None for s in self.splices):
            self._close("eof")

    def connectionLost(self, reason):
        if not self.ended:
            self._finish("client-lost")
        if self.backend is not None and self.backend.transport is not None:
            self.backend.transport.loseConnection()


class RelayFactory(Factory):
    """
    Makes L{RelayProtocol}s relaying to C{endpoints} in turn.

    @param endpoints: client endpoints of the backends (round-robin).
    @param backendPath: the splice path, "auto", "kernel", "mbuf" or "transport".
    @param idle: seconds without a byte either way before a session ends.
    """

    protocol = RelayProtocol

    def __init__(self, endpoints, backendPath="auto", idle=600.0, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.endpoints = list(endpoints)
        self.backendPath = backendPath
        self.idle = idle
        self._next = 0

    def nextEndpoint(self):
        if not self.endpoints:
            raise ValueError("no backend endpoint")
        e = self.endpoints[self._next % len(self.endpoints)]
        self._next += 1
        return e


__all__ = ["RelayProtocol", "RelayFactory", "BackendProtocol"]
