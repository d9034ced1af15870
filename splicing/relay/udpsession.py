"""
One client of the UDP relay: a session with two sockets of its own and a
splice in each direction.

  - C{front} is bound to the address the client sent to (the relay's
    listening address, shared thanks to C{SO_REUSEADDR}) and connected to
    the client.  Linux delivers a datagram to the socket that matches it
    best, and a connected socket matches a client's datagrams better than
    the unconnected listening one, so the client's traffic reaches C{front}
    and replies leave from the address the client used.
  - C{back} is bound to an ephemeral port and connected to the backend, so
    the backend's replies are this client's.

C{front -> back} and C{back -> front} are then splices (the mbuf path:
batches of whole datagrams).  What does not arrive through them (the
datagrams the listening socket read before this session existed, and any
the kernel still gives it) is forwarded here in user land, never dropped.
"""

import errno
import socket
import time

from twisted.internet import base, error, protocol, udp
from twisted.logger import Logger

from splicing.core.splice import splice
from splicing.relay.events import plural

#: Datagrams read from a new front socket before splicing it (see L{Session.start}).
SETUP_DRAIN = 64


class QuietPort(udp.Port):
    """
    A UDP port that starts and stops without a word.  Twisted's logs
    C{"... starting on PORT"} and C{"(UDP Port PORT Closed)"} for every
    port, with no C{noisy} switch: two sockets per client made four lines
    of each session.  These two methods are C{udp.Port}'s without them.
    """

    def _bindSocket(self):
        if self._preexistingSocket is None:
            try:
                skt = self.createInternetSocket()
                skt.bind((self.interface, self.port))
            except OSError as le:
                raise error.CannotListenError(self.interface, self.port, le)
        else:
            skt, self._preexistingSocket = self._preexistingSocket, None
        self._realPortNumber = skt.getsockname()[1]
        self.connected = 1
        self.socket = skt
        self.fileno = skt.fileno

    def connectionLost(self, reason=None):
        self._realPortNumber = None
        self.maxThroughput = -1
        base.BasePort.connectionLost(self, reason)
        self.protocol.doStop()
        self.socket.close()
        del self.socket
        del self.fileno
        if hasattr(self, "d"):  # stopListening's Deferred
            self.d.callback(None)
            del self.d


class ReusePort(QuietPort):
    """A UDP port that may share its address: C{SO_REUSEADDR} before bind."""

    socketBuffer = None

    def createInternetSocket(self):
        s = QuietPort.createInternetSocket(self)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        setBuffers(s, self.socketBuffer)
        return s


def setBuffers(sock, size):
    if size:
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, size)
            except OSError:
                pass


def formatAddress(address):
    """host:port or [v6]:port, as the TCP relay logs them."""
    host, port = address[:2]
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


def wildcard(host):
    return "::" if ":" in host else "0.0.0.0"


class _Front(protocol.DatagramProtocol):
    """The front socket's own reads (before the splice, and after one)."""

    noisy = False  # no "Starting protocol" per session

    def __init__(self, session):
        self.session = session

    def datagramReceived(self, data, addr):
        s = self.session
        if tuple(addr[:2]) == s.clientKey:
            s.forward(data)
        else:
            # Another client's, queued between bind() and connect(): it is
            # the relay's, as if the listening socket had read it.
            s.relay.dispatch(data, addr, s.local)

    def connectionRefused(self):
        self.session.end("error", errno.ECONNREFUSED)


class _Back(protocol.DatagramProtocol):
    noisy = False
    def __init__(self, session):
        self.session = session

    def datagramReceived(self, data, addr):
        self.session.reply(data)

    def connectionRefused(self):
        self.session.end("error", errno.ECONNREFUSED)


