"""
The TCP relay's splice-auto (L{splicing.relay.autosplice}): small reads are
copied in user land, a read that fills the buffer turns its direction into a
splice.  Real twistd relays on 127.0.0.1 and ::1, real sockets; what a user
relies on: every byte, in order, counted exactly, whichever way it went; the
session event says how many bytes were copied; no descriptor is left behind.
"""

import os
import socket
import time

import pytest

import procs
from procs import Backend, connect, recv_all, recv_exactly, payload, sha256


def ended(relay, client, timeout=procs.TIMEOUT):
    """The structured C{session ended} event of the session from C{client} (a sockname)."""
    host, port = client[:2]
    name = ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in relay.events():
            if e.get("log_format", "").startswith("session ended") and e.get("client") == name:
                return e
        time.sleep(0.05)
    raise AssertionError("no session event for %s:\n%s" % (name, relay.text()))


def fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


@pytest.fixture(scope="module")
def backends():
    made = {"echo4": Backend(procs.echo), "echo6": Backend(procs.echo, "::1"),
            "hash4": Backend(procs.hash_and_answer), "hash6": Backend(procs.hash_and_answer, "::1")}
    yield made
    for b in made.values():
        b.close()


@pytest.fixture(scope="module")
def relays(tmp_path_factory, backends):
    """One relay per family and backend, the default path (auto) and a forced kernel path."""
    config = ""
    for name, listen, backend, extra in [
            ("echo4", "tcp:0:interface=127.0.0.1", "echo4", ""),
            ("echo6", "tcp6:0:interface=\\\\:\\\\:1", "echo6", ""),
            ("hash4", "tcp:0:interface=127.0.0.1", "hash4", ""),
            ("hash6", "tcp6:0:interface=\\\\:\\\\:1", "hash6", ""),
            ("forced", "tcp:0:interface=127.0.0.1", "echo4", 'backend = "kernel"\n')]:
        config += '[relay.%s]\nlisten = "%s"\nconnect = "%s"\n%s\n' % (
            name, listen, backends[backend].tcp.replace("\\", "\\\\"), extra)
    tmp = tmp_path_factory.mktemp("autosplice")
    path = tmp / "relay.toml"
    path.write_text(config)
    relay = procs.Twistd(tmp, ["--config", str(path)], tool="twist")
    try:
        deadline = time.monotonic() + procs.TIMEOUT
        while len([e for e in relay.events() if e.get("what") == "relay"]) < 5:
            assert time.monotonic() < deadline and relay.proc.poll() is None, relay.text()
            time.sleep(0.05)
        where = {e["name"]: procs.address(e["address"]) for e in relay.events() if e.get("what") == "relay"}
        assert len(where) == 5, relay.text()
        yield relay, where
    finally:
        relay.close()


def small_exchanges(where, count, size):
    """C{count} echoes of up to C{size} bytes on one session, each checked: (bytes each way, sockname)."""
    s = connect(where)
    sent = 0
    for i in range(count):
        msg = payload(1 + (i * 37) % size, seed=i)
        s.sendall(msg)
        assert recv_exactly(s, len(msg)) == msg
        sent += len(msg)
    client = s.getsockname()
    s.shutdown(socket.SHUT_WR)
    assert recv_all(s) == b""
    s.close()
    return sent, client


@pytest.mark.parametrize("name", ["echo4", "echo6"])
@pytest.mark.parametrize("count, size, copied", [
    (60, 1000, "all"),  # about 30 KB each way: no read fills the buffer, no splice is set up
    (400, 1400, "64 KiB each way"),  # about 280 KB: the splice takes over mid-conversation
], ids=["short", "long"])
def test_small_exchanges_are_copied_then_spliced(relays, name, count, size, copied):
    """Small exchanges on one session, each echo exact; the counts exact, the path the kernel's."""
    relay, where = relays
    sent, client = small_exchanges(where[name], count, size)
    e = ended(relay, client)
    assert (e["bytes_out"], e["bytes_in"], e["how"], e["path"]) == (sent, sent, "eof", "kernel")
    if copied == "all":
        assert e["copied"] == 2 * sent
    else:
        assert 2 * 65536 <= e["copied"] <= 2 * (65536 + size)


