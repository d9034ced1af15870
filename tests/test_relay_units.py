"""
The relay's small parts in-process: PROXY headers (checked with Twisted's
own parsers), the allow-list, round-robin with failover and hold-off, the
session table's cap, and config-file line numbers.
"""

import ipaddress

import pytest
from twisted.internet import defer, error, task
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser

from splicing.app import config

from splicing.relay import proxyheader
from splicing.relay.access import AllowList, parseNetwork
from splicing.relay.balance import Balancer, Target
from splicing.app.cli import TCPOptions
from splicing.relay.sessions import SessionTable

V4 = IPv4Address("TCP", "192.0.2.1", 40000), IPv4Address("TCP", "198.51.100.2", 443)
V6 = IPv6Address("TCP", "2001:db8::1", 40000), IPv6Address("TCP", "2001:db8::2", 443)
MAPPED = IPv6Address("TCP", "::ffff:192.0.2.1", 40000), IPv6Address("TCP", "::ffff:198.51.100.2", 443)


@pytest.mark.parametrize("pair,family", [(V4, 4), (V6, 6), (MAPPED, 4), ((V4[0], V6[1]), 6)])
@pytest.mark.parametrize("version,parser", [("v1", V1Parser), ("v2", V2Parser)])
def test_proxy_header_round_trip(pair, family, version, parser):
    header = proxyheader.encode(version, *pair)
    info, rest = parser().feed(header + b"rest")
    assert rest == b"rest"
    for sent, got in zip(pair, (info.source, info.destination)):
        want = ipaddress.ip_address(sent.host)
        if family == 6 and want.version == 4:
            want = ipaddress.ip_address("::ffff:%s" % want)
        elif family == 4 and want.version == 6:
            want = want.ipv4_mapped
        assert (ipaddress.ip_address(got.host), got.port) == (want, sent.port)


def test_proxy_header_unknown_and_unix():
    unix = UNIXAddress(b"/run/a.sock"), UNIXAddress(b"/run/b.sock")
    assert proxyheader.v1(*unix) == b"PROXY UNKNOWN\r\n"
    header = proxyheader.v2(*unix)
    assert header[:12] == proxyheader.V2_SIGNATURE and header[12:14] == b"\x21\x31" and len(header) == 16 + 216
    info, _ = V2Parser().feed(header)
    assert info.source.name == b"/run/a.sock"
    assert len(proxyheader.v1(V4[0], V4[1])) <= 107
    with pytest.raises(ValueError):
        proxyheader.encode("v3", *V4)


def test_allow_list():
    allow = AllowList(["10.0.0.0/8", "2001:db8::/32"])
    assert allow.allows(IPv4Address("TCP", "10.1.2.3", 1))
    assert not allow.allows(IPv4Address("TCP", "127.0.0.1", 1))
    assert allow.allows(IPv6Address("TCP", "::ffff:10.9.9.9", 1))  # dual-stack listener
    assert allow.allows(IPv6Address("TCP", "2001:db8::7", 1)) and not allow.allows(IPv6Address("TCP", "::1", 1))
    assert allow.allows(UNIXAddress(b"/x")) and AllowList().allows(IPv4Address("TCP", "127.0.0.1", 1))
    for bad in ("10.0.0.0/33", "example.com", ""):
        with pytest.raises(ValueError, match="not a network"):
            parseNetwork(bad)


class FakeEndpoint:
    def __init__(self, results):
        self.results = list(results)
        self.calls = 0

    def connect(self, factory):
        self.calls += 1
        outcome = self.results.pop(0) if self.results else "ok"
        if outcome == "ok":
            return defer.succeed(self)
        if outcome == "hang":
            return defer.Deferred()
        return defer.fail(error.ConnectionRefusedError())


def test_balancer_round_robin_failover_and_holdoff():
    clock = task.Clock()
    a, b, c = FakeEndpoint(["refused"]), FakeEndpoint([]), FakeEndpoint(["hang"])
    failures = []
    balancer = Balancer([(a, "a"), (b, "b"), (c, "c")], clock, timeout=2, holdoff=10,
                        onFailure=lambda t, f: failures.append(t.name))
    chosen = []
    for _ in range(3):
        balancer.connect(None).addCallback(lambda r: chosen.append(r[1].name))
        clock.advance(2)  # c hangs: the timeout moves on to a
    assert chosen == ["b", "b", "b"]  # a refused, then c timed out: b took over each time
    assert failures == ["a", "c"]
    assert a.calls + b.calls + c.calls == 5
    # a and c are down for 10 s: only b is tried first now
    assert [t.name for t in balancer.order()] == ["b", "a", "c"]  # a's turn, but a and c are down
    clock.advance(10)
    assert [t.name for t in balancer.order()] == ["b", "c", "a"]  # back in plain rotation


def test_balancer_all_down_fails_with_last_error():
    clock = task.Clock()
    balancer = Balancer([(FakeEndpoint(["refused"]), "a")], clock)
    failures = []
    balancer.connect(None).addErrback(failures.append)
    assert failures and failures[0].check(error.ConnectionRefusedError)


class Session:
    def __init__(self):
        self.begun = False

    def begin(self):
        self.begun = True


class Port:
    reading = True

    def stopReading(self):
        self.reading = False

    def startReading(self):
        self.reading = True


def test_session_table_caps_and_pauses_ports():
    table, port = SessionTable(2), Port()
    table.addPort(port)
    s1, s2, s3 = Session(), Session(), Session()
    table.admit(s1)
    assert port.reading
    table.admit(s2)
    assert not port.reading and s2.begun
    table.admit(s3)  # accepted in the same turn: waits
    assert not s3.begun and list(table.waiting) == [s3]
    done = table.whenEmpty()
    table.release(s1)
    assert s3.begun and not port.reading
    table.release(s2)
    table.release(s2)  # idempotent
    assert port.reading and not done.called
    table.release(s3)
    assert done.called


def test_config_errors_name_file_and_line(tmp_path):
    path = tmp_path / "relays.toml"
    path.write_text('metrics = "tcp:0"\n\n[relay.web]\nlisten = "tcp:0"\nidle = "soon"\n')
    with pytest.raises(config.ConfigError, match=r"relays.toml:5: relay web: --idle takes a number"):
        config.load(str(path), {"tcp": TCPOptions})
    path.write_text('[relay."a b"]\nconnect = ["tcp:host=h:port=1"]\nallow = ["1.2.3.4"]\nno-splice = true\n')
    loaded = config.load(str(path), {"tcp": TCPOptions})
    relay = loaded.relays["a b"]  # a description: listeners and backends as tuples
    assert relay.connect == ("tcp:host=h:port=1",) and relay.options["backend"] == "mbuf"
    assert loaded.relays["a b"] == config.load(str(path), {"tcp": TCPOptions}).relays["a b"]


def test_backend_address_literals_connect_without_a_resolver():
    """An address literal gets a plain TCP endpoint (no getaddrinfo thread per session); names resolve."""
    from twisted.internet import endpoints, reactor

    from splicing.relay.balance import clientFromString

    assert type(clientFromString(reactor, "tcp:host=127.0.0.1:port=80")) is endpoints.TCP4ClientEndpoint
    assert type(clientFromString(reactor, r"tcp:host=\:\:1:port=80")) is endpoints.TCP6ClientEndpoint
    assert type(clientFromString(reactor, "tcp:host=localhost:port=80")) is endpoints.HostnameEndpoint
    assert type(clientFromString(reactor, "unix:/tmp/x.sock")) is endpoints.UNIXClientEndpoint
