"""
The HTTP proxy behaves the same whichever path moves its bodies.

Every test runs on each case of ``CASES``: the proxy forced onto the
"kernel" path (splice(2) through pipes), the "mbuf" path (user land, pooled
buffers) and the "transport" path (producer/consumer), then with TLS on the
client side of the proxy ("tls-client": the proxy listens with TLS) and on
its backend side ("tls-backend": the origin is behind TLS, the proxy's
backend endpoint is a TLS client endpoint); both TLS cases run the default
"auto" backend, which must use the transport path for them.  At the end,
the smallest reproductions of what the TLS cases found, and the TLS cases
with a forced socket path (docs/usage.md: TLS sessions always use the
transport path).

Real sockets on 127.0.0.1, bodies checked byte for byte: keep-alive with
Content-Length bodies both ways, pipelining, chunked framing forwarded
verbatim both ways, a close-delimited response, HEAD/204/304, malformed
requests that get 400 without reaching the origin, every connection closed
once the session ended, and the session stats:
on the socket paths the bodies are all spliced and only the heads copied;
on the transport path and with TLS, spliced + copied is all that moved.
"""

import gc
import json
import socket
import ssl as pyssl
import time

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.internet import ssl as tssl
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS

import harness
from httpharness import (
    MiB, Proxy, RawOrigin, WebOrigin, _track, blob, canned, chunked_body, in_thread,
    parse_responses, request_bytes, sha,
)
from test_relay_tcp import make_cert

KiB = 1 << 10
# Bounds each blocking recv (not a whole transfer): a client waiting for an
# EOF that never comes fails in this time.
CLIENT_TIMEOUT = 3.0
SOCKET_PATHS = ("kernel", "mbuf")
CASES = ["kernel", "mbuf", "transport", "tls-client", "tls-backend"]


# -- TLS ---------------------------------------------------------------------


class Certs:
    """A self-signed certificate for 127.0.0.1, as each side wants it."""

    def __init__(self, keyPath, certPath):
        pem = keyPath.read_bytes() + certPath.read_bytes()
        self.server = tssl.PrivateCertificate.loadPEM(pem).options()
        self.authority = tssl.Certificate.loadPEM(certPath.read_bytes())
        ctx = pyssl.create_default_context(cafile=str(certPath))
        ctx.verify_flags &= ~getattr(pyssl, "VERIFY_X509_STRICT", 0)
        self.client = ctx


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certs(*make_cert(tmp_path_factory.mktemp("tls")))


def listen_tls(net, factory, certs):
    port = reactor.listenSSL(0, factory, certs.server, interface="127.0.0.1")
    net.ports.append(port)
    return port.getHost().port


# -- the rig: origin, proxy, clients for one case -----------------------------


class Rig:
    """
    The proxy in front of ``origin`` for ``case``; ``path`` forces the
    backend of the TLS cases (default "auto").
    """

    def __init__(self, net, case, certs, origin, path=None, **kw):
        self.case = case
        self.tls_client = case == "tls-client"
        self.tls_backend = case == "tls-backend"
        self.certs = certs
        if path is None:
            path = case if case in ("kernel", "mbuf", "transport") else "auto"
        if self.tls_backend:
            port = listen_tls(net, origin.port.factory, certs)
            endpoint = wrapClientTLS(tssl.optionsForClientTLS("127.0.0.1", trustRoot=certs.authority),
                                     TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5))
        else:
            endpoint = origin.endpoint()
        self.proxy = Proxy(net, [endpoint], backendPath=path, **kw)
        self.port = listen_tls(net, self.proxy.factory, certs) if self.tls_client else self.proxy.portno

    @property
    def socket_path(self):
        return self.case in SOCKET_PATHS

    def connect(self, timeout=CLIENT_TIMEOUT):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls_client:
            s = self.certs.client.wrap_socket(s, server_hostname="127.0.0.1")
        return s

    async def ended(self, net):
        """The session's stats, once it ended and all its connections (client, backend, origin) closed."""
        (s,) = await self.proxy.ended()

        def still_open():
            return [t for t in net.transports if getattr(t, "connected", 0) and not getattr(t, "disconnected", 0)]

        deadline = harness.now() + 2.0
        while still_open():
            assert harness.now() < deadline, (
                "connections still open 2 s after the session ended (%r): %r" % (s["how"], still_open()))
            await harness.sleep(0.01)
        return s


