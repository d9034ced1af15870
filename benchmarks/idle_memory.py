"""
Memory of idle spliced sessions: 10,000 TCP sessions held open through
C{twistd splice tcp}, with the relay's RSS and the pipes it holds counted.

    python -m benchmarks.idle_memory [--sessions 10000] [--setup one|workers|both]

The kernel path borrows a pipe only while bytes sit in it, so an idle
session should hold two sockets and a little Python state, no pipe.  Two
setups, one after the other:

  - one: ONE relay process holds every session (what the target, "10,000
    idle sessions <= 150 MiB RSS for the relay process", asks).  A session
    takes two relay sockets, so the process needs 2 x sessions descriptors
    and a few more.  When RLIMIT_NOFILE's hard limit is lower (20,000 on
    the benchmark machine), this process raises it (root with
    CAP_SYS_RESOURCE may) and the relay inherits it.  Where that fails, the
    process holds as many sessions as the limit allows (9,900 of 10,000
    under 20,000), the output says why, and its RSS with every session is
    extrapolated from its bytes per session.
  - workers: C{twistd splice tcp --workers 2}, RSS summed over its three
    processes (the master and two workers); when C{--workers} has not
    landed, two relay processes each holding half the sessions.

The load is split too: holder processes of 2,500 connections each
(L{benchmarks._echoload} C{hold}) and one echo origin per 5,000 sessions.

Measured: RSS and pipes of the relay before any session (baseline), with
every session established and idle, the most pipes seen while one byte
crosses every session both ways (ping waves, for two seconds), and after.
"""

import argparse
import resource
import shutil
import os
import subprocess
import sys
import tempfile
import threading
import time

from benchmarks.procs import Load, descendants, pipe_fds, pss, rss
from benchmarks.tcp_throughput import Relay, twistd

TARGET_MIB = 150  # issue 14: 10,000 idle sessions <= 150 MiB RSS for the relay process
PER_HOLDER = 2500
PER_ORIGIN = 5000
POOL_KEEP = 8  # splicing.paths.pipes.PipePool(keep=8): spare pipes a process may keep
WAVE_SECONDS = 2.0  # ping waves back to back, while the pipes are counted
FD_SPARE = 200  # descriptors beyond two per session: stdio, listener, reactor, pipe pool (<= 16)
SETUPS = ("one", "workers")
HARD_AT_START = resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # before descriptor_limit raised it


def descriptor_limit(sessions):
    """
    How one relay process can hold C{sessions}: a dict of C{nofile} (the
    RLIMIT_NOFILE to start it with), C{fit} (how many sessions it can hold
    under that), C{raised} (the hard limit we raised, or None) and C{why}
    (why not all of them, or None).

    A hard limit too low for C{sessions} is raised in this process first
    (root with CAP_SYS_RESOURCE may), so that the relay inherits the room.
    """
    need = 2 * sessions + FD_SPARE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    raised = HARD_AT_START if HARD_AT_START != resource.RLIM_INFINITY and HARD_AT_START < need else None
    if hard == resource.RLIM_INFINITY or hard >= need:
        return {"nofile": need, "fit": sessions, "raised": raised, "why": None}
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, need))
    except (ValueError, OSError) as e:
        who = "root without CAP_SYS_RESOURCE" if os.geteuid() == 0 else "not root"
        return {"nofile": hard, "fit": min(sessions, max(0, (hard - FD_SPARE) // 2)), "raised": None,
                "why": "one process needs %d descriptors for %d sessions, the hard limit here is %d "
                       "and raising it failed (%s: %s)" % (need, sessions, hard, who, e)}
    return {"nofile": need, "fit": sessions, "raised": raised, "why": None}


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


def measure(sessions, log=lambda m: None, setup="one"):
    """
    One setup's figures (see the module's docstring).  One process holds as
    many sessions as its descriptors allow (C{why} says why not all).
    """
    workdir = tempfile.mkdtemp(prefix="splicing-idle-")
    workers = setup == "workers" and has_workers_option()
    instances = 2 if setup == "workers" and not workers else 1
    limit = descriptor_limit(sessions)
    nofile = limit["nofile"]
    if setup == "one" and limit["why"] is not None:
        log("idle memory, one: %d sessions, not %d: %s" % (limit["fit"], sessions, limit["why"]))
        sessions = limit["fit"]
    elif limit["why"] is not None:
        nofile = None  # today's way: the processes share the sessions under the inherited limit
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
                      extra=["--workers", "2"] if workers else [], nofile=nofile)
            relays.append(r)
            r.start()
        time.sleep(1.0)  # workers forked, probe sessions ended
        base = sample(relays)
        log("idle memory, %s: relay baseline %.1f MiB, %d pipes, %d processes" % (
            setup, base["rss"] / 2**20, base["pipes"], base["processes"]))
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
        setup_seconds = time.monotonic() - t0
        time.sleep(1.0)
        idle = sample(relays)
        log("idle memory, %s: %d sessions in %.1f s, relay %.1f MiB, %d pipes" % (
            setup, held, setup_seconds, idle["rss"] / 2**20, idle["pipes"]))
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
                "setup_seconds": setup_seconds, "nofile": nofile, "limit": limit, "workers": workers,
                "instances": instances, "holders": len(holders),
                "origins": norigins, "base": base, "idle": idle, "after": after,
                "wave_max": wave_max, "wave_samples": watch.samples, "waves": waves}
    finally:
        for r in relays:
            r.stop()
        for load in loads:
            load.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def describe(m):
    """What ran, in words, for one setup's figures."""
    raised = m["limit"]["raised"]
    limit = (" (RLIMIT_NOFILE %d: we raised the hard limit from %d)" % (m["nofile"], raised)
             if raised and m["nofile"] else "")
    if m["setup"] == "one":
        return "one `twistd splice tcp` process" + limit
    if m["workers"]:
        return "`twistd splice tcp --workers 2`, RSS of its %d processes summed%s" % (
            m["idle"]["processes"], limit)
    return ("two `twistd splice tcp` processes, half the sessions each (`--workers` has not "
            "landed); RSS summed over both")


