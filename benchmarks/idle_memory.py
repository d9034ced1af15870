"""
Memory of idle spliced sessions: 10,000 TCP sessions held open through
C{twistd splice tcp}, with the relay's RSS and the pipes it holds counted.

    python -m benchmarks.idle_memory [--sessions 10000]

The kernel path borrows a pipe only while bytes sit in it, so an idle
session should hold two sockets and a little Python state, no pipe.  Every
process's descriptors are capped at 20,000 here (the hard limit), and a
session takes two relay sockets: one relay process can hold 9,999 at most.
So the relay runs as C{--workers 2} when C{twistd splice tcp} has that
option (RSS summed over all its processes), and otherwise as two relay
processes, each holding half the sessions (RSS summed over both).  The load
is split too: holder processes of 2,500 connections each
(L{benchmarks._echoload} C{hold}) and one echo origin per 5,000 sessions.

Measured: RSS and pipes of the relay before any session (baseline), with
every session established and idle, the most pipes seen while one byte
crosses every session both ways (ping waves, for two seconds), and after.
"""

import argparse
import shutil
import os
import subprocess
import sys
import tempfile
import threading
import time

from benchmarks.procs import Load, descendants, pipe_fds, pss, rss
from benchmarks.tcp_throughput import Relay, twistd

TARGET_MIB = 200
PER_HOLDER = 2500
PER_ORIGIN = 5000
POOL_KEEP = 8  # splicing.paths.pipes.PipePool(keep=8): spare pipes a process may keep
WAVE_SECONDS = 2.0  # ping waves back to back, while the pipes are counted


def has_workers_option():
    """Whether C{twistd splice tcp} has landed C{--workers}."""
    out = subprocess.run([twistd(), "splice", "tcp", "--help"], capture_output=True, text=True,
                         timeout=60)
    return "--workers" in out.stdout


def relay_pids(relays):
    return [p for r in relays for p in descendants(r.proc.pid)]


def sample(relays):
    pids = relay_pids(relays)
    each = [(p, rss(p), pipe_fds(p), len(os.listdir("/proc/%d/fd" % p))) for p in pids]
    return {"rss": sum(e[1] for e in each), "pipes": sum(e[2] for e in each),
            "pss": sum(pss(p) for p in pids), "processes": len(pids), "each": each}


class PipeWatch:
    """Counts the relay's pipes over and over in a thread; keeps the maximum."""

    def __init__(self, relays):
        self.relays, self.max, self.samples = relays, 0, 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopping.is_set():
            self.max = max(self.max, sum(pipe_fds(p) for p in relay_pids(self.relays)))
            self.samples += 1

    def stop(self):
        self.stopping.set()
        self.thread.join(10)
        return self.max


