"""
Session rate through C{twistd splice tcp} with 1 and 2 worker processes.

    python -m benchmarks.workers [--seconds 3] [--repeat 3] [--reuseport]

A session is: connect, send 1 KiB, read the 1 KiB echo until the origin
closes, check it, close (L{benchmarks._echoload}, the session-rate
scenario's load).  The relays run side by side and take turns, run by run
(interleaved); each row gives the median sessions/s with its min-max, the
relay's CPU (master and workers) per session and in cores, and the ratio
against one worker.  The target for two workers is >= 1.6x.
C{--reuseport} adds two workers with one C{SO_REUSEPORT} socket each
instead of one socket both accept from (L{splicing.app.workersockets}).

The load must not be the limit on a 2-core machine whose two workers want
both cores: the origin and the client are single epoll loops over
non-blocking sockets (one system call per step, no threads), and C{direct}
(no relay) shows their ceiling in the same run; the load's CPU share is
reported too.

L{run} is the suite's entry point (C{python -m benchmarks}); L{measure}
returns plain rows.
"""

import argparse
import contextlib
import os
import resource
import shutil
import sys
import tempfile

from benchmarks.procs import BenchError, Load, descendants, proc_cpu
from benchmarks.report import Spread, Table, Verdict, ratio
from benchmarks.session_rate import SIZE, run_rate
from benchmarks.tcp_throughput import Relay

TARGET = 1.6
CONCURRENCY = 128  # enough in flight to keep two workers busy (32 left them waiting on the load)
#: label: (workers, extra environment); None workers: no relay.
SETUPS = {
    "direct": (None, {}),
    "1 worker": (1, {}),
    "2 workers": (2, {}),
    "2 workers, SO_REUSEPORT": (2, {"SPLICING_WORKER_SOCKETS": "reuseport"}),
}


