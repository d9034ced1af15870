"""
UDP splicing: OpenBSD regress/sys/kern/sosplice/udp (spec section 4)
ported to splice() on Twisted UDP ports, plus the batching of the mbuf
path (recvmmsg/sendmmsg, GSO) that those cases do not reach.

Topology, as udp/relay.pl: the client is a UDP port connected to the
relay's source, a bound, unconnected port that does not read until the
test splices it (so datagrams sent earlier wait in the kernel, as in
OpenBSD where the relay has not read yet); the drain is a port connected
to the server.  OpenBSD's 3 s sleeps are SLEEP; relay idle times are
scaled to 0.4-0.6 s.  Every wait is bounded.

Linux mapping of args-nospace: a UDP send on Linux never fails for lack of
send-buffer space (one datagram is always admitted), so "a datagram larger
than the drain can ever send" is made with a drain whose path MTU is fixed
(IPV6_MTU) and that may not fragment (IPV6_DONTFRAG): 10000 bytes fit,
10001 give EMSGSIZE, exactly OpenBSD's boundary.
"""

import errno
import socket

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor

import harness
import streams
from harness import HOSTS, SLEEP, sleep, wait, wait_until

IDLE = 0.4
IPV6_MTU = 24
IPV6_DONTFRAG = 62


class Recorder(protocol.DatagramProtocol):
    """A UDP endpoint that keeps every datagram with its arrival time."""

    def __init__(self, name):
        self.name = name
        self.datagrams = []
        self.times = []
        self.copy_to = None  # user-land copy (the maxcopy cases)

    def datagramReceived(self, data, addr):
        self.datagrams.append(data)
        self.times.append(harness.now())
        if self.copy_to is not None:
            self.copy_to.write(data)

    @property
    def lengths(self):
        return [len(d) for d in self.datagrams]

    def md5(self):
        return streams.md5(b"".join(self.datagrams))


def udp(net, family, proto, rcvbuf=None, sndbuf=None):
    port = reactor.listenUDP(0, proto, interface=HOSTS[family], maxPacketSize=65536)
    net.ports.append(port)
    harness.set_bufs(port.socket, rcvbuf, sndbuf)
    return port


def addrOf(port):
    h = port.getHost()
    return h.host, h.port


class Topo:
    """client -> relay source ... relay drain -> server."""

    def __init__(self, net, fam_in=4, fam_out=4, drain_mtu=None, **bufs):
        self.net = net
        self.server = Recorder("server")
        self.serverPort = udp(net, fam_out, self.server, rcvbuf=bufs.get("server_rcvbuf"))
        self.relay = Recorder("relay")  # the source's protocol
        self.source = udp(net, fam_in, self.relay, rcvbuf=bufs.get("relay_rcvbuf"))
        self.source.stopReading()  # datagrams wait in the kernel until spliced
        self.drainProto = Recorder("drain")
        self.drain = udp(net, fam_out, self.drainProto, sndbuf=bufs.get("relay_sndbuf"))
        if drain_mtu:
            self.drain.socket.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU, drain_mtu)
            self.drain.socket.setsockopt(socket.IPPROTO_IPV6, IPV6_DONTFRAG, 1)
        self.drain.connect(*addrOf(self.serverPort))
        self.client = udp(net, fam_in, Recorder("client"), sndbuf=bufs.get("client_sndbuf"))
        self.client.connect(*addrOf(self.source))
        self.started = self.doneAt = self.result = None
        self.s = None

    def splice(self, reading=False, **kw):
        """Splice; with C{reading}, the application reads (before and after)."""
        from splicing import splice

        if reading:
            self.source.startReading()  # the same turn: nothing is read before
        self.started = harness.now()
        self.s = splice(self.source, self.drain, **kw)

        def done(r):
            self.doneAt = harness.now()
            self.result = r
            return r

        self.s.done.addCallback(done)
        return self.s

    async def send(self, datagrams, first=0.0, gap=0.0):
        if first:
            await sleep(first)
        for i, d in enumerate(datagrams):
            if i and gap:
                await sleep(gap)
            self.client.write(d)

    async def done(self, timeout=harness.TIMEOUT):
        await wait(self.s.done, timeout, "splice done")
        # The source's protocol saw nothing while spliced.
        assert all(t >= self.doneAt for t in self.relay.times), "datagramReceived while spliced"
        assert self.result.length == self.s.length
        assert self.s.backend == "mbuf"
        return self.result

    async def arrived(self, n, timeout=harness.TIMEOUT):
        await wait_until(lambda: len(self.server.datagrams) >= n, timeout, "%d datagrams at the server" % n)


