"""
What a user installed from a package reads and copies: `twistd splice --help`
must stand on its own (examples that run, no pointer to a docs/ folder the
package lacks), and the logged "try it" command must work for IPv6
listeners too.
"""

import http.client
import re
import shlex
import shutil
import subprocess
import time

import pytest

import procs
from procs import Backend

HELP_EXAMPLE = re.compile(r"^  (twistd -n --pidfile= splice .*?)$", re.M)


def test_help_is_self_sufficient():
    status, out = procs.run_twistd(["--help"])
    assert status == 0, out
    examples = HELP_EXAMPLE.findall(out)
    assert len(examples) >= 4, out
    assert "splicing's source tree" in out  # where the guide is, named so an installed user can find it
    assert "See docs/usage.md" not in out  # a path relative to nothing an installed user has


def test_help_demo_example_runs(tmp_path):
    """The help's first example, as printed (its port made free), serves the demo site."""
    status, out = procs.run_twistd(["--help"])
    first = HELP_EXAMPLE.findall(out)[0]
    port = procs.free_port()
    args = shlex.split(first.replace("tcp:8080:", "tcp:%d:" % port))
    assert args[:4] == ["twistd", "-n", "--pidfile=", "splice"]
    relay = procs.Twistd(tmp_path, args[4:])  # Twistd adds -n --pidfile= itself
    try:
        relay.listening()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/")
        assert c.getresponse().status == 200
        c.close()
    finally:
        relay.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="the hint's client, curl, is not installed")
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_try_it_hint_works(tmp_path, host):
    """The logged hint, run as printed, reaches the backend through the relay (IPv6 too)."""
    def echo_once(sock, backend):
        data = sock.recv(100)
        sock.sendall(data)
        backend.records.append(data)
        procs.recv_all(sock)

    echo = Backend(echo_once)
    escaped = host.replace(":", "\\:")
    relay = procs.Twistd(tmp_path, ["tcp", "--listen", "tcp6:0:interface=%s" % escaped if ":" in host
                                     else "tcp:0:interface=%s" % host, "--connect", echo.tcp])
    try:
        (command,) = relay.wait_for(r"try it: (.*)")
        p = subprocess.Popen(shlex.split(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
        p.stdin.write(b"hello\n")
        p.stdin.flush()
        deadline = time.monotonic() + procs.TIMEOUT
        while not echo.records and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        time.sleep(0.2)  # the echo's way back to the client
        p.kill()
        p.wait(procs.TIMEOUT)
        assert echo.records == [b"hello\n"]
        relay.wait_for(r"session ended: \S+ -> \S+: 6 bytes out, 6 bytes in")
    finally:
        relay.close()
        echo.close()
