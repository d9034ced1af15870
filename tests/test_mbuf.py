"""
Tests for L{splicing.buffers.mbuf}: a property test against a plain C{bytes} model
with tiny clusters (so every operation crosses boundaries), edge cases, pool
accounting, and real socket I/O.  Every test ends with no cluster in use.
"""

import array
import errno
import select
import signal
import socket
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from twisted.logger import globalLogPublisher

from splicing.buffers.mbuf import (
    CLUSTER_SIZE,
    IOV_MAX,
    Chain,
    Cluster,
    ClusterPool,
    Mbuf,
    PacketChain,
    PoolExhausted,
)


def chain_of(pool, *pieces):
    """A chain with one mbuf per piece (append_chain keeps them apart)."""
    chain = Chain(pool)
    for piece in pieces:
        part = Chain(pool)
        part.append(piece)
        chain.append_chain(part)
    return chain


def check_sharing(pool, chains):
    """Every cluster's refs equals the number of mbufs that point at it."""
    seen = Counter()
    clusters = {}
    for chain in chains:
        assert len(chain) == sum(m.len for m in chain.mbufs)
        for m in chain.mbufs:
            assert m.len > 0
            assert 0 <= m.off and m.off + m.len <= len(m.cluster.buf)
            seen[id(m.cluster)] += 1
            clusters[id(m.cluster)] = m.cluster
    for key, count in seen.items():
        assert clusters[key].refs == count
    assert pool.in_use == len(clusters)


@pytest.fixture(autouse=True)
def watchdog():
    """Fail a test that blocks instead of hanging the run."""

    def expire(signum, frame):
        raise TimeoutError("test blocked")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def pool():
    pool = ClusterPool(size=16, limit=100000)
    yield pool
    assert pool.in_use == 0


# -- property test -----------------------------------------------------------

payloads = st.lists(st.sampled_from(b"abc\r\n"), max_size=80).map(bytes)
patterns = st.lists(st.sampled_from(b"abc\r\n"), min_size=0, max_size=5).map(bytes)


class ChainMachine(RuleBasedStateMachine):
    """Several chains sharing one pool of 16-byte clusters, each with a model."""

    def __init__(self):
        super().__init__()
        self.pool = ClusterPool(size=16, limit=100000, keep=4)
        self.chains = [Chain(self.pool)]
        self.models = [b""]
        self.pair = socket.socketpair()
        for s in self.pair:
            s.setblocking(False)

    def pick(self, i):
        i %= len(self.chains)
        return i, self.chains[i], self.models[i]

    def add(self, chain, model):
        if len(self.chains) < 6:
            self.chains.append(chain)
            self.models.append(model)
        else:
            chain.release()

    @rule(i=st.integers(0, 5), data=payloads)
    def append(self, i, data):
        i, chain, model = self.pick(i)
        chain.append(data)
        self.models[i] = model + data

    @rule(i=st.integers(0, 5), data=st.binary(max_size=16))
    def prepend(self, i, data):
        i, chain, model = self.pick(i)
        chain.prepend(data)
        self.models[i] = data + model

    @rule(i=st.integers(0, 5), at=st.floats(0, 1), keep_front=st.booleans())
    def split(self, i, at, keep_front):
        i, chain, model = self.pick(i)
        n = int(len(model) * at)
        rest = chain.split(n)
        if keep_front:
            self.models[i] = model[:n]
            self.add(rest, model[n:])
        else:
            self.chains[i], self.models[i] = rest, model[n:]
            chain.release()

    @rule(i=st.integers(0, 5), n=st.integers(-100, 100))
    def adj(self, i, n):
        i, chain, model = self.pick(i)
        chain.adj(n)
        self.models[i] = model[n:] if n >= 0 else model[: max(len(model) + n, 0)]

    @rule(i=st.integers(0, 5), a=st.floats(0, 1), b=st.floats(0, 1))
    def copym(self, i, a, b):
        i, chain, model = self.pick(i)
        off = int(len(model) * a)
        n = int((len(model) - off) * b)
        copy = chain.copym(off, n)
        assert copy.tobytes() == model[off : off + n]
        self.add(copy, model[off : off + n])

    @rule(i=st.integers(0, 5), at=st.floats(0, 1))
    def pullup(self, i, at):
        i, chain, model = self.pick(i)
        n = int(len(model) * at)
        assert chain.pullup(n) == model[:n]

    @rule(
        i=st.integers(0, 5),
        pattern=patterns,
        start=st.integers(-90, 90),
        end=st.none() | st.integers(-90, 90),
    )
    def find(self, i, pattern, start, end):
        i, chain, model = self.pick(i)
        assert chain.find(pattern, start, end) == model.find(pattern, start, end)
        assert chain.find(pattern) == model.find(pattern)

    @rule(i=st.integers(0, 5), j=st.integers(0, 5))
    @precondition(lambda self: len(self.chains) > 1)
    def append_chain(self, i, j):
        i, chain, model = self.pick(i)
        j, other, other_model = self.pick(j)
        if i == j:
            return
        chain.append_chain(other)
        assert len(other) == 0 and not other.mbufs
        self.models[i] = model + other_model
        del self.chains[j], self.models[j]

    @rule(i=st.integers(0, 5), j=st.integers(0, 5), limit=st.integers(1, 70))
    def transfer(self, i, j, limit):
        """Send chain i through a socketpair; read at most `limit` into chain j."""
        i, src, src_model = self.pick(i)
        j, dst, dst_model = self.pick(j)
        sent = src.send(self.pair[0])
        assert sent == len(src_model)  # tiny payloads fit the socket buffer
        self.models[i] = src_model[sent:]
        got = b""
        try:
            while True:
                n = dst.recv_into(self.pair[1], limit)
                assert 0 < n <= limit
                got += dst.tobytes()[-n:] if i != j else b""
        except BlockingIOError:
            pass
        self.models[j] = self.models[j] + src_model[:sent]
        if i != j:
            assert got == src_model[:sent]

    @rule(i=st.integers(0, 5))
    def release(self, i):
        i, chain, model = self.pick(i)
        chain.release()
        assert len(chain) == 0
        self.models[i] = b""

    @invariant()
    def same_bytes(self):
        for chain, model in zip(self.chains, self.models):
            assert len(chain) == len(model)
            assert chain.tobytes() == model
        check_sharing(self.pool, self.chains)

    def teardown(self):
        for chain in self.chains:
            chain.release()
        for s in self.pair:
            s.close()
        assert self.pool.in_use == 0


ChainMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestChainMachine = ChainMachine.TestCase


# -- pool ----------------------------------------------------------------------


def test_pool_cap_returns_none_and_accounts():
    pool = ClusterPool(size=32, limit=2, keep=1)
    a, b = pool.get(), pool.get()
    assert isinstance(a, Cluster) and len(a.buf) == 32 and a.refs == 1
    assert pool.get() is None
    assert (pool.in_use, pool.free) == (2, 0)
    a.unref()
    assert (pool.in_use, pool.free) == (1, 1)
    b.unref()
    assert (pool.in_use, pool.free) == (0, 1)  # keeps at most `keep` idle
    c = pool.get()
    assert c.buf is a.buf  # reused, not reallocated
    c.unref()
    with pytest.raises(RuntimeError):
        c.unref()
    assert pool.in_use == 0


def test_when_available_fires_once_on_return():
    pool = ClusterPool(size=16, limit=1)
    held = pool.get()
    calls = []
    pool.when_available(lambda: calls.append(pool.get()))
    assert calls == []
    held.unref()
    assert len(calls) == 1 and calls[0] is not None
    calls[0].unref()
    assert len(calls) == 1  # only once
    assert pool.in_use == 0


def test_when_available_failure_does_not_break_release():
    pool = ClusterPool(size=16, limit=2)
    chain = Chain(pool)
    chain.append(b"x" * 32)
    fired, logged = [], []
    pool.when_available(lambda: 1 / 0)
    pool.when_available(lambda: fired.append(True))
    globalLogPublisher.addObserver(logged.append)
    try:
        chain.release()
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert fired == [True] and len(chain) == 0 and pool.in_use == 0
    failures = [e["log_failure"] for e in logged if "log_failure" in e]
    assert len(failures) == 1 and failures[0].check(ZeroDivisionError)


def test_when_available_reentry_during_trim():
    """A waiter may read into the very chain that is being trimmed."""
    pool = ClusterPool(size=16, limit=3)
    chain = Chain(pool)
    chain.append(b"a" * 48)
    assert pool.get() is None
    pool.when_available(lambda: chain.append(b"b" * 16))
    chain.adj(20)
    assert chain.tobytes() == b"a" * 28 + b"b" * 16
    chain.release()
    assert pool.in_use == 0


