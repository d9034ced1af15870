"""
The strict head parser: every refusal with its status (the smuggling corpus
is what the proxy exists to stop), the framing of accepted messages, editing,
and property tests that mutated heads only ever raise HTTPError.
"""

import time

import pytest
from hypothesis import given, settings, strategies as st

from splicing.http.errors import HTTPError
from splicing.http.head import (
    HeadReader, errorResponse, parseRequestHead, parseResponseHead)

SETTINGS = settings(max_examples=300, deadline=None)


def req(*lines, start=b"POST / HTTP/1.1", host=b"Host: example.com"):
    """A request head from its field lines (Host first unless host=None)."""
    fields = ([host] if host else []) + list(lines)
    return b"\r\n".join([start] + fields) + b"\r\n\r\n"


def resp(*lines, start=b"HTTP/1.1 200 OK"):
    return b"\r\n".join([start] + list(lines)) + b"\r\n\r\n"


BAD_REQUESTS = [
    # both framing headers, either order (CL.TE / TE.CL smuggling)
    ("cl-te", req(b"Content-Length: 5", b"Transfer-Encoding: chunked"), 400),
    ("te-cl", req(b"Transfer-Encoding: chunked", b"Content-Length: 5"), 400),
    ("te-cl-zero", req(b"Transfer-Encoding: chunked", b"Content-Length: 0"), 400),
    # obfuscated Transfer-Encoding (TE.TE)
    ("te-vtab", req(b"Transfer-Encoding: chunked\x0b"), 400),
    ("te-formfeed", req(b"Transfer-Encoding: \x0cchunked"), 400),
    ("te-x", req(b"Transfer-Encoding: xchunked"), 400),
    ("te-list", req(b"Transfer-Encoding: chunked, identity"), 400),
    ("te-gzip-chunked", req(b"Transfer-Encoding: gzip, chunked"), 400),
    ("te-identity", req(b"Transfer-Encoding: identity"), 400),
    ("te-params", req(b"Transfer-Encoding: chunked;q=1"), 400),
    ("te-empty", req(b"Transfer-Encoding:"), 400),
    ("te-space-colon", req(b"Transfer-Encoding : chunked"), 400),
    ("te-leading-space-line", req(b" Transfer-Encoding: chunked"), 400),
    ("te-dup", req(b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"), 400),
    ("te-dup-x", req(b"Transfer-Encoding: chunked", b"Transfer-Encoding: x"), 400),
    ("te-lf-in-name", req(b"Transfer-Encoding\n: chunked"), 400),
    ("te-http10", req(b"Transfer-Encoding: chunked", start=b"POST / HTTP/1.0"), 400),
    ("te-folded", req(b"X: y", b" Transfer-Encoding: chunked"), 400),
    ("te-smuggled-by-lf", req(b"X: X\nTransfer-Encoding: chunked"), 400),
    # line endings, NUL, folding, field syntax
    ("bare-lf-start", b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400),
    ("bare-lf-field", req(b"X: a\nY: b"), 400),
    ("bare-cr-value", req(b"X: a\rb"), 400),
    ("nul-value", req(b"X: a\x00b"), 400),
    ("nul-name", req(b"X\x00: a"), 400),
    ("nul-target", req(start=b"GET /\x00 HTTP/1.1"), 400),
    ("ctl-value", req(b"X: a\x01b"), 400),
    ("del-value", req(b"X: a\x7fb"), 400),
    ("obs-fold", req(b"X: a", b" b"), 400),
    ("obs-fold-tab", req(b"X: a", b"\tb"), 400),
    ("ws-before-colon", req(b"Host : example.com", host=None), 400),
    ("tab-before-colon", req(b"Content-Length\t: 5"), 400),
    ("no-colon", req(b"Content-Length 5"), 400),
    ("empty-name", req(b": x"), 400),
    ("name-space", req(b"X Y: 1"), 400),
    ("name-paren", req(b"X(y): 1"), 400),
    ("name-non-ascii", req(b"X\xe9: 1"), 400),
    ("no-end", b"GET / HTTP/1.1\r\nHost: a\r\n", 400),
    ("leading-crlf", b"\r\n" + req(), 400),
    # Content-Length
    ("cl-plus", req(b"Content-Length: +5"), 400),
    ("cl-minus", req(b"Content-Length: -5"), 400),
    ("cl-hex", req(b"Content-Length: 0x5"), 400),
    ("cl-alpha", req(b"Content-Length: 5a"), 400),
    ("cl-empty", req(b"Content-Length:"), 400),
    ("cl-space-inside", req(b"Content-Length: 5 5"), 400),
    ("cl-decimal-point", req(b"Content-Length: 1.0"), 400),
    ("cl-exponent", req(b"Content-Length: 1e3"), 400),
    ("cl-unicode-digit", req("Content-Length: \u0665".encode()), 400),
    ("cl-overflow", req(b"Content-Length: 9223372036854775808"), 400),
    ("cl-huge", req(b"Content-Length: " + b"9" * 5000), 400),
    ("cl-list-differ", req(b"Content-Length: 5, 6"), 400),
    ("cl-list-empty", req(b"Content-Length: 5,"), 400),
    ("cl-dup-differ", req(b"Content-Length: 5", b"Content-Length: 6"), 400),
    # Host and targets
    ("host-dup", req(b"Host: example.com"), 400),
    ("host-dup-case", req(b"host: other.com"), 400),
    ("host-missing", req(host=None), 400),
    ("host-empty", req(host=b"Host:"), 400),
    ("host-space", req(host=b"Host: a b"), 400),
    ("host-userinfo", req(host=b"Host: u@a"), 400),
    ("host-slash", req(host=b"Host: a/b"), 400),
    ("host-port-range", req(host=b"Host: a:65536"), 400),
    ("absolute-mismatch", req(start=b"GET http://other.com/ HTTP/1.1"), 400),
    ("absolute-port-mismatch", req(start=b"GET http://example.com:8080/ HTTP/1.1"), 400),
    ("absolute-userinfo", req(start=b"GET http://u@example.com/ HTTP/1.1"), 400),
    ("absolute-ftp", req(start=b"GET ftp://example.com/ HTTP/1.1"), 400),
    ("absolute-no-host", req(start=b"GET http://example.com/ HTTP/1.1", host=None), 400),
    ("target-relative", req(start=b"GET index.html HTTP/1.1"), 400),
    ("target-fragment", req(start=b"GET /a#b HTTP/1.1"), 400),
    ("target-asterisk-get", req(start=b"GET * HTTP/1.1"), 400),
    ("target-non-ascii", req(start=b"GET /\xe9 HTTP/1.1"), 400),
    ("connect-origin", req(start=b"CONNECT / HTTP/1.1"), 400),
    ("connect-no-port", req(start=b"CONNECT example.com HTTP/1.1"), 400),
    ("connect-absolute", req(start=b"CONNECT http://example.com:80/ HTTP/1.1"), 400),
    ("connect-mismatch", req(start=b"CONNECT other.com:443 HTTP/1.1"), 400),
    ("connect-cl", req(b"Content-Length: 0", start=b"CONNECT example.com:443 HTTP/1.1"), 400),
    ("connect-te", req(b"Transfer-Encoding: chunked", start=b"CONNECT example.com:443 HTTP/1.1"), 400),
    ("trace-cl", req(b"Content-Length: 0", start=b"TRACE / HTTP/1.1"), 400),
    ("trace-te", req(b"Transfer-Encoding: chunked", start=b"TRACE / HTTP/1.1"), 400),
    # request line
    ("two-spaces", req(start=b"GET  / HTTP/1.1"), 400),
    ("trailing-space", req(start=b"GET / HTTP/1.1 "), 400),
    ("tab-separator", req(start=b"GET\t/ HTTP/1.1"), 400),
    ("lowercase-version", req(start=b"GET / http/1.1"), 400),
    ("no-version", req(start=b"GET /"), 400),
    ("extra-part", req(start=b"GET / HTTP/1.1 x"), 400),
    ("method-not-token", req(start=b"G(T / HTTP/1.1"), 400),
    ("empty-line", b"\r\n\r\n", 400),
    ("version-garbage", req(start=b"GET / HTTP/11"), 400),
    ("version-no-minor", req(start=b"GET / HTTP/2"), 400),
    ("http2-preface", b"PRI * HTTP/2.0\r\n\r\n", 505),
    ("http12", req(start=b"GET / HTTP/1.2"), 505),
    ("http09", req(start=b"GET / HTTP/0.9"), 505),
    # Connection options must be tokens
    ("connection-garbage", req(b"Connection: close x"), 400),
]

BAD_RESPONSES = [
    ("no-reason-sp", resp(start=b"HTTP/1.1 200OK"), 502),
    ("two-digit", resp(start=b"HTTP/1.1 20 OK"), 502),
    ("status-600", resp(start=b"HTTP/1.1 600 X"), 502),
    ("double-space", resp(start=b"HTTP/1.1  200 OK"), 502),
    ("http2", resp(start=b"HTTP/2.0 200 OK"), 502),
    ("icy", resp(start=b"ICY 200 OK"), 502),
    ("ctl-reason", resp(start=b"HTTP/1.1 200 O\x01K"), 502),
    ("bad-field", resp(b"X y: 1"), 502),
    ("obs-fold", resp(b"X: 1", b" 2"), 502),
    ("bare-lf", b"HTTP/1.1 200 OK\nX: 1\r\n\r\n", 502),
    ("nul", resp(b"X: \x00"), 502),
    ("cl-te", resp(b"Content-Length: 5", b"Transfer-Encoding: chunked"), 502),
    ("te-gzip", resp(b"Transfer-Encoding: gzip"), 502),
    ("te-http10", resp(b"Transfer-Encoding: chunked", start=b"HTTP/1.0 200 OK"), 502),
    ("cl-differ", resp(b"Content-Length: 5", b"Content-Length: 6"), 502),
    ("cl-sign", resp(b"Content-Length: +5"), 502),
    ("204-cl", resp(b"Content-Length: 5", start=b"HTTP/1.1 204 No Content"), 502),
    ("100-cl", resp(b"Content-Length: 1", start=b"HTTP/1.1 100 Continue"), 502),
    ("204-te", resp(b"Transfer-Encoding: chunked", start=b"HTTP/1.1 204 No Content"), 502),
]


@pytest.mark.parametrize("name,raw,status", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request(name, raw, status):
    with pytest.raises(HTTPError) as info:
        parseRequestHead(raw)
    assert info.value.status == status
    assert info.value.close and info.value.reason


@pytest.mark.parametrize("name,raw,status", BAD_RESPONSES, ids=[c[0] for c in BAD_RESPONSES])
def test_bad_response(name, raw, status):
    with pytest.raises(HTTPError) as info:
        parseResponseHead(raw, "GET")
    assert info.value.status == status


@pytest.mark.parametrize("raw,reason", [
    (req(b"Content-Length: 5", b"Transfer-Encoding: chunked"), "Content-Length together with Transfer-Encoding"),
    (req(b"X: a", b" b"), "obsolete line folding"),
    (req(b"Host: a"), "duplicate Host"),
])
def test_reasons_say_what_was_wrong(raw, reason):
    with pytest.raises(HTTPError, match=reason):
        parseRequestHead(raw)


def test_get_without_body():
    head = parseRequestHead(req(start=b"GET /a/b?x=1&y HTTP/1.1"))
    assert (head.method, head.target, head.version) == ("GET", "/a/b?x=1&y", "HTTP/1.1")
    assert (head.path, head.query, head.host) == ("/a/b", "x=1&y", "example.com")
    assert (head.bodyKind, head.contentLength, head.keepAlive) == ("none", None, True)
    assert (head.upgrade, head.isConnect) == (None, False)


@pytest.mark.parametrize("lines,kind,length", [
    ([b"Content-Length: 5"], "length", 5),
    ([b"Content-Length: 0"], "none", 0),
    ([b"Content-Length: 007"], "length", 7),
    ([b"Content-Length: 9223372036854775807"], "length", 2**63 - 1),
    ([b"Content-Length: 5, 5"], "length", 5),
    ([b"Content-Length: 5", b"content-length:5"], "length", 5),
    ([b"Transfer-Encoding: chunked"], "chunked", None),
    ([b"transfer-encoding: CHUNKED"], "chunked", None),
    ([b"Transfer-Encoding:\t chunked \t"], "chunked", None),
])
def test_request_framing(lines, kind, length):
    head = parseRequestHead(req(*lines))
    assert (head.bodyKind, head.contentLength) == (kind, length)


def test_duplicate_lengths_collapse_to_one_field():
    head = parseRequestHead(req(b"Content-Length: 05, 5", b"X: 1", b"Content-Length: 5"))
    assert head.serialize() == req(b"Content-Length: 5", b"X: 1")


def test_whitespace_variants_are_normalized_on_output():
    head = parseRequestHead(req(b"Transfer-Encoding:\tchunked  ", b"X:y"))
    assert head.serialize() == req(b"Transfer-Encoding: chunked", b"X: y")


@pytest.mark.parametrize("version,connection,keepAlive", [
    (b"HTTP/1.1", None, True),
    (b"HTTP/1.1", b"Connection: close", False),
    (b"HTTP/1.1", b"Connection: Keep-Alive, CLOSE", False),
    (b"HTTP/1.0", None, False),
    (b"HTTP/1.0", b"Connection: keep-alive", True),
    (b"HTTP/1.0", b"Connection: foo, Keep-Alive", True),
])
def test_keep_alive(version, connection, keepAlive):
    lines = [connection] if connection else []
    assert parseRequestHead(req(*lines, start=b"GET / " + version)).keepAlive is keepAlive
    assert parseResponseHead(resp(*(lines + [b"Content-Length: 0"]), start=version + b" 200 OK"),
                             "GET").keepAlive is keepAlive


def test_http10_without_host():
    assert parseRequestHead(req(start=b"GET / HTTP/1.0", host=None)).host is None


def test_upgrade():
    head = parseRequestHead(req(b"Connection: keep-alive, Upgrade", b"Upgrade: WebSocket",
                                start=b"GET /chat HTTP/1.1"))
    assert head.upgrade == "websocket"
    assert parseRequestHead(req(b"Upgrade: websocket")).upgrade is None


def test_absolute_form():
    head = parseRequestHead(req(start=b"GET http://EXAMPLE.com:80/p?q HTTP/1.1"))
    assert (head.host, head.path, head.query) == ("EXAMPLE.com:80", "/p", "q")
    https = parseRequestHead(req(host=b"Host: a:443", start=b"GET https://a HTTP/1.1"))
    assert (https.host, https.path, https.query) == ("a", "/", None)
    loose = parseRequestHead(req(start=b"GET http://other.com/ HTTP/1.1"), absoluteHostCheck=False)
    assert loose.host == "other.com"


def test_connect_and_options():
    head = parseRequestHead(req(host=b"Host: example.com", start=b"CONNECT example.com:443 HTTP/1.1"))
    assert (head.isConnect, head.host, head.bodyKind, head.path) == (True, "example.com:443", "none", "")
    assert parseRequestHead(req(host=b"Host: [::1]:8443", start=b"CONNECT [::1]:8443 HTTP/1.1")).isConnect
    assert parseRequestHead(req(start=b"OPTIONS * HTTP/1.1")).target == "*"


@pytest.mark.parametrize("method,start,lines,kind", [
    ("GET", b"HTTP/1.1 200 OK", [b"Content-Length: 10"], "length"),
    ("GET", b"HTTP/1.1 200 OK", [b"Transfer-Encoding: chunked"], "chunked"),
    ("GET", b"HTTP/1.1 200 OK", [], "close"),
    ("GET", b"HTTP/1.0 200 OK", [b"Connection: keep-alive"], "close"),
    ("HEAD", b"HTTP/1.1 200 OK", [b"Content-Length: 10"], "none"),
    ("HEAD", b"HTTP/1.1 200 OK", [b"Transfer-Encoding: chunked"], "none"),
    ("GET", b"HTTP/1.1 100 Continue", [], "none"),
    ("GET", b"HTTP/1.1 103 Early Hints", [b"Link: </s.css>"], "none"),
    ("GET", b"HTTP/1.1 204 No Content", [b"Content-Length: 0"], "none"),
    ("GET", b"HTTP/1.1 304 Not Modified", [b"Content-Length: 10"], "none"),
    ("GET", b"HTTP/1.1 101 Switching Protocols", [b"Connection: upgrade", b"Upgrade: websocket"], "tunnel"),
    ("CONNECT", b"HTTP/1.1 200 Connection established", [], "tunnel"),
    ("CONNECT", b"HTTP/1.1 407 Proxy Authentication Required", [b"Content-Length: 3"], "length"),
    ("GET", b"HTTP/1.1 200", [b"Content-Length: 0"], "none"),
    ("GET", b"HTTP/1.1 500 ", [b"Content-Length: 0"], "none"),
])
def test_response_framing(method, start, lines, kind):
    head = parseResponseHead(resp(*lines, start=start), method)
    assert head.bodyKind == kind
    if kind in ("close", "tunnel"):
        assert not head.keepAlive
    assert head.status == int(start.split()[1])


def test_response_round_trip():
    raw = resp(b"Content-Type: text/html", b"Content-Length: 3", start=b"HTTP/1.1 404 Not \xe9Found")
    head = parseResponseHead(raw, "GET")
    assert head.serialize() == raw
    assert (head.version, head.status, head.reason) == ("HTTP/1.1", 404, "Not \xe9Found")


def test_request_round_trip():
    raw = req(b"User-Agent: x/1 (y)", b"Accept: */*", b"X-Empty: ", start=b"GET /a?b HTTP/1.1")
    head = parseRequestHead(raw)
    assert head.serialize() == raw
    assert head.headers[-1] == [b"X-Empty", b""]


@pytest.mark.parametrize("change, expected", [
    (lambda h: h.setHeader("X-A", "2"), req(b"X-A: 2", start=b"GET /a?b HTTP/1.1")),
    (lambda h: setattr(h, "path", "/z"), req(b"X-A: 1", start=b"GET /z?b HTTP/1.1")),
    (lambda h: setattr(h, "query", None), req(b"X-A: 1", start=b"GET /a HTTP/1.1")),
    (lambda h: setattr(h, "method", "PUT"), req(b"X-A: 1", start=b"PUT /a?b HTTP/1.1")),
    (lambda h: (h.headers[1].__setitem__(1, b"3"), h.frame()), req(b"X-A: 3", start=b"GET /a?b HTTP/1.1")),
    (lambda h: (h.headers.append([b"Y", b"4"]), h.forgetRaw()), req(b"X-A: 1", b"Y: 4", start=b"GET /a?b HTTP/1.1")),
])
def test_a_head_forwarded_as_it_came_until_changed(change, expected):
    """
    A head already in the written form goes out as its own bytes; every way
    of changing it (the methods, the path and query setters, a start line
    attribute, a field changed in place then frame() or forgetRaw()) is
    what goes out instead.
    """
    raw = req(b"X-A: 1", start=b"GET /a?b HTTP/1.1")
    head = parseRequestHead(raw)
    assert head.serialize() is raw
    change(head)
    assert head.serialize() == expected


def test_a_response_forwarded_as_it_came_until_changed():
    raw = resp(b"Content-Length: 0")
    head = parseResponseHead(raw, "GET")
    assert head.serialize() is raw
    head.reason = "Fine"
    assert head.serialize() == resp(b"Content-Length: 0", start=b"HTTP/1.1 200 Fine")


def test_header_editing():
    head = parseRequestHead(req(b"X-A: 1", b"Via: a", b"x-a: 2", b"Via: b"))
    assert head.getHeader("x-A") == [b"1", b"2"] == head.getHeader(b"X-A")
    head.setHeader("X-A", "3")
    head.appendHeader(b"Via", b"c")
    assert head.headers == [[b"Host", b"example.com"], [b"X-A", b"3"], [b"Via", b"a"],
                            [b"Via", b"b"], [b"Via", b"c"]]
    head.removeHeader("via")
    head.setHeader("New", " v ")
    assert head.serialize() == req(b"X-A: 3", b"New: v")


@pytest.mark.parametrize("call", [
    lambda h: h.setHeader("Content-Length", "3"),
    lambda h: h.appendHeader("transfer-encoding", "chunked"),
    lambda h: h.removeHeader("CONTENT-LENGTH"),
    lambda h: h.setHeader("X", "a\r\nInjected: 1"),
    lambda h: h.setHeader("X\x00", "a"),
    lambda h: h.setHeader("X y", "a"),
    lambda h: h.appendHeader("Host", "example.com"),
    lambda h: h.setHeader("Host", "other.com"),  # differs from the absolute-form target
    lambda h: h.removeHeader("Host"),
    lambda h: h.setHeader("Connection", "a b"),
])
def test_refused_edits_change_nothing(call):
    raw = req(b"Content-Length: 3", b"Connection: close", start=b"POST http://example.com/ HTTP/1.1")
    head = parseRequestHead(raw)
    with pytest.raises(ValueError):
        call(head)
    assert head.serialize() == raw
    assert (head.bodyKind, head.contentLength, head.host, head.keepAlive) == ("length", 3, "example.com", False)


def test_edits_recompute_derived_attributes():
    head = parseRequestHead(req(start=b"GET / HTTP/1.1"))
    head.setHeader("Connection", "close")
    head.setHeader("host", "other.com:8080")
    assert (head.keepAlive, head.host) == (False, "other.com:8080")
    response = parseResponseHead(resp(b"Content-Length: 1"), "GET")
    response.appendHeader("Connection", "close")
    assert not response.keepAlive
    with pytest.raises(ValueError):
        response.removeHeader("Transfer-Encoding")


def test_path_and_query_setters():
    head = parseRequestHead(req(start=b"GET /a?b=1 HTTP/1.1"))
    head.path = "/c/d"
    assert head.target == "/c/d?b=1"
    head.query = "x=%20"
    assert head.target == "/c/d?x=%20"
    head.query = None
    assert (head.target, head.query) == ("/c/d", None)
    head.query = ""
    assert (head.target, head.query) == ("/c/d?", "")
    absolute = parseRequestHead(req(start=b"GET http://example.com?q HTTP/1.1"))
    absolute.path = "/p"
    assert absolute.target == "http://example.com/p?q"
    assert absolute.serialize().startswith(b"GET http://example.com/p?q HTTP/1.1\r\n")


@pytest.mark.parametrize("target,attr,value", [
    ("/", "path", "no-slash"), ("/", "path", "/a?b"), ("/", "path", "/a b"), ("/", "path", "/#"),
    ("/", "query", "a b"), ("/", "query", "a#b"), ("*", "path", "/x"),
])
def test_bad_path_and_query(target, attr, value):
    head = parseRequestHead(req(start=b"OPTIONS " + target.encode() + b" HTTP/1.1"))
    with pytest.raises(ValueError):
        setattr(head, attr, value)
    assert head.target == target


@pytest.mark.parametrize("status,close", [(400, True), (431, True), (502, True), (505, True), (408, False)])
def test_error_response(status, close):
    raw = errorResponse(status, "Content-Length together with\r\nTransfer-Encoding", close=close)
    head, body = HeadReader().feed(raw)
    parsed = parseResponseHead(head, "GET")
    assert (parsed.status, parsed.bodyKind, parsed.contentLength) == (status, "length", len(body))
    assert parsed.keepAlive is not close
    assert parsed.getHeader("content-type") == [b"text/plain; charset=utf-8"]
    assert b"Content-Length together with??Transfer-Encoding" in body


# HeadReader

PIPELINED = req(b"Content-Length: 3") + b"abc" + req(start=b"GET / HTTP/1.1")


def test_reader_one_shot_and_byte_at_a_time():
    first = req(b"Content-Length: 3")
    assert HeadReader().feed(PIPELINED) == (first, PIPELINED[len(first):])
    reader = HeadReader()
    results = [reader.feed(PIPELINED[i:i + 1]) for i in range(len(first))]
    assert results[len(first) - 1] == (first, b"")
    assert all(r == (None, b"") for r in results[:len(first) - 1])
    # the caller takes the body; the reader is ready for the next head at once
    second = PIPELINED[len(first) + 3:]
    results = [reader.feed(second[i:i + 1]) for i in range(len(second))]
    assert results[-1] == (second, b"") and all(r == (None, b"") for r in results[:-1])


def test_reader_tolerates_one_leading_crlf():
    assert HeadReader().feed(b"\r\n" + req()) == (req(), b"")
    with pytest.raises(HTTPError) as info:
        HeadReader().feed(b"\r\n\r\n" + req())
    assert info.value.status == 400


@pytest.mark.parametrize("data", [b"GET / HTTP/1.1\n", b"GET / HTTP/1.1\r\nX: 1\n\r\n", b"\n",
                                  b"GET /\x00 HTTP/1.1\r\n", b"\r\n\r\n"])
def test_reader_refuses_framing(data):
    with pytest.raises(HTTPError) as info:
        HeadReader().feed(data)
    assert info.value.status == 400


def test_reader_byte_limit():
    raw = req(b"X: " + b"a" * 100)
    assert HeadReader(limit=len(raw)).feed(raw + b"body")[0] == raw
    reader = HeadReader(limit=len(raw) - 1)
    assert reader.feed(raw[:-1]) == (None, b"")  # at the limit, not over it
    with pytest.raises(HTTPError) as info:
        reader.feed(raw[-1:])
    assert info.value.status == 431
    with pytest.raises(HTTPError) as info:
        HeadReader(limit=100).feed(b"G" * 101)  # no line end ever seen
    assert info.value.status == 431


def test_reader_line_limit():
    lines = [b"X-%d: 1" % i for i in range(99)]
    assert HeadReader(maxLines=100).feed(req(*lines, host=None))[0] is not None
    reader = HeadReader(maxLines=100)
    reader.feed(b"GET / HTTP/1.1\r\n" + b"".join(line + b"\r\n" for line in lines))
    with pytest.raises(HTTPError) as info:
        reader.feed(b"X-last: 1\r\n")  # the 101st line, before the end is seen
    assert info.value.status == 431


def test_reader_reset_discards_partial_head():
    reader = HeadReader()
    reader.feed(b"GARBAGE\r\n\r")
    reader.reset()
    assert reader.feed(req()) == (req(), b"")


def test_reader_is_linear():
    """One long line fed a byte at a time: a rescan per feed would be quadratic."""
    n = 200_000
    reader, data = HeadReader(limit=n + 100), b"GET /" + b"a" * n + b" HTTP/1.1\r\n\r\n"
    started = time.perf_counter()
    for i in range(len(data) - 1):
        reader.feed(data[i:i + 1])
    assert reader.feed(data[-1:])[0] == data
    assert time.perf_counter() - started < 4.0


# property tests

_tchar = st.sampled_from("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
tokens = st.text(_tchar, min_size=1, max_size=12)
_fieldChars = st.characters(min_codepoint=0x09, max_codepoint=0xFF, exclude_characters="\x7f").filter(
    lambda c: c == "\t" or c >= " ")
values = st.text(_fieldChars, max_size=20).map(lambda v: v.strip(" \t"))  # OWS is not part of a value
_special = {"host", "content-length", "transfer-encoding", "connection", "upgrade"}
fields = st.lists(st.tuples(tokens.filter(lambda n: n.lower() not in _special), values), max_size=8)
paths = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#?"), max_size=20)


@st.composite
def requests(draw):
    method = draw(st.one_of(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
                            tokens.filter(lambda m: m != "CONNECT")))  # CONNECT takes no origin-form
    target = "/" + draw(paths) + draw(st.one_of(st.just(""), paths.map(lambda q: "?" + q)))
    version = draw(st.sampled_from(["HTTP/1.0", "HTTP/1.1"]))
    lines = [("Host", draw(st.sampled_from(["example.com", "a.b:8080", "[::1]", "10.0.0.1:1"])))]
    lines += draw(fields)
    body = draw(st.sampled_from(["", "length", "chunked"] if version == "HTTP/1.1" else ["", "length"]))
    bodyless = method in ("TRACE", "GET", "HEAD", "COPY", "MOVE")  # refused with a body (CL.0)
    if body == "length" and not bodyless:
        lines.append(("Content-Length", str(draw(st.integers(0, 2**63 - 1)))))
    elif body == "chunked" and not bodyless:
        lines.append(("Transfer-Encoding", "chunked"))
    text = "%s %s %s\r\n" % (method, target, version) + "".join("%s: %s\r\n" % f for f in lines) + "\r\n"
    return text.encode("latin-1")


@SETTINGS
@given(requests(), st.lists(st.integers(0, 10**4), max_size=6))
def test_valid_requests_parse_and_round_trip(raw, cuts):
    head = parseRequestHead(raw)
    assert head.serialize() == raw
    again = parseRequestHead(head.serialize())
    assert (again.method, again.target, again.headers, again.bodyKind, again.contentLength) == \
        (head.method, head.target, head.headers, head.bodyKind, head.contentLength)
    assert HeadReader().feed(raw + b"rest") == (raw, b"rest")
    # fed in arbitrary pieces: the same head, the rest of the piece that ended it
    stream, reader, result = raw + b"rest", HeadReader(), (None, b"")
    bounds = sorted({c % len(stream) for c in cuts} | {0, len(stream)})
    for a, b in zip(bounds, bounds[1:]):
        if result[0] is None:
            result = reader.feed(stream[a:b])
            end = b
    assert result == (raw, stream[len(raw):end])


SEEDS = [
    req(b"Content-Length: 5", b"Connection: keep-alive"),
    req(b"Transfer-Encoding: chunked", start=b"GET http://example.com/x?y HTTP/1.1"),
    req(b"Connection: Upgrade", b"Upgrade: websocket", start=b"CONNECT example.com:443 HTTP/1.1"),
    resp(b"Content-Length: 5, 5", b"Content-Type: text/plain"),
    resp(b"Transfer-Encoding: chunked", start=b"HTTP/1.1 304 Not Modified"),
]
_interesting = st.sampled_from(b"\r\n\x00 \t:,;\x0b\x7f\xff-+0x")


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op, at = draw(st.sampled_from("flip insert delete duplicate".split())), draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[at:at] = bytes([draw(st.one_of(_interesting, st.integers(0, 255)))])
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 3))]
        else:
            lines = bytes(data).split(b"\r\n")
            i = draw(st.integers(0, len(lines) - 1))
            data = bytearray(b"\r\n".join(lines[:i + 1] + lines[i:]))
    return bytes(data)


def _normalizes_stably(parse, raw):
    """Parsing never raises anything but HTTPError; accepted heads re-parse to the same bytes."""
    try:
        head = parse(raw)
    except HTTPError:
        return
    out = head.serialize()
    assert parse(out).serialize() == out


@SETTINGS
@given(mutated())
def test_mutated_heads_only_raise_http_error(raw):
    _normalizes_stably(parseRequestHead, raw)
    for method in ("GET", "HEAD", "CONNECT"):
        _normalizes_stably(lambda data: parseResponseHead(data, method), raw)
    try:
        head, rest = HeadReader(limit=200, maxLines=6).feed(raw)
    except HTTPError:
        return
    assert head is None or raw.endswith(head + rest)


@SETTINGS
@given(st.binary(max_size=200), st.integers(1, 7))
def test_random_bytes_only_raise_http_error(data, step):
    _normalizes_stably(parseRequestHead, data + b"\r\n\r\n")
    _normalizes_stably(lambda d: parseResponseHead(d, "GET"), data + b"\r\n\r\n")
    reader = HeadReader(limit=150)
    try:
        for i in range(0, len(data), step):
            reader.feed(data[i:i + step])
    except HTTPError:
        pass


# -- headLength: how much of a peek a socket reader takes -----------------------


@pytest.mark.parametrize("fed, peeked, expected", [
    (b"", b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY", 27),  # through the empty line, not the body
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r", b"\nBODY", 1),  # the empty line began in an earlier read
    (b"GET / HTTP/1.1\r\nHost: a\r\n", b"\r\nBODY", 2),
    (b"GET / HTTP/1.1\r\nHost: a\r", b"\n\r\nBODY", 3),
    (b"", b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nX", 29),  # one tolerated empty line first
])
def test_head_length_takes_exactly_the_head(fed, peeked, expected):
    r = HeadReader()
    assert r.feed(fed) == (None, b"")
    n = r.headLength(peeked)
    assert n == expected
    head, rest = r.feed(peeked[:n])
    assert head is not None and rest == b""  # exactly the head: nothing of the body fed
    assert head.endswith(b"\r\n\r\n")


def test_head_length_without_an_end_takes_everything():
    r = HeadReader()
    data = b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 10
    assert r.headLength(data) == len(data)
    assert r.feed(data) == (None, b"")


@pytest.mark.parametrize("fields, kept", [
    ([b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABk"], []),
    ([b"Connection: keep-alive, Upgrade, HTTP2-Settings", b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABk"],
     [b"Connection: keep-alive"]),
    ([b"Connection: close, upgrade", b"Upgrade: H2C, websocket"], [b"Connection: close, upgrade", b"Upgrade: websocket"]),
    ([b"Upgrade: h2c"], []),
])
def test_drop_h2c_upgrade(fields, kept):
    """curl --http2's offer is withdrawn, as nginx and HAProxy do; other offers stay."""
    head = parseRequestHead(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n")
    assert head.dropUpgrade(b"h2c")
    assert head.serialize() == b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(f + b"\r\n" for f in kept) + b"\r\n"
    assert head.upgrade == ("websocket" if kept[1:] else None)
    assert not head.dropUpgrade(b"h2c")


@pytest.mark.parametrize("method", ["GET", "HEAD", "COPY", "MOVE"])
def test_bodies_of_bodiless_methods_are_refused(method):
    """CL.0: an origin that ignores the length reads the body as a request; Content-Length: 0 is harmless."""
    for framing in (b"Content-Length: 5", b"Transfer-Encoding: chunked"):
        with pytest.raises(HTTPError) as e:
            parseRequestHead(b"%s / HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n" % (method.encode(), framing))
        assert e.value.status == 400
    assert parseRequestHead(b"%s / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n" % method.encode()).bodyKind == "none"
