"""
Request smuggling and malformed heads, as a client sends them to the proxy.

Each L{Case} is one client connection's bytes, the statuses it must get back
(in order: a pipelined good request first is answered before the refusal),
and what the origin must see: ``reaches`` lists the (target, body) of every
request the origin may complete for it, in order, and nothing else may
arrive as a request; ``partial`` says the refusal comes from a body, so the
head went out before it and the origin sees a message cut short (never a
complete one, never a second request).

Targets name their case (``/h/NAME``, ``/smuggled/NAME``) so the origin's
records can be matched to cases while good clients run beside them.
Refusals close the connection; accepted cases are sent with a half-close.
"""

from dataclasses import dataclass

HOST = b"Host: hostile.test\r\n"


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    statuses: tuple
    reaches: tuple = ()
    partial: bool = False
    notes: str = ""

    @property
    def refused(self):
        return self.statuses[-1] >= 400


def head(name, *fields, method=b"POST", version=b"HTTP/1.1", host=HOST, target=None):
    """A request head for case ``name`` (target /h/NAME) with these field lines."""
    target = target if target is not None else b"/h/" + name.encode()
    return (method + b" " + target + b" " + version + b"\r\n" + (host or b"")
            + b"".join(f + b"\r\n" for f in fields) + b"\r\n")


def smuggled(name):
    """A complete request that must never reach the origin as a request."""
    return b"GET /smuggled/" + name.encode() + b" HTTP/1.1\r\n" + HOST + b"\r\n"


def good(name):
    """A valid request pipelined before the hostile one (target /h/NAME/first)."""
    return head(name, method=b"GET", target=b"/h/%s/first" % name.encode())


def _case(name, fields, body, status, notes, **kw):
    return Case(name, head(name, *fields, **kw) + body, (status,), notes=notes)


def _accepted(name, fields, body, delivered, notes, **kw):
    """A request the proxy accepts (normalized): the origin sees exactly ``delivered`` as its body."""
    return Case(name, head(name, *fields, **kw) + body, (200,), (("/h/" + name, delivered),), notes=notes)


def _bad_body(name, fields, body, notes):
    return Case(name, head(name, *fields) + body, (400,), partial=True, notes=notes)


TE, CL = b"Transfer-Encoding: chunked", b"Content-Length: "
CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n"