def test_append_is_all_or_nothing_when_pool_exhausted():
    pool = ClusterPool(size=16, limit=2)
    chain = Chain(pool)
    chain.append(b"x" * 10)
    with pytest.raises(PoolExhausted):
        chain.append(b"y" * 40)  # needs 6 tail bytes + 3 clusters
    assert chain.tobytes() == b"x" * 10 and pool.in_use == 1
    chain.append(b"y" * 22)  # tail + one cluster
    assert chain.tobytes() == b"x" * 10 + b"y" * 22 and pool.in_use == 2
    with pytest.raises(PoolExhausted):
        chain.prepend(b"h")
    chain.release()
    assert pool.in_use == 0


# -- chain edge cases ------------------------------------------------------------


def test_mbuf_view_is_not_a_copy(pool):
    chain = chain_of(pool, b"hello")
    m = chain.mbufs[0]
    assert isinstance(m, Mbuf) and m.view() == b"hello"
    m.view()[0] = ord("j")
    assert chain.tobytes() == b"jello"
    chain.release()


@pytest.mark.parametrize("n", [0, 3, 4, 6, 9, 10])
def test_split_positions(pool, n):
    chain = chain_of(pool, b"abcd", b"ef", b"ghij")  # boundaries at 4 and 6
    rest = chain.split(n)
    assert chain.tobytes() == b"abcdefghij"[:n]
    assert rest.tobytes() == b"abcdefghij"[n:]
    assert len(chain.mbufs) + len(rest.mbufs) == 3 + (n in (3, 9))
    check_sharing(pool, [chain, rest])
    chain.release()
    assert rest.tobytes() == b"abcdefghij"[n:]
    rest.release()


def test_split_out_of_range(pool):
    chain = chain_of(pool, b"abc")
    with pytest.raises(ValueError):
        chain.split(4)
    with pytest.raises(ValueError):
        chain.split(-1)
    chain.release()


def test_split_does_not_let_front_write_over_rest(pool):
    chain = Chain(pool)
    chain.append(b"0123456789")
    rest = chain.split(4)
    chain.append(b"XY")  # must not land in the shared cluster after byte 4
    assert chain.tobytes() == b"0123XY" and rest.tobytes() == b"456789"
    rest.append(b"Z")
    assert rest.tobytes() == b"456789Z"
    chain.release()
    rest.release()


def test_adj(pool):
    chain = chain_of(pool, b"abcd", b"ef", b"ghij")
    chain.adj(5)
    assert chain.tobytes() == b"fghij"
    chain.adj(-3)
    assert chain.tobytes() == b"fg"
    chain.adj(0)
    assert chain.tobytes() == b"fg"
    chain.adj(-100)
    assert len(chain) == 0 and not chain.mbufs
    chain.append(b"xyz")
    chain.adj(100)
    assert len(chain) == 0 and pool.in_use == 0


def test_pullup(pool):
    chain = chain_of(pool, b"ab", b"cd", b"ef", b"gh")
    assert chain.pullup(0) == b""
    assert chain.pullup(1) == b"a"
    assert chain.pullup(7) == b"abcdefg"
    assert chain.pullup(8) == b"abcdefgh"
    with pytest.raises(ValueError):
        chain.pullup(9)
    assert len(chain) == 8  # pullup does not consume
    chain.release()


def test_find(pool):
    chain = chain_of(pool, b"GET / HTTP/1.1\r", b"\n", b"\r", b"\nbody")
    assert chain.find(b"\r\n\r\n") == 14  # split over 3 mbufs
    assert chain.find(b"GET") == 0
    assert chain.find(b"body") == 18
    assert chain.find(b"y") == 21
    assert chain.find(b"nope") == -1
    assert chain.find(b"\r\n", 15) == 16
    assert chain.find(b"\r\n\r\n", 15) == -1
    assert chain.find(b"\r\n\r\n", 0, 17) == -1
    assert chain.find(b"\r\n\r\n", 0, 18) == 14
    assert chain.find(b"") == 0 and chain.find(b"", 22) == 22 and chain.find(b"", 23) == -1
    assert Chain(pool).find(b"x") == -1
    chain.release()


