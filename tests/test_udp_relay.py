"""
The UDP relay (splicing.relay.udp): per-client sessions over real sockets on
127.0.0.1 and ::1, in this process.  Clients are Twisted UDP ports that
record what comes back; the backend is an echo that prefixes each reply
with nothing but the payload, so every client can check that exactly its
own datagrams came back, whole and in order.
"""

import os
import socket

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.logger import globalLogPublisher

import harness
from harness import HOSTS, sleep, wait_until

IDLE = 0.4


class Echo(protocol.DatagramProtocol):
    def __init__(self):
        self.sources = set()
        self.count = 0

    def datagramReceived(self, data, addr):
        self.sources.add(addr)
        self.count += 1
        self.transport.write(data, addr)


class Client(protocol.DatagramProtocol):
    def __init__(self):
        self.replies = []

    def datagramReceived(self, data, addr):
        self.replies.append(data)


def udp(net, family, proto):
    port = reactor.listenUDP(0, proto, interface=HOSTS[family], maxPacketSize=65536)
    net.ports.append(port)
    # Bursts of hundreds of datagrams must not overflow a default 208 KiB
    # receive buffer in the test's own endpoints (that is not the relay's loss).
    harness.set_bufs(port.socket, 1 << 20, 1 << 20)
    return port


def esc(host):
    return host.replace(":", "\\:")


async def relay(net, fam_listen=4, fam_back=4, listen=None, **kw):
    from splicing.relay.udp import UDPRelayService

    echo = Echo()
    back = udp(net, fam_back, echo)
    listen = listen or HOSTS[fam_listen]
    svc = UDPRelayService(
        "udp:0:interface=%s" % esc(listen),
        "udp:host=%s:port=%d" % (esc(HOSTS[fam_back]), back.getHost().port),
        reactor=reactor, **kw,
    )
    svc.startService()
    net.ports.append(_Stopper(svc))
    return svc, echo


class _Stopper:
    """Lets the fixture's teardown stop the service like a port."""

    def __init__(self, svc):
        self.svc = svc

    def stopListening(self):
        if self.svc.running:
            return self.svc.stopService()


def client(net, svc, family=4, host=None):
    c = Client()
    port = udp(net, family, c)
    port.connect(host or HOSTS[family], svc.port.getHost().port)
    return c, port


def payload(i, k, size=32):
    head = b"%05d/%03d:" % (i, k)
    return (head + b"." * size)[: max(size, len(head))]


def fds():
    return len(os.listdir("/proc/self/fd"))


class SessionLog:
    def __init__(self):
        self.events = []

    def __call__(self, event):
        if event.get("log_format", "").startswith("udp session ended"):
            self.events.append(event)

    def __enter__(self):
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc):
        globalLogPublisher.removeObserver(self)


# ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_many_clients_each_get_their_own_replies(net):
    """
    200 clients, each sending 3 datagrams back to back before any session
    exists (the race between setup and the first datagrams), then 2 more:
    every client gets exactly its own 5 replies, in order.
    """
    svc, echo = await relay(net, idle=5.0, socketBuffer=1 << 20)
    clients = [client(net, svc) for _ in range(200)]
    readers = len(reactor.getReaders())
    for i, (c, port) in enumerate(clients):
        for k in range(3):
            port.write(payload(i, k))
        if i % 50 == 49:
            await sleep(0)
    await wait_until(lambda: all(len(c.replies) >= 3 for c, _ in clients), what="first replies")
    for i, (c, port) in enumerate(clients):
        for k in range(3, 5):
            port.write(payload(i, k))
    await wait_until(lambda: all(len(c.replies) >= 5 for c, _ in clients), what="all replies")
    await sleep(0.05)
    for i, (c, _) in enumerate(clients):
        assert c.replies == [payload(i, k) for k in range(5)], i
    assert svc.sessions == 200 and svc.sessionsTotal == 200 and svc.dropped == 0 and svc.lost == 0
    assert len(echo.sources) == 200  # one backend socket per client
    assert svc.datagramsOut == svc.datagramsIn == 1000
    assert svc.bytesOut == svc.bytesIn == sum(len(payload(i, k)) for i in range(200) for k in range(5))
    # The later datagrams came through the splices, not the listening socket.
    assert svc.userland < 1000
    assert sum(s.up.length for s in svc._sessions.values()) > 0
    # 400 session sockets, and the reactor watches none of them: the relay's pump does.
    assert len(reactor.getReaders()) == readers


