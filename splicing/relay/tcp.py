"""
The TCP relay: a protocol and factory built on C{splice()}.

Each accepted connection gets a backend connection; then both directions are
spliced.  Half-close is relayed (EOF from one side shuts down the write side
toward the other) and the session ends when both directions are done, when
neither moved a byte for C{idle} seconds, or when it stayed half-closed for
C{halfCloseTimeout} seconds.  Every ending is one structured log event.

Subclass L{RelayProtocol} and override its hooks: L{headerLength} and
L{chooseEndpoint} (read a few bytes in user land, then pick the backend),
L{sessionEnded} (each session's statistics).
"""

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from splicing.relay import proxyheader
from splicing.relay.accepting import exhaustionErrno
from splicing.relay.admission import Admission
from splicing.relay.access import AllowList, formatAddress
from splicing.relay.balance import Balancer, NoBackendError, Target
from splicing.relay.autosplice import autoSpliceOrCopy
from splicing.relay.dispatch import dispatchDirectly
from splicing.relay.events import connectFailure, connectionFailure, endedLine, plural
from splicing.relay.fallback import CopyDirection
from splicing.relay.idle import IdleSweep
from splicing.relay import lean
from splicing.core.endpoint import noDelay, shutWrite
from splicing.core.errors import SpliceError
from splicing.core.result import Reason
from splicing.relay.report import Readings, Reporter
from splicing.relay.sessions import SessionTable


@implementer(IHalfCloseableProtocol)
class BackendProtocol(Protocol):
    """The relay's connection to the backend: bytes only move by splices."""

    relay = None

    def dataReceived(self, data):
        # Reached only between splices, or when copying: pass the bytes on in user land.
        if not self.relay._copied("in", data):
            self.relay.transport.write(data)

    def readConnectionLost(self):
        self.relay._copied("in")  # (a splice's done(EOF) relays it otherwise)

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        if self.relay is not None:
            self.relay.backendLost(reason)


class BackendFactory(Factory):
    protocol = BackendProtocol
    noisy = False