def expect(result, reason, err=0, length=None):
    from splicing import Reason

    assert result.reason is getattr(Reason, reason), result
    assert result.error == err, (harness.errno_name(result.error), harness.errno_name(err))
    if length is not None:
        assert result.length == length


async def plain(net, lengths, md5, fam_in=4, fam_out=4, idle=IDLE, **bufs):
    """U-plain: send, splice, everything arrives whole, then the idle timeout."""
    t = Topo(net, fam_in, fam_out, **bufs)
    t.splice(idle=idle)
    await t.send(streams.datagrams(lengths))
    r = await t.done()
    expect(r, "IDLE", errno.ETIMEDOUT, sum(lengths))
    await t.arrived(len(lengths))
    assert t.server.lengths == lengths
    assert t.server.md5() == md5
    return t


# ---------------------------------------------------------------------------
# The OpenBSD cases


@pytest_twisted.ensureDeferred
async def test_default(net):  # args-default
    await plain(net, [251], streams.MD5["stream 251"])


@pytest_twisted.ensureDeferred
async def test_zero_length(net):  # args-zero
    await plain(net, [0], streams.MD5["empty"])


@pytest_twisted.ensureDeferred
async def test_multi(net):  # args-multi
    await plain(
        net, [251, 16384, 0, 1, 2, 3, 4, 5], streams.MD5["datagrams multi"],
        client_sndbuf=30000, relay_rcvbuf=30000, relay_sndbuf=30000, server_rcvbuf=30000,
    )


@pytest_twisted.ensureDeferred
async def test_long(net):  # args-long: the largest IPv4 UDP datagram
    t = await plain(net, [65507], streams.MD5["datagram 65507"], idle=0.6,
                    client_sndbuf=65536, relay_rcvbuf=65536, relay_sndbuf=65536, server_rcvbuf=65536)
    assert t.s.length == 65507


@pytest_twisted.ensureDeferred
async def test_sleep_client(net):  # args-sleep-client: gaps below idle do not end it
    t = Topo(net)
    t.splice(idle=0.5)
    await t.send(streams.datagrams(range(6)), first=SLEEP, gap=SLEEP / 3)
    r = await t.done()
    expect(r, "IDLE", errno.ETIMEDOUT, 15)
    assert t.server.lengths == [0, 1, 2, 3, 4, 5]
    assert t.server.md5() == streams.MD5["datagrams 0..5"]
    assert t.doneAt - t.started >= SLEEP + 5 * SLEEP / 3 + 0.5 - 0.05


@pytest_twisted.ensureDeferred
async def test_sleep_relay(net):  # args-sleep-relay: queued before splice() moves first
    t = Topo(net)
    await t.send(streams.datagrams(range(6)))
    await sleep(SLEEP)
    t.splice(idle=IDLE)
    t.client.write(b"late\n")
    r = await t.done()
    expect(r, "IDLE", errno.ETIMEDOUT, 20)
    assert t.server.lengths == [0, 1, 2, 3, 4, 5, 5]
    assert b"".join(t.server.datagrams[:6]) == b"".join(streams.datagrams(range(6)))
    assert streams.md5(b"".join(t.server.datagrams[:6])) == streams.MD5["datagrams 0..5"]


@pytest_twisted.ensureDeferred
async def test_idle_timeout(net):  # args-idle-timeout: the late datagram is not moved
    t = Topo(net)
    t.splice(idle=IDLE)
    one, two = streams.datagrams([1, 2])
    await t.send([one], first=SLEEP / 2)
    r = await t.done()
    expect(r, "IDLE", errno.ETIMEDOUT, 1)
    await sleep(IDLE * 1.5 - (harness.now() - t.doneAt))
    t.client.write(two)
    await sleep(SLEEP / 2)
    assert t.server.lengths == [1]
    assert t.server.md5() == streams.MD5["datagrams 1"]
    # Not moved, not lost: the source's protocol reads it once it reads again.
    t.source.startReading()
    await wait_until(lambda: t.relay.datagrams == [two], what="the late datagram at the source")


@pytest_twisted.ensureDeferred
async def test_idle_trickle(net):  # args-idle-trickle: each datagram restarts idle
    t = Topo(net)
    t.splice(idle=IDLE)
    await t.send(streams.datagrams([1, 2, 3]), first=IDLE / 2, gap=IDLE / 2)
    r = await t.done()
    expect(r, "IDLE", errno.ETIMEDOUT, 6)
    assert t.server.lengths == [1, 2, 3]
    assert t.server.md5() == streams.MD5["datagrams 1,2,3"]
    assert t.doneAt - t.started >= 1.5 * IDLE + IDLE - 0.05