@pytest.mark.parametrize("family", [4, 6])
@pytest_twisted.ensureDeferred
async def test_a_new_client_costs_one_socket_no_port_no_splice(net, family):
    """
    A query from a fresh port (what resolvers send): its session is one
    socket connected to the backend; the answer leaves from the listening
    address; no Twisted port, no splice, no log line until the session ends.
    """
    svc, echo = await relay(net, family, family, idle=5.0)
    await sleep(0.05)
    c, port = client(net, svc, family)
    before = fds()
    lines = []
    globalLogPublisher.addObserver(lines.append)
    try:
        port.write(b"query")
        await wait_until(lambda: c.replies, what="the answer")
    finally:
        globalLogPublisher.removeObserver(lines.append)
    assert c.replies == [b"query"]
    (session,) = svc._sessions.values()
    assert (session.front, session.back, session.up, session.down) == (None, None, None, None)
    assert fds() == before + 1
    assert len(echo.sources) == 1 and svc.userland == 2 and svc.lost == 0
    assert [e for e in lines if e.get("log_namespace", "").startswith("twisted")] == []
    assert [e.get("log_text", e.get("log_format")) for e in lines] == []
    # The client's port is connected to the relay's listening address: the
    # kernel hands it nothing from any other address, so the answer left from there.
    assert port._connectedAddr == (HOSTS[family], svc.port.getHost().port)


@pytest_twisted.ensureDeferred
async def test_a_new_client_of_a_wildcard_listen_is_answered_from_the_address_it_used(net):
    """
    Listening on 0.0.0.0, a client that sent to 127.0.0.2 is answered from
    127.0.0.2 (IP_PKTINFO on the listening socket): the routing table alone
    would pick 127.0.0.1, which the client's connected port would not hear.
    """
    svc, echo = await relay(net, listen="0.0.0.0", idle=5.0)
    c, port = client(net, svc, host="127.0.0.2")
    port.write(b"one")
    await wait_until(lambda: c.replies, what="the answer")
    (session,) = svc._sessions.values()
    assert session.local[0] == "127.0.0.2" and session.front is None  # lean: answered by the listener
    port.write(b"two")  # spliced from now on, from the same address
    await wait_until(lambda: len(c.replies) == 2, what="the second answer")
    assert c.replies == [b"one", b"two"] and session.front is not None


@pytest_twisted.ensureDeferred
async def test_the_second_datagram_splices_the_session(net):
    """A client that sends again is spliced both ways; answers waiting in the lean socket come first, in order."""
    svc, echo = await relay(net, idle=5.0)
    c, port = client(net, svc)
    port.write(payload(0, 0))
    await wait_until(lambda: c.replies, what="the first answer")
    (session,) = svc._sessions.values()
    before = fds()
    for k in range(1, 30):
        port.write(payload(0, k))
    await wait_until(lambda: len(c.replies) == 30, what="every answer")
    assert c.replies == [payload(0, k) for k in range(30)]
    assert session.up is not None and session.down is not None and session.path == "mbuf"
    assert fds() == before + 1  # the front socket; the backend socket is the same
    assert len(echo.sources) == 1
    assert svc.datagramsOut == svc.datagramsIn == 30 and svc.lost == 0
    assert session.up.length + session.down.length > 0  # the later ones went through the splices


@pytest_twisted.ensureDeferred
async def test_a_burst_before_the_session_exists_is_not_lost(net):
    svc, echo = await relay(net, idle=5.0, socketBuffer=1 << 20)
    c, port = client(net, svc)
    sent = [payload(0, k, size=k * 7) for k in range(100)] + [b""]
    for d in sent:
        port.write(d)
    await wait_until(lambda: len(c.replies) >= len(sent), what="echoes")
    await sleep(0.05)
    assert c.replies == sent
    assert svc.sessionsTotal == 1 and svc.lost == 0