def test_find_repeated_prefix_across_tiny_mbufs(pool):
    model = b"aaab" + b"aaa" + b"aaab"
    chain = chain_of(pool, *[bytes([c]) for c in model])
    for pattern in (b"aab", b"aaaab", b"aaaaaab", b"ba", b"aaaaaaa"):
        for start in range(len(model) + 1):
            assert chain.find(pattern, start) == model.find(pattern, start)
    chain.release()


def test_copym(pool):
    chain = chain_of(pool, b"abcd", b"ef", b"ghij")
    empty = chain.copym(0, 0)
    assert len(empty) == 0 and not empty.mbufs
    assert len(chain.copym(10, 0)) == 0
    mid = chain.copym(3, 5)
    assert mid.tobytes() == b"defgh"
    tail = chain.copym(4)
    assert tail.tobytes() == b"efghij"
    with pytest.raises(ValueError):
        chain.copym(8, 3)
    with pytest.raises(ValueError):
        chain.copym(-1, 2)
    check_sharing(pool, [chain, mid, tail])
    in_use = pool.in_use
    chain.release()  # shared clusters survive one sharer's release
    assert pool.in_use == in_use
    assert mid.tobytes() == b"defgh" and tail.tobytes() == b"efghij"
    mid.release()
    tail.release()


def test_copy_is_not_written_through(pool):
    chain = Chain(pool)
    chain.append(b"abc")
    copy = chain.copym(0, 2)
    copy.append(b"Z")  # cluster is shared: must go to a new cluster
    chain.append(b"d")
    assert copy.tobytes() == b"abZ" and chain.tobytes() == b"abcd"
    chain.release()
    copy.append(b"!")  # now copy owns the cluster again
    assert copy.tobytes() == b"abZ!"
    copy.release()


def test_prepend_uses_leading_space(pool):
    chain = Chain(pool)
    chain.append(b"body")
    chain.prepend(b"h1:")  # no leading space: fresh cluster, header at its end
    chain.prepend(b"h0:")  # fits before it
    assert chain.tobytes() == b"h0:h1:body" and len(chain.mbufs) == 2
    with pytest.raises(ValueError):
        chain.prepend(b"x" * 17)
    chain.release()


def test_append_chain(pool):
    a, b = chain_of(pool, b"ab"), chain_of(pool, b"cd", b"ef")
    a.append_chain(b)
    assert a.tobytes() == b"abcdef" and len(b) == 0
    with pytest.raises(ValueError):
        a.append_chain(a)
    a.release()


def test_append_accepts_buffers(pool):
    chain = Chain(pool)
    chain.append(bytearray(b"ab"))
    chain.append(memoryview(b"xcdx")[1:3])
    chain.append(array.array("H", [0x6665]))
    assert chain.tobytes() in (b"abcdef", b"abcdfe")
    chain.release()


def test_buffers_limit(pool):
    chain = chain_of(pool, *[bytes([65 + i]) for i in range(10)])
    views = chain.buffers(3)
    assert [bytes(v) for v in views] == [b"A", b"B", b"C"]
    assert b"".join(chain.buffers()) == b"ABCDEFGHIJ"
    chain.release()


# -- stream sockets ----------------------------------------------------------------


def tcp_pair():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    return a, b


@pytest.fixture(params=["unix", "tcp"])
def stream_pair(request):
    a, b = socket.socketpair() if request.param == "unix" else tcp_pair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def wait_readable(sock):
    assert select.select([sock], [], [], 5)[0]


def test_recv_into_respects_limit(pool, stream_pair):
    a, b = stream_pair
    a.sendall(b"0123456789")
    chain = Chain(pool)
    wait_readable(b)
    assert chain.recv_into(b, 3) == 3
    assert chain.tobytes() == b"012" and pool.in_use == 1
    wait_readable(b)
    assert chain.recv_into(b, 100) == 7  # into the tail space, then fresh
    assert chain.tobytes() == b"0123456789" and pool.in_use == 1
    with pytest.raises(BlockingIOError):
        chain.recv_into(b, 100)
    assert pool.in_use == 1
    a.close()
    wait_readable(b)
    assert chain.recv_into(b, 100) == 0
    assert pool.in_use == 1
    chain.release()


def test_recv_into_eagain_leaks_nothing(stream_pair):
    _, b = stream_pair
    pool = ClusterPool(size=1024, limit=8)
    chain = Chain(pool)
    with pytest.raises(BlockingIOError):
        chain.recv_into(b, 1 << 20)
    assert pool.in_use == 0 and len(chain) == 0


