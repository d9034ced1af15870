"""
Fuzzing the head and chunk parsers the way the proxy uses them.

test_http_head.py and test_http_chunk.py already check that mutated input
only raises HTTPError, that valid heads survive being fed in pieces and that
accepted heads re-serialize stably.  What is added here:

- mutated *valid-looking* requests (byte flips; CR, LF, NUL, SP, HTAB, colon
  inserted; header lines duplicated), fed to HeadReader in random pieces,
  give the same verdict as fed at once: the same head and rest, or an
  HTTPError with the same status (a split read must never change what is
  accepted: the network decides the pieces);
- what the proxy forwards (C{RequestHead.serialize()}, written by
  HTTPProxyProtocol._request) is one well-framed head: a fresh HeadReader
  sees exactly it, nothing before its end, and it parses to the same request
  (method, target, fields, framing, keep-alive, upgrade), so the backend
  cannot read it as something else or as two messages;
- a head in the one form a head is written in is checked by one regular
  expression and forwarded as it came (C{serialize()} returns its bytes):
  for mutated requests and responses that verdict, the fields and the bytes
  forwarded are exactly those of the line-by-line parse, which decides every
  other head (refusing or normalizing it);
- mutated chunked bodies fed in random pieces give the same verdict as at
  once, and what the reader forwards (frames and data) decodes again to the
  same body and the same rest, so the next pipelined head starts where the
  proxy thinks it does.
"""

from hypothesis import example, given, settings, strategies as st

from splicing.http.chunk import ChunkedReader
from splicing.http.errors import HTTPError
from splicing.http import head as headModule
from splicing.http.head import HeadReader, RequestHead, ResponseHead, parseRequestHead, parseResponseHead

FUZZ = settings(max_examples=200, deadline=None)

_TOKEN = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_names = st.sampled_from(["Host", "Content-Length", "Transfer-Encoding", "Connection", "Upgrade", "X-A", "Cookie",
                          "transfer-encoding", "content-length"])
_values = st.sampled_from(["chunked", "5", "0", "close", "keep-alive", "Upgrade", "websocket", "a, b", " x ",
                           "example.com", "example.com:80", "", "chunked, gzip", "1, 1"])


@st.composite
def requests(draw):
    """A request head that is often valid, built from the fields that matter for framing."""
    method = draw(st.sampled_from(["GET", "POST", "PUT", "HEAD", "OPTIONS", "CONNECT"]))
    target = draw(st.sampled_from(["/", "/a?b=c", "*", "http://example.com/x", "example.com:443"]))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0"]))
    fields = [("Host", "example.com")] + draw(st.lists(st.tuples(_names, _values), max_size=5))
    text = "%s %s %s\r\n" % (method, target, version) + "".join("%s: %s\r\n" % f for f in fields) + "\r\n"
    return text.encode("latin-1")


@st.composite
def responses(draw):
    """A response head, often valid, often already in the form the proxy writes."""
    start = draw(st.sampled_from(["HTTP/1.1 200 OK", "HTTP/1.0 204 No Content", "HTTP/1.1 304 ", "HTTP/1.1 101 x",
                                  "HTTP/1.1 200", "HTTP/1.1 599 \xe9t\xe9", "HTTP/2.0 200 OK", "HTTP/1.1 099 x"]))
    fields = draw(st.lists(st.tuples(_names, _values), max_size=5))
    sep = draw(st.sampled_from([": ", ":", ":  ", ": \t"]))
    text = start + "\r\n" + "".join("%s%s%s\r\n" % (n, sep if i == 0 else ": ", v)
                                     for i, (n, v) in enumerate(fields)) + "\r\n"
    return text.encode("latin-1")


_inserted = st.sampled_from([b"\r", b"\n", b"\0", b" ", b"\t", b":", b"\r\n", b"\r\n\r\n"])


@st.composite
def mutations(draw, seed):
    data = bytearray(draw(seed))
    for _ in range(draw(st.integers(0, 3))):
        op, at = draw(st.sampled_from(["flip", "insert", "duplicate-line"])), draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[at:at] = draw(_inserted)
        else:
            lines = bytes(data).split(b"\r\n")
            i = draw(st.integers(1, max(1, len(lines) - 3)))
            data = bytearray(b"\r\n".join(lines[:i + 1] + lines[i:]))
    return bytes(data)


def _pieces(data, cuts):
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def read_head(pieces, limit=400, maxLines=8):
    """HeadReader's verdict on a stream fed in these pieces: ("head", head, rest) or ("error", status) or None."""
    reader = HeadReader(limit=limit, maxLines=maxLines)
    try:
        for i, piece in enumerate(pieces):
            head, rest = reader.feed(piece)
            if head is not None:
                return "head", head, rest + b"".join(pieces[i + 1:])
    except HTTPError as e:
        return "error", e.status
    return None


def parse(head):
    try:
        return parseRequestHead(head)
    except HTTPError as e:
        return e.status


def meaning(head):
    """What a backend acts on: the request, its fields and framing."""
    return (head.method, head.target, head.version, head.headers, head.bodyKind, head.contentLength,
            head.keepAlive, head.upgrade, head.host)


@FUZZ
@given(mutations(requests()), st.lists(st.integers(0, 1000), max_size=8))
@example(b"\r\nGET / HTTP/1.1\r\nHost: example.com\r\n\r\n", [1])
def test_split_reads_never_change_the_verdict(data, cuts):
    stream = data + b"NEXT"
    whole = read_head([stream])
    assert read_head(_pieces(stream, cuts)) == whole
    if whole is not None and whole[0] == "head":
        # One empty line before the request line is ignored (RFC 9112 2.2), never more.
        skipped = len(stream) - len(whole[1]) - len(whole[2])
        assert stream[:skipped] in (b"", b"\r\n")
        assert whole[1] + whole[2] == stream[skipped:]


