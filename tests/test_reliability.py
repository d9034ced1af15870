"""
Reliability under load, in real ``twistd splice`` processes, with checked
traffic from separate processes (tests/stress/traffic.py): every byte of
every session is hashed at both ends.  The long version of each scenario is
``python -m tests.stress`` (docs/reliability.md).

- integrity: hundreds of concurrent sessions with random lengths and
  half-close orders, on the kernel and the mbuf path;
- leaks: normal ends, resets both ways, idle timeouts, the session cap and a
  refusing backend leave the relay with the descriptors, pipes and memory it
  had;
- bounded memory: a sender pushing into a relay whose receiver stopped
  reading (TCP, and an HTTP upload to a stalled origin);
- descriptor exhaustion: accepting pauses (no busy loop, nobody dropped),
  running sessions go on, and it recovers and says so;
- --max-sessions under a connection flood, --allow refusing a flood;
- SIGTERM and SIGHUP under load.
"""

import errno
import os
import re
import signal
import socket
import subprocess
import time

import pytest
from twisted.internet import defer, error, task

import procs
from procs import Backend, connect
from splicing.relay.accepting import DescriptorGuard, countOpen, exhaustionErrno, softLimit
from splicing.relay.balance import Balancer, Target
from splicing.relay.sessions import SessionTable
from stress import load

LOCAL = "tcp:0:interface=127.0.0.1:backlog=1024"
MIX = "normal=6,client_reset=1,origin_reset=1"


@pytest.fixture(scope="module", autouse=True)
def descriptors():
    load.raise_fd_limit()


@pytest.fixture
def origin():
    o = load.Origin(stall=2.0)
    yield o
    o.close()


@pytest.fixture
def start(tmp_path):
    started = []

    def run(args, **kw):
        p = procs.Twistd(tmp_path, args, name="relay%d" % len(started), **kw)
        started.append(p)
        return p

    yield run
    for p in started:
        p.close()


def assert_clean(result, sessions, origin_summary=None):
    """Every session ran, none failed, and the origin checked what the clients sent."""
    assert result["failed"] == [] and result["unfinished"] == 0, result
    assert result["sessions"] == sessions, result
    if origin_summary is not None:
        assert origin_summary["failed"] == [] and origin_summary["bad_headers"] == 0, origin_summary
        assert origin_summary["ok"] == result["kinds"].get("normal", 0), (origin_summary, result)


# -- integrity under concurrency ----------------------------------------------


@pytest.mark.parametrize("backend", ["kernel", "mbuf"])
def test_concurrent_sessions_keep_every_byte(start, origin, backend):
    """300 sessions at once, random lengths and half-close orders: both ends' digests match."""
    relay = start(["tcp", "--listen", LOCAL, "--connect", origin.tcp, "--backend", backend])
    (where,) = relay.listening()["tcp"]
    n = 300
    result = load.clients([where], n, n, procs=2, mix=MIX, max_up=96 << 10, max_down=96 << 10,
                          start_at=time.time() + 2.0, seed=hash(backend) & 0xFFFF)
    summary = origin.stop()
    assert_clean(result, n, summary)
    assert summary["max_concurrent"] >= n * 0.8, summary  # they did overlap at the origin
    assert result["checked_bytes"] > 0 and summary["checked_bytes"] > 0
    ends = re.findall(r"session ended: .*, (\w+), ([\w-]+)\n", relay.text())
    assert len(ends) == n and {path for path, _ in ends} == {backend}


# -- no leaks -----------------------------------------------------------------

