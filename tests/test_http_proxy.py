"""
The HTTP-filtering proxy (splicing.http.proxy) end to end, in process.

Real clients (raw sockets, ``http.client``, ``urllib``, ``treq``) talk to an
``HTTPProxyFactory`` listening on 127.0.0.1, in front of real origins
(``twisted.web``, ``http.server`` and a canned raw origin): keep-alive,
pipelining, large bodies with SHA-256 (and proof from the session stats that
they were spliced, not copied), chunked bodies both ways, HEAD/204/304,
close-delimited responses, WebSocket upgrades, CONNECT tunnels, filter rules
and every malformed case, each with its status and the proof that the origin
never saw the request.  Every wait is bounded; the ``net`` fixture checks
that no descriptor leaked and nothing was logged as an error.
"""

import gc
import json
import select
import socket
import threading
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

import harness
import procs
from httpharness import (
    MiB, Conn, Proxy, RawOrigin, ThreadedOrigin, WebOrigin, blob, canned, chunked_body, download,
    in_thread, one_response, parse_responses, raw, request_bytes, sha, treq_request, unused_port,
    urlopen,
)

STATS_KEYS = {"spliced", "copied", "spliced_in", "spliced_out", "requests", "how", "logs"}
# Twisted reads 64 KiB at a time (a socket source's heads are peeked and taken
# exactly, so only other transports read body bytes with a head).
READ = 64 * 1024
# What the heads of one exchange copy, at most: on a socket, nothing else is.
HEADS = 2048


def rules(text):
    from splicing.http.rules import parseRules
    return parseRules(text, "test.rules")


async def ended(proxy, n=1):
    return await proxy.ended(n)


def assert_error(data, status, how="eof"):
    r = one_response(data)
    assert r.status == status, (r.status, data[:300])
    assert r.header("Connection") == "close"
    assert ("%d" % status).encode() in r.body
    return r


# -- keep-alive, clients, origins ---------------------------------------------


@pytest_twisted.ensureDeferred
async def test_keepalive_many_requests_http_client(net):
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])
    sizes = [0, 1, 10, 1000, 65536, 100000, 3]

    def client():
        c = Conn(proxy.portno)
        try:
            for i in range(150):
                n = sizes[i % len(sizes)]
                status, headers, body = c._request("GET", "/fixed/%d" % n)
                assert status == 200 and body == blob(n), (i, status, len(body))
            status, headers, body = c._request("POST", "/sha", body=b"abc" * 1000)
            assert json.loads(body) == {"length": 3000, "sha": sha(b"abc" * 1000)}
        finally:
            c.close()

    await harness.wait(in_thread(client), 30, "150 keep-alive requests")
    (s,) = await ended(proxy)
    assert STATS_KEYS <= set(s)
    assert s["requests"] == 151
    assert origin.connections == 1 and len(origin.requests) == 151


@pytest_twisted.ensureDeferred
async def test_urllib(net):
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])
    status, headers, body = await urlopen(proxy.url + "/fixed/%d" % (3 * MiB))
    assert status == 200 and sha(body) == sha(blob(3 * MiB))
    data = blob(2 * MiB + 7)
    status, headers, body = await urlopen(proxy.url + "/echo", data=data, method="PUT")
    assert status == 200 and body == data and headers["x-body-sha256"] == sha(data)
    status, headers, body = await urlopen(proxy.url + "/nothing-here")
    assert status == 404
    sessions = await proxy.ended(3)
    assert all(s["requests"] == 1 for s in sessions)


@pytest_twisted.ensureDeferred
async def test_treq(net):
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])
    code, headers, body = await treq_request("GET", proxy.url + "/stream/1000/300")
    assert code == 200 and body == blob(1000) * 300
    data = blob(5 * MiB)
    code, headers, body = await treq_request("POST", proxy.url + "/sha", data=data)
    assert code == 200 and json.loads(body) == {"length": len(data), "sha": sha(data)}
    await proxy.ended(2)


@pytest_twisted.ensureDeferred
async def test_http_server_origin(net):
    origin = ThreadedOrigin()
    try:
        proxy = Proxy(net, [origin])
        data = blob(4 * MiB)

        def client():
            c = Conn(proxy.portno)
            try:
                out = [c._request("GET", "/fixed/%d" % n) for n in (5, 2 * MiB, 0)]
                out.append(c._request("POST", "/upload", body=data))
                out.append(c._request("HEAD", "/fixed/1234"))
                out.append(c._request("GET", "/fixed/17"))
                return out
            finally:
                c.close()

        out = await harness.wait(in_thread(client), 20, "http.server requests")
        assert [o[0] for o in out] == [200] * 6
        assert out[1][2] == blob(2 * MiB) and out[2][2] == b"" and out[5][2] == blob(17)
        assert json.loads(out[3][2]) == {"length": len(data), "sha": sha(data)}
        assert out[4][1]["content-length"] == "1234" and out[4][2] == b""
        (s,) = await ended(proxy)
        assert s["requests"] == 6
        assert len(origin.server.seen) == 6
    finally:
        await harness.wait(origin.stop(), 10, "http.server stop")


@pytest_twisted.ensureDeferred
async def test_pipelined_requests(net):
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])
    reqs, methods, expect = [], [], []
    for i in range(24):
        kind = i % 4
        if kind == 0:
            reqs.append(request_bytes("GET", "/fixed/%d" % (i * 100)))
            methods.append("GET"), expect.append((200, blob(i * 100)))
        elif kind == 1:
            reqs.append(request_bytes("HEAD", "/fixed/%d" % (i * 100)))
            methods.append("HEAD"), expect.append((200, b""))
        elif kind == 2:
            body = blob(1000 + i)
            reqs.append(request_bytes("POST", "/echo", headers=[("Content-Length", len(body))], body=body))
            methods.append("POST"), expect.append((200, body))
        else:
            reqs.append(request_bytes("GET", "/status/204"))
            methods.append("GET"), expect.append((204, b""))
    reqs.append(request_bytes("GET", "/fixed/33", headers=[("Connection", "close")]))
    methods.append("GET"), expect.append((200, blob(33)))
    data, secs, how = await raw(proxy.portno, b"".join(reqs))
    assert how == "eof"
    got = parse_responses(data, methods)
    assert [(r.status, r.body) for r in got] == expect
    assert origin.connections == 1 and len(origin.requests) == 25
    (s,) = await ended(proxy)
    assert s["requests"] == 25


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_sent_in_pieces(net):
    """Pipelined heads split at every byte boundary the network may choose."""
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])
    stream = b"".join(request_bytes("GET", "/fixed/%d" % n) for n in (3, 0, 5))
    stream += request_bytes("POST", "/echo", headers=[("Content-Length", 4), ("Connection", "close")],
                            body=b"abcd")
    pieces = [stream[i:i + 7] for i in range(0, len(stream), 7)]
    data, secs, how = await raw(proxy.portno, None, pieces=pieces, delay=0.002)
    got = parse_responses(data)
    assert [(r.status, r.body) for r in got] == [(200, blob(3)), (200, b""), (200, blob(5)), (200, b"abcd")]