CASES = [
    # both framing headers: the CL.TE and TE.CL classics, a second request in the tail
    _case("cl-te", [CL + b"6", TE], b"0\r\n\r\nG" + smuggled("cl-te"), 400, "CL.TE"),
    _case("te-cl", [TE, CL + b"3"], b"8\r\nSMUGGLED\r\n0\r\n\r\n" + smuggled("te-cl"), 400, "TE.CL"),
    _case("cl-differing", [CL + b"5", CL + b"6"], b"hello!", 400, "duplicate differing Content-Length"),
    _case("cl-differing-list", [CL + b"5, 50"], b"hello", 400, "a list of differing lengths"),
    _accepted("cl-same-twice", [CL + b"5", CL + b"5"], b"hello", b"hello", "identical duplicates collapse to one"),
    _accepted("cl-leading-zeros", [CL + b"0005"], b"hello", b"hello", "forwarded as Content-Length: 5"),
    _case("cl-plus", [CL + b"+5"], b"hello", 400, "sign"),
    _case("cl-minus", [CL + b"-5"], b"hello", 400, "sign"),
    _case("cl-inner-space", [CL + b"1 0"], b"0123456789", 400, "space inside the number"),
    _case("cl-hex", [CL + b"0x5"], b"hello", 400, "hex"),
    _case("cl-2**63", [CL + b"9223372036854775808"], b"", 400, "past 2**63-1"),
    _case("cl-20-digits", [CL + b"18446744073709551621"], b"hello", 400, "wraps to 5 in 64 bits"),
    # obfuscated Transfer-Encoding (TE.TE)
    _case("te-xchunked", [b"Transfer-Encoding: xchunked"], CHUNKED_HELLO, 400, "not chunked"),
    _case("te-chunked-identity", [b"Transfer-Encoding: chunked, identity"], CHUNKED_HELLO, 400,
          "chunked not last"),
    _case("te-identity-chunked", [b"Transfer-Encoding: identity, chunked"], CHUNKED_HELLO, 400,
          "identity is no coding (RFC 9112)"),
    _case("te-chunked-chunked", [b"Transfer-Encoding: chunked, chunked"], CHUNKED_HELLO, 400, "chunked twice"),
    _case("te-two-lines", [TE, TE], CHUNKED_HELLO, 400, "two Transfer-Encoding lines"),
    _case("te-space-before-colon", [b"Transfer-Encoding : chunked"], CHUNKED_HELLO, 400,
          "whitespace before the colon"),
    _case("te-line-folded", [b" Transfer-Encoding: chunked"], CHUNKED_HELLO, 400,
          "a line starting with a space (obs-fold)"),
    _case("te-vertical-tab", [b"Transfer-Encoding: chunked\x0b"], CHUNKED_HELLO, 400, "VT is not OWS"),
    _accepted("te-value-leading-space", [b"Transfer-Encoding:   chunked"], CHUNKED_HELLO, b"hello",
              "OWS before a value is allowed"),
    _accepted("te-tab-ows", [b"Transfer-Encoding:\tchunked\t"], CHUNKED_HELLO, b"hello", "HTAB is OWS"),
    _accepted("te-name-casing", [b"transfer-ENCODING: chunked"], CHUNKED_HELLO, b"hello",
              "field names are case-insensitive"),
    _accepted("te-value-casing", [b"Transfer-Encoding: Chunked"], CHUNKED_HELLO, b"hello",
              "the coding is case-insensitive; forwarded as 'chunked'"),
    _case("te-http10", [TE], CHUNKED_HELLO, 400, "Transfer-Encoding in HTTP/1.0", version=b"HTTP/1.0"),
    _accepted("te-in-trailer", [TE], b"5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\nContent-Length: 99\r\n\r\n",
              b"hello", "framing fields in a trailer are forwarded as trailers, framing nothing"),
    # line endings, NUL, folding, names
    Case("bare-lf-request-line", b"GET /h/bare-lf-request-line HTTP/1.1\n" + HOST + b"\r\n", (400,)),
    _case("bare-lf-header", [b"X-A: 1\nTransfer-Encoding: chunked"], CHUNKED_HELLO, 400, "LF hides a field"),
    _case("bare-lf-end", [b"X-A: 1\n"], b"", 400, "LF LF ending"),
    _case("cr-alone", [b"X-A: 1\rTransfer-Encoding: chunked"], CHUNKED_HELLO, 400, "CR hides a field"),
    Case("cr-in-request-line", b"GET /h/cr-in-request-line\rHTTP/1.1\r\n" + HOST + b"\r\n", (400,)),
    _case("nul-in-value", [b"X-A: a\0b"], b"", 400, "NUL"),
    Case("nul-in-target", b"GET /h/nul\0 HTTP/1.1\r\n" + HOST + b"\r\n", (400,)),
    _case("obs-fold", [b"X-A: a", b" Transfer-Encoding: chunked"], CHUNKED_HELLO, 400, "folded continuation"),
    _case("name-with-space", [b"Content Length: 5"], b"hello", 400, "not a token"),
    _case("name-double-colon", [b"Content-Length:: 5"], b"hello", 400, "value ': 5' is no number"),
    _case("name-empty", [b": x"], b"", 400, "empty name"),
    _case("name-leading-colon", [b":Content-Length: 5"], b"hello", 400, "empty name"),
    # chunked bodies: sizes, extensions, data that disagrees with its size
    _bad_body("chunk-17-hex-digits", [TE], b"10000000000000005\r\nhello\r\n0\r\n\r\n", "wraps to 5 in 64 bits"),
    _bad_body("chunk-2**63", [TE], b"8000000000000000\r\nhello\r\n0\r\n\r\n", "past 2**63-1"),
    _bad_body("chunk-sign", [TE], b"+5\r\nhello\r\n0\r\n\r\n", "sign"),
    _bad_body("chunk-0x", [TE], b"0x5\r\nhello\r\n0\r\n\r\n", "hex prefix"),
    _bad_body("chunk-bare-lf-size", [TE], b"5\nhello\r\n0\r\n\r\n", "bare LF after the size"),
    _bad_body("chunk-bare-lf-data", [TE], b"5\r\nhello\n0\r\n\r\n", "bare LF after the data"),
    _bad_body("chunk-bare-lf-last", [TE], b"5\r\nhello\r\n0\n\n", "bare LF in the last chunk"),
    _bad_body("chunk-ext-no-name", [TE], b"5;\r\nhello\r\n0\r\n\r\n", "empty extension"),
    _bad_body("chunk-ext-open-quote", [TE], b'5;a="x\r\nhello\r\n0\r\n\r\n', "unterminated quoted string"),
    _bad_body("chunk-ext-5k", [TE], b"5;a=" + b"x" * 5000 + b"\r\nhello\r\n0\r\n\r\n", "line past 4 KiB"),
    _accepted("chunk-ext-valid", [TE], b'5 ; a = "q;\\"" ;b\r\nhello\r\n0;end\r\n\r\n', b"hello",
              "extensions with BWS and quoted strings pass"),
    _bad_body("chunk-data-longer", [TE], b"5\r\nhelloEXTRA\r\n0\r\n\r\n" + smuggled("chunk-data-longer"),
              "data past its size"),
    _bad_body("chunk-data-shorter", [TE], b"5\r\nhel\r\n0\r\n\r\n" + smuggled("chunk-data-shorter"),
              "data short of its size"),
    # a whole request inside a body: it reaches the origin as body bytes only
    _accepted("request-in-cl-body", [CL + b"%d" % len(smuggled("request-in-cl-body"))],
              smuggled("request-in-cl-body"), smuggled("request-in-cl-body"), "Content-Length body"),
    _accepted("request-in-chunked-body", [TE], b"%x\r\n%s\r\n0\r\n\r\n" % (
        len(smuggled("request-in-chunked-body")), smuggled("request-in-chunked-body")),
        smuggled("request-in-chunked-body"), "chunked body"),
    # pipelined: a good request, then the hostile one on the same connection
    Case("pipelined-cl-te", good("pipelined-cl-te") + head("pipelined-cl-te", CL + b"4", TE)
         + b"0\r\n\r\n" + smuggled("pipelined-cl-te"), (200, 400), (("/h/pipelined-cl-te/first", b""),)),
    Case("pipelined-bare-lf", good("pipelined-bare-lf") + b"GET /smuggled/pipelined-bare-lf HTTP/1.1\n"
         + HOST + b"\r\n", (200, 400), (("/h/pipelined-bare-lf/first", b""),)),
    Case("pipelined-after-chunked", head("pipelined-after-chunked", TE) + CHUNKED_HELLO
         + head("pipelined-after-chunked", TE, target=b"/smuggled/pipelined-after-chunked")
         + b"5\r\nhelloXX\r\n0\r\n\r\n", (200, 400), (("/h/pipelined-after-chunked", b"hello"),), partial=True,
         notes="the second body's framing breaks after its head went out"),
    # sizes
    _case("header-flood", [b"X-%d: v" % i for i in range(200)], b"", 431, "200 lines, default limit 100"),
    Case("long-request-line", b"GET /h/long-request-line/" + b"a" * 9000 + b" HTTP/1.1\r\n" + HOST + b"\r\n",
         (431,), notes="no 414: the head limit counts the request line"),
    _case("long-header", [b"X-Big: " + b"a" * 9000], b"", 431, "head past 8192 bytes"),
    # Host and target
    _case("absolute-host-mismatch", [], b"", 400, "absolute-form names another host", method=b"GET",
          target=b"http://other.test/h/absolute-host-mismatch"),
    Case("absolute-host-match", head("absolute-host-match", method=b"GET",
                                     target=b"http://hostile.test/h/absolute-host-match"), (200,),
         (("http://hostile.test/h/absolute-host-match", b""),), notes="absolute-form is forwarded as sent"),
    _case("duplicate-host", [b"Host: other.test"], b"", 400, "two Hosts"),
    _case("missing-host", [], b"", 400, "HTTP/1.1 without Host", host=None, method=b"GET"),
    Case("http10-no-host", head("http10-no-host", method=b"GET", version=b"HTTP/1.0", host=None), (200,),
         (("/h/http10-no-host", b""),), notes="HTTP/1.0 needs no Host"),
    # versions and other protocols
    Case("http09", b"GET /h/http09\r\n\r\n", (400,), notes="no version"),
    _case("version-0.9", [], b"", 505, "HTTP/0.9 on the request line", method=b"GET", version=b"HTTP/0.9"),
    _case("version-2.0", [], b"", 505, "", method=b"GET", version=b"HTTP/2.0"),
    _case("version-garbage", [], b"", 400, "", method=b"GET", version=b"HTTP/1.1x"),
    _case("version-lowercase", [], b"", 400, "", method=b"GET", version=b"http/1.1"),
    Case("h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", (505,)),
    Case("connect-not-enabled", b"CONNECT hostile.test:443 HTTP/1.1\r\nHost: hostile.test:443\r\n\r\n", (403,)),
    _case("upgrade-not-enabled", [b"Connection: Upgrade", b"Upgrade: websocket"], b"", 403, "",
          method=b"GET"),
    _accepted("h2c-upgrade-dropped", [b"Connection: Upgrade, HTTP2-Settings", b"Upgrade: h2c",
                                      b"HTTP2-Settings: AAMAAABkAAQAAP__"], b"", b"",
              "the h2c offer is withdrawn (as nginx, HAProxy): answered over HTTP/1.1", method=b"GET"),
    # CL.0: an origin that ignores a GET's Content-Length would read the body as a second request
    _case("get-with-cl-body", [CL + b"%d" % len(smuggled("get-with-cl-body"))], smuggled("get-with-cl-body"),
          400, "CL.0: a GET body is refused, never forwarded", method=b"GET"),
    _case("head-with-cl-body", [CL + b"%d" % len(smuggled("head-with-cl-body"))], smuggled("head-with-cl-body"),
          400, "CL.0: a HEAD body", method=b"HEAD"),
    _case("get-with-chunked-body", [TE], b"%x\r\n%s\r\n0\r\n\r\n" % (
        len(smuggled("get-with-chunked-body")), smuggled("get-with-chunked-body")), 400,
        "a chunked GET body", method=b"GET"),
    _accepted("get-with-cl-0", [CL + b"0"], b"", b"", "Content-Length: 0 announces no body", method=b"GET"),
]

BY_NAME = {c.name: c for c in CASES}
assert len(BY_NAME) == len(CASES), "case names must be unique"


def case_of(target):
    """The name of the case a recorded target belongs to (None for a good client's)."""
    for prefix in ("/h/", "/smuggled/", "http://hostile.test/h/"):
        if target.startswith(prefix):
            return target[len(prefix):].split("/")[0]
    return None
