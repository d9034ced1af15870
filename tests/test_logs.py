"""
What real twistd relays log: one line per session and none of Twisted's
per-connection chatter (counted line by line), and every failure with its
reason: a backend's certificate that fails verification, a refused backend,
a client without a PROXY header on a C{haproxy:} listener, the rule that
blocked a request.  Counts read "1 request", "1 datagram", "1 byte".
"""

import http.client
import http.server
import re
import socket
import ssl
import threading
import time
import urllib.request

import pytest

import procs
from procs import Backend, connect, recv_all
from test_relay_tcp import make_cert

LOCAL = "tcp:0:interface=127.0.0.1"
#: What Twisted says per port, protocol or factory, which no relay line may be.
CHATTER = re.compile(r"starting on \d+|Starting protocol|Stopping protocol|Port \d+ Closed|"
                     r"Starting factory|Stopping factory")


@pytest.fixture
def start(tmp_path):
    started = []

    def run(args, **kw):
        p = procs.Twistd(tmp_path, args, name="p%d" % len(started), **kw)
        started.append(p)
        return p

    yield run
    for p in started:
        p.close()


def lines(relay):
    return relay.text().splitlines()


def settled(relay, pattern, count, quiet=0.3):
    """The log's lines once ``count`` match ``pattern`` and nothing more came for ``quiet`` seconds."""
    relay.wait_for(pattern, count)
    text = relay.text()
    while True:
        time.sleep(quiet)
        now = relay.text()
        if now == text:
            return now.splitlines()
        text = now


# -- UDP ----------------------------------------------------------------------


@pytest.fixture
def udp_echo():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                data, addr = s.recvfrom(65536)
            except socket.timeout:
                continue
            s.sendto(data, addr)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield s.getsockname()[1]
    stop.set()
    t.join(2)
    s.close()


