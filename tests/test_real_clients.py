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
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request

import httpx
import pytest
import websockets.asyncio.server
import websockets.sync.client

import procs
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
        found = relay.listening(count)
    except BaseException:
        relay.close()
        raise
    return relay, [a for addresses in found.values() for a in addresses]


def no_traceback(relay):
    text = relay.text()
    assert "Traceback" not in text and "Unhandled Error" not in text, text


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
        no_traceback(relay)
    finally:
        relay.close()


def test_tls_listeners_from_config_and_workers(tmp_path, certs, origin):
    """--config and --workers build their TLS listeners elsewhere (in each worker): ALPN holds there too."""
    key, cert = certs
    config = tmp_path / "relays.toml"
    config.write_text(
        '[relay.plain]\ntype = "tcp"\nlisten = "%s"\nconnect = "%s"\n'
        '[relay.web]\ntype = "http"\nlisten = "%s"\nconnect = "%s"\n'
        % (ssl_listen(certs), origin.tcp, ssl_listen(certs), origin.tcp))
    relay = procs.Twistd(tmp_path, ["--config", str(config)], name="config")
    try:
        found = relay.listening(2)
        check_tls_listener(found["plain"][0], proxy=False)
        check_tls_listener(found["web"][0], proxy=True)
        no_traceback(relay)
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
        no_traceback(relay)
    finally:
        if relay is not None:
            relay.close()
        web.kill()
        web.wait(procs.TIMEOUT)
        tls_origin.close()