def test_recv_into_error_leaks_nothing():
    class Broken:
        def recvmsg_into(self, views):
            raise ConnectionResetError(errno.ECONNRESET, "reset")

    pool = ClusterPool(size=16, limit=8)
    chain = Chain(pool)
    with pytest.raises(ConnectionResetError):
        chain.recv_into(Broken(), 100)
    assert pool.in_use == 0


def test_recv_into_pool_exhausted(stream_pair):
    a, b = stream_pair
    pool = ClusterPool(size=16, limit=2)
    held = pool.get()
    chain = Chain(pool)
    chain.append(b"x" * 16)  # full tail, pool now empty
    a.sendall(b"y" * 100)
    wait_readable(b)
    assert chain.recv_into(b, 100) is None
    chain.adj(-6)  # tail space again: reads into it only
    assert chain.recv_into(b, 100) == 6
    held.unref()  # one cluster back: reads into what it can get
    assert chain.recv_into(b, 100) == 16
    assert chain.tobytes() == b"x" * 10 + b"y" * 22
    chain.release()
    assert pool.in_use == 0


def test_recv_into_at_most_iov_max_buffers(pool, stream_pair):
    a, b = stream_pair
    seen = []

    class Recorder:
        def recvmsg_into(self, views):
            seen.append(len(views))
            return b.recvmsg_into(views)

    a.sendall(b"z" * 100)
    wait_readable(b)
    chain = Chain(pool)
    assert chain.recv_into(Recorder(), 16 * IOV_MAX + 500) == 100
    assert seen == [IOV_MAX] and pool.in_use == 7
    chain.release()


def test_send_partial_then_complete(stream_pair):
    a, b = stream_pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    pool = ClusterPool(size=4096, limit=4096)
    payload = bytes(range(256)) * 4096  # 1 MiB
    chain = Chain(pool)
    chain.append(payload)
    received = bytearray()
    sent_total = 0
    first = chain.send(a)
    assert 0 < first < len(payload)
    assert len(chain) == len(payload) - first
    assert chain.pullup(16) == payload[first : first + 16]
    sent_total += first
    while len(chain):
        try:
            n = chain.send(a)
            assert n > 0
            sent_total += n
            assert len(chain) == len(payload) - sent_total
        except BlockingIOError:
            pass
        try:
            while True:
                data = b.recv(1 << 16)
                assert data
                received += data
        except BlockingIOError:
            pass
    assert chain.send(a) == 0
    a.shutdown(socket.SHUT_WR)
    b.setblocking(True)
    while data := b.recv(1 << 16):
        received += data
    assert bytes(received) == payload
    assert pool.in_use == 0


def test_send_eagain_sends_nothing(stream_pair):
    a, b = stream_pair
    pool = ClusterPool(size=1 << 16, limit=512)
    chain = Chain(pool)
    chain.append(b"q" * (8 << 20))
    with pytest.raises(BlockingIOError):
        while True:
            chain.send(a)
    left = len(chain)
    with pytest.raises(BlockingIOError):
        chain.send(a)
    assert len(chain) == left
    chain.release()
    assert pool.in_use == 0


def test_send_more_than_iov_max_mbufs(pool, stream_pair):
    a, b = stream_pair
    pieces = [bytes([i % 251]) * (1 + i % 7) for i in range(2500)]
    chain = chain_of(pool, *pieces)
    assert len(chain.mbufs) == 2500
    seen = []

    class Recorder:
        def sendmsg(self, buffers, *args):
            seen.append(len(buffers))
            return a.sendmsg(buffers, *args)

    received = bytearray()
    while len(chain):
        chain.send(Recorder())
        wait_readable(b)
        received += b.recv(1 << 20)
    while len(received) < sum(map(len, pieces)):
        wait_readable(b)
        received += b.recv(1 << 20)
    assert max(seen) == IOV_MAX and len(seen) >= 3
    assert bytes(received) == b"".join(pieces)


def test_send_error_propagates(stream_pair):
    a, b = stream_pair
    pool = ClusterPool(size=16, limit=8)
    chain = chain_of(pool, b"data")
    b.close()
    with pytest.raises(OSError) as info:
        for _ in range(3):  # TCP may accept one write before the RST
            if not len(chain):
                chain.append(b"more")
            chain.send(a)
            time.sleep(0.05)
    assert info.value.errno in (errno.EPIPE, errno.ECONNRESET)
    chain.release()
    assert pool.in_use == 0