def test_kernel_prefers_the_connected_socket():
    """
    The layout the relay relies on, checked on this kernel: a socket bound to
    the listening address (SO_REUSEADDR) and connected to one client gets
    that client's datagrams; the listening socket gets everyone else's.
    """
    for family in (4, 6):
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        host = HOSTS[family]
        listener = socket.socket(af, socket.SOCK_DGRAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, 0))
        addr = listener.getsockname()[:2]
        a = socket.socket(af, socket.SOCK_DGRAM)
        a.bind((host, 0))
        b = socket.socket(af, socket.SOCK_DGRAM)
        b.bind((host, 0))
        session = socket.socket(af, socket.SOCK_DGRAM)
        session.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        session.bind(addr)
        session.connect(a.getsockname()[:2])
        for s in (listener, session):
            s.settimeout(2)
        for k in range(20):
            a.sendto(b"a%d" % k, addr)
            b.sendto(b"b%d" % k, addr)
        assert [session.recv(100) for _ in range(20)] == [b"a%d" % k for k in range(20)]
        assert [listener.recv(100) for _ in range(20)] == [b"b%d" % k for k in range(20)]
        session.send(b"reply")
        a.settimeout(2)
        data, src = a.recvfrom(100)
        assert data == b"reply" and src[:2] == addr  # the reply leaves from the listening address
        for s in (listener, a, b, session):
            s.close()


@pytest.mark.parametrize("fam_listen,fam_back", [(4, 6), (6, 4), (6, 6)], ids=["4to6", "6to4", "6to6"])
@pytest_twisted.ensureDeferred
async def test_families_mix(net, fam_listen, fam_back):
    svc, echo = await relay(net, fam_listen, fam_back, idle=5.0)
    clients = [client(net, svc, fam_listen) for _ in range(5)]
    for i, (_, port) in enumerate(clients):
        port.write(payload(i, 0))
        port.write(payload(i, 1))
    await wait_until(lambda: all(len(c.replies) == 2 for c, _ in clients), what="replies")
    for i, (c, _) in enumerate(clients):
        assert c.replies == [payload(i, 0), payload(i, 1)]
    fam = socket.AF_INET6 if fam_back == 6 else socket.AF_INET
    assert all(s.back.socket.family == fam for s in svc._sessions.values())


@pytest_twisted.ensureDeferred
async def test_dual_stack_wildcard_answers_from_the_address_used(net):
    """Listening on :: : an IPv4 client (v4-mapped) and an IPv6 one, each answered from where it sent."""
    svc, echo = await relay(net, listen="::", fam_back=4, idle=5.0)
    port = svc.port.getHost().port
    got = {}
    for family in (4, 6):
        c = Client()
        p = udp(net, family, c)
        p.connect(HOSTS[family], port)
        p.write(b"hello %d" % family)
        got[family] = (c, p)
    await wait_until(lambda: all(c.replies for c, _ in got.values()), what="replies")
    for family, (c, _) in got.items():
        assert c.replies == [b"hello %d" % family]
    locals_ = sorted(s.local[0] for s in svc._sessions.values())
    assert locals_ == sorted(["::1", "::ffff:127.0.0.1"])


