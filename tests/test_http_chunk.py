"""
The chunked-body reader: strict size lines, "need" events that let the
proxy splice chunk data it never sees, and the guarantee that forwarding
frames + data (+ what was spliced) reproduces the body byte for byte.
"""

import pytest
from hypothesis import given, settings, strategies as st

from splicing.http.chunk import ChunkedReader, parseSizeLine
from splicing.http.errors import HTTPError

SETTINGS = settings(max_examples=300, deadline=None)
MiB = 1 << 20


def relay(stream, pieces=None, move=None, reader=None):
    """
    Play the proxy: feed C{stream} in pieces of the sizes C{pieces(maxsize)}
    returns (all of it by default), and on each C{("need", n)} move
    C{move(n)} bytes out of band with skipped().  Returns (the bytes that
    would reach the other side, the end's rest or None, the events, the
    chunk data: data events and moved bytes).
    """
    reader = reader or ChunkedReader()
    out, body, events, pos, rest = bytearray(), bytearray(), [], 0, None
    while pos < len(stream) and rest is None:
        size = pieces(len(stream) - pos) if pieces else len(stream) - pos
        new = reader.feed(stream[pos:pos + size])
        pos += size
        events += new
        for kind, value in new:
            if kind in ("frame", "data"):
                out += value
                body += value if kind == "data" else b""
            elif kind == "end":
                rest = value
        if new and new[-1][0] == "need" and move:
            n = min(move(new[-1][1]), len(stream) - pos)
            out += stream[pos:pos + n]  # what splice(max=n) would move
            body += stream[pos:pos + n]
            pos += n
            reader.skipped(n)
    return bytes(out), rest, events, bytes(body)


def chunked(*chunks, trailers=b""):
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n" + trailers + b"\r\n"


def merged(events):
    """Events with adjacent data joined and need dropped: feeding granularity removed."""
    out = []
    for kind, value in events:
        if kind == "need":
            continue
        if kind == "data" and out and out[-1][0] == "data":
            out[-1] = ("data", out[-1][1] + value)
        else:
            out.append((kind, value))
    return out


def test_empty_body():
    assert ChunkedReader().feed(b"0\r\n\r\nNEXT") == [("frame", b"0\r\n"), ("frame", b"\r\n"), ("end", b"NEXT")]


def test_events_one_shot():
    reader = ChunkedReader()
    assert reader.feed(chunked(b"hello", b"!") + b"GET /") == [
        ("frame", b"5\r\n"), ("data", b"hello"), ("frame", b"\r\n"),
        ("frame", b"1\r\n"), ("data", b"!"), ("frame", b"\r\n"),
        ("frame", b"0\r\n"), ("frame", b"\r\n"), ("end", b"GET /")]
    assert reader.done


def test_byte_at_a_time_equals_one_shot():
    stream = chunked(b"hello", b"x" * 300, trailers=b"Expires: never\r\n") + b"rest"
    one = relay(stream)
    byte = relay(stream, pieces=lambda left: 1)
    assert byte[0] == one[0] == stream[:-4]
    assert merged(byte[2][:-1]) == merged(one[2][:-1])
    assert (one[1], byte[1]) == (b"rest", b"")  # rest: what followed the end in the same feed


def test_need_then_skipped():
    reader = ChunkedReader()
    assert reader.feed(b"100000\r\n") == [("frame", b"100000\r\n"), ("need", MiB)]
    assert reader.needed == MiB
    reader.skipped(MiB)
    assert reader.needed == 0
    assert reader.feed(b"\r\n0\r\n\r\n") == [("frame", b"\r\n"), ("frame", b"0\r\n"), ("frame", b"\r\n"), ("end", b"")]


def test_need_after_partial_data_and_short_splices():
    reader = ChunkedReader()
    assert reader.feed(b"a\r\n0123") == [("frame", b"a\r\n"), ("data", b"0123"), ("need", 6)]
    reader.skipped(2)  # a short splice
    assert reader.feed(b"") == [("need", 4)]
    assert reader.feed(b"67") == [("data", b"67"), ("need", 2)]
    reader.skipped(2)
    assert reader.feed(b"\r") == []
    assert reader.feed(b"\n0\r") == [("frame", b"\r\n")]
    assert reader.feed(b"\n\r\n") == [("frame", b"0\r\n"), ("frame", b"\r\n"), ("end", b"")]


