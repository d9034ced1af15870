"""
Real clients through real ``twistd splice`` processes, against real origins.

What a user does in the first hour: curl (when installed), httpx, the
``websockets`` library and Python's ``ssl`` module as clients; Python's
``http.server`` (plain and over TLS), ``twistd web`` and a ``websockets``
server as origins; ``twistd splice tcp|http``, ``--config`` and
``--workers`` as the relays.  Assertions are on what the user relies on:
statuses, body checksums, the negotiated protocol, what reached the origin,
and the session event's byte counts against the metrics and the bytes that
crossed the wire.  A curl case that skips without curl has an httpx or raw
socket twin that always runs.
"""

import asyncio
import hashlib
import http.server
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time

import httpx
import pytest
import websockets.asyncio.server
import websockets.sync.client

import procs
from stress.load import Probe
from test_relay_tcp import make_cert

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed; its httpx/raw-socket twin runs")
ALPN_OFFERS = [["h2", "http/1.1"], ["http/1.1"], ["h2"], None]


def sha(data):
    return hashlib.sha256(data).hexdigest()


# -- origins -------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET /blob/N (Content-Length), /chunked/N, /close/N (close-delimited): N known bytes."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.server.heads.append((self.requestline, {k.lower(): v for k, v in self.headers.items()}))
        kind, _, n = self.path.strip("/").partition("/")
        body = procs.payload(int(n)) if n.isdigit() else b"hello from the origin\n"
        self.send_response(200)
        if kind == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 65536):
                piece = body[i:i + 65536]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif kind == "close":
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args):
        pass


class Origin:
    """Python's http.server on 127.0.0.1 (over TLS with ``context``); ``heads``: (request line, fields)."""

    def __init__(self, context=None):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.heads = []
        if context is not None:
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def heads(self):
        return self.server.heads

    @property
    def tcp(self):
        return "tcp:host=127.0.0.1:port=%d" % self.port

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def origin():
    o = Origin()
    yield o
    o.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_cert(tmp_path_factory.mktemp("certs"))


def ssl_listen(certs):
    key, cert = certs
    return "ssl:0:interface=127.0.0.1:privateKey=%s:certKey=%s" % (key, cert)


def start(tmp_path, args, name="relay", count=1, tool="twistd"):
    """A ``twistd splice`` process and its listening addresses, in order."""
    relay = procs.Twistd(tmp_path, args, name=name, tool=tool)
    try:
        if tool == "twist":  # a JSON log
            where = [procs.address(e["address"]) for e in listening_events(relay, "relay", count)]
        else:
            where = [a for addresses in relay.listening(count).values() for a in addresses]
    except BaseException:
        relay.close()
        raise
    relay.baseline = Probe(relay.proc.pid).fds()[0]
    return relay, where


def listening_events(relay, what, count=1):
    """The "{what} {name} listening on {address}" events of a ``twist`` process."""
    deadline = time.monotonic() + procs.TIMEOUT
    while True:
        found = [e for e in relay.events() if e.get("what") == what and "address" in e]
        if len(found) >= count or time.monotonic() > deadline or relay.proc.poll() is not None:
            assert len(found) >= count, relay.text()
            return found
        time.sleep(0.05)


def no_traceback(relay):
    text = relay.text()
    assert "Traceback" not in text and "Unhandled Error" not in text, text


def healthy(relay):
    """
    After the clients are gone: no traceback, every socket the sessions
    used closed (descriptors back to the count after start-up, pipes
    aside), and no CPU while idle.
    """
    no_traceback(relay)
    probe, deadline = Probe(relay.proc.pid), time.monotonic() + 3.0
    while probe.fds()[0] > relay.baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    left = os.listdir("/proc/%d/fd" % relay.proc.pid)
    assert probe.fds()[0] <= relay.baseline, (relay.baseline, left)
    before = probe.cpu()
    time.sleep(0.5)
    assert probe.cpu() - before < 0.05, "busy while idle"


# -- item 2: TLS listeners and ALPN ------------------------------------------


