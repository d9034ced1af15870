"""
`twistd splice --workers N` in real processes: the master binds, N workers
serve (each shows up in the log), metrics are summed, SIGTERM drains every
worker, SIGHUP replaces them, a killed worker is restarted, and killing the
master leaves no worker behind.
"""

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

import pytest

import procs
from procs import Backend, connect, recv_all
from test_cli_lifecycle import ping, refused, start  # noqa: F401 (start: a fixture)
from test_cli_udp_http import udp_echo  # noqa: F401 (a fixture)
from test_relay_tcp import make_cert

LOCAL = "tcp:0:interface=127.0.0.1"
_STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


def serving(relay, count=2):
    """{index: pid} once C{count} workers serve (the last ones started for each index)."""
    relay.wait_for(r"\[worker \d+ splicing\.app\.service\.RelayService#info\] try it", count)
    return {int(i): int(pid) for i, pid in _STARTED.findall(relay.text())}


def bound(relay, count):
    """The addresses the master bound, in --listen order."""
    found = relay.wait_for(r"\[splicing\.app\.workers\.Listener#info\] relay \S+ listening on (\S+)", count)
    return [procs.address(a) for a in found]


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def eventually(check, timeout=procs.TIMEOUT):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, check
        time.sleep(0.05)


def wait_gone(pids, timeout=procs.TIMEOUT):
    eventually(lambda: not any(alive(p) for p in pids), timeout)


def holdsTLS(pid):
    """Whether process C{pid} loaded pyOpenSSL: cryptography's extension is mapped (about 13 MB)."""
    with open("/proc/%d/maps" % pid) as f:
        return "cryptography/hazmat/bindings/_rust" in f.read()


def checked_session(where, n):
    """Send n bytes, half-close; the backend answers their SHA-256 and 1 MiB + n bytes."""
    data = procs.payload(n, seed=n)
    with connect(where) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        answer = recv_all(s)
    digest, _, rest = answer.partition(b"\n")
    assert digest.decode() == procs.sha256(data)
    assert rest == procs.payload(1 << 20, seed=n)


def scrape(where):
    return urllib.request.urlopen("http://%s:%d/metrics" % where, timeout=procs.TIMEOUT).read().decode()


def test_workers_share_sockets_sum_metrics_and_drain_on_sigterm(start, tmp_path):
    backend = Backend(procs.hash_and_answer)
    path = str(tmp_path / "relay.sock")
    try:
        relay = start(["tcp", "--workers", "2", "--listen", LOCAL, "--listen", "unix:" + path,
                       "--listen", "haproxy:" + LOCAL, "--connect", backend.tcp, "--metrics", LOCAL,
                       "--shutdown-timeout", "20"])
        pids = serving(relay)
        where, unix, proxied = bound(relay, 3)
        assert unix == path and sorted(pids) == [0, 1]
        assert not any(holdsTLS(pid) for pid in pids.values())  # no TLS endpoint: workers without pyOpenSSL
        metrics = procs.address(relay.wait_for(r"metrics http listening on (\S+)")[0])
        checked_session(path, 77)
        with connect(proxied) as s:  # PROXY v1 in: read in a worker, not relayed
            s.sendall(b"PROXY TCP4 192.0.2.1 127.0.0.1 5555 80\r\n" + b"through haproxy:")
            s.shutdown(socket.SHUT_WR)
            assert recv_all(s).startswith(procs.sha256(b"through haproxy:").encode())
        ended, sessions = [], 2
        while set(ended) != {"0", "1"}:  # whichever worker runs first accepts: soon both have
            assert sessions < 200, ended
            checked_session(where, 1000 + sessions)
            sessions += 1
            ended = relay.wait_for(r"\[worker (\d) splicing\.relay\.tcp\.RelayFactory#info\] session ended: .*, eof",
                                   sessions)
        text = scrape(metrics)
        assert re.search(r'splicing_sessions_total\{how="eof",relay="tcp"\} %d\.0' % sessions, text), text
        assert "splicing_workers 2.0" in text

        held = connect(where)
        held.sendall(b"x" * 1000)  # a session in one worker when SIGTERM comes
        eventually(lambda: backend.accepted > sessions)  # a worker accepted it and connected the backend
        relay.signal(signal.SIGTERM)
        relay.wait_for(r"waiting up to 20.0s for 1 sessions")
        eventually(lambda: refused(where) and not os.path.exists(path))  # each worker closes its own
        held.shutdown(socket.SHUT_WR)
        digest = recv_all(held).partition(b"\n")[0]
        assert digest.decode() == procs.sha256(b"x" * 1000)
        held.close()
        assert relay.wait() == -signal.SIGTERM
        wait_gone(pids.values(), 2)
    finally:
        backend.close()


def tls_ping(where, data=b"ping"):
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with context.wrap_socket(connect(where)) as s:
        s.sendall(data)
        return s.recv(len(data))


