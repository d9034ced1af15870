"""
Driving checked traffic through a relay and measuring the relay from outside.

- L{Origin}: ``traffic.py origin`` in its own process; C{stop()} returns its
  summary (sessions checked, bytes, failures, the most sessions it held at once).
- L{clients}: N ``traffic.py clients`` processes at once, their summaries merged.
- L{Probe}: a process's descriptors, pipes, RSS, peak RSS and CPU time from /proc.
- L{settle}: poll until a probe's readings come back to a baseline.
- L{stalling_reader}, L{push_into_stall}: bulk bytes toward a backend that
  stops reading, the relay's RSS sampled meanwhile.

The relay itself is started with C{procs.Twistd} (tests/procs.py).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib

#: One relay per way a session can end without its backend: idle timeouts,
#: the session cap, a refusing backend, refused clients (fill in listen,
#: origin, cap, dead).
LEAK_CONFIG = """\
[relay.main]
listen = "{listen}"
connect = "{origin}"
idle = 1

[relay.cap]
listen = "{listen}"
connect = "{origin}"
max-sessions = {cap}

[relay.dead]
listen = "{listen}"
connect = "tcp:host=127.0.0.1:port={dead}"
connect-timeout = 1

[relay.deny]
listen = "{listen}"
connect = "{origin}"
allow = ["10.0.0.0/8"]
"""

TRAFFIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "traffic.py")


class Origin:
    """The checking origin (``traffic.py origin``) in its own process."""

    def __init__(self, host="127.0.0.1", stall=5.0, timeout=120.0, port=0):
        self.host = host
        self.proc = subprocess.Popen([sys.executable, TRAFFIC, "origin", "--host", host, "--port", str(port),
                                      "--stall", str(stall), "--timeout", str(timeout)],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the origin did not start")
        self.port = json.loads(line)["listening"]
        self.summary = None

    @property
    def tcp(self):
        """Its client endpoint string."""
        return "tcp:host=%s:port=%d" % (self.host.replace(":", "\\:"), self.port)

    def stop(self, timeout=30.0):
        """SIGTERM; its summary (a dict)."""
        if self.summary is None:
            self.proc.send_signal(signal.SIGTERM)
            out, _ = self.proc.communicate(timeout=timeout)
            self.summary = json.loads(out.strip().splitlines()[-1])
        return self.summary

    def kill(self):
        """Die mid-stream, as a crashing backend does."""
        self.proc.kill()
        self.proc.wait(10)
        self.summary = {}

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def start_clients(targets, sessions, concurrency, procs=1, mix="normal", mode="random", max_up=1 << 16, max_down=1 << 16,
                  seed=0, first_id=1, start_at=None, go_file=None, timeout=60.0, stall=3.0, idle_deadline=10.0, deadline=300.0):
    """Start ``procs`` client processes sharing ``sessions`` and ``concurrency``; see L{finish}."""
    running = []
    for i in range(procs):
        n = sessions // procs + (1 if i < sessions % procs else 0)
        c = concurrency // procs + (1 if i < concurrency % procs else 0)
        args = [sys.executable, TRAFFIC, "clients", "--sessions", str(n), "--concurrency", str(max(1, c)),
                "--id", str(first_id + i), "--seed", str(seed), "--mix", mix, "--mode", mode, "--max-up", str(max_up),
                "--max-down", str(max_down), "--timeout", str(timeout), "--stall", str(stall),
                "--idle-deadline", str(idle_deadline), "--deadline", str(deadline)]
        if start_at:
            args += ["--start-at", repr(start_at)]
        if go_file:
            args += ["--go-file", str(go_file)]
        for where in targets:
            host, port = where
            args += ["--target", "%s:%d" % (("[%s]" % host) if ":" in host else host, port)]
        running.append(subprocess.Popen(args, stdout=subprocess.PIPE, text=True))
    return running


def finish(running, timeout=400.0):
    """Wait for client processes; their merged summary."""
    total = {"sessions": 0, "ok": 0, "checked_bytes": 0, "sent_bytes": 0, "failed": [], "kinds": {},
             "connect_errors": 0, "ended_early": 0, "unfinished": 0, "elapsed": 0.0}
    deadline = time.monotonic() + timeout
    for p in running:
        try:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            total["failed"].append("client process timed out")
            continue
        lines = out.strip().splitlines()
        if p.returncode or not lines:
            total["failed"].append("client process exited %s" % p.returncode)
            continue
        s = json.loads(lines[-1])
        for key in ("sessions", "ok", "checked_bytes", "sent_bytes", "connect_errors", "ended_early", "unfinished"):
            total[key] += s[key]
        total["failed"] += s["failed"]
        total["elapsed"] = max(total["elapsed"], s["elapsed"])
        for k, v in s["kinds"].items():
            total["kinds"][k] = total["kinds"].get(k, 0) + v
    return total


def clients(targets, sessions, concurrency, **kw):
    """Run client processes to the end; their merged summary."""
    timeout = kw.pop("wait", 400.0)
    return finish(start_clients(targets, sessions, concurrency, **kw), timeout)


class Probe:
    """What /proc says about process ``pid``."""

    def __init__(self, pid):
        self.pid = pid
        self.peak_rss = 0

    def fds(self):
        """(descriptors that are not pipes, pipes)."""
        pipes = other = 0
        base = "/proc/%d/fd" % self.pid
        for name in os.listdir(base):
            try:
                target = os.readlink(os.path.join(base, name))
            except OSError:
                continue
            if target.startswith("pipe:"):
                pipes += 1
            else:
                other += 1
        return other, pipes

    def _status(self, field):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def rss(self):
        value = self._status("VmRSS")
        self.peak_rss = max(self.peak_rss, value, self._status("VmHWM"))
        return value

    def cpu(self):
        """User + system CPU seconds so far."""
        with open("/proc/%d/stat" % self.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def snapshot(self):
        other, pipes = self.fds()
        return {"fds": other, "pipes": pipes, "rss": self.rss()}


def settle(probe, baseline, rss_slack=4 << 20, timeout=15.0):
    """
    Poll until ``probe`` shows no more descriptors and pipes than
    ``baseline`` and an RSS within ``rss_slack`` of it; the last snapshot.
    """
    deadline = time.monotonic() + timeout
    while True:
        now = probe.snapshot()
        if (now["fds"] <= baseline["fds"] and now["pipes"] <= baseline["pipes"]
                and now["rss"] <= baseline["rss"] + rss_slack) or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


def raise_fd_limit():
    """Let this process and its children (the relay) use the hard limit of descriptors."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# -- bulk bytes into a stalled receiver

