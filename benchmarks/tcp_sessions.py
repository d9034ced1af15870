"""
Aggregate TCP throughput with many bulk sessions at once through one relay,
every byte checked.

    python -m benchmarks.tcp_sessions [--sessions 100,1000] [--seconds 2] [--repeat 3]
                                      [--relays portforward,splice,splice-mbuf]

One sender process opens all the sessions at once and drives them from one
epoll loop (L{benchmarks._load} C{send-many}): each sends whole copies of a
pseudo-random pattern until the time is up, then half-closes.  The receiver
process (C{recv --many}, one epoll loop) computes a CRC-32 of everything each
session delivered; a session whose byte count or CRC differs from what was
sent fails the run.  Aggregate GB/s = all bytes received / (last session's
end - first session's start, as the receiver saw them).  Relays take turns
(interleaved); rows give the median and min-max, and the relay's CPU
seconds per GB.  With many sessions the relay's one core runs out first,
which is what decided backend="auto" for TCP (see docs/splice.md).
"""

import argparse
import shutil
import queue
import statistics
import sys
import tempfile

from benchmarks.procs import BenchError, Load
from benchmarks.report import Spread
from benchmarks.tcp_throughput import Receiver, kill, start_relays

TARGET = 1.5  # splice vs port forwarder, aggregate GB/s
RELAYS = ["portforward", "splice", "splice-mbuf"]


def run(relay, receiver, sessions, seconds, first_id):
    """One run: C{(GB/s, relay CPU s per GB)}; BenchError on any bad byte."""
    cpu0 = relay.cpu()
    sender = Load("benchmarks._load", ["send-many", "--port", relay.port, "--sessions", sessions,
                                       "--first-id", first_id, "--seconds", seconds])
    try:
        sent = sender.result(seconds + 90)["sessions"]
    finally:
        sender.stop()
    got = {}
    while len(got) < sessions:
        try:
            r = receiver.results.get(timeout=20)
        except queue.Empty:
            raise BenchError("%s: only %d of %d sessions reported by the receiver"
                             % (relay.name, len(got), sessions))
        if first_id <= r.get("id", -1) < first_id + sessions:
            got[r["id"]] = r
    bad = []
    for i in range(first_id, first_id + sessions):
        s, r = sent[str(i)], got[i]
        if s["error"] or r["error"] or s["sent"] != r["bytes"] or s["crc"] != r["crc"]:
            bad.append("session %d: sent %d crc %s (%s), received %d crc %s (%s)" % (
                i, s["sent"], s["crc"], s["error"], r["bytes"], r["crc"], r["error"]))
    if bad:
        raise BenchError("%s: %d of %d sessions damaged, e.g. %s" % (
            relay.name, len(bad), sessions, bad[0]))
    total = sum(r["bytes"] for r in got.values())
    secs = max(r["t1"] for r in got.values()) - min(r["t0"] for r in got.values())
    cpu = relay.cpu() - cpu0 if cpu0 is not None else None
    return total / secs / 1e9, (cpu / (total / 1e9) if cpu is not None else None)


def measure(names, counts, seconds, repeat, log=lambda m: None):
    """{(relay, sessions): [(GB/s, CPU s/GB)]}, and failures."""
    workdir = tempfile.mkdtemp(prefix="splicing-sessions-")
    receiver = Receiver(workdir, many=True)
    relays, results, failures = {}, {}, []
    dead = set()  # (relay, sessions) that failed once: not retried, to bound the time
    next_id = 1
    try:
        relays = start_relays(names, workdir, receiver.port, "tcp sessions", failures)
        for count in counts:
            for rep in range(repeat):
                for n, r in relays.items():
                    key = (n, count)
                    results.setdefault(key, [])
                    if key in dead:
                        continue
                    try:
                        results[key].append(run(r, receiver, count, seconds, next_id))
                    except BenchError as e:
                        failures.append("tcp sessions: %d sessions, run %d: %s" % (count, rep + 1, e))
                        dead.add(key)
                    next_id += count
            log("tcp sessions: %d sessions done" % count)
    finally:
        for r in relays.values():
            r.stop()
        kill(receiver.proc)
        shutil.rmtree(workdir, ignore_errors=True)
    return results, failures