def head_length(data):
    return data.index(b"\r\n\r\n") + 4


def response_end(data, method):
    """Where the first response in ``data`` ends, or None while it is incomplete."""
    try:
        end = head_length(data)
    except ValueError:
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    fields = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if l)}
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return end
    if fields.get("transfer-encoding", "").lower() == "chunked":
        pos = end
        while True:
            nl = data.find(b"\r\n", pos)
            if nl < 0:
                return None
            size = int(data[pos:nl].split(b";")[0], 16)
            pos = nl + 2
            if size == 0:  # the trailer section, up to its empty line
                while True:
                    nl = data.find(b"\r\n", pos)
                    if nl < 0:
                        return None
                    if nl == pos:
                        return nl + 2
                    pos = nl + 2
            pos += size + 2
            if pos > len(data):
                return None
    if "content-length" in fields:
        n = end + int(fields["content-length"])
        return n if len(data) >= n else None
    raise AssertionError("a close-delimited response where a framed one was expected: %r" % data[:end])


def read_to_eof(s):
    """Everything until the peer's EOF: (bytes, "eof" | "reset" | "tls-ragged-eof" | "timeout")."""
    out = bytearray()
    while True:
        try:
            b = s.recv(1 << 16)
        except socket.timeout:
            return bytes(out), "timeout"
        except ConnectionResetError:
            return bytes(out), "reset"
        except pyssl.SSLEOFError:
            return bytes(out), "tls-ragged-eof"
        if not b:
            return bytes(out), "eof"
        out += b


def converse(rig, requests, pipeline=False, shut=False):
    """
    Send ``requests`` ((bytes, method) pairs) on one connection: each after
    the previous response, or all in one write; then read to EOF.  Returns
    (the responses' raw bytes, what came after them, how it ended).
    """
    s = rig.connect()
    try:
        buf, raws = b"", []

        def read_one(method):
            nonlocal buf
            while True:
                end = response_end(buf, method)
                if end is not None:
                    break
                b = s.recv(1 << 16)
                assert b, "EOF after %d responses, with %r" % (len(raws), buf[:300])
                buf += b
            raws.append(buf[:end])
            buf = buf[end:]

        if pipeline:
            s.sendall(b"".join(r for r, _ in requests))
        for r, method in requests:
            if not pipeline:
                s.sendall(r)
            read_one(method)
        if shut:
            s.shutdown(socket.SHUT_WR)
        tail, how = read_to_eof(s)
        return raws, buf + tail, how
    finally:
        s.close()


def exchange(rig, pieces, delay=0.0):
    """Send ``pieces`` (``delay`` apart), then read to EOF: (bytes, how)."""
    s = rig.connect()
    try:
        for i, p in enumerate(pieces):
            if i and delay:
                time.sleep(delay)
            try:
                s.sendall(p)
            except OSError:
                break
        return read_to_eof(s)
    finally:
        s.close()


#: What one peek at a head sees (the proxy's head limit, 8 KiB, and 3): a
#: message no longer than this may arrive whole, its body in hand.
PEEK = 8192 + 3


def check_stats(rig, s, requests, responses):
    """
    The session's counters against what went through: ``requests``
    (bytes sent, heads and bodies), ``responses`` (raw, as received).
    spliced + copied is every byte moved, the heads always copied.  On the
    socket paths no body byte was read into Python but those of a body that
    had arrived whole with its head (a message within one peek): every
    larger body was spliced, every byte of it.
    """
    req_heads = sum(head_length(r) for r in requests)
    req_body = sum(len(r) for r in requests) - req_heads
    resp_heads = sum(head_length(r) for r in responses)
    resp_body = sum(len(r) for r in responses) - resp_heads
    assert s["spliced"] == s["spliced_in"] + s["spliced_out"], s
    assert s["spliced"] + s["copied"] == req_heads + req_body + resp_heads + resp_body, s
    assert s["copied"] >= req_heads + resp_heads, s
    if rig.socket_path:
        large = [len(m) - head_length(m) for m in requests if len(m) > PEEK]
        small = [len(m) - head_length(m) for m in requests if len(m) <= PEEK]
        assert sum(large) <= s["spliced_in"] <= sum(large) + sum(small), s
        large = [len(m) - head_length(m) for m in responses if len(m) > PEEK]
        small = [len(m) - head_length(m) for m in responses if len(m) <= PEEK]
        assert sum(large) <= s["spliced_out"] <= sum(large) + sum(small), s


