"""
What a Twisted transport is, as far as splicing cares.

C{sosplice()} needs a few facts about each side before it can accept or
refuse a request: is there a socket under it, of which protocol, is it
listening, connected, closed, wrapped in TLS?  L{describe} gathers them in
one place so the checks in L{splicing.core.splice} read like OpenBSD's.
"""

import socket

from twisted.internet import tcp, udp

try:
    from twisted.protocols.tls import TLSMemoryBIOProtocol
except ImportError:  # pragma: no cover - pyOpenSSL is a dependency
    TLSMemoryBIOProtocol = ()

try:
    from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper
except ImportError:  # pragma: no cover
    HAProxyProtocolWrapper = ()

#: Wrappers that pass bytes through unchanged once set up, so the socket
#: under them may be spliced directly.
TRANSPARENT_WRAPPERS = tuple(w for w in (HAProxyProtocolWrapper,) if w)

TCP, UDP, UNIX, STREAM = "tcp", "udp", "unix", "stream"


class Endpoint:
    """
    The facts about one side of a splice request.

    @ivar transport: what the caller passed.
    @ivar socketTransport: the Twisted transport that owns the socket (the
        caller's transport, or the one under a transparent wrapper), or None.
    @ivar socket: the socket object, or None.
    @ivar kind: TCP, UDP, UNIX, STREAM (a non-socket byte stream) or None
        (nothing a splice can use).
    @ivar tls: True when bytes pass through TLS in user land.
    @ivar receiver: the protocol whose C{dataReceived} gets this side's bytes
        (what the transport path intercepts), or None.
    """

    def __init__(self, transport):
        self.transport = transport
        self.socketTransport = None
        self.socket = None
        self.kind = None
        self.tls = False
        self.listening = False
        self.connected = False
        self.closed = False
        self.bound = False
        self.receiver = None

    @property
    def family(self):
        return self.socket.family if self.socket is not None else None

    @property
    def canUseSocket(self):
        """Whether a socket path (kernel or mbuf) can own this side."""
        return self.socket is not None and not self.tls and self.kind in (TCP, UDP)


def _socketOf(transport):
    try:
        return transport.socket
    except AttributeError:
        return None


def _kindOf(sock):
    if sock.family == socket.AF_UNIX:
        return UNIX
    if sock.type == socket.SOCK_STREAM:
        return TCP
    if sock.type == socket.SOCK_DGRAM:
        return UDP
    return None


def _connectedTCP(t):
    return bool(t.connected) and not t.disconnected and not t.disconnecting


def shutWrite(transport):
    """
    Half-close C{transport}: no more bytes from us.  TLS has no half-close
    (Twisted would shut the TCP connection under the TLS session): a TLS
    transport is closed once its buffer is flushed.
    """
    if describe(transport).tls:
        transport.loseConnection()
    else:
        transport.loseWriteConnection()


def describe(transport):
    """
    Describe C{transport} for the splice checks.  Never raises.
    """
    e = Endpoint(transport)
    t = transport
    if TLSMemoryBIOProtocol and isinstance(t, TLSMemoryBIOProtocol):
        e.tls = True
        e.receiver = t.wrappedProtocol
        under = t.transport
        sock = _socketOf(under)
        e.kind = _kindOf(sock) if sock is not None else STREAM
        e.connected = (
            under is not None
            and getattr(under, "connected", False)
            and not getattr(under, "disconnected", False)
            and not t.disconnecting
        )
        if e.kind == UNIX:
            e.kind = STREAM  # bytes over TLS: the transport path serves it
        return e
    while TRANSPARENT_WRAPPERS and isinstance(t, TRANSPARENT_WRAPPERS):
        t = t.transport
    if isinstance(t, tcp.Port):  # also covers unix.Port
        e.listening = True
        e.socketTransport = t
        e.socket = _socketOf(t)
        e.kind = _kindOf(e.socket) if e.socket is not None else None
        return e
    if isinstance(t, udp.Port):
        e.socketTransport = t
        e.socket = _socketOf(t)
        e.kind = UDP
        e.bound = bool(t.connected) and e.socket is not None
        e.connected = e.bound and getattr(t, "_connectedAddr", None) is not None
        e.receiver = getattr(t, "protocol", None)
        e.closed = e.socket is None or e.socket.fileno() == -1
        return e
    if isinstance(t, tcp.Connection):  # also covers unix.Server/Client
        e.socketTransport = t
        e.receiver = getattr(t, "protocol", None)
        e.connected = _connectedTCP(t)
        sock = _socketOf(t)
        if sock is None:
            e.kind = TCP
            return e
        e.socket = sock
        e.kind = _kindOf(sock)
        e.closed = sock.fileno() == -1
        return e
    # Anything else that looks like a byte-stream transport (stdio, process
    # pipes, in-memory test transports): only the transport path can serve it.
    if callable(getattr(t, "write", None)):
        e.kind = STREAM
        e.receiver = getattr(t, "protocol", None)
        e.connected = not getattr(t, "disconnecting", False) and not getattr(
            t, "disconnected", False
        )
    return e


def noDelay(transport):
    """
    Turn Nagle's algorithm off on the TCP socket under C{transport} (through
    TLS and protocol wrappers): a relay forwards bytes as they come, and the
    peers already chose how to batch them; a second Nagle wait in the middle
    would only add a round trip's delay to small messages (HAProxy sets
    C{TCP_NODELAY} too).
    """
    t = transport
    while t is not None and not isinstance(t, tcp.Connection):
        t = getattr(t, "transport", None)
    sock = getattr(t, "socket", None)
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6) and sock.fileno() >= 0:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
