"""
The TCP relay's lean session: two plain sockets, no Twisted transport or protocol.

A short session through L{splicing.relay.tcp.RelayProtocol} costs two
Twisted TCP transports (accept, an endpoint's connect with its Deferreds
and timeouts, a protocol each, C{callWithLogger} around every event, close)
before and after the few bytes it moves: most of its CPU, and what the
port forwarder pays too.  When nothing needs those objects (the stock
protocol, a plain C{tcp:} listener, plain TCP backends given as addresses,
the default C{auto} path, no PROXY header to send), the relay's port hands
each accepted socket to a L{LeanSession} instead: the backend socket is
connected with C{connect_ex} in the balancer's order, both sockets wait in
one private epoll (L{splicing.relay.leanloop}), and each direction is a
L{splicing.relay.leancopy.LeanDirection} (small reads copied with one
C{recv_into} and one C{send}, bulk spliced through a pooled pipe, as
L{splicing.relay.autosplice} does for transports).

The session keeps everything the relay's users see: the same log event and
statistics, C{--allow}, C{--max-sessions}, the descriptor guard, health
checks and balancing with failover, the idle sweep, half-close relaying and
its timeout, metrics and the status page.  Anything else (TLS, PROXY
headers, UNIX sockets, host names, forced paths, subclass hooks) keeps the
transport-based session.
"""

import _socket
import errno
import os
import socket
import struct

from twisted.internet import error, tcp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from splicing.core.result import Reason
from splicing.relay.access import formatAddress
from splicing.relay.accepting import EXHAUSTION
from splicing.relay.balance import NoBackendError
from splicing.relay.events import connectFailure
from splicing.relay.idle import DeadlineSweep
from splicing.relay.leancopy import ERR, IN, OUT, LeanDirection
from splicing.relay.leanloop import sessionLoop
from splicing.relay.report import Readings


_STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC


def _address(endpoint):
    """
    (family, (host, port), bind address or None, "HOST:PORT", the
    endpoint's own connect timeout) of a TCP client endpoint naming an
    address; None for any other endpoint.
    """
    if type(endpoint) not in (TCP4ClientEndpoint, TCP6ClientEndpoint):
        return None
    host = getattr(endpoint, "_host", None)
    if not isinstance(host, str):
        return None
    if isIPAddress(host):
        family = socket.AF_INET
    elif isIPv6Address(host):
        family = socket.AF_INET6
    else:
        return None
    port = endpoint._port
    return (family, (host, port), getattr(endpoint, "_bindAddress", None),
            ("[%s]:%s" if ":" in host else "%s:%s") % (host, port), getattr(endpoint, "_timeout", 30) or 0)


def servable(factory, port):
    """
    Whether C{port}'s clients can be served by lean sessions: a plain TCP
    port feeding C{factory} directly, the C{auto} path, no PROXY header to
    send, every target a TCP address.  (Whether the factory's protocol has
    hooks is the factory's to say.)
    """
    if type(port) is not tcp.Port or port.factory is not factory or not hasattr(os, "splice"):
        return False
    if factory.backendPath != "auto" or factory.sendProxy is not None:
        return False
    targets = factory.balancer.targets
    return bool(targets) and all(_address(t.endpoint) is not None for t in targets)


_RESET = "reset"


def _closeSocket(loop, sock, how):
    """
    Close C{sock}: C{how} None just closes, C{socket.SHUT_RDWR} shuts it
    down first, L{_RESET} resets the connection (SO_LINGER 0).
    """
    loop.forget(sock.fileno())
    try:
        if how == _RESET:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
        elif how is not None:
            sock.shutdown(how)
    except OSError:
        pass
    sock.close()


_LINGER_0 = struct.pack("ii", 1, 0)


