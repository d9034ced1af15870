"""
Where the relay's time goes on each path: py-spy samples the relay process
while the suite's own load runs through it.

    python -m benchmarks.profiles [--only kernel,mbuf,...] [--seconds 3] [--out DIR]

Paths: C{kernel} and C{mbuf} (one bulk TCP session through C{twistd splice
tcp}, default path and C{--backend mbuf}), C{sessions} (the session-rate
load: connect, 1 KiB each way, close), C{latency} (1-byte ping-pong),
C{udp} (64-byte datagrams, unpaced) and C{http} (a chunked download through
the HTTP proxy).  py-spy attaches to the running relay (C{--nonblocking}:
the relay is not paused) and samples 200 times a second; for each path the
report gives the share of samples in which the relay ran Python at all
(the rest it sat in C{epoll_wait}) and the functions that were on top of
the stack most often ("self" time: a function's own code and the system
calls it makes, such as C{os.splice}).  The full top lists are written to
C{DIR/profiles/PATH.txt}.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter

from benchmarks.procs import BenchError, kill, run_load

RATE = 200  # samples per second
PATHS = ["kernel", "mbuf", "sessions", "latency", "udp", "http"]


def pyspy():
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return here if os.path.exists(here) else shutil.which("py-spy")


def parse_raw(text):
    """py-spy's raw (collapsed) output -> (Counter of leaf functions, Counter inclusive, total)."""
    self_, incl, total = Counter(), Counter(), 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";")]
        total += n
        self_[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    return self_, incl, total


def _frame(f):
    """C{"fill (splicing/paths/kernel.py:57)"} -> C{"fill (splicing/paths/kernel.py)"}."""
    name, _, where = f.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3."):
        if marker in where:
            where = where.split(marker, 1)[1]
            if marker == "lib/python3.":
                where = "stdlib " + where.split("/", 1)[-1]
    return "%s (%s)" % (name, where)


class Sampler:
    """py-spy recording one process for a fixed time, in the background."""

    def __init__(self, pid, seconds, path):
        self.path = path
        self.proc = subprocess.Popen(
            [pyspy(), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(RATE),
             "--format", "raw", "--output", path, "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        time.sleep(0.5)  # attached before the load starts

    def result(self, timeout):
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchError("py-spy did not finish")
        finally:
            kill(self.proc)
        if not os.path.exists(self.path):
            raise BenchError("py-spy wrote nothing: %s" % err.strip()[-300:])
        with open(self.path) as f:
            return parse_raw(f.read())


# -- one function per path: start the relay and its load, sample, stop ---------


def _tcp_relay(name, dest, workdir):
    from benchmarks.tcp_throughput import Relay

    r = Relay(name, workdir, dest)
    r.start()
    return r


def _bulk(name, seconds, workdir, out):
    from benchmarks.tcp_throughput import Receiver, run_once

    receiver = Receiver(workdir)
    relay = None
    try:
        relay = _tcp_relay(name, receiver.port, workdir)
        s = Sampler(relay.proc.pid, seconds, out)
        run_once(relay, receiver, seconds=seconds + 1)
        return s.result(30)
    finally:
        if relay:
            relay.stop()
        kill(receiver.proc)


def _echo_path(kind, seconds, workdir, out):
    from benchmarks.procs import Load
    from benchmarks.session_rate import SIZE, run_rate

    origin = Load("benchmarks._echoload", ["origin"] + (["--close-after", SIZE] if kind == "rate" else []),
                  workdir, name="profile-origin")
    relay = None
    try:
        relay = _tcp_relay("splice", origin.port(), workdir)
        s = Sampler(relay.proc.pid, seconds, out)
        if kind == "rate":
            run_rate(relay.port, seconds + 1, 32)
        else:
            run_load("benchmarks._echoload", ["ping", "--port", relay.port,
                                              "--count", int((seconds + 1) / 80e-6)], seconds + 60)
        return s.result(30)
    finally:
        if relay:
            relay.stop()
        origin.stop()


def _udp(seconds, workdir, out):
    from benchmarks.udp_throughput import Receiver, Relay, run

    receiver = Receiver()
    relay = None
    try:
        relay = Relay("splice", receiver.port)
        s = Sampler(relay.proc.pid, seconds, out)
        run(receiver, relay, 64, seconds + 1, 0)
        return s.result(30)
    finally:
        if relay:
            kill(relay.proc)
        kill(receiver.proc)


def _http(seconds, workdir, out):
    from benchmarks.http_throughput import Origin, Relay, run_client

    origin = Origin(workdir)
    relay = None
    try:
        relay = Relay("http-proxy", workdir, origin.port)
        relay.start()
        s = Sampler(relay.proc.pid, seconds, out)
        res = run_client(relay, "dl", 6 << 30, True, timeout=seconds + 60)  # outlasts the sampling
        if res.get("error"):
            raise BenchError("http load: %s" % res["error"])
        return s.result(30)
    finally:
        if relay:
            kill(relay.proc)
        kill(origin.proc)


def profile(path, seconds, workdir, outdir):
    out = os.path.join(workdir, path + ".raw")
    runners = {
        "kernel": lambda: _bulk("splice", seconds, workdir, out),
        "mbuf": lambda: _bulk("splice-mbuf", seconds, workdir, out),
        "sessions": lambda: _echo_path("rate", seconds, workdir, out),
        "latency": lambda: _echo_path("ping", seconds, workdir, out),
        "udp": lambda: _udp(seconds, workdir, out),
        "http": lambda: _http(seconds, workdir, out),
    }
    self_, incl, total = runners[path]()
    expected = RATE * seconds
    lines = ["%s: %d samples with Python running of ~%d taken (%.0f%%)" % (
        path, total, expected, 100.0 * total / expected), "", "self (top of stack):"]
    lines += ["  %5.1f%%  %s" % (100.0 * n / total, f) for f, n in self_.most_common(25)]
    lines += ["", "inclusive (anywhere on the stack):"]
    lines += ["  %5.1f%%  %s" % (100.0 * n / total, f) for f, n in incl.most_common(40)]
    if outdir:
        os.makedirs(os.path.join(outdir, "profiles"), exist_ok=True)
        with open(os.path.join(outdir, "profiles", path + ".txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return {"path": path, "busy": 100.0 * total / expected, "self": self_, "total": total,
            "text": "\n".join(lines)}


def measure(paths, seconds, outdir, log=lambda m: None):
    workdir = tempfile.mkdtemp(prefix="splicing-profiles-")
    results, failures = [], []
    try:
        for p in paths:
            try:
                results.append(profile(p, seconds, workdir, outdir))
                log("profiles: %s done" % p)
            except BenchError as e:
                failures.append("profiles: %s: %s" % (p, e))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return results, failures


def suite(ctx):
    from benchmarks.report import Table
    from benchmarks.scenario import Outcome

    if not pyspy():
        return Outcome(failures=["profiles: py-spy is not installed (pip install py-spy)"])
    seconds = ctx.pick(3, 1)
    ctx.log("profiles: %s, %d s each" % (", ".join(PATHS), seconds))
    results, failures = measure(PATHS, seconds, ctx.outdir, ctx.log)
    table = Table(
        "profiles", "Where the relay's time goes (py-spy)",
        "py-spy sampled the relay process %d times a second for %d s while the load of each "
        "path ran through it. `busy` = share of samples in which the relay was running Python "
        "code (or a system call made from it) rather than waiting in epoll; `top` = the "
        "functions most often on top of the stack, as a share of the busy samples. Full lists: "
        "`profiles/PATH.txt` next to this report." % (RATE, seconds),
        [("relay", "path", "%s"), ("busy", "busy", "%.0f%%"), ("top", "top (self time)", "%s")])
    for r in results:
        top = "; ".join("%.0f%% %s" % (100.0 * n / r["total"], f)
                        for f, n in r["self"].most_common(5))
        table.rows.append({"relay": r["path"], "busy": r["busy"], "top": top})
    return Outcome([table], [], failures)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.profiles", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(PATHS))
    p.add_argument("--seconds", type=int, default=3)
    p.add_argument("--out", default=None, help="also write DIR/profiles/PATH.txt")
    args = p.parse_args(argv)
    results, failures = measure(args.only.split(","), args.seconds, args.out)
    for r in results:
        print(r["text"].split("\ninclusive")[0] + "\n")
    for f in failures:
        print("failure:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