@pytest.mark.parametrize("size", [1, 2, 4096, MiB])
@pytest.mark.parametrize("move", [None, "all", "half"])
def test_sizes_fed_or_spliced(size, move):
    data = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    stream = chunked(data, b"tail") + b"NEXT"
    mover = {None: None, "all": lambda n: n, "half": lambda n: max(1, n // 2)}[move]
    out, rest, events, decoded = relay(stream, pieces=lambda left: min(left, 1000), move=mover)
    assert (out, rest, decoded) == (stream[:-4], b"NEXT", data + b"tail")
    if move == "all":  # only data inside a fed piece went through feed(), the rest was spliced
        assert sum(len(v) for k, v in events if k == "data") <= 1000


@pytest.mark.parametrize("line,size", [
    (b"0\r\n", 0), (b"1\r\n", 1), (b"000a\r\n", 10), (b"Ff\r\n", 255),
    (b"7fffffffffffffff\r\n", 2**63 - 1), (b"0000000000000001\r\n", 1),
    (b"5;name\r\n", 5), (b"5;a=b;c\r\n", 5), (b"5 ; a = b\r\n", 5), (b"5\t;\ta\r\n", 5),
    (b'5;a="quoted; \\" value"\r\n', 5), (b'5;a=""\r\n', 5), (b"5;a=\xe9\xe9\r\n", None),
])
def test_good_size_lines(line, size):
    if size is None:
        with pytest.raises(HTTPError):
            parseSizeLine(line)
    else:
        assert parseSizeLine(line) == size


@pytest.mark.parametrize("line", [
    b"+5\r\n", b"-5\r\n", b"0x5\r\n", b"0X5\r\n", b" 5\r\n", b"5 \r\n", b"1 0\r\n", b"\t5\r\n",
    b"00000000000000001\r\n",  # 17 digits
    b"8000000000000000\r\n",  # 2**63
    b"ffffffffffffffff\r\n", b"\r\n", b"g\r\n", b"5g\r\n", b"5\n", b"\n", b"5\r\r\n", b"5\x00\r\n",
    "\uff15\r\n".encode(), b"5;\r\n", b"5;=b\r\n", b"5;a=\r\n", b'5;a="open\r\n', b"5;a b\r\n",
    b"5;a=b c\r\n", b"5,\r\n",
])
def test_bad_size_lines(line):
    with pytest.raises(HTTPError) as info:
        ChunkedReader().feed(line)
    assert info.value.status == 400


@pytest.mark.parametrize("after", [b"X\r\n", b"\n", b"\r\r", b"\rX", b" \r\n", b"\n\r"])
def test_bad_crlf_after_data(after):
    reader = ChunkedReader()
    reader.feed(b"5\r\nhello")
    with pytest.raises(HTTPError) as info:
        for i in range(len(after)):  # a byte at a time: refused at the first wrong byte
            reader.feed(after[i:i + 1])
    assert info.value.status == 400


def test_trailers_are_forwarded_verbatim():
    stream = chunked(b"abc", trailers=b"Expires: 0\r\nX-Sum:\tabc \r\n")
    out, rest, events, decoded = relay(stream)
    assert (out, rest, decoded) == (stream, b"", b"abc")
    assert ("frame", b"X-Sum:\tabc \r\n") in events


@pytest.mark.parametrize("trailers", [
    b"X y: 1\r\n", b"X : 1\r\n", b"X: 1\r\n folded\r\n", b"nocolon\r\n", b"X: \x00\r\n", b"X: 1\n",
    b"X: a\rb\r\n",
])
def test_bad_trailers(trailers):
    with pytest.raises(HTTPError) as info:
        ChunkedReader().feed(chunked(trailers=trailers))
    assert info.value.status == 400


def test_limits():
    with pytest.raises(HTTPError) as info:
        ChunkedReader(maxLine=64).feed(b"1;" + b"a" * 100)  # refused before the line ends
    assert info.value.status == 400
    assert ChunkedReader(maxLine=64).feed(b"1;" + b"a" * 59 + b"\r\n")[0][0] == "frame"
    reader = ChunkedReader(maxTrailer=100)
    reader.feed(b"0\r\n" + b"X: 1\r\n" * 16)
    with pytest.raises(HTTPError) as info:
        reader.feed(b"Y: 12")
    assert info.value.status == 431


def test_pipelined_rest_and_misuse():
    reader = ChunkedReader()
    assert reader.feed(chunked(b"a") + chunked(b"b"))[-1] == ("end", chunked(b"b"))
    with pytest.raises(RuntimeError):
        reader.feed(b"x")
    reader = ChunkedReader()
    with pytest.raises(ValueError):
        reader.skipped(1)  # not inside data
    reader.feed(b"3\r\n")
    with pytest.raises(ValueError):
        reader.skipped(4)  # more than the chunk holds
    reader.skipped(3)
    assert reader.feed(b"\r\n") == [("frame", b"\r\n")]


# property tests

extension = st.sampled_from([b"", b";a", b";a=b", b' ; x = "q\\""', b";a;b=c"])
trailer = st.sampled_from([b"", b"X: 1\r\n", b"Expires: 0\r\nX-Y:  z\t\r\n"])


@st.composite
def bodies(draw):
    chunks = draw(st.lists(st.binary(min_size=1, max_size=300), max_size=6))
    parts = [b"%s%s\r\n%s\r\n" % (draw(st.sampled_from([b"%x", b"%X", b"0%x"])) % len(c), draw(extension), c)
             for c in chunks]
    stream = b"".join(parts) + b"0" + draw(extension) + b"\r\n" + draw(trailer) + b"\r\n"
    return b"".join(chunks), stream


@SETTINGS
@given(bodies(), st.data())
def test_random_chunked_streams_round_trip(body, data):
    original, stream = body
    draw = data.draw
    out, rest, events, decoded = relay(stream + b"NEXT", pieces=lambda left: draw(st.integers(1, left)),
                                       move=lambda n: draw(st.integers(0, n)))
    assert rest is not None and b"NEXT".startswith(rest)
    assert (out, decoded) == (stream, original)


@SETTINGS
@given(bodies())
def test_decoded_data_is_the_original(body):
    original, stream = body
    out, rest, events, decoded = relay(stream)
    assert b"".join(v for k, v in events if k == "data") == decoded == original
    assert (out, rest) == (stream, b"")


@SETTINGS
@given(bodies(), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
       st.integers(1, 50))
def test_mutated_streams_only_raise_http_error(body, edits, step):
    stream = bytearray(body[1])
    for at, byte in edits:
        if at % 3 == 0:
            stream.insert(at % (len(stream) + 1), byte)
        elif at % 3 == 1:
            stream[at % len(stream)] ^= byte or 1
        else:
            del stream[at % len(stream)]
    try:
        relay(bytes(stream), pieces=lambda left: min(step, left), move=lambda n: n // 2,
              reader=ChunkedReader(maxLine=64, maxTrailer=64))
    except HTTPError as e:
        assert e.status in (400, 431)