# -- large bodies: checksums, and proof that they were spliced ----------------


@pytest_twisted.ensureDeferred
async def test_large_download_content_length_spliced(net):
    size = 64 * MiB
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])
    blob(size)
    status, headers, total, digest = await harness.wait(
        in_thread(download, proxy.portno, "/fixed/%d" % size), 30, "download")
    assert status == "HTTP/1.1 200 OK" and headers["content-length"] == str(size)
    assert total == size and digest == sha(blob(size))
    (s,) = await ended(proxy)
    assert s["spliced_out"] == size, s  # the head is taken exactly: the whole body spliced
    assert s["copied"] < HEADS, s


@pytest_twisted.ensureDeferred
async def test_large_upload_content_length_spliced(net):
    size = 48 * MiB
    data = blob(size)
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])

    def client():
        c = Conn(proxy.portno)
        try:
            return c._request("POST", "/sha", body=data)
        finally:
            c.close()

    status, headers, body = await harness.wait(in_thread(client), 30, "upload")
    assert status == 200 and json.loads(body) == {"length": size, "sha": sha(data)}
    (s,) = await ended(proxy)
    assert s["spliced_in"] == size, s
    assert s["copied"] < HEADS, s


@pytest_twisted.ensureDeferred
async def test_large_chunked_download_spliced(net):
    """twisted.web streaming 1 MiB writes: sent chunked, framing and data spliced."""
    count = 48
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])
    status, headers, total, digest = await harness.wait(
        in_thread(download, proxy.portno, "/stream/%d/%d" % (MiB, count)), 30, "download")
    assert headers.get("transfer-encoding") == "chunked"
    assert total == count * MiB and digest == sha(blob(MiB) * count)
    (s,) = await ended(proxy)
    assert s["spliced_out"] > count * MiB, s  # data and framing
    assert s["copied"] < HEADS, s


@pytest_twisted.ensureDeferred
async def test_large_chunked_upload_spliced(net):
    count = 32
    data = blob(count * MiB)
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])

    def client():
        c = Conn(proxy.portno)
        try:
            pieces = (data[i * MiB:(i + 1) * MiB] for i in range(count))
            return c._request("POST", "/sha", body=pieces, encode_chunked=True,
                              headers={"Transfer-Encoding": "chunked"})
        finally:
            c.close()

    status, headers, body = await harness.wait(in_thread(client), 30, "chunked upload")
    assert status == 200 and json.loads(body) == {"length": len(data), "sha": sha(data)}
    (s,) = await ended(proxy)
    assert s["spliced_in"] > len(data), s
    assert s["copied"] < HEADS, s


@pytest.mark.parametrize("sizes", [[], [1] * 2000, [MiB] * 6, [1, MiB, 1, 5, MiB - 1]],
                         ids=["empty", "1-byte", "1MiB", "mixed"])
@pytest_twisted.ensureDeferred
async def test_chunked_download_framing_verbatim(net, sizes):
    """Chunks of 0 (the last), 1 and 1 MiB bytes, with extensions and trailers: framing kept byte for byte."""
    body, data = chunked_body(sizes, trailers=b"X-Trailer: yes\r\n", ext=b";name=value")
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    origin = RawOrigin(net, canned(head + body))
    proxy = Proxy(net, [origin])
    req = request_bytes("GET", "/c") + request_bytes("GET", "/c", headers=[("Connection", "close")])
    got, secs, how = await raw(proxy.portno, req)
    rs = parse_responses(got)
    assert [(r.status, sha(r.body)) for r in rs] == [(200, sha(data))] * 2
    second = got.index(b"HTTP/1.1 200", 1)
    assert got[len(rs[0].raw_head):second] == body  # framing forwarded verbatim
    (s,) = await ended(proxy)
    if sum(sizes) >= MiB:
        assert s["spliced_out"] >= 0.9 * 2 * sum(sizes), s


@pytest.mark.parametrize("size,count", [(0, 5), (1, 3000), (MiB, 6)], ids=["empty-writes", "1-byte", "1MiB"])
@pytest_twisted.ensureDeferred
async def test_chunked_download_twisted_web(net, size, count):
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])

    def client():
        c = Conn(proxy.portno)
        try:
            return [c._request("GET", "/stream/%d/%d" % (size, count)) for _ in range(2)]
        finally:
            c.close()

    for status, headers, body in await harness.wait(in_thread(client), 20, "chunked"):
        assert status == 200 and body == blob(size) * count
        assert headers.get("transfer-encoding") == "chunked"


@pytest.mark.parametrize("sizes", [[], [1] * 3000, [MiB] * 6, [7, MiB, 1]], ids=["empty", "1-byte", "1MiB", "mixed"])
@pytest_twisted.ensureDeferred
async def test_chunked_upload(net, sizes):
    """A raw client sends exact chunk framing (the 0-size last chunk, extensions, a trailer)."""
    body, data = chunked_body(sizes, trailers=b"X-T: 1\r\n", ext=b";a=b")
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])
    req = request_bytes("POST", "/sha", headers=[("Transfer-Encoding", "chunked")], body=body)
    req += request_bytes("POST", "/sha", headers=[("Transfer-Encoding", "chunked"), ("Connection", "close")],
                         body=body)
    got, secs, how = await raw(proxy.portno, req)
    rs = parse_responses(got)
    assert [(r.status, json.loads(r.body)) for r in rs] == [(200, {"length": len(data), "sha": sha(data)})] * 2
    (s,) = await ended(proxy)
    assert s["requests"] == 2
    if sum(sizes) >= MiB:
        assert s["spliced_in"] >= 0.9 * 2 * sum(sizes), s


# -- HEAD, 204, 304, close-delimited ------------------------------------------


@pytest_twisted.ensureDeferred
async def test_head_204_304_keepalive(net):
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])

    def client():
        c = Conn(proxy.portno)
        try:
            return [c._request("HEAD", "/fixed/100000"), c._request("GET", "/status/204"),
                    c._request("GET", "/status/304"), c._request("HEAD", "/stream/10/10"),
                    c._request("GET", "/fixed/10")]
        finally:
            c.close()

    out = await harness.wait(in_thread(client), 10, "HEAD/204/304")
    assert [(o[0], o[2]) for o in out] == [(200, b""), (204, b""), (304, b""), (200, b""), (200, blob(10))]
    assert out[0][1]["content-length"] == "100000"
    (s,) = await ended(proxy)
    assert s["requests"] == 5 and origin.connections == 1