def test_no_leaks_after_every_kind_of_ending(start, origin, tmp_path):
    """
    Normal ends, resets both ways, idle timeouts, the session cap, a refusing
    backend and refused clients: descriptors and pipes come back to where
    they were, memory to within 4 MiB, and no refused client reached the origin.
    """
    path = tmp_path / "relays.toml"
    path.write_text(load.LEAK_CONFIG.format(cap=4, listen=LOCAL, origin=origin.tcp.replace("\\", "\\\\"), dead=procs.free_port()))
    relay = start(["--config", str(path)])
    ports = {name: where[0] for name, where in relay.listening(4).items()}
    probe = load.Probe(relay.proc.pid)

    def batch(first):
        running = [
            load.start_clients([ports["main"]], 600, 150, procs=2, mix=MIX + ",idle=1", max_up=64 << 10,
                               max_down=64 << 10, idle_deadline=4.0, first_id=first),
            load.start_clients([ports["cap"]], 100, 50, max_up=4096, max_down=4096, first_id=first + 2),
            load.start_clients([ports["dead"]], 100, 50, mix="client_reset", first_id=first + 3),
            load.start_clients([ports["deny"]], 100, 50, mix="client_reset", first_id=first + 4),
        ]
        main, cap, dead, deny = (load.finish(r) for r in running)
        assert_clean(main, 600)
        assert_clean(cap, 100)
        for refused in (dead, deny):  # reset so early that the connect itself may see it
            assert refused["sessions"] + refused["connect_errors"] == 100 and not refused["unfinished"]
        return main

    # The same load twice: the first brings pools, caches and the heap to
    # their working size; the second must leave nothing behind.
    first = batch(10)
    baseline = load.settle(probe, {"fds": 0, "pipes": 0, "rss": 0}, timeout=1.0)
    second = batch(20)
    after = load.settle(probe, baseline)
    assert (after["fds"], after["pipes"]) <= (baseline["fds"], baseline["pipes"]), (baseline, after)
    assert after["rss"] - baseline["rss"] < 4 << 20, (baseline, after)
    summary = origin.stop()
    assert summary["failed"] == [] and summary["sessions"] == 2 * (600 + 100)  # never dead's or deny's
    text = relay.text()
    assert len(re.findall(r"refused 127\.0\.0\.1:\d+: not in --allow", text)) == 200
    assert len(re.findall(r"session ended: .* (connect-failed)", text)) == 200
    assert len(re.findall(r"session ended: .* idle\n", text)) == first["kinds"]["idle"] + second["kinds"]["idle"]


# -- bounded memory -----------------------------------------------------------

@pytest.mark.parametrize("backend", ["kernel", "mbuf"])
def test_stalled_receiver_bounds_relay_memory(start, backend):
    """256 MiB toward a backend that stops reading for 2 s: the relay's RSS grows < 16 MiB, no byte lost."""
    total = 256 << 20
    sink = Backend(load.stalling_reader(2.0))
    try:
        relay = start(["tcp", "--listen", LOCAL, "--connect", sink.tcp, "--backend", backend])
        (where,) = relay.listening()["tcp"]
        growth, crc, _ = load.push_into_stall(relay, where, total, 2.0)
        deadline = time.monotonic() + 30
        while not sink.records and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sink.records == [(total, crc)]
        assert growth < 16 << 20, growth
    finally:
        sink.close()


def test_http_upload_to_stalled_origin_bounds_proxy_memory(start):
    """The HTTP proxy: a 256 MiB Content-Length upload to an origin that stalls 2 s; RSS grows < 16 MiB."""
    total = 256 << 20
    sink = Backend(load.stalling_reader(2.0, head=True))
    try:
        relay = start(["http", "--listen", LOCAL, "--connect", sink.tcp])
        (where,) = relay.listening()["http"]
        head = b"POST /up HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % total
        growth, crc, answer = load.push_into_stall(relay, where, total, 2.0, head)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok"), answer[:200]
        assert sink.records == [(total, crc)]
        assert growth < 16 << 20, growth
    finally:
        sink.close()


# -- descriptors run out ------------------------------------------------------


def test_descriptor_exhaustion_pauses_accepting_and_recovers(start, tmp_path):
    """
    RLIMIT_NOFILE lowered under a running relay, then a flood: the sessions
    it has go on, accepting pauses without spinning and without dropping the
    waiting clients, and once descriptors free up every one of them is
    served; the shortage is logged once, and its end.
    """
    echo = Backend(procs.echo)
    try:
        relay = start(["tcp", "--listen", LOCAL, "--connect", echo.tcp])
        (where,) = relay.listening()["tcp"]
        probe = load.Probe(relay.proc.pid)
        with connect(where) as s:  # pools, caches and the reserved descriptor exist
            s.sendall(b"w")
            assert s.recv(1) == b"w"
        time.sleep(0.3)
        base = probe.fds()
        limit = sum(base) + 32 + 24  # the guard keeps 32 free: room for about 12 sessions
        subprocess.run(["prlimit", "--pid", str(relay.proc.pid), "--nofile=%d:%d" % (limit, limit)], check=True)

        def ping(s, data):
            s.sendall(data)
            return s.recv(len(data)) == data

        held = [connect(where) for _ in range(6)]
        assert all(ping(s, b"h") for s in held)
        flood = [connect(where) for _ in range(60)]  # all complete in the kernel's backlog
        relay.wait_for(r"out of file descriptors \(accept")
        cpu = probe.cpu()
        time.sleep(1.0)
        assert probe.cpu() - cpu < 0.3  # paused, not spinning on a readable listening socket
        assert all(ping(s, b"x") for s in held)  # running sessions are served
        for s in flood:
            s.sendall(b"f")
        served, waiting = [], []
        for s in flood:
            s.settimeout(0.1)
            try:
                assert s.recv(1) == b"f"
                served.append(s)
            except socket.timeout:
                waiting.append(s)
        assert waiting, "the flood fitted: the test did not exhaust descriptors"
        for s in held + served:
            s.close()
        for s in waiting:  # nobody was dropped: each is served once descriptors free up
            s.settimeout(15)
            assert s.recv(1) == b"f"
            s.close()
        relay.wait_for(r"file descriptors available again")
        text = relay.text()
        assert "EMFILE recovery" not in text and "Could not accept" not in text  # Twisted never dropped a client
        assert "connect-failed" not in text
        after = load.settle(probe, {"fds": base[0], "pipes": base[1], "rss": 1 << 40})
        assert (after["fds"], after["pipes"]) <= base
    finally:
        echo.close()


