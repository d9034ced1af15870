"""
Origins, clients and the proxy under test for tests/test_http_proxy.py.

Everything listens on 127.0.0.1 through ``harness.Net`` (so the ``net``
fixture closes it and checks that no descriptor leaked):

- ``WebOrigin``: a ``twisted.web`` Site with resources for fixed bodies
  (Content-Length), streamed bodies (``request.write``: twisted.web sends
  them chunked), echo of uploads with SHA-256, request-head echo (JSON),
  HEAD/204/304 and a never-answering resource; it counts connections,
  rendered requests and every byte it received, so a test can prove that a
  refused request never reached it.
- ``RawOrigin``: a tiny Protocol answering each request head with whatever
  the test wants (canned bytes, exact chunk framing, a 101 or CONNECT 200
  followed by an echo, an invalid head, a close-delimited body).
- ``ThreadedOrigin``: ``http.server.ThreadingHTTPServer`` in a thread.
- ``Proxy``: ``HTTPProxyFactory`` listening, with ``sessionEnded`` stats
  recorded.
- clients: raw sockets, ``http.client`` and ``urllib`` run in threads
  (``deferToThread``), ``treq`` in the reactor.
"""

import hashlib
import http.client
import http.server
import json
import random
import socket
import threading
import time

from twisted.internet import protocol, reactor, threads
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.web import resource, server
from zope.interface import implementer

import harness
from splicing.http.proxy import HTTPProxyFactory, HTTPProxyProtocol

MiB = 1 << 20
IO_TIMEOUT = 10.0

_blobs = {}


def blob(n):
    """``n`` deterministic pseudo-random bytes (cached: big ones are reused)."""
    data = _blobs.get(n)
    if data is None:
        data = random.Random(n).randbytes(n)
        _blobs[n] = data
    return data


def sha(data):
    return hashlib.sha256(data).hexdigest()


def _track(net, proto):
    """Add the transport ``proto`` gets to ``net`` (closed and checked at teardown)."""
    make = proto.makeConnection

    def makeConnection(transport):
        net.transports.append(transport)
        make(transport)

    proto.makeConnection = makeConnection
    return proto


def _recordBytes(owner, proto):
    """Count (and keep, up to a bound) every byte an origin connection receives."""
    received = proto.dataReceived

    def dataReceived(data):
        owner.received_bytes += len(data)
        if len(owner.received) < 1 << 16:
            owner.received += data[: (1 << 16) - len(owner.received)]
        received(data)

    proto.dataReceived = dataReceived
    return proto


# -- origins -----------------------------------------------------------------


class _OriginResource(resource.Resource):
    isLeaf = True

    def __init__(self, origin):
        super().__init__()
        self.origin = origin

    def render(self, request):
        o = self.origin
        body = request.content.read()
        headers = [[k.decode("latin-1"), v.decode("latin-1")]
                   for k, vs in request.requestHeaders.getAllRawHeaders() for v in vs]
        o.requests.append({"method": request.method.decode(), "uri": request.uri.decode("latin-1"),
                           "headers": headers, "length": len(body), "sha": sha(body),
                           "clientproto": request.clientproto.decode()})
        parts = request.path.decode().strip("/").split("/")
        kind = parts[0]
        request.setHeader(b"X-Origin", o.name.encode())
        if kind == "fixed":  # /fixed/N: N bytes, Content-Length
            return blob(int(parts[1]))
        if kind == "stream":  # /stream/SIZE/COUNT: COUNT writes of SIZE bytes (chunked)
            size, count = int(parts[1]), int(parts[2])
            piece = blob(size)
            for _ in range(count):
                request.write(piece)
            request.finish()
            return server.NOT_DONE_YET
        if kind == "echo":  # the upload, back, with its digest in a header
            request.setHeader(b"X-Body-Sha256", sha(body).encode())
            request.setHeader(b"X-Body-Length", b"%d" % len(body))
            return body
        if kind == "sha":  # just the digest of the upload
            return json.dumps({"length": len(body), "sha": sha(body)}).encode()
        if kind == "headers":  # the request as the origin saw it
            return json.dumps(o.requests[-1]).encode()
        if kind == "status":  # /status/204, /status/304
            request.setResponseCode(int(parts[1]))
            return b""
        if kind == "slow":  # never answers
            o.stalled.append(request)
            return server.NOT_DONE_YET
        request.setResponseCode(404)
        return b"no such resource\n"