@pytest.mark.parametrize("raw_head", [
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 123\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n",  # to a HEAD
], ids=["204", "304-with-length", "HEAD-with-length"])
@pytest_twisted.ensureDeferred
async def test_bodyless_responses_raw_origin(net, raw_head):
    """No body follows these, whatever the framing fields say: the next response comes at once."""
    method = "HEAD" if b"5000" in raw_head else "GET"
    origin = RawOrigin(net, canned(raw_head))
    proxy = Proxy(net, [origin])
    req = request_bytes(method, "/a") * 3 + request_bytes(method, "/a", headers=[("Connection", "close")])
    got, secs, how = await raw(proxy.portno, req, timeout=5)
    rs = parse_responses(got, [method] * 4)
    assert how == "eof" and len(rs) == 4 and secs < 3
    assert len(origin.heads) == 4


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
@pytest_twisted.ensureDeferred
async def test_close_delimited_response(net, version):
    data = blob(8 * MiB)
    origin = RawOrigin(net, canned(b"%s 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n"
                                   % version.encode() + data, close=True))
    proxy = Proxy(net, [origin])
    # the client asks for keep-alive: the proxy must still end the body at the origin's EOF
    got, secs, how = await raw(proxy.portno, request_bytes("GET", "/") + request_bytes("GET", "/again"))
    assert how == "eof"
    r = one_response(got)
    assert r.status == 200 and sha(r.body) == sha(data)
    assert len(origin.heads) == 1
    (s,) = await ended(proxy)
    assert s["spliced_out"] >= len(data) - READ, s


@pytest_twisted.ensureDeferred
async def test_close_delimited_http_client(net):
    data = blob(300000)
    origin = RawOrigin(net, canned(b"HTTP/1.0 200 OK\r\n\r\n" + data, close=True))
    proxy = Proxy(net, [origin])
    status, headers, body = await urlopen(proxy.url + "/x")
    assert status == 200 and body == data


# -- WebSocket upgrade and CONNECT --------------------------------------------


def _tunnel_client(port, request, expect_status, frames, early=b""):
    """Send the request (+ ``early`` bytes), read the status head, exchange frames, half-close."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(request + early)
        head = b""
        while b"\r\n\r\n" not in head:
            b = s.recv(1)
            assert b, "EOF before the response head: %r" % head
            head += b
        status = int(head.split(b" ", 2)[1])
        assert status == expect_status, head
        echo = b""
        while len(echo) < len(early):
            try:
                b = s.recv(len(early) - len(echo))
            except socket.timeout:
                raise AssertionError("bytes sent right after the request head were not tunnelled: "
                                     "%r of %r echoed" % (echo, early))
            assert b, "EOF"
            echo += b
        assert echo == early
        result = {}

        def reader(total):
            got = bytearray()
            while len(got) < total:
                b = s.recv(1 << 20)
                if not b:
                    break
                got += b
            result["echo"] = bytes(got)

        total = sum(len(f) for f in frames)
        t = threading.Thread(target=reader, args=(total,))
        t.start()
        for f in frames:
            s.sendall(f)
        t.join(20)
        assert not t.is_alive(), "echo reader stuck"
        assert sha(result["echo"]) == sha(b"".join(frames)), (len(result["echo"]), total)
        s.shutdown(socket.SHUT_WR)
        tail = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            tail += b
        return head, tail
    finally:
        s.close()


def _upgrade_origin(net, status_head):
    def handler(proto, head):
        proto.transport.write(status_head)
        proto.startEcho()

    def on_eof(proto):  # the client half-closed through the tunnel
        proto.transport.write(b"bye")
        proto.transport.loseConnection()

    return RawOrigin(net, handler, on_eof)


FRAMES = [b"\x81\x05hello", b"\x82" + b"\x01", blob(MiB), b"\x88\x00", blob(3 * MiB + 5)]


@pytest_twisted.ensureDeferred
async def test_websocket_upgrade_relays_frames_both_ways(net):
    origin = _upgrade_origin(net, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                  b"Connection: Upgrade\r\n\r\n")
    proxy = Proxy(net, [origin], allowUpgrade=True)
    req = request_bytes("GET", "/chat", headers=[
        ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")])
    head, tail = await harness.wait(in_thread(_tunnel_client, proxy.portno, req, 101, FRAMES), 30, "ws")
    assert tail == b"bye"
    assert b"Upgrade: websocket" in origin.heads[0] or b"upgrade: websocket" in origin.heads[0].lower()
    assert origin.half_closed == 1
    (s,) = await ended(proxy)
    n = sum(map(len, FRAMES))
    assert s["spliced_in"] >= n - READ and s["spliced_out"] >= n - READ, s


WS_REQUEST = request_bytes("GET", "/chat", headers=[
    ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")])
CONNECT_REQUEST = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"


@pytest.mark.parametrize("kind", ["upgrade", "connect"])
@pytest_twisted.ensureDeferred
async def test_tunnel_bytes_sent_before_the_response(net, kind):
    """
    A client may send its first frame right behind the request head, before
    the 101/200 arrives: those bytes belong to the tunnel and must reach the
    origin once it is established.
    """
    status_head = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                   if kind == "upgrade" else b"HTTP/1.1 200 Connection Established\r\n\r\n")
    origin = _upgrade_origin(net, status_head)
    proxy = Proxy(net, [origin], allowUpgrade=True, allowConnect=True)
    req = WS_REQUEST if kind == "upgrade" else CONNECT_REQUEST
    head, tail = await harness.wait(in_thread(_tunnel_client, proxy.portno, req, int(status_head[9:12]),
                                              FRAMES[:2], early=b"\x81\x05early"), 20, "tunnel")
    assert tail == b"bye"


@pytest.mark.parametrize("kind", ["upgrade", "connect"])
@pytest_twisted.ensureDeferred
async def test_tunnel_origin_speaks_first(net, kind):
    """The origin's first bytes arrive in the same segment as its 101/200 head: none may be lost."""
    status_head = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                   if kind == "upgrade" else b"HTTP/1.1 200 Connection Established\r\n\r\n")
    greeting = b"\x81\x08greeting" + blob(1000)
    origin = RawOrigin(net, canned(status_head + greeting, close=True))
    proxy = Proxy(net, [origin], allowUpgrade=True, allowConnect=True)
    req = WS_REQUEST if kind == "upgrade" else CONNECT_REQUEST
    got, secs, how = await raw(proxy.portno, req, timeout=3)
    assert got.startswith(status_head[:12]) and got.endswith(greeting), got[:200]
    assert got.split(b"\r\n\r\n", 1)[1] == greeting


@pytest_twisted.ensureDeferred
async def test_websocket_upgrade_refused_when_disabled(net):
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])
    req = request_bytes("GET", "/chat", headers=[("Upgrade", "websocket"), ("Connection", "Upgrade")])
    got, secs, how = await raw(proxy.portno, req, timeout=3)
    assert_error(got, 403)
    assert origin.untouched()