class _Port:
    """A listening port as the session table and the guard see it."""

    def __init__(self):
        self.reading = True
        self.numberAccepts = 100
        self.accepted = 0

    def stopReading(self):
        self.reading = False

    def startReading(self):
        self.reading = True

    def doRead(self):
        self.accepted += 1


class _Session:
    def begin(self):
        pass


def test_guard_and_session_cap_never_undo_each_other():
    """Either pause reason keeps the ports paused; they read again only when neither holds."""
    clock, guard = task.Clock(), DescriptorGuard(margin=0)
    guard._reactor = clock
    table, port = SessionTable(1, guard=guard), _Port()
    table.addPort(port)
    session = _Session()
    table.admit(session)
    assert not port.reading  # full
    guard.exhausted("connect", errno.EMFILE)
    clock.advance(guard.first)  # descriptors are back, but the table is still full
    assert not guard.paused and not port.reading
    guard.exhausted("connect", errno.EMFILE)
    table.release(session)  # a slot frees while descriptors are short
    assert not port.reading
    clock.advance(guard.longest)
    assert port.reading
    table.removePort(port)
    assert port.doRead.__func__ is _Port.doRead  # unwatched: Twisted's own doRead again


def test_guard_backs_off_and_logs_each_shortage_once(monkeypatch):
    clock, guard = task.Clock(), DescriptorGuard(margin=8, first=0.1, longest=0.4)
    guard._reactor = clock
    free = [4]
    monkeypatch.setattr(guard, "room", lambda recount=False: (free[0], 8))
    table, port = SessionTable(0, guard=guard), _Port()
    table.addPort(port)
    events = []
    monkeypatch.setattr(guard, "log", type("L", (), {
        "warn": lambda self, fmt, **kw: events.append(kw["descriptors"]),
        "info": lambda self, fmt, **kw: events.append(kw["descriptors"])})())
    port.doRead()  # the margin is gone: no accept, paused
    assert port.accepted == 0 and not port.reading and guard.paused
    for delay in (0.1, 0.2, 0.4, 0.4):  # still short: the pause doubles, up to the longest
        assert clock.getDelayedCalls()[0].getTime() - clock.seconds() == pytest.approx(delay)
        clock.advance(delay)
    free[0] = 100
    clock.advance(0.4)
    assert port.reading and not guard.paused
    assert events == ["exhausted", "recovered"]
    port.doRead()
    assert port.accepted == 1 and port.numberAccepts == 46  # a batch never eats the margin: 2 fds a session


def test_guard_counts_open_descriptors_not_the_lowest_free_one():
    """
    A closed low descriptor leaves a gap below many open ones: the room left
    is the limit less what is open, whatever the numbers.
    """
    guard = DescriptorGuard(margin=8)
    pipes = [os.pipe() for _ in range(50)]
    try:
        os.close(pipes[0][0])  # the gap
        free, margin = guard.room(recount=True)
        assert free == softLimit() - countOpen()
        assert free < softLimit() - pipes[0][0]  # what the lowest free descriptor would say
    finally:
        os.close(pipes[0][1])
        for r, w in pipes[1:]:
            os.close(r)
            os.close(w)


def test_guard_recounts_only_near_the_margin(monkeypatch):
    """Far from the limit an accept batch costs no count; each accept adds two to the estimate."""
    guard = DescriptorGuard(margin=10)
    counts = []
    opened = [100]
    monkeypatch.setattr("splicing.relay.accepting.softLimit", lambda: 130)
    monkeypatch.setattr("splicing.relay.accepting.countOpen", lambda: counts.append(1) or opened[0])
    port = _Port()
    port.numberAccepts = 1  # as Twisted leaves it after a batch that emptied the backlog
    guard.watch(port)
    port.doRead()  # the first count: 100 open, 30 free, 20 above the margin
    assert port.accepted == 1 and len(counts) == 1 and guard._open == 102
    for _ in range(9):  # 9 more sessions fit the estimate: 102 + 18 = 120 = 130 - margin
        port.doRead()
    assert port.accepted == 10 and len(counts) == 1
    opened[0] = 105  # sessions ended meanwhile: the recount finds room again
    port.doRead()
    assert len(counts) == 2 and port.accepted == 11 and not guard.paused
    guard.stop()