@pytest_twisted.ensureDeferred
async def test_max(net):  # args-max: reaching max exactly is EFBIG
    t = Topo(net)
    await t.send(streams.datagrams([1, 3, 1]))
    t.splice(idle=IDLE, max=4)
    r = await t.done()
    expect(r, "MAX", errno.EFBIG, 4)
    await t.arrived(2)
    assert t.server.lengths == [1, 3]
    assert t.server.md5() == streams.MD5["datagrams 1,3"]
    t.source.startReading()
    await wait_until(lambda: t.relay.lengths == [1], what="the rest at the source")


@pytest_twisted.ensureDeferred
async def test_max_nosplit(net):  # args-max-nosplit: never split, SHORT, stays readable
    t = Topo(net)
    await t.send(streams.datagrams([1, 3, 1]))
    await sleep(0.02)
    t.splice(idle=IDLE, max=2)
    r = await t.done()
    expect(r, "SHORT", 0, 1)
    await t.arrived(1)
    await sleep(0.05)
    assert t.server.lengths == [1]
    assert t.server.md5() == streams.MD5["datagrams 1"]
    t.source.startReading()
    await wait_until(lambda: len(t.relay.datagrams) == 2, what="the rest at the source")
    assert t.relay.datagrams == streams.datagrams([1, 3, 1])[1:]


@pytest_twisted.ensureDeferred
async def test_max_multi(net):  # args-max-multi
    t = Topo(net)
    await t.send(streams.datagrams([1, 2, 3]))
    await sleep(0.02)
    t.splice(idle=IDLE, max=4)
    r = await t.done()
    expect(r, "SHORT", 0, 3)
    await t.arrived(2)
    assert t.server.lengths == [1, 2]
    assert t.server.md5() == streams.MD5["datagrams 1,2"]


async def maxcopy(t, first, gap):
    """Splice with max 9, then copy the rest in user land (Twisted's own reads)."""
    t.splice(idle=0.5, max=9)
    sending = defer.ensureDeferred(t.send(streams.datagrams([5, 4, 3, 2, 1, 0]), first=first, gap=gap))
    r = await t.done()
    expect(r, "MAX", errno.EFBIG, 9)
    t.relay.copy_to = t.drain
    t.source.startReading()
    await sending
    await t.arrived(6)
    assert t.server.lengths == [5, 4, 3, 2, 1, 0]
    assert t.server.md5() == streams.MD5["datagrams 5..0"]
    assert t.relay.lengths == [3, 2, 1, 0]


@pytest_twisted.ensureDeferred
async def test_maxcopy_sleep_client(net):  # args-maxcopy-sleep-client
    await maxcopy(Topo(net), SLEEP, SLEEP / 3)


@pytest_twisted.ensureDeferred
async def test_maxcopy_sleep_relay(net):  # args-maxcopy-sleep-relay
    t = Topo(net)
    await t.send(streams.datagrams([5, 4, 3, 2, 1, 0]))
    await sleep(SLEEP)
    t.splice(idle=0.5, max=9)
    r = await t.done()
    expect(r, "MAX", errno.EFBIG, 9)
    t.relay.copy_to = t.drain
    t.source.startReading()
    await t.arrived(6)
    assert t.server.lengths == [5, 4, 3, 2, 1, 0]
    assert t.server.md5() == streams.MD5["datagrams 5..0"]


@pytest_twisted.ensureDeferred
async def test_nospace(net):  # args-nospace: EMSGSIZE after the earlier ones went
    lengths = [1, 10000, 2, 10001, 3]
    t = Topo(net, 4, 6, drain_mtu=10048, client_sndbuf=30000, relay_rcvbuf=30000)
    sent = streams.datagrams(lengths)
    await t.send(sent)
    await sleep(SLEEP)
    t.splice(idle=IDLE, reading=True)
    r = await t.done()
    expect(r, "ERROR", errno.EMSGSIZE, 10003)
    await t.arrived(3)
    assert t.server.lengths == [1, 10000, 2]
    assert t.server.md5() == streams.MD5["datagrams 1,10000,2"]
    # Nothing lost: the datagram the drain refused, then the next one, are the source's.
    await wait_until(lambda: len(t.relay.datagrams) == 2, what="the rest at the source")
    assert t.relay.datagrams == sent[3:]


