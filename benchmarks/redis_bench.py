"""
A real client and server through each relay: C{redis-benchmark -t set,get,ping_inline}.

    python -m benchmarks.redis_bench [--requests 20000] [--clients 50] [--repeat 3]
                                     [--relays direct,portforward,splice,...]

The benchmark starts its own C{redis-server} on a free 127.0.0.1 port (no
persistence), puts each relay in front of it, and runs C{redis-benchmark}
(C{--csv}) through each in turn, interleaved.  Small requests and replies
on long-lived connections: what a relay costs per message, not per session
or per byte.  Skipped with a note when redis is not installed
(C{apt-get install -y redis-server redis-tools}).
"""

import argparse
import csv
import io
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks.procs import BenchError, free_port, kill, stop_all, wait_listening
from benchmarks.report import Spread
from benchmarks.tcp_throughput import start_relays

TARGET = 0.6  # splice vs direct, requests/s, the lowest of the three tests
TESTS = ["PING_INLINE", "SET", "GET"]
RELAYS = ["direct", "portforward", "splice"]
INSTALL = "apt-get install -y redis-server redis-tools"


def available():
    """Both programs on PATH (a missing one skips the scenario with a note)."""
    return bool(shutil.which("redis-server") and shutil.which("redis-benchmark"))


def parse_csv(text):
    """C{redis-benchmark --csv} output -> {test name: requests/s}."""
    rows = csv.reader(io.StringIO(text))
    out = {}
    for row in rows:
        if len(row) >= 2 and row[0] != "test":
            try:
                out[row[0]] = float(row[1])
            except ValueError:
                pass
    return out


class RedisServer:
    """A throwaway redis-server on 127.0.0.1 (no RDB, no AOF), stopped by L{stop}."""

    def __init__(self, workdir):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir, "--protected-mode", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        wait_listening(self.port, self.proc, time.monotonic() + 15, "redis-server")

    def stop(self):
        kill(self.proc)


def run_benchmark(port, requests, clients):
    """One C{redis-benchmark} run against 127.0.0.1:C{port}: {test: requests/s}."""
    cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "set,get,ping_inline",
           "-n", str(requests), "-c", str(clients), "--csv"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60 + requests / 1000)
    except subprocess.TimeoutExpired:
        raise BenchError("redis-benchmark timed out through port %d" % port)
    rates = parse_csv(out.stdout)
    if out.returncode or set(rates) != set(TESTS):
        raise BenchError("redis-benchmark failed (status %d): %s" % (out.returncode, (out.stderr or out.stdout)[-300:]))
    return rates


def measure(names, requests, clients, repeat, log=lambda m: None):
    """{relay: [{test: rps, "cpu_us": relay CPU per request}, ...]}, and failures."""
    workdir = tempfile.mkdtemp(prefix="splicing-redis-")
    server, relays, runs, failures = None, {}, {n: [] for n in names}, []
    try:
        server = RedisServer(workdir)
        relays = start_relays(names, workdir, server.port, "redis", failures)
        for rep in range(repeat):
            for n, r in relays.items():
                cpu0 = r.cpu()
                try:
                    res = run_benchmark(r.port, requests, clients)
                except BenchError as e:
                    failures.append("redis: %s run %d: %s" % (n, rep + 1, e))
                    continue
                cpu = r.cpu()
                res["cpu_us"] = None if cpu0 is None else 1e6 * (cpu - cpu0) / (requests * len(TESTS))
                runs[n].append(res)
            log("redis: repetition %d of %d done" % (rep + 1, repeat))
    finally:
        stop_all(list(relays.values()) + ([server] if server else []), workdir)
    return runs, failures


def summarize(runs):
    return {n: {k: Spread.of([r[k] for r in rs]) for k in TESTS + ["cpu_us"]} for n, rs in runs.items()}


def worst_ratio(summ, name, base="direct"):
    """The lowest of C{name}'s three requests/s ratios to C{base} (medians), or None."""
    from benchmarks.report import ratio

    if name not in summ or base not in summ:
        return None
    ratios = [ratio(summ[name][t], summ[base][t]) for t in TESTS]
    return None if None in ratios else min(ratios)


def suite(ctx):
    from benchmarks.report import Table, Verdict
    from benchmarks.scenario import Outcome

    if not available():
        ctx.log("redis: skipped, redis-server/redis-benchmark not installed (%s)" % INSTALL)
        t = Table("redis", "redis-benchmark through the TCP relay",
                  "Skipped: redis-server and redis-benchmark are not installed here (`%s`)." % INSTALL,
                  [("relay", "relay", "%s")])
        return Outcome([t], [])
    names = RELAYS + [n for n in ctx.peer_relays() if n == "haproxy"]
    requests, clients, repeat = ctx.pick(20000, 2000), 50, ctx.pick(3, 1)
    ctx.log("redis: %s, %d requests per test x %d" % (", ".join(names), requests, repeat))
    runs, failures = measure(names, requests, clients, repeat, ctx.log)
    summ = summarize(runs)
    table = Table(
        "redis", "redis-benchmark through the TCP relay",
        "`redis-benchmark -t set,get,ping_inline -n %d -c %d` against a `redis-server` the benchmark "
        "started on 127.0.0.1, through each relay; requests/s per test, `x direct` is the lowest of "
        "the three ratios; relay CPU = relay process CPU time per request; %d interleaved runs, "
        "median (min-max)." % (requests, clients, repeat),
        [("relay", "relay", "%s")] + [(t, t + " req/s", "%.0f") for t in TESTS]
        + [("xd", "x direct (lowest)", "%.2f"), ("cpu_us", "relay CPU us/request", "%.1f")])
    for n in names:
        s = summ[n]
        table.rows.append(dict({t: s[t] for t in TESTS}, relay=n, xd=worst_ratio(summ, n), cpu_us=s["cpu_us"]))
    table.verdicts.append(Verdict("redis-benchmark: splice vs direct (lowest of set/get/ping_inline)",
                                  table.value("splice", "xd"), TARGET))
    if table.row("haproxy") and table.value("haproxy", "xd"):
        table.notes.append("HAProxy: %.2fx direct (the issue's reference: about 0.6x)." % table.value("haproxy", "xd"))
    return Outcome([table], [], failures)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.redis_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--relays", default=",".join(RELAYS))
    args = p.parse_args(argv)
    if not available():
        print("skipped: redis-server/redis-benchmark not installed (%s)" % INSTALL)
        return 0
    names = args.relays.split(",")
    runs, failures = measure(names, args.requests, args.clients, args.repeat, print)
    summ = summarize(runs)
    print("%-12s %s %18s %14s" % ("relay", " ".join("%20s" % t for t in TESTS), "x direct (lowest)", "CPU us/req"))
    for n in names:
        s = summ[n]
        xd = worst_ratio(summ, n)
        print("%-12s %s %18s %14s" % (
            n, " ".join("%20s" % (s[t].format("%.0f") if s[t] else "-") for t in TESTS),
            "%.2f" % xd if xd else "-", s["cpu_us"].format("%.1f") if s["cpu_us"] else "-"))
    for f in failures:
        print("failure:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