def tls_get(where, offer, path="/"):
    """GET over TLS with Python's ssl offering ALPN ``offer``: (selected protocol, status line, body)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    if offer is not None:
        context.set_alpn_protocols(offer)
    with socket.create_connection(where, timeout=procs.TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as s:
            selected = s.selected_alpn_protocol()
            s.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % path.encode())
            data = procs.recv_all(s)
    head, _, body = data.partition(b"\r\n\r\n")
    return selected, head.split(b"\r\n")[0], body


def check_tls_listener(where, proxy, path="/blob/100000"):
    """Every ALPN offer is served; the HTTP proxy selects http/1.1, the TCP relay nothing."""
    want = procs.payload(100000)
    for offer in ALPN_OFFERS:
        selected, status, body = tls_get(where, offer, path)
        assert status == b"HTTP/1.1 200 OK" and sha(body) == sha(want), (offer, status)
        assert selected == ("http/1.1" if proxy and offer and "http/1.1" in offer else None), (offer, selected)
    r = httpx.get("https://%s:%d%s" % (where[0], where[1], path), verify=False, timeout=procs.TIMEOUT)
    assert r.status_code == 200 and sha(r.content) == sha(want)
    assert r.http_version == "HTTP/1.1"
    if CURL:
        for flags in ([], ["--http1.1"], ["--no-alpn"]):
            p = subprocess.run([CURL, "-sSk", *flags, "https://%s:%d%s" % (where[0], where[1], path)],
                               capture_output=True, timeout=procs.TIMEOUT)
            assert p.returncode == 0 and sha(p.stdout) == sha(want), (flags, p.stderr)


@pytest.mark.parametrize("kind", ["tcp", "http"])
def test_tls_listener_serves_alpn_clients(tmp_path, certs, origin, kind):
    """Twisted 26.10 answered every ALPN offer with internal_error: no HTTPS client could connect."""
    relay, (where,) = start(tmp_path, [kind, "--listen", ssl_listen(certs), "--connect", origin.tcp])
    try:
        check_tls_listener(where, proxy=kind == "http")
        healthy(relay)
    finally:
        relay.close()


def test_tls_listeners_from_config_and_workers(tmp_path, certs, origin):
    """--config and --workers build their TLS listeners elsewhere (in each worker): ALPN holds there too."""
    key, cert = certs
    config = tmp_path / "relays.toml"
    config.write_text(
        '[relay.plain]\ntype = "tcp"\nlisten = "%s"\nconnect = "%s"\n'
        '[relay.web]\ntype = "http"\nlisten = "%s"\nconnect = "%s"\nblock-path = ["/admin/*"]\n'
        % (ssl_listen(certs), origin.tcp, ssl_listen(certs), origin.tcp))
    relay = procs.Twistd(tmp_path, ["--config", str(config)], name="config")
    try:
        found = relay.listening(2)
        relay.baseline = Probe(relay.proc.pid).fds()[0]
        check_tls_listener(found["plain"][0], proxy=False)
        check_tls_listener(found["web"][0], proxy=True)
        r = httpx.get("https://%s:%d/admin/x" % found["web"][0], verify=False, timeout=procs.TIMEOUT)
        assert r.status_code == 403  # a shorthand in a config file answers too
        healthy(relay)
    finally:
        relay.close()
    relay, (where,) = start(tmp_path, ["--workers", "2", "http", "--listen", ssl_listen(certs),
                                       "--connect", origin.tcp], name="workers")
    try:
        for _ in range(3):  # whichever worker accepts
            check_tls_listener(where, proxy=True)
    finally:
        relay.close()


def test_tls_origin_and_twisted_web_origin_through_tls_listener(tmp_path, certs):
    """A TLS origin (http.server over ssl) and ``twistd web``, each behind an ssl: HTTP proxy."""
    key, cert = certs
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    tls_origin = Origin(context)
    roots = tmp_path / "roots"
    roots.mkdir()
    shutil.copy(str(cert), str(roots / "origin.pem"))
    site = tmp_path / "site"
    site.mkdir()
    data = procs.payload(3 << 20, seed=7)
    (site / "file.bin").write_bytes(data)
    web_port = procs.free_port()
    web = subprocess.Popen(procs.twistd_command() + ["-n", "--pidfile=", "web", "--listen",
                           "tcp:%d:interface=127.0.0.1" % web_port, "--path", str(site)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=str(tmp_path))
    relay = None
    try:
        config = tmp_path / "two.toml"
        config.write_text(
            '[relay.tls]\ntype = "http"\nlisten = "%s"\nconnect = "tls:host=127.0.0.1:port=%d:trustRoots=%s"\n'
            '[relay.web]\ntype = "http"\nlisten = "%s"\nconnect = "tcp:host=127.0.0.1:port=%d"\n'
            % (ssl_listen(certs), tls_origin.port, roots, ssl_listen(certs), web_port))
        relay = procs.Twistd(tmp_path, ["--config", str(config)], name="two")
        found = relay.listening(2)
        relay.baseline = Probe(relay.proc.pid).fds()[0]
        to_tls, to_web = found["tls"][0], found["web"][0]
        check_tls_listener(to_tls, proxy=True)
        deadline = time.monotonic() + procs.TIMEOUT
        while True:  # twistd web starts in its own time
            try:
                r = httpx.get("https://%s:%d/file.bin" % to_web, verify=False, timeout=procs.TIMEOUT)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert r.status_code == 200 and sha(r.content) == sha(data)
        healthy(relay)
    finally:
        if relay is not None:
            relay.close()
        web.kill()
        web.wait(procs.TIMEOUT)
        tls_origin.close()


# -- plain HTTP: one proxy process per test -------------------------------------


PLAIN = "tcp:0:interface=127.0.0.1"


def proxy(tmp_path, origin_tcp, *options, tool="twistd", listen=PLAIN):
    return start(tmp_path, ["http", "--listen", listen, "--connect", origin_tcp, *options], tool=tool)


def read_response(sock):
    """(status line, {field: value}, body, raw bytes) of one Content-Length response; b"" status if closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            return b"", {}, b"", data
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    want = int(fields.get(b"content-length", b"0"))
    while len(body) < want:
        more = sock.recv(65536)
        if not more:
            break
        body += more
    return lines[0], fields, body, data[:len(head) + 4] + body