class LeanListener:
    """
    Accepts for the relay on one listening port: the port's accept batch
    (C{doRead}, still bounded by the descriptor guard and paused by the
    session table) takes plain sockets and makes each a L{LeanSession}.
    """

    log = Logger()

    def __init__(self, factory, port):
        self.factory = factory
        self.port = port
        self.loop = sessionLoop(factory.reactor)
        self.addresses = {id(t): _address(t.endpoint) for t in factory.balancer.targets}
        reactor = factory.reactor
        timeouts = [factory.balancer.timeout or a[4] for a in self.addresses.values()]
        tick = min(1.0, min([t for t in timeouts if t] or [4.0]) / 4.0)
        self.connecting = DeadlineSweep(reactor, tick)  # connect timeouts: one timer, not one per session
        self._family = port.socket.family
        self._accept = port.socket._accept  # (fd, address): no Python socket object to build
        # Accepted sockets inherit TCP_NODELAY from the listening one (Linux): one call, not one per client.
        port.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        port.doRead = self.doRead

    def doRead(self):
        """
        Accept up to the port's C{numberAccepts} clients, growing and
        shrinking the batch as Twisted's port does.  Out of descriptors,
        the guard pauses accepting; the clients wait in the backlog.
        """
        port, accept, family = self.port, self._accept, self._family
        limit = port.numberAccepts
        accepted = 0
        while accepted < limit:
            try:
                fd, address = accept()
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno in (errno.ECONNABORTED, errno.EPERM, errno.EPROTO, errno.EINTR):
                    continue  # that client gave up (or a firewall refused it): the next
                if e.errno in EXHAUSTION:
                    self.factory.table.guard.exhausted("accept", e.errno)
                else:
                    self.log.error("accept failed on {port}: {error}", port=formatAddress(port.getHost()),
                                   error=os.strerror(e.errno))
                break
            accepted += 1
            LeanSession(self, _socket.socket(family, socket.SOCK_STREAM, 0, fd), address).accepted()
        port.numberAccepts = limit + 20 if accepted == limit else max(1, accepted)