@pytest_twisted.ensureDeferred
async def test_idle_sessions_end_and_release_their_sockets(net):
    svc, echo = await relay(net, idle=IDLE)
    await sleep(0.05)
    base = fds()
    clients = [client(net, svc) for _ in range(20)]
    with_clients = fds()
    with SessionLog() as log:
        for i, (_, port) in enumerate(clients):
            port.write(payload(i, 0))
        await wait_until(lambda: all(c.replies for c, _ in clients), what="replies")
        assert svc.sessions == 20
        assert fds() == with_clients + 20  # one datagram each: lean sessions, a backend socket each
        # A session kept busy outlives the idle time; the others end.
        busy = clients[0][1]
        for _ in range(8):
            busy.write(b"ping")
            await sleep(IDLE / 4)
            if _ == 0:
                assert fds() == with_clients + 21  # spliced now: its front socket too
        assert svc.sessions == 1
        await wait_until(lambda: svc.sessions == 0, timeout=IDLE * 4, what="the busy session to end too")
        await wait_until(lambda: fds() == with_clients, timeout=2, what="sockets closed")
    assert with_clients - base == 20
    assert len(log.events) == 20
    e = next(e for e in log.events if e["client"].endswith(":%d" % clients[1][1].getHost().port))
    assert e["how"] == "idle" and e["path"] == "copy"  # never spliced
    assert (e["datagrams_out"], e["bytes_out"], e["datagrams_in"], e["bytes_in"]) == (1, 32, 1, 32)
    assert IDLE <= e["duration"] < IDLE * 3
    assert e["backend"] == "127.0.0.1:%d" % svc.backend[1]
    busyEvent = next(e for e in log.events if e["client"].endswith(":%d" % clients[0][1].getHost().port))
    assert busyEvent["datagrams_out"] == 9 and busyEvent["duration"] >= 8 * IDLE / 4
    assert busyEvent["path"] == "mbuf"
    assert svc.sessionsTotal == 20 and svc.datagramsOut == 28 and svc.datagramsIn == 28


@pytest_twisted.ensureDeferred
async def test_session_cap_drops_and_counts_new_clients(net):
    svc, echo = await relay(net, idle=IDLE, maxSessions=5)
    clients = [client(net, svc) for _ in range(8)]
    for i, (_, port) in enumerate(clients):
        port.write(payload(i, 0))
        await sleep(0.01)
    await wait_until(lambda: sum(bool(c.replies) for c, _ in clients) == 5, what="5 served")
    await sleep(0.1)
    assert [bool(c.replies) for c, _ in clients] == [True] * 5 + [False] * 3
    assert svc.sessions == 5 and svc.dropped == 3
    for i, (_, port) in enumerate(clients[5:], 5):  # still over the cap: dropped again
        port.write(payload(i, 1))
    await sleep(0.1)
    assert svc.dropped == 6
    await wait_until(lambda: svc.sessions == 0, timeout=IDLE * 4, what="sessions to expire")
    late, port = clients[7]
    port.write(payload(7, 2))
    await wait_until(lambda: late.replies == [payload(7, 2)], what="a new client served after expiry")


@pytest_twisted.ensureDeferred
async def test_backend_down_ends_the_session_not_the_relay(net):
    from splicing.relay.udp import UDPRelayService

    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    deadPort = dead.getsockname()[1]
    dead.close()  # nothing listens there: ICMP port unreachable
    svc = UDPRelayService("udp:0:interface=127.0.0.1", "udp:127.0.0.1:%d" % deadPort, idle=5.0)
    svc.startService()
    net.ports.append(_Stopper(svc))
    with SessionLog() as log:
        c, port = client(net, svc)
        port.write(b"anyone?")
        await wait_until(lambda: log.events, what="the session to end")
    assert log.events[0]["how"] == "error: ECONNREFUSED"
    assert svc.sessions == 0 and svc.running


@pytest_twisted.ensureDeferred
async def test_stop_service_closes_everything(net):
    before = fds()
    svc, echo = await relay(net, idle=5.0)
    clients = [client(net, svc) for _ in range(10)]
    for i, (_, port) in enumerate(clients):
        port.write(payload(i, 0))
    await wait_until(lambda: all(c.replies for c, _ in clients), what="replies")
    with SessionLog() as log:
        await svc.stopService()
    assert svc.sessions == 0 and {e["how"] for e in log.events} == {"shutdown"} and len(log.events) == 10
    # Only the clients' and the backend's ports are left.
    await wait_until(lambda: fds() == before + 11, timeout=2, what="relay sockets closed")


# ---------------------------------------------------------------------------
# Descriptions