def curl(*args):
    p = subprocess.run([CURL, "-sS", *args], capture_output=True, timeout=procs.TIMEOUT)
    return p.returncode, p.stdout, p.stderr


# -- item 4: Upgrade: h2c -------------------------------------------------------

H2C = (b"GET /blob/5000 HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8\r\nAccept: */*\r\n"
       b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n")


def test_h2c_offer_is_dropped_and_answered_over_http11(tmp_path, origin):
    """curl --http2 got 403; nginx and HAProxy withdraw the offer and answer over HTTP/1.1."""
    relay, (where,) = proxy(tmp_path, origin.tcp)
    try:
        with procs.connect(where) as s:
            s.sendall(H2C)
            status, fields, body, _ = read_response(s)
        assert status == b"HTTP/1.1 200 OK" and sha(body) == sha(procs.payload(5000))
        line, seen = origin.heads[-1]
        assert line == "GET /blob/5000 HTTP/1.1"
        assert not {"upgrade", "http2-settings", "connection"} & set(seen), seen
        if CURL:
            rc, out, err = curl("--http2", "-w", "\n%{http_version} %{http_code}", "http://%s:%d/blob/5000" % where)
            body, _, tail = out.rpartition(b"\n")
            assert rc == 0 and tail == b"1.1 200" and sha(body) == sha(procs.payload(5000)), err
            assert "upgrade" not in origin.heads[-1][1]
        healthy(relay)
    finally:
        relay.close()


# -- item 5: error pages --------------------------------------------------------


def get_raw(where, path):
    with procs.connect(where) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n" % path.encode())
        return read_response(s)


def test_block_path_answers_403(tmp_path, origin):
    """--block-path closed the connection without a word (curl: Empty reply from server)."""
    relay, (where,) = proxy(tmp_path, origin.tcp, "--block-path", "/admin/*")
    try:
        r = httpx.get("http://%s:%d/admin/x" % where, timeout=procs.TIMEOUT)
        assert r.status_code == 403 and 0 < len(r.content) < 2048 and b"403" in r.content
        r = httpx.get("http://%s:%d/blob/10" % where, timeout=procs.TIMEOUT)
        assert r.status_code == 200 and r.content == procs.payload(10)
        if CURL:
            rc, out, err = curl("-o", "/dev/null", "-w", "%{http_code}", "http://%s:%d/admin/x" % where)
            assert (rc, out) == (0, b"403"), err
        assert [line for line, _ in origin.heads] == ["GET /blob/10 HTTP/1.1"]
        healthy(relay)
    finally:
        relay.close()


@pytest.mark.parametrize("options, answered", [
    ([], False),                                    # relayd: no 'return error', a silent close
    (["--error-pages", "on"], True),
    (["--error-pages", "off", "--block-path", "/other/*"], False),
], ids=["auto", "on", "off"])
def test_error_pages_switch(tmp_path, origin, options, answered):
    """A rules file keeps relayd's meaning of 'return error'; --error-pages on|off overrides it and the shorthands."""
    rules = tmp_path / "rules"
    rules.write_text('block request path "/admin/*"\n')
    relay, (where,) = proxy(tmp_path, origin.tcp, "--rules", str(rules), *options)
    try:
        for path in ["/admin/x"] + (["/other/y"] if "/other/*" in options else []):
            status, _, _, raw = get_raw(where, path)
            assert (status == b"HTTP/1.1 403 Forbidden") if answered else raw == b"", (path, raw)
        assert origin.heads == []
        healthy(relay)
    finally:
        relay.close()


# -- item 6: a GET body never reaches the origin ---------------------------------


def test_get_body_is_refused_not_smuggled(tmp_path, origin):
    """http.server ignores a GET's Content-Length: the body was read as a second, unfiltered request."""
    inner = b"GET /admin/secret HTTP/1.1\r\nHost: localhost\r\n\r\n"
    relay, (where,) = proxy(tmp_path, origin.tcp, "--block-path", "/admin/*")
    try:
        with procs.connect(where) as s:
            s.sendall(b"GET /blob/10 HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s" % (len(inner), inner))
            status, _, body, _ = read_response(s)
            assert status == b"HTTP/1.1 400 Bad Request" and b"GET with a body" in body
            assert procs.recv_all(s) == b""  # then closed
        r = httpx.request("HEAD", "http://%s:%d/blob/10" % where, content=b"x" * 30, timeout=procs.TIMEOUT)
        assert r.status_code == 400
        r = httpx.get("http://%s:%d/blob/10" % where, headers={"Content-Length": "0"}, timeout=procs.TIMEOUT)
        assert r.status_code == 200 and r.content == procs.payload(10)
        time.sleep(0.2)
        assert [line for line, _ in origin.heads] == ["GET /blob/10 HTTP/1.1"]
        healthy(relay)
    finally:
        relay.close()


# -- item 7: relayd's rules mean the same ----------------------------------------


def test_relayd_rules_url_value_and_cookie_case(tmp_path, origin):
    """relayd's regress writes 'url KEY value "*"' (refused at start-up here); cookie values fold case."""
    rules = tmp_path / "relayd.rules"
    rules.write_text('return error\n'
                     'block request url "foo.bar/3" value "*" label "url"\n'
                     'block request cookie "theme" value "dark" label "cookie"\n')
    relay, (where,) = proxy(tmp_path, origin.tcp, "--rules", str(rules))
    base = "http://%s:%d" % where
    try:
        with httpx.Client(timeout=procs.TIMEOUT) as client:
            r = client.get(base + "/3", headers={"Host": "foo.bar"})
            assert r.status_code == 403 and b"url" in r.content
            assert client.get(base + "/4", headers={"Host": "foo.bar"}).status_code == 200
            r = client.get(base + "/blob/1", headers={"Cookie": "a=1; theme=DARK"})
            assert r.status_code == 403 and b"cookie" in r.content
            assert client.get(base + "/blob/1", headers={"Cookie": "theme=light"}).status_code == 200
        assert [line for line, _ in origin.heads] == ["GET /4 HTTP/1.1", "GET /blob/1 HTTP/1.1"]
        healthy(relay)
    finally:
        relay.close()


# -- item 8: the session event's counts ------------------------------------------


def session_events(relay, count):
    """The first ``count`` "http session ended" events of a ``twist`` process (JSON log)."""
    deadline = time.monotonic() + procs.TIMEOUT
    while True:
        found = [e for e in relay.events() if e.get("log_format", "").startswith("http session ended")]
        if len(found) >= count:
            return found
        if time.monotonic() > deadline or relay.proc.poll() is not None:
            raise AssertionError("%d session events of %d:\n%s" % (len(found), count, relay.text()))
        time.sleep(0.05)


def moved(relay):
    """The metrics' bytes per direction, summed over paths."""
    from test_relay_tcp import scrape

    where = procs.address(listening_events(relay, "metrics")[0]["address"])
    samples = scrape(where)
    out = {}
    for (name, labels), value in samples.items():
        if name == "splicing_bytes_total":
            direction = dict(labels)["direction"]
            out[direction] = out.get(direction, 0) + int(value)
    return out


def counting_proxy(tmp_path, origin_tcp, *options, listen=PLAIN):
    return proxy(tmp_path, origin_tcp, "--metrics", PLAIN, *options, tool="twist", listen=listen)


class WebSocketEcho:
    """A ``websockets`` echo server in its own thread and loop."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        async def echo(ws):
            async for message in ws:
                await ws.send(message)

        async def main():
            self.server = await websockets.asyncio.server.serve(echo, "127.0.0.1", 0, max_size=None)
            self.port = self.server.sockets[0].getsockname()[1]
            started.set()
            await self.server.wait_closed()

        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(main(),), daemon=True)
        self.thread.start()
        assert started.wait(procs.TIMEOUT)

    def close(self):
        self.loop.call_soon_threadsafe(self.server.close)
        self.thread.join(procs.TIMEOUT)


def test_websocket_session_counts_both_ways(tmp_path):
    """1,000,000 bytes echoed each way were logged as one direction's total with spliced_in 0."""
    server = WebSocketEcho()
    relay, (where,) = counting_proxy(tmp_path, "tcp:host=127.0.0.1:port=%d" % server.port, "--websockets")
    try:
        message = os.urandom(100000)
        with websockets.sync.client.connect("ws://%s:%d/echo" % where, max_size=None, compression=None) as ws:
            for _ in range(10):
                ws.send(message)
                assert sha(ws.recv()) == sha(message)
        (event,) = session_events(relay, 1)
        assert event["bytes_out"] > 1000000 and event["bytes_in"] > 1000000, event
        assert event["spliced_in"] >= 1000000 and event["spliced_out"] >= 1000000, event
        assert moved(relay) == {"out": event["bytes_out"], "in": event["bytes_in"]}
        assert event["relay"] == "http" and event["backend"] == "127.0.0.1:%d" % server.port
        assert event["target"] == "tcp:host=127.0.0.1:port=%d" % server.port
        healthy(relay)
    finally:
        relay.close()
        server.close()


UPGRADE = (b"GET /tunnel HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
CONNECT = b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n"
ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"
TUNNELS = {"upgrade": (UPGRADE, SWITCHING, "--websockets"), "connect": (CONNECT, ESTABLISHED, "--connect-method")}
TUNNELED = 3 << 20


def tunnel_origin(answer, close_after=None):
    """Answer a tunnel's head with ``answer``, then echo: until EOF, or ``close_after`` bytes and close."""
    def handler(sock, backend):
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        sock.sendall(answer)
        left = close_after
        while left is None or left > 0:
            data = sock.recv(65536 if left is None else min(65536, left))
            if not data:
                return
            sock.sendall(data)
            left = None if left is None else left - len(data)
    return handler


@pytest.mark.parametrize("first", ["client", "origin"])
@pytest.mark.parametrize("kind", ["upgrade", "connect"])
def test_tunnel_counts_are_the_wire_bytes(tmp_path, kind, first):
    """Exact per-direction counts for an upgraded or CONNECT tunnel, whichever side ends it."""
    request, answer, option = TUNNELS[kind]
    backend = procs.Backend(tunnel_origin(answer, TUNNELED if first == "origin" else None))
    relay, (where,) = counting_proxy(tmp_path, backend.tcp, option)
    data = procs.payload(TUNNELED, seed=5)
    try:
        with procs.connect(where) as s:
            s.sendall(request)
            assert procs.recv_all(s, len(answer)) == answer
            sender = threading.Thread(target=s.sendall, args=(data,))
            sender.start()
            echoed = procs.recv_all(s, len(data))
            sender.join(procs.TIMEOUT)
            assert sha(echoed) == sha(data)
            if first == "client":
                s.shutdown(socket.SHUT_WR)
            assert procs.recv_all(s) == b""  # the other side's end reaches the client
        (event,) = session_events(relay, 1)
        assert (event["bytes_out"], event["bytes_in"]) == (len(request) + len(data), len(answer) + len(data)), event
        assert event["spliced_in"] + event["spliced_out"] == event["spliced"] >= 2 * len(data) - 2 * 65536, event
        assert moved(relay) == {"out": event["bytes_out"], "in": event["bytes_in"]}
        healthy(relay)
    finally:
        relay.close()
        backend.close()


def dechunk(body):
    out, rest = b"", body
    while True:
        size, _, rest = rest.partition(b"\r\n")
        n = int(size, 16)
        if not n:
            return out
        out, rest = out + rest[:n], rest[n + 2:]


@pytest.mark.parametrize("listener", ["tcp", "tls"])
@pytest.mark.parametrize("kind", ["blob", "chunked", "close"])
def test_body_counts_are_the_wire_bytes(tmp_path, certs, origin, kind, listener):
    """Content-Length, chunked and close-delimited responses: bytes_in is what the client read."""
    relay, (where,) = counting_proxy(tmp_path, origin.tcp, listen=ssl_listen(certs) if listener == "tls" else PLAIN)
    request = b"GET /%s/2000000 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % kind.encode()
    try:
        s = procs.connect(where)
        if listener == "tls":
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            s = context.wrap_socket(s, server_hostname="localhost")
        with s:
            s.sendall(request)
            got = procs.recv_all(s)
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert sha(dechunk(body) if kind == "chunked" else body) == sha(procs.payload(2000000))
        (event,) = session_events(relay, 1)
        assert (event["bytes_out"], event["bytes_in"]) == (len(request), len(got)), event
        assert moved(relay) == {"out": len(request), "in": len(got)}
        healthy(relay)
    finally:
        relay.close()
