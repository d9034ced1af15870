"""
The TCP relay in real twistd processes: one started from the command line
(integrity, half-close, metrics) and one from a config file holding a relay
per feature (IPv4/IPv6 mixing, failover, PROXY headers, --allow,
--max-sessions, idle and half-close timeouts, TLS termination, --no-splice)
and a metrics endpoint that HTTP relays of the same file report to.
Clients and backends are blocking sockets on 127.0.0.1 and ::1 in this
process; every byte is checked with SHA-256 and against the session's log.
"""

import datetime
import ipaddress
import re
import socket
import ssl
import time
import urllib.request

import pytest
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser

import procs
from procs import Backend, connect, recv_all, recv_exactly, payload, sha256

SESSION = r"session ended: (\S+) -> (\S+): (\d+) bytes? out, (\d+) bytes? in, ([\d.]+)s, (\w+), ([\w-]+)"


def sessions_of(relay, client):
    """The logged (bytes_out, bytes_in, path, how) of sessions from ``client`` (a sockname)."""
    host, port = client[:2]
    name = ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)
    return [(int(o), int(i), path, how) for c, _, o, i, _, path, how in
            re.findall(SESSION, relay.text()) if c == name]


def wait_session(relay, client, timeout=procs.TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sessions_of(relay, client)
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError("no session end logged for %r:\n%s" % (client, relay.text()))



def make_cert(tmp):
    """A self-signed certificate for 127.0.0.1 (key.pem, cert.pem in ``tmp``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    keyPath, certPath = tmp / "key.pem", tmp / "cert.pem"
    keyPath.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    certPath.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return keyPath, certPath


@pytest.fixture(scope="module")
def sockets(tmp_path_factory):
    return tmp_path_factory.mktemp("sockets")


@pytest.fixture(scope="module")
def backends(sockets):
    made = {
        "hash4": Backend(procs.hash_and_answer),
        "hash6": Backend(procs.hash_and_answer, "::1"),
        "hash4b": Backend(procs.hash_and_answer),
        "greet": Backend(procs.greet_then_read),
        "proxy": Backend(procs.read_proxy_header),
        "echo": Backend(procs.echo),
        "unix": Backend(procs.hash_and_answer, str(sockets / "backend.sock")),
    }
    yield made
    for b in made.values():
        b.close()


@pytest.fixture(scope="module")
def cli(tmp_path_factory, backends):
    """twistd splice tcp: IPv4 and IPv6 listeners to the IPv4 hash backend, with metrics."""
    relay = procs.Twistd(tmp_path_factory.mktemp("cli"), [
        "tcp", "--listen", "tcp:0:interface=127.0.0.1", "--listen", "tcp6:0:interface=\\:\\:1",
        "--connect", backends["hash4"].tcp, "--metrics", "tcp:0:interface=127.0.0.1"])
    try:
        ports = relay.listening(2)["tcp"]
        metrics = procs.address(relay.wait_for(r"metrics http listening on (\S+)")[0])
        yield relay, ports, metrics
    finally:
        relay.close()


CONFIG = """\
metrics = "tcp:0:interface=127.0.0.1"

[relay.v4to6]
listen = "tcp:0:interface=127.0.0.1"
connect = "{hash6}"

[relay.v6to4]
listen = "tcp6:0:interface=\\\\:\\\\:1"
connect = "{hash4}"

[relay.halfclose]
listen = "tcp:0:interface=127.0.0.1"
connect = "{greet}"

[relay.failover]
listen = "tcp:0:interface=127.0.0.1"
connect = ["tcp:host=127.0.0.1:port={down}", "{hash4}", "{hash4b}"]
connect-timeout = 2

[relay.proxy1]
listen = "tcp:0:interface=127.0.0.1"
connect = "{proxy}"
send-proxy = "v1"

[relay.proxy2]
listen = "tcp6:0:interface=\\\\:\\\\:1"
connect = "{proxy}"
send-proxy = "v2"

[relay.haproxy]
listen = "haproxy:tcp:0:interface=127.0.0.1"
connect = "{proxy}"
send-proxy = "v1"

[relay.deny]
listen = "tcp:0:interface=127.0.0.1"
connect = "{echo}"
allow = ["10.0.0.0/8", "fd00::/8"]

[relay.allow]
listen = "tcp:0:interface=127.0.0.1"
connect = "{echo}"
allow = ["10.0.0.0/8", "127.0.0.0/8"]

[relay.cap]
listen = "tcp:0:interface=127.0.0.1"
connect = "{echo}"
max-sessions = 1

[relay.idle]
listen = "tcp:0:interface=127.0.0.1"
connect = "{hash4}"
idle = 1

[relay.halfcloseto]
listen = "tcp:0:interface=127.0.0.1"
connect = "{greet}"
half-close-timeout = 1

[relay.tls]
listen = "ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
connect = "{echo}"

[relay.tlsnosplice]
listen = "ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
connect = "{echo}"
no-splice = true

[relay.unix]
listen = "unix:{sockets}/relay.sock"
connect = "{unix}"

[relay.nosplice]
listen = "tcp:0:interface=127.0.0.1"
connect = "{hash4}"
no-splice = true

[relay.web]
type = "http"
listen = "tcp:0:interface=127.0.0.1"

[relay.webdown]
type = "http"
listen = "tcp:0:interface=127.0.0.1"
connect = "tcp:host=127.0.0.1:port={down}"
"""


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_cert(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def many(tmp_path_factory, backends, certs, sockets):
    """twistd splice --config: one relay per feature; {name: (host, port)}."""
    tmp = tmp_path_factory.mktemp("many")
    fields = {k: b.tcp.replace("\\", "\\\\") for k, b in backends.items()}
    fields.update(down=procs.free_port(), key=certs[0], cert=certs[1], sockets=sockets)
    path = tmp / "relays.toml"
    path.write_text(CONFIG.format(**fields))
    relay = procs.Twistd(tmp, ["--config", str(path)])
    try:
        ports = relay.listening(CONFIG.count("[relay."))
        yield relay, {name: where[0] for name, where in ports.items()}
    finally:
        relay.close()


def exchange(where, data, wrap=None):
    """Send ``data``, shut down writing, read the answer: (sha256 line, rest, sockname)."""
    s = connect(where)
    try:
        name = s.getsockname()
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        answer = recv_all(s)
    finally:
        s.close()
    digest, _, rest = answer.partition(b"\n")
    return digest.decode(), rest, name


@pytest.mark.parametrize("listener", [0, 1], ids=["127.0.0.1", "::1"])
def test_integrity_and_client_half_close(cli, listener):
    """3 MiB up, then SHUT_WR; the backend still answers 1 MiB after our EOF: both checksums match."""
    relay, ports, _ = cli
    data = payload(3 << 20, seed=listener)
    digest, rest, name = exchange(ports[listener], data)
    assert digest == sha256(data)
    assert sha256(rest) == sha256(payload(1 << 20, seed=len(data)))
    out, back, path, how = wait_session(relay, name)
    assert (out, back, how) == (len(data), 65 + (1 << 20), "eof")
    assert path in ("kernel", "mbuf")


def test_server_half_close(many, backends):
    """The backend sends and shuts down writing; the client still sends after that EOF."""
    relay, ports = many
    s = connect(ports["halfclose"])
    assert recv_all(s) == b"hello from the backend\n"  # EOF relayed, connection still open
    data = payload(200_000, seed=7)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    assert recv_all(s) == b""
    name = s.getsockname()
    s.close()
    out, back, _, how = wait_session(relay, name)
    assert (out, back, how) == (len(data), 23, "eof")
    assert sha256(backends["greet"].last()) == sha256(data)


@pytest.mark.parametrize("relay_name,backend", [("v4to6", "hash6"), ("v6to4", "hash4")])
def test_ipv4_ipv6_mixing(many, backends, relay_name, backend):
    relay, ports = many
    data = payload(100_000, seed=3)
    digest, rest, name = exchange(ports[relay_name], data)
    assert digest == sha256(data) == backends[backend].records[-1]
    assert rest == payload(1 << 20, seed=len(data))
    assert wait_session(relay, name)[3] == "eof"


def test_failover_with_one_backend_down(many, backends):
    """Every session succeeds; the down target is tried once, then skipped for a while."""
    relay, ports = many
    before = backends["hash4"].accepted + backends["hash4b"].accepted
    for i in range(6):
        data = payload(1000 + i, seed=i)
        digest, _, _ = exchange(ports["failover"], data)
        assert digest == sha256(data)
    assert backends["hash4"].accepted + backends["hash4b"].accepted - before == 6
    assert backends["hash4b"].accepted >= 2 and backends["hash4"].accepted >= 2
    assert len(relay.wait_for(r"backend tcp:host=127.0.0.1:port=\d+ failed")) == 1


@pytest.mark.parametrize("relay_name,parser", [("proxy1", V1Parser), ("proxy2", V2Parser)])
def test_send_proxy_header(many, backends, relay_name, parser):
    relay, ports = many
    s = connect(ports[relay_name])
    client, server = s.getsockname(), s.getpeername()
    s.sendall(b"GET / after the header\n")
    s.shutdown(socket.SHUT_WR)
    assert recv_all(s) == b"ok\n"
    s.close()
    info, rest = parser().feed(backends["proxy"].records[-1])
    ip = ipaddress.ip_address
    assert (ip(info.source.host), info.source.port) == (ip(client[0]), client[1])
    assert (ip(info.destination.host), info.destination.port) == (ip(server[0]), server[1])
    assert rest == b"GET / after the header\n"


def test_haproxy_input_passes_the_real_client_on(many, backends):
    """haproxy: listener reads a PROXY header; --send-proxy v1 hands the real client to the backend."""
    relay, ports = many
    s = connect(ports["haproxy"])
    s.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\npayload")
    s.shutdown(socket.SHUT_WR)
    assert recv_all(s) == b"ok\n"
    s.close()
    assert backends["proxy"].records[-1] == b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 80\r\npayload"
    assert wait_session(relay, ("203.0.113.7", 5555))[:2] == (7, 3)


def test_allow_refuses_other_networks(many, backends):
    relay, ports = many
    before = backends["echo"].accepted
    try:
        s = connect(ports["deny"])
        name = s.getsockname()
        with s:
            s.sendall(b"x")
            assert recv_all(s) == b""
    except (ConnectionResetError, BrokenPipeError):
        pass  # refused so fast that even the connect saw the reset
    relay.wait_for(r"refused 127\.0\.0\.1:\d+: not in --allow")
    assert backends["echo"].accepted == before


def test_allow_accepts_listed_networks(many):
    relay, ports = many
    s = connect(ports["allow"])
    s.sendall(b"ping")
    assert s.recv(4) == b"ping"
    s.close()


def test_max_sessions_makes_new_clients_wait(many):
    relay, ports = many
    first = connect(ports["cap"])
    first.sendall(b"one")
    assert first.recv(3) == b"one"
    second = connect(ports["cap"])  # completes in the kernel backlog
    second.sendall(b"two")
    second.settimeout(0.5)
    with pytest.raises(socket.timeout):
        second.recv(3)
    first.close()
    second.settimeout(procs.TIMEOUT)
    assert second.recv(3) == b"two"
    second.close()


def test_idle_timeout_ends_silent_sessions(many):
    relay, ports = many
    s = connect(ports["idle"])
    started = time.monotonic()
    try:
        assert recv_all(s) == b""
    except ConnectionResetError:
        pass
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 2.5
    assert wait_session(relay, s.getsockname())[3] == "idle"
    s.close()


def test_traffic_in_one_direction_keeps_the_session(many):
    """Bytes only toward the backend for 2.5 idle periods: still alive, everything arrives."""
    relay, ports = many
    s = connect(ports["idle"])
    sent = b""
    for i in range(7):
        chunk = payload(100, seed=i)
        s.sendall(chunk)
        sent += chunk
        time.sleep(0.4)
    s.shutdown(socket.SHUT_WR)
    digest, _, _ = recv_all(s).partition(b"\n")
    assert digest.decode() == sha256(sent)
    s.close()


def test_half_close_timeout(many):
    relay, ports = many
    s = connect(ports["halfcloseto"])
    started = time.monotonic()
    assert recv_all(s) == b"hello from the backend\n"  # half-closed now; we never close
    s.settimeout(3)
    try:
        s.sendall(b"x")
        time.sleep(1.5)
        s.sendall(b"y")
        s.sendall(b"z")
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert wait_session(relay, s.getsockname())[3] == "half-close-timeout"
    assert time.monotonic() - started < 4
    s.close()


@pytest.mark.parametrize("relay_name", ["tls", "tlsnosplice"])
def test_tls_termination_to_plain_backend(many, certs, relay_name):
    """TLS sessions take the transport path, also when --no-splice forces the user-land socket path."""
    relay, ports = many
    context = ssl.create_default_context(cafile=str(certs[1]))
    raw = connect(ports[relay_name])
    s = context.wrap_socket(raw, server_hostname="127.0.0.1")
    name = s.getsockname()
    data = payload(1 << 20, seed=11)
    got = []
    for i in range(0, len(data), 65536):  # one chunk at a time: an SSLSocket is not for two threads
        chunk = data[i:i + 65536]
        s.sendall(chunk)
        got.append(recv_exactly(s, len(chunk)))
    assert sha256(b"".join(got)) == sha256(data)
    s.unwrap()  # close_notify: the relay closes toward the backend, which closes, so the session ends
    s.close()
    assert wait_session(relay, name) == (len(data), len(data), "transport", "eof")


def test_no_splice_uses_user_land(many):
    relay, ports = many
    data = payload(500_000, seed=5)
    digest, _, name = exchange(ports["nosplice"], data)
    assert digest == sha256(data)
    assert wait_session(relay, name)[2] == "mbuf"


def test_unix_sockets_both_sides(many, backends):
    """No splice path serves UNIX sockets: the relay copies, with the same accounting."""
    relay, ports = many
    data = payload(1 << 20, seed=9)
    digest, rest, _ = exchange(ports["unix"], data)
    assert digest == sha256(data) == backends["unix"].records[-1]
    assert rest == payload(1 << 20, seed=len(data))
    found = relay.wait_for(r"session ended: unix:anonymous -> unix:\S+backend.sock: (\d+) bytes out, (\d+) bytes in, "
                           r"[\d.]+s, copy, eof")
    assert found[-1] == (str(len(data)), str(65 + (1 << 20)))


def scrape(where):
    """{(sample name, ((label, value), ...)): value} of a metrics endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen("http://%s:%d/metrics" % where, timeout=procs.TIMEOUT).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics(cli):
    relay, ports, metrics = cli
    digest, _, name = exchange(ports[0], b"count me")
    out, back, path, how = wait_session(relay, name)
    samples = scrape(metrics)
    assert samples[("splicing_sessions_total", (("how", "eof"), ("relay", "tcp")))] >= 1
    assert samples[("splicing_bytes_total", (("direction", "out"), ("path", path), ("relay", "tcp")))] >= out
    assert ("splicing_pipes_in_use", ()) in samples and ("splicing_sessions_active", (("relay", "tcp"),)) in samples


def http_exchange(where, request):
    """One request the proxy closes after: everything it answered, and the status."""
    with connect(where) as s:
        s.sendall(request)
        answer = recv_all(s)
    return answer, int(answer.split(b" ", 2)[1])


def test_metrics_of_http_relays_in_a_config_file(many):
    """
    The file's top-level metrics endpoint counts its HTTP relays' sessions,
    requests, responses by class (the origin's 405, the proxy's 400 and
    502), bytes to the clients exactly, and the dead backend's connect.
    """
    relay, ports = many
    metrics = procs.address(relay.wait_for(r"metrics http listening on (\S+)")[0])
    close = b"Host: x\r\nConnection: close\r\n\r\n"
    got = [http_exchange(ports["web"], b"GET / HTTP/1.1\r\n" + close),
           http_exchange(ports["web"], b"POST / HTTP/1.1\r\nContent-Length: 0\r\n" + close),
           http_exchange(ports["web"], b"NOT HTTP\r\n\r\n")]
    assert [status for _, status in got] == [200, 405, 400]
    down, status = http_exchange(ports["webdown"], b"GET / HTTP/1.1\r\n" + close)
    assert status == 502
    relay.wait_for(r"http session ended: ", 4)
    samples = scrape(metrics)

    def of(name, relay_name, **labels):
        return {k: v for k, v in samples.items() if k[0] == name and ("relay", relay_name) in k[1]
                and set(labels.items()) <= set(k[1])}

    assert of("splicing_sessions_total", "web") == {
        ("splicing_sessions_total", (("how", "close"), ("relay", "web"))): 2,
        ("splicing_sessions_total", (("how", "error-400"), ("relay", "web"))): 1}
    assert list(of("splicing_sessions_total", "webdown").values()) == [1]
    assert sum(of("splicing_bytes_total", "web", direction="in").values()) == sum(len(a) for a, _ in got)
    assert sum(of("splicing_bytes_total", "webdown", direction="in").values()) == len(down)
    assert samples[("splicing_http_requests_total", (("relay", "web"),))] == 2
    assert {k[1]: v for k, v in of("splicing_http_responses_total", "web").items()} == {
        (("code_class", "2xx"), ("relay", "web")): 1, (("code_class", "4xx"), ("relay", "web")): 2}
    assert list(of("splicing_http_responses_total", "webdown", code_class="5xx").values()) == [1]
    (target,) = [dict(k[1])["target"] for k in of("splicing_connect_errors_total", "webdown")]
    assert samples[("splicing_connect_errors_total", (("relay", "webdown"), ("target", target)))] == 1
    assert target.startswith("tcp:host=127.0.0.1:port=")
    assert samples[("splicing_sessions_active", (("relay", "web"),))] == 0
    for name in ("webdown", "cap", "v4to6"):  # every relay of the file has its gauges
        assert ("splicing_sessions_waiting", (("relay", name),)) in samples


def test_no_errors_logged(cli, many):
    """Runs last: nothing above made either relay log a traceback or an unhandled error."""
    for relay in (cli[0], many[0]):
        text = relay.text()
        assert "Traceback" not in text and "Unhandled" not in text, text
        assert relay.proc.poll() is None