def post(target, body, close=False, chunked=False, extra=()):
    headers = [("Transfer-Encoding", "chunked")] if chunked else [("Content-Length", len(body))]
    if close:
        headers.append(("Connection", "close"))
    return request_bytes("POST", target, headers=headers + list(extra), body=body)


def get(target, method="GET", close=False):
    return request_bytes(method, target, headers=[("Connection", "close")] if close else [])


class ExactOrigin:
    """
    An origin that expects exactly the byte streams of ``script`` (pairs of
    request bytes and the response to write once they all arrived), in
    order, and keeps every byte it received (``data``).  A byte out of
    script ends the connection and is recorded in ``mismatch``.
    """

    def __init__(self, net, script):
        self.script = list(script)
        self.expected = b"".join(r for r, _ in self.script)
        self.data = bytearray()
        self.connections = 0
        self.answered = 0
        self.mismatch = None
        origin = self

        class P(protocol.Protocol):
            def dataReceived(self, data):
                at = len(origin.data)
                origin.data += data
                if origin.data != origin.expected[:len(origin.data)]:
                    bad = next(i for i in range(at, len(origin.data))
                               if i >= len(origin.expected) or origin.data[i] != origin.expected[i])
                    origin.mismatch = (bad, bytes(origin.data[bad:bad + 80]))
                    self.transport.loseConnection()
                    return
                end = 0
                for i, (req, resp) in enumerate(origin.script):
                    end += len(req)
                    if i == origin.answered and end <= len(origin.data):
                        origin.answered += 1
                        self.transport.write(resp)

        class F(protocol.Factory):
            noisy = False

            def buildProtocol(self, addr):
                origin.connections += 1
                return _track(net, P())

        self.port = net.listen(F())
        self.portno = self.port.getHost().port

    def endpoint(self):
        return TCP4ClientEndpoint(reactor, "127.0.0.1", self.portno, timeout=5)


# -- keep-alive and pipelining ------------------------------------------------


@pytest.mark.parametrize("case", CASES)
@pytest_twisted.ensureDeferred
async def test_keepalive_content_length_both_ways(net, certs, case):
    """Sequential requests on one connection: uploads echoed back, 0 B to 8 MiB, in order."""
    origin = WebOrigin(net)
    rig = Rig(net, case, certs, origin)
    sizes = [0, 1, 100 * KiB, 8 * MiB, 1, 0]
    requests = [(post("/echo", blob(n)), "POST") for n in sizes]
    requests.append((get("/fixed/%d" % (100 * KiB), close=True), "GET"))
    raws, tail, how = await harness.wait(in_thread(converse, rig, requests), 30, "keep-alive")
    assert (tail, how) == (b"", "eof")
    got = [parse_responses(r)[0] for r in raws]
    assert [(r.status, r.header("Content-Length"), sha(r.body)) for r in got] == (
        [(200, str(n), sha(blob(n))) for n in sizes] + [(200, str(100 * KiB), sha(blob(100 * KiB)))])
    assert [r.header("X-Body-Length") for r in got[:-1]] == [str(n) for n in sizes]
    assert origin.connections == 1
    assert [(r["method"], r["length"], r["sha"]) for r in origin.requests] == (
        [("POST", n, sha(blob(n))) for n in sizes] + [("GET", 0, sha(b""))])
    s = await rig.ended(net)
    assert s["requests"] == 7 and s["how"] == "close", s
    check_stats(rig, s, [r for r, _ in requests], raws)