def per_session(m):
    """Bytes of RSS per idle session: growth from the baseline / sessions held."""
    return (m["idle"]["rss"] - m["base"]["rss"]) / m["held"] if m["held"] else None


def at(m, sessions):
    """RSS with C{sessions} idle sessions: measured, or extrapolated (baseline + per session)."""
    if m["held"] >= sessions or not m["held"]:
        return m["idle"]["rss"], False
    return m["base"]["rss"] + per_session(m) * sessions, True


def summary(m, sessions):
    """The figures one setup is judged by, in one line."""
    per = per_session(m)
    rss, extrapolated = at(m, sessions)
    return ("%s: RSS %.1f MiB with %d idle sessions%s, baseline %.1f MiB (%s), %s bytes per "
            "session, %d pipe fds idle (%d at baseline, %d at most during the ping waves)" % (
                describe(m), m["idle"]["rss"] / 2**20, m["held"],
                " (%.1f MiB extrapolated to %d)" % (rss / 2**20, sessions) if extrapolated else "",
                m["base"]["rss"] / 2**20,
                " + ".join("%.1f" % (r / 2**20) for _, r, _, _ in m["base"]["each"]),
                "%.0f" % per if per is not None else "-", m["idle"]["pipes"], m["base"]["pipes"],
                m["wave_max"]))


