"""
Smoke tests of examples/: each runs as a real process against real sockets.
"""

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

import procs
from procs import Backend, connect, payload, recv_all, sha256

EXAMPLES = os.path.join(procs.ROOT, "examples")


def wait_connect(port, proc, timeout=procs.TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "nothing listening on %d" % port
            time.sleep(0.05)


@pytest.fixture(scope="module")
def hasher():
    b = Backend(procs.hash_and_answer)
    yield b
    b.close()


@pytest.mark.parametrize("mode,paths", [("-c", {"copy"}), ("-s", {"kernel", "mbuf"})])
def test_relay_copy_and_splice(hasher, mode, paths):
    port = procs.free_port()
    p = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, "relay.py"), mode,
                          "tcp:%d:interface=127.0.0.1" % port, hasher.tcp], stdout=subprocess.PIPE)
    try:
        s = wait_connect(port, p)
        data = payload(2 << 20, seed=1)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        answer = recv_all(s)
        s.close()
        out, _ = p.communicate(timeout=procs.TIMEOUT)
    finally:
        p.kill()
        p.wait()
    assert answer.split(b"\n", 1)[0].decode() == sha256(data)
    found = re.search(rb"(\d+) bytes client -> server, (\d+) bytes server -> client \((\w+)\)", out)
    assert found, out
    assert (int(found.group(1)), int(found.group(2))) == (len(data), len(answer))
    assert found.group(3).decode() in paths
    assert p.returncode == 0


def _identify(name):
    def handler(sock, backend):  # speaks first, as an SSH server does
        sock.sendall(name + b"\n")
        backend.records.append(recv_all(sock))

    return handler


def test_portshare_sniffs_then_splices():
    ssh, http = Backend(_identify(b"ssh")), Backend(_identify(b"http"))
    port = procs.free_port()
    p = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, "portshare.py"),
                          "--listen", "tcp:%d:interface=127.0.0.1" % port, "--ssh", ssh.tcp, "--http", http.tcp],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for hello, expected in [(b"SSH-2.0-OpenSSH_9.6\r\n", b"ssh\n"), (b"GET / HTTP/1.0\r\n\r\n", b"http\n"),
                                (b"", b"ssh\n")]:
            s = wait_connect(port, p)
            s.sendall(hello)
            assert s.recv(100) == expected
            s.shutdown(socket.SHUT_WR)
            assert recv_all(s) == b""
            s.close()
        assert ssh.records == [b"SSH-2.0-OpenSSH_9.6\r\n", b""]  # sniffed bytes reach the backend first
        assert http.records == [b"GET / HTTP/1.0\r\n\r\n"]
    finally:
        p.kill()
        p.wait()
        ssh.close()
        http.close()


def test_tac_runs_a_site_and_a_relay(tmp_path):
    web, relay = procs.free_port(), procs.free_port()
    env = dict(os.environ, WEB_PORT=str(web), RELAY_PORT=str(relay))
    log = open(tmp_path / "tac.log", "wb")
    p = subprocess.Popen(procs.twistd_command() + ["-n", "--pidfile=", "-y", os.path.join(EXAMPLES, "web_and_relay.tac")],
                         stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path))
    try:
        wait_connect(relay, p).close()
        body = urllib.request.urlopen("http://127.0.0.1:%d/" % relay, timeout=procs.TIMEOUT).read()
        assert body == b"<h1>served by twisted.web, spliced by splicing</h1>\n"
    finally:
        p.kill()
        p.wait()
        log.close()