@pytest.mark.parametrize("case", CASES)
@pytest_twisted.ensureDeferred
async def test_pipelined_three_in_one_write(net, certs, case):
    origin = WebOrigin(net)
    rig = Rig(net, case, certs, origin)
    upload = blob(100 * KiB + 3)
    requests = [(get("/fixed/1000"), "GET"), (post("/echo", upload), "POST"),
                (get("/fixed/%d" % MiB, close=True), "GET")]
    raws, tail, how = await harness.wait(in_thread(converse, rig, requests, pipeline=True), 20, "pipelined")
    assert (tail, how) == (b"", "eof")
    got = [parse_responses(r)[0] for r in raws]
    assert [(r.status, sha(r.body)) for r in got] == [
        (200, sha(blob(1000))), (200, sha(upload)), (200, sha(blob(MiB)))]
    assert origin.connections == 1
    assert [(r["method"], r["uri"], r["length"]) for r in origin.requests] == [
        ("GET", "/fixed/1000", 0), ("POST", "/echo", len(upload)), ("GET", "/fixed/%d" % MiB, 0)]
    s = await rig.ended(net)
    assert s["requests"] == 3, s
    check_stats(rig, s, [r for r, _ in requests], raws)


@pytest.mark.parametrize("case", CASES)
@pytest_twisted.ensureDeferred
async def test_small_body_with_head_stats(net, certs, case):
    """
    test_http_proxy's test_session_stats_small_body_in_hand, on every path:
    a 30-byte body sent with its head is written with the head on the
    socket paths (no splice for it); spliced + copied is all that moved on
    every path.
    """
    origin = WebOrigin(net)
    rig = Rig(net, case, certs, origin)
    req = post("/sha", b"x" * 30, close=True)
    raws, tail, how = await harness.wait(in_thread(converse, rig, [(req, "POST")]), 10, "small upload")
    assert (tail, how) == (b"", "eof")
    r = parse_responses(raws[0])[0]
    assert json.loads(r.body) == {"length": 30, "sha": sha(b"x" * 30)}
    s = await rig.ended(net)
    assert s["requests"] == 1 and s["how"] == "close", s
    check_stats(rig, s, [req], raws)
    if rig.socket_path:
        assert s["spliced_in"] == 0, s


# -- chunked ------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
@pytest_twisted.ensureDeferred
async def test_chunked_both_ways_verbatim(net, certs, case):
    """Chunks of 1, 1000 and 1 MiB bytes with extensions and a trailer, forwarded byte for byte both ways."""
    up, up_data = chunked_body([1, 1000, MiB, 1, 1000, 1], trailers=b"X-Up: 1\r\n", ext=b";a=b")
    down, down_data = chunked_body([MiB, 1, 1000, 1, MiB, 1000], trailers=b"X-Down: yes\r\nX-More: 2\r\n",
                                   ext=b";name=value")
    small, small_data = chunked_body([1] * 100 + [1000] * 3, trailers=b"X-T: t\r\n", ext=b";x")
    resp_head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    script = [
        (post("/up", up, chunked=True), resp_head + down),
        (post("/up2", small, chunked=True, close=True), resp_head + small),
    ]
    origin = ExactOrigin(net, script)
    rig = Rig(net, case, certs, origin)
    requests = [(req, "POST") for req, _ in script]
    raws, tail, how = await harness.wait(in_thread(converse, rig, requests), 20, "chunked")
    assert origin.mismatch is None, origin.mismatch
    assert bytes(origin.data) == origin.expected  # requests, framing and all, verbatim
    assert raws == [resp for _, resp in script]  # responses verbatim
    assert (tail, how) == (b"", "eof")
    assert [sha(r.body) for r in parse_responses(b"".join(raws))] == [sha(down_data), sha(small_data)]
    assert origin.connections == 1 and origin.answered == 2
    s = await rig.ended(net)
    assert s["requests"] == 2, s
    check_stats(rig, s, [r for r, _ in requests], raws)


# -- close-delimited, HEAD, 204, 304 ----------------------------------------------


@pytest.mark.parametrize("case", CASES)
@pytest_twisted.ensureDeferred
async def test_close_delimited_response(net, certs, case):
    data = blob(3 * MiB + 5)
    answer = b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n" + data
    origin = RawOrigin(net, canned(answer, close=True))
    rig = Rig(net, case, certs, origin)
    req = get("/x") + get("/again")  # keep-alive asked for: the body still ends at the origin's EOF
    got, how = await harness.wait(in_thread(exchange, rig, [req]), 20, "close-delimited")
    assert how == "eof"
    assert len(got) == len(answer) and got == answer
    assert origin.heads == [get("/x")]
    s = await rig.ended(net)
    assert s["requests"] in (1, 2) and s["how"] == "eof", s  # the second head may have gone out
    check_stats(rig, s, [get("/x"), get("/again")][:s["requests"]], [got])