def test_udp_clients_one_line_each_and_no_twisted_chatter(start, udp_echo):
    """N clients: exactly N more lines, each a session line; a 1-datagram client reads "1 datagram"."""
    relay = start(["udp", "--listen", "udp:0:interface=127.0.0.1", "--connect", "udp:127.0.0.1:%d" % udp_echo,
                   "--idle", "0.5"])
    (port,) = relay.wait_for(r"UDP relay on 127\.0\.0\.1:(\d+) to")
    before = settled(relay, r"UDP relay on", 1)
    n = 40
    clients = []
    for i in range(n):
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.settimeout(5)
        for k in range(1 + i % 2):  # even clients send one datagram, odd ones two
            c.sendto(b"x" * (1 + k), ("127.0.0.1", int(port)))
            assert c.recv(100) == b"x" * (1 + k)
        clients.append(c)
    after = settled(relay, r"udp session ended", n)
    for c in clients:
        c.close()
    added = after[len(before):]
    assert len(added) == n, "\n".join(added)
    assert all("udp session ended: 127.0.0.1:" in line for line in added), "\n".join(added)
    assert not [line for line in after if CHATTER.search(line)]
    one = [line for line in added if "1 datagram / 1 byte out, 1 datagram / 1 byte in" in line]
    two = [line for line in added if "2 datagrams / 3 bytes out, 2 datagrams / 3 bytes in" in line]
    assert (len(one), len(two)) == (n // 2, n // 2), "\n".join(added)


# -- HTTP ---------------------------------------------------------------------


class _Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"hello\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def origin():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield "tcp:host=127.0.0.1:port=%d" % server.server_address[1]
    server.shutdown()
    server.server_close()


def test_http_backend_connections_log_no_factory_lines(start, origin):
    """Each client connection (its own backend connection) is one line: "1 request", "2 requests"."""
    relay = start(["http", "--listen", LOCAL, "--connect", origin])
    (where,) = relay.listening()["http"]
    before = settled(relay, r"try it", 1)
    for _ in range(4):
        with urllib.request.urlopen("http://%s:%d/" % where, timeout=10) as r:
            assert r.read() == b"hello\n"
    c = http.client.HTTPConnection(*where, timeout=10)
    for _ in range(2):
        c.request("GET", "/")
        assert c.getresponse().read() == b"hello\n"
    c.close()
    after = settled(relay, r"http session ended", 5)
    added = after[len(before):]
    assert len(added) == 5, "\n".join(added)
    assert len([line for line in added if " 1 request, " in line]) == 4
    assert len([line for line in added if " 2 requests, " in line]) == 1
    assert not [line for line in added if CHATTER.search(line)]


def test_http_rule_block_says_which_rule(start, origin, tmp_path):
    rules = tmp_path / "rules.conf"
    rules.write_text('return error\nblock request path "/admin*" label "no admin pages"\n')
    relay = start(["http", "--listen", LOCAL, "--connect", origin, "--rules", str(rules)])
    (where,) = relay.listening()["http"]
    c = http.client.HTTPConnection(*where, timeout=10)
    c.request("GET", "/admin/x")
    assert c.getresponse().status == 403
    c.close()
    found = relay.wait_for(r"http session ended: .* error-403: (.*)")
    assert found == ["blocked by the rule %s:2 (no admin pages)" % (rules,)]


# -- TLS backends -------------------------------------------------------------


@pytest.fixture(scope="module")
def untrusted(tmp_path_factory):
    """A TLS backend whose self-signed certificate no client trusts."""
    keyPath, certPath = make_cert(tmp_path_factory.mktemp("tls"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(certPath), str(keyPath))

    def handler(sock, backend):
        try:
            with ctx.wrap_socket(sock, server_side=True) as s:
                backend.records.append(recv_all(s))
        except (ssl.SSLError, OSError) as e:
            backend.records.append(e)

    b = Backend(handler)
    yield "tls:127.0.0.1:%d" % b.port
    b.close()


def test_tcp_backend_certificate_failure_logged_with_reason(start, untrusted):
    """The session's event says the certificate error and why, in the text and as a JSON field."""
    port = procs.free_port()  # twist logs JSON here: no listening line to read a port 0 from
    relay = start(["tcp", "--listen", "tcp:%d:interface=127.0.0.1" % port, "--connect", untrusted], tool="twist")
    relay.wait_for(r"listening on")
    with connect(("127.0.0.1", port)) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert recv_all(s) == b""
    relay.wait_for(r'"log_format": "session ended')
    (ended,) = [e for e in relay.events() if e.get("log_format", "").startswith("session ended")]
    assert ended["how"] == "tls-error"
    assert ended["why"] == "certificate verify failed: self-signed certificate"


def test_http_backend_certificate_failure_logged_with_reason(start, untrusted):
    relay = start(["http", "--listen", LOCAL, "--connect", untrusted])
    (where,) = relay.listening()["http"]
    c = http.client.HTTPConnection(*where, timeout=10)
    c.request("GET", "/")
    r = c.getresponse()
    assert (r.status, r.read()) == (502, b"502 Bad Gateway: TLS with the backend failed\n")
    c.close()
    found = relay.wait_for(r"http session ended: \S+ 1 request, .* error-502: (.*)")
    assert found == ["backend TLS failed: certificate verify failed: self-signed certificate"]


def test_refused_backend_is_one_session_line_that_says_so(start):
    dead = procs.free_port()
    relay = start(["tcp", "--listen", LOCAL, "--connect", "tcp:127.0.0.1:%d" % dead])
    (where,) = relay.listening()["tcp"]
    with connect(where) as s:
        s.sendall(b"x")
        assert recv_all(s) == b""
    found = relay.wait_for(r"session ended: .* 0 bytes in, .*, (connect-failed: .*)")
    assert found == ["connect-failed: connection refused"]


# -- PROXY headers ------------------------------------------------------------


def test_haproxy_listener_client_without_header_logged_and_counted(start, origin):
    relay = start(["tcp", "--listen", "haproxy:" + LOCAL, "--connect", origin,
                   "--metrics", "tcp:0:interface=127.0.0.1"])
    (where,) = relay.listening()["tcp"]
    metrics = procs.address(relay.wait_for(r"metrics http listening on (\S+)")[0])
    for first in (b"GET / HTTP/1.0\r\n\r\n", b"PROXY bogus\r\n\r\n"):
        with connect(where) as s:
            s.sendall(first)
            assert recv_all(s) == b""
    with connect(where) as s:  # a client with its header is relayed
        s.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 4321 80\r\nGET / HTTP/1.0\r\n\r\n")
        assert recv_all(s).endswith(b"hello\n")
    relay.wait_for(r"session ended: 192\.0\.2\.7:4321 ")
    dropped = relay.wait_for(r"dropped 127\.0\.0\.1:\d+: (.*)", 2)
    assert dropped == ["PROXY header missing (first bytes b'GET / HTTP/1.0\\r\\n\\r\\n')",
                       "invalid PROXY v1 header (first bytes b'PROXY bogus\\r\\n\\r\\n')"]
    with urllib.request.urlopen("http://%s:%d/" % metrics, timeout=10) as r:
        text = r.read().decode()
    assert 'splicing_refused_total{reason="proxy-header",relay="tcp"} 2.0' in text
