"""
One client of the UDP relay: a session with two sockets of its own,
spliced both ways by the relay's pump (L{splicing.relay.udppump}).

  - C{front} is bound to the address the client sent to (the relay's
    listening address, shared thanks to C{SO_REUSEADDR}) and connected to
    the client.  Linux delivers a datagram to the socket that matches it
    best, and a connected socket matches a client's datagrams better than
    the unconnected listening one, so the client's traffic reaches C{front}
    and replies leave from the address the client used.
  - C{back} is bound to an ephemeral port and connected to the backend, so
    the backend's replies are this client's.

The pump moves C{front -> back} and C{back -> front} in batches of whole
datagrams (C{recvmmsg}, C{sendmmsg} with GSO runs: the mbuf path's
batches); neither socket is a Twisted port.  What does not arrive through
them (the datagrams the listening socket read before this session existed,
and any the kernel still gives it) is forwarded here in user land, never
dropped.

A session starts lean: its first datagram leaves on a plain socket
connected to the backend (C{socket}, C{connect}, C{send}: nothing else
first), and the backend's answers go back through the listening socket
(C{sendto} the client; from a wildcard listen, with C{IP_PKTINFO} /
C{IPV6_PKTINFO} naming the address the client sent to).  No front socket:
a DNS query from a fresh port costs little more than one on a running
session.  The client's second datagram makes the session a spliced one, as
above (L{Session._promote}).

Idle timeouts: the relay's L{splicing.relay.idle.IdleSweep} reads each
session's counters a few times per period (one timer per relay).
"""

import errno
import socket
import time

from twisted.internet import base, error, udp
from twisted.logger import Logger

