"""
Health checks and balancing policies in-process: the check syntax, the
sans-IO probes fed byte by byte, the state machine (down and up logged once
each) on a fake clock, every policy's order, and the fast refusal when every
backend is down.  (Real backends killed and restarted: test_health.py.)
"""

import pytest
from twisted.internet import defer, error, task
from twisted.internet.address import IPv4Address
from twisted.logger import globalLogPublisher

from splicing.relay import checks
from splicing.relay.balance import Balancer, NoBackendError, Target
from splicing.relay.checks import CheckSpec, ExpectCheck, HealthChecks, HTTPCheck, parseCheck


# -- the syntax


@pytest.mark.parametrize("text,spec", [
    ("tcp", CheckSpec("tcp")),
    ("http /", CheckSpec("http", path="/")),
    ("http /health?full=1 code 204", CheckSpec("http", path="/health?full=1", code=204)),
    ("send PING expect PONG", CheckSpec("send", send=b"PING", expect=b"PONG")),
    (r"send 'PING\r\n' expect '+PONG*'", CheckSpec("send", send=b"PING\r\n", expect=b"+PONG*")),
    (r'send "" expect "220 *"', CheckSpec("send", send=b"", expect=b"220 *")),
    (r"send \x00\xff expect ok", CheckSpec("send", send=b"\x00\xff", expect=b"ok")),
])
def test_parse_check(text, spec):
    assert parseCheck(text) == spec


@pytest.mark.parametrize("text,message", [
    ("", "expected tcp, 'http /PATH"),
    ("ping", "expected tcp, 'http /PATH"),
    ("tcp now", "expected tcp"),
    ("http", "needs a path starting with '/'"),
    ("http health", "needs a path starting with '/'"),
    ("http / code 99", "100 to 599"),
    ("http / code", "'http /PATH code N'"),
    ("http / status 200", "'http /PATH code N'"),
    ("send PING", "'send STRING expect STRING'"),
    ("send PING expect", "'send STRING expect STRING'"),
    ("send PING expect ''", "the expected string is empty"),
    (r"send '\q' expect x", "unknown escape"),
    ("send 'PING expect x", "No closing quotation"),
    ("send caf\u00e9\u20ac expect x", "codec can't encode"),
])
def test_parse_check_errors(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("?", r"\?")):
        parseCheck(text)


# -- sans-IO probes


def feed(check, data):
    """Byte by byte: the first verdict, or None."""
    for i in range(len(data)):
        verdict = check.feed(data[i:i + 1])
        if verdict is not None:
            return verdict
    return None


def test_http_check_request_and_statuses():
    check = HTTPCheck("/health", None, "example.org:8080")
    assert check.request.startswith(b"GET /health HTTP/1.1\r\nHost: example.org:8080\r\n")
    assert b"Host: xn--bcher-kva.example:80\r\n" in HTTPCheck("/", None, "b\u00fccher.example:80").request
    assert b"Host: [::1]:80\r\n" in HTTPCheck("/", None, "[::1]:80").request
    assert check.request.endswith(b"\r\n\r\n") and b"Connection: close" in check.request
    assert check.connected() is None
    assert feed(check, b"HTTP/1.1 204 No Content\r\n") == (True, "status 204")
    assert feed(HTTPCheck("/", None, "h"), b"HTTP/1.0 302 Found\r\n")[0]
    assert feed(HTTPCheck("/", None, "h"), b"HTTP/1.1 503 Busy\r\n") == (False, "status 503, expected 2xx or 3xx")
    assert feed(HTTPCheck("/", 404, "h"), b"HTTP/1.1 404 Not Found\r\n") == (True, "status 404")
    assert feed(HTTPCheck("/", 200, "h"), b"HTTP/1.1 204 OK\r\n") == (False, "status 204, expected 200")
    assert not feed(HTTPCheck("/", None, "h"), b"SSH-2.0-OpenSSH\r\n")[0]
    assert HTTPCheck("/", None, "h").lost("refused")[0] is False
    assert feed(HTTPCheck("/", None, "h"), b"HTTP/1.1 200") is None  # not a line yet
    assert feed(HTTPCheck("/", None, "h"), b"x" * checks.REPLY_LIMIT)[0] is False


def test_expect_check_glob_and_substring():
    assert feed(ExpectCheck(b"PING\r\n", b"+PONG"), b"junk +PONG\r\n") == (True, "got '+PONG'")
    glob = ExpectCheck(b"", b"220 *")
    assert feed(glob, b"220 mail ready\r\n") == (True, "got '220 *'")
    assert feed(ExpectCheck(b"", b"220 *"), b"554 go away\r\n") is None  # maybe more comes...
    late = ExpectCheck(b"", b"220 *")
    feed(late, b"554 go away\r\n")
    assert late.lost(None) == (False, "expected '220 *', got '554 go away\\r\\n'")  # ...but it closed


# -- the state machine, on a fake clock


class Endpoint:
    """Connects per a script: "ok" (a probe transport answering ``answer``), "refused" or "hang"."""

    def __init__(self, outcomes, answer=b""):
        self.outcomes = list(outcomes)
        self.answer = answer
        self.connects = 0
        self.pending = []

    def connect(self, factory):
        self.connects += 1
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if outcome == "refused":
            return defer.fail(error.ConnectionRefusedError())
        if outcome == "hang":
            d = defer.Deferred()
            self.pending.append(d)
            return d
        from twisted.internet.testing import StringTransport

        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        if self.answer:
            protocol.dataReceived(self.answer)
        return defer.succeed(protocol)


