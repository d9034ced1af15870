"""
The UDP relay behind C{twistd splice udp}: many clients at once, one
session per client address (L{splicing.relay.udpsession}), each spliced both
ways by the relay's one datagram pump (L{splicing.relay.udppump}), ended
after an idle timeout (one L{splicing.relay.idle.IdleSweep}), capped in
number.

Descriptions use Twisted's endpoint-string syntax (C{prefix:arg:key=value},
a backslash escapes the next character, so IPv6 addresses are written with
C{\\:}):

  - listen: C{udp:PORT[:interface=ADDR]} (or C{udp:port=PORT...}); the
    interface defaults to C{0.0.0.0}; C{::} listens on IPv6 and, unless the
    system says otherwise, on IPv4-mapped addresses too;
  - connect: C{udp:host=HOST:port=PORT}, or positionally C{udp:HOST:PORT}
    as Twisted's C{tcp:} client strings allow.  A host name is resolved
    once, when the service starts.
"""

import collections
import ipaddress
import socket

from twisted.application import service
from twisted.internet import abstract, defer, protocol
from twisted.logger import Logger

from splicing.relay.balance import Target
from splicing.relay.events import plural
from splicing.relay.idle import IdleSweep
from splicing.relay.report import Reporter
from splicing.relay.udppump import DatagramPump
from splicing.relay.udpsession import ReusePort, Session, formatAddress

__all__ = ["UDPRelayService", "parseUDPListen", "parseUDPConnect"]

_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)


def _split(description):
    """C{prefix:a:b=c} -> (prefix, [args], {kwargs}), honouring backslash escapes."""
    parts, cur, chars = [], [], iter(description)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, None)
            if nxt is None:
                raise ValueError("%r ends with a lone backslash" % (description,))
            cur.append(nxt)
        elif ch == ":":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    args, kwargs = [], {}
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if eq:
            if key in kwargs:
                raise ValueError("%r gives %r twice" % (description, key))
            kwargs[key] = value
        else:
            args.append(part)
    return parts[0], args, kwargs


def _fields(description, what, names):
    if not isinstance(description, str):
        raise ValueError("a UDP %s description must be a string, not %r" % (what, description))
    prefix, args, kwargs = _split(description)
    if prefix != "udp":
        raise ValueError("UDP %s description %r: the prefix must be 'udp', not %r" % (what, description, prefix))
    if len(args) > len(names):
        raise ValueError(
            "UDP %s description %r: too many positional parts %r (expected %s)"
            % (what, description, args[len(names):], ":".join(names))
        )
    values = dict(zip(names, args))
    for key, value in kwargs.items():
        if key not in names and not (what == "listen" and key == "interface"):
            raise ValueError("UDP %s description %r: unknown parameter %r" % (what, description, key))
        if key in values:
            raise ValueError("UDP %s description %r: %r given twice" % (what, description, key))
        values[key] = value
    return values


def _port(description, what, value, lowest):
    if value is None or value == "":
        raise ValueError("UDP %s description %r: the port is missing" % (what, description))
    try:
        port = int(value, 10)
    except ValueError:
        raise ValueError("UDP %s description %r: port %r is not a number" % (what, description, value)) from None
    if not lowest <= port <= 65535:
        raise ValueError("UDP %s description %r: port %d is outside %d-65535" % (what, description, port, lowest))
    return port


def _isIP(host):
    return abstract.isIPAddress(host) or abstract.isIPv6Address(host)


def parseUDPListen(description):
    """C{udp:PORT[:interface=ADDR]} -> (interface, port).  Raises ValueError."""
    values = _fields(description, "listen", ("port",))
    port = _port(description, "listen", values.get("port"), 0)
    interface = values.get("interface", "0.0.0.0") or "0.0.0.0"
    if not _isIP(interface):
        raise ValueError(
            "UDP listen description %r: interface %r is not an IPv4 or IPv6 address "
            "(write ':' in IPv6 addresses as '\\:')" % (description, interface)
        )
    return interface, port


def parseUDPConnect(description):
    """C{udp:host=H:port=P} or C{udp:H:P} -> (host, port).  Raises ValueError."""
    values = _fields(description, "connect", ("host", "port"))
    host = values.get("host")
    if not host:
        raise ValueError("UDP connect description %r: the host is missing" % (description,))
    if not _isIP(host) and (any(c.isspace() or c in "/[]" for c in host) or ":" in host):
        raise ValueError("UDP connect description %r: host %r is not an address or a name" % (description, host))
    return host, _port(description, "connect", values.get("port"), 1)


