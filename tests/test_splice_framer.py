"""
splice(framer=...): one splice carries a framed stream (what the HTTP proxy
does with chunked bodies), on every path: the framer sees exactly the bytes
between the spliced runs, extends the maximum, waits for more framing, and
ends the splice giving back what follows the stream.
"""

import errno
import random

import pytest
import pytest_twisted
from twisted.internet import reactor

from harness import check_run, expect_result, sleep, wait_until

BACKENDS = ("kernel", "mbuf", "transport")

SIZES = [5, 4000, 1 << 20, 3, 70000, 1, 4096, 200000, 2]


class LengthFramer:
    """
    Records framed as C{b"<n>\\n"} and C{n} payload bytes; C{b"0\\n"} ends
    the stream.  Headers (and payload that arrived with them) are written to
    the drain by the framer; the rest of each payload is left to the splice.
    """

    def __init__(self, drain):
        self.drain = drain
        self.line = b""
        self.remaining = 0
        self.copied = 0
        self.calls = 0

    def _write(self, data):
        self.copied += len(data)
        self.drain.write(data)

    def __call__(self, data):
        self.calls += 1
        pos = 0
        while pos < len(data):
            if self.remaining:
                take = data[pos:pos + self.remaining]
                self._write(take)
                self.remaining -= len(take)
                pos += len(take)
                continue
            nl = data.find(b"\n", pos)
            if nl < 0:
                self.line += data[pos:]
                return 0
            line, self.line = self.line + data[pos:nl + 1], b""
            pos = nl + 1
            self._write(line)
            n = int(line)
            if n == 0:
                return data[pos:]
            self.remaining = n
        more, self.remaining = self.remaining, 0
        return more


def framed(sizes, seed=7):
    rnd = random.Random(seed)
    return b"".join(b"%d\n" % n + rnd.randbytes(n) for n in sizes) + b"0\n"


def test_framed_stream_shape():
    data = framed([3, 70])
    assert data.startswith(b"3\n") and data.endswith(b"0\n")
    assert len(data) == 2 + 3 + 3 + 70 + 2


async def pairs(net):
    """(writer peer, source, drain, reader peer), the reader reading."""
    source, writer = await net.tcp_pair(name="src")
    reader, drain = await net.tcp_pair(name="dst")
    reader.paused_by_harness = False
    reader.transport.resumeProducing()
    return writer, source, drain, reader


async def write_in_pieces(writer, data, seed=3):
    """Uneven pieces, some with a pause between them, so framing is split across reads."""
    rnd = random.Random(seed)
    pos = 0
    while pos < len(data):
        n = rnd.choice([1, 2, 7, 100, 5000, 65536, 300000])
        writer.transport.write(data[pos:pos + n])
        pos += n
        if rnd.random() < 0.3:
            await sleep(0.002)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_framed_stream_one_splice(net, backend):
    writer, source, drain, reader = await pairs(net)
    stream = framed(SIZES)
    tail = b"GET /next HTTP/1.1\r\n"
    framer = LengthFramer(drain.transport)
    run = net.splice(source, drain, max=0, framer=framer, backend=backend)
    await write_in_pieces(writer, stream + tail)
    r = await run.wait()
    check_run(run, backend)
    expect_result(run, "MAX", errno.EFBIG)
    await wait_until(lambda: len(reader.received) >= len(stream), what="the framed stream")
    assert bytes(reader.received) == stream
    # every byte went either through the splice or through the framer, once
    assert r.length + framer.copied == len(stream)
    assert r.length > sum(SIZES) // 2  # the payload was spliced, not copied
    await wait_until(lambda: bytes(source.received) == tail, what="the bytes after the stream")
    assert not source.violations


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_framer_waits_then_eof(net, backend):
    """A source that ends inside the framing ends the splice with EOF."""
    writer, source, drain, reader = await pairs(net)
    framer = LengthFramer(drain.transport)
    run = net.splice(source, drain, max=0, framer=framer, backend=backend)
    writer.transport.write(b"3\nabc1")
    await wait_until(lambda: framer.line == b"1", what="a partial framing line")
    assert run.result is None
    writer.transport.loseWriteConnection()
    r = await run.wait()
    check_run(run, backend)
    expect_result(run, "EOF")
    await wait_until(lambda: bytes(reader.received) == b"3\nabc", what="the first record")
    assert r.length + framer.copied == 5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_unsplice_while_framing(net, backend):
    """Unsplice between records: nothing moved twice, the rest reaches the protocol."""
    writer, source, drain, reader = await pairs(net)
    framer = LengthFramer(drain.transport)
    run = net.splice(source, drain, max=0, framer=framer, backend=backend)
    writer.transport.write(b"4\nabcd")
    await wait_until(lambda: bytes(reader.received) == b"4\nabcd", what="the first record")
    await sleep(0.05)
    run.s.unsplice()
    await run.wait()
    check_run(run, backend)
    expect_result(run, "UNSPLICED")
    writer.transport.write(b"rest")
    await wait_until(lambda: bytes(source.received) == b"rest", what="bytes after unsplice")
    assert bytes(reader.received) == b"4\nabcd"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_framer_with_initial_max(net, backend):
    """The first run's length is given; the framer takes over at its end."""
    writer, source, drain, reader = await pairs(net)
    stream = b"x" * 10000 + framed([50000, 7])
    framer = LengthFramer(drain.transport)
    run = net.splice(source, drain, max=10000, framer=framer, backend=backend)
    writer.transport.write(stream + b"after")
    r = await run.wait()
    check_run(run, backend)
    expect_result(run, "MAX", errno.EFBIG)
    await wait_until(lambda: bytes(reader.received) == stream, what="the stream")
    assert r.length + framer.copied == len(stream)
    await wait_until(lambda: bytes(source.received) == b"after", what="the bytes after the stream")


@pytest_twisted.ensureDeferred
async def test_framer_must_be_callable(net):
    from splicing import SpliceError, splice

    source, drain = await net.tcp_pair(name="ab")
    with pytest.raises(SpliceError) as info:
        splice(source.transport, drain.transport, framer="chunked")
    assert info.value.errno == errno.EINVAL


@pytest_twisted.ensureDeferred
async def test_framer_needs_a_stream(net):
    from splicing import SpliceError, splice
    from twisted.internet.protocol import DatagramProtocol

    a = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
    b = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
    net.ports += [a, b]
    b.connect("127.0.0.1", a.getHost().port)
    with pytest.raises(SpliceError) as info:
        splice(a, b, framer=lambda data: 0)
    assert info.value.errno == errno.EPROTONOSUPPORT
