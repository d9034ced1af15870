"""
The TCP relay's lean sessions (L{splicing.relay.lean}) in-process: which
ports get them, and on them what a user relies on: every byte both ways in
order and counted (copied and spliced, IPv4, IPv6 and across), failover past a refusing backend, a clean refusal when none
answers, idle timeouts that reset, the session cap, and nothing left
behind (sockets, pipes, epoll entries, the backend's session count).  The
twistd-level tests of the TCP relay (half-close, PROXY-less configs,
metrics, early closes) run on lean sessions too.
"""

import errno
import hashlib
import os
import socket

import pytest
import pytest_twisted
from twisted.internet import endpoints, protocol, reactor, task

from harness import HOSTS, Peer, PeerCfg, wait, wait_until
from splicing.paths.kernel import pipePool
from splicing.relay.idle import DeadlineSweep
from splicing.relay.leanloop import sessionLoop
from splicing.relay.tcp import RelayFactory, RelayProtocol


@pytest.fixture
def loop():
    """The process's session loop (conftest's C{net} makes it before counting descriptors)."""
    return sessionLoop(reactor)


class Recording(RelayFactory):
    """Keeps each session's statistics (the log event's fields)."""

    def __init__(self, *a, **kw):
        RelayFactory.__init__(self, *a, **kw)
        self.ended = []

    def sessionFinished(self, session, stats):
        RelayFactory.sessionFinished(self, session, stats)
        self.ended.append(stats)


def endpoint(family, port):
    kind = endpoints.TCP4ClientEndpoint if family == 4 else endpoints.TCP6ClientEndpoint
    return kind(reactor, HOSTS[family], port, timeout=5)


def relay(net, request, targets, family=4, sndbuf=None, **kw):
    """A lean relay listening on C{family}'s loopback, relaying to C{targets} ((family, port) pairs)."""
    factory = Recording([endpoint(f, p) for f, p in targets], reactor=reactor, **kw)
    port = net.listen(factory, family, sndbuf=sndbuf)  # (accepted sockets inherit the buffer size)
    assert factory.portListening(port), "a plain TCP port with TCP targets is served lean"
    factory.table.addPort(port)
    request.addfinalizer(lambda: factory.table.removePort(port))
    return factory, port


def server(net, family, cfg):
    """A listening Peer; C{made} gets each server-side Peer."""
    made = []

    def build():
        made.append(Peer(net, "server", cfg))
        return made[-1]

    port = net.listen(protocol.Factory.forProtocol(build), family)
    return port, made


async def client(net, family, port, cfg):
    peer = Peer(net, "client", cfg)
    await endpoints.connectProtocol(endpoint(family, port.getHost().port), peer)
    return peer


def md5(data):
    return hashlib.md5(data).hexdigest()


async def settled(factory, loop):
    """Wait until the relay holds nothing: no session, no pipe borrowed, no descriptor watched."""
    await wait_until(lambda: len(factory.table) == 0 and not loop.handlers and pipePool().inUse == 0,
                     what="the relay to let go of everything")
    assert all(t.sessions == 0 for t in factory.balancer.targets)


def test_which_ports_get_lean_sessions(net, tmp_path):
    factory = RelayFactory([endpoint(4, 9)], reactor=reactor)
    port = net.listen(factory)
    assert factory.portListening(port)

    class Hooked(RelayProtocol):
        def chooseEndpoint(self, header):
            return None

    def served(**kw):
        targets = kw.pop("targets", [endpoint(4, 9)])
        f = RelayFactory(targets, reactor=reactor, **kw)
        p = net.listen(f)
        return f, p

    for kw in [dict(sendProxy="v1"), dict(backendPath="kernel"), dict(backendPath="transport"),
               dict(targets=[endpoints.HostnameEndpoint(reactor, "localhost", 9)])]:
        f, p = served(**kw)
        assert not f.portListening(p), kw
    f, p = served()
    f.protocol = Hooked  # an application's hooks need the transport-based session
    assert not f.portListening(p)
    f, p = served()
    f.leanSessions = False
    assert not f.portListening(p)
    f = RelayFactory([endpoint(4, 9)], reactor=reactor)
    unix = reactor.listenUNIX(str(tmp_path / "s"), f)
    net.ports.append(unix)
    assert not f.portListening(unix)