@pytest_twisted.ensureDeferred
async def test_websocket_upgrade_declined_by_origin(net):
    """The origin answers 200 instead of 101: an ordinary response, then the connection closes."""
    origin = RawOrigin(net, canned(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno"))
    proxy = Proxy(net, [origin], allowUpgrade=True)
    req = request_bytes("GET", "/chat", headers=[("Upgrade", "websocket"), ("Connection", "Upgrade")])
    got, secs, how = await raw(proxy.portno, req, timeout=3)
    r = one_response(got)
    assert (r.status, r.body, how) == (200, b"no", "eof")


@pytest_twisted.ensureDeferred
async def test_connect_tunnel(net):
    origin = _upgrade_origin(net, b"HTTP/1.1 200 Connection Established\r\n\r\n")
    proxy = Proxy(net, [origin], allowConnect=True)
    req = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    head, tail = await harness.wait(in_thread(_tunnel_client, proxy.portno, req, 200, FRAMES), 30, "connect")
    assert tail == b"bye" and origin.half_closed == 1
    assert origin.heads[0].startswith(b"CONNECT example.com:443 HTTP/1.1\r\n")
    (s,) = await ended(proxy)
    n = sum(map(len, FRAMES))
    assert s["spliced_in"] >= n - READ and s["spliced_out"] >= n - READ, s


@pytest_twisted.ensureDeferred
async def test_connect_refused_when_disabled(net):
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])
    req = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    got, secs, how = await raw(proxy.portno, req, timeout=3)
    assert_error(got, 403)
    assert origin.untouched()


@pytest_twisted.ensureDeferred
async def test_connect_declined_by_origin(net):
    origin = RawOrigin(net, canned(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 3\r\n\r\nno!"))
    proxy = Proxy(net, [origin], allowConnect=True)
    req = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nnot-http"
    got, secs, how = await raw(proxy.portno, req, timeout=3)
    r = one_response(got)
    assert (r.status, r.body, how) == (407, b"no!", "eof")
    assert b"not-http" not in origin.received  # tunnel bytes never went out without a tunnel


# -- malformed requests: status, and the origin never sees them ---------------

H = "Host: 127.0.0.1\r\n"
MALFORMED = [
    # request line
    ("http09", b"GET /\r\n\r\n", 400),
    ("double-space", b"GET  / HTTP/1.1\r\n" + H.encode() + b"\r\n", 400),
    ("trailing-space", b"GET / HTTP/1.1 \r\n" + H.encode() + b"\r\n", 400),
    ("method-not-token", b"G(T / HTTP/1.1\r\n" + H.encode() + b"\r\n", 400),
    ("no-version", b"GET / \r\n" + H.encode() + b"\r\n", 400),
    ("space-in-target", b"GET /a b HTTP/1.1\r\n" + H.encode() + b"\r\n", 400),
    ("bad-version", b"GET / HTTP/1\r\n" + H.encode() + b"\r\n", 400),
    ("http2-version", b"GET / HTTP/2.0\r\n" + H.encode() + b"\r\n", 505),
    # field names
    ("name-with-space", b"GET / HTTP/1.1\r\n" + H.encode() + b"Bad Name: x\r\n\r\n", 400),
    ("name-with-at", b"GET / HTTP/1.1\r\n" + H.encode() + b"X@Y: x\r\n\r\n", 400),
    ("empty-name", b"GET / HTTP/1.1\r\n" + H.encode() + b": x\r\n\r\n", 400),
    ("no-colon", b"GET / HTTP/1.1\r\n" + H.encode() + b"NoColon\r\n\r\n", 400),
    ("space-before-colon", b"GET / HTTP/1.1\r\nHost : 127.0.0.1\r\n\r\n", 400),
    ("tab-before-colon", b"GET / HTTP/1.1\r\n" + H.encode() + b"X-A\t: b\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\n" + H.encode() + b"X-A: b\r\n c\r\n\r\n", 400),
    ("obs-fold-tab", b"GET / HTTP/1.1\r\n" + H.encode() + b"X-A: b\r\n\tc\r\n\r\n", 400),
    # field values
    ("nul-in-value", b"GET / HTTP/1.1\r\n" + H.encode() + b"X-A: a\x00b\r\n\r\n", 400),
    ("cr-in-value", b"GET / HTTP/1.1\r\n" + H.encode() + b"X-A: a\rb\r\n\r\n", 400),
    ("lf-in-value", b"GET / HTTP/1.1\r\n" + H.encode() + b"X-A: a\nb\r\n\r\n", 400),
    ("bare-lf-lines", b"GET / HTTP/1.1\n" + b"Host: 127.0.0.1\n\n", 400),
    ("del-in-value", b"GET / HTTP/1.1\r\n" + H.encode() + b"X-A: a\x7fb\r\n\r\n", 400),
    # Content-Length
    ("cl-letters", b"POST / HTTP/1.1\r\n" + H.encode() + b"Content-Length: abc\r\n\r\n", 400),
    ("cl-negative", b"POST / HTTP/1.1\r\n" + H.encode() + b"Content-Length: -1\r\n\r\n", 400),
    ("cl-plus", b"POST / HTTP/1.1\r\n" + H.encode() + b"Content-Length: +5\r\n\r\nhello", 400),
    ("cl-hex", b"POST / HTTP/1.1\r\n" + H.encode() + b"Content-Length: 0x5\r\n\r\nhello", 400),
    ("cl-empty", b"POST / HTTP/1.1\r\n" + H.encode() + b"Content-Length: \r\n\r\n", 400),
    ("cl-inner-space", b"POST / HTTP/1.1\r\n" + H.encode() + b"Content-Length: 1 2\r\n\r\n", 400),
    ("cl-decimal", b"POST / HTTP/1.1\r\n" + H.encode() + b"Content-Length: 5.0\r\n\r\nhello", 400),
    ("cl-overflow", b"POST / HTTP/1.1\r\n" + H.encode() + b"Content-Length: 99999999999999999999\r\n\r\n", 400),
    ("cl-2**63", b"POST / HTTP/1.1\r\n" + H.encode() + b"Content-Length: 9223372036854775808\r\n\r\n", 400),
    ("cl-differing", b"POST / HTTP/1.1\r\n" + H.encode()
     + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    ("cl-differing-list", b"POST / HTTP/1.1\r\n" + H.encode() + b"Content-Length: 5, 6\r\n\r\nhello!", 400),
    ("cl-and-te", b"POST / HTTP/1.1\r\n" + H.encode()
     + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("te-and-cl", b"POST / HTTP/1.1\r\n" + H.encode()
     + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    # Transfer-Encoding
    ("te-gzip", b"POST / HTTP/1.1\r\n" + H.encode() + b"Transfer-Encoding: gzip\r\n\r\n", 400),
    ("te-chunked-not-final", b"POST / HTTP/1.1\r\n" + H.encode()
     + b"Transfer-Encoding: chunked, gzip\r\n\r\n", 400),
    ("te-identity", b"POST / HTTP/1.1\r\n" + H.encode() + b"Transfer-Encoding: identity\r\n\r\n", 400),
    ("te-chunked-bad", b"POST / HTTP/1.1\r\n" + H.encode() + b"Transfer-Encoding: chunkedx\r\n\r\n", 400),
    ("te-http10", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    # Host and target
    ("duplicate-host", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    ("duplicate-host-differing", b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", 400),
    ("missing-host", b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    ("host-userinfo", b"GET / HTTP/1.1\r\nHost: user@127.0.0.1\r\n\r\n", 400),
    ("absolute-host-differs", b"GET http://other.example/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
    ("absolute-port-differs", b"GET http://127.0.0.1:81/x HTTP/1.1\r\nHost: 127.0.0.1:80\r\n\r\n", 400),
    ("fragment", b"GET /a#frag HTTP/1.1\r\n" + H.encode() + b"\r\n", 400),
    ("connect-not-authority", b"CONNECT /x HTTP/1.1\r\n" + H.encode() + b"\r\n", 400),
    # sizes
    ("head-over-8k", b"GET / HTTP/1.1\r\n" + H.encode() + b"X-Big: " + b"a" * 8300 + b"\r\n\r\n", 431),
    ("head-over-8k-unterminated", b"GET / HTTP/1.1\r\n" + H.encode() + b"X-Big: " + b"a" * 9000, 431),
    ("line-over-8k-unterminated", b"GET /" + b"a" * 9000, 431),
    ("too-many-lines", b"GET / HTTP/1.1\r\n" + H.encode() + b"".join(b"X-%d: v\r\n" % i for i in range(100))
     + b"\r\n", 431),
]


@pytest.mark.parametrize("name,data,status", MALFORMED, ids=[m[0] for m in MALFORMED])
@pytest_twisted.ensureDeferred
async def test_malformed_request(net, name, data, status):
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])
    got, secs, how = await raw(proxy.portno, data, timeout=3)
    assert got, "no answer (%s after %.1f s)" % (how, secs)
    assert_error(got, status)
    assert how in ("eof", "reset") and secs < 2.5
    assert origin.untouched(), (origin.connections, origin.received[:200])
    (s,) = await ended(proxy)
    assert s["requests"] == 0 and s["how"].startswith("error-%d" % status), s


@pytest_twisted.ensureDeferred
async def test_malformed_second_request_after_good_one(net):
    """A pipelined bad head: the good response first, then the error, and the bad head never goes out."""
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])
    data = request_bytes("GET", "/fixed/10") + b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: b\r\n c\r\n\r\n"
    got, secs, how = await raw(proxy.portno, data, timeout=3)
    first, second = parse_responses(got)
    assert (first.status, first.body) == (200, blob(10))
    assert second.status == 400
    assert len(origin.requests) == 1 and b"X-A" not in origin.received


@pytest_twisted.ensureDeferred
async def test_head_just_under_limit_accepted(net):
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])
    req = request_bytes("GET", "/headers", headers=[("X-Big", "a" * 7900), ("Connection", "close")])
    assert len(req) < 8192
    got, secs, how = await raw(proxy.portno, req, timeout=3)
    r = one_response(got)
    assert r.status == 200 and "a" * 7900 in r.body.decode()


@pytest_twisted.ensureDeferred
async def test_header_limit_configurable(net):
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin], headerLimit=1024, maxHeaderLines=5)
    got, secs, how = await raw(proxy.portno, request_bytes("GET", "/", headers=[("X-Big", "a" * 1100)]), timeout=3)
    assert_error(got, 431)
    got, secs, how = await raw(proxy.portno, request_bytes("GET", "/", headers=[("X-%d" % i, "v") for i in range(6)]),
                               timeout=3)
    assert_error(got, 431)
    assert origin.untouched()


# -- timeouts and backend failures --------------------------------------------


def _trickle(port, first, piece, interval, duration, prologue=None):
    """
    Slowloris: optionally a complete request/response first (``prologue``:
    request bytes, read until the response's body length is in), then
    ``first`` and one ``piece`` every ``interval`` s until the proxy answers
    or ``duration`` passes.  Returns (bytes read after the prologue, seconds).
    """
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        if prologue is not None:
            s.sendall(prologue)
            got = b""
            while True:
                b = s.recv(65536)
                assert b, "EOF after the first request: %r" % got
                got += b
                if b"\r\n\r\n" in got:
                    try:
                        r = one_response(got)  # raises until complete
                    except (AssertionError, ValueError):
                        continue  # the body may come in a later segment than the head
                    if r.status:
                        break
        t0 = time.monotonic()
        s.sendall(first)
        out = b""
        while time.monotonic() - t0 < duration:
            r, _, _ = select.select([s], [], [], interval)
            if r:
                try:
                    b = s.recv(65536)
                except ConnectionResetError:
                    break
                if not b:
                    break
                out += b
                continue
            try:
                s.sendall(piece)
            except OSError:
                break
        return out, time.monotonic() - t0
    finally:
        s.close()


@pytest_twisted.ensureDeferred
async def test_slowloris_first_request_408(net):
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin], headerTimeout=0.5)
    got, secs = await in_thread(_trickle, proxy.portno, b"GET / HTTP/1.1\r\n", b"X: y\r\n", 0.05, 4)
    assert_error(got, 408)
    assert 0.4 < secs < 1.5, secs
    assert origin.untouched()