@pytest_twisted.ensureDeferred
async def test_nospace_equal_sizes(net):
    """A GSO run the drain refuses falls back to single datagrams, then EMSGSIZE."""
    t = Topo(net, 4, 6, drain_mtu=10048)
    sent = [b"a" * 9000, b"b" * 9000, b"c" * 10001, b"d" * 10001, b"e" * 10001]
    await t.send(sent)
    await sleep(0.05)
    t.splice(idle=IDLE, reading=True)
    r = await t.done()
    expect(r, "ERROR", errno.EMSGSIZE, 18000)
    await t.arrived(2)
    assert t.server.datagrams == sent[:2]
    await wait_until(lambda: len(t.relay.datagrams) == 3, what="the rest at the source")
    assert t.relay.datagrams == sent[2:]


@pytest_twisted.ensureDeferred
async def test_datagrams_owed_come_before_newer_ones_on_start_reading(net):
    t = Topo(net, 4, 6, drain_mtu=10048)
    sent = [b"a" * 9000, b"b" * 9000, b"c" * 10001, b"d" * 10001, b"e" * 10001]
    await t.send(sent)
    await sleep(0.05)
    t.splice(idle=IDLE)  # the application does not read: the refused datagram is owed
    r = await t.done()
    expect(r, "ERROR", errno.EMSGSIZE, 18000)
    await sleep(0.05)
    assert t.relay.datagrams == []
    t.source.startReading()
    await wait_until(lambda: len(t.relay.datagrams) == 3, what="the rest at the source")
    assert t.relay.datagrams == sent[2:]


@pytest_twisted.ensureDeferred
async def test_write(net):  # args-write: drain writes before and after keep order
    t = Topo(net)
    t.drain.write(streams.stream(1))
    t.splice(idle=IDLE)
    await t.send(streams.datagrams([2, 3, 4]))
    r = await t.done()
    expect(r, "IDLE", errno.ETIMEDOUT, 9)
    t.drain.write(streams.stream(5))
    await t.arrived(5)
    assert t.server.lengths == [1, 2, 3, 4, 5]
    assert t.server.md5() == streams.MD5["stream 1 + datagrams 2,3,4 + stream 5"]


@pytest.mark.parametrize("fam_in,fam_out", [(6, 6), (6, 4), (4, 6)], ids=["inet6", "inet6-client", "inet6-server"])
@pytest_twisted.ensureDeferred
async def test_inet6(net, fam_in, fam_out):  # args-inet6, args-inet6-client, args-inet6-server
    await plain(net, [251], streams.MD5["stream 251"], fam_in, fam_out)


# ---------------------------------------------------------------------------
# The rest of the contract


@pytest_twisted.ensureDeferred
async def test_drain_must_be_connected(net):
    from splicing import SpliceError, splice

    src = udp(net, 4, Recorder("src"))
    dst = udp(net, 4, Recorder("dst"))
    with pytest.raises(SpliceError) as info:
        splice(src, dst)
    assert info.value.errno == errno.ENOTCONN
    dst.connect(*addrOf(src))
    s = splice(src, dst)  # an unconnected bound source is fine
    s.unsplice()
    await wait(s.done)


@pytest_twisted.ensureDeferred
async def test_tcp_with_udp_is_eprotonosupport(net):
    from splicing import SpliceError, splice

    a, b = await net.tcp_pair()
    u = udp(net, 4, Recorder("u"))
    u.connect(*addrOf(u))
    for src, dst in ((a.transport, u), (u, a.transport)):
        with pytest.raises(SpliceError) as info:
            splice(src, dst)
        assert info.value.errno == errno.EPROTONOSUPPORT


@pytest_twisted.ensureDeferred
async def test_unsplice_gives_datagrams_back_to_the_protocol(net):
    """While spliced the protocol sees nothing; after unsplice() it reads again."""
    t = Topo(net)
    t.source.startReading()  # the application reads: it will again afterwards
    t.splice()
    await t.send(streams.datagrams([1, 2, 3]))
    await t.arrived(3)
    t.s.unsplice()
    r = await t.done()
    expect(r, "UNSPLICED", 0, 6)
    await t.send([b"after\n", b""])
    await wait_until(lambda: len(t.relay.datagrams) == 2, what="datagrams at the protocol")
    assert t.relay.datagrams == [b"after\n", b""]
    assert t.server.lengths == [1, 2, 3]


