"""
The many-core table: session rate with 1, 2, 4 and 8 workers beside HAProxy
with as many threads.

    python -m benchmarks.workers_scale [--counts 1,2,4,8] [--seconds 3] [--repeat 3]
                                       [--loads 4] [--origins 4] [--markdown FILE]

Meant for a machine with many cores (issue 14 asks for it "when a machine
with many cores is at hand"; C{benchmarks/device_workers.sh} runs it on the
device machine); on 2 cores it runs too, and shows only that the load and
the relay share them.  A session is the session-rate scenario's: connect,
1 KiB each way, the origin closes.  Every relay is started once and they
take turns, run by run.

One Python client or origin process would be the limit long before eight
workers are: C{--loads} client processes run at once (the concurrency split
between them) against C{--origins} echo origins sharing one port with
C{SO_REUSEPORT}; the C{direct} row is that load's ceiling in the same run.
Each row: the median sessions/s (min-max), the ratio to the one-process
setting of the same relay, the relay's CPU per session (master and workers,
or HAProxy's threads) and the cores it took, and the load's cores.  The
machine is named in the output (CPU model, cores, kernel, Python).
"""

import argparse
import os
import platform
import shutil
import sys
import tempfile

from benchmarks.procs import BenchError, Load, proc_cpu
from benchmarks.report import Spread, ratio
from benchmarks.session_rate import SIZE
from benchmarks.tcp_throughput import Relay, haproxy_command
from benchmarks.workers import WorkersRelay, _children

COUNTS = (1, 2, 4, 8)
PER_PROCESS = 64  # sessions in flight per relay process or thread at the largest count


class HAProxyThreads(Relay):
    """HAProxy in TCP mode with C{nbthread} threads (the session-rate row's configuration otherwise)."""

    def __init__(self, threads, workdir, dest_port):
        Relay.__init__(self, "haproxy", workdir, dest_port)
        self.threads = threads
        self.label = rowName("haproxy", threads)
        self.log = os.path.join(workdir, "haproxy-%d.log" % threads)

    def command(self, port):
        cmd = haproxy_command(self.workdir, port, str(self.dest_port), "tcp")
        cfg = cmd[-1]
        with open(cfg) as f:
            text = f.read()
        with open(cfg, "w") as f:
            f.write(text.replace("global\n", "global\n    nbthread %d\n" % self.threads, 1))
        return cmd


def rowName(kind, n):
    """A row's name: "splice, 2 workers", "haproxy, 1 thread"."""
    unit = "worker" if kind == "splice" else "thread"
    return "%s, %d %s%s" % (kind, n, unit, "" if n == 1 else "s")