BLOCK = os.urandom(1 << 20)


def blocks(total):
    """``total`` bytes in 1 MiB blocks, each stamped with its index (a reordering shows)."""
    for i in range(total >> 20):
        yield i.to_bytes(8, "big") + BLOCK[8:]


def stalling_reader(seconds, head=False):
    """
    A backend handler: stop reading for ``seconds``, then read to EOF (or,
    with ``head``, a request head and its Content-Length body); records
    (bytes, crc32).
    """

    def handler(sock, backend):
        want = None
        if head:
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(1)
            want = int(re.search(rb"Content-Length: (\d+)", data).group(1))
        time.sleep(seconds)
        n, crc = 0, 0
        while want is None or n < want:
            chunk = sock.recv(1 << 20 if want is None else min(1 << 20, want - n))
            if not chunk:
                break
            n, crc = n + len(chunk), zlib.crc32(chunk, crc)
        backend.records.append((n, crc))
        if head:
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        else:
            sock.shutdown(socket.SHUT_WR)

    return handler


def push_into_stall(relay, where, total, stall, head=b""):
    """Send ``head`` and ``total`` bytes while the backend stalls; the relay's RSS growth at its peak."""
    probe = Probe(relay.proc.pid)
    before = probe.rss()
    growth = [0]
    done = threading.Event()

    def sample():
        while not done.wait(0.05):
            growth[0] = max(growth[0], probe.rss() - before)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    crc = 0
    with socket.create_connection(where, timeout=stall + 60) as s:
        s.sendall(head)
        for block in blocks(total):
            s.sendall(block)
            crc = zlib.crc32(block, crc)
        s.shutdown(socket.SHUT_WR)
        answer = b"".join(iter(lambda: s.recv(65536), b""))
    done.set()
    sampler.join()
    return growth[0], crc, answer