@pytest.mark.parametrize("name", ["hash4", "hash6"])
def test_bulk_after_small_reads_is_spliced_in_order(relays, backends, name):
    """A small start, then 4 MiB: the digest matches, counts are exact, most bytes spliced."""
    relay, where = relays
    head = payload(100, seed=1)
    bulk = payload(4 << 20, seed=2)
    s = connect(where[name])
    s.sendall(head)
    time.sleep(0.05)  # a read of its own: copied
    s.sendall(bulk)
    s.shutdown(socket.SHUT_WR)
    answer = recv_all(s)
    client = s.getsockname()
    s.close()
    digest, _, rest = answer.partition(b"\n")
    assert digest.decode() == sha256(head + bulk)
    assert sha256(rest) == sha256(payload(1 << 20, seed=len(head + bulk)))
    e = ended(relay, client)
    assert (e["bytes_out"], e["bytes_in"], e["how"]) == (len(head + bulk), len(answer), "eof")
    assert 100 <= e["copied"] < (e["bytes_out"] + e["bytes_in"]) // 4, e  # bulk went through the kernel
    assert e["path"] == "kernel"


def test_forced_path_splices_from_the_first_byte(relays):
    """backend = "kernel": the operator asked for splices: nothing is copied, even one byte."""
    relay, where = relays
    s = connect(where["forced"])
    s.sendall(b"x")
    assert recv_exactly(s, 1) == b"x"
    client = s.getsockname()
    s.shutdown(socket.SHUT_WR)
    assert recv_all(s) == b""
    s.close()
    e = ended(relay, client)
    assert (e["bytes_out"], e["bytes_in"], e["copied"], e["path"]) == (1, 1, 0, "kernel")


def test_no_descriptor_left_after_copied_and_spliced_sessions(relays):
    """50 short sessions and 5 bulk ones, then the relay holds the descriptors it held before."""
    relay, where = relays
    pid = relay.proc.pid
    before = fds(pid)
    for i in range(50):
        with connect(where["echo4" if i % 2 else "echo6"]) as s:
            s.sendall(b"ping %d" % i)
            assert recv_exactly(s, len(b"ping %d" % i)) == b"ping %d" % i
    for i in range(5):
        with connect(where["echo4"]) as s:
            data = payload(1 << 20, seed=i)
            s.sendall(data)
            assert sha256(recv_exactly(s, len(data))) == sha256(data)
    deadline = time.monotonic() + procs.TIMEOUT
    while fds(pid) > before and time.monotonic() < deadline:  # (one of the previous test's may close meanwhile)
        time.sleep(0.05)
    assert fds(pid) <= before


def test_idle_sweep_ends_only_the_silent_session():
    """One timer for all sessions: the silent one ends after idle (within a quarter more), the busy one lives."""
    from twisted.internet.task import Clock

    from splicing.relay.idle import IdleSweep

    class Session:
        def __init__(self):
            self.bytes, self.ended = 0, None

        def moved(self):
            return self.bytes

        def idleTimeout(self):
            self.ended = clock.seconds()

    clock = Clock()
    sweep = IdleSweep(clock, 4.0)
    silent, busy = Session(), Session()
    sweep.watch(silent)
    sweep.watch(busy)
    assert len(clock.getDelayedCalls()) == 1  # one timer, not one per session
    for _ in range(12):
        busy.bytes += 1
        clock.advance(1.0)
    assert 4.0 <= silent.ended <= 5.0 and busy.ended is None
    sweep.forget(busy)
    assert clock.getDelayedCalls() == []  # nothing watched, no timer left
