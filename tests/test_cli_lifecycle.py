"""
Whole-process behaviour of real twistd/twist processes: the README's demo
command, the newer `twist` runner, SIGTERM with open sessions (graceful,
then bounded by --shutdown-timeout) and SIGHUP reloading a config file.
"""

import signal
import socket
import time
import urllib.request

import pytest

import procs
from procs import Backend, connect, recv_all, recv_exactly

LOCAL = "tcp:0:interface=127.0.0.1"


@pytest.fixture(scope="module")
def echo():
    b = Backend(procs.echo)
    yield b
    b.close()


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



def ping(where, data=b"ping"):
    with connect(where) as s:
        s.sendall(data)
        return s.recv(len(data))


def refused(where):
    try:
        connect(where, timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_readme_demo_without_connect(start):
    """The README's first command: no --connect starts the demo origin and prints how to try it."""
    relay = start(["tcp", "--listen", LOCAL])
    (where,) = relay.listening()["tcp"]
    (url,) = relay.wait_for(r"try it: curl (http://\S+)")
    assert url == "http://%s:%d/" % where
    page = urllib.request.urlopen(url, timeout=procs.TIMEOUT).read()
    assert b"Hello through splicing" in page
    relay.wait_for(r"session ended: .* bytes in, .*, eof")


def test_twist_runner_and_structured_session_event(start, echo):
    """`twist splice tcp` works; its JSON log shows the session's end as fields, not text."""
    relay = start(["tcp", "--listen", LOCAL, "--connect", echo.tcp], tool="twist")
    deadline = time.monotonic() + procs.TIMEOUT
    while not [e for e in relay.events() if e.get("what") == "relay"]:
        assert time.monotonic() < deadline and relay.proc.poll() is None, relay.text()
        time.sleep(0.05)
    (listening,) = [e for e in relay.events() if e.get("what") == "relay"]
    where = procs.address(listening["address"])
    with connect(where) as s:
        client = "%s:%d" % s.getsockname()
        s.sendall(b"x" * 1000)
        assert len(recv_exactly(s, 1000)) == 1000
        s.shutdown(socket.SHUT_WR)
        assert recv_all(s) == b""
    relay.signal(signal.SIGTERM)
    assert relay.wait() == -signal.SIGTERM  # twist re-raises the signal after a clean stop
    (ended,) = [e for e in relay.events() if e.get("log_format", "").startswith("session ended")]
    assert ended["client"] == client and ended["backend"] == "%s:%d" % (echo.host, echo.port)
    assert (ended["bytes_out"], ended["bytes_in"], ended["how"], ended["relay"]) == (1000, 1000, "eof", "tcp")
    assert ended["path"] in ("kernel", "mbuf") and ended["duration"] >= 0
    assert ended["target"] == echo.tcp


def test_sigterm_lets_sessions_finish(start, echo):
    relay = start(["tcp", "--listen", LOCAL, "--connect", echo.tcp, "--shutdown-timeout", "20"])
    (where,) = relay.listening()["tcp"]
    s = connect(where)
    s.sendall(b"before")
    assert s.recv(6) == b"before"
    relay.signal(signal.SIGTERM)
    relay.wait_for(r"waiting up to 20.0s for 1 sessions")
    assert refused(where)  # no longer accepting
    s.sendall(b"during")  # the running session goes on
    assert s.recv(6) == b"during"
    assert relay.proc.poll() is None
    stopped = time.monotonic()
    s.shutdown(socket.SHUT_WR)
    assert recv_all(s) == b""
    s.close()
    assert relay.wait() == -signal.SIGTERM  # a clean stop, then the signal re-raised (Twisted >= 22)
    assert time.monotonic() - stopped < 5
    assert len(relay.wait_for(r"session ended: .*, eof")) == 1


def test_sigterm_aborts_after_shutdown_timeout(start, echo):
    relay = start(["tcp", "--listen", LOCAL, "--connect", echo.tcp, "--shutdown-timeout", "1"])
    (where,) = relay.listening()["tcp"]
    s = connect(where)
    s.sendall(b"x")
    assert s.recv(1) == b"x"
    stopped = time.monotonic()
    relay.signal(signal.SIGTERM)
    try:
        assert recv_all(s) == b""
    except ConnectionResetError:
        pass
    s.close()
    assert relay.wait() == -signal.SIGTERM  # a clean stop, then the signal re-raised (Twisted >= 22)
    assert 0.9 < time.monotonic() - stopped < 5
    relay.wait_for(r"session ended: .*, shutdown")


RELAY = '[relay.{name}]\nlisten = "{listen}"\nconnect = "{connect}"\n\n'


def test_sighup_reload(start, echo, tmp_path):
    def write(names, ports):
        text = "".join(RELAY.format(name=n, listen="tcp:%d:interface=127.0.0.1" % ports.get(n, 0),
                                    connect=echo.tcp) for n in names)
        path.write_text(text)

    path = tmp_path / "relays.toml"
    fixed = {"b": procs.free_port()}  # b's text must stay the same to count as unchanged
    write(["a", "b"], fixed)
    relay = start(["--config", str(path)])
    ports = {n: w[0] for n, w in relay.listening(2).items()}
    held = connect(ports["a"])
    held.sendall(b"held")
    assert held.recv(4) == b"held"

    write(["b", "c"], fixed)  # a removed, b unchanged, c added
    relay.signal(signal.SIGHUP)
    relay.wait_for(r"reload: start \['c'\], stop \['a'\], keep \['b'\]")
    ports.update({n: w[0] for n, w in relay.listening(3).items() if n == "c"})
    assert ping(ports["c"]) == b"ping"
    assert ping(ports["b"]) == b"ping"
    assert refused(ports["a"])
    held.sendall(b"still")  # the removed relay's running session is untouched
    assert held.recv(5) == b"still"

    path.write_text("[relay.b]\nlisten = 7\n")  # a broken file changes nothing
    relay.signal(signal.SIGHUP)
    relay.wait_for(r"reload failed, keeping the running relays: .*relays.toml:2: relay b: --listen")
    assert ping(ports["b"]) == b"ping" and ping(ports["c"]) == b"ping"

    held.close()
    relay.wait_for(r"session ended: .*, eof")
    relay.signal(signal.SIGTERM)
    assert relay.wait() == -signal.SIGTERM  # a clean stop, then the signal re-raised (Twisted >= 22)