class _CountingSite(server.Site):
    def __init__(self, origin, net):
        super().__init__(_OriginResource(origin))
        self.origin, self.net = origin, net
        self.log = lambda *a, **kw: None  # no access log noise
        self.noisy = False

    def buildProtocol(self, addr):
        self.origin.connections += 1
        p = super().buildProtocol(addr)
        return _recordBytes(self.origin, _track(self.net, p))


class WebOrigin:
    """A twisted.web origin in this reactor."""

    def __init__(self, net, name="web"):
        self.name = name
        self.connections = 0
        self.requests = []
        self.received = b""
        self.received_bytes = 0
        self.stalled = []
        self.site = _CountingSite(self, net)
        self.port = net.listen(self.site)
        self.portno = self.port.getHost().port

    def endpoint(self):
        return TCP4ClientEndpoint(reactor, "127.0.0.1", self.portno, timeout=5)

    def untouched(self):
        """No connection, no byte: the origin never saw the request."""
        return self.connections == 0 and self.received_bytes == 0 and not self.requests


@implementer(IHalfCloseableProtocol)
class _RawOriginProtocol(protocol.Protocol):
    """Reads request heads; ``origin.handler(self, head)`` answers each."""

    def connectionMade(self):
        self.buf = b""
        self.echo = False
        self.origin.protos.append(self)

    def dataReceived(self, data):
        if self.echo:
            self.transport.write(data)
            return
        self.buf += data
        while not self.echo and not self.transport.disconnecting and b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            self.origin.heads.append(head + b"\r\n\r\n")
            self.origin.handler(self, head + b"\r\n\r\n")
        if self.echo and self.buf:
            data, self.buf = self.buf, b""
            self.transport.write(data)

    def startEcho(self):
        self.echo = True

    def readConnectionLost(self):
        self.origin.half_closed += 1
        if self.origin.on_eof is not None:
            self.origin.on_eof(self)
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.origin.closed += 1


class RawOrigin:
    """
    An origin of canned answers.  ``handler(proto, head)`` writes the answer
    to one request head (use ``proto.transport``; ``proto.startEcho()`` echoes
    everything after).  ``on_eof(proto)``: what to do on the client's
    half-close (default: close).
    """

    def __init__(self, net, handler, on_eof=None):
        self.handler = handler
        self.on_eof = on_eof
        self.heads = []
        self.protos = []
        self.connections = 0
        self.half_closed = 0
        self.closed = 0
        self.received = b""
        self.received_bytes = 0
        origin = self

        class F(protocol.Factory):
            noisy = False

            def buildProtocol(self, addr):
                origin.connections += 1
                p = _RawOriginProtocol()
                p.origin = origin
                p.factory = self
                return _recordBytes(origin, _track(net, p))

        self.port = net.listen(F())
        self.portno = self.port.getHost().port

    def endpoint(self):
        return TCP4ClientEndpoint(reactor, "127.0.0.1", self.portno, timeout=5)

    def untouched(self):
        return self.connections == 0 and self.received_bytes == 0


def canned(response, close=False):
    """A RawOrigin handler writing ``response`` (bytes) and maybe closing."""

    def handler(proto, head):
        proto.transport.write(response)
        if close:
            proto.transport.loseConnection()

    return handler


def chunked_body(sizes, trailers=b"", ext=b""):
    """A chunked body whose chunks have ``sizes`` (the data: blob(sum(sizes)))."""
    data = blob(sum(sizes))
    out, pos = [], 0
    for n in sizes:
        out.append(b"%x%s\r\n" % (n, ext) + data[pos:pos + n] + b"\r\n")
        pos += n
    out.append(b"0\r\n" + trailers + b"\r\n")
    return b"".join(out), data