@pytest.mark.parametrize("fam", [4, 6])
@pytest_twisted.ensureDeferred
async def test_bursts_keep_boundaries_and_order(net, fam):
    """
    Batches (recvmmsg), GSO runs of equal sizes (with a shorter tail, and
    zero-length datagrams breaking runs), and sizes that change every
    datagram: the server sees exactly the datagrams sent, in order.
    """
    t = Topo(net, fam, fam, relay_rcvbuf=4 << 20, server_rcvbuf=4 << 20)
    pattern = [1400] * 70 + [700] + [0, 0] + [64] * 130 + [1, 2, 3, 65000 // 200] + list(range(40))
    sent = []
    for i, size in enumerate(pattern * 3):
        sent.append((b"%06d" % i + b"x" * size)[: size] if size >= 6 else bytes([i % 256]) * size)
    t.splice(idle=IDLE)
    for k in range(0, len(sent), 100):
        await t.send(sent[k : k + 100])
        await sleep(0.005)
    r = await t.done()
    expect(r, "IDLE", errno.ETIMEDOUT, sum(map(len, sent)))
    await t.arrived(len(sent))
    assert t.server.lengths == [len(d) for d in sent]
    assert t.server.datagrams == sent
    mover = t.s._mover
    assert mover.datagrams == len(sent)
    assert not mover._clusters and mover.pool.in_use == 0  # an idle splice holds no cluster


# ---------------------------------------------------------------------------
# The mover on its own: a drain that is full waits, nothing is dropped


def test_full_drain_waits_and_the_pure_python_path_agrees(monkeypatch):
    """
    An AF_UNIX datagram pair gives EAGAIN when the receiver's queue is full
    (UDP on loopback never does): the batch waits and goes out whole later.
    Run with the ctypes vector and with the fallback one.
    """
    from splicing.buffers import mmsg
    from splicing.buffers.mbuf import ClusterPool
    from splicing.paths.mbuf import DatagramMover

    for make in (mmsg.MessageVector, mmsg.PyMessageVector):
        if make is mmsg.MessageVector and not mmsg.available:
            continue
        monkeypatch.setattr(mmsg, "vector", make)
        monkeypatch.setattr(DatagramMover, "_vectors", {})
        src_in, src_out = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        dst_in, dst_out = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (src_in, src_out, dst_in, dst_out):
            s.setblocking(False)
        pool = ClusterPool(limit=64, keep=64)
        mover = DatagramMover(src_out, dst_in, pool=pool, batch=16)
        assert not mover.gso  # never GSO on a socket that is not UDP: it would merge
        sent = [bytes([i % 256]) * (i % 7) for i in range(400)]
        got = []
        moved = 0
        pending = list(sent)
        for step in range(20000):
            while pending:
                try:
                    src_in.send(pending[0])
                except BlockingIOError:
                    break
                pending.pop(0)
            if not mover.holding:
                try:
                    mover.fill(mover.space)
                except BlockingIOError:
                    pass
            if mover.holding:
                try:
                    moved += mover.flush()
                except BlockingIOError:
                    pass  # full: the batch waits, nothing is lost
            if step % 3 == 0:  # a slow reader
                try:
                    got.append(dst_out.recv(100))
                except BlockingIOError:
                    pass
            if len(got) == len(sent):
                break
        assert got == sent
        assert moved == sum(map(len, sent)) and mover.datagrams == len(sent)
        assert mover.release() == []
        assert pool.in_use == 0
        for s in (src_in, src_out, dst_in, dst_out):
            s.close()


def test_release_returns_unsent_datagrams_with_their_senders():
    from splicing.buffers.mbuf import ClusterPool
    from splicing.paths.mbuf import DatagramMover

    src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    src.bind(("127.0.0.1", 0))
    src.setblocking(False)
    cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cli.bind(("127.0.0.1", 0))
    dst = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dst.connect(src.getsockname())
    pool = ClusterPool(limit=8)
    mover = DatagramMover(src, dst, pool=pool)
    for d in (b"a", b"", b"ccc"):
        cli.sendto(d, src.getsockname())
    deadline = harness.now() + 5
    while mover.pending < 4 and harness.now() < deadline:
        try:
            mover.fill(mover.space) if not mover.holding else None
        except BlockingIOError:
            pass
    assert mover.holding and mover.pending == 4
    owed = mover.release()
    assert owed == [(b"a", cli.getsockname()), (b"", cli.getsockname()), (b"ccc", cli.getsockname())]
    assert pool.in_use == 0 and not mover.holding
    for s in (src, cli, dst):
        s.close()