def suite(ctx):
    from benchmarks.report import Table, Verdict
    from benchmarks.scenario import Outcome

    sessions = ctx.pick(10000, 400)
    ctx.log("idle memory: %d sessions" % sessions)
    runs = [measure(sessions, ctx.log, setup) for setup in SETUPS]
    mib = lambda b: b / 2**20
    table = Table(
        "memory", "Memory of idle spliced sessions",
        "%d TCP sessions opened by holder processes of %d connections to echo origins "
        "through the relay; each session carried one byte each way and then sat idle. RSS from "
        "/proc/PID/status; pipes = /proc/PID/fd entries that are pipes (the relay's own "
        "reactor waker pipes are in the baseline). Ping waves send one more byte each way "
        "through every session, back to back for %g s, while the pipes are counted "
        "continuously. Setups: %s." % (
            sessions, PER_HOLDER, WAVE_SECONDS, "; ".join(
                "%s = %s" % (m["setup"], describe(m)) for m in runs)),
        [("relay", "setup, state", "%s"), ("sessions", "sessions", "%d"),
         ("rss", "relay RSS MiB", "%.1f"), ("pss", "relay PSS MiB", "%.1f"),
         ("pipes", "pipe fds", "%d")])
    failures = []
    for m in runs:
        name = m["setup"]
        table.rows += [
            {"relay": name + ": baseline (no session)", "sessions": 0, "rss": mib(m["base"]["rss"]),
             "pss": mib(m["base"]["pss"]), "pipes": m["base"]["pipes"]},
            {"relay": name + ": idle", "sessions": m["held"], "rss": mib(m["idle"]["rss"]),
             "pss": mib(m["idle"]["pss"]), "pipes": m["idle"]["pipes"]},
            {"relay": name + ": most during the ping waves", "sessions": m["pinged"], "rss": None,
             "pss": None, "pipes": m["wave_max"]},
            {"relay": name + ": after the ping waves", "sessions": m["held"],
             "rss": mib(m["after"]["rss"]), "pss": mib(m["after"]["pss"]), "pipes": m["after"]["pipes"]},
        ]
        for state in ("base", "idle", "after"):
            table.notes.append("%s, per process, %s: %s." % (
                name, {"base": "baseline", "idle": "idle", "after": "after the waves"}[state], ", ".join(
                    "%.1f MiB, %d pipes, %d fds" % (r / 2**20, pipes, fds)
                    for _, r, pipes, fds in m[state]["each"])))
        per = per_session(m)
        table.notes.append("%s: bytes per idle session (RSS growth / sessions): %s; sessions "
                           "established in %.1f s (%d ping waves)." % (
                               name, "%.0f" % per if per is not None else "-", m["setup_seconds"],
                               m["waves"]))
        gained = m["idle"]["pipes"] - m["base"]["pipes"]
        spares = 2 * POOL_KEEP * m["idle"]["processes"]
        table.verdicts.append(Verdict(
            "Memory (%s): pipe fds held by %d idle sessions, beyond the pools' spares" % (name, m["held"]),
            max(0, gained - spares), 0, higher=False, unit=""))
        if m["held"] < m["sessions"] or m["pinged"] < m["held"]:
            failures.append("memory (%s): %d of %d sessions established, %d answered the ping wave" % (
                name, m["held"], m["sessions"], m["pinged"]))
    one = runs[0]
    rss, extrapolated = at(one, sessions)
    if extrapolated:
        table.notes.insert(0, "One process held %d sessions, not %d: %s. Its RSS with %d is "
                              "extrapolated: baseline + bytes per session x %d." % (
                                  one["held"], sessions, one["limit"]["why"], sessions, sessions))
    table.verdicts.insert(0, Verdict("Memory: RSS of the relay process with %d idle sessions%s" % (
        sessions, " (extrapolated from %d)" % one["held"] if extrapolated else ""),
        mib(rss), TARGET_MIB, higher=False, unit=" MiB"))
    for m in runs:
        table.notes.append(summary(m, sessions) + ".")
    table.notes.append(
        "RSS summed over the relay's processes counts the pages they share (the interpreter, "
        "Twisted, OpenSSL) once per process; PSS (/proc/PID/smaps_rollup) divides each shared "
        "page among its sharers, so its sum is what the relay costs the machine. Each relay "
        "process's PipePool keeps up to %d emptied pipes for reuse (%d descriptors, whatever the "
        "number of sessions); a session holds a pipe only while bytes sit in it." % (
            POOL_KEEP, 2 * POOL_KEEP))
    return Outcome([table], [], failures)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.idle_memory",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=10000)
    p.add_argument("--setup", choices=SETUPS + ("both",), default="both",
                   help="one relay process, --workers 2, or both (default)")
    args = p.parse_args(argv)
    for setup in SETUPS if args.setup == "both" else (args.setup,):
        m = measure(args.sessions, print, setup)
        for k in ("base", "idle", "after"):
            print("  %-6s RSS %7.1f MiB  PSS %7.1f MiB  pipes %d  (%s)" % (
                k, m[k]["rss"] / 2**20, m[k]["pss"] / 2**20, m[k]["pipes"],
                ", ".join("%.1f" % (r / 2**20) for _, r, _, _ in m[k]["each"])))
        print("  most pipes during the ping waves: %d (%d samples)" % (m["wave_max"], m["wave_samples"]))
        print(summary(m, args.sessions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
