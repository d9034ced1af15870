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

A session starts lean: its first datagram leaves on a plain socket
connected to the backend (C{socket}, C{connect}, C{send}: nothing else
first), and the backend's answers go back through the listening socket
(C{sendto} the client; from a wildcard listen, with C{IP_PKTINFO} /
C{IPV6_PKTINFO} naming the address the client sent to).  No Twisted port, no
front socket, no splice: a DNS query from a fresh port costs little more
than one on a running session.  The client's second datagram makes the
session a spliced one, as above (L{Session._promote}).
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


class _Lean:
    """The backend socket of a lean session: a selectable of its own, no Twisted port."""

    def __init__(self, session, sock):
        self.session = session
        self.socket = sock

    def fileno(self):
        return self.socket.fileno()

    def logPrefix(self):
        return "udp-session"

    def doRead(self):
        self.session._leanReplies()

    def connectionLost(self, reason):
        """The reactor saw an error on the socket (ECONNREFUSED: the backend's port is closed)."""
        try:
            error = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as e:
            error = e.errno
        self.session.end("error", error)


def _family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)


def sourceAncillary(listenFamily, local):
    """
    The ancillary data that makes a datagram sent from a wildcard listening
    socket leave from C{local} (the address the client sent to):
    C{IP_PKTINFO}, or C{IPV6_PKTINFO} on an IPv6 socket (Linux takes a
    v4-mapped address there for an IPv4 client of a dual-stack socket).
    """
    if listenFamily == socket.AF_INET6:
        return [(socket.IPPROTO_IPV6, _IPV6_PKTINFO, socket.inet_pton(socket.AF_INET6, local) + b"\0" * 4)]
    return [(socket.IPPROTO_IP, _IP_PKTINFO, b"\0" * 4 + socket.inet_aton(local) + b"\0" * 4)]


class Session:
    """
    A client's session.  Counters: datagrams and bytes each way, spliced or
    forwarded here; as in the TCP relay's logs, "out" is client to backend,
    "in" backend to client.
    """

    log = Logger()

    #: Datagrams from the backend a lean session answers per read event (fair to other sockets).
    LEAN_BATCH = 64

    def __init__(self, relay, client, local, backend, reactor, lean=False):
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
        self._lean = None
        if lean:
            nonblocking = getattr(socket, "SOCK_NONBLOCK", 0)  # no fcntl() after socket()
            sock = socket.socket(_family(backend[0]), socket.SOCK_DGRAM | nonblocking)
            try:
                if not nonblocking:
                    sock.setblocking(False)
                sock.connect(backend)
            except BaseException:
                sock.close()
                raise
            self._lean = _Lean(self, sock)
            return
        self._openPorts()

    def _openPorts(self, backSocket=None):
        """The front socket, connected to the client, and the back one as Twisted ports (see the module)."""
        relay, local, backend, reactor = self.relay, self.local, self.backend, self.reactor
        try:
            self.front = ReusePort(local[1], _Front(self), local[0], 65536, reactor)
            self.front.socketBuffer = relay.socketBuffer
            self.front.startListening()
            self.front.connect(*self.clientKey)
            self.back = QuietPort(0, _Back(self), wildcard(backend[0]), 65536, reactor)
            if backSocket is not None:
                self.back._preexistingSocket = backSocket  # the lean session's: adopted, not bound again
            self.back.startListening()
            setBuffers(self.back.socket, relay.socketBuffer)
            self.back.connect(*backend)
        except BaseException:
            self._close()
            raise

    # -- running

    def start(self):
        """
        After the first datagram went out: a lean session starts reading its
        backend's answers (and sets the socket's buffers); a spliced one is
        spliced (L{_splice}).  The idle timer runs either way.
        """
        if self._lean is not None:
            setBuffers(self._lean.socket, self.relay.socketBuffer)
            self.reactor.addReader(self._lean)
        else:
            self._splice()
        if not self.ended:
            self._arm()

    def _promote(self):
        """
        The client sent again: it talks to the backend, splice it.  The lean
        socket becomes the back port (answers already in it go through the
        splice, in order), a front socket connected to the client is made.
        """
        lean, self._lean = self._lean, None
        self.reactor.removeReader(lean)
        try:
            self._openPorts(lean.socket)
        except OSError as e:
            lean.socket.close()
            self.end("error", e.errno)

    def _splice(self):
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
        if self.ended:
            self.relay.lost += 1
            return
        promoted = False
        if self._lean is not None and self._userOut[0]:
            self._promote()  # a second datagram
            if self.ended:
                self.relay.lost += 1
                return
            promoted = True
        if self._send(self._lean.socket if self._lean is not None else self.back.socket, data):
            self._userOut[0] += 1
            self._userOut[1] += len(data)
        if promoted and not self.ended:
            self._splice()

    def reply(self, data):
        if self._send(self.front.socket, data):
            self._userIn[0] += 1
            self._userIn[1] += len(data)

    def _leanReplies(self):
        """The backend's answers to a lean session, sent to the client from the listening socket."""
        sock, listener = self._lean.socket, self.relay.port.socket
        ancillary = None
        if self.relay.wildcard:
            ancillary = sourceAncillary(listener.family, self.local[0])
        for _ in range(self.LEAN_BATCH):
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            except OSError as e:
                return self.end("error", e.errno)
            try:
                if ancillary is None:
                    listener.sendto(data, self.client)
                else:
                    listener.sendmsg([data], ancillary, 0, self.client)
            except OSError:
                self.relay.lost += 1  # a full socket drops a datagram, as UDP does
                continue
            self._userIn[0] += 1
            self._userIn[1] += len(data)

    def _send(self, sock, data):
        if self.ended:
            self.relay.lost += 1
            return False
        try:
            sock.send(data)
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
                "path": self.path}

    @property
    def path(self):
        """The splices' path, or "copy" for a session that never was spliced (a lean one)."""
        return self.up.backend if self.up is not None else "copy"

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
            path=self.path,
            how=self.how,
            error=error,
        )
        self.relay.sessionEnded(self)

    def _close(self):
        lean, self._lean = self._lean, None
        if lean is not None:
            self.reactor.removeReader(lean)
            lean.socket.close()
        for port in (self.front, self.back):
            if port is not None and port.connected:
                port.stopListening()
