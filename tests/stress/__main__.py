"""
The long reliability run: ``python -m tests.stress`` (from the project root).

Each scenario starts its own ``twistd splice`` process and checked traffic
in separate processes (see L{traffic}), and measures the relay from /proc.
It prints one table: sessions run, bytes checked (hashed at the receiving
end), faults injected, leaks found (must be 0) and the relay's peak RSS;
the exit status is 1 if any session failed or anything leaked.  Every
scenario is bounded in time; the whole run takes a few minutes.

``--scale 0.2`` runs a smaller version (a smoke test of the runner).
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import hostile_corpus  # noqa: E402
import hostile_load  # noqa: E402
import procs  # noqa: E402
from stress import early, load  # noqa: E402

LISTEN = "tcp:0:interface=127.0.0.1:backlog=4096"
MIX = "normal=6,client_reset=1,origin_reset=1,stall=1"
FAULTS = ("client_reset", "origin_reset", "stall", "idle")
MiB = 1 << 20


class Row:
    def __init__(self, name):
        self.name = name
        self.sessions = self.checked = self.faults = self.leaks = self.failures = 0
        self.peak = 0
        self.notes = []
        self.started = time.monotonic()
        self.seconds = 0.0

    def add(self, clients, origin=None):
        """Count a client summary (and its origin's) into this row."""
        self.sessions += clients["sessions"] + clients["connect_errors"]
        self.checked += clients["checked_bytes"] + (origin or {}).get("checked_bytes", 0)
        self.faults += sum(clients["kinds"].get(k, 0) for k in FAULTS)
        bad = len(clients["failed"]) + clients["unfinished"]
        if origin:
            bad += len(origin["failed"]) + origin["bad_headers"]
        if bad:
            self.notes.append("failed: %r %r" % (clients["failed"][:3], (origin or {}).get("failed", [])[:3]))
        self.failures += bad

    def done(self, probe=None):
        if probe is not None:
            probe.rss()
            self.peak = max(self.peak, probe.peak_rss)
        self.seconds = time.monotonic() - self.started
        return self


class Run:
    def __init__(self, scale, tmp):
        self.scale = scale
        self.tmp = tmp
        self.rows = []

    def n(self, count):
        return max(10, int(count * self.scale))

    def relay(self, args, name):
        return procs.Twistd(self.tmp, args, name=name)

    # -- scenarios

    def integrity(self, backend):
        """>= 1,000 concurrent sessions, random lengths, half-closes and resets, one path."""
        row, origin = Row("integrity, %s path" % backend), load.Origin(stall=2.0)
        relay = self.relay(["tcp", "--listen", LISTEN, "--connect", origin.tcp, "--backend", backend], backend)
        try:
            (where,) = relay.listening()["tcp"]
            probe = load.Probe(relay.proc.pid)
            # Resetting and stalling sessions may end before the barrier lifts:
            # a wave of 1,300 keeps more than 1,000 open at once.
            wave, least = self.n(1300), self.n(1000)
            result = load.clients([where], 3 * wave, wave, procs=2, mix=MIX, max_up=256 << 10, max_down=256 << 10,
                                  start_at=time.time() + 4 + wave / 400, seed=len(backend), stall=1.0)
            summary = origin.stop()
            row.add(result, summary)
            paths = set(re.findall(r"session ended: .*, (\w+), [\w-]+\n", relay.text()))
            if paths - {"kernel" if backend == "auto" else backend}:  # auto: bulk takes the kernel path
                row.failures += 1
                row.notes.append("paths %r" % paths)
            row.notes.append("%d sessions at once at the origin" % summary["max_concurrent"])
            if summary["max_concurrent"] < least:
                row.failures += 1
            return row.done(probe)
        finally:
            relay.close()
            origin.close()

    def leaks(self):
        """10,000 connections ending every way; descriptors, pipes and memory come back."""
        row, origin = Row("leaks: 10,000 connections, every ending"), load.Origin(stall=1.0)
        path = os.path.join(self.tmp, "leaks.toml")
        with open(path, "w") as f:
            f.write(load.LEAK_CONFIG.format(cap=20, listen=LISTEN, origin=origin.tcp.replace("\\", "\\\\"),
                                       dead=procs.free_port()))
        relay = self.relay(["--config", path], "leaks")
        try:
            ports = {k: v[0] for k, v in relay.listening(4).items()}
            probe = load.Probe(relay.proc.pid)
            total = self.n(10000)
            shares = {"main": 0.7, "cap": 0.1, "dead": 0.1, "deny": 0.1}

            def batch(count, first):
                running = {
                    "main": load.start_clients([ports["main"]], int(count * shares["main"]), 400, procs=2,
                                               mix=MIX + ",idle=1", max_up=64 << 10, max_down=64 << 10,
                                               idle_deadline=4.0, stall=0.5, first_id=first),
                    "cap": load.start_clients([ports["cap"]], int(count * shares["cap"]), 100, max_up=4096,
                                              max_down=4096, first_id=first + 2),
                    "dead": load.start_clients([ports["dead"]], int(count * shares["dead"]), 100,
                                               mix="client_reset", first_id=first + 3),
                    "deny": load.start_clients([ports["deny"]], int(count * shares["deny"]), 100,
                                               mix="client_reset", first_id=first + 4),
                }
                return {k: load.finish(v) for k, v in running.items()}

            batch(self.n(2000), 10)  # the working size of pools, caches and the heap
            baseline = load.settle(probe, {"fds": 0, "pipes": 0, "rss": 0}, timeout=1.0)
            results = batch(total, 20)
            for name in ("main", "cap"):
                row.add(results[name])
            for name in ("dead", "deny"):
                row.sessions += results[name]["sessions"] + results[name]["connect_errors"]
                row.faults += int(total * shares[name])
            row.faults += int(total * shares["cap"])  # each waited for a slot
            after = load.settle(probe, baseline, timeout=20.0)
            row.leaks += max(0, after["fds"] - baseline["fds"]) + max(0, after["pipes"] - baseline["pipes"])
            grown = after["rss"] - baseline["rss"]
            if grown > 4 * MiB:
                row.leaks += 1
            row.notes.append("fds %d -> %d, pipes %d -> %d, RSS %+.1f MiB" % (
                baseline["fds"], after["fds"], baseline["pipes"], after["pipes"], grown / MiB))
            summary = origin.stop()
            row.failures += len(summary["failed"])
            refused = len(re.findall(r"not in --allow", relay.text()))
            if summary["sessions"] != sum(int(c * shares["main"]) + int(c * shares["cap"]) for c in (self.n(2000), total)):
                row.failures += 1
                row.notes.append("origin saw %d sessions" % summary["sessions"])
            row.notes.append("%d refused by --allow before any byte" % refused)
            return row.done(probe)
        finally:
            relay.close()
            origin.close()

    def memory(self, kind):
        """1 GiB toward a receiver that stopped reading: the relay's RSS grows < 16 MiB."""
        total = 1 << 30
        row = Row("bounded memory, 1 GiB, %s" % kind)
        http = kind == "http"
        sink = procs.Backend(load.stalling_reader(3.0, head=http))
        args = ["http", "--listen", LISTEN, "--connect", sink.tcp] if http else \
            ["tcp", "--listen", LISTEN, "--connect", sink.tcp, "--backend", kind]
        relay = self.relay(args, "memory-" + kind)
        try:
            (where,) = relay.listening()["http" if http else "tcp"]
            head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % total if http else b""
            growth, crc, _ = load.push_into_stall(relay, where, total, 3.0, head)
            deadline = time.monotonic() + 60
            while not sink.records and time.monotonic() < deadline:
                time.sleep(0.05)
            row.sessions, row.faults = 1, 1
            if sink.records == [(total, crc)]:
                row.checked = total
            else:
                row.failures += 1
            if growth >= 16 * MiB:
                row.failures += 1
            row.notes.append("RSS %+.1f MiB while stalled" % (growth / MiB))
            return row.done(load.Probe(relay.proc.pid))
        finally:
            relay.close()
            sink.close()

    def origin_dies(self):
        """
        The origin is killed mid-stream under load; the relay goes on with a
        new one.  Once the cut sessions have ended, the relay's memory must
        be back within 8 MiB of where a same-sized batch with a living
        origin left it.
        """
        row, origin = Row("faults: origin dies mid-stream"), load.Origin()
        relay = self.relay(["tcp", "--listen", LISTEN, "--connect", origin.tcp], "dies")
        try:
            (where,) = relay.listening()["tcp"]
            probe = load.Probe(relay.proc.pid)
            n = self.n(500)
            warm = load.clients([where], n, n, procs=2, max_up=4 << 20, max_down=4 << 20, first_id=7)
            row.add(warm)
            baseline = load.settle(probe, {"fds": 0, "pipes": 0, "rss": 0}, timeout=1.0)
            running = load.start_clients([where], n, n, procs=2, max_up=4 << 20, max_down=4 << 20, first_id=1)
            time.sleep(2.0)
            origin.kill()
            cut = load.finish(running)
            row.sessions += cut["sessions"] + cut["connect_errors"]
            row.faults += cut["sessions"] - cut["ok"]
            row.checked += cut["checked_bytes"]
            after = load.settle(probe, baseline, rss_slack=8 * MiB, timeout=10.0)
            grown = after["rss"] - baseline["rss"]
            row.leaks += max(0, after["fds"] - baseline["fds"]) + max(0, after["pipes"] - baseline["pipes"])
            row.leaks += grown > 8 * MiB
            row.notes.append("%d sessions cut; after they ended: fds %d -> %d, pipes %d -> %d, RSS %+.1f MiB" % (
                cut["sessions"] - cut["ok"], baseline["fds"], after["fds"], baseline["pipes"], after["pipes"],
                grown / MiB))
            port = origin.port
            origin = load.Origin(port=port)
            result = load.clients([where], n, n // 2, procs=2, mix=MIX, first_id=5)
            row.add(result, origin.stop())
            unhandled = relay.text().count("Unhandled Error")
            if unhandled:
                row.failures += unhandled
                row.notes.append("%d unhandled errors in the relay's log" % unhandled)
            return row.done(probe)
        finally:
            relay.close()
            origin.close()

    def hostile_http(self):
        """The hostile-HTTP corpus replayed from 4 threads beside good keep-alive clients; nothing smuggled."""
        row, origin = Row("hostile HTTP: corpus beside good clients"), hostile_load.RecordingOrigin()
        relay = self.relay(["http", "--listen", LISTEN, "--connect", origin.tcp, "--header-timeout", "5"], "hostile")
        try:
            (where,) = relay.listening()["http"]
            probe = load.Probe(relay.proc.pid)
            warm = hostile_load.GoodClients(where, count=8, seed=100)
            warmup = [hostile_load.replay(where, case) for case in hostile_corpus.CASES]  # pools at working size
            warm.stop()
            baseline = load.settle(probe, {"fds": 0, "pipes": 0, "rss": 0}, timeout=1.0)
            passes, threads = self.n(100), 4
            good = hostile_load.GoodClients(where, count=8)
            outcomes = []

            def replayer(i):
                for _ in range(passes // threads + (1 if i < passes % threads else 0)):
                    outcomes.extend(hostile_load.replay(where, case) for case in hostile_corpus.CASES)

            workers = [threading.Thread(target=replayer, args=(i,)) for i in range(threads)]
            for t in workers:
                t.start()
            for t in workers:
                t.join(300)
            good.stop()
            row.sessions = len(outcomes) + good.checked
            row.faults = len(outcomes)
            row.checked = good.checked_bytes
            bad = [(o.case.name, p) for o in warmup + outcomes for p in hostile_load.problems(o)]
            after = load.settle(probe, baseline, rss_slack=8 * MiB, timeout=10.0)
            row.peak = probe.peak_rss
            relay.close()  # every origin connection ends: its records are final
            origin.close()
            at_origin = hostile_load.origin_problems(origin, hostile_corpus.CASES, times=passes + 1)
            smuggled = [r for r in origin.hostile() if r.target.startswith("/smuggled/")]
            row.failures += len(bad) + sum(map(len, at_origin.values())) + len(good.errors) + len(warm.errors)
            row.leaks += max(0, after["fds"] - baseline["fds"]) + max(0, after["pipes"] - baseline["pipes"])
            row.notes.append("%d corpus passes (%d cases each) beside 8 good clients: %d good answers checked, "
                             "%d requests smuggled to the origin, fds %d -> %d, RSS %+.1f MiB" % (
                                 passes, len(hostile_corpus.CASES), good.checked, len(smuggled),
                                 baseline["fds"], after["fds"], (after["rss"] - baseline["rss"]) / MiB))
            if bad or at_origin or good.errors or warm.errors:
                row.notes.append("failed: %r %r %r" % (bad[:3], [(name, len(p), p[0]) for name, p in at_origin.items()],
                                                       (good.errors + warm.errors)[:3]))
            return row.done()
        finally:
            relay.close()
            origin.close()

    def descriptors(self):
        """RLIMIT_NOFILE lowered under load: accepting pauses, nothing is dropped, it recovers."""
        row, origin = Row("faults: descriptors run out"), load.Origin()
        relay = self.relay(["tcp", "--listen", LISTEN, "--connect", origin.tcp], "emfile")
        try:
            (where,) = relay.listening()["tcp"]
            probe = load.Probe(relay.proc.pid)
            load.clients([where], 20, 20)  # warm
            time.sleep(0.3)
            limit = sum(probe.fds()) + 32 + 100  # room for about 50 sessions above the guard's margin
            subprocess.run(["prlimit", "--pid", str(relay.proc.pid), "--nofile=%d:%d" % (limit, limit)], check=True)
            n = self.n(300)  # six times what fits
            cpu0, t0 = probe.cpu(), time.monotonic()
            result = load.clients([where], n, n, procs=2, mix="normal", max_up=64 << 10, max_down=64 << 10,
                                  first_id=3)
            cpu = (probe.cpu() - cpu0) / (time.monotonic() - t0)
            row.add(result, origin.stop())
            text = relay.text()
            episodes = len(re.findall("out of file descriptors", text))
            row.faults += episodes
            row.notes.append("%d shortages, %d recoveries, relay CPU %.0f%%" % (
                episodes, len(re.findall("file descriptors available again", text)), 100 * cpu))
            if not episodes or "EMFILE recovery" in text or "connect-failed" in text:
                row.failures += 1
            return row.done(probe)
        finally:
            relay.close()
            origin.close()

    def lifecycle(self):
        """SIGHUP reloads under load, then SIGTERM with 1,000 sessions running."""
        row, origin = Row("lifecycle: SIGHUP x4, SIGTERM"), load.Origin()
        path, port = os.path.join(self.tmp, "hup.toml"), procs.free_port()
        base = '[relay.steady]\nlisten = "tcp:%d:interface=127.0.0.1:backlog=4096"\nconnect = "%s"\n' % (
            port, origin.tcp.replace("\\", "\\\\"))
        extra = '[relay.other]\nlisten = "tcp:0:interface=127.0.0.1"\nconnect = "%s"\n' % origin.tcp.replace(
            "\\", "\\\\")
        with open(path, "w") as f:
            f.write(base)
        relay = self.relay(["--config", path], "hup")
        try:
            (where,) = relay.listening()["steady"]
            probe = load.Probe(relay.proc.pid)
            running = load.start_clients([where], self.n(2000), 200, procs=2, mix=MIX, first_id=1)
            for i in range(4):
                time.sleep(0.5)
                with open(path, "w") as f:
                    f.write(base + (extra if i % 2 == 0 else ""))
                relay.signal(signal.SIGHUP)
                relay.wait_for(r"reload: ", count=i + 1)
            row.add(load.finish(running))
            row.faults += 4
            n, go = self.n(1000), os.path.join(self.tmp, "go")
            fds = probe.fds()[0]
            running = load.start_clients([where], n, n, procs=2, max_up=256 << 10, max_down=256 << 10,
                                         go_file=go, first_id=5)
            deadline = time.monotonic() + 60
            while probe.fds()[0] < fds + 2 * n and time.monotonic() < deadline:
                time.sleep(0.05)
            probe.rss()  # the peak so far; the process is gone at the end
            relay.signal(signal.SIGTERM)
            relay.wait_for(r"waiting up to [\d.]+s for %d sessions" % n)
            open(go, "w").close()
            row.add(load.finish(running))
            row.faults += 1
            if relay.wait(60) != -signal.SIGTERM:
                row.failures += 1
            row.add({"sessions": 0, "connect_errors": 0, "checked_bytes": 0, "kinds": {}, "failed": [],
                     "unfinished": 0}, origin.stop())
            row.peak = probe.peak_rss
            return row.done()
        finally:
            relay.close()
            origin.close()


    def early_close(self, relay, kind):
        """Clients (and origins) closing at every point of a request, FIN or reset, 64 at once."""
        return early.scenario(self, Row("early closes, %s %s" % (relay, kind)), relay, kind)


def table(rows, seconds):
    out = ["| scenario | sessions | bytes checked | faults injected | leaks | failures | relay peak RSS | time |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append("| %s | %d | %s | %d | %d | %d | %.1f MiB | %.0f s |" % (
            r.name, r.sessions, _bytes(r.checked), r.faults, r.leaks, r.failures, r.peak / MiB, r.seconds))
    out.append("| **total** | **%d** | **%s** | **%d** | **%d** | **%d** | **%.1f MiB** | **%.0f s** |" % (
        sum(r.sessions for r in rows), _bytes(sum(r.checked for r in rows)), sum(r.faults for r in rows),
        sum(r.leaks for r in rows), sum(r.failures for r in rows), max(r.peak for r in rows) / MiB, seconds))
    return "\n".join(out)


def _bytes(n):
    return "%.2f GiB" % (n / (1 << 30)) if n >= 1 << 30 else "%.1f MiB" % (n / MiB)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tests.stress", description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="sessions scale (1: the documented run)")
    p.add_argument("--only", action="append", help="run only these scenarios (method names)")
    args = p.parse_args(argv)
    load.raise_fd_limit()
    started = time.monotonic()
    # "auto" is the default: a plain TCP relay's lean sessions (splicing.relay.lean); a forced
    # --backend keeps the transport-based sessions, so both are run.
    scenarios = [("integrity", "auto"), ("integrity", "kernel"), ("integrity", "mbuf"), ("leaks",),
                 ("memory", "auto"), ("memory", "kernel"), ("memory", "mbuf"), ("memory", "http"), ("origin_dies",),
                 ("hostile_http",), ("descriptors",), ("lifecycle",), ("early_close", "http", "kernel"),
                 ("early_close", "http", "mbuf"), ("early_close", "http", "transport"),
                 ("early_close", "http", "tls-origin"), ("early_close", "tcp", "auto"),
                 ("early_close", "tcp", "kernel"), ("early_close", "tcp", "mbuf")]
    with tempfile.TemporaryDirectory(prefix="splicing-stress-") as tmp:
        run = Run(args.scale, tmp)
        for name, *params in scenarios:
            if args.only and name not in args.only:
                continue
            print("running %s %s ..." % (name, " ".join(params)), file=sys.stderr, flush=True)
            try:
                row = getattr(run, name)(*params)
            except Exception as e:  # a scenario that broke is a failure in the table, not a traceback
                row = Row("%s %s" % (name, " ".join(params))).done()
                row.failures += 1
                row.notes.append("%s: %s" % (type(e).__name__, e))
            run.rows.append(row)
            print("  %s: %s" % (row.name, "; ".join(row.notes) or "ok"), file=sys.stderr, flush=True)
    seconds = time.monotonic() - started
    print(table(run.rows, seconds))
    for r in run.rows:
        if r.notes:
            print("- %s: %s" % (r.name, "; ".join(r.notes)))
    bad = sum(r.leaks + r.failures for r in run.rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
