"""
What real twistd relays log: one line per session and none of Twisted's
per-connection chatter (counted line by line), and every failure with its
reason: a backend's certificate that fails verification, a refused backend,
a client without a PROXY header on a C{haproxy:} listener, the rule that
blocked a request.  Counts read "1 request", "1 datagram", "1 byte".
"""

import http.client
import re
import socket
import ssl
import time
import urllib.request

import pytest

import procs
from procs import Backend, connect, recv_all
from test_cli_lifecycle import start  # noqa: F401 (a fixture: real twistd processes, closed after)
from test_cli_udp_http import BODY, origin, udp_echo  # noqa: F401 (fixtures: a web server, a UDP echo on ::1)
from test_relay_tcp import make_cert

LOCAL = "tcp:0:interface=127.0.0.1"
#: What Twisted says per port, protocol or factory, which no relay line may be.
CHATTER = re.compile(r"starting on \d+|Starting protocol|Stopping protocol|Port \d+ Closed|"
                     r"Starting factory|Stopping factory")


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


def test_udp_clients_one_line_each_and_no_twisted_chatter(start, udp_echo):
    """N clients: exactly N more lines, each a session line; a 1-datagram client reads "1 datagram"."""
    relay = start(["udp", "--listen", "udp:0:interface=127.0.0.1", "--connect", "udp:host=\\:\\:1:port=%d" % udp_echo,
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
            assert c.recv(100) == b"echo:" + b"x" * (1 + k)
        clients.append(c)
    after = settled(relay, r"udp session ended", n)
    for c in clients:
        c.close()
    added = after[len(before):]
    assert len(added) == n, "\n".join(added)
    assert all("udp session ended: 127.0.0.1:" in line for line in added), "\n".join(added)
    assert not [line for line in after if CHATTER.search(line)]
    one = [line for line in added if "1 datagram / 1 byte out, 1 datagram / 6 bytes in" in line]
    two = [line for line in added if "2 datagrams / 3 bytes out, 2 datagrams / 13 bytes in" in line]
    assert (len(one), len(two)) == (n // 2, n // 2), "\n".join(added)


# -- HTTP ---------------------------------------------------------------------


@pytest.fixture
def web(origin):
    """test_cli_udp_http's web server (BODY for every GET), as a --connect string."""
    return "tcp:host=127.0.0.1:port=%d" % origin.server_address[1]


def test_http_backend_connections_log_no_factory_lines(start, web):
    """Each client connection (its own backend connection) is one line: "1 request", "2 requests"."""
    relay = start(["http", "--listen", LOCAL, "--connect", web])
    (where,) = relay.listening()["http"]
    before = settled(relay, r"try it", 1)
    for _ in range(4):
        with urllib.request.urlopen("http://%s:%d/" % where, timeout=10) as r:
            assert r.read() == BODY
    c = http.client.HTTPConnection(*where, timeout=10)
    for _ in range(2):
        c.request("GET", "/")
        assert c.getresponse().read() == BODY
    c.close()
    after = settled(relay, r"http session ended", 5)
    added = after[len(before):]
    assert len(added) == 5, "\n".join(added)
    assert len([line for line in added if " 1 request, " in line]) == 4
    assert len([line for line in added if " 2 requests, " in line]) == 1
    assert not [line for line in added if CHATTER.search(line)]


def test_http_rule_block_says_which_rule(start, web, tmp_path):
    rules = tmp_path / "rules.conf"
    rules.write_text('return error\nblock request path "/admin*" label "no admin pages"\n')
    relay = start(["http", "--listen", LOCAL, "--connect", web, "--rules", str(rules)])
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
    found = relay.wait_for(r"http session ended: .*: 1 request, .* error-502: (.*)")
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


def test_haproxy_listener_client_without_header_logged_and_counted(start, web):
    relay = start(["tcp", "--listen", "haproxy:" + LOCAL, "--connect", web,
                   "--metrics", "tcp:0:interface=127.0.0.1"])
    (where,) = relay.listening()["tcp"]
    metrics = procs.address(relay.wait_for(r"metrics http listening on (\S+)")[0])
    for first in (b"GET / HTTP/1.0\r\n\r\n", b"PROXY bogus\r\n\r\n"):
        with connect(where) as s:
            s.sendall(first)
            assert recv_all(s) == b""
    with connect(where) as s:  # a client with its header is relayed
        s.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 4321 80\r\nGET / HTTP/1.0\r\n\r\n")
        assert recv_all(s).endswith(BODY)
    relay.wait_for(r"session ended: 192\.0\.2\.7:4321 ")
    dropped = relay.wait_for(r"dropped 127\.0\.0\.1:\d+: (.*)", 2)
    assert dropped == ["PROXY header missing (first bytes b'GET / HTTP/1.0\\r\\n\\r\\n')",
                       "invalid PROXY v1 header (first bytes b'PROXY bogus\\r\\n\\r\\n')"]
    with urllib.request.urlopen("http://%s:%d/" % metrics, timeout=10) as r:
        text = r.read().decode()
    assert 'splicing_refused_total{reason="proxy-header",relay="tcp"} 2.0' in text


# -- the words, without sockets -------------------------------------------------


def test_plural():
    from splicing.relay.events import plural

    assert [plural(n, "request") for n in (0, 1, 2)] == ["0 requests", "1 request", "2 requests"]


def test_connect_failure_words():
    from service_identity import VerificationError
    from service_identity.hazmat import DNS_ID, DNSMismatch
    from twisted.internet import defer, error
    from twisted.python.failure import Failure

    from splicing.relay.events import connectFailure, connectionFailure

    assert connectFailure(Failure(error.ConnectionRefusedError())) == "connection refused"
    assert connectFailure(Failure(defer.TimeoutError()), 3) == "timed out after 3 s"
    assert connectFailure(Failure(error.DNSLookupError("nx.invalid"))).startswith("host name not found")
    mismatch = VerificationError(errors=[DNSMismatch(mismatched_id=DNS_ID("backend.example"))])
    assert connectFailure(Failure(mismatch)) == (
        "TLS: certificate verify failed: the certificate is not valid for backend.example")
    assert connectionFailure(Failure(error.ConnectionDone())) is None  # a clean close is no failure


def test_haproxy_listener_client_sending_nothing_is_dropped_with_why(start, web):
    """A client that never sends its header is not held forever (5 s, the relay's headerTimeout)."""
    relay = start(["tcp", "--listen", "haproxy:" + LOCAL, "--connect", web])
    (where,) = relay.listening()["tcp"]
    with connect(where) as s:
        began = time.monotonic()
        try:
            assert s.recv(1) == b""
        except ConnectionResetError:
            pass  # dropped (reset) by the relay, not by this client
        assert 4.5 < time.monotonic() - began < 8
    assert relay.wait_for(r"dropped 127\.0\.0\.1:\d+: (.*)") == ["PROXY header missing: none within 5s"]