@implementer(IHalfCloseableProtocol)
class RelayProtocol(Readings, Protocol):
    """
    One client session.

    Hooks for subclasses: L{headerLength}/L{headerTimeout} with
    L{chooseEndpoint}, and L{sessionEnded}.
    """

    log = Logger()

    #: Bytes to read in user land before choosing the backend (0: none).
    #: They are sent to the backend ahead of the spliced bytes.
    headerLength = 0
    #: Seconds to wait for L{headerLength} bytes; then choose with fewer.
    headerTimeout = 5.0
    #: False: once relaying, the session's sockets are dispatched without
    #: Twisted's legacy log context (L{splicing.relay.dispatch}); True keeps
    #: it, for a subclass whose code logs through C{twisted.python.log}.
    legacyLogContext = False

    backend = None
    target = None
    ended = False
    #: Why the session failed, in words (the log event's C{why}), and the
    #: ending that says so in place of the one seen last (a TLS failure
    #: ends a direction with what looks like EOF).
    _why = None
    _failed = None
    _begun = False
    _connectUntil = 0.0

    def connectionMade(self):
        self.started = self.factory.reactor.seconds()
        self.splices = {}
        self.header = b""
        self._clientEOF = False
        self._error = 0
        self._timers = {}
        self._phase = "proxy-header"
        proxyheader.whenHeaderRead(self.transport, self._accepted, self, self._headerRejected)
        if self._phase == "proxy-header":  # a haproxy: listener's client, its header still to come
            self._later("proxy-header", self.headerTimeout, self._headerLate)

    # -- hooks

    def chooseEndpoint(self, header):
        """
        The client endpoint of this session's backend, given the first
        bytes (at least L{headerLength} unless the client stopped early), or
        None for the factory's targets (round-robin with failover).
        """
        return None

    def sessionEnded(self, stats):
        """Called once per session with its statistics (the log event's fields)."""

    # -- the session, in order

    def _headerRejected(self, why):
        self.factory.rejected(self, why)

    def _headerLate(self):
        """No PROXY header within L{headerTimeout}: a client that sends nothing holds no socket."""
        self._headerRejected("PROXY header missing: none within %gs" % (self.headerTimeout,))
        self.transport.abortConnection()

    def _accepted(self):
        self._cancel("proxy-header")
        self.transport.pauseProducing()
        self._phase = "waiting"
        self.factory.admit(self)

    def begin(self):
        """Called by the factory when the session may start (a slot is free)."""
        self._begun = True
        if not self.transport.connected or self.transport.disconnecting:
            self._finish("client-lost")
            return
        self._phase = "header"
        if self.headerLength:
            self._later("header", self.headerTimeout, self._headerDone)
            self.transport.resumeProducing()
        else:
            self._headerDone()

    def dataReceived(self, data):
        if self._phase == "header":
            self.header += data
            if len(self.header) >= self.headerLength:
                self._headerDone()
        elif self._copied("out", data):
            pass
        elif self._error or self.ended:
            pass  # bytes a failed splice gave back: the session is ending, no backend takes them
        elif self.backend is not None and self.backend.transport is not None:
            self.backend.transport.write(data)  # between or after the splices
        else:
            self.header += data  # read before pausing took effect

    def _headerDone(self):
        if self._phase != "header":
            return
        self._phase = "connecting"
        self._cancel("header")
        self.transport.pauseProducing()
        try:
            endpoint = self.chooseEndpoint(self.header)
        except Exception:
            self.log.failure("chooseEndpoint failed")
            self._abort("error")
            return
        self._connectUntil = self.factory.reactor.seconds() + (self.factory.balancer.timeout or 10.0)
        self._connect(endpoint)

    def _connect(self, endpoint):
        d = self.factory.connectBackend(BackendFactory(), endpoint, self.transport.getPeer())
        d.addCallbacks(self._backendConnected, self._backendFailed, errbackArgs=(endpoint,))

    def _backendFailed(self, reason, endpoint=None):
        if self.ended:
            return
        error = exhaustionErrno(reason)
        if error is not None and self.factory.reactor.seconds() < self._connectUntil:
            # No descriptor for the backend socket: the client waits (accepting
            # pauses meanwhile) and the connect is tried again, as a client in
            # the backlog would be served later.
            guard = self.factory.table.guard
            guard.exhausted("connect", error)
            self._later("connect", guard.delay, self._connect, endpoint)
            return
        self._why = connectFailure(reason, self.factory.balancer.timeout)  # said by the session's event
        if reason.check(NoBackendError):
            self.factory.report("refused", "backends-down")
            self._close("backends-down")  # at once: no client waits for a backend known dead
        else:
            self._close("connect-failed")

    def _backendConnected(self, result):
        backend, self.target = result
        if self.ended or not self.transport.connected:
            backend.transport.loseConnection()
            if not self.ended:
                self._finish("client-lost")
            return
        self.backend = backend
        backend.relay = self
        self._phase = "relaying"
        for t in (self.transport, backend.transport):
            noDelay(t)
            if not self.legacyLogContext:
                dispatchDirectly(self.factory.reactor, t)
        f = self.factory
        if f.sendProxy:
            backend.transport.write(proxyheader.encode(f.sendProxy, self.transport.getPeer(), self.transport.getHost()))
        if self.header:
            backend.transport.write(self.header)
        directions = [("in", backend.transport, self.transport)]
        if not self._clientEOF:
            directions.insert(0, ("out", self.transport, backend.transport))
        try:
            for name, source, drain in directions:
                s = self.splices[name] = autoSpliceOrCopy(source, drain, f.backendPath)
                s.done.addCallback(self._directionDone, name, drain)
        except SpliceError as e:
            self.log.warn("cannot splice: {error}", error=str(e))
            self._abort("error")
            return
        if self._clientEOF:
            self._directionDone(None, "out", backend.transport)
        else:
            self.transport.resumeProducing()
        if f.idle:
            f.idleSweep.watch(self)

    def _copied(self, name, data=None):
        """A chunk (or, with no data, EOF) of a direction that is copied, not spliced."""
        direction = self.splices.get(name)
        if not isinstance(direction, CopyDirection) or not direction.copying:
            return False
        if data is None:
            direction.end()
        else:
            direction.moved(data)
        return True

    def _directionDone(self, result, name, drain):
        if self.ended:
            return
        if result is not None and result.reason is not Reason.EOF:
            if result.reason is not Reason.UNSPLICED:
                self._error = result.error
                # A TLS peer cannot half-close: its close ends this direction
                # (an error) and the other (EOF) in the same turn.  Look once
                # the turn is over before calling it an error.
                self._later("error", 0, self._errorEnd, name, result.reason.name.lower())
            return
        if drain.connected and not drain.disconnecting:
            shutWrite(drain)
        self.splices.setdefault(name, None)
        if self._bothDone():
            self._close("eof")
        elif self.factory.halfCloseTimeout:
            self._later("half-close", self.factory.halfCloseTimeout, self._abort, "half-close-timeout")

    def _errorEnd(self, name, how):
        other = self.splices.get("in" if name == "out" else "out")
        if other is not None and other.result is not None and other.result.reason is Reason.EOF:
            self._close("eof")  # the peer closed both ways at once
        else:
            self._abort(how)

    def _bothDone(self):
        return len(self.splices) == 2 and all(s is None or s.result is not None for s in self.splices.values())

    def moved(self):
        """Bytes moved so far, both ways (what the relay's idle sweep watches)."""
        return sum(s.length for s in self.splices.values() if s is not None)

    def idleTimeout(self):
        """No byte either way for C{idle} seconds (L{splicing.relay.idle.IdleSweep})."""
        if not self.ended:
            self._abort("idle")

    # -- timers

    def _later(self, name, seconds, f, *args):
        self._cancel(name)
        self._timers[name] = self.factory.reactor.callLater(seconds, f, *args)

    def _cancel(self, name=None):
        for key in [name] if name else list(self._timers):
            call = self._timers.pop(key, None)
            if call is not None and call.active():
                call.cancel()

    # -- endings

    def _close(self, how):
        """End gracefully: both connections closed after flushing."""
        self._finish(how)
        self.transport.loseConnection()
        if self.backend is not None:
            self.backend.transport.loseConnection()

    def _abort(self, how):
        """End now: unsplice what runs, reset both connections."""
        self._finish(how)
        for s in self.splices.values():
            if s is not None and s.result is None:
                s.unsplice()
        self.transport.abortConnection()
        if self.backend is not None:
            self.backend.transport.abortConnection()

    def abort(self, how="shutdown"):
        """End this session now (at shutdown, for instance)."""
        if self.ended:
            return
        if self._begun:
            self._abort(how)
        else:  # still waiting for a slot: not a session yet
            self.ended = True
            self.transport.abortConnection()

    def _finish(self, how):
        if self.ended:
            return
        self.ended = True
        self._cancel()
        self.factory.idleSweep.forget(self)
        for s in self.splices.values():
            if isinstance(s, CopyDirection) and s.copying:
                s.unsplice()  # unregister its producer, or closing would wait for it
        stats = self.statistics(self._failed or how)
        self.factory.sessionFinished(self, stats)
        self.sessionEnded(stats)

    def statistics(self, how):
        """
        The session's fields: client, backend, bytes each way, duration,
        path, how; C{copied}: the bytes (both ways) copied in user land
        rather than spliced (small reads, L{splicing.relay.autosplice}).
        """
        out, back = (self.splices.get(k) for k in ("out", "in"))
        backendPeer = self.backend.transport.getPeer() if self.backend and self.backend.transport else None
        anySplice = out or back
        return {
            "relay": self.factory.name,
            "client": formatAddress(self.transport.getPeer()),
            "backend": formatAddress(backendPeer) if backendPeer else None,
            "target": self.target.name if self.target else None,
            "bytes_out": len(self.header) + (out.length if out else 0),
            "bytes_in": back.length if back else 0,
            "duration": self.factory.reactor.seconds() - self.started,
            "path": anySplice.backend if anySplice else None,
            "copied": sum(getattr(s, "copied", 0) for s in (out, back) if s is not None),
            "how": how,
            "why": self._why,
            "error": self._error,
        }

    def readConnectionLost(self):
        # Seen only outside the splices: while reading the header, or copying.
        if self._copied("out"):
            return
        self._clientEOF = True
        if self._phase == "header":
            self._headerDone()

    def writeConnectionLost(self):
        pass

    def backendLost(self, reason):
        why = connectionFailure(reason, self.backend.transport if self.backend is not None else None)
        if why is not None and not self.ended:
            self._why, self._failed = why, "tls-error"  # said at the end, whichever way it comes
        if not self.ended and self._bothDone():
            self._close("eof")
        elif not self.ended and not self.splices:
            self._close("backend-lost")
        self._release()

    def _release(self):
        """
        Once both connections are gone, drop the references that make a
        session a reference cycle (splices, their Deferreds, the backend),
        so its memory returns at once rather than at the next full
        garbage collection.
        """
        if self.ended and not self.transport.connected and (
                self.backend is None or not self.backend.transport or not self.backend.transport.connected):
            if self.backend is not None:
                self.backend.relay = None
            self.splices = {}

    def connectionLost(self, reason):
        self._cancel()
        if not self.ended and self._begun:
            self._finish("client-lost")
        self.factory.forget(self)
        if self.backend is not None and self.backend.transport is not None:
            self.backend.transport.loseConnection()
        self._release()