@pytest_twisted.ensureDeferred
async def test_slowloris_on_keepalive_connection_408(net):
    """The header timeout applies to every head, not only a connection's first."""
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin], headerTimeout=0.5)
    got, secs = await in_thread(_trickle, proxy.portno, b"GET / HTTP/1.1\r\n", b"X: y\r\n", 0.05, 4,
                                prologue=request_bytes("GET", "/fixed/10"))
    assert got, "no 408 within 4 s on the second head"
    assert_error(got, 408)
    assert secs < 1.5, secs
    assert len(origin.requests) == 1


@pytest_twisted.ensureDeferred
async def test_idle_connection_closed_after_header_timeout(net):
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin], headerTimeout=0.5)
    got, secs, how = await raw(proxy.portno, b"", timeout=4)
    assert (got, how) == (b"", "eof") and 0.4 < secs < 1.5
    assert origin.untouched()


@pytest_twisted.ensureDeferred
async def test_idle_keepalive_connection_closed_after_header_timeout(net):
    """After a response, a keep-alive connection waiting for its next head must not stay open forever."""
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin], headerTimeout=0.5)
    got, secs, how = await raw(proxy.portno, request_bytes("GET", "/fixed/3"), timeout=3)
    assert one_response(got).body == blob(3)
    assert how == "eof" and secs < 1.5, (how, secs)


@pytest_twisted.ensureDeferred
async def test_backend_unreachable_502(net):
    proxy = Proxy(net, [TCP4ClientEndpoint(reactor, "127.0.0.1", unused_port(), timeout=2)])
    got, secs, how = await raw(proxy.portno, request_bytes("GET", "/"), timeout=4)
    assert_error(got, 502)
    (s,) = await ended(proxy)
    assert s["how"] == "error-502"


