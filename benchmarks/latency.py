"""
Round-trip latency through each relay: 1-byte ping-pong on one connection.

    python -m benchmarks.latency [--count 4000] [--repeat 3] [--relays ...]

An echo origin process and a ping client process (L{benchmarks._echoload},
both TCP_NODELAY); the client times every round trip with
C{perf_counter_ns}.  Runs are interleaved over the relays; the median and
the 99th percentile are taken per run, and the table shows their medians
and min-max over the runs.  What matters is the ratio to the direct
connection measured in the same run: it is what a relay adds.
"""

import argparse
import sys
import tempfile

from benchmarks.procs import BenchError, Load, run_load, stop_all
from benchmarks.report import Spread, percentile
from benchmarks.tcp_throughput import start_relays

TARGET = 1.4  # splice median / direct median
ADDED_TARGET = 1.3  # what splice adds to the median / what HAProxy adds
RELAYS = ["direct", "portforward", "splice", "splice-mbuf"]


def measure(names, count, repeat, log=lambda m: None):
    """{relay: [samples of run 1, run 2, ...]} (microseconds), and failures."""
    workdir = tempfile.mkdtemp(prefix="splicing-latency-")
    origin = Load("benchmarks._echoload", ["origin"], workdir, name="echo-origin")
    relays, runs, failures = {}, {n: [] for n in names}, []
    try:
        port = origin.port()
        relays = start_relays(names, workdir, port, "latency", failures)
        for rep in range(repeat):
            for n, r in relays.items():
                try:
                    res = run_load("benchmarks._echoload",
                                   ["ping", "--port", r.port, "--count", count], 30 + count / 1000)
                except BenchError as e:
                    res = {"error": str(e)}
                if res.get("error"):
                    failures.append("latency: %s run %d: %s" % (n, rep + 1, res["error"]))
                    continue
                runs[n].append(res["samples"])
            log("latency: repetition %d of %d done" % (rep + 1, repeat))
    finally:
        stop_all(list(relays.values()) + [origin], workdir)
    return runs, failures


def summarize(runs):
    """Per relay: median and p99 (Spreads over runs) and all samples pooled."""
    out = {}
    for n, rs in runs.items():
        pooled = [x for r in rs for x in r]
        out[n] = {
            "median": Spread.of([percentile(r, 50) for r in rs]),
            "p99": Spread.of([percentile(r, 99) for r in rs]),
            "pooled": pooled,
            "rts": len(pooled),
        }
    return out


def added_ratio(summ, name, peer="haproxy"):
    """(C{name}'s median - direct's) / (C{peer}'s median - direct's), or None (no peer, or it added nothing)."""
    medians = [summ.get(n, {}).get("median") for n in (name, peer, "direct")]
    if None in medians:
        return None
    mine, theirs, direct = (m.median for m in medians)
    return (mine - direct) / (theirs - direct) if theirs > direct else None


def suite(ctx):
    from benchmarks import charts
    from benchmarks.report import Table, Verdict, ratio
    from benchmarks.scenario import Chart, Outcome

    names = RELAYS + ctx.peer_relays()
    count, repeat = ctx.pick(4000, 300), ctx.pick(3, 1)
    ctx.log("latency: %s, %d round trips x %d" % (", ".join(names), count, repeat))
    runs, failures = measure(names, count, repeat, ctx.log)
    summ = summarize(runs)
    table = Table(
        "latency", "Latency, 1-byte ping-pong",
        "One connection per run, %d round trips of 1 byte (after 200 unrecorded), each timed by "
        "the client; median and p99 per run, then the median (min-max) of those over %d "
        "interleaved runs; `x direct` compares medians." % (count, repeat),
        [("relay", "relay", "%s"), ("median", "median us", "%.1f"), ("xd", "x direct", "%.2f"),
         ("p99", "p99 us", "%.1f"), ("added", "added to median, us", "%.1f"),
         ("rts", "round trips", "%d")])
    direct = summ.get("direct", {}).get("median")
    for n in names:
        s = summ[n]
        table.rows.append({"relay": n, "median": s["median"], "p99": s["p99"], "rts": s["rts"],
                           "xd": ratio(s["median"], direct),
                           "added": s["median"].median - direct.median
                           if s["median"] and direct else None})
    for n in ("splice", "splice-mbuf"):
        table.verdicts.append(Verdict("Latency: %s median vs direct" % n,
                                      table.value(n, "xd"), TARGET, higher=False))
    if table.row("haproxy"):
        table.verdicts.append(Verdict("Latency: round-trip time splice adds vs what HAProxy adds",
                                      added_ratio(summ, "splice"), ADDED_TARGET, higher=False))
    for peer in ("haproxy", "portforward"):
        if table.row(peer):
            table.notes.append("%s: %sx direct (the issue's reference: %s)." % (
                peer, "%.2f" % table.value(peer, "xd") if table.value(peer, "xd") else "-",
                {"haproxy": "1.35x", "portforward": "1.6x"}[peer]))
    series = {n: summ[n]["pooled"] for n in names if summ[n]["pooled"]}
    chart = Chart("latency.png", "Latency distribution", lambda path: charts.latency_cdf(
        path, "1-byte round trips, all runs pooled (%d per relay)" % (count * repeat), series))
    return Outcome([table], [chart], failures)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=4000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--relays", default=",".join(RELAYS))
    args = p.parse_args(argv)
    names = args.relays.split(",")
    runs, failures = measure(names, args.count, args.repeat, print)
    summ = summarize(runs)
    d = summ.get("direct", {}).get("median")
    print("%-12s %18s %8s %18s" % ("relay", "median us", "x direct", "p99 us"))
    for n in names:
        s = summ[n]
        print("%-12s %18s %8s %18s" % (
            n, s["median"].format("%.1f") if s["median"] else "-",
            "%.2f" % (s["median"].median / d.median) if d and s["median"] else "-",
            s["p99"].format("%.1f") if s["p99"] else "-"))
    if "haproxy" in summ and "splice" in summ:
        r = added_ratio(summ, "splice")
        print("splice adds %s what haproxy adds" % ("%.2fx" % r if r is not None else "-"))
    for f in failures:
        print("failure:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