class RelayFactory(Admission, Factory):
    """
    Makes L{RelayProtocol}s relaying to C{endpoints} in turn.

    @param endpoints: client endpoints of the backends (round-robin with
        failover), or a L{splicing.relay.balance.Balancer}.
    @param backendPath: the splice path, "auto", "kernel", "mbuf" or "transport".
    @param idle: seconds without a byte either way before a session ends (0: never).
    @param halfCloseTimeout: seconds a half-closed session may linger (0: no bound).
    @param sendProxy: None, "v1" or "v2": a PROXY header to send to the backend.
    @param allow: a L{splicing.relay.access.AllowList} (or CIDR strings), empty for all.
    @param maxSessions: concurrent sessions (0: no cap); when full, the
        listening ports stop accepting and new clients wait in the backlog.
    @param name: the relay's name in logs and metrics.
    @param metrics: an L{splicing.interfaces.IRelayMetrics}, or None.
    """

    protocol = RelayProtocol
    log = Logger()
    kind = "tcp"
    noisy = False  # no "Starting factory" lines: the relay logs its own start

    def __init__(self, endpoints, backendPath="auto", idle=600.0, reactor=None, halfCloseTimeout=0.0,
                 sendProxy=None, allow=(), maxSessions=0, connectTimeout=10.0, name="tcp", metrics=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.name = name
        if isinstance(endpoints, Balancer):
            self.balancer = endpoints
        else:
            targets = [(e, getattr(e, "description", repr(e))) for e in endpoints]
            self.balancer = Balancer(targets, reactor, timeout=connectTimeout)
        self.balancer.onFailure = self._connectFailed
        self.backendPath = backendPath
        self.idle = idle
        self.idleSweep = IdleSweep(reactor, idle)
        self.halfCloseTimeout = halfCloseTimeout
        if sendProxy is not None and sendProxy not in proxyheader.VERSIONS:
            raise ValueError("sendProxy must be v1 or v2, not %r" % (sendProxy,))
        self.sendProxy = sendProxy
        self.allow = allow if isinstance(allow, AllowList) else AllowList(allow)
        self.table = SessionTable(maxSessions)
        self.report = Reporter(metrics, name, self.table)

    #: Serve plain TCP ports through lean sessions (L{splicing.relay.lean}) when
    #: nothing needs Twisted's transports; False keeps every session a L{RelayProtocol}.
    leanSessions = True

    def portListening(self, port):
        """
        C{port} (listening with this factory) is ready: serve it with lean
        sessions when the stock protocol runs and nothing else needs
        transports (L{splicing.relay.lean.servable}).  True if so.
        """
        if (self.leanSessions and self.protocol is RelayProtocol
                and type(self).buildProtocol is Factory.buildProtocol and lean.servable(self, port)):
            lean.LeanListener(self, port)
            return True
        return False

    def backends(self):
        """The L{splicing.relay.balance.Target}s, with their state (for status pages and metrics)."""
        return list(self.balancer.targets)

    def connectBackend(self, factory, endpoint=None, client=None):
        """A Deferred (protocol, target): C{endpoint}, or the targets' choice for C{client}."""
        if endpoint is None:
            return self.balancer.connect(factory, client)
        target = Target(endpoint, getattr(endpoint, "description", repr(endpoint)))
        return Balancer([target], self.reactor, self.balancer.timeout, onFailure=self._connectFailed).connect(factory)

    def _connectFailed(self, target, failure):
        self.log.warn("backend {target} failed: {error}", target=target.name,
                      error=connectFailure(failure, self.balancer.timeout), relay=self.name)
        self.report("connectFailed", target.name)

    def sessionFinished(self, protocol, stats):
        out, back = plural(stats["bytes_out"], "byte"), plural(stats["bytes_in"], "byte")
        self.log.info(endedLine(stats, out, back), bytes_out_text=out, bytes_in_text=back, **stats)
        self.report("sessionEnded", stats)
        self.table.release(protocol)

    def forget(self, protocol):
        self.table.release(protocol)


__all__ = ["RelayProtocol", "RelayFactory", "BackendProtocol", "formatAddress"]