@pytest.mark.parametrize("case", CASES)
@pytest_twisted.ensureDeferred
async def test_head_204_304(net, certs, case):
    origin = WebOrigin(net)
    rig = Rig(net, case, certs, origin)
    requests = [(get("/fixed/100000", "HEAD"), "HEAD"), (get("/status/204"), "GET"),
                (get("/status/304"), "GET"), (get("/stream/10/10", "HEAD"), "HEAD"),
                (get("/fixed/10", close=True), "GET")]
    raws, tail, how = await harness.wait(in_thread(converse, rig, requests), 10, "HEAD/204/304")
    assert (tail, how) == (b"", "eof")
    got = [parse_responses(r, [m])[0] for r, (_, m) in zip(raws, requests)]
    assert [(r.status, r.body) for r in got] == [(200, b""), (204, b""), (304, b""), (200, b""), (200, blob(10))]
    assert [len(r) for r in raws[:4]] == [head_length(r) for r in raws[:4]]  # no body byte at all
    assert got[0].header("Content-Length") == "100000"
    assert origin.connections == 1 and len(origin.requests) == 5
    s = await rig.ended(net)
    assert s["requests"] == 5, s
    check_stats(rig, s, [r for r, _ in requests], raws)


# -- malformed requests ---------------------------------------------------------


def error_response(got, status):
    (r,) = parse_responses(got)
    assert r.status == status, got[:300]
    assert r.header("Connection") == "close"
    assert ("%d" % status).encode() in r.body
    return r