@pytest.mark.parametrize("fam_in,fam_out", [(4, 4), (6, 6), (4, 6)])
@pytest.mark.parametrize("sizes", [(1024, 700), (3_000_000, 2_000_001)], ids=["small", "bulk"])
@pytest_twisted.ensureDeferred
async def test_every_byte_both_ways_counted(net, request, loop, fam_in, fam_out, sizes):
    up, down = os.urandom(sizes[0]), os.urandom(sizes[1])
    sport, servers = server(net, fam_out, PeerCfg(data=down))
    factory, port = relay(net, request, [(fam_out, sport.getHost().port)], family=fam_in)
    c = await client(net, fam_in, port, PeerCfg(data=up))
    local = c.transport.getHost().port
    await wait(c.lost, what="the client's end")
    await wait(servers[0].lost, what="the server's end")
    assert (c.nbytes, c.md5()) == (len(down), md5(down))
    assert (servers[0].nbytes, servers[0].md5()) == (len(up), md5(up))
    assert c.clean_close() and servers[0].clean_close()
    await settled(factory, loop)
    (stats,) = factory.ended
    assert (stats["bytes_out"], stats["bytes_in"], stats["how"], stats["path"]) == (len(up), len(down), "eof", "kernel")
    if sizes[0] < 65536:
        assert stats["copied"] == len(up) + len(down)  # a request and its answer never take a pipe
    else:
        assert 0 < stats["copied"] <= 2 * 65536  # bulk is spliced after at most 64 KiB each way
    host = HOSTS[fam_in]
    assert stats["client"] == ("[%s]:%d" if fam_in == 6 else "%s:%d") % (host, local)
    assert stats["backend"] == ("[%s]:%d" if fam_out == 6 else "%s:%d") % (HOSTS[fam_out], sport.getHost().port)


@pytest_twisted.ensureDeferred
async def test_failover_then_refusal(net, request, loop):
    refusing = socket.socket()
    refusing.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
    dead = refusing.getsockname()[1]
    sport, servers = server(net, 4, PeerCfg(data=b"pong"))
    factory, port = relay(net, request, [(4, dead), (4, sport.getHost().port)])
    c = await client(net, 4, port, PeerCfg(data=b"ping"))
    await wait(c.lost, what="the client's end")
    assert bytes(c.received) == b"pong"
    first, second = factory.balancer.targets
    assert first.connectErrors == 1 and first.downUntil > reactor.seconds() and second.connectErrors == 0

    alone, port2 = relay(net, request, [(4, dead)])
    c = await client(net, 4, port2, PeerCfg(data=b"ping"))
    await wait(c.lost, what="the client's end")
    refusing.close()
    assert c.clean_close(), "refused: the client's connection is closed, not reset"
    (stats,) = alone.ended
    assert (stats["how"], stats["why"], stats["backend"], stats["path"]) == (
        "connect-failed", "connection refused", None, None)
    await settled(factory, loop)
    await settled(alone, loop)


@pytest_twisted.ensureDeferred
async def test_idle_session_is_reset_and_cap_admits_the_next(net, request, loop):
    sport, servers = server(net, 4, PeerCfg(data=b"x", half_close=False))
    factory, port = relay(net, request, [(4, sport.getHost().port)], idle=0.4, maxSessions=1)
    first = await client(net, 4, port, PeerCfg(data=b"y", half_close=False))
    second = await client(net, 4, port, PeerCfg(data=b"z", half_close=False))
    await wait_until(lambda: len(servers) == 1, what="the first session")
    await task.deferLater(reactor, 0.1)
    assert len(servers) == 1, "the second client waits (in the backlog) for a slot"
    await wait(first.lost, timeout=5, what="the idle timeout")
    assert not first.clean_close(), "an idle session is reset"
    await wait_until(lambda: len(servers) == 2, what="the second session to begin")
    await wait(second.lost, timeout=5, what="the second idle timeout")
    assert [s["how"] for s in factory.ended] == ["idle", "idle"]
    assert all(0.4 <= s["duration"] < 2.0 for s in factory.ended[:1])
    await settled(factory, loop)


def test_deadline_sweep():
    clock = task.Clock()
    sweep = DeadlineSweep(clock, tick=0.5)
    fired = []
    sweep.add("a", 1.0, lambda: fired.append("a"))
    sweep.add("b", 1.0, lambda: fired.append("b"))
    sweep.add("c", 2.0, lambda: fired.append("c"))
    sweep.discard("b")
    clock.advance(0.5)
    assert fired == []
    clock.advance(0.5)
    assert fired == ["a"]
    clock.advance(1.0)
    assert fired == ["a", "c"]
    clock.advance(0.5)
    assert not clock.getDelayedCalls(), "with nothing left the timer lapses"
    sweep.add("d", 0.1, lambda: fired.append("d"))
    clock.advance(0.5)
    assert fired == ["a", "c", "d"]