def measure(sessions, log=lambda m: None):
    workdir = tempfile.mkdtemp(prefix="splicing-idle-")
    workers = has_workers_option()
    instances = 1 if workers else 2
    norigins = max(1, -(-sessions // PER_ORIGIN))
    loads, relays = [], []
    try:
        origins = [Load("benchmarks._echoload", ["origin"], workdir, name="origin%d" % i)
                   for i in range(norigins)]
        loads += origins
        ports = [o.port() for o in origins]
        for i in range(instances):
            sub = os.path.join(workdir, "relay%d" % i)
            os.mkdir(sub)
            r = Relay("splice", sub, ports[i % len(ports)],
                      extra=["--workers", "2"] if workers else [])
            relays.append(r)
            r.start()
        time.sleep(1.0)  # workers forked, probe sessions ended
        base = sample(relays)
        log("idle memory: relay baseline %.1f MiB, %d pipes, %d processes" % (
            base["rss"] / 2**20, base["pipes"], base["processes"]))
        t0 = time.monotonic()
        holders = []
        left = sessions
        while left > 0:
            n = min(PER_HOLDER, left)
            relay = relays[len(holders) % len(relays)]
            holders.append(Load("benchmarks._echoload", ["hold", "--port", relay.port, "--count", n],
                                workdir, commands=True, name="hold%d" % len(holders)))
            left -= n
        loads += holders
        held = sum(int(h.expect("READY", 120).split()[1]) for h in holders)
        setup = time.monotonic() - t0
        time.sleep(1.0)
        idle = sample(relays)
        log("idle memory: %d sessions in %.1f s, relay %.1f MiB, %d pipes" % (
            held, setup, idle["rss"] / 2**20, idle["pipes"]))
        watch = PipeWatch(relays)
        for h in holders:
            h.send("ping %g" % WAVE_SECONDS)
        answers = [h.expect("PINGED", 120).split() for h in holders]
        pinged = sum(int(a[1]) for a in answers)
        waves = min(int(a[2]) for a in answers)
        wave_max = watch.stop()
        time.sleep(0.5)
        after = sample(relays)
        for h in holders:
            h.send("quit")
        return {"sessions": sessions, "held": held, "pinged": pinged, "setup": setup,
                "workers": workers, "instances": instances, "holders": len(holders),
                "origins": norigins, "base": base, "idle": idle, "after": after,
                "wave_max": wave_max, "wave_samples": watch.samples, "waves": waves}
    finally:
        for r in relays:
            r.stop()
        for load in loads:
            load.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def suite(ctx):
    from benchmarks.report import Table, Verdict
    from benchmarks.scenario import Outcome

    sessions = ctx.pick(10000, 400)
    ctx.log("idle memory: %d sessions" % sessions)
    m = measure(sessions, ctx.log)
    mib = lambda b: b / 2**20
    how = ("one `twistd splice tcp --workers 2` (RSS of all its processes)" if m["workers"] else
           "two `twistd splice tcp` processes, half the sessions each (`--workers` has not "
           "landed; one process cannot hold 10,000 sessions = 20,000 sockets under the 20,000 "
           "descriptor limit); RSS summed over both")
    table = Table(
        "memory", "Memory of idle spliced sessions",
        "%d TCP sessions opened by %d holder processes to %d echo origin process(es) "
        "through %s; each session carried one byte each way and then sat idle. RSS from "
        "/proc/PID/status; pipes = /proc/PID/fd entries that are pipes (the relay's own "
        "reactor waker pipes are in the baseline). Ping waves send one more byte each way "
        "through every session, back to back for %g s (at least %d waves), while the pipes "
        "are counted continuously (%d samples)." % (
            m["held"], m["holders"], m["origins"], how, WAVE_SECONDS, m["waves"],
            m["wave_samples"]),
        [("relay", "state", "%s"), ("sessions", "sessions", "%d"), ("rss", "relay RSS MiB", "%.1f"),
         ("pss", "relay PSS MiB", "%.1f"), ("pipes", "pipe fds", "%d")])
    table.rows += [
        {"relay": "baseline (no session)", "sessions": 0, "rss": mib(m["base"]["rss"]),
         "pss": mib(m["base"]["pss"]), "pipes": m["base"]["pipes"]},
        {"relay": "idle", "sessions": m["held"], "rss": mib(m["idle"]["rss"]),
         "pss": mib(m["idle"]["pss"]), "pipes": m["idle"]["pipes"]},
        {"relay": "most during the ping wave", "sessions": m["pinged"], "rss": None, "pss": None,
         "pipes": m["wave_max"]},
        {"relay": "after the ping wave", "sessions": m["held"], "rss": mib(m["after"]["rss"]),
         "pss": mib(m["after"]["pss"]), "pipes": m["after"]["pipes"]},
    ]
    table.notes.append(
        "RSS summed over the relay's processes counts the pages they share (the interpreter, "
        "Twisted, OpenSSL) once per process; PSS (/proc/PID/smaps_rollup) divides each shared "
        "page among its sharers, so its sum is what the relay costs the machine.")
    for state in ("base", "idle", "after"):
        table.notes.append("Per process, %s: %s." % (
            {"base": "baseline", "idle": "idle", "after": "after the waves"}[state], ", ".join(
                "%.1f MiB, %d pipes, %d fds" % (r / 2**20, pipes, fds)
                for _, r, pipes, fds in m[state]["each"])))
    per = (m["idle"]["rss"] - m["base"]["rss"]) / m["held"] if m["held"] else None
    table.notes.append("Bytes per idle session (RSS growth / sessions): %s; sessions "
                       "established in %.1f s." % ("%.0f" % per if per else "-", m["setup"]))
    table.verdicts.append(Verdict("Memory: relay RSS with %d idle sessions" % m["held"],
                                  mib(m["idle"]["rss"]), TARGET_MIB, higher=False, unit=" MiB"))
    gained = m["idle"]["pipes"] - m["base"]["pipes"]
    spares = 2 * POOL_KEEP * m["idle"]["processes"]
    table.verdicts.append(Verdict(
        "Memory: pipe fds held by %d idle sessions, beyond the pools' spares" % m["held"],
        max(0, gained - spares), 0, higher=False, unit=""))
    table.notes.append(
        "Pipe descriptors gained between the baseline and %d idle sessions: %d. Each relay "
        "process's PipePool keeps up to %d emptied pipes for reuse (%d descriptors, whatever the "
        "number of sessions); a session holds a pipe only while bytes sit in it, which the "
        "continuous count during the waves never caught." % (m["held"], gained, POOL_KEEP,
                                                             2 * POOL_KEEP))
    failures = []
    if m["held"] < sessions or m["pinged"] < m["held"]:
        failures.append("memory: %d of %d sessions established, %d answered the ping wave" % (
            m["held"], sessions, m["pinged"]))
    return Outcome([table], [], failures)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.idle_memory",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=10000)
    args = p.parse_args(argv)
    m = measure(args.sessions, print)
    for k in ("base", "idle", "after"):
        print("%-6s RSS %7.1f MiB  PSS %7.1f MiB  pipes %d" % (
            k, m[k]["rss"] / 2**20, m[k]["pss"] / 2**20, m[k]["pipes"]))
    print("most pipes during the ping wave: %d (%d samples)" % (m["wave_max"], m["wave_samples"]))
    if m["held"]:
        print("bytes per idle session: %.0f" % ((m["idle"]["rss"] - m["base"]["rss"]) / m["held"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