class ThreadedOrigin:
    """``http.server.ThreadingHTTPServer`` (HTTP/1.1, keep-alive) in a thread."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def _answer(self, body, extra=()):
            self.server.seen.append((self.command, self.path, dict(self.headers)))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self):
            n = int(self.path.rsplit("/", 1)[1]) if self.path.startswith("/fixed/") else 5
            self._answer(blob(n) if self.path.startswith("/fixed/") else b"hello")

        do_HEAD = do_GET

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            self._answer(json.dumps({"length": len(body), "sha": sha(body)}).encode())

    def __init__(self):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self.Handler)
        self.server.daemon_threads = True
        self.server.seen = []
        self.portno = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def endpoint(self):
        return TCP4ClientEndpoint(reactor, "127.0.0.1", self.portno, timeout=5)

    def stop(self):
        def stop():
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(5)
        return threads.deferToThread(stop)


# -- the proxy ---------------------------------------------------------------


class RecordingProxy(HTTPProxyProtocol):
    def sessionEnded(self, stats):
        self.factory.sessions.append(stats)
        super().sessionEnded(stats)


class Proxy:
    """An HTTPProxyFactory listening on 127.0.0.1; ``sessions``: the stats seen."""

    def __init__(self, net, origins, **kw):
        eps = [o.endpoint() if hasattr(o, "endpoint") else o for o in origins]
        groups = kw.pop("groups", None)
        if groups is not None:
            groups = {name: [o.endpoint() if hasattr(o, "endpoint") else o for o in os_]
                      for name, os_ in groups.items()}
        self.factory = HTTPProxyFactory(eps, groups=groups, **kw)
        self.factory.sessions = self.sessions = []
        self.factory.noisy = False
        f = self.factory

        class P(RecordingProxy):
            def makeConnection(self, transport):
                net.transports.append(transport)
                super().makeConnection(transport)

        f.protocol = P
        self.port = net.listen(f)
        self.portno = self.port.getHost().port
        self.url = "http://127.0.0.1:%d" % self.portno

    async def ended(self, n=1, timeout=5.0):
        """Wait until ``n`` sessions ended; return their stats."""
        await harness.wait_until(lambda: len(self.sessions) >= n, timeout, "%d proxy sessions to end" % n)
        return self.sessions


def unused_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# -- clients -----------------------------------------------------------------


def in_thread(f, *a, **kw):
    return threads.deferToThread(f, *a, **kw)


def _sock(port, timeout=IO_TIMEOUT):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def raw_exchange(port, data, timeout=IO_TIMEOUT, shut=False, pieces=None, delay=0.0):
    """
    Send ``data`` (or each of ``pieces``, ``delay`` apart), optionally
    half-close, then read until the proxy closes; returns (bytes, seconds
    until EOF, how it ended: "eof" or "reset" or "timeout").
    """
    t0 = time.monotonic()
    try:
        s = _sock(port, timeout)
    except ConnectionResetError:
        # Reset before connect() returned: a proxy that refuses at accept
        # (--allow) can be that quick; the client saw the same refusal.
        return b"", time.monotonic() - t0, "reset"
    try:
        for i, p in enumerate(pieces if pieces is not None else [data]):
            if i and delay:
                time.sleep(delay)
            try:
                s.sendall(p)
            except OSError:
                break
        if shut:
            s.shutdown(socket.SHUT_WR)
        out = bytearray()
        while True:
            try:
                b = s.recv(1 << 16)
            except socket.timeout:
                return bytes(out), time.monotonic() - t0, "timeout"
            except ConnectionResetError:
                return bytes(out), time.monotonic() - t0, "reset"
            if not b:
                return bytes(out), time.monotonic() - t0, "eof"
            out += b
    finally:
        s.close()


def raw(port, data, **kw):
    return in_thread(raw_exchange, port, data, **kw)


class Response:
    def __init__(self, status, headers, body, version, raw_head):
        self.status, self.headers, self.body, self.version, self.raw_head = (
            status, headers, body, version, raw_head)

    def header(self, name):
        vals = [v for k, v in self.headers if k.lower() == name.lower()]
        return vals[0] if vals else None

    def __repr__(self):
        return "<Response %s %r %d bytes>" % (self.status, self.headers, len(self.body))


def parse_responses(data, methods=None, eof=True):
    """Split a byte stream of HTTP/1.1 responses (bodies decoded); ``methods`` for HEAD."""
    out, pos, i = [], 0, 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            raise AssertionError("incomplete head at %d: %r" % (pos, data[pos:pos + 200]))
        lines = data[pos:end].decode("latin-1").split("\r\n")
        raw_head = data[pos:end + 4]
        version, status = lines[0].split(" ")[:2]
        status = int(status)
        headers = [tuple(x.strip() for x in l.split(":", 1)) for l in lines[1:]]
        hd = {k.lower(): v for k, v in headers}
        pos = end + 4
        method = methods[i] if methods and i < len(methods) else "GET"
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif hd.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                nl = data.index(b"\r\n", pos)
                size = int(data[pos:nl].split(b";")[0], 16)
                pos = nl + 2
                if size == 0:
                    tend = data.index(b"\r\n\r\n", pos - 2) if data[pos:pos + 2] != b"\r\n" else pos
                    pos = tend + 2 if data[pos:pos + 2] == b"\r\n" else tend + 4
                    break
                body += data[pos:pos + size]
                assert data[pos + size:pos + size + 2] == b"\r\n", "bad chunk end"
                pos += size + 2
            body = bytes(body)
        elif "content-length" in hd:
            n = int(hd["content-length"])
            body = data[pos:pos + n]
            assert len(body) == n, "truncated body: %d of %d" % (len(body), n)
            pos += n
        else:
            body, pos = data[pos:], len(data)
        if status >= 200 or status == 101:
            i += 1
        out.append(Response(status, headers, body, version, raw_head))
        if status == 101:
            break
    return out


def one_response(data, method="GET"):
    rs = parse_responses(data, [method])
    assert len(rs) == 1, rs
    return rs[0]


def download(port, target, host="127.0.0.1", chunk=MiB):
    """GET with a raw socket reading the body with recv_into; (status line, headers, length, sha)."""
    s = _sock(port)
    try:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                  % (target.encode(), host.encode()))
        f = s.makefile("rb", buffering=chunk)
        status = f.readline()
        headers = {}
        while True:
            line = f.readline()
            if line in (b"\r\n", b""):
                break
            k, v = line.decode("latin-1").split(":", 1)
            headers[k.strip().lower()] = v.strip()
        h = hashlib.sha256()
        total = 0
        if headers.get("transfer-encoding") == "chunked":
            while True:
                size = int(f.readline().split(b";")[0], 16)
                if not size:
                    while f.readline() not in (b"\r\n", b""):
                        pass
                    break
                left = size
                while left:
                    b = f.read(min(left, chunk))
                    if not b:
                        raise AssertionError("EOF inside a chunk")
                    h.update(b)
                    left -= len(b)
                    total += len(b)
                assert f.read(2) == b"\r\n"
        else:
            buf = bytearray(chunk)
            view = memoryview(buf)
            while True:
                n = f.readinto(view)
                if not n:
                    break
                h.update(view[:n])
                total += n
        return status.decode().strip(), headers, total, h.hexdigest()
    finally:
        s.close()


class Conn:
    """An ``http.client.HTTPConnection`` used from a thread, one call at a time."""

    def __init__(self, port, timeout=IO_TIMEOUT):
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def _request(self, method, url, body=None, headers=None, **kw):
        self.c.request(method, url, body=body, headers=headers or {}, **kw)
        r = self.c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data

    def request(self, *a, **kw):
        return in_thread(self._request, *a, **kw)

    def close(self):
        self.c.close()


def urlopen(url, data=None, headers=None, method=None):
    import urllib.request

    def go():
        req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(req, timeout=IO_TIMEOUT) as r:
                return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()

    return in_thread(go)


async def treq_request(method, url, data=None, headers=None):
    """One request with treq, with its own (closed) connection pool."""
    import treq
    from twisted.web.client import HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    try:
        r = await harness.wait(treq.request(method, url, data=data, headers=headers, pool=pool),
                               what="treq response")
        body = await harness.wait(treq.content(r), what="treq body")
        return r.code, r.headers, body
    finally:
        await pool.closeCachedConnections()


def request_bytes(method="GET", target="/", host="127.0.0.1", headers=(), body=b"", version="HTTP/1.1"):
    lines = ["%s %s %s" % (method, target, version)]
    if host is not None:
        lines.append("Host: %s" % host)
    lines += ["%s: %s" % h for h in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