INVALID_RESPONSES = [
    ("garbage", b"HELLO\r\n\r\n"),
    ("status-4-digits", b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n"),
    ("http2", b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ("bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 0\n\n"),
    ("bad-name", b"HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 0\r\n\r\n"),
    ("cl-and-te", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("cl-negative", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
    ("cl-differing", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
    ("te-gzip", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
    ("obs-fold", b"HTTP/1.1 200 OK\r\nX-A: b\r\n c\r\nContent-Length: 0\r\n\r\n"),
    ("204-with-body", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello"),
    ("huge-head", b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"),
    ("closed-silently", b""),
    ("closed-mid-head", b"HTTP/1.1 200 OK\r\nContent-Le"),
]


@pytest.mark.parametrize("name,answer", INVALID_RESPONSES, ids=[r[0] for r in INVALID_RESPONSES])
@pytest_twisted.ensureDeferred
async def test_backend_invalid_response_502(net, name, answer):
    origin = RawOrigin(net, canned(answer, close=True))
    proxy = Proxy(net, [origin])
    got, secs, how = await raw(proxy.portno, request_bytes("GET", "/"), timeout=3)
    assert got, "no answer (%s after %.1f s)" % (how, secs)
    r = assert_error(got, 502)
    assert b"HELLO" not in r.body and b"Bad Name" not in got


@pytest_twisted.ensureDeferred
async def test_backend_unsolicited_response(net):
    """A response nobody asked for never reaches the client (it would answer the client's next request)."""
    def handler(proto, head):
        proto.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA"
                              b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nextra")

    origin = RawOrigin(net, handler)
    proxy = Proxy(net, [origin])
    got, secs, how = await raw(proxy.portno, request_bytes("GET", "/"), timeout=3)
    rs = parse_responses(got)
    assert (rs[0].status, rs[0].body) == (200, b"A")
    assert b"extra" not in got and how == "eof"


@pytest_twisted.ensureDeferred
async def test_backend_timeout_504(net):
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin], backendTimeout=0.5)
    got, secs, how = await raw(proxy.portno, request_bytes("GET", "/slow"), timeout=4)
    assert_error(got, 504)
    assert 0.4 < secs < 1.5, secs
    assert len(origin.stalled) == 1


@pytest_twisted.ensureDeferred
async def test_backend_timeout_does_not_cut_slow_upload(net):
    """
    The backend cannot answer before the body is in: a client uploading for
    longer than the backend timeout must not get 504 while it is still sending.
    """
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin], backendTimeout=0.5)
    head = request_bytes("POST", "/sha", headers=[("Content-Length", 40), ("Connection", "close")])
    pieces = [head] + [b"x" * 10] * 4
    got, secs, how = await raw(proxy.portno, None, pieces=pieces, delay=0.3, timeout=4)
    r = one_response(got)
    assert r.status == 200 and json.loads(r.body) == {"length": 40, "sha": sha(b"x" * 40)}


@pytest_twisted.ensureDeferred
async def test_backend_timeout_not_applied_to_long_download(net):
    """Once the response head is in, a long body is not a backend timeout."""
    def handler(proto, head):
        proto.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabc")
        reactor.callLater(0.8, proto.transport.write, b"def")

    origin = RawOrigin(net, handler)
    proxy = Proxy(net, [origin], backendTimeout=0.5)
    got, secs, how = await raw(proxy.portno, request_bytes("GET", "/", headers=[("Connection", "close")]),
                               timeout=4)
    r = one_response(got)
    assert (r.status, r.body) == (200, b"abcdef")


# -- rules --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_rule_block_path_return_error_label(net):
    origin = WebOrigin(net)
    rs = rules('return error\nblock request path "/admin*" label "admins only"\n')
    proxy = Proxy(net, [origin], rules=rs)
    status, headers, body = await urlopen(proxy.url + "/admin/users")
    assert status == 403 and b"admins only" in body
    assert origin.untouched()
    status, headers, body = await urlopen(proxy.url + "/fixed/5")
    assert status == 200 and body == blob(5)


@pytest_twisted.ensureDeferred
async def test_rule_block_without_return_error_closes_silently(net):
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin], rules=rules('block request path "/admin*" label "admins only"'))
    got, secs, how = await raw(proxy.portno, request_bytes("GET", "/admin"), timeout=3)
    assert got == b"" and how in ("eof", "reset") and secs < 2
    assert origin.untouched()


@pytest_twisted.ensureDeferred
async def test_rule_header_set_remote_addr_macro(net):
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin], rules=rules(
        'match request header set "X-Forwarded-For" value "$REMOTE_ADDR"\n'
        'match request header set "X-Port" value "$SERVER_PORT"\n'
        'match request header append "X-List" value "two"\n'
        'match request header remove "X-Secret"\n'))
    status, headers, body = await urlopen(proxy.url + "/headers", headers={
        "X-Forwarded-For": "6.6.6.6", "X-List": "one", "X-Secret": "pw"})
    seen = {}
    for k, v in json.loads(body)["headers"]:
        seen.setdefault(k.lower(), []).append(v)
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-port"] == [str(proxy.portno)]
    assert seen["x-list"] in (["one", "two"], ["one, two"])
    assert "x-secret" not in seen


@pytest_twisted.ensureDeferred
async def test_rule_response_header_remove_server(net):
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])
    status, headers, body = await urlopen(proxy.url + "/fixed/3")
    assert headers["server"].startswith("TwistedWeb")  # the origin sends one
    proxy2 = Proxy(net, [origin], rules=rules(
        'match response header remove "Server"\nmatch response header set "X-Via" value "splicing"'))
    status, headers, body = await urlopen(proxy2.url + "/fixed/3")
    assert status == 200 and body == blob(3)
    assert "server" not in headers and headers["x-via"] == "splicing"


@pytest_twisted.ensureDeferred
async def test_rule_forward_to_group(net):
    web, api = WebOrigin(net, "web"), WebOrigin(net, "api")
    proxy = Proxy(net, [web], groups={"api": [api]},
                  rules=rules('match request path "/api/*" forward to <api>'))
    status, headers, body = await urlopen(proxy.url + "/api/fixed/4")
    assert headers["x-origin"] == "api"
    status, headers, body = await urlopen(proxy.url + "/fixed/4")
    assert headers["x-origin"] == "web"
    assert [r["uri"] for r in api.requests] == ["/api/fixed/4"]
    assert [r["uri"] for r in web.requests] == ["/fixed/4"]


@pytest_twisted.ensureDeferred
async def test_rule_tag_tagged(net):
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin], rules=rules(
        'return error\n'
        'match request header "X-Role" value "admin" tag "ADMIN"\n'
        'block request path "/fixed/*" label "admins only"\n'
        'pass request quick tagged "ADMIN"\n'))
    status, headers, body = await urlopen(proxy.url + "/fixed/2")
    assert status == 403 and b"admins only" in body
    status, headers, body = await urlopen(proxy.url + "/fixed/2", headers={"X-Role": "admin"})
    assert status == 200 and body == blob(2)
    assert len(origin.requests) == 1


@pytest_twisted.ensureDeferred
async def test_rule_tag_sticky_for_the_session(net):
    """relayd: a tag stays on the connection; a later request without the header is still tagged."""
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin], rules=rules(
        'return error\n'
        'match request header "X-Role" value "admin" tag "ADMIN"\n'
        'block request path "/fixed/*"\n'
        'pass request quick tagged "ADMIN"\n'))
    req = request_bytes("GET", "/fixed/1", headers=[("X-Role", "admin")]) + \
        request_bytes("GET", "/fixed/2", headers=[("Connection", "close")])
    got, secs, how = await raw(proxy.portno, req, timeout=3)
    assert [(r.status, r.body) for r in parse_responses(got)] == [(200, blob(1)), (200, blob(2))]