from splicing.relay.events import plural
from splicing.relay.udppump import Endpoint

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
    A client's session.  Counters: datagrams and bytes each way, moved by
    the relay's pump or forwarded here; as in the TCP relay's logs, "out" is
    client to backend, "in" backend to client.
    """

    log = Logger()

    #: The path name of the pump's batches in logs and metrics (the mbuf path's batching).
    PATH = "mbuf"

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
        self._userOut = [0, 0]  # datagrams, bytes forwarded here to the backend
        self._userIn = [0, 0]  # and to the client
        self.front = self.back = None  # the pump's endpoints once spliced
        self._lean = None
        nonblocking = getattr(socket, "SOCK_NONBLOCK", 0)  # no fcntl() after socket()
        sock = socket.socket(_family(backend[0]), socket.SOCK_DGRAM | nonblocking)
        try:
            if not nonblocking:
                sock.setblocking(False)
            sock.connect(backend)
        except BaseException:
            sock.close()
            raise
        self._lean = Endpoint(sock, self)
        if not lean:
            try:
                self._promote()
            except BaseException:
                self._close()
                raise

    #: The two directions, for counters and status: client -> backend is
    #: what the front socket reads, backend -> client what the back one reads.
    up = property(lambda self: self.front)
    down = property(lambda self: self.back)

    # -- running

    def start(self):
        """
        After the first datagram went out: the pump reads the session's
        sockets (with its buffers set), the relay's sweep watches it.
        """
        buffers = self.relay.socketBuffer
        for end in (self._lean, self.back, self.front):
            if end is not None:
                setBuffers(end.socket, buffers)
                if not self.ended:
                    self.relay.pump.add(end)
        if self.front is not None:
            self._drainFront()
        if not self.ended:
            self.relay.sweep.watch(self)

    def _promote(self):
        """
        The client sent again: it talks to the backend, splice it.  The lean
        socket becomes the back one (answers already in it follow, in order),
        and a front socket bound to the listening address and connected to
        the client is made (see the module); the pump moves both ways.
        """
        front = _frontSocket(self.local, self.clientKey)
        back, self._lean = self._lean, None
        self.back = back
        self.front = Endpoint(front, self, back)
        back.drain = self.front

    def _splice(self):
        """A promoted running session: the pump reads its front socket too."""
        setBuffers(self.front.socket, self.relay.socketBuffer)
        self.relay.pump.add(self.front)
        self._drainFront()

    def _drainFront(self):
        """
        Read what reached the front socket before it was connected: this
        client's datagrams are forwarded, other clients' dispatched as the
        listening socket would have.
        """
        sock = self.front.socket
        relay, key = self.relay, self.clientKey
        for _ in range(SETUP_DRAIN):
            try:
                data, addr = sock.recvfrom(65536)
            except BlockingIOError:
                return
            except OSError as e:
                return self.end("error", e.errno)
            if tuple(addr[:2]) == key:
                self.forward(data)
            else:
                relay.dispatch(data, addr, self.local)

    def forward(self, data):
        """A datagram of this client that did not come through the front socket."""
        if self.ended:
            self.relay.lost += 1
            return
        promoted = False
        if self._lean is not None and self._userOut[0]:
            try:
                self._promote()  # a second datagram
            except OSError as e:
                self.end("error", e.errno)
                self.relay.lost += 1
                return
            promoted = True
        if self._send((self._lean or self.back).socket, data):
            self._userOut[0] += 1
            self._userOut[1] += len(data)
        if promoted and not self.ended:
            self._splice()

    def answer(self, views, lengths):
        """The backend's answers to a lean session (from the pump), sent to the client from the listening socket."""
        listener = self.relay.port.socket
        ancillary = None
        if self.relay.wildcard:
            ancillary = sourceAncillary(listener.family, self.local[0])
        client = self.client
        for i, size in enumerate(lengths):
            data = views[i][:size]
            try:
                if ancillary is None:
                    listener.sendto(data, client)
                else:
                    listener.sendmsg([data], ancillary, 0, client)
            except OSError:
                self.relay.lost += 1  # a full socket drops a datagram, as UDP does
                continue
            self._userIn[0] += 1
            self._userIn[1] += size

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

    # -- idle: the relay's sweep reads the counters a few times per period

    def moved(self):
        """Datagrams and bytes both ways (a zero-length datagram is activity too)."""
        return self.datagramsIn + self.datagramsOut + self.bytesIn + self.bytesOut

    def idleTimeout(self):
        self.end("idle")

    # -- counters

    @property
    def datagramsOut(self):
        front = self.front
        return self._userOut[0] + (front.datagrams if front is not None else 0)

    @property
    def bytesOut(self):
        front = self.front
        return self._userOut[1] + (front.length if front is not None else 0)

    @property
    def datagramsIn(self):
        back = self.back
        return self._userIn[0] + (back.datagrams if back is not None else 0)

    @property
    def bytesIn(self):
        back = self.back
        return self._userIn[1] + (back.length if back is not None else 0)

    @property
    def userland(self):
        return self._userOut[0] + self._userIn[0]

    def traffic(self):
        """
        The metrics' (direction, path, bytes): what the pump moved under
        its path, what was forwarded here under "copy".
        """
        moved = [("out", "copy", self._userOut[1]), ("in", "copy", self._userIn[1])]
        if self.front is not None:
            moved += [("out", self.PATH, self.front.length), ("in", self.PATH, self.back.length)]
        return moved

    def status(self):
        """This running session for a status page: client, backend, bytes each way so far, age, path."""
        return {"client": formatAddress(self.clientKey), "backend": formatAddress(self.backend),
                "bytes_out": self.bytesOut, "bytes_in": self.bytesIn, "age": time.monotonic() - self.started,
                "path": self.path}

    @property
    def path(self):
        """The pump's path, or "copy" for a session that never was spliced (a lean one)."""
        return self.PATH if self.front is not None else "copy"

    # -- the end

    def end(self, how, error=0):
        """Close both sockets, log once."""
        if self.ended:
            return
        self.ended = True
        self.how = how if not error else "%s: %s" % (how, errno.errorcode.get(error, error))
        self.relay.sweep.forget(self)
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
        pump = self.relay.pump
        for end in (self._lean, self.front, self.back):
            if end is not None:
                if end.held:
                    self.relay.lost += len(end.held)  # the drain never took them
                    end.held = None
                pump.remove(end)
                end.socket.close()


def _frontSocket(local, client):
    """A socket bound to the listening address C{local} (shared: C{SO_REUSEADDR}), connected to C{client}."""
    nonblocking = getattr(socket, "SOCK_NONBLOCK", 0)
    sock = socket.socket(_family(local[0]), socket.SOCK_DGRAM | nonblocking)
    try:
        if not nonblocking:
            sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(local)
        sock.connect(client)
    except BaseException:
        sock.close()
        raise
    return sock