def test_killed_worker_is_restarted_and_no_worker_outlives_the_master(start, tmp_path):
    backend = Backend(procs.echo)
    key, cert = make_cert(tmp_path)
    try:
        relay = start(["tcp", "--workers", "2", "--listen", LOCAL, "--connect", backend.tcp, "--listen",
                       "ssl:0:interface=127.0.0.1:privateKey=%s:certKey=%s" % (key, cert)])
        pids = serving(relay, 4)
        where, tls = bound(relay, 2)
        assert tls_ping(tls) == b"ping"  # the master binds, a worker does the TLS
        assert all(holdsTLS(pid) for pid in pids.values())
        os.kill(pids[0], signal.SIGKILL)
        relay.wait_for(r"worker 0 \(pid %d\) exited unexpectedly after [\d.]+s: killed by SIGKILL; "
                       r"restarting it in 0\.5s" % pids[0])
        for n in range(10):  # clients meant for the dead worker wait in its socket's backlog
            assert ping(where, b"ping%d" % n) == b"ping%d" % n
        now = serving(relay, 6)
        assert now[1] == pids[1] and now[0] != pids[0] and alive(now[0])
        relay.proc.send_signal(signal.SIGKILL)
        relay.wait()
        wait_gone(now.values(), 5)
    finally:
        backend.close()


ACTIVATE = """if 1:
    import os, sys
    os.dup2(int(sys.argv[1]), 3)
    os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="relay")
    os.execv(sys.argv[2], sys.argv[2:])
"""


class SocketActivated(procs.Twistd):
    """twistd started as systemd starts a socket-activated service: its socket is descriptor 3."""

    def __init__(self, tmp, args, sock):
        self.logpath = os.path.join(str(tmp), "systemd.log")
        self.log = open(self.logpath, "wb")
        command = procs.twistd_command() + ["-n", "--pidfile=", "splice"] + args
        self.proc = subprocess.Popen([sys.executable, "-c", ACTIVATE, str(sock.fileno())] + command,
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=procs.ROOT,
                                     pass_fds=[sock.fileno()], env=dict(os.environ, PYTHONUNBUFFERED="1"))


def test_systemd_socket_is_shared_by_the_workers(tmp_path):
    backend = Backend(procs.echo)
    sock = socket.create_server(("127.0.0.1", 0))
    relay = SocketActivated(tmp_path, ["tcp", "--workers", "2", "--listen", "systemd:domain=INET:index=0",
                                       "--connect", backend.tcp], sock)
    try:
        serving(relay)
        where = sock.getsockname()
        assert bound(relay, 1) == [where]
        sock.close()  # the relay's copies serve on
        for n in range(6):
            assert ping(where, b"hi%d" % n) == b"hi%d" % n
    finally:
        relay.close()
        backend.close()


CONFIG = """
[relay.a]
listen = "{local}"
connect = "{echo}"

[relay.dns]
type = "udp"
listen = "udp:0:interface=127.0.0.1"
connect = "udp:host=\\\\:\\\\:1:port={udp}"

[relay.web]
type = "http"
listen = "{local}"
"""


def test_config_with_udp_and_http_reloaded_in_every_worker(start, tmp_path, udp_echo):  # noqa: F811
    backend = Backend(procs.echo)
    path = tmp_path / "relays.toml"
    path.write_text(CONFIG.format(local=LOCAL, echo=backend.tcp, udp=udp_echo))
    try:
        relay = start(["--config", str(path), "--workers", "2"])
        first = serving(relay, 4)  # a and web in each worker
        a, dns, web = bound(relay, 3)
        assert ping(a) == b"ping"
        page = urllib.request.urlopen("http://%s:%d/" % web, timeout=procs.TIMEOUT).read()
        assert b"Hello through splicing" in page
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(5)
            c.sendto(b"query", dns)
            assert c.recvfrom(100) == (b"echo:query", dns)

        held = connect(a)  # stays with its old worker across the reload
        held.sendall(b"held")
        assert held.recv(4) == b"held"
        path.write_text(CONFIG.replace("[relay.a]", "[relay.b]").format(local=LOCAL, echo=backend.tcp, udp=udp_echo))
        relay.signal(signal.SIGHUP)
        relay.wait_for(r"reload: start \['b'\], stop \['a'\], keep \['dns', 'web'\]")
        (b,) = [procs.address(x) for x in relay.wait_for(r"Listener#info\] relay b listening on (\S+)")]
        relay.wait_for(r"worker \d retiring", 2)
        assert ping(b) == b"ping"
        assert b"Hello through splicing" in urllib.request.urlopen("http://%s:%d/" % web, timeout=5).read()
        eventually(lambda: refused(a))
        held.sendall(b"still")
        assert held.recv(5) == b"still"
        held.close()
        wait_gone(first.values())  # the old generation exits once its last session ended
        relay.signal(signal.SIGTERM)
        assert relay.wait() == -signal.SIGTERM
    finally:
        backend.close()


@pytest.mark.parametrize("value, error", [
    ("0", "--workers must be a finite number >= 1, not '0'"),
    ("-1", "--workers must be a finite number >= 1, not '-1'"),
    ("abc", "--workers takes a number, not 'abc'"),
])
def test_bad_workers_values(value, error):
    status, output = procs.run_twistd(["tcp", "--workers", value])
    assert status != 0 and "Traceback" not in output
    assert error in output.strip().splitlines()[-1], output