@pytest_twisted.ensureDeferred
async def test_rule_cookie_query_url_method(net):
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin], rules=rules(
        'return error\n'
        'block request cookie "session" value "evil" label "bad cookie"\n'
        'block request query "debug" label "no debug"\n'
        'block request url "127.0.0.1/private/" label "private"\n'
        'block request method DELETE label "no delete"\n'
        'match request cookie set "seen" value "1"\n'
        'match request query set "via" value "proxy"\n'))
    cases = [
        (dict(headers={"Cookie": "session=evil"}), 403, b"bad cookie"),
        (dict(url="/headers?debug=1"), 403, b"no debug"),
        (dict(url="/private/x"), 403, b"private"),
        (dict(method="DELETE"), 403, b"no delete"),
    ]
    for kw, status, text in cases:
        got = await urlopen(proxy.url + kw.get("url", "/headers"), headers=kw.get("headers"),
                            method=kw.get("method"))
        assert (got[0], text in got[2]) == (status, True), (kw, got)
    assert not origin.requests
    status, headers, body = await urlopen(proxy.url + "/headers?a=b", headers={"Cookie": "session=ok"})
    seen = json.loads(body)
    assert status == 200 and seen["uri"] == "/headers?a=b&via=proxy"
    cookie = [v for k, v in seen["headers"] if k.lower() == "cookie"]
    assert cookie == ["session=ok; seen=1"]


@pytest_twisted.ensureDeferred
async def test_rule_path_set_and_strip(net):
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin], rules=rules(
        'match request path "/v1/*" path strip 1\n'
        'match request path "/old" path set value "/fixed/6"\n'))
    status, headers, body = await urlopen(proxy.url + "/v1/fixed/3")
    assert (status, body) == (200, blob(3))
    status, headers, body = await urlopen(proxy.url + "/old")
    assert (status, body) == (200, blob(6))
    assert [r["uri"] for r in origin.requests] == ["/fixed/3", "/fixed/6"]


@pytest_twisted.ensureDeferred
async def test_rule_from_address_and_log(net):
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin], rules=rules(
        'return error\n'
        'block request from 10.0.0.0/8 label "ten"\n'
        'match request header log "User-Agent"\n'))
    status, headers, body = await urlopen(proxy.url + "/fixed/1", headers={"User-Agent": "probe/1"})
    assert status == 200
    (s,) = await ended(proxy)
    assert any("probe/1" in line for line in s["logs"]), s["logs"]
    proxy2 = Proxy(net, [origin], rules=rules('return error\nblock request from 127.0.0.0/8 label "local"'))
    status, headers, body = await urlopen(proxy2.url + "/fixed/1")
    assert status == 403 and b"local" in body
    assert len(origin.requests) == 1


@pytest_twisted.ensureDeferred
async def test_rule_block_response(net):
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin], rules=rules(
        'return error\nblock response header "X-Origin" value "web" label "hidden"'))
    got, secs, how = await raw(proxy.portno, request_bytes("GET", "/fixed/100"), timeout=3)
    r = assert_error(got, 502)
    assert blob(100) not in got


@pytest_twisted.ensureDeferred
async def test_rules_on_large_spliced_body(net):
    """Filtering heads does not stop bodies from being spliced."""
    size = 16 * MiB
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin], rules=rules(
        'match request header set "X-Forwarded-For" value "$REMOTE_ADDR"\n'
        'match response header remove "Server"\n'))
    status, headers, total, digest = await harness.wait(
        in_thread(download, proxy.portno, "/fixed/%d" % size), 20, "download")
    assert total == size and digest == sha(blob(size)) and "server" not in headers
    (s,) = await ended(proxy)
    assert s["spliced_out"] >= size - READ, s


# -- stats ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_session_stats_small_body_in_hand(net):
    """
    A small body that arrived whole with its head is read with it (the peek
    at the head saw it) and written with the head: no splice set up for 30
    bytes at hand; the counters say it was copied.
    """
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])
    req = request_bytes("POST", "/sha", body=b"x" * 30, headers=[("Content-Length", "30"), ("Connection", "close")])
    got, secs, how = await raw(proxy.portno, req)
    r = one_response(got)
    assert json.loads(r.body) == {"length": 30, "sha": sha(b"x" * 30)}
    (s,) = await ended(proxy)
    assert s["requests"] == 1 and s["how"] in ("close", "done", "eof", "client-eof")
    assert s["spliced"] == s["spliced_in"] + s["spliced_out"]
    assert s["spliced_in"] == 0, s
    assert s["spliced_out"] in (0, len(r.body)), s  # twisted.web may write its body apart from its head
    assert s["copied"] + s["spliced"] == len(req) + len(got), s
    assert isinstance(s["logs"], list)


@pytest_twisted.ensureDeferred
async def test_response_body_in_hand_not_spliced(net):
    """An origin's head and 1 KiB body written at once reach the client without a splice, byte for byte."""
    body = blob(1024)
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n" + body
    origin = RawOrigin(net, canned(response))
    proxy = Proxy(net, [origin])
    req = request_bytes("GET", "/", headers=[("Connection", "close")])
    got, secs, how = await raw(proxy.portno, req)
    r = one_response(got)
    assert (r.status, sha(r.body)) == (200, sha(body))
    (s,) = await ended(proxy)
    assert (s["spliced"], s["copied"]) == (0, len(req) + len(got)), s


@pytest_twisted.ensureDeferred
async def test_bodies_in_hand_over_ipv6(net):
    """::1 on both sides: a small upload and a small answer, each sent with its head, copied with it, byte for byte."""
    from twisted.internet.endpoints import TCP6ClientEndpoint

    body = blob(700)
    origin = RawOrigin(net, canned(b"HTTP/1.1 200 OK\r\nContent-Length: 700\r\n\r\n" + body))
    origin6 = net.listen(origin.port.factory, 6)
    proxy = Proxy(net, [TCP6ClientEndpoint(reactor, "::1", origin6.getHost().port, timeout=5)])
    proxy6 = net.listen(proxy.factory, 6)
    req = request_bytes("POST", "/", host="[::1]", body=b"u" * 50,
                        headers=[("Content-Length", "50"), ("Connection", "close")])

    def client():
        s = socket.create_connection(("::1", proxy6.getHost().port), timeout=10)
        try:
            s.sendall(req)
            return procs.recv_all(s)
        finally:
            s.close()

    got = await harness.wait(in_thread(client), 10, "exchange over ::1")
    r = one_response(got)
    assert (r.status, sha(r.body)) == (200, sha(body))
    (s,) = await ended(proxy)
    assert (s["spliced"], s["copied"]) == (0, len(req) + len(got)), s
    assert origin.received.endswith(b"u" * 50)