@FUZZ
@given(mutations(requests()), st.lists(st.integers(0, 1000), min_size=1, max_size=8))
@example(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 7 + b"\r\n", [3])  # maxLines exactly
@example(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 8 + b"\r\n", [3])  # one line too many
@example(b"GET / HTTP/1.1\r\nHost: " + b"h" * 365 + b"\r\n\r\n", [5])  # 400 bytes: the limit
@example(b"GET / HTTP/1.1\r\nHost: " + b"h" * 366 + b"\r\n\r\n", [5])  # 401
def test_a_head_taken_alone_reads_as_in_pieces(data, cuts):
    """
    A socket reader takes exactly one head (see Flow._readSource), which
    HeadReader checks in one go; the verdict is the line-by-line scan's,
    refusals and their status included.
    """
    assert read_head([data]) == read_head(_pieces(data, cuts)) == read_head([data[i:i + 1] for i in range(len(data))])


@FUZZ
@given(mutations(requests()))
def test_what_the_proxy_forwards_is_one_head_meaning_the_same(data):
    verdict = read_head([data + b"NEXT"], limit=8192, maxLines=100)
    if verdict is None or verdict[0] != "head":
        return
    head = parse(verdict[1])
    if isinstance(head, int):
        return
    out = head.serialize()
    assert HeadReader().feed(out + b"NEXT") == (out, b"NEXT")  # exactly one head, ending where it should
    again = parseRequestHead(out)
    assert meaning(again) == meaning(head)
    assert again.serialize() == out


def _verdict(make):
    try:
        head = make()
    except HTTPError as e:
        return e.status
    return head.serialize(), head.bodyKind, head.contentLength, head.keepAlive


@FUZZ
@given(mutations(requests()))
@example(b"GET / HTTP/1.1\r\nHost: example.com \r\n\r\n")  # trailing space: normalized
@example(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 05\r\n\r\n")  # normalized by framing
@example(b"GET /#f HTTP/1.1\r\nHost: a\r\n\r\n")
def test_a_head_forwarded_as_it_came_is_what_the_line_parse_would_write(data):
    """
    The one-expression check accepts no head the line-by-line parse would
    refuse or write differently: same verdict, same fields, same bytes out.
    """
    lines = lambda: RequestHead(*headModule._requestLines(data)[:4])
    verdict = _verdict(lambda: parseRequestHead(data))
    assert verdict == _verdict(lines)
    if headModule._canonicalRequest(data) is not None and not isinstance(verdict, int):
        assert parseRequestHead(data).headers == lines().headers


@FUZZ
@given(st.one_of(responses(), mutations(responses())), st.sampled_from(["GET", "HEAD", "CONNECT"]))
def test_a_response_forwarded_as_it_came_is_what_the_line_parse_would_write(data, method):
    lines = lambda: ResponseHead(*headModule._responseLines(data)[:4], method)
    verdict = _verdict(lambda: parseResponseHead(data, method))
    assert verdict == _verdict(lines)
    if headModule._canonicalResponse(data) is not None and not isinstance(verdict, int):
        assert parseResponseHead(data, method).headers == lines().headers


_ext = st.sampled_from([b"", b";a", b";a=b", b' ; q="x;y"'])


@st.composite
def chunked_streams(draw):
    chunks = draw(st.lists(st.binary(min_size=1, max_size=40), max_size=4))
    body = b"".join(b"%x%s\r\n%s\r\n" % (len(c), draw(_ext), c) for c in chunks)
    return body + b"0" + draw(_ext) + b"\r\n" + draw(st.sampled_from([b"", b"X: 1\r\n"])) + b"\r\n"


@st.composite
def chunk_mutations(draw):
    data = bytearray(draw(chunked_streams()))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        if draw(st.booleans()) and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        else:
            data[at:at] = draw(st.one_of(_inserted, st.sampled_from([b"0", b"f", b"-", b";"])))
    return bytes(data)


def read_body(pieces, reader=None):
    """The ChunkedReader's verdict: ("end", forwarded bytes, data, rest), ("error", status) or None."""
    reader = reader or ChunkedReader(maxLine=64, maxTrailer=64)
    out, data = bytearray(), bytearray()
    try:
        for i, piece in enumerate(pieces):
            for kind, value in reader.feed(piece):
                if kind in ("frame", "data"):
                    out += value
                    data += value if kind == "data" else b""
                elif kind == "end":
                    return "end", bytes(out), bytes(data), value + b"".join(pieces[i + 1:])
    except HTTPError as e:
        return "error", e.status
    return None


@FUZZ
@given(chunk_mutations(), st.lists(st.integers(0, 1000), max_size=8))
def test_chunked_split_reads_never_change_the_verdict_and_forward_what_decodes_alike(stream, cuts):
    stream += b"GET /next HTTP/1.1\r\n"
    whole = read_body([stream])
    assert read_body(_pieces(stream, cuts)) == whole
    if whole is not None and whole[0] == "end":
        _, out, data, rest = whole
        assert out + rest == stream  # forwarded verbatim, up to the body's end
        assert read_body([out + b"NEXT"]) == ("end", out, data, b"NEXT")  # the backend decodes the same