def test_local_exhaustion_blames_no_backend():
    """A connect failing with EMFILE here leaves the targets' hold-off alone and tries no other."""
    tried = []

    class Endpoint:
        def __init__(self, name):
            self.name = name

        def connect(self, factory):
            tried.append(self.name)
            return defer.fail(error.ConnectBindError(errno.EMFILE, "Too many open files"))

    clock = task.Clock()
    a, b = Target(Endpoint("a"), "a"), Target(Endpoint("b"), "b")
    d = Balancer([a, b], clock).connect(None)
    failure = []
    d.addErrback(failure.append)
    assert tried == ["a"] and a.downUntil == b.downUntil == 0.0
    assert exhaustionErrno(failure[0]) == errno.EMFILE


# -- access control under floods ----------------------------------------------


def test_max_sessions_holds_under_a_flood(start, origin):
    """
    300 clients at once against --max-sessions 8: the origin never holds more
    than 8, and all are served.  Clients half-close first, so the origin's
    EOF is each session's last event and the origin counts a session until
    it sends it: the relay cannot have freed the slot earlier.
    """
    relay = start(["tcp", "--listen", LOCAL, "--connect", origin.tcp, "--max-sessions", "8"])
    (where,) = relay.listening()["tcp"]
    result = load.clients([where], 300, 300, procs=2, mode="client_first", max_up=8192, max_down=8192)
    summary = origin.stop()
    assert_clean(result, 300, summary)
    assert summary["max_concurrent"] <= 8, summary


# -- lifecycle ----------------------------------------------------------------


def _wait_sessions(probe, count, base, timeout=20.0):
    """Until the relay holds ``count`` sessions (two descriptors each)."""
    deadline = time.monotonic() + timeout
    while probe.fds()[0] < base + 2 * count:
        assert time.monotonic() < deadline, "the sessions never all began"
        time.sleep(0.05)


def test_sigterm_under_load_lets_every_session_finish(start, origin, tmp_path):
    """SIGTERM with 200 sessions begun and their bodies still to come: every one finishes, checked."""
    relay = start(["tcp", "--listen", LOCAL, "--connect", origin.tcp, "--shutdown-timeout", "30"])
    (where,) = relay.listening()["tcp"]
    probe = load.Probe(relay.proc.pid)
    base = probe.fds()[0]
    n, go = 200, tmp_path / "go"
    running = load.start_clients([where], n, n, procs=2, mix="normal", max_up=256 << 10, max_down=256 << 10,
                                 go_file=go)
    _wait_sessions(probe, n, base)
    relay.signal(signal.SIGTERM)
    relay.wait_for(r"waiting up to 30.0s for %d sessions" % n)
    with pytest.raises(ConnectionRefusedError):
        connect(where, timeout=2)
    go.touch()
    result = load.finish(running, timeout=120)
    assert relay.wait(30) == -signal.SIGTERM
    summary = origin.stop()
    assert_clean(result, n, summary)
    assert len(re.findall(r"session ended: .*, eof\n", relay.text())) == n


SIGHUP_CONFIG = """\
[relay.steady]
listen = "tcp:{port}:interface=127.0.0.1:backlog=1024"
connect = "{origin}"
{extra}
"""


def test_sighup_under_load_drops_nothing(start, origin, tmp_path):
    """Reloads (a relay added, then removed) while 400 sessions run and new ones keep coming: none fails."""
    path, port = tmp_path / "relays.toml", procs.free_port()
    other = '[relay.other]\nlisten = "tcp:0:interface=127.0.0.1"\nconnect = "%s"\n' % origin.tcp.replace("\\", "\\\\")

    def write(extra):
        path.write_text(SIGHUP_CONFIG.format(port=port, origin=origin.tcp.replace("\\", "\\\\"), extra=extra))

    write("")
    relay = start(["--config", str(path)])
    (where,) = relay.listening()["steady"]
    running = load.start_clients([where], 400, 100, procs=2, mix=MIX, max_up=128 << 10, max_down=128 << 10)
    for i in range(4):
        time.sleep(0.3)
        write(other if i % 2 == 0 else "")
        relay.signal(signal.SIGHUP)
        relay.wait_for(r"reload: ", count=i + 1)
    result = load.finish(running, timeout=120)
    summary = origin.stop()
    assert_clean(result, 400, summary)
    assert "reload failed" not in relay.text()