class Session:
    """
    A client's session.  Counters: datagrams and bytes each way, spliced or
    forwarded here; as in the TCP relay's logs, "out" is client to backend,
    "in" backend to client.
    """

    log = Logger()

    def __init__(self, relay, client, local, backend, reactor):
        self.relay = relay
        self.client = client
        self.clientKey = tuple(client[:2])
        self.local = local
        self.backend = backend
        self.reactor = reactor
        self.started = time.monotonic()
        self.ended = False
        self.how = None
        self.up = self.down = None  # the splices, client -> backend and back
        self._userOut = [0, 0]  # datagrams, bytes forwarded here to the backend
        self._userIn = [0, 0]  # and to the client
        self._lastSeen = self.started
        self._lastTotal = -1
        self._timer = None
        self.front = self.back = None
        try:
            self.front = ReusePort(local[1], _Front(self), local[0], 65536, reactor)
            self.front.socketBuffer = relay.socketBuffer
            self.front.startListening()
            self.front.connect(*self.clientKey)
            self.back = QuietPort(0, _Back(self), wildcard(backend[0]), 65536, reactor)
            self.back.startListening()
            setBuffers(self.back.socket, relay.socketBuffer)
            self.back.connect(*backend)
        except BaseException:
            self._close()
            raise

    # -- running

    def start(self):
        """
        Read what reached the front socket before it was connected (other
        clients' datagrams may be among them), then splice both ways.  The
        splices' first pass comes from the reactor, after the listening
        socket's read loop: this client's datagrams that are still there are
        older and are forwarded first.
        """
        self._drainFront()
        if self.ended:
            return
        self.up = splice(self.front, self.back, reactor=self.reactor)
        self.down = splice(self.back, self.front, reactor=self.reactor)
        for s in (self.up, self.down):
            s.done.addCallback(self._spliceEnded)
        self._arm()

    def _drainFront(self):
        sock = self.front.socket
        for _ in range(SETUP_DRAIN):
            try:
                data, addr = sock.recvfrom(65536)
            except BlockingIOError:
                return
            except OSError as e:
                return self.end("error", e.errno)
            self.front.protocol.datagramReceived(data, addr)

    def forward(self, data):
        """A datagram of this client that did not come through the splice."""
        if self._send(self.back, data):
            self._userOut[0] += 1
            self._userOut[1] += len(data)

    def reply(self, data):
        if self._send(self.front, data):
            self._userIn[0] += 1
            self._userIn[1] += len(data)

    def _send(self, port, data):
        if self.ended:
            self.relay.lost += 1
            return False
        try:
            port.socket.send(data)
            return True
        except BlockingIOError:
            self.relay.lost += 1  # a full socket drops a datagram, as UDP does
        except OSError as e:
            self.end("error", e.errno)
        return False

    # -- idle: activity is read from the counters, a few times per period

    def _arm(self):
        step = max(self.relay.idle / 4.0, 0.05)
        self._timer = self.reactor.callLater(step, self._tick)

    def _tick(self):
        self._timer = None
        total = self.datagramsIn + self.datagramsOut + self.bytesIn + self.bytesOut
        now = time.monotonic()
        if total != self._lastTotal:
            self._lastTotal = total
            self._lastSeen = now
        elif now - self._lastSeen >= self.relay.idle:
            return self.end("idle")
        self._arm()

    def _spliceEnded(self, result):
        if not self.ended:
            self.end(result.reason.name.lower(), result.error)
        return result

    # -- counters

    @staticmethod
    def _moved(s):
        mover = getattr(s, "_mover", None)
        return getattr(mover, "datagrams", 0), (s.length if s is not None else 0)

    @property
    def datagramsOut(self):
        return self._userOut[0] + self._moved(self.up)[0]

    @property
    def bytesOut(self):
        return self._userOut[1] + self._moved(self.up)[1]

    @property
    def datagramsIn(self):
        return self._userIn[0] + self._moved(self.down)[0]

    @property
    def bytesIn(self):
        return self._userIn[1] + self._moved(self.down)[1]

    @property
    def userland(self):
        return self._userOut[0] + self._userIn[0]

    def traffic(self):
        """
        The metrics' (direction, path, bytes): what each splice moved under
        its path, what was forwarded here under "copy".
        """
        moved = [("out", "copy", self._userOut[1]), ("in", "copy", self._userIn[1])]
        for direction, s in (("out", self.up), ("in", self.down)):
            if s is not None:
                moved.append((direction, s.backend, s.length))
        return moved

    def status(self):
        """This running session for a status page: client, backend, bytes each way so far, age, path."""
        return {"client": formatAddress(self.clientKey), "backend": formatAddress(self.backend),
                "bytes_out": self.bytesOut, "bytes_in": self.bytesIn, "age": time.monotonic() - self.started,
                "path": self.up.backend if self.up is not None else None}

    # -- the end

    def end(self, how, error=0):
        """Unsplice, close both sockets, log once."""
        if self.ended:
            return
        self.ended = True
        self.how = how if not error else "%s: %s" % (how, errno.errorcode.get(error, error))
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for s in (self.up, self.down):
            if s is not None and s.result is None:
                s.unsplice()
        self._close()
        self.log.info(
            "udp session ended: {client} -> {backend}: {out_text} out, {in_text} in, {duration:.3f}s, {path}, {how}",
            out_text="%s / %s" % (plural(self.datagramsOut, "datagram"), plural(self.bytesOut, "byte")),
            in_text="%s / %s" % (plural(self.datagramsIn, "datagram"), plural(self.bytesIn, "byte")),
            client=formatAddress(self.clientKey),
            backend=formatAddress(self.backend),
            datagrams_out=self.datagramsOut,
            bytes_out=self.bytesOut,
            datagrams_in=self.datagramsIn,
            bytes_in=self.bytesIn,
            userland=self.userland,
            duration=time.monotonic() - self.started,
            path=self.up.backend if self.up is not None else None,
            how=self.how,
            error=error,
        )
        self.relay.sessionEnded(self)

    def _close(self):
        for port in (self.front, self.back):
            if port is not None and port.connected:
                port.stopListening()
