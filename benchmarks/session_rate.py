"""
Session rate through each relay: short sessions back to back.

    python -m benchmarks.session_rate [--seconds 2] [--repeat 3] [--concurrency 32]
                                      [--relays direct,portforward,splice,...]

A session is: connect, send 1 KiB, read the 1 KiB echo until the origin
closes, check it, close (L{benchmarks._echoload} C{rate}, C{concurrency}
sessions in flight; the origin closes first, so no relay runs out of
ephemeral ports).  This is where a relay's per-session cost shows: accept,
backend connect, setting up and tearing down two splices, logging.  Runs
are interleaved; the table gives sessions/s and the relay's CPU per
session.  L{run_rate} is the load generator other benchmarks can reuse.
"""

import argparse
import sys
import tempfile

from benchmarks.procs import BenchError, Load, run_load, stop_all
from benchmarks.report import Spread
from benchmarks.tcp_throughput import start_relays

TARGET = 1.5  # splice vs port forwarder, sessions/s
CPU_TARGET = 0.6  # splice's relay CPU per session vs the port forwarder's
RELAYS = ["direct", "portforward", "splice", "splice-mbuf"]
SIZE = 1024


def run_rate(port, seconds, concurrency, size=SIZE):
    """One timed run against 127.0.0.1:C{port}: C{{sessions, errors, secs, error}}."""
    return run_load("benchmarks._echoload", ["rate", "--port", port, "--seconds", seconds,
                                             "--concurrency", concurrency, "--size", size],
                    seconds + 30)


def measure(names, seconds, repeat, concurrency, log=lambda m: None):
    """{relay: [run dicts with "rate" and "cpu_us" added]}, and failures."""
    workdir = tempfile.mkdtemp(prefix="splicing-rate-")
    origin = Load("benchmarks._echoload", ["origin", "--close-after", SIZE], workdir,
                  name="rate-origin")
    relays, runs, failures = {}, {n: [] for n in names}, []
    try:
        port = origin.port()
        relays = start_relays(names, workdir, port, "session rate", failures)
        for rep in range(repeat):
            for n, r in relays.items():
                cpu0 = r.cpu()
                try:
                    res = run_rate(r.port, seconds, concurrency)
                except BenchError as e:
                    res = {"error": str(e), "sessions": 0, "errors": 1}
                if res.get("errors") or res.get("unfinished"):
                    failures.append("session rate: %s run %d: %d errors, %d unfinished (%s)" % (
                        n, rep + 1, res.get("errors", 0), res.get("unfinished", 0), res.get("error")))
                if res.get("sessions"):
                    res["rate"] = res["sessions"] / res["secs"]
                    cpu = r.cpu()
                    res["cpu_us"] = None if cpu0 is None else 1e6 * (cpu - cpu0) / res["sessions"]
                    runs[n].append(res)
            log("session rate: repetition %d of %d done" % (rep + 1, repeat))
    finally:
        stop_all(list(relays.values()) + [origin], workdir)
    return runs, failures


def summarize(runs):
    return {n: {"rate": Spread.of([r["rate"] for r in rs]),
                "cpu_us": Spread.of([r["cpu_us"] for r in rs]),
                "errors": sum(r.get("errors", 0) for r in rs)} for n, rs in runs.items()}


def suite(ctx):
    from benchmarks import charts
    from benchmarks.report import Table, Verdict, ratio
    from benchmarks.scenario import Chart, Outcome

    names = RELAYS + ctx.peer_relays()
    seconds, repeat, conc = ctx.pick(2.0, 0.5), ctx.pick(3, 1), 32
    ctx.log("session rate: %s, %g s x %d, %d in flight" % (", ".join(names), seconds, repeat, conc))
    runs, failures = measure(names, seconds, repeat, conc, ctx.log)
    summ = summarize(runs)
    table = Table(
        "session-rate", "Session rate: connect, 1 KiB each way, close",
        "Sessions completed per second by one client process keeping %d sessions in flight "
        "for %g s per run (connect, send 1 KiB, read the 1 KiB echo to the origin's close, check "
        "it, close); relay CPU = relay process CPU time per session; %d interleaved runs, "
        "median (min-max)." % (conc, seconds, repeat),
        [("relay", "relay", "%s"), ("rate", "sessions/s", "%.0f"), ("xpf", "x portforward", "%.2f"),
         ("xha", "x haproxy", "%.2f"), ("cpu_us", "relay CPU us/session", "%.0f"),
         ("cpupf", "CPU x portforward", "%.2f"), ("errors", "errors", "%d")])
    pf, ha = (summ.get(n, {}).get("rate") for n in ("portforward", "haproxy"))
    pfcpu = summ.get("portforward", {}).get("cpu_us")
    for n in names:
        s = summ[n]
        table.rows.append({"relay": n, "rate": s["rate"], "xpf": ratio(s["rate"], pf), "xha": ratio(s["rate"], ha),
                           "cpu_us": s["cpu_us"], "cpupf": ratio(s["cpu_us"], pfcpu), "errors": s["errors"]})
    table.verdicts.append(Verdict("Session rate: splice vs port forwarder",
                                  table.value("splice", "xpf"), TARGET))
    table.verdicts.append(Verdict("Session rate: splice's relay CPU per session vs the port forwarder's",
                                  table.value("splice", "cpupf"), CPU_TARGET, higher=False))
    if table.value("direct", "rate") and table.value("splice", "rate"):
        table.notes.append("Without a relay the load reached %.1fx the splice relay's rate: %s." % (
            ratio(table.value("direct", "rate"), table.value("splice", "rate")),
            "the load generator was not the limit" if ratio(
                table.value("direct", "rate"), table.value("splice", "rate")) > 1.5
            else "the load generator may have been a limit"))
    items = [(n, summ[n]["rate"]) for n in names]
    chart = Chart("session_rate.png", "Session rate", lambda path: charts.bars(
        path, "Sessions/s: connect, 1 KiB each way, close (%d in flight)" % conc,
        "sessions/s", items))
    return Outcome([table], [chart], failures)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.session_rate",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--relays", default=",".join(RELAYS))
    args = p.parse_args(argv)
    names = args.relays.split(",")
    runs, failures = measure(names, args.seconds, args.repeat, args.concurrency, print)
    summ = summarize(runs)
    print("%-12s %22s %22s" % ("relay", "sessions/s", "relay CPU us/session"))
    for n in names:
        s = summ[n]
        print("%-12s %22s %22s" % (n, s["rate"].format("%.0f") if s["rate"] else "-",
                                   s["cpu_us"].format("%.0f") if s["cpu_us"] else "-"))
    pf = summ.get("portforward", {})
    if pf.get("cpu_us") and summ.get("splice", {}).get("cpu_us"):
        print("splice: %.2fx the port forwarder's sessions/s at %.2fx its CPU per session" % (
            summ["splice"]["rate"].median / pf["rate"].median, summ["splice"]["cpu_us"].median / pf["cpu_us"].median))
    for f in failures:
        print("failure:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