@pytest_twisted.ensureDeferred
async def test_directions_wait_their_turn_for_a_pipe(net, request, loop, monkeypatch):
    """One pipe for four bulk directions: each waits for it, none loses or reorders a byte."""
    pool = pipePool()
    pool.clear()
    monkeypatch.setattr(pool, "limit", 1)
    sport, servers = server(net, 4, PeerCfg(data=os.urandom(1_500_000)))
    factory, port = relay(net, request, [(4, sport.getHost().port)], sndbuf=32768)
    ups = [os.urandom(1_200_000 + i) for i in range(2)]
    # Clients that read late: an answer stalls in the pipe, and the other directions must wait for it.
    clients = [await client(net, 4, port, PeerCfg(data=up, read_delay=0.3, rcvbuf=65536)) for up in ups]
    for c in clients:
        await wait(c.lost, what="a client's end")
    await wait_until(lambda: len(servers) == 2 and all(s.lost_at for s in servers), what="the servers' ends")
    assert sorted(s.md5() for s in servers) == sorted(md5(up) for up in ups)
    assert all(c.nbytes == 1_500_000 for c in clients)
    await settled(factory, loop)
    assert sorted(s["bytes_out"] for s in factory.ended) == [len(up) for up in ups]


@pytest_twisted.ensureDeferred
async def test_connect_timeout_fails_over(net, request, loop):
    """A backend that never answers the handshake: the connect times out and the next target serves."""
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)  # never accepted: once its one backlog slot is taken, SYNs go unanswered
    filler = [socket.socket() for _ in range(3)]
    for f in filler:
        f.setblocking(False)
        f.connect_ex(full.getsockname())
    sport, servers = server(net, 4, PeerCfg(data=b"pong"))
    factory, port = relay(net, request, [(4, full.getsockname()[1]), (4, sport.getHost().port)], connectTimeout=0.5)
    began = reactor.seconds()
    c = await client(net, 4, port, PeerCfg(data=b"ping"))
    await wait(c.lost, what="the client's end")
    for s in filler + [full]:
        s.close()
    assert bytes(c.received) == b"pong"
    assert 0.5 <= reactor.seconds() - began < 2.0, "failed over after the timeout (swept at most 1/4 late)"
    first = factory.balancer.targets[0]
    assert first.connectErrors == 1 and "timed out" in first.why
    await settled(factory, loop)


@pytest_twisted.ensureDeferred
async def test_relay_service_serves_plain_ports_lean(net, request, loop):
    """What twistd runs: a RelayService on a tcp: string serves lean sessions; with --send-proxy, protocols."""
    from splicing.app.service import RelayService
    from splicing.relay.lean import LeanSession

    sport, servers = server(net, 4, PeerCfg(data=None, half_close=False))
    kinds = []
    for kw in ({}, {"sendProxy": "v1"}):
        factory = RelayFactory([endpoint(4, sport.getHost().port)], reactor=reactor, **kw)
        svc = RelayService(["tcp:0:interface=127.0.0.1"], factory, reactor=reactor, shutdownTimeout=0)
        svc.startService()
        request.addfinalizer(lambda svc=svc: svc.running and svc.stopService())
        await wait_until(lambda: svc.ports, what="the service to listen")
        c = await client(net, 4, svc.ports[0], PeerCfg(data=b"hello", half_close=False))
        await wait_until(lambda: len(factory.table.active) == 1, what="the session to begin")
        kinds.append(type(next(iter(factory.table.active))))
        c.transport.abortConnection()
        await svc.stopService()
    assert kinds == [LeanSession, RelayProtocol]


@pytest_twisted.ensureDeferred
async def test_a_reset_while_the_pipe_holds_bytes_returns_the_pipe(net, request, loop):
    """
    The client half-closed, then resets while its answer waits in a pipe:
    the session ends (as EOF: the client had closed its way) and the pipe
    goes back to the pool (the first version kept it: found by
    C{python -m tests.stress}'s early closes).
    """
    sport, servers = server(net, 4, PeerCfg(data=os.urandom(3_000_000)))
    factory, port = relay(net, request, [(4, sport.getHost().port)], sndbuf=32768)
    c = await client(net, 4, port, PeerCfg(data=b"x", read_delay=30, rcvbuf=65536, reset_after=0.5))
    await wait(c.lost, what="the client's reset")
    await settled(factory, loop)
    (stats,) = factory.ended
    assert stats["how"] == "eof" and stats["error"] in (errno.ECONNRESET, errno.EPIPE)
    assert stats["bytes_out"] == 1 and 65536 < stats["bytes_in"] < 3_000_000