@pytest.fixture
def events():
    got = []
    globalLogPublisher.addObserver(got.append)
    yield lambda: [(e["state"], e["address"], e["why"]) for e in got if "state" in e]
    globalLogPublisher.removeObserver(got.append)


def test_down_and_up_logged_once_each(events):
    clock = task.Clock()
    endpoint = Endpoint(["ok", "refused", "refused", "refused", "ok", "ok"])
    target = Target(endpoint, "tcp:host=10.0.0.1:port=80")
    service = HealthChecks([target], parseCheck("tcp"), interval=10, timeout=2, relay="web", reactor=clock)
    service.startService()
    assert target.up and target.lastCheck == 0 and events() == []
    for _ in range(3):
        clock.advance(10)
    assert not target.up and target.why.startswith("Connection was refused")
    clock.advance(10)
    clock.advance(10)
    assert target.up and target.lastCheck == 50
    assert [e[:2] for e in events()] == [("down", "10.0.0.1:80"), ("up", "10.0.0.1:80")]
    assert events()[0][2].startswith("Connection was refused")
    service.stopService()
    assert clock.getDelayedCalls() == []


def test_timeout_fails_and_stop_cancels_what_is_in_flight(events):
    clock = task.Clock()
    endpoint = Endpoint(["hang"])
    target = Target(endpoint, "tcp:host=10.0.0.2:port=81")
    service = HealthChecks([target], parseCheck("http /"), interval=10, timeout=3, reactor=clock)
    service.startService()
    clock.advance(3)
    assert not target.up and target.why == "no answer within 3s"
    clock.advance(7)  # the next round's probe hangs too...
    assert endpoint.connects == 2 and target in service.inFlight
    service.stopService()  # ...and is cancelled
    assert service.inFlight == {} and clock.getDelayedCalls() == []
    assert [e[0] for e in events()] == ["down"]


def test_probe_in_flight_is_not_doubled():
    clock = task.Clock()
    endpoint = Endpoint(["hang"])
    service = HealthChecks([Target(endpoint, "a")], parseCheck("tcp"), interval=1, timeout=5, reactor=clock)
    service.startService()
    clock.advance(1)
    clock.advance(1)
    assert endpoint.connects == 1
    service.stopService()


def test_wrong_status_marks_down():
    clock = task.Clock()
    target = Target(Endpoint(["ok"], answer=b"HTTP/1.1 500 Oops\r\n\r\n"), "tcp:host=h:port=1")
    HealthChecks([target], parseCheck("http /health"), reactor=clock).startService()
    assert not target.up and target.why == "status 500, expected 2xx or 3xx"


# -- balancing


class Named:
    """An endpoint that connects at once to a fresh protocol."""

    def connect(self, factory):
        from twisted.internet.protocol import Protocol

        return defer.succeed(Protocol())


def names(balancer, n, client=None):
    return [balancer.order(client)[0].name for _ in range(n)]


def test_policies():
    clock = task.Clock()
    targets = lambda: [Target(Named(), n) for n in "abc"]  # noqa: E731
    assert names(Balancer(targets(), clock), 4) == ["a", "b", "c", "a"]
    source = Balancer(targets(), clock, policy="source-hash")
    for host in ("192.0.2.1", "192.0.2.2", "2001:db8::9"):
        client = IPv4Address("TCP", host, 1000)
        first = names(source, 1, client)
        assert names(source, 3, IPv4Address("TCP", host, 2000)) == first * 3  # the port does not matter
    from twisted.internet.address import IPv6Address

    mapped = IPv6Address("TCP", "::ffff:192.0.2.1", 1)
    assert names(source, 1, mapped) == names(source, 1, IPv4Address("TCP", "192.0.2.1", 1))
    spread = {names(source, 1, IPv4Address("TCP", "10.0.0.%d" % i, 1))[0] for i in range(40)}
    assert spread == {"a", "b", "c"}
    rand = Balancer(targets(), clock, policy="random")
    rand.random.seed(1)
    assert set(names(rand, 60)) == {"a", "b", "c"}
    with pytest.raises(ValueError, match="roundrobin, random, source-hash, least-connections"):
        Balancer(targets(), clock, policy="leastconn")


def test_least_connections_counts_open_connections():
    clock = task.Clock()
    balancer = Balancer([Target(Named(), n) for n in "ab"], clock, policy="least-connections")
    got = []
    for _ in range(3):
        balancer.connect(None).addCallback(got.append)
    assert [t.name for _, t in got] == ["a", "b", "a"]
    assert [t.sessions for t in balancer.targets] == [2, 1]
    got[0][0].connectionLost(None)
    got[2][0].connectionLost(None)
    assert [t.sessions for t in balancer.targets] == [0, 1]
    assert balancer.order()[0].name == "a"


def test_checked_down_targets_leave_rotation_and_all_down_fails_fast():
    clock = task.Clock()
    a, b = Target(Named(), "a"), Target(Named(), "b")
    balancer = Balancer([a, b], clock)
    a.up = False
    assert names(balancer, 3) == ["b", "b", "b"]
    b.up = False
    failures = []
    balancer.connect(None).addErrback(failures.append)
    assert failures[0].check(NoBackendError) and str(failures[0].value) == "every backend is down"
    b.up = True
    assert names(balancer, 2) == ["b", "b"]