def machine():
    """The machine in words: CPU model, cores, kernel, Python."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%s, %d cores, Linux %s, Python %s" % (model, os.cpu_count(), platform.release(),
                                                  platform.python_version())


def run_rates(port, seconds, concurrency, loads):
    """C{loads} rate clients at once against C{port}; their results summed (secs: the longest)."""
    share = max(1, concurrency // loads)
    clients = [Load("benchmarks._echoload", ["rate", "--port", port, "--seconds", seconds,
                                              "--concurrency", share, "--size", SIZE], name="rate-%d" % i)
               for i in range(loads)]
    try:
        results = [c.result(seconds + 30) for c in clients]
    finally:
        for c in clients:
            c.stop()
    return {"sessions": sum(r["sessions"] for r in results),
            "errors": sum(r.get("errors", 0) + r.get("unfinished", 0) for r in results),
            "error": next((r["error"] for r in results if r.get("error")), None),
            "secs": max(r["secs"] for r in results)}


def origins(count, workdir):
    """C{count} echo origins on one 127.0.0.1 port (SO_REUSEPORT): the loads and the port."""
    first = Load("benchmarks._echoload", ["origin", "--close-after", SIZE, "--reuseport"], workdir, name="origin-0")
    out = [first]
    try:
        port = first.port()
        for i in range(1, count):
            o = Load("benchmarks._echoload", ["origin", "--close-after", SIZE, "--reuseport", "--port", port],
                     workdir, name="origin-%d" % i)
            out.append(o)
            o.port()
    except BaseException:
        for o in out:
            o.stop()
        raise
    return out, port


def measure(counts=COUNTS, seconds=3.0, repeat=3, loads=4, origin_count=4, haproxy=True, log=lambda line: None):
    """One dict per run: label, kind, n, sessions, errors, rate, cpu_us, relay_cores, load_cores."""
    workdir = tempfile.mkdtemp(prefix="splicing-scale-")
    concurrency = PER_PROCESS * max(counts)
    setups = [("direct", "direct", 0)]
    for n in counts:
        setups.append((rowName("splice", n), "splice", n))
        if haproxy:
            setups.append((rowName("haproxy", n), "haproxy", n))
    originLoads, port = origins(origin_count, workdir)
    relays, rows = {}, []
    try:
        for label, kind, n in setups:
            if kind == "direct":
                relays[label] = None
                continue
            relay = WorkersRelay(label, n, {}, workdir, port) if kind == "splice" else HAProxyThreads(n, workdir, port)
            relay.start()
            relays[label] = relay
        for rep in range(repeat):
            for label, kind, n in setups:
                relay = relays[label]
                cpu0 = relay.cpu() if relay else 0.0
                load0 = sum(proc_cpu(o.proc.pid) for o in originLoads) + _children()
                res = run_rates(relay.port if relay else port, seconds, concurrency, loads)
                secs = res["secs"]
                cores = (relay.cpu() - cpu0) / secs if relay else None
                rows.append({
                    "label": label, "kind": kind, "n": n, "sessions": res["sessions"], "errors": res["errors"],
                    "error": res["error"], "rate": res["sessions"] / secs, "relay_cores": cores,
                    "cpu_us": 1e6 * cores * secs / res["sessions"] if relay and res["sessions"] else None,
                    "load_cores": (sum(proc_cpu(o.proc.pid) for o in originLoads) + _children() - load0) / secs,
                })
                log("  run %d %-22s %8.0f sessions/s" % (rep + 1, label, rows[-1]["rate"]))
    finally:
        for relay in relays.values():
            if relay:
                relay.stop()
        for o in originLoads:
            o.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def markdown(rows, seconds, repeat, loads, origin_count):
    """The table, in the words of docs/performance.md."""
    labels = list(dict.fromkeys(r["label"] for r in rows))
    by = {label: [r for r in rows if r["label"] == label] for label in labels}
    spread = {label: {k: Spread.of([r[k] for r in rs]) for k in ("rate", "cpu_us", "relay_cores", "load_cores")}
              for label, rs in by.items()}
    first = {}
    for label in labels:
        kind = by[label][0]["kind"]
        first.setdefault(kind, spread[label]["rate"])
    peer = {(r["kind"], r["n"]): spread[r["label"]]["rate"] for r in rows}
    out = [
        "Machine: %s." % machine(),
        "",
        "Sessions per second (connect, 1 KiB each way, the origin closes) from %d client processes "
        "keeping %d sessions in flight together, %d echo origins on one port (SO_REUSEPORT); %g s per "
        "run, %d interleaved run(s), median (min-max). `x 1`: against the same relay with one process or "
        "thread; `vs HAProxy`: splice against HAProxy with as many threads; relay CPU: all its processes "
        "or threads." % (loads, PER_PROCESS * max(r["n"] for r in rows), origin_count, seconds, repeat),
        "",
        "| relay | sessions/s | x 1 | vs HAProxy | relay CPU µs/session | relay cores | load cores | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        s, r0 = spread[label], by[label][0]
        x1 = ratio(s["rate"], first[r0["kind"]]) if r0["kind"] != "direct" else None
        vs = ratio(s["rate"], peer.get(("haproxy", r0["n"]))) if r0["kind"] == "splice" else None
        out.append("| %s | %s | %s | %s | %s | %s | %s | %d |" % (
            label, s["rate"].format("%.0f"), "%.2f" % x1 if x1 else "-", "%.2f" % vs if vs else "-",
            s["cpu_us"].format("%.0f") if s["cpu_us"] else "-",
            s["relay_cores"].format("%.2f") if s["relay_cores"] else "-",
            s["load_cores"].format("%.2f") if s["load_cores"] else "-",
            sum(r["errors"] for r in by[label])))
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.workers_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", default=",".join(map(str, COUNTS)), help="worker and thread counts (1,2,4,8)")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--loads", type=int, default=4, help="client processes at once (4)")
    p.add_argument("--origins", type=int, default=4, help="echo origin processes on one port (4)")
    p.add_argument("--no-haproxy", action="store_true", help="leave HAProxy out (it is left out when not on PATH)")
    p.add_argument("--markdown", help="also write the table to this file")
    args = p.parse_args(argv)
    try:
        counts = sorted({int(c) for c in args.counts.split(",")})
    except ValueError:
        p.error("--counts: comma-separated whole numbers, like 1,2,4,8")
    if not counts or counts[0] < 1:
        p.error("--counts: each at least 1")
    haproxy = not args.no_haproxy and shutil.which("haproxy") is not None
    if not haproxy and not args.no_haproxy:
        print("haproxy is not on PATH: its rows are left out (docs/performance.md has the install line)")
    try:
        rows = measure(counts, args.seconds, args.repeat, args.loads, args.origins, haproxy, log=print)
    except BenchError as e:
        print("failure:", e)
        return 1
    text = markdown(rows, args.seconds, args.repeat, args.loads, args.origins)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    failures = [r for r in rows if r["errors"]]
    for r in failures:
        print("failure: %s: %d errors (%s)" % (r["label"], r["errors"], r["error"]))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