class LeanSession(Readings):
    """
    One client's session over plain sockets (see the module).  To the relay
    it looks like a L{splicing.relay.tcp.RelayProtocol}: C{begin}, C{abort},
    C{moved}/C{idleTimeout}, C{statistics}, C{traffic}, C{status}.
    """

    __slots__ = ("listener", "factory", "loop", "address", "client", "backend", "target", "out", "back", "started",
                 "ended", "_begun", "_why", "_error", "_order", "_until", "_failure", "_timer", "_masks",
                 "__weakref__")

    def __init__(self, listener, client, address):
        self.listener = listener
        self.factory = listener.factory
        self.loop = listener.loop
        self.client = client
        self.address = address  # the peer's (host, port[, flow, scope]) as accept() gave it
        self.backend = self.target = self.out = self.back = None
        self.ended = self._begun = False
        self._why = self._failure = self._timer = self._order = None
        self._error = 0
        self._masks = [0, 0]  # what the epoll watches on the client, the backend (None: not registered)

    # -- accepted

    def accepted(self):
        """Admit the client, or refuse it."""
        f = self.factory
        self.started = f.reactor.seconds()
        self.client.setblocking(False)
        if f.allow.networks and not f.allows(self.peer):
            self.ended = True
            _closeSocket(self.loop, self.client, _RESET)  # refused: reset, as the transport path does
            return
        f.table.admit(self)

    @property
    def peer(self):
        """The client's Twisted address (made when asked: the allow list, the status page)."""
        host, port = self.address[:2]
        return (IPv6Address if ":" in host else IPv4Address)("TCP", host, port)

    def begin(self):
        """Called by the session table when a slot is free: connect the backend."""
        self._begun = True
        f = self.factory
        balancer = f.balancer
        if balancer.allDown():
            self._why = connectFailure(NoBackendError())
            f.report("refused", "backends-down")
            self._close("backends-down")  # at once: no client waits for a backend known dead
            return
        self._order = balancer.order(self.address[0])
        self._until = f.reactor.seconds() + (balancer.timeout or 10.0)
        self._connectNext()

    # -- connecting, in the balancer's order

    def _connectNext(self):
        if self.ended:
            return
        if not self._order:
            self._why = connectFailure(self._failure or ValueError("no backend endpoint"), self.factory.balancer.timeout)
            self._close("connect-failed")
            return
        family, address, bind, _, ownTimeout = self.listener.addresses[id(self._order[0])]
        try:
            s = _socket.socket(family, _STREAM)  # (the C object: no Python wrapper to build and close)
        except OSError as e:
            if e.errno in EXHAUSTION:
                self._exhausted(e.errno)
                return
            raise
        self.backend = s
        try:
            if bind is not None:
                s.bind(bind)
            err = s.connect_ex(address)
        except OSError as e:
            err = e.errno
        if err == errno.EINPROGRESS:
            self.loop.register(s.fileno(), self._backendEvent, OUT)
            self._masks[1] = OUT
            # The balancer's connect timeout, else the endpoint's (Twisted's connectTCP applies it).
            timeout = self.factory.balancer.timeout or ownTimeout
            if timeout:
                self.listener.connecting.add(self, timeout, self._timedOut)
        elif err:
            self._connectFailed(err)
        else:
            self._connected()

    def _exhausted(self, err):
        """No descriptor for the backend socket: wait (accepting pauses meanwhile) and try again."""
        guard = self.factory.table.guard
        guard.exhausted("connect", err)
        if self.factory.reactor.seconds() < self._until:
            self._timer = self.factory.reactor.callLater(guard.delay, self._retry)
        else:
            self._why = connectFailure(OSError(err, os.strerror(err)))
            self._close("connect-failed")

    def _retry(self):
        self._timer = None
        self._connectNext()

    def _timedOut(self):
        self._connectFailed(errno.ETIMEDOUT)

    def _connectFailed(self, err):
        self.listener.connecting.discard(self)
        self._dropBackend()
        target = self._order.pop(0)
        if err == errno.ETIMEDOUT:
            failure = Failure(error.TimeoutError("connect timed out"))
        else:
            failure = Failure(error.getConnectError((err, os.strerror(err))))
        self._failure = failure
        self.factory.balancer.missed(target, failure)
        self._connectNext()

    def _connected(self):
        self.listener.connecting.discard(self)
        target = self.target = self._order[0]
        self._order = None
        f = self.factory
        f.balancer.reached(target)
        target.sessions += 1
        client, backend = self.client, self.backend
        backend.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # (the client's came from the listener)
        self.out = LeanDirection(self, client, backend)
        self.back = LeanDirection(self, backend, client)
        self.loop.register(client.fileno(), self._clientEvent, IN)
        if self._masks[1]:
            self.loop.modify(backend.fileno(), IN)
        else:
            self.loop.register(backend.fileno(), self._backendEvent, IN)
        self._masks = [IN, IN]
        if f.idle:
            f.idleSweep.watch(self)

    # -- events

    def _clientEvent(self, events):
        if events & OUT:
            self.back.writable()
            if self.ended:
                return
        if events & (IN | ERR):
            if (self._masks[0] or 0) & IN:  # (None: out of the epoll after a hang-up)
                self.out.readable()
            elif not events & OUT:
                self._quiet(0, events)

    def _backendEvent(self, events):
        if self.out is None:
            if self._order is not None:
                # Writable and no error reported: connected (SO_ERROR is asked only when it matters).
                err = self.backend.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if events & ERR else 0
                self._connectFailed(err or errno.ECONNREFUSED) if events & ERR else self._connected()
            return
        if events & OUT:
            self.out.writable()
            if self.ended:
                return
        if events & (IN | ERR):
            if (self._masks[1] or 0) & IN:  # (None: out of the epoll after a hang-up)
                self.back.readable()
            elif not events & OUT:
                self._quiet(1, events)

    def _quiet(self, which, events):
        """
        An error or hang-up on a socket neither direction reads or writes
        now (epoll reports those unasked, and again on every turn): a
        pending error fails the session; otherwise the socket leaves the
        epoll until a direction needs it again (L{rewatch}).  A hang-up may
        leave bytes unread (a direction waiting for a pipe, or for its drain):
        they are read once it is back.
        """
        sock = self.client if which == 0 else self.backend
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.failed(self.out if which == 0 else self.back, err)
        elif self._masks[which] is not None:
            self.loop.unregister(sock.fileno())
            self._masks[which] = None

    def rewatch(self):
        """The directions' needs changed: tell the epoll what to watch on each socket."""
        if self.ended:
            return
        out, back, masks = self.out, self.back, self._masks
        want = ((IN if out.wantsRead() else 0) | (OUT if back.wantsWrite() else 0),
                (IN if back.wantsRead() else 0) | (OUT if out.wantsWrite() else 0))
        for which in (0, 1):
            if masks[which] == want[which]:
                continue
            sock = self.client if which == 0 else self.backend
            if masks[which] is not None:
                self.loop.modify(sock.fileno(), want[which])
            elif want[which]:
                self.loop.register(sock.fileno(), self._clientEvent if which == 0 else self._backendEvent, want[which])
            else:
                continue
            masks[which] = want[which]

    # -- the directions' endings

    def directionDone(self, direction):
        """C{direction} moved everything up to its source's EOF and shut its drain's write side."""
        if self.ended:
            return
        if self.out.result is not None and self.back.result is not None:
            self._close("eof", unread=False)
            return
        timeout = self.factory.halfCloseTimeout
        if timeout and self._timer is None:
            self._timer = self.factory.reactor.callLater(timeout, self._abort, "half-close-timeout")
        self.rewatch()

    def failed(self, direction, err):
        """A socket error in C{direction}: the session ends (as EOF if the other way had ended so)."""
        if self.ended:
            return
        self._error = err
        direction.result = Reason.ERROR
        other = self.back if direction is self.out else self.out
        if other.result is Reason.EOF:
            self._close("eof")  # the peer closed both ways at once
        else:
            self._abort("error")

    def crashed(self):
        """A handler raised (a bug, logged by the loop): end the session rather than spin."""
        if not self.ended:
            self._abort("error")

    def idleTimeout(self):
        """No byte either way for C{idle} seconds (L{splicing.relay.idle.IdleSweep})."""
        if not self.ended:
            self._abort("idle")

    def abort(self, how="shutdown"):
        """End this session now (at shutdown, for instance)."""
        if self.ended:
            return
        if self._begun:
            self._abort(how)
        else:  # still waiting for a slot: not a session yet
            self.ended = True
            self._closeSockets(_RESET)
            self.factory.forget(self)

    # -- endings

    def _close(self, how, unread=True):
        """
        End gracefully.  After both EOFs (C{unread} False) nothing is unread
        and closing sends FIN; otherwise unread bytes must not turn the
        close into a reset: shut down both ways first, as Twisted's
        C{loseConnection} does.
        """
        self._finish(how)
        for d in (self.out, self.back):
            if d is not None:
                d.drop()  # (a direction that failed may still hold a pipe)
        self._closeSockets(socket.SHUT_RDWR if unread else None)

    def _abort(self, how):
        """End now: reset both connections (Twisted's C{abortConnection})."""
        self._finish(how)
        for d in (self.out, self.back):
            if d is not None:
                d.drop()
        self._closeSockets(_RESET)

    def _finish(self, how):
        if self.ended:
            return
        self.ended = True
        self._cancelTimer()
        self.listener.connecting.discard(self)
        f = self.factory
        f.idleSweep.forget(self)
        if self.target is not None and self.out is not None:
            self.target.sessions -= 1
        f.sessionFinished(self, self.statistics(how))

    def _cancelTimer(self):
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _dropBackend(self, how=None):
        s, self.backend = self.backend, None
        if s is not None:
            _closeSocket(self.loop, s, how)
        self._masks[1] = 0

    def _closeSockets(self, how=None):
        self._dropBackend(how)
        if self.client.fileno() != -1:
            _closeSocket(self.loop, self.client, how)

    # -- what the relay reads

    def moved(self):
        """Bytes moved so far, both ways (what the relay's idle sweep watches)."""
        return 0 if self.out is None else self.out.length + self.back.length

    def statistics(self, how):
        """The session's fields, as L{splicing.relay.tcp.RelayProtocol.statistics} gives them."""
        out, back, target = self.out, self.back, self.target
        connected = out is not None
        return {
            "relay": self.factory.name,
            "client": ("[%s]:%s" if ":" in self.address[0] else "%s:%s") % self.address[:2],
            "backend": self.listener.addresses[id(target)][3] if connected else None,
            "target": target.name if target is not None else None,
            "bytes_out": out.length if connected else 0,
            "bytes_in": back.length if connected else 0,
            "duration": self.factory.reactor.seconds() - self.started,
            "path": "kernel" if connected else None,
            "copied": out.copied + back.copied if connected else 0,
            "how": how,
            "why": self._why,
            "error": self._error,
        }


__all__ = ["LeanListener", "LeanSession", "servable"]
