"""
HTTP load for L{benchmarks.http_throughput}: a raw-socket origin, a
raw-socket client, and the two HTTP proxies under test, each meant to run
in its own process.

    python -m benchmarks._httpload origin
        Listen on 127.0.0.1 (free port), print C{PORT <n>}; a thread per
        connection, keep-alive.  C{GET /dl/N} sends N body bytes from a
        preallocated 1 MiB buffer with Content-Length, C{GET /dl/N?chunked}
        as 1 MiB chunks, C{?chunked=K} as chunks of K bytes (at most 1 MiB;
        close-delimited to an HTTP/1.0 request, which cannot
        take chunked); C{POST /ul} counts the body (Content-Length or chunked)
        and answers C{{"bytes": n}}; C{GET /small} answers 1 KiB.

    python -m benchmarks._httpload client dl|ul|small --port P [--bytes N] [--chunked [--chunk-size K]]
                                                           [--seconds S]
        One run; prints one JSON line (bytes, secs, requests, error).

    python -m benchmarks._httpload proxy --listen P --connect R
        The project's HTTPProxyFactory (bodies spliced).

    python -m benchmarks._httpload reverseproxy --listen P --connect R
        twisted.web.proxy.ReverseProxyResource in a Site (the reference).

Every body byte moves with one system call per MiB (C{send} of a memoryview,
C{recv_into} a fixed buffer), so the load processes cost little per byte.
"""

import argparse
import json
import socket
import struct
import sys
import threading
import time

CHUNK = 1 << 20
SMALL = b"s" * 1024
IO_TIMEOUT = 10