def _children():
    """CPU seconds of the reaped children (the client processes run_rate started and ended)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@contextlib.contextmanager
def _environ(extra):
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class WorkersRelay(Relay):
    """The product relay with C{--workers N}; its CPU is the master's and every worker's."""

    def __init__(self, label, workers, env, workdir, dest_port):
        Relay.__init__(self, "splice", workdir, dest_port, extra=["--workers", str(workers)])
        self.label = label
        self.env = env
        self.log = os.path.join(workdir, "%s.log" % label.replace(" ", "-").replace(",", ""))

    def start(self):
        with _environ(self.env):
            Relay.start(self)

    def cpu(self):
        total = 0.0
        for pid in descendants(self.proc.pid):
            try:
                total += proc_cpu(pid)
            except (OSError, ValueError):
                pass  # gone meanwhile
        return total


def measure(labels=("direct", "1 worker", "2 workers"), seconds=3.0, repeat=3, log=lambda line: None):
    """One dict per run: label, workers, sessions, errors, rate, relay_cores, cpu_us, load_cores."""
    workdir = tempfile.mkdtemp(prefix="splicing-workers-")
    origin = Load("benchmarks._echoload", ["origin", "--close-after", SIZE], workdir, name="origin")
    relays, rows = {}, []
    try:
        port = origin.port()
        for label in labels:
            workers, env = SETUPS[label]
            if workers is None:
                relays[label] = None
                continue
            relay = relays[label] = WorkersRelay(label, workers, env, workdir, port)
            relay.start()
        for rep in range(repeat):
            for label, relay in relays.items():
                cpu0 = relay.cpu() if relay else 0.0
                load0 = proc_cpu(origin.proc.pid) + _children()
                res = run_rate(relay.port if relay else port, seconds, CONCURRENCY)  # the client is reaped
                secs = res["secs"]
                cores = (relay.cpu() - cpu0) / secs if relay else None
                rows.append({
                    "label": label, "workers": SETUPS[label][0] or 0, "sessions": res["sessions"],
                    "errors": res.get("errors", 0) + res.get("unfinished", 0), "error": res.get("error"),
                    "rate": res["sessions"] / secs, "relay_cores": cores,
                    "cpu_us": 1e6 * cores * secs / res["sessions"] if relay and res["sessions"] else None,
                    "load_cores": (proc_cpu(origin.proc.pid) + _children() - load0) / secs,
                    "loadavg": os.getloadavg()[0],
                })
                log("  run %d %-26s %7.0f sessions/s" % (rep + 1, label, rows[-1]["rate"]))
    finally:
        for relay in relays.values():
            if relay:
                relay.stop()
        origin.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def table(rows, seconds, repeat):
    """The suite's table of L{measure}'s rows, with the target's verdict."""
    labels = list(dict.fromkeys(r["label"] for r in rows))
    spread = {label: {k: Spread.of([r[k] for r in rows if r["label"] == label])
                      for k in ("rate", "cpu_us", "relay_cores", "load_cores")} for label in labels}
    one = spread.get("1 worker", {}).get("rate")
    t = Table(
        "workers", "Every core: session rate with --workers",
        "Sessions completed per second through `twistd splice tcp --workers N` by one client process "
        "keeping %d sessions in flight for %g s per run (connect, 1 KiB each way, the origin closes); "
        "relay CPU = master and workers together; %d interleaved runs, median (min-max)."
        % (CONCURRENCY, seconds, repeat),
        [("relay", "relay", "%s"), ("rate", "sessions/s", "%.0f"), ("x1", "x 1 worker", "%.2f"),
         ("cpu_us", "relay CPU us/session", "%.0f"), ("relay_cores", "relay cores", "%.2f"),
         ("load_cores", "load cores", "%.2f"), ("errors", "errors", "%d")])
    for label in labels:
        s = spread[label]
        t.rows.append({"relay": label, "rate": s["rate"], "x1": ratio(s["rate"], one) if label != "direct" else None,
                       "cpu_us": s["cpu_us"], "relay_cores": s["relay_cores"], "load_cores": s["load_cores"],
                       "errors": sum(r["errors"] for r in rows if r["label"] == label)})
    t.verdicts.append(Verdict("Session rate: 2 workers vs 1", t.value("2 workers", "x1"), TARGET))
    t.notes.append("Load average (1 min) before and after: %s: other processes on the machine take cores "
                   "from the relay, and the more so with two workers." % (" / ".join(
                       "%.2f" % v for v in (rows[0].get("loadavg"), rows[-1].get("loadavg")) if v is not None)))
    one_us, two_us = (t.value(n, "cpu_us") for n in ("1 worker", "2 workers"))
    two_cores = [t.value("2 workers", k) for k in ("relay_cores", "load_cores")]
    if one_us and two_us and None not in two_cores:
        t.notes.append(
            "With two workers the relay took %.2f cores and the load (client and origin) %.2f of the machine's "
            "%d. Relay CPU per session: %.0f us with one worker, %.0f us with two (master included): "
            "with both cores for the relay alone, two workers would serve %.2fx the rate of one."
            % (two_cores[0].median, two_cores[1].median, os.cpu_count(), one_us.median, two_us.median,
               2 * one_us.median / two_us.median))
    direct, two = t.value("direct", "rate"), t.value("2 workers", "rate")
    if direct and two:
        t.notes.append("Without a relay the same load reached %.1fx the rate of two workers: %s." % (
            ratio(direct, two), "the load was not the limit" if ratio(direct, two) > 2
            else "the load may have been a limit"))
    return t


def run(seconds=3.0, repeat=3, quick=False, out=None, reuseport=False):
    """The suite's entry point: an Outcome with the table; its text printed to C{out}."""
    from benchmarks.report import markdown_section
    from benchmarks.scenario import Outcome

    out = out or sys.stdout
    labels = ["direct", "1 worker", "2 workers"] + (["2 workers, SO_REUSEPORT"] if reuseport else [])
    failures = []
    try:
        rows = measure(labels, seconds, repeat, log=lambda line: print(line, file=out, flush=True))
    except BenchError as e:
        return Outcome(failures=["workers: %s" % (e,)])
    failures += ["workers: %s: %d errors (%s)" % (r["label"], r["errors"], r["error"]) for r in rows if r["errors"]]
    t = table(rows, seconds, repeat)
    print(markdown_section(t), file=out)
    return Outcome(tables=[t], failures=failures)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.workers", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--reuseport", action="store_true", help="also two workers with a SO_REUSEPORT socket each")
    args = p.parse_args(argv)
    outcome = run(args.seconds, args.repeat, out=sys.stdout, reuseport=args.reuseport)
    for f in outcome.failures:
        print("failure:", f)
    met = all(v.met for t in outcome.tables for v in t.verdicts)
    return 0 if met and not outcome.failures else 1


if __name__ == "__main__":
    sys.exit(main())