def test_parse_listen():
    from splicing.relay.udp import parseUDPListen

    assert parseUDPListen("udp:5353") == ("0.0.0.0", 5353)
    assert parseUDPListen("udp:5353:interface=\\:\\:1") == ("::1", 5353)
    assert parseUDPListen("udp:port=0:interface=127.0.0.1") == ("127.0.0.1", 0)
    assert parseUDPListen("udp:interface=\\:\\::53") == ("::", 53)
    for bad, part in [
        ("tcp:53", "'tcp'"),
        ("udp:", "port is missing"),
        ("udp:fiftythree", "'fiftythree'"),
        ("udp:70000", "70000"),
        ("udp:53:interface=localhost", "'localhost'"),
        ("udp:53:interface=::1", "interface"),  # unescaped colons split the address
        ("udp:53:bogus=1", "'bogus'"),
        ("udp:53:port=54", "'port' given twice"),
        ("udp:53\\", "backslash"),
    ]:
        with pytest.raises(ValueError) as info:
            parseUDPListen(bad)
        assert part in str(info.value), (bad, str(info.value))


def test_parse_connect():
    from splicing.relay.udp import parseUDPConnect

    assert parseUDPConnect("udp:host=127.0.0.1:port=53") == ("127.0.0.1", 53)
    assert parseUDPConnect("udp:10.0.0.1:53") == ("10.0.0.1", 53)
    assert parseUDPConnect("udp:host=\\:\\:1:port=53") == ("::1", 53)
    assert parseUDPConnect("udp:\\:\\:1:53") == ("::1", 53)
    assert parseUDPConnect("udp:dns.example:53") == ("dns.example", 53)
    for bad, part in [
        ("udp:port=53", "host is missing"),
        ("udp:host=h", "port is missing"),
        ("udp:h:0", "port 0"),
        ("udp:h:53:x", "too many"),
        ("udp:host=h:port=53:interface=1.2.3.4", "'interface'"),
        ("tls:h:53", "'tls'"),
        ("udp:h/x:53", "'h/x'"),
    ]:
        with pytest.raises(ValueError) as info:
            parseUDPConnect(bad)
        assert part in str(info.value), (bad, str(info.value))


def test_service_arguments_are_checked():
    from splicing.relay.udp import UDPRelayService

    for kw in ({"idle": 0}, {"idle": -1}, {"maxSessions": -1}, {"maxSessions": 1.5}):
        with pytest.raises(ValueError):
            UDPRelayService("udp:0", "udp:127.0.0.1:53", **kw)


def test_a_burst_of_new_clients_is_dispatched_without_nesting(monkeypatch):
    """
    A new session's socket may hold other clients' datagrams (they arrived
    between its bind and its connect); each starts another session, whose
    socket may hold more.  3,000 of them in a chain once ended in a
    RecursionError that left sessions half made (the 1,000-client benchmark
    then forwarded 1 % of its datagrams); now every session is made, in order.
    """
    from splicing.relay import udp

    made, forwarded = [], []

    class ChainedSession:
        def __init__(self, relay, client, local, backend, reactor, lean=False):
            self.relay, self.client, self.local = relay, client, local
            made.append(client[1])

        def forward(self, data):
            forwarded.append((self.client[1], data))

        def start(self):  # its socket held the next client's datagram
            if self.client[1] < 3000:
                self.relay.dispatch(b"d%d" % (self.client[1] + 1), ("127.0.0.1", self.client[1] + 1), self.local)

    monkeypatch.setattr(udp, "Session", ChainedSession)
    relay = udp.UDPRelayService("udp:0:interface=127.0.0.1", "udp:127.0.0.1:9", maxSessions=5000)
    relay.port, relay.backend = object(), ("127.0.0.1", 9)
    relay.dispatch(b"d1", ("127.0.0.1", 1), ("127.0.0.1", 5353))
    assert made == list(range(1, 3001))
    assert forwarded == [(n, b"d%d" % n) for n in range(1, 3001)]
    assert relay.sessionsTotal == 3000 and relay.dropped == 0