def test_recv_send_relay_roundtrip(stream_pair):
    """A tiny relay: read from one socket into a chain, write to another."""
    src_w, src_r = stream_pair
    dst_w, dst_r = socket.socketpair()
    dst_w.setblocking(False)
    dst_r.setblocking(False)
    pool = ClusterPool(size=CLUSTER_SIZE, limit=64)
    payload = bytes(range(256)) * 3000
    fed, out, chain, eof = 0, bytearray(), Chain(pool), False
    while not eof or len(chain):
        if fed < len(payload):
            try:
                fed += src_w.send(payload[fed : fed + 100000])
            except BlockingIOError:
                pass
            if fed == len(payload):
                src_w.shutdown(socket.SHUT_WR)
        try:
            eof = eof or chain.recv_into(src_r, 100000) == 0
        except BlockingIOError:
            pass
        try:
            chain.send(dst_w)
        except BlockingIOError:
            pass
        try:
            out += dst_r.recv(1 << 20)
        except BlockingIOError:
            pass
    dst_w.close()
    dst_r.setblocking(True)
    while data := dst_r.recv(1 << 20):
        out += data
    dst_r.close()
    assert bytes(out) == payload and pool.in_use == 0


# -- datagram sockets ------------------------------------------------------------


def udp_pair():
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    a.connect(b.getsockname())
    b.connect(a.getsockname())
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return a, b


@pytest.fixture(params=["unix", "udp"])
def dgram_pair(request):
    if request.param == "unix":
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    else:
        a, b = udp_pair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_datagrams_keep_boundaries_and_empties(dgram_pair):
    a, b = dgram_pair
    pool = ClusterPool(limit=16)
    datagrams = [b"", b"one", b"", b"two!", b"x" * 1000, b""]
    for d in datagrams:
        a.send(d)
    wait_readable(b)
    packets = PacketChain(pool)
    got = 0
    while got < len(datagrams):
        try:
            got += packets.recvmsg_into(b)
        except BlockingIOError:
            wait_readable(b)
    assert len(packets) == len(datagrams)
    assert packets.nbytes == sum(map(len, datagrams))
    assert pool.in_use == 3  # empty datagrams hold no cluster
    assert packets.peek().tobytes() == b""
    popped = [packets.popleft() for _ in range(2)]
    assert [c.tobytes() for c in popped] == [b"", b"one"]
    assert packets.nbytes == sum(map(len, datagrams[2:]))
    with pytest.raises(BlockingIOError):
        packets.recvmsg_into(b)
    assert len(packets) == 4
    # Send them back the other way, boundaries intact.
    assert packets.send(b) == 4
    assert len(packets) == 0 and packets.nbytes == 0 and packets.peek() is None
    wait_readable(a)
    assert [a.recv(65536) for _ in range(4)] == datagrams[2:]
    assert pool.in_use == 1  # the "one" chain we popped
    for c in popped:
        c.release()
    assert pool.in_use == 0


def test_large_udp_datagram_and_order():
    a, b = udp_pair()
    b.setblocking(False)
    pool = ClusterPool(limit=8)
    big = bytes(range(256)) * 255 + bytes(range(227))  # 65507 bytes
    assert len(big) == 65507
    a.send(big)
    a.send(b"after")
    packets = PacketChain(pool)
    got = 0
    while got < 2:
        wait_readable(b)
        got += packets.recvmsg_into(b)
    assert [c.tobytes() for c in packets.packets] == [big, b"after"]
    out = PacketChain(pool)
    out.append(packets.popleft())
    out.append(packets.popleft())
    assert out.send(b) == 2
    wait_readable(a)
    assert a.recv(65536) == big and a.recv(65536) == b"after"
    assert pool.in_use == 0
    a.close()
    b.close()


