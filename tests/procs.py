"""
Real processes and plain blocking sockets for the relay and CLI tests.

- ``Twistd`` starts ``twistd -n --pidfile= splice ...`` (the venv's twistd,
  next to sys.executable), logs to a file, waits for its "relay NAME
  listening on ADDRESS" lines and always kills it (``close``).
- ``Backend`` is a threaded TCP server on 127.0.0.1 or ::1 running a
  handler per connection (echo, hash-and-answer, read a PROXY header...).
- ``connect``/``recv_all`` are bounded blocking-socket helpers.

Every wait here has a deadline.
"""

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

TIMEOUT = 10.0
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
_LISTENING = re.compile(r"relay (\S+) listening on (\S+)")


def twistd_command(tool="twistd"):
    exe = os.path.join(os.path.dirname(sys.executable), tool)
    if os.path.exists(exe):
        return [exe]
    if tool == "twist":
        return [sys.executable, "-m", "twisted"]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def address(text):
    """("host", port) from a logged 127.0.0.1:80 or [::1]:80; a path from unix:PATH."""
    if text.startswith("unix:"):
        return text[5:]
    host, port = text.rsplit(":", 1)
    return host.strip("[]"), int(port)


class Twistd:
    """One ``twistd splice`` process."""

    def __init__(self, tmp, args, name="relay", env=None, tool="twistd"):
        self.logpath = os.path.join(str(tmp), name + ".log")
        self.log = open(self.logpath, "wb")
        environ = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        pre = ["-n", "--pidfile="] if tool == "twistd" else []
        self.args = twistd_command(tool) + pre + ["splice"] + list(args)
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, env=environ)

    def text(self):
        with open(self.logpath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def wait_for(self, pattern, count=1, timeout=TIMEOUT):
        """The matches of ``pattern`` once there are ``count``; fails on timeout or exit."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.findall(self.text())
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                raise AssertionError("twistd exited (%s) before %r:\n%s" % (self.proc.returncode, pattern, self.text()))
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for %r:\n%s" % (pattern, self.text()))
            time.sleep(0.05)

    def listening(self, count=1, timeout=TIMEOUT):
        """{relay name: [(host, port), ...]} once ``count`` ports listen."""
        found = self.wait_for(_LISTENING.pattern, count, timeout)
        out = {}
        for name, where in found:
            out.setdefault(name, []).append(address(where))
        return out

    def events(self):
        """The log as twisted.logger JSON events (``twist`` logs JSON when not on a terminal)."""
        import json

        # Only whole lines: the relay may be writing its last one as we read (the
        # text after the last newline is an event not yet finished).
        complete = self.text().rpartition("\n")[0]
        return [json.loads(line) for line in complete.splitlines() if line.startswith("{")]

    def signal(self, number):
        self.proc.send_signal(number)

    def wait(self, timeout=TIMEOUT):
        return self.proc.wait(timeout)

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(TIMEOUT)
        self.log.close()


def run_twistd(args, timeout=20.0, tool="twistd", cwd=None):
    """Run to completion: (exit status, output)."""
    pre = ["-n", "--pidfile="] if tool == "twistd" else []
    p = subprocess.run(twistd_command(tool) + pre + ["splice"] + list(args), cwd=cwd or ROOT,
                       capture_output=True, timeout=timeout)
    return p.returncode, (p.stdout + p.stderr).decode("utf-8", "replace")


class Backend:
    """
    A threaded TCP server: ``handler(sock, backend)`` runs per connection.
    ``accepted`` counts connections; ``records`` collects what handlers store.
    """

    def __init__(self, handler, host="127.0.0.1"):
        """``host`` is an IPv4 or IPv6 address, or the path of a UNIX socket."""
        family = socket.AF_UNIX if host.startswith("/") else socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_UNIX:
            self.listener.bind(host)
            self.host, self.port = host, None
        else:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind((host, 0))
            self.host, self.port = host, self.listener.getsockname()[1]
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.handler = handler
        self.accepted = 0
        self.records = []
        self._stop = False
        self._threads = []
        self._main = threading.Thread(target=self._serve, daemon=True)
        self._main.start()

    @property
    def tcp(self):
        """Its client endpoint string (tcp:, or unix: for a UNIX socket)."""
        if self.port is None:
            return "unix:" + self.host
        host = self.host.replace(":", "\\:")
        return "tcp:host=%s:port=%d" % (host, self.port)

    def _serve(self):
        while not self._stop:
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted += 1
            sock.settimeout(TIMEOUT)
            t = threading.Thread(target=self._run, args=(sock,), daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self, sock):
        try:
            self.handler(sock, self)
        except OSError as e:
            self.records.append(("error", e))
        finally:
            sock.close()

    def last(self, timeout=TIMEOUT):
        """The newest record, waiting for it: a handler records once it saw EOF, which may be after the relay logged."""
        deadline = time.monotonic() + timeout
        while not self.records and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.records[-1]

    def close(self):
        self._stop = True
        self._main.join(TIMEOUT)
        self.listener.close()
        for t in self._threads:
            t.join(TIMEOUT)


def free_port(host="127.0.0.1"):
    """A port nobody listens on (connects to it are refused)."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def connect(where, timeout=TIMEOUT):
    """A connected blocking socket to (host, port) or a UNIX socket path."""
    if isinstance(where, str):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(timeout)
        s.connect(where)
        return s
    return socket.create_connection(where, timeout=timeout)


def recv_all(sock, limit=None):
    """Everything until EOF (or ``limit`` bytes)."""
    chunks, n = [], 0
    while limit is None or n < limit:
        data = sock.recv(65536 if limit is None else min(65536, limit - n))
        if not data:
            break
        chunks.append(data)
        n += len(data)
    return b"".join(chunks)


def recv_exactly(sock, n):
    """Exactly ``n`` bytes from ``sock`` (an EOF before them fails the test)."""
    chunks = []
    while n:
        chunk = sock.recv(n)
        assert chunk, "EOF with %d bytes missing" % n
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def payload(n, seed=0):
    """``n`` deterministic pseudo-random bytes."""
    out, block, i = [], b"", 0
    while sum(map(len, out)) < n:
        block = hashlib.sha256(b"%d:%d" % (seed, i)).digest() * 256
        out.append(block)
        i += 1
    return b"".join(out)[:n]


def sha256(data):
    return hashlib.sha256(data).hexdigest()


# -- backend handlers


def hash_and_answer(sock, backend):
    """Read to EOF, answer the SHA-256 of what came, then 1 MiB + what came's length, then close."""
    data = recv_all(sock)
    answer = payload(1 << 20, seed=len(data))
    backend.records.append(sha256(data))
    sock.sendall(sha256(data).encode() + b"\n" + answer)


def echo(sock, backend):
    while True:
        data = sock.recv(65536)
        if not data:
            return
        sock.sendall(data)


def greet_then_read(sock, backend):
    """Half-close from the server side: send, shut down writing, then read to EOF."""
    sock.sendall(b"hello from the backend\n")
    sock.shutdown(socket.SHUT_WR)
    backend.records.append(recv_all(sock))


def read_proxy_header(sock, backend):
    """Record the first 232 bytes or what came before EOF (a PROXY header and a line)."""
    data = recv_all(sock)
    backend.records.append(data)
    sock.sendall(b"ok\n")