class _ListenPort(ReusePort):
    """
    The listening socket.  It reads with C{recvmsg} to learn, with
    C{IP_PKTINFO}, which local address a client sent to (a wildcard listen
    has many), so that its session answers from that address.
    """

    def createInternetSocket(self):
        s = ReusePort.createInternetSocket(self)
        if self.addressFamily == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        else:
            s.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
        return s

    _bound = None  # the bound address, asked once (not a getsockname() per read event)

    def doRead(self):
        relay = self.protocol.relay
        bound = self._bound
        if bound is None:
            bound = self._bound = self.socket.getsockname()
        for _ in range(self.maxThroughput // 64):  # bounded: fair to other sockets
            try:
                data, anc, _, addr = self.socket.recvmsg(65536, 256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error from an earlier reply: not the listener's
            local = bound[0]
            for level, kind, value in anc:
                if level == socket.IPPROTO_IP and kind == _IP_PKTINFO and len(value) >= 12:
                    local = socket.inet_ntop(socket.AF_INET, value[8:12])
                elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(value) >= 16:
                    local = socket.inet_ntop(socket.AF_INET6, value[:16])
            try:
                relay.dispatch(data, addr, (local, bound[1]))
            except Exception:
                relay.log.failure("UDP relay: dispatching a datagram failed")


class _Listener(protocol.DatagramProtocol):
    noisy = False  # the relay logs its own start

    def __init__(self, relay):
        self.relay = relay


class UDPRelayService(service.Service):
    """
    Relay datagrams from clients of C{listen} to the backend C{connect}.

    Counters (monotonic unless noted), for an exporter: C{sessions} (current,
    a gauge), C{sessionsTotal}, C{dropped} (datagrams of new clients over
    C{maxSessions}), C{lost} (datagrams a full socket or an ended session
    refused in user land), C{userland} (datagrams forwarded outside the
    splices), C{datagramsOut}/C{bytesOut} (clients to backend, "out" as in
    the TCP relay's logs) and C{datagramsIn}/C{bytesIn} (backend to clients).

    With C{metrics} (an L{splicing.interfaces.IRelayMetrics}) it reports as
    C{relay=name}: each session's end and bytes, and the sessions running.
    """

    log = Logger()
    kind = "udp"

    def __init__(self, listen, connect, idle=60.0, maxSessions=10000, reactor=None, socketBuffer=None,
                 name="udp", metrics=None):
        self.listenAt = parseUDPListen(listen)
        self.connectTo = parseUDPConnect(connect)
        self.description = connect
        if idle is None or not idle > 0:
            raise ValueError("idle must be a positive number of seconds, not %r" % (idle,))
        if isinstance(maxSessions, bool) or not isinstance(maxSessions, int) or maxSessions < 0:
            raise ValueError("maxSessions must be a non-negative integer, not %r" % (maxSessions,))
        self.idle = float(idle)
        self.maxSessions = maxSessions
        self.socketBuffer = socketBuffer
        self._reactor = reactor
        self.port = None
        self.backend = None
        self.pump = None  # the sessions' sockets (see udppump), while running
        self.sweep = None  # their idle timeouts: one timer for all
        self._sessions = {}
        self._queue = collections.deque()  # datagrams to dispatch (see dispatch)
        self._dispatching = False
        self.lean = False  # whether new sessions start lean (decided by startService)
        self.wildcard = False  # listening on 0.0.0.0 or ::
        self.sessionsTotal = 0
        self.dropped = 0
        self.lost = 0
        self._ended = {"datagramsIn": 0, "bytesIn": 0, "datagramsOut": 0, "bytesOut": 0, "userland": 0}
        self.report = Reporter(metrics, name, self)

    @property
    def reactor(self):
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    #: A bound socket to serve instead of binding C{listenAt}: a worker's,
    #: inherited from its master (see L{splicing.app.workersockets}).
    inheritedSocket = None

    # -- the service

    def startService(self):
        host, port = self.connectTo
        if not _isIP(host):  # resolved once, here (a relay follows no DNS changes)
            info = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)
            host = info[0][4][0]
        self.backend = (host, port)
        interface, lport = self.listenAt
        # New sessions start lean (see udpsession); from a wildcard listen
        # their answers name their source address (IP_PKTINFO).
        self.wildcard = ipaddress.ip_address(interface).is_unspecified
        self.lean = bool(getattr(socket, "CMSG_LEN", None)) or not self.wildcard
        self.pump = DatagramPump(self.reactor)
        self.sweep = IdleSweep(self.reactor, self.idle)
        p = _ListenPort(lport, _Listener(self), interface, 65536, self.reactor)
        if self.inheritedSocket is not None:
            p._preexistingSocket = self.inheritedSocket  # Twisted's adopt path: no bind
        p.socketBuffer = self.socketBuffer
        p.startListening()
        self.pump.start()
        self.port = p
        service.Service.startService(self)
        self.listening = formatAddress((interface, p.getHost().port))
        self.log.info(
            "UDP relay on {listen} to {backend} (idle {idle} s, at most {maxSessions} sessions)",
            listen=self.listening, relay=self.report.relay,
            backend="%s:%d" % self.backend,
            idle=self.idle,
            maxSessions=self.maxSessions,
        )

    def stopService(self):
        service.Service.stopService(self)
        running = len(self._sessions)
        for session in list(self._sessions.values()):
            session.end("shutdown")
        port, self.port = self.port, None
        if self.pump is not None:
            self.pump.stop()
        if port is not None:
            self.log.info("UDP relay on {listen} stopped ({ended} ended at shutdown, {total} in all)",
                          listen=self.listening, relay=self.report.relay,
                          ended=plural(running, "session"), total=plural(self.sessionsTotal, "session"),
                          sessions=running, sessionsTotal=self.sessionsTotal)
        return defer.maybeDeferred(port.stopListening) if port is not None else None

    # -- datagrams from clients

    def dispatch(self, data, client, local):
        """
        A datagram that reached a socket of the relay outside any splice.

        A new session reads what reached its socket before it was connected,
        other clients' datagrams among them, which are dispatched again: a
        burst of new clients would nest one session start in the other
        (a RecursionError past a few hundred).  They wait in a queue
        instead, handled in the order they were found.
        """
        self._queue.append((data, client, local))
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._queue:
                self._dispatchOne(*self._queue.popleft())
        finally:
            self._dispatching = False

    def _dispatchOne(self, data, client, local):
        key = tuple(client[:2])
        session = self._sessions.get(key)
        if session is None:
            if self.port is None:
                return
            if len(self._sessions) >= self.maxSessions:
                self.dropped += 1
                return
            try:
                session = Session(self, client, local, self.backend, self.reactor, lean=self.lean)
            except OSError as e:
                self.lost += 1
                self.log.warn("UDP relay: no session for {client}: {error}", client="%s:%d" % key, error=e)
                return
            self._sessions[key] = session
            self.sessionsTotal += 1
            session.forward(data)
            session.start()
        else:
            session.forward(data)

    def sessionEnded(self, session):
        if self._sessions.get(session.clientKey) is session:
            del self._sessions[session.clientKey]
        e = self._ended
        e["datagramsIn"] += session.datagramsIn
        e["bytesIn"] += session.bytesIn
        e["datagramsOut"] += session.datagramsOut
        e["bytesOut"] += session.bytesOut
        e["userland"] += session.userland
        self.report("ended", session.how, session.traffic())

    # -- counters

    #: For L{splicing.app.metrics.RelayMetrics.watch}: the sessions running;
    #: none ever waits (a new client over the cap is dropped).
    active = property(lambda self: self._sessions)
    waiting = ()

    def backends(self):
        """The backend as a L{splicing.relay.balance.Target} (never checked: UDP has no connect to fail)."""
        target = Target(None, self.description)
        if self.backend is not None:
            target.address = formatAddress(self.backend)
        target.sessions = len(self._sessions)
        return [target]

    @property
    def sessions(self):
        return len(self._sessions)

    def _sum(self, name):
        return self._ended[name] + sum(getattr(s, name) for s in self._sessions.values())

    datagramsIn = property(lambda self: self._sum("datagramsIn"))
    bytesIn = property(lambda self: self._sum("bytesIn"))
    datagramsOut = property(lambda self: self._sum("datagramsOut"))
    bytesOut = property(lambda self: self._sum("bytesOut"))

    @property
    def userland(self):
        live = sum(s.userland for s in self._sessions.values())
        return self._ended["userland"] + live

    def counters(self):
        """All counters at once, as a dict (for an exporter or a status page)."""
        names = ("sessions", "sessionsTotal", "dropped", "lost", "userland",
                 "datagramsIn", "bytesIn", "datagramsOut", "bytesOut")
        return {name: getattr(self, name) for name in names}
