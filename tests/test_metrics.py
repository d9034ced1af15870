"""
The metrics of the HTTP proxy and the UDP relay (splicing.app.metrics), in this
process over real sockets on 127.0.0.1: traffic goes through each relay
with a RelayMetrics, then every counter is compared with what the peers
saw, to the byte.  (TCP relays' metrics: test_relay_tcp.py, in twistd.)
"""

import socket

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

import harness
from httpharness import Proxy, RawOrigin, WebOrigin, blob, parse_responses, raw, request_bytes, unused_port
from splicing.relay.balance import BalancedEndpoint, Balancer, Target
from splicing.app.metrics import RelayMetrics, combine
from test_udp_relay import client, relay

# Body bytes that may arrive with a head are copied, not spliced (at most one read).
READ = 64 * 1024


def value(metrics, name, **labels):
    """A sample's value, 0 if it was never set."""
    v = metrics.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


def samples(metrics, name, **match):
    """[(labels, value)] of the samples called ``name`` whose labels include ``match``."""
    return [(s.labels, s.value) for family in metrics.registry.collect() for s in family.samples
            if s.name == name and match.items() <= s.labels.items()]


def moved(metrics, relay, direction):
    """splicing_bytes_total of ``relay`` one way, by path."""
    return {labels["path"]: v for labels, v in
            samples(metrics, "splicing_bytes_total", relay=relay, direction=direction)}


def answer(proto, head):
    """The origin: 200 with 300 KiB for /big, 404 otherwise."""
    if head.startswith(b"GET /big "):
        body, status = blob(300 * 1024), b"200 OK"
    else:
        body, status = b"no such thing\n", b"404 Not Found"
    proto.transport.write(b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))


# -- HTTP ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_http_sessions_bytes_requests_and_responses(net):
    """
    One keep-alive session (a 200 with a spliced body, then a 404) and one
    refused with the proxy's own 400: sessions by how, requests, responses
    by class, and bytes each way equal to what the origin and the clients
    received.
    """
    metrics = RelayMetrics()
    origin = RawOrigin(net, answer)
    proxy = Proxy(net, [origin], name="web", metrics=metrics)
    two = request_bytes(target="/big") + request_bytes(target="/gone", headers=[("Connection", "close")])
    got, _, how = await raw(proxy.portno, two)
    assert how == "eof" and [r.status for r in parse_responses(got)] == [200, 404]
    bad, _, _ = await raw(proxy.portno, b"NOT HTTP AT ALL\r\n\r\n")
    assert parse_responses(bad)[0].status == 400
    first, second = await proxy.ended(2)

    assert (first["how"], second["how"]) == ("close", "error-400")
    assert value(metrics, "splicing_sessions_total", relay="web", how="close") == 1
    assert value(metrics, "splicing_sessions_total", relay="web", how="error-400") == 1
    assert value(metrics, "splicing_http_requests_total", relay="web") == 2
    for code_class, n in (("2xx", 1), ("4xx", 2), ("5xx", 0)):
        assert value(metrics, "splicing_http_responses_total", relay="web", code_class=code_class) == n
    out, back = moved(metrics, "web", "out"), moved(metrics, "web", "in")
    assert set(out) == set(back) == {"splice", "copy"}
    assert out["splice"] + out["copy"] == origin.received_bytes  # the 400's request never left
    assert back["splice"] + back["copy"] == len(got) + len(bad)  # the 400 page counts
    assert back["splice"] >= 300 * 1024 - READ
    assert value(metrics, "splicing_sessions_active", relay="web") == 0

    # --workers: a master sums its workers' snapshots, the new counters too
    snapshot = metrics.snapshot()
    summed = {(name, tuple(sorted(labels.items()))): v
              for family in combine([snapshot, snapshot]) for name, labels, v in family[3]}
    assert summed[("splicing_http_responses_total", (("code_class", "4xx"), ("relay", "web")))] == 4
    assert summed[("splicing_http_requests_total", (("relay", "web"),))] == 4
    assert summed[("splicing_bytes_total", (("direction", "out"), ("path", "copy"), ("relay", "web")))] == \
        2 * out["copy"]


