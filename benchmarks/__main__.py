"""
The whole benchmark suite, one command:

    python -m benchmarks [--quick] [--only NAME[,NAME...]] [--out DIR] [--list]

Runs every scenario in turn (each bounded in count and time, each relay in
its own process, only 127.0.0.1), then writes C{DIR/RESULTS.md} (tables:
what was measured, medians of interleaved repetitions with their min-max,
the targets met or missed) and PNG charts next to it.  The default C{DIR}
is C{benchmarks/results}; C{--quick} is a smoke run (seconds, not minutes)
that writes to a temporary directory unless C{--out} is given, so it never
overwrites the committed figures.

A scenario that fails is reported as failed and the suite goes on; every
process a scenario starts is killed when it ends, on an exception, on
Ctrl-C and on SIGTERM.
"""

import argparse
import importlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback

from benchmarks import charts
from benchmarks.report import markdown_report
from benchmarks.scenario import Context, peers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")

#: name -> (module, function): the suite's scenarios, in running order.
SCENARIOS = {
    "tcp-bulk": ("benchmarks.tcp_throughput", "suite"),
    "tcp-sessions": ("benchmarks.tcp_sessions", "suite"),
    "session-rate": ("benchmarks.session_rate", "suite"),
    "latency": ("benchmarks.latency", "suite"),
    "redis": ("benchmarks.redis_bench", "suite"),
    "udp": ("benchmarks.udp_throughput", "suite"),
    "http": ("benchmarks.http_throughput", "suite"),
    "memory": ("benchmarks.idle_memory", "suite"),
    "workers": ("benchmarks.workers_hook", "suite"),
    "profiles": ("benchmarks.profiles", "suite"),
}


def _version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else None


def machine():
    """One line per fact a reader needs to compare this run with another."""
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import twisted

    commit = _version(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    dirty = _version(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no", "splicing"])
    found = peers()
    lines = [
        "- machine: %d CPUs (%s), Linux %s, Python %s, Twisted %s" % (
            os.cpu_count(), cpu, platform.release(), platform.python_version(), twisted.__version__),
        "- code: commit %s%s" % (commit, " with uncommitted changes in splicing/" if dirty else ""),
        "- peers run: direct connection, `twistd portforward`, a plain Twisted UDP relay, "
        "`twisted.web` reverse proxy%s" % "".join(
            ", %s" % (_version([p, "-v"] if n == "haproxy" else ["sh", "-c", p + " -V | grep version"])
                      or n).split(" - ")[0]
            for n, p in found.items() if p),
        "- peers not installed (skipped): %s" % (", ".join(n for n, p in found.items() if not p)
                                                 or "none"),
        "- load average at the start: %s" % " ".join(open("/proc/loadavg").read().split()[:3]),
    ]
    return lines


def _terminate(signum, frame):
    raise KeyboardInterrupt("signal %d" % signum)


def run(names, ctx):
    """Run the scenarios C{names}; returns (tables, charts, failures, seconds per scenario)."""
    tables, drawn, failures, timing = [], [], [], []
    can_draw = charts.available()
    for name in names:
        module, func = SCENARIOS[name]
        t0 = time.monotonic()
        ctx.log("== %s" % name)
        try:
            outcome = getattr(importlib.import_module(module), func)(ctx)
        except KeyboardInterrupt:
            raise
        except Exception as e:
            traceback.print_exc(file=ctx.out)
            failures.append("%s: the scenario failed: %s: %s" % (name, type(e).__name__, e))
            timing.append((name, time.monotonic() - t0))
            continue
        tables += outcome.tables
        failures += outcome.failures
        for chart in outcome.charts if can_draw else ():
            try:
                chart.draw(ctx.chart_path(chart.filename))
                drawn.append((chart.title, chart.filename))
            except Exception as e:
                failures.append("%s: chart %s: %s" % (name, chart.filename, e))
        timing.append((name, time.monotonic() - t0))
        ctx.log("   %s done in %.0f s" % (name, timing[-1][1]))
    if not can_draw:
        failures.append("charts not drawn: matplotlib is not installed (pip install '.[bench]')")
    return tables, drawn, failures, timing


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: every scenario, tiny")
    p.add_argument("--only", default=None, help="comma-separated scenarios (see --list)")
    p.add_argument("--out", default=None, help="where RESULTS.md and the PNGs go")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(SCENARIOS))
        return 0
    names = list(SCENARIOS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        bad = [n for n in names if n not in SCENARIOS]
        if bad:
            p.error("unknown scenario(s) %s; known: %s" % (", ".join(bad), ", ".join(SCENARIOS)))
    outdir = args.out or (tempfile.mkdtemp(prefix="splicing-quick-") if args.quick else RESULTS)
    os.makedirs(outdir, exist_ok=True)
    signal.signal(signal.SIGTERM, _terminate)
    ctx = Context(quick=args.quick, outdir=outdir)
    header = machine()
    ctx.log("suite: %s%s -> %s" % (", ".join(names), " (quick)" if args.quick else "", outdir))
    try:
        tables, drawn, failures, timing = run(names, ctx)
    except KeyboardInterrupt:
        ctx.log("interrupted: every process started was stopped; no report written")
        return 130
    total = time.monotonic() - ctx.started
    header.append("- scenarios: %s; total %.0f s%s" % (
        ", ".join("%s %.0f s" % t for t in timing), total,
        " (**--quick smoke run: figures not meaningful**)" if args.quick else ""))
    footer = ["Reproduce: `python -m benchmarks%s` (see docs/performance.md)." % (
        " --only " + ",".join(names) if args.only else "")]
    with open(os.path.join(outdir, "RESULTS.md"), "w") as f:
        f.write(markdown_report(header, tables, drawn, failures, footer))
    ctx.log("wrote %s (%d tables, %d charts, %d failures) in %.0f s" % (
        os.path.join(outdir, "RESULTS.md"), len(tables), len(drawn), len(failures), total))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
