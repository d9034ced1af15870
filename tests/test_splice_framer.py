"""
splice(framer=...): one splice carries a framed stream (what the HTTP proxy
does with chunked bodies), on every path: the framer is shown the bytes
that follow each run, extends the maximum over the framing and the next
run, waits for more framing, and ends the splice, leaving what follows the
stream to the source.  Every byte of the stream is spliced, none copied.
"""

import errno
import random

import pytest
import pytest_twisted
from twisted.internet import reactor

from splicing import Last
from harness import check_run, expect_result, sleep, wait_until

BACKENDS = ("kernel", "mbuf", "transport")

SIZES = [5, 4000, 1 << 20, 3, 70000, 1, 4096, 200000, 2]


class LengthFramer:
    """
    Records framed as C{b"<n>\\n"} and C{n} payload bytes; C{b"0\\n"} ends
    the stream.  The framer only reads each header: the splice moves it
    with its payload.
    """

    def __init__(self):
        self.calls = 0
        self.shown = b""  # the bytes the framer was last shown

    def __call__(self, data):
        self.calls += 1
        self.shown = data
        nl = data.find(b"\n")
        if nl < 0:
            return 0
        n = int(data[:nl])
        if n == 0:
            return Last(nl + 1)
        return nl + 1 + n


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
    framer = LengthFramer()
    run = net.splice(source, drain, max=0, framer=framer, backend=backend)
    await write_in_pieces(writer, stream + tail)
    r = await run.wait()
    check_run(run, backend)
    expect_result(run, "MAX", errno.EFBIG)
    await wait_until(lambda: len(reader.received) >= len(stream), what="the framed stream")
    assert bytes(reader.received) == stream
    assert r.length == len(stream)  # framing and payload spliced, each byte once
    assert framer.calls >= len(SIZES) + 1
    await wait_until(lambda: bytes(source.received) == tail, what="the bytes after the stream")
    assert not source.violations


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_framer_waits_then_eof(net, backend):
    """A source that ends inside the framing ends the splice with EOF."""
    writer, source, drain, reader = await pairs(net)
    framer = LengthFramer()
    run = net.splice(source, drain, max=0, framer=framer, backend=backend)
    writer.transport.write(b"3\nabc1")
    await wait_until(lambda: framer.shown == b"1", what="a partial framing line")
    assert run.result is None
    writer.transport.write(b"2")  # still no end of line: asked again, with both bytes
    await wait_until(lambda: framer.shown == b"12", what="the line, grown")
    writer.transport.loseWriteConnection()
    r = await run.wait()
    check_run(run, backend)
    expect_result(run, "EOF")
    await wait_until(lambda: bytes(reader.received) == b"3\nabc", what="the first record")
    assert r.length == 5
    # the unfinished line was not moved: it is the source's again
    await wait_until(lambda: bytes(source.received) == b"12", what="the partial line back at the source")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_framing_in_pieces(net, backend):
    """
    A header that arrives in pieces: the framer is asked again as it grows,
    and once it can tell, the header, its record and the next records move
    in order after what was in flight (even when the last header has no more
    bytes behind it, and the end comes with EOF right after).
    """
    writer, source, drain, reader = await pairs(net)
    framer = LengthFramer()
    run = net.splice(source, drain, max=0, framer=framer, backend=backend)
    first = b"3\nabc"
    writer.transport.write(first + b"1")
    await wait_until(lambda: framer.shown == b"1", what="a partial header")
    rest = b"2\n" + b"x" * 12 + b"5\nhello" + b"0\n"
    writer.transport.write(rest + b"after")
    r = await run.wait()
    check_run(run, backend)
    expect_result(run, "MAX", errno.EFBIG)
    stream = first + b"1" + rest
    await wait_until(lambda: len(reader.received) >= len(stream), what="the stream")
    assert bytes(reader.received) == stream
    assert r.length == len(stream)
    await wait_until(lambda: bytes(source.received) == b"after", what="the bytes after the stream")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_last_header_then_eof(net, backend):
    """The end header arrives alone after a partial one, then EOF: MAX, nothing left over."""
    writer, source, drain, reader = await pairs(net)
    framer = LengthFramer()
    run = net.splice(source, drain, max=0, framer=framer, backend=backend)
    writer.transport.write(b"2\nab0")
    await wait_until(lambda: framer.shown == b"0", what="a partial end header")
    writer.transport.write(b"\n")
    writer.transport.loseWriteConnection()
    r = await run.wait()
    check_run(run, backend)
    expect_result(run, "MAX", errno.EFBIG)
    await wait_until(lambda: bytes(reader.received) == b"2\nab0\n", what="the stream")
    assert r.length == 6


@pytest.mark.parametrize("answer", ["x", -1, True, 1.5])
def test_framer_answer_checked(answer):
    """A framer that answers something else than a count is a programming error, said so."""
    from splicing import SpliceError
    from splicing.core.base import SpliceBase

    s = SpliceBase(reactor, 0, None)
    s.framer = lambda data: answer
    with pytest.raises(SpliceError) as info:
        s._frame(b"data")
    assert info.value.errno == errno.EINVAL and repr(answer) in str(info.value)


def test_framer_must_decide_within_the_peek():
    from splicing import SpliceError
    from splicing.core.base import FRAMER_PEEK, SpliceBase

    s = SpliceBase(reactor, 0, None)
    s.framer = lambda data: 0
    assert s._frame(b"x" * (FRAMER_PEEK - 1)) is False  # asks for more
    with pytest.raises(SpliceError) as info:
        s._frame(b"x" * FRAMER_PEEK)
    assert info.value.errno == errno.EINVAL
    s.framer = lambda data: Last(3)
    assert s._frame(b"abc") is True and s.max == 3 and s.framer is None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_unsplice_while_framing(net, backend):
    """Unsplice between records: nothing moved twice, the rest reaches the protocol."""
    writer, source, drain, reader = await pairs(net)
    framer = LengthFramer()
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
    framer = LengthFramer()
    run = net.splice(source, drain, max=10000, framer=framer, backend=backend)
    writer.transport.write(stream + b"after")
    r = await run.wait()
    check_run(run, backend)
    expect_result(run, "MAX", errno.EFBIG)
    await wait_until(lambda: bytes(reader.received) == stream, what="the stream")
    assert r.length == len(stream)
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
