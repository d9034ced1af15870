"""
Health checks and balancing in real twistd processes, against backends in
processes of their own (tests/checkbackend.py) that are killed, frozen and
started again on the same port: a failed backend leaves rotation and is
logged once, a recovered one comes back and is logged once, no client
session fails once the check has run, and with every backend down clients
are refused at once (the TCP relay closes, the HTTP proxy answers 502).
"""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import procs
from procs import TIMEOUT, Twistd, connect, recv_all
from test_relay_tcp import make_cert

LOCAL = "tcp:0:interface=127.0.0.1"
FAST = ["--check-interval", "0.2", "--check-timeout", "0.5"]


class Process:
    """tests/checkbackend.py MODE on ``port`` (0: any); ``lines()`` is what it printed."""

    def __init__(self, tmp, mode, port=0, tls=None):
        self.tmp, self.mode, self.tls = tmp, mode, tls
        self.start(port)

    def start(self, port):
        self.out = os.path.join(str(self.tmp), "backend-%s-%d-%f.out" % (self.mode.replace(":", ""), port, time.time()))
        extra = ["--tls", str(self.tls[1]), str(self.tls[0])] if self.tls else []
        self.proc = subprocess.Popen([sys.executable, os.path.join(procs.HERE, "checkbackend.py"), self.mode,
                                      str(port)] + extra, stdout=open(self.out, "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + TIMEOUT
        while not self.lines("ready"):
            assert self.proc.poll() is None and time.monotonic() < deadline, open(self.out).read()
            time.sleep(0.02)
        self.port = int(self.lines("ready")[0])

    def lines(self, kind):
        with open(self.out) as f:
            return [line.split(" ", 1)[1].strip() for line in f if line.startswith(kind + " ")]

    @property
    def tcp(self):
        return "tcp:host=127.0.0.1:port=%d" % self.port

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def kill(self, sig=signal.SIGKILL):
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait(TIMEOUT)

    def restart(self):
        self.start(self.port)

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(TIMEOUT)


@pytest.fixture
def start(tmp_path):
    made = []

    def start(args, name="relay"):
        made.append(Twistd(tmp_path, args, name=name))
        return made[-1]

    def backend(mode, **kw):
        made.append(Process(tmp_path, mode, **kw))
        return made[-1]

    start.backend = backend
    yield start
    for thing in made:
        thing.close()


def listening(relay):
    return relay.listening()[list(relay.listening())[0]][0]


def echo_session(where, n, timeout=3.0):
    """n bytes out, the same n back; raises on any failure (reset, timeout, wrong bytes)."""
    data = procs.payload(n, seed=n)
    with socket.create_connection(where, timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = recv_all(s)
    assert got == data, "%d bytes back of %d" % (len(got), n)


class Load:
    """Two client threads running echo sessions back to back until stopped; each result with its start time."""

    def __init__(self, where, threads=2):
        self.where, self.results, self.running = where, [], True
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]
        for t in self.threads:
            t.start()

    def run(self, index):
        n = 0
        while self.running and n < 2000:  # bounded
            n += 1
            began = time.monotonic()
            try:
                echo_session(self.where, 4096 + 64 * n + index)
                self.results.append((began, None))
            except (OSError, AssertionError) as e:
                self.results.append((began, repr(e)))

    def failures(self, since=0.0):
        return [error for began, error in self.results if error is not None and began >= since]

    def count(self, since=0.0):
        return len([1 for began, _ in self.results if began >= since])

    def stop(self):
        self.running = False
        for t in self.threads:
            t.join(TIMEOUT)


def down_up(relay, address):
    """The backend-down and backend-up lines logged for ``address``."""
    text = relay.text()
    return (text.count("backend %s down: " % address), text.count("backend %s up: " % address))


def wait_until(predicate, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_backend_killed_or_frozen_then_back_under_load(start, how):
    """
    Killed: SIGKILL then a new process on the same port.  Frozen: SIGSTOP
    (the kernel still accepts into its backlog, nothing answers: without a
    check, every session sent there would hang) then SIGCONT.  Clients
    that started once the down event was logged all succeed; after the
    up event the backend serves again; each event is logged exactly once.
    """
    a, b = start.backend("echo"), start.backend("echo")
    check = "tcp" if how == "killed" else "send 'PING\\n' expect PING"  # frozen: a connect still succeeds
    relay = start(["tcp", "--listen", LOCAL, "--connect", a.tcp, "--connect", b.tcp, "--check", check] + FAST)
    where = listening(relay)
    load = Load(where)
    try:
        wait_until(lambda: load.count() >= 20)
        assert load.failures() == []
        a.kill(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        relay.wait_for(r"backend %s down: " % a.address)
        after_down = time.monotonic()
        wait_until(lambda: load.count(after_down) >= 40)
        assert load.failures(after_down) == []
        if how == "killed":
            a.restart()
        else:
            a.kill(signal.SIGCONT)
        relay.wait_for(r"backend %s up: " % a.address)
        after_up = time.monotonic()
        served = relay.text().count("-> %s:" % a.address)
        wait_until(lambda: load.count(after_up) >= 40 and relay.text().count("-> %s:" % a.address) > served + 5)
        assert load.failures(after_down) == []
    finally:
        load.stop()
    assert load.failures(after_down) == []
    assert down_up(relay, a.address) == (1, 1) and down_up(relay, b.address) == (0, 0)


def black_hole():
    """A port on 127.0.0.1 whose connects hang: its one-slot backlog is full and nobody accepts."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    filler = socket.create_connection(hole.getsockname(), timeout=TIMEOUT)
    return hole, filler


def test_every_backend_down_refuses_tcp_clients_at_once(start):
    """A black-holed backend (connects hang): once its check failed, clients are closed at once, not kept 10 s."""
    hole, filler = black_hole()
    try:
        address = "127.0.0.1:%d" % hole.getsockname()[1]
        relay = start(["tcp", "--listen", LOCAL, "--connect", "tcp:host=127.0.0.1:port=%d" % hole.getsockname()[1],
                       "--check", "tcp", "--check-interval", "0.3", "--check-timeout", "0.3"])
        where = listening(relay)
        relay.wait_for(r"backend %s down: no answer within 0.3s" % address)
        for _ in range(5):
            began = time.monotonic()
            with connect(where) as s:
                s.sendall(b"hello")
                assert recv_all(s) == b""
            assert time.monotonic() - began < 0.5
        relay.wait_for(r"session ended: 127\.0\.0\.1:\d+ -> None: .*, backends-down: every backend is down", 5)
        assert relay.text().count("session ended: ") >= 5 and "backends-down" in relay.text()
        assert down_up(relay, address) == (1, 0)  # still down: logged once, not once per check
    finally:
        filler.close()
        hole.close()


def http_get(where, path="/", timeout=3.0):
    with socket.create_connection(where, timeout=timeout) as s:
        s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
        answer = recv_all(s)
    return int(answer.split(b" ", 2)[1]), answer


def test_http_check_wrong_status_marks_down_and_the_proxy_answers_502(start):
    """The backend answers /health with 500: down, and the proxy answers 502 itself, at once."""
    sick, well = start.backend("http:500"), start.backend("http:200")
    relay = start(["http", "--listen", LOCAL, "--connect", sick.tcp, "--check", "http /health code 200"] + FAST)
    where = listening(relay)
    relay.wait_for(r"backend %s down: status 500, expected 200" % sick.address)
    began = time.monotonic()
    status, answer = http_get(where, "/page")
    assert status == 502 and b"every backend is down" in answer and time.monotonic() - began < 0.5
    assert "/page" not in " ".join(sick.lines("request"))  # only the checks reached it
    assert all(line == "GET /health HTTP/1.1" for line in sick.lines("request"))

    relay2 = start(["http", "--listen", LOCAL, "--connect", well.tcp, "--check", "http /health"] + FAST, "relay2")
    where2 = listening(relay2)
    wait_until(lambda: len(well.lines("request")) >= 2)
    assert http_get(where2, "/page")[0] == 200
    assert down_up(relay2, well.address) == (0, 0)


def test_send_expect_against_a_line_server(start):
    """send PING expect PONG: the line server passes, the echo server (it says PING back) does not."""
    line, echo = start.backend("line"), start.backend("echo")
    relay = start(["tcp", "--listen", LOCAL, "--connect", echo.tcp, "--connect", line.tcp,
                   "--check", "send 'PING\\n' expect PONG"] + FAST)
    where = listening(relay)
    relay.wait_for(r"backend %s down: expected 'PONG', got 'PING\\n' within 0.5s" % echo.address)
    for _ in range(6):
        with connect(where) as s:
            s.sendall(b"PING\n")
            s.shutdown(socket.SHUT_WR)
            assert recv_all(s) == b"PONG\n"
    assert "PING" in line.lines("line")
    assert down_up(relay, line.address) == (0, 0)


def test_tls_backends_are_checked_over_tls(start, tmp_path):
    """
    An HTTPS backend, checked with the relay's own TLS client options
    (trusting its certificate): up, its check a GET over TLS.  A second
    one whose certificate is not trusted: down, with the TLS error.
    """
    trusted, untrusted = tmp_path / "trusted", tmp_path / "untrusted"
    trusted.mkdir(), untrusted.mkdir()
    good = start.backend("http:200", tls=make_cert(trusted))
    bad = start.backend("http:200", tls=make_cert(untrusted))
    roots = tmp_path / "roots"
    roots.mkdir()
    (roots / "ca.pem").write_bytes((trusted / "cert.pem").read_bytes())
    tls = "tls:host=127.0.0.1:port=%d:trustRoots=" + str(roots)
    relay = start(["http", "--listen", LOCAL, "--connect", tls % good.port, "--connect", tls % bad.port,
                   "--check", "http /health"] + FAST)
    where = listening(relay)
    relay.wait_for(r"backend %s down: .*certificate verify failed" % bad.address)
    wait_until(lambda: len(good.lines("request")) >= 2)
    assert set(good.lines("request")) == {"GET /health HTTP/1.1"}
    assert bad.lines("request") == [] and bad.lines("tls-error")
    for _ in range(4):
        assert http_get(where, "/over-tls")[0] == 200
    assert good.lines("request").count("GET /over-tls HTTP/1.1") == 4
    assert down_up(relay, good.address) == (0, 0)


def test_balance_option_and_config_keys(start, tmp_path):
    """--balance source-hash sends one client host to one backend; the config file takes the same keys."""
    a, b = start.backend("echo"), start.backend("echo")
    config = tmp_path / "relays.toml"
    config.write_text(
        '[relay.hashed]\nlisten = "%s"\nconnect = ["%s", "%s"]\nbalance = "source-hash"\n'
        'check = "tcp"\ncheck-interval = 0.2\ncheck-timeout = 0.5\n' % (LOCAL, a.tcp, b.tcp))
    relay = start(["--config", str(config)])
    where = listening(relay)
    for n in range(6):
        echo_session(where, 100 + n)
    relay.wait_for(r"session ended: ", 6)
    assert len(set(relay.wait_for(r"-> (127\.0\.0\.1:\d+): \d+ bytes out"))) == 1


@pytest.mark.parametrize("args,expected", [
    (["tcp", "--balance", "leastconn"], "--balance must be one of roundrobin, random, source-hash, least-connections,"
                                        " not 'leastconn'"),
    (["http", "--check", "http health"], "--check 'http health': an http check needs a path starting with '/'"),
    (["tcp", "--check", "send PING"], "--check 'send PING': expected 'send STRING expect STRING'"),
    (["tcp", "--check", "ping"], "--check 'ping': expected tcp, 'http /PATH [code N]' or 'send STRING expect STRING'"),
    (["tcp", "--check-interval", "0"], "--check-interval must be a finite number >= 0.05, not '0'"),
    (["tcp", "--check-timeout", "soon"], "--check-timeout takes a number, not 'soon'"),
    (["--config", "{tmp}/bad.toml"], "bad.toml:3: relay web: --check 'http': an http check needs a path"),
])
def test_bad_check_and_balance_values_are_one_line(tmp_path, args, expected):
    (tmp_path / "bad.toml").write_text('[relay.web]\nlisten = "%s"\ncheck = "http"\n' % LOCAL)
    code, out = procs.run_twistd([a.format(tmp=tmp_path) for a in args])
    lines = [line for line in out.splitlines() if line.strip()]
    assert code == 1 and len(lines) <= 2 and "Traceback" not in out, out
    assert expected.format(tmp=tmp_path) in lines[-1], out


def test_workers_log_a_change_once(start):
    """Two workers check the same dead backend, each for itself: the master's log says it once."""
    relay = start(["tcp", "--workers", "2", "--listen", LOCAL, "--connect", "tcp:host=127.0.0.1:port=%d"
                   % procs.free_port(), "--check", "tcp", "--check-interval", "0.1"])
    relay.wait_for(r"worker \d+ started", 2)
    relay.wait_for(r"\[worker \d splicing\.relay\.checks\.HealthChecks#warn\] backend 127\.0\.0\.1:\d+ down: ")
    time.sleep(1.0)  # ten rounds of both workers' checks
    assert len(re.findall(r"backend 127\.0\.0\.1:\d+ down: ", relay.text())) == 1


def test_reload_stops_the_retired_relays_checks(start, tmp_path):
    """SIGHUP replaces a changed relay: its old checks stop with it (no double checks, no stale log lines)."""
    backend = procs.Backend(procs.echo)
    try:
        config = tmp_path / "relays.toml"
        text = '[relay.web]\nlisten = "%s"\nconnect = "%s"\ncheck = "tcp"\ncheck-interval = %s\n'
        config.write_text(text % (LOCAL, backend.tcp, 0.05))
        relay = start(["--config", str(config)])
        relay.listening()
        wait_until(lambda: backend.accepted >= 10)  # twenty checks a second
        config.write_text(text % (LOCAL, backend.tcp, 2))
        relay.signal(signal.SIGHUP)
        relay.wait_for(r"reload: start \['web'\], stop \['web'\]")
        time.sleep(0.3)
        before = backend.accepted
        time.sleep(1.0)
        assert backend.accepted - before <= 1  # the new relay's, every 2 s; not the old one's twenty
    finally:
        backend.close()