def _timeouts(sock, seconds=IO_TIMEOUT):
    tv = struct.pack("ll", seconds, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


class Reader:
    """Buffered reads of heads and chunk-size lines; bodies go through ``recv_into``."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.big = bytearray(CHUNK)
        self.view = memoryview(self.big)

    def _fill(self):
        b = self.sock.recv(65536)
        if not b:
            raise EOFError("connection closed")
        self.buf += b

    def line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return out
            self._fill()

    def head(self):
        """(start line, {lower name: value}) or None at a clean EOF."""
        while b"\r\n\r\n" not in self.buf:
            try:
                self._fill()
            except EOFError:
                if not self.buf:
                    return None
                raise
        i = self.buf.index(b"\r\n\r\n")
        lines = bytes(self.buf[:i]).decode("latin-1").split("\r\n")
        del self.buf[:i + 4]
        headers = {}
        for l in lines[1:]:
            k, v = l.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        return lines[0], headers

    def skip(self, n):
        """Read and drop exactly n bytes; returns n."""
        take = min(n, len(self.buf))
        del self.buf[:take]
        left = n - take
        while left:
            got = self.sock.recv_into(self.view, min(left, CHUNK))
            if not got:
                raise EOFError("EOF with %d body bytes missing" % left)
            left -= got
        return n

    def until_eof(self):
        n = len(self.buf)
        self.buf.clear()
        while True:
            got = self.sock.recv_into(self.view, CHUNK)
            if not got:
                return n
            n += got

    def chunked(self):
        total = 0
        while True:
            size = int(self.line().split(b";")[0], 16)
            if not size:
                while self.line():
                    pass
                return total
            total += self.skip(size)
            if self.line() != b"":
                raise ValueError("bad chunk end")

    def body(self, headers, eof_ok=False):
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return self.chunked()
        if "content-length" in headers:
            return self.skip(int(headers["content-length"]))
        if eof_ok:
            return self.until_eof()
        return 0


def send_body(sock, n, chunk, view):
    """n bytes from the 1 MiB ``view``: raw (``chunk`` 0), or as chunks of ``chunk`` bytes."""
    left = n
    while left:
        k = min(left, chunk or CHUNK)
        if chunk:
            sock.sendmsg([b"%x\r\n" % k, view[:k], b"\r\n"])
        else:
            sock.sendall(view[:k])
        left -= k
    if chunk:
        sock.sendall(b"0\r\n\r\n")


# -- origin ------------------------------------------------------------------


def chunkSize(query):
    """The chunk size a download asks for: 0 (Content-Length), 1 MiB for ``chunked``, K for ``chunked=K``."""
    name, _, value = query.partition("=")
    if name != "chunked":
        return 0
    return min(int(value), CHUNK) if value else CHUNK


def _serve(conn, view):
    _timeouts(conn, 60)
    r = Reader(conn)
    try:
        while True:
            got = r.head()
            if got is None:
                return
            start, headers = got
            method, target, version = start.split(" ")
            close = version == "HTTP/1.0" or headers.get("connection", "").lower() == "close"
            if method == "POST":
                n = r.body(headers)
                body = json.dumps({"bytes": n}).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s"
                             % (len(body), b"Connection: close\r\n" if close else b"", body))
            elif target.startswith("/dl/"):
                path, _, query = target.partition("?")
                n = int(path[4:])
                chunk = chunkSize(query)
                if chunk and version == "HTTP/1.0":
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
                    send_body(conn, n, 0, view)
                    return
                if chunk:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n%s\r\n"
                                 % (b"Connection: close\r\n" if close else b""))
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n"
                                 % (n, b"Connection: close\r\n" if close else b""))
                send_body(conn, n, chunk, view)
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s"
                             % (len(SMALL), b"Connection: close\r\n" if close else b"", SMALL))
            if close:
                return
    except (OSError, EOFError, ValueError):
        return
    finally:
        conn.close()


def origin():
    view = memoryview(bytearray(b"o" * CHUNK))
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    print("PORT %d" % s.getsockname()[1], flush=True)
    while True:
        conn, _ = s.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_serve, args=(conn, view), daemon=True).start()


# -- client ------------------------------------------------------------------


def client(args):
    s = socket.create_connection(("127.0.0.1", args.port), timeout=IO_TIMEOUT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _timeouts(s)
    r = Reader(s)
    out = {"bytes": 0, "requests": 0, "error": None}
    t0 = time.monotonic()
    try:
        if args.what == "dl":
            s.sendall(b"GET /dl/%d%s HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
                      % (args.bytes, b"?chunked=%d" % args.chunk_size if args.chunked else b""))
            start, headers = r.head()
            if " 200 " not in start + " ":
                raise ValueError("status %r" % start)
            out["bytes"] = r.body(headers, eof_ok=True)
            out["requests"] = 1
        elif args.what == "ul":
            view = memoryview(bytearray(b"u" * CHUNK))
            framing = (b"Transfer-Encoding: chunked" if args.chunked else b"Content-Length: %d" % args.bytes)
            s.sendall(b"POST /ul HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n%s\r\n\r\n" % framing)
            send_body(s, args.bytes, args.chunk_size if args.chunked else 0, view)
            start, headers = r.head()
            body = bytes(r.buf[:int(headers.get("content-length", "0"))]) if "content-length" in headers else b""
            while len(body) < int(headers.get("content-length", "0")):
                r._fill()
                body = bytes(r.buf[:int(headers["content-length"])])
            if " 200 " not in start + " ":
                raise ValueError("status %r: %r" % (start, body[:200]))
            out["bytes"] = json.loads(body)["bytes"]
            out["requests"] = 1
        else:
            req = b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n"
            end = t0 + args.seconds
            n = 0
            while time.monotonic() < end:
                s.sendall(req)
                start, headers = r.head()
                r.skip(int(headers["content-length"]))
                n += 1
            out["requests"] = n
            out["bytes"] = n * len(SMALL)
    except Exception as e:  # reported, not raised: the driver decides
        out["error"] = "%s: %s" % (type(e).__name__, e)
    finally:
        s.close()
    out["secs"] = time.monotonic() - t0
    print(json.dumps(out), flush=True)


# -- proxies -----------------------------------------------------------------


def proxy(args):
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint

    from splicing.http.proxy import HTTPProxyFactory, HTTPProxyProtocol

    class Quiet(HTTPProxyProtocol):
        def sessionEnded(self, stats):
            pass

    f = HTTPProxyFactory([TCP4ClientEndpoint(reactor, "127.0.0.1", args.connect)], backendTimeout=120)
    f.protocol = Quiet
    f.noisy = False
    port = reactor.listenTCP(args.listen, f, interface="127.0.0.1", backlog=128)
    print("LISTENING %d" % port.getHost().port, flush=True)
    reactor.run()


def reverseproxy(args):
    from twisted.internet import reactor
    from twisted.web import proxy as webproxy
    from twisted.web import server

    site = server.Site(webproxy.ReverseProxyResource("127.0.0.1", args.connect, b""))
    site.log = lambda *a, **kw: None
    port = reactor.listenTCP(args.listen, site, interface="127.0.0.1", backlog=128)
    print("LISTENING %d" % port.getHost().port, flush=True)
    reactor.run()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks._httpload")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("origin")
    c = sub.add_parser("client")
    c.add_argument("what", choices=["dl", "ul", "small"])
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--bytes", type=int, default=CHUNK)
    c.add_argument("--chunked", action="store_true")
    c.add_argument("--chunk-size", type=int, default=CHUNK, help="bytes per chunk (1 MiB, at most 1 MiB)")
    c.add_argument("--seconds", type=float, default=3.0)
    for name in ("proxy", "reverseproxy"):
        x = sub.add_parser(name)
        x.add_argument("--listen", type=int, required=True)
        x.add_argument("--connect", type=int, required=True)
    args = p.parse_args(argv)
    if args.cmd == "client" and not 0 < args.chunk_size <= CHUNK:
        p.error("--chunk-size must be from 1 to %d, not %d" % (CHUNK, args.chunk_size))
    if args.cmd == "origin":
        origin()
    elif args.cmd == "client":
        client(args)
    elif args.cmd == "proxy":
        proxy(args)
    else:
        reverseproxy(args)


if __name__ == "__main__":
    sys.exit(main())