@pytest_twisted.ensureDeferred
async def test_http_connect_errors_count_each_target_and_the_502(net):
    """A balancer's two dead targets count once each; a plain endpoint by its description."""
    metrics = RelayMetrics()
    dead = [Target(TCP4ClientEndpoint(reactor, "127.0.0.1", unused_port(), timeout=2), name)
            for name in ("dead-a", "dead-b")]
    balanced = Proxy(net, [BalancedEndpoint(Balancer(dead, reactor))], name="balanced", metrics=metrics)
    plain = TCP4ClientEndpoint(reactor, "127.0.0.1", unused_port(), timeout=2)
    plain.description = "dead-plain"
    single = Proxy(net, [plain], name="single", metrics=metrics)
    for proxy in (balanced, single):
        got, _, _ = await raw(proxy.portno, request_bytes())
        assert parse_responses(got)[0].status == 502
        (s,) = await proxy.ended(1)
        assert s["how"] == "error-502"

    errors = {(labels["relay"], labels["target"]): v
              for labels, v in samples(metrics, "splicing_connect_errors_total")}
    assert errors == {("balanced", "dead-a"): 1, ("balanced", "dead-b"): 1, ("single", "dead-plain"): 1}
    for relay_ in ("balanced", "single"):
        assert value(metrics, "splicing_sessions_total", relay=relay_, how="error-502") == 1
        assert value(metrics, "splicing_http_responses_total", relay=relay_, code_class="5xx") == 1


@pytest_twisted.ensureDeferred
async def test_http_refused_clients_and_waiting_sessions(net):
    """--allow refusals are counted; with --max-sessions 1 a second client shows as waiting."""
    metrics = RelayMetrics()
    origin = WebOrigin(net)
    closed = Proxy(net, [origin], name="closed", allow=["10.0.0.0/8"], metrics=metrics)
    got, _, _ = await raw(closed.portno, request_bytes())
    assert got == b""
    await harness.wait_until(lambda: value(metrics, "splicing_refused_total", relay="closed", reason="allow") == 1,
                             what="the refusal counted")
    assert origin.untouched() and not closed.sessions
    assert value(metrics, "splicing_sessions_active", relay="closed") == 0

    cap = Proxy(net, [origin], name="cap", maxSessions=1, metrics=metrics)

    def live():
        return (value(metrics, "splicing_sessions_active", relay="cap"),
                value(metrics, "splicing_sessions_waiting", relay="cap"))

    # both connect before the reactor accepts: one accept turn takes both
    first, second = (socket.create_connection(("127.0.0.1", cap.portno)) for _ in range(2))
    try:
        await harness.wait_until(lambda: live() == (1, 1), what="one running, one waiting")
        first.close()
        await cap.ended(1)
        await harness.wait_until(lambda: live() == (1, 0), what="the waiting client to begin")
    finally:
        first.close()
        second.close()
    ended = await cap.ended(2)
    assert live() == (0, 0)
    assert [e["how"] for e in ended] == ["client-eof"] * 2
    assert value(metrics, "splicing_sessions_total", relay="cap", how="client-eof") == 2


# -- UDP -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_udp_sessions_and_bytes(net):
    """Three clients, each its own session: running sessions, then their idle ends and every byte."""
    metrics = RelayMetrics()
    svc, echo = await relay(net, idle=0.4, name="dns", metrics=metrics)
    sizes = [10, 200, 1500, 3]
    clients = [client(net, svc) for _ in range(3)]
    for c, port in clients:
        for n in sizes:
            port.write(blob(n))
    await harness.wait_until(lambda: all(len(c.replies) == len(sizes) for c, _ in clients), what="every echo")
    assert value(metrics, "splicing_sessions_active", relay="dns") == 3
    assert value(metrics, "splicing_sessions_waiting", relay="dns") == 0

    await harness.wait_until(lambda: value(metrics, "splicing_sessions_total", relay="dns", how="idle") == 3,
                             what="three idle ends")
    assert value(metrics, "splicing_sessions_active", relay="dns") == 0
    total = 3 * sum(sizes)
    out, back = moved(metrics, "dns", "out"), moved(metrics, "dns", "in")
    assert sum(out.values()) == sum(back.values()) == total == svc.bytesOut == svc.bytesIn
    assert set(out) <= {"copy", "mbuf"} and set(back) <= {"copy", "mbuf"}, (out, back)