@pytest_twisted.ensureDeferred
async def test_pipelined_answers_to_a_client_that_reads_late_stay_in_order(net):
    """
    300 pipelined requests whose 6 KB answers are in hand, to a client that
    reads nothing for a while and with a small receive buffer: the sends
    the socket does not take wait in Twisted's buffer, and later answers
    queue behind them, never ahead.
    """
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])
    base = proxy.factory.protocol

    class SmallSendBuffer(base):
        def connectionMade(self):
            self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            super().connectionMade()

    proxy.factory.protocol = SmallSendBuffer
    sizes = [6000 + i for i in range(300)]
    batch = b"".join(request_bytes("GET", "/fixed/%d" % n) for n in sizes[:-1])
    batch += request_bytes("GET", "/fixed/%d" % sizes[-1], headers=[("Connection", "close")])

    def client():
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(20)
        s.connect(("127.0.0.1", proxy.portno))
        try:
            s.sendall(batch)
            time.sleep(1.0)
            out = bytearray()
            while True:
                b = s.recv(65536)
                if not b:
                    return bytes(out)
                out += b
        finally:
            s.close()

    out = await harness.wait(in_thread(client), 30, "pipelined answers")
    rs = parse_responses(out)
    assert [len(r.body) for r in rs] == sizes
    assert all(r.body == blob(n) for r, n in zip(rs, sizes))
    (s,) = await ended(proxy)
    assert s["requests"] == 300, s


@pytest_twisted.ensureDeferred
async def test_body_after_its_head_spliced(net):
    """A body that was not there when its head was read is spliced, every byte of it: never read into Python."""
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])
    req = request_bytes("POST", "/sha", body=b"y" * 30, headers=[("Content-Length", "30"), ("Connection", "close")])
    head = req[:req.index(b"\r\n\r\n") + 4]
    got, secs, how = await raw(proxy.portno, None, pieces=[head, req[len(head):]], delay=0.3)
    r = one_response(got)
    assert json.loads(r.body) == {"length": 30, "sha": sha(b"y" * 30)}
    (s,) = await ended(proxy)
    assert s["spliced_in"] == 30, s


@pytest_twisted.ensureDeferred
async def test_body_partly_in_hand_spliced(net):
    """A body of which only a part came with its head is spliced whole: the part in the peek is not copied."""
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])
    body = blob(3000)
    req = request_bytes("POST", "/sha", body=body, headers=[("Content-Length", "3000"), ("Connection", "close")])
    cut = req.index(b"\r\n\r\n") + 4 + 1000
    got, secs, how = await raw(proxy.portno, None, pieces=[req[:cut], req[cut:]], delay=0.3)
    r = one_response(got)
    assert json.loads(r.body) == {"length": 3000, "sha": sha(body)}
    (s,) = await ended(proxy)
    assert s["spliced_in"] == 3000, s


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_in_hand_one_write(net, monkeypatch):
    """
    Pipelined requests that arrived together, small bodies included, go to
    the origin in one write (one send), in order, each answered in order.
    """
    from splicing.http import flow

    sent = []
    real = flow.writeNow

    def recording(transport, data):
        sent.append(bytes(data))
        real(transport, data)

    monkeypatch.setattr(flow, "writeNow", recording)
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])
    first = request_bytes("GET", "/fixed/10")
    batch = (request_bytes("GET", "/fixed/1") + request_bytes("POST", "/sha", body=b"abc", headers=[("Content-Length", "3")])
             + request_bytes("GET", "/fixed/2", headers=[("Connection", "close")]))

    def client():
        s = socket.create_connection(("127.0.0.1", proxy.portno), timeout=10)
        try:
            s.sendall(first)
            got = b""
            while not got.endswith(blob(10)):
                got += s.recv(65536)
            del sent[:]  # the backend is connected now: what follows is one read event's
            s.sendall(batch)
            return procs.recv_all(s)
        finally:
            s.close()

    out = await harness.wait(in_thread(client), 10, "pipelined")
    rs = parse_responses(out, ["GET", "POST", "GET"])
    assert [r.body for r in rs] == [blob(1), json.dumps({"length": 3, "sha": sha(b"abc")}).encode(), blob(2)]
    to_origin = [d for d in sent if not d.startswith(b"HTTP/")]
    assert len(to_origin) == 1, to_origin
    assert [(r["method"], r["uri"], r["length"]) for r in origin.requests[1:]] == [
        ("GET", "/fixed/1", 0), ("POST", "/sha", 3), ("GET", "/fixed/2", 0)]
    (s,) = await ended(proxy)
    assert s["requests"] == 4 and s["spliced_in"] == 0, s


# -- bad chunked framing (last: see the docstring) ------------------------------


BAD_CHUNK_LINES = [b"+5", b"-5", b"0x5", b"5 ", b" 5", b"1" + b"0" * 16, b"8000000000000000", b"zz", b""]


@pytest.mark.parametrize("line", BAD_CHUNK_LINES, ids=[repr(x)[2:-1] or "empty" for x in BAD_CHUNK_LINES])
@pytest.mark.parametrize("timing", ["with-head", "later", "after-a-spliced-chunk"])
@pytest_twisted.ensureDeferred
async def test_bad_chunk_size_line(net, line, timing):
    """
    (Last in this file: when the core fails it with an unhandled error in a
    Deferred, that error is logged when the Deferred is collected, which may
    be during a later test.)

    A bad chunk-size line is found once the head is out: the request must
    not complete at the origin, the bad line must not reach it, the client
    gets 400.
    """
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])
    head = request_bytes("POST", "/sha", headers=[("Transfer-Encoding", "chunked")])
    body = b"3\r\nabc\r\n" + line + b"\r\nhello\r\n0\r\n\r\n"
    if timing == "with-head":
        got, secs, how = await raw(proxy.portno, head + body, timeout=3)
    elif timing == "after-a-spliced-chunk":  # the bad line reaches the splice's framer
        pieces = [head + b"10000\r\n", b"x" * 0x10000 + b"\r\n", line + b"\r\nhello\r\n0\r\n\r\n"]
        got, secs, how = await raw(proxy.portno, None, pieces=pieces, delay=0.2, timeout=3)
    else:
        got, secs, how = await raw(proxy.portno, None, pieces=[head, body], delay=0.2, timeout=3)
    await net.close_all()
    del net.transports[:]  # they hold the proxy's protocol, hence its backend connection's Deferred
    await harness.sleep(0.05)
    gc.collect()  # an unhandled error in a Deferred is logged now, in this test, not in a later one
    assert got, "no answer (%s after %.1f s)" % (how, secs)
    assert_error(got, 400)
    assert not origin.requests
    assert line + b"\r\nhello" not in origin.received


@pytest_twisted.ensureDeferred
async def test_filter_hooks_editing_fields_in_place(net):
    """
    A subclass's filterRequest/filterResponse that change a head's fields in
    place (no method, no frame()) still have their change forwarded: a head
    is sent as it came only when nothing could have changed it.
    """
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])

    class Editing(proxy.factory.protocol):
        def filterRequest(self, head):
            head.headers.append([b"X-Hook", b"request"])

        def filterResponse(self, request, response):
            response.headers[0][1] = b"edited"

    proxy.factory.protocol = Editing
    got = await raw(proxy.portno, request_bytes("GET", "/headers", headers=[("Connection", "close")]))
    r = one_response(got[0])
    assert ["X-Hook", "request"] in json.loads(r.body)["headers"]
    assert r.headers[0][1] == "edited", r.headers
