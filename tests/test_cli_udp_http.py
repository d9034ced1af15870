"""
`twistd splice udp` and `twistd splice http` in real twistd processes: the
library relays are tested in depth elsewhere (test_udp_relay.py,
test_http_proxy.py); here the command line must build them right.
"""

import hashlib
import http.client
import http.server
import os
import socket
import threading

import pytest

import procs

BODY = os.urandom(4 << 20)


@pytest.fixture
def udp_echo():
    """A UDP echo server on ::1: replies 'echo:' + datagram."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind(("::1", 0))
    s.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                data, addr = s.recvfrom(65536)
            except socket.timeout:
                continue
            s.sendto(b"echo:" + data, addr)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield s.getsockname()[1]
    stop.set()
    t.join(2)
    s.close()


def test_udp_relay_ipv4_clients_to_ipv6_backend(tmp_path, udp_echo):
    port = procs.free_port()
    relay = procs.Twistd(tmp_path, ["udp", "--listen", "udp:%d:interface=127.0.0.1" % port,
                                    "--connect", "udp:host=\\:\\:1:port=%d" % udp_echo, "--idle", "1"])
    try:
        relay.wait_for(r"UDP relay on 127\.0\.0\.1:%d" % port)
        clients = []
        for i in range(5):
            c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c.settimeout(5)
            clients.append(c)
        for i, c in enumerate(clients):
            for n in range(3):
                c.sendto(b"client%d-%d" % (i, n), ("127.0.0.1", port))
        for i, c in enumerate(clients):
            got = [c.recvfrom(65536) for _ in range(3)]
            assert [d for d, _ in got] == [b"echo:client%d-%d" % (i, n) for n in range(3)]
            assert all(addr == ("127.0.0.1", port) for _, addr in got)  # replies from the address used
        for c in clients:
            c.close()
        relay.wait_for(r"idle", count=1, timeout=10)  # sessions end by --idle
    finally:
        relay.close()


class _Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.send_header("X-Seen-For", self.headers.get("X-Forwarded-For", "-"))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


@pytest.fixture
def origin():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server
    server.shutdown()
    server.server_close()


def test_http_proxy_rules_and_spliced_bodies(tmp_path, origin):
    rules = tmp_path / "rules.txt"
    rules.write_text(
        "return error\n"
        'block request path "/admin*" label "no admin pages"\n'
        'match request header set "X-Forwarded-For" value "$REMOTE_ADDR"\n'
    )
    port = procs.free_port()
    proxy = procs.Twistd(tmp_path, ["http", "--listen", "tcp:%d:interface=127.0.0.1" % port,
                                    "--connect", "tcp:host=127.0.0.1:port=%d" % origin.server_address[1],
                                    "--rules", str(rules)])
    try:
        proxy.listening()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for _ in range(3):  # keep-alive: three bodies on one connection
            c.request("GET", "/file")
            r = c.getresponse()
            body = r.read()
            assert r.status == 200
            assert hashlib.sha256(body).digest() == hashlib.sha256(BODY).digest()
            assert r.getheader("X-Seen-For") == "127.0.0.1"
        c.request("GET", "/admin/panel")
        r = c.getresponse()
        assert r.status == 403
        assert b"no admin pages" in r.read()
        c.close()
        line = proxy.wait_for(r"http session ended: .* (\d+) bytes spliced, (\d+) bytes copied")[0]
        spliced, copied = int(line[0]), int(line[1])
        assert spliced >= 3 * len(BODY) - 3 * 65536  # the bodies went through the kernel
        assert copied < 3 * 65536 + 4096
    finally:
        proxy.close()