def test_recvmsg_into_stops_at_max_limit_and_pool(dgram_pair):
    a, b = dgram_pair
    pool = ClusterPool(limit=4)
    for i in range(10):
        a.send(bytes([i]) * 10)
    wait_readable(b)
    packets = PacketChain(pool)
    assert packets.recvmsg_into(b, max_datagrams=2) == 2
    assert packets.recvmsg_into(b, limit=15) == 2  # soft budget: stops once reached
    assert packets.recvmsg_into(b) == 0  # pool empty: back-pressure, no exception
    assert [c.tobytes() for c in packets.packets] == [bytes([i]) * 10 for i in range(4)]
    packets.popleft().release()
    assert packets.recvmsg_into(b) == 1
    packets.release()
    assert pool.in_use == 0 and len(packets) == 0 and packets.nbytes == 0
    assert packets.recvmsg_into(b) == 4


def test_recvmsg_into_truncation_is_an_error():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.setblocking(False)
    pool = ClusterPool(size=16, limit=4)
    a.send(b"x" * 17)
    packets = PacketChain(pool)
    with pytest.raises(OSError) as info:
        packets.recvmsg_into(b)
    assert info.value.errno == errno.EMSGSIZE and pool.in_use == 0
    a.close()
    b.close()


def test_packet_send_stops_at_eagain():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    b.setblocking(False)
    pool = ClusterPool(size=64, limit=7000)
    packets = PacketChain(pool)
    datagrams = [i.to_bytes(2, "big") * 20 for i in range(3000)]
    for d in datagrams:
        packets.append(chain_of(pool, d[:15], d[15:]))  # two mbufs each: sendmsg
    packets.append(Chain(pool))
    datagrams.append(b"")
    first = packets.send(a)
    assert 0 < first < len(datagrams)
    assert len(packets) == len(datagrams) - first
    with pytest.raises(BlockingIOError):
        packets.send(a)
    received = []
    while len(received) < len(datagrams):
        try:
            while True:
                received.append(b.recv(100))
        except BlockingIOError:
            pass
        try:
            packets.send(a)
        except BlockingIOError:
            pass
    assert received == datagrams and pool.in_use == 0
    a.close()
    b.close()


def test_packet_send_chain_with_more_than_iov_max_mbufs():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    pool = ClusterPool(size=16, limit=4000)
    pieces = [bytes([i % 256]) for i in range(IOV_MAX + 10)]
    packets = PacketChain(pool)
    packets.append(chain_of(pool, *pieces))
    assert packets.send(a) == 1
    assert b.recv(1 << 16) == b"".join(pieces)
    assert pool.in_use == 0
    a.close()
    b.close()


def test_mover_reads_ask_for_what_recent_reads_took():
    """
    The mbuf path's reads: a small message takes one cluster from the pool
    (a request and its answer do not pay for sixteen), a bulk stream grows
    its reads to the whole in-flight cap, and they shrink back once the
    messages are small again.  Every byte arrives, in order.
    """
    from splicing.paths.mbuf import INFLIGHT, MbufMover

    pool = ClusterPool(limit=64)
    taken = []
    get = pool.get

    def counting():
        taken.append(1)
        return get()

    pool.get = counting
    src, feed = socket.socketpair()
    dst, out = socket.socketpair()
    for s in (src, dst, feed, out):
        s.setblocking(False)
    for s in (src, feed, dst, out):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    m = MbufMover(src, dst, pool=pool)
    got = bytearray()
    wants = []

    def move(data):
        """Feed C{data}, move it through, read it back; the clusters the reads took."""
        feed.sendall(data)
        del taken[:]
        left = len(data)
        while left:
            n = m.fill(m.space)
            assert n is not None and n > 0
            left -= n
            wants.append(m.want)
            while m.pending:
                m.flush()
                while True:
                    try:
                        got.extend(out.recv(1 << 20))
                    except BlockingIOError:
                        break
        return len(taken)

    try:
        sent = bytearray()
        for i in range(3):  # ping-pong sized messages
            msg = bytes([i]) * 10
            sent += msg
            assert move(msg) == 1 and m.want == pool.size
        bulk = bytes(range(256)) * 8192  # 2 MiB
        sent += bulk
        del wants[:]
        move(bulk)
        assert max(wants) == INFLIGHT  # grown to the whole cap: 64 KiB, 128, 256, 512, 1 MiB
        assert len(wants) <= 8
        for i in range(4):  # small again: the reads shrink back to one cluster
            msg = b"x" * 100
            sent += msg
            move(msg)
        assert m.want == pool.size and move(b"y") == 1
        sent += b"y"
        assert bytes(got) == bytes(sent)
    finally:
        m.release()
        for s in (src, feed, dst, out):
            s.close()
    assert pool.in_use == 0