def summarize(results):
    return {k: {"gbps": Spread.of([g for g, _ in v]), "cpu": Spread.of([c for _, c in v])}
            for k, v in results.items()}


def suite(ctx):
    from benchmarks import charts
    from benchmarks.report import Table, Verdict, ratio
    from benchmarks.scenario import Chart, Outcome

    names = RELAYS + [n for n in ctx.peer_relays() if n == "haproxy"]
    counts = ctx.pick((10, 100, 1000), (10, 50))
    seconds, repeat = ctx.pick(1.5, 0.5), ctx.pick(3, 1)
    ctx.log("tcp sessions: %s x %s sessions, %g s x %d" % (", ".join(names), counts, seconds, repeat))
    results, failures = measure(names, counts, seconds, repeat, ctx.log)
    summ = summarize(results)
    table = Table(
        "tcp-sessions", "TCP bulk throughput with many sessions at once",
        "N sessions opened at once by one sender process, each sending whole copies of a "
        "pseudo-random pattern for %g s then half-closing; the receiver checks every session's "
        "byte count and CRC-32 (a damaged session fails the run); aggregate GB/s = bytes "
        "received / span from the first session's first byte to the last one's EOF; relay CPU "
        "per GB; %d interleaved runs, median (min-max). socat is left out: it forks a process "
        "per session." % (seconds, repeat),
        [("relay", "relay", "%s"), ("sessions", "sessions", "%d"), ("gbps", "aggregate GB/s", "%.2f"),
         ("xpf", "x portforward", "%.2f"), ("cpu", "relay CPU s/GB", "%.3f")])
    for count in counts:
        pf = summ.get(("portforward", count), {}).get("gbps")
        for n in names:
            s = summ.get((n, count), {})
            table.rows.append({"relay": n, "sessions": count, "gbps": s.get("gbps"),
                               "xpf": ratio(s.get("gbps"), pf), "cpu": s.get("cpu")})
        if count >= 100:
            sp = summ.get(("splice", count), {}).get("gbps")
            table.verdicts.append(Verdict("TCP %d sessions: splice vs port forwarder" % count,
                                          ratio(sp, pf), TARGET))
    if not failures:
        table.notes.append("Every session of every run arrived complete with the right CRC-32.")
    series = {n: [(c, summ.get((n, c), {}).get("gbps")) for c in counts] for n in names}
    chart = Chart("tcp_sessions.png", "Scaling with sessions", lambda path: charts.scaling(
        path, "Aggregate TCP throughput vs concurrent sessions (every byte CRC-checked)",
        "concurrent sessions", "aggregate GB/s", series))
    return Outcome([table], [chart], failures)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", default="100,1000", help="comma-separated session counts")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--relays", default=",".join(RELAYS))
    args = p.parse_args(argv)
    names = args.relays.split(",")
    counts = [int(c) for c in args.sessions.split(",")]
    results, failures = measure(names, counts, args.seconds, args.repeat, print)
    print("%g s per run, %d interleaved repetitions, every byte CRC-checked" % (args.seconds, args.repeat))
    print("%-12s %9s %9s %11s %9s" % ("relay", "sessions", "GB/s med", "min-max", "CPU s/GB"))
    for (n, count), v in sorted(results.items(), key=lambda kv: (kv[0][1], names.index(kv[0][0]))):
        if not v:
            print("%-12s %9d %9s" % (n, count, "FAILED"))
            continue
        gbps = [g for g, _ in v]
        cpus = [c for _, c in v if c is not None]
        print("%-12s %9d %9.2f %5.2f-%-5.2f %9s" % (
            n, count, statistics.median(gbps), min(gbps), max(gbps),
            "%.3f" % statistics.median(cpus) if cpus else "-"))
    for f in failures:
        print("failure:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