@pytest.mark.parametrize("case", CASES)
@pytest_twisted.ensureDeferred
async def test_malformed_head_never_reaches_origin(net, certs, case):
    origin = WebOrigin(net)
    rig = Rig(net, case, certs, origin)
    got, how = await harness.wait(in_thread(
        exchange, rig, [b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: b\r\n c\r\n\r\n"]), 10, "400")
    error_response(got, 400)
    assert how == "eof"
    assert origin.untouched(), (origin.connections, origin.received[:200])
    s = await rig.ended(net)
    assert s["requests"] == 0 and s["how"] == "error-400", s
    assert (s["spliced"], s["copied"]) == (0, 0), s


@pytest.mark.parametrize("case", CASES)
@pytest_twisted.ensureDeferred
async def test_bad_chunk_line_after_1mib(net, certs, case):
    """
    A bad chunk-size line after 1 MiB of chunk data: the client gets 400,
    the origin gets the bytes before the bad line (the head went out with
    the first chunk) and never a complete request, nor the bad line.
    """
    head = request_bytes("POST", "/sha", headers=[("Transfer-Encoding", "chunked")])
    good = head + b"100000;e=1\r\n" + blob(MiB) + b"\r\n"
    rest = b"zz\r\nhello\r\n0\r\n\r\n"
    origin = ExactOrigin(net, [(good + rest, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")])
    rig = Rig(net, case, certs, origin)
    got, how = await harness.wait(in_thread(exchange, rig, [good, rest], delay=0.3), 10, "400")
    try:
        s = await rig.ended(net)
    finally:
        # (see test_http_proxy's test_bad_chunk_size_line: an error in a
        # Deferred is logged when it is collected: collect it in this test)
        await net.close_all()
        del net.transports[:]
        await harness.sleep(0.05)
        gc.collect()
    error_response(got, 400)
    assert how in ("eof", "reset")
    assert origin.mismatch is None, origin.mismatch
    assert origin.answered == 0 and origin.connections == 1
    assert len(origin.data) == len(good) and bytes(origin.data) == good
    assert s["requests"] == 1 and s["how"] == "error-400", s
    if rig.socket_path:
        assert (s["spliced_in"], s["spliced_out"], s["copied"]) == (len(good) - len(head), 0, len(head)), s
    else:
        assert s["spliced"] + s["copied"] == len(good), s


@pytest.mark.parametrize("case", CASES)
@pytest_twisted.ensureDeferred
async def test_bytes_after_an_error_then_close(net, certs, case):
    """
    A bad request gets 400 and the session ends; the client's next bytes
    arrive after that, before it reads the 400 and closes.  The proxy's
    connection to the client must still close.
    """
    origin = WebOrigin(net)
    rig = Rig(net, case, certs, origin)
    bad = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: b\r\n c\r\n\r\n"
    got, how = await harness.wait(in_thread(exchange, rig, [bad, get("/late")], delay=0.3), 10, "400")
    error_response(got, 400)
    assert how in ("eof", "reset")
    s = await rig.ended(net)  # and every connection closed
    assert s["requests"] == 0 and s["how"] == "error-400", s
    assert origin.untouched()


# -- the smallest reproductions of what the TLS cases above found ----------------
#
# The body of one message flows from the "plain" side to the TLS side: on
# "tls-client" the responses are spliced into the client's TLS transport, on
# "tls-backend" the requests into the origin's.


def _to_tls(case, body, close):
    """A request whose body (or its response's body) is spliced into the TLS transport of ``case``."""
    if case == "tls-client":
        return post("/fixed/%d" % len(body), b"", close=close), blob(len(body))  # the response's body
    return post("/echo", body, close=close), body  # the request's body (echoed)


@pytest.mark.parametrize("case", ["tls-client", "tls-backend"])
@pytest_twisted.ensureDeferred
async def test_tls_drain_second_body(net, certs, case):
    """Two bodies, one after the other, spliced into the same TLS transport."""
    origin = WebOrigin(net)
    rig = Rig(net, case, certs, origin)
    first, second = _to_tls(case, b"a", False), _to_tls(case, b"bc", True)
    requests = [(first[0], "POST"), (second[0], "POST")]
    raws, tail, how = await harness.wait(in_thread(converse, rig, requests), 10, "two bodies")
    assert [parse_responses(r)[0].body for r in raws] == [first[1], second[1]]
    assert (tail, how) == (b"", "eof")
    s = await rig.ended(net)
    assert s["requests"] == 2 and s["how"] == "close", s


@pytest.mark.parametrize("case", ["tls-client", "tls-backend"])
@pytest_twisted.ensureDeferred
async def test_tls_drain_closes_after_a_body(net, certs, case):
    """
    One body spliced into a TLS transport, then the proxy ends the session:
    that TLS connection must close.  (tls-client: the client waits for its
    EOF after asking to close; tls-backend: the client half-closes after the
    response, the proxy must close the origin's connection, which does not
    close by itself.)
    """
    origin = WebOrigin(net)
    rig = Rig(net, case, certs, origin)
    req, body = _to_tls(case, blob(100 * KiB), case == "tls-client")
    raws, tail, how = await harness.wait(in_thread(converse, rig, [(req, "POST")], shut=case == "tls-backend"),
                                         10, "one body")
    assert parse_responses(raws[0])[0].body == body
    assert (tail, how) == (b"", "eof")
    s = await rig.ended(net)  # waits for every connection to close, the origin's too
    assert s["requests"] == 1 and s["how"] in ("close", "client-eof"), s


@pytest.mark.parametrize("path", ["kernel", "mbuf"])
@pytest.mark.parametrize("case", ["tls-client", "tls-backend"])
@pytest_twisted.ensureDeferred
async def test_tls_with_forced_socket_path(net, certs, case, path):
    """
    docs/usage.md, --backend: "TLS sessions always use transport" (the TCP
    relay gives way, splicing/relay/fallback.py).  One body from the TLS side to
    the plain side (not into the TLS transport: see the tests above).
    """
    origin = WebOrigin(net)
    rig = Rig(net, case, certs, origin, path=path)
    if case == "tls-client":  # the request's body, from the client's TLS transport
        req, method, expect = post("/status/204", blob(100 * KiB), close=True), "POST", (204, b"")
    else:  # the response's body, from the origin's TLS transport
        req, method, expect = get("/fixed/100000", close=True), "GET", (200, blob(100000))
    raws, tail, how = await harness.wait(in_thread(converse, rig, [(req, method)]), 10, "forced %s" % path)
    r = parse_responses(raws[0], [method])[0]
    assert (r.status, r.body) == expect
    assert (tail, how) == (b"", "eof")
    s = await rig.ended(net)
    assert s["requests"] == 1 and s["how"] == "close", s
    assert s["spliced"] + s["copied"] == len(req) + len(raws[0]), s
