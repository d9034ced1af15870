"""
Bulk TCP throughput through a relay, one session at a time.

    python -m benchmarks.tcp_throughput [--seconds S] [--repeat N]
                                        [--relays direct,portforward,kernel,mbuf]

A sender process does 1 MiB C{send()} calls for S seconds through the relay
to a receiver process doing C{recv_into} a fixed 1 MiB buffer (both in
L{benchmarks._load}).  Relays run as their own processes; runs are
interleaved round-robin over the relays, N times, and the table reports the
median and min-max of GB/s (1e9 bytes, counted by the receiver) and the relay
process's CPU seconds (utime+stime of it and its reaped children, from
/proc/PID/stat) per GB.  Before the timed runs, every relay carries an
untimed integrity pass (CRC-32 on both ends).

Relays: C{direct} (no relay), C{portforward} (C{twistd portforward}),
C{kernel} and C{mbuf} (L{benchmarks.splice_relay} on C{splicing.splice()}),
C{copy} (the same app, plain user-land copy), C{splice} and C{splice-mbuf}
(the product, C{twistd splice tcp}, default path or C{--backend mbuf}), and,
when on PATH, C{haproxy} (forced splicing, 1 MiB pipes) and C{socat}.  Only
127.0.0.1 is used.
"""

import argparse
import json
import os
import queue
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benchmarks.procs import (  # noqa: F401  (also imported from here by other benchmarks)
    PY, ROOT, BenchError, _env, free_port, kill, proc_cpu, twistd, wait_listening,
)

DEFAULT_RELAYS = ["direct", "portforward", "kernel", "mbuf"]
OPTIONAL_RELAYS = ["haproxy", "socat"]  # added to the default list when on PATH
# copy/transport/auto: other splice_relay backends; proto-*: benchmarks._protorelay
# splice, splice-mbuf: the product, `twistd splice tcp` (PRODUCT_RELAYS)
PRODUCT_RELAYS = {"splice": [], "splice-mbuf": ["--backend", "mbuf"]}
KNOWN_RELAYS = (DEFAULT_RELAYS + ["copy", "transport", "auto", "proto-splice", "proto-copy"]
                + list(PRODUCT_RELAYS) + OPTIONAL_RELAYS)

# Targets for the splice backends: (min throughput x portforward, max CPU/GB x portforward)
TARGETS = {"kernel": (1.45, 0.45), "mbuf": (1.9, 0.45)}
DIRECT_HEADROOM = 1.5


class Receiver:
    """The receiver server process; its JSON result lines, by run id."""

    def __init__(self, workdir, many=False):
        self.proc = subprocess.Popen(
            [PY, "-m", "benchmarks._load", "recv"] + (["--many"] if many else []),
            cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
            stderr=open(os.path.join(workdir, "receiver.log"), "wb"),
            start_new_session=True, text=True,
        )
        self.results = queue.Queue()
        self.port = None
        ready = queue.Queue()

        def reader():
            for line in self.proc.stdout:
                if line.startswith("PORT "):
                    ready.put(int(line.split()[1]))
                elif line.strip():
                    self.results.put(json.loads(line))

        threading.Thread(target=reader, daemon=True).start()
        try:
            self.port = ready.get(timeout=15)
        except queue.Empty:
            raise BenchError("receiver did not start")

    def result(self, run_id, timeout):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError("no receiver result for run %d" % run_id)
            try:
                r = self.results.get(timeout=left)
            except queue.Empty:
                continue
            if r.get("id") == run_id:
                return r


def haproxy_command(workdir, port, dest, mode):
    """
    HAProxy in its best configuration here: forced splicing both ways with
    1 MiB pipes (docs: perf baseline), in C{mode} C{"tcp"} or C{"http"}
    (keep-alive both sides).
    """
    cfg = os.path.join(workdir, "haproxy-%s-%d.cfg" % (mode, port))
    with open(cfg, "w") as f:
        f.write(
            "global\n"
            "    tune.pipesize 1048576\n"
            "defaults\n"
            "    mode %s\n"
            "    timeout connect 5s\n"
            "    timeout client 60s\n"
            "    timeout server 60s\n"
            "    option splice-request\n"
            "    option splice-response\n"
            "%s"
            "listen relay\n"
            "    bind 127.0.0.1:%d\n"
            "    server dest 127.0.0.1:%s\n" % (
                mode, "    option http-keep-alive\n" if mode == "http" else "", port, dest)
        )
    return [shutil.which("haproxy"), "-db", "-f", cfg]


class Relay:
    """One relay under test: a process (or none, for direct) and a port."""

    def __init__(self, name, workdir, dest_port, extra=(), nofile=None):
        self.name = name
        self.extra = list(extra)  # more command-line options (product relays)
        self.nofile = nofile  # RLIMIT_NOFILE (soft and hard) to start it with, or None: inherited
        self.proc = None
        self.port = None
        self.workdir = workdir
        self.dest_port = dest_port
        self.log = os.path.join(workdir, "%s.log" % name)

    def command(self, port):
        d = str(self.dest_port)
        if self.name == "portforward":
            return [twistd(), "-n", "--pidfile=", "--logfile=-", "portforward",
                    "--port", "tcp:%d:interface=127.0.0.1" % port,
                    "--host", "127.0.0.1", "--dest_port", d]
        if self.name in ("kernel", "mbuf", "copy", "transport", "auto"):
            return [PY, "-m", "benchmarks.splice_relay", "--listen", str(port),
                    "--connect", d, "--backend", self.name]
        if self.name in PRODUCT_RELAYS:
            # A deep backlog: the session-rate and idle-session loads connect in bursts.
            return ([twistd(), "-n", "--pidfile=", "--logfile=-", "splice", "tcp",
                     "--listen", "tcp:%d:interface=127.0.0.1:backlog=4096" % port,
                     "--connect", "tcp:host=127.0.0.1:port=%s" % d]
                    + PRODUCT_RELAYS[self.name] + self.extra)
        if self.name.startswith("proto-"):
            return [PY, "-m", "benchmarks._protorelay", "--listen", str(port),
                    "--connect", d, "--mode", self.name[len("proto-"):]]
        if self.name == "haproxy":
            return haproxy_command(self.workdir, port, d, "tcp")
        if self.name == "socat":
            return [shutil.which("socat"),
                    "TCP4-LISTEN:%d,bind=127.0.0.1,reuseaddr,fork" % port,
                    "TCP4:127.0.0.1:%s" % d]
        raise BenchError("unknown relay %r" % self.name)

    def start(self):
        if self.name == "direct":
            self.port = self.dest_port
            return
        port = free_port()
        logf = open(self.log, "wb")
        try:
            self.proc = subprocess.Popen(
                self.command(port), cwd=self.workdir, env=_env(),
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=self._limits if self.nofile else None,
            )
        finally:
            logf.close()
        try:
            wait_listening(port, self.proc, time.monotonic() + 15, self.name)
        except BenchError as e:
            raise BenchError("%s\n%s" % (e, self.log_tail()))
        self.port = port

    def _limits(self):
        """In the child, before exec: its descriptor limit (raising the hard one needs root)."""
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def cpu(self):
        return proc_cpu(self.proc.pid) if self.proc is not None else None

    def log_tail(self, lines=15):
        try:
            with open(self.log, errors="replace") as f:
                tail = f.read().splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join("    | " + l for l in tail)

    def stop(self):
        kill(self.proc)

    def log_notes(self):
        """Backends actually used (splice relays) and suspicious log lines."""
        try:
            with open(self.log, errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return None, []
        used = set()
        bad = []
        for l in lines:
            if "BACKEND requested=" in l:
                parts = dict(p.split("=", 1) for p in l.split("BACKEND ", 1)[1].split())
                used.add((parts.get("forward"), parts.get("reverse")))
            elif "] session ended: " in l:  # twistd splice tcp: "..., 0.013s, kernel, eof"
                fields = [f.strip() for f in l.rsplit(",", 2)]
                used.add((fields[1], fields[1]))
            elif any(k in l for k in ("Traceback", "Unhandled", "Error", "failed",
                                      "splice ended: reason=")):  # splice_relay: non-EOF
                bad.append(l.strip())
        return used, bad


def start_relays(names, workdir, dest_port, what, failures):
    """
    Start a L{Relay} per name in front of C{dest_port}; one that does not
    start is stopped and reported in C{failures} (as C{"what: name did not
    start: why"}), the others are returned by name.
    """
    relays = {}
    for n in names:
        r = Relay(n, workdir, dest_port)
        try:
            r.start()
            relays[n] = r
        except BenchError as e:
            r.stop()
            failures.append("%s: %s did not start: %s" % (what, n, e))
    return relays


# -- one run ---------------------------------------------------------------

_run_ids = iter(range(1, 1 << 62))


def run_once(relay, receiver, seconds=None, nbytes=None):
    run_id = next(_run_ids)
    cmd = [PY, "-m", "benchmarks._load", "send", "--port", str(relay.port), "--id", str(run_id)]
    cmd += ["--seconds", str(seconds)] if nbytes is None else ["--bytes", str(nbytes)]
    if relay.proc is not None and relay.proc.poll() is not None:
        raise BenchError("%s has exited (status %s)" % (relay.name, relay.proc.returncode))
    cpu0 = relay.cpu()
    sender = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, start_new_session=True, text=True)
    try:
        out, err = sender.communicate(timeout=(seconds or 0) + 20)
    except subprocess.TimeoutExpired:
        kill(sender)
        raise BenchError("sender timed out through %s" % relay.name)
    finally:
        kill(sender)
    try:
        snd = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError("sender failed through %s: %s" % (relay.name, err.strip()[-500:]))
    rcv = receiver.result(run_id, timeout=15)
    if relay.name == "socat":
        time.sleep(0.2)  # let the forked child be reaped into cutime/cstime
    cpu1 = relay.cpu()
    errors = ["%s: %s, %d bytes" % (side, r["error"], r.get("bytes", r.get("sent")))
              for side, r in (("sender", snd), ("receiver", rcv)) if r.get("error")]
    if not errors and rcv["bytes"] != snd["sent"]:
        errors.append("sent %d bytes, received %d" % (snd["sent"], rcv["bytes"]))
    return {
        "snd": snd,
        "rcv": rcv,
        "gbps": rcv["bytes"] / rcv["secs"] / 1e9 if rcv["secs"] > 0 else 0.0,
        "relay_cpu": None if cpu0 is None else cpu1 - cpu0,
        "error": "; ".join(errors) or None,
    }


# -- report ----------------------------------------------------------------


def fmt(x, spec="%.2f"):
    return "-" if x is None else spec % x


def summarize(runs):
    # A run that failed (stall, reset) is reported as a failure, not averaged in:
    # its duration includes a timeout.
    ok = [r for r in runs if "gbps" in r and not r.get("error")]
    if not ok:
        return None
    g = [r["gbps"] for r in ok]
    cpus = [r["relay_cpu"] / (r["rcv"]["bytes"] / 1e9) for r in ok
            if r["relay_cpu"] is not None and r["rcv"]["bytes"]]
    return {
        "gbps": statistics.median(g), "min": min(g), "max": max(g),
        "cpu_gb": statistics.median(cpus) if cpus else None,
        "snd_util": statistics.median(r["snd"]["cpu"] / r["snd"]["secs"] for r in ok),
        "rcv_util": statistics.median(r["rcv"]["cpu"] / r["rcv"]["secs"] for r in ok),
        "relay_util": statistics.median(r["relay_cpu"] / r["rcv"]["secs"] for r in ok)
        if cpus else None,
        "gb": statistics.median(r["rcv"]["bytes"] / 1e9 for r in ok),
        "n": len(ok),
        "runs": len(runs),
    }


def report(names, results, integrity, failures, args, out=None):
    w = (out or sys.stdout).write  # (sys.stdout when called, not when imported)
    summ = {n: summarize(results[n]) for n in names}
    direct = summ.get("direct")
    pf = summ.get("portforward")
    head = ("relay", "GB/s med", "min-max", "x direct", "x portfwd", "CPU s/GB", "x pf CPU",
            "GB/run", "runs ok", "integrity")
    rows = []
    for n in names:
        s = summ[n]
        integ = integrity.get(n, "-")
        if s is None:
            rows.append((n, "FAILED", "-", "-", "-", "-", "-", "-",
                         "0/%d" % len(results[n]), integ))
            continue
        xd = s["gbps"] / direct["gbps"] if direct else None
        xp = s["gbps"] / pf["gbps"] if pf else None
        xc = (s["cpu_gb"] / pf["cpu_gb"]
              if pf and pf["cpu_gb"] and s["cpu_gb"] is not None else None)
        rows.append((n, fmt(s["gbps"]), "%.2f-%.2f" % (s["min"], s["max"]), fmt(xd),
                     fmt(xp), fmt(s["cpu_gb"], "%.3f"), fmt(xc), fmt(s["gb"], "%.1f"),
                     "%d/%d" % (s["n"], s["runs"]), integ))
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(widths[0]) if i == 0 else str(c).rjust(widths[i])
                               for i, c in enumerate(r))
    w("\n" + line(head) + "\n" + "  ".join("-" * x for x in widths) + "\n")
    for r in rows:
        w(line(r) + "\n")

    # Who was busy: the load processes must not be the limit.
    w("\nCPU use during the runs (median, fraction of one core): sender / receiver / relay\n")
    for n in names:
        s = summ[n]
        if s is not None:
            w("  %-12s %4.0f%% / %4.0f%% / %s\n" % (
                n, 100 * s["snd_util"], 100 * s["rcv_util"],
                "-" if s["relay_util"] is None else "%3.0f%%" % (100 * s["relay_util"])))

    relays_only = [summ[n]["gbps"] for n in names if n != "direct" and summ[n]]
    if direct and relays_only:
        best = max(relays_only)
        if direct["gbps"] < DIRECT_HEADROOM * best:
            w("\nWARNING: direct (%.2f GB/s) is below %.1fx the best relay (%.2f GB/s): the "
              "sender/receiver may be the bottleneck; relay ratios are understated.\n"
              % (direct["gbps"], DIRECT_HEADROOM, best))
        else:
            w("\ndirect is %.2fx the best relay: sender and receiver are not the bottleneck.\n"
              % (direct["gbps"] / best))
    elif not direct:
        w("\n(direct not measured: no check that the sender/receiver are not the bottleneck)\n")

    for n, why in failures:
        w("failure: %s: %s\n" % (n, why))

    w("\n")
    for n, (tmin, cmax) in TARGETS.items():
        if n not in names:
            continue
        s = summ[n]
        if s is None or not pf:
            w("%s: not measured (%s)\n" % (n, "no successful run" if s is None
                                            else "portforward not measured"))
            continue
        xp = s["gbps"] / pf["gbps"]
        xc = s["cpu_gb"] / pf["cpu_gb"] if pf["cpu_gb"] and s["cpu_gb"] is not None else None
        ok_t = xp >= tmin
        ok_c = xc is not None and xc <= cmax
        integ_ok = integrity.get(n) == "OK"
        w("%s: %.2fx portforward throughput, %sx CPU/GB  [target >= %.2fx: %s; CPU <= %.2fx: %s%s]\n"
          % (n, xp, fmt(xc), tmin, "PASS" if ok_t else "MISS", cmax,
             "PASS" if ok_c else "MISS", "" if integ_ok else "; integrity " + integrity.get(n, "?")))


# -- main ------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.tcp_throughput",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0, help="sending time per run (3)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved repetitions (3)")
    p.add_argument("--relays", default=None,
                   help="comma-separated, from: %s (default: %s, plus haproxy and socat "
                        "when on PATH)" % (", ".join(KNOWN_RELAYS), ",".join(DEFAULT_RELAYS)))
    p.add_argument("--integrity-mib", type=int, default=64,
                   help="size of the untimed integrity pass per relay, MiB (64; 0 skips)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every run")
    args = p.parse_args(argv)
    if args.relays is None:
        names = DEFAULT_RELAYS + [n for n in OPTIONAL_RELAYS if shutil.which(n)]
    else:
        names = [n.strip() for n in args.relays.split(",") if n.strip()]
        bad = [n for n in names if n not in KNOWN_RELAYS]
        if bad:
            p.error("unknown relay(s): %s" % ", ".join(bad))
    skipped = [n for n in names if n in OPTIONAL_RELAYS and not shutil.which(n)]
    names = [n for n in names if n not in skipped]
    return args, names, skipped


def main(argv=None):
    args, names, skipped = parse_args(argv)
    t_start = time.monotonic()
    out = sys.stdout
    out.write("tcp_throughput: %g s per run, %d interleaved repetitions, 1 MiB send/recv_into, "
              "%d CPUs, %s\n" % (args.seconds, args.repeat, os.cpu_count(), sys.version.split()[0]))
    if skipped:
        out.write("skipped (not on PATH): %s\n" % ", ".join(skipped))
    absent = [n for n in OPTIONAL_RELAYS if n not in names and n not in skipped]
    if absent:
        out.write("not run: %s (%s)\n" % (", ".join(absent),
                  "not on PATH" if all(not shutil.which(n) for n in absent) else "not requested"))
    out.flush()

    m = measure(names, args.seconds, args.repeat, args.integrity_mib, args.verbose, out)
    report(names, m["results"], m["integrity"], m["failures"], args, out)
    out.write("(total %.0f s)\n" % (time.monotonic() - t_start))
    bad = (any(m["integrity"].get(n) != "OK" for n in m["active"])
           if args.integrity_mib else False)
    return 1 if bad or m["failures"] else 0


def measure(names, seconds, repeat, integrity_mib=64, verbose=False, out=None):
    """
    Start the relays C{names}, run the integrity pass and C{repeat}
    interleaved timed runs; returns C{{results, integrity, failures, active}}
    (results: per relay, the L{run_once} dicts; failures: C{(relay, why)}).
    """
    out = out or sys.stdout
    workdir = tempfile.mkdtemp(prefix="splicing-bench-")
    receiver = None
    relays = {}
    failures = []
    results = {n: [] for n in names}
    integrity = {}
    try:
        receiver = Receiver(workdir)
        for n in names:
            r = Relay(n, workdir, receiver.port)
            try:
                r.start()
                relays[n] = r
            except BenchError as e:
                r.stop()
                failures.append((n, "did not start: %s" % e))
                integrity[n] = "-"
        active = [n for n in names if n in relays]
        out.write("relays run: %s\n" % ", ".join(active))
        out.flush()

        dead = set()
        # Untimed integrity pass (and warm-up).
        nbytes = integrity_mib << 20
        for n in active if nbytes else ():
            try:
                res = run_once(relays[n], receiver, nbytes=nbytes)
                good = (not res["error"] and res["rcv"]["bytes"] == nbytes
                        and res["snd"]["sent"] == nbytes
                        and res["rcv"]["crc"] == res["snd"]["crc"])
                integrity[n] = "OK" if good else "FAIL"
                if not good:
                    failures.append((n, "integrity: sent %d crc %s, received %d crc %s%s" % (
                        res["snd"]["sent"], res["snd"]["crc"], res["rcv"]["bytes"],
                        res["rcv"]["crc"], ", " + res["error"] if res["error"] else "")))
            except BenchError as e:
                integrity[n] = "FAIL"
                failures.append((n, "integrity: %s" % e))
                dead.add(n)  # stalled or died: timing it would only burn the time budget

        # Timed runs, round-robin.
        for rep in range(repeat):
            for n in active:
                if n in dead:
                    continue
                try:
                    res = run_once(relays[n], receiver, seconds=seconds)
                except BenchError as e:
                    failures.append((n, "run %d: %s" % (rep + 1, e)))
                    results[n].append({"error": str(e)})
                    dead.add(n)
                    if relays[n].proc is not None and relays[n].proc.poll() is not None:
                        failures.append((n, "relay died:\n" + relays[n].log_tail()))
                    continue
                if res["error"]:
                    failures.append((n, "run %d: %s" % (rep + 1, res["error"])))
                results[n].append(res)
                if verbose:
                    out.write("  run %d %-12s %6.2f GB/s  %6.2f GB  relay CPU %s s\n" % (
                        rep + 1, n, res["gbps"], res["rcv"]["bytes"] / 1e9,
                        fmt(res["relay_cpu"])))
                    out.flush()
        for n in active:
            if relays[n].proc is None or n in ("portforward", "haproxy", "socat") \
                    or n.startswith("proto-"):
                continue
            used, bad = relays[n].log_notes()
            if n != "copy":
                seen = sorted({b for pair in used for b in pair})
                want = {"splice": "kernel", "splice-mbuf": "mbuf"}.get(n, n)
                if seen != [want] and n != "auto":
                    failures.append((n, "backend actually used: %s (requested %s)"
                                     % (", ".join(map(str, seen)) or "none logged", n)))
                elif verbose:
                    out.write("  %s: backend used %s\n" % (n, ", ".join(seen)))
            if bad:
                failures.append((n, "%d suspicious relay log lines, e.g. %s"
                                 % (len(bad), " | ".join(bad[:3]))))
        return {"results": results, "integrity": integrity, "failures": failures,
                "active": active}
    finally:
        for r in relays.values():
            r.stop()
        if receiver is not None:
            kill(receiver.proc)
        shutil.rmtree(workdir, ignore_errors=True)


# -- the suite's scenario (python -m benchmarks) ---------------------------

SUITE_RELAYS = ["direct", "portforward", "splice", "splice-mbuf"]
SUITE_TARGET = 2.0  # the default path vs the port forwarder, one bulk session


def suite(ctx):
    """One bulk session per relay: GB/s and CPU per GB against the peers."""
    from benchmarks import charts
    from benchmarks.report import Spread, Table, Verdict, ratio
    from benchmarks.scenario import Chart, Outcome

    names = SUITE_RELAYS + ctx.peer_relays()
    seconds, repeat = ctx.pick(2.0, 0.5), ctx.pick(3, 1)
    ctx.log("tcp bulk: %s, %g s x %d" % (", ".join(names), seconds, repeat))
    m = measure(names, seconds, repeat, ctx.pick(64, 4), out=_Silent())
    table = Table(
        "tcp-bulk", "TCP bulk throughput, one session",
        "One TCP session per run: a sender process doing 1 MiB send()s for %g s through the relay "
        "to a receiver process doing 1 MiB recv_into; GB/s = 1e9 bytes counted by the receiver "
        "per second; relay CPU = utime+stime of the relay process per GB moved; %d interleaved "
        "repetitions (median, min-max); every relay first carried a CRC-32-checked %d MiB pass. "
        "`splice` is `twistd splice tcp` (default path: kernel), `splice-mbuf` the same with "
        "`--backend mbuf`; HAProxy runs with forced splicing and 1 MiB pipes."
        % (seconds, repeat, ctx.pick(64, 4)),
        [("relay", "relay", "%s"), ("gbps", "GB/s", "%.2f"), ("xpf", "x portforward", "%.2f"),
         ("cpu", "relay CPU s/GB", "%.3f"), ("util", "relay CPU (of a core)", "%.0f%%"),
         ("integrity", "integrity", "%s")])
    for n in names:
        ok = [r for r in m["results"][n] if "gbps" in r and not r.get("error")]
        table.rows.append({
            "relay": n,
            "gbps": Spread.of([r["gbps"] for r in ok]),
            "cpu": Spread.of([r["relay_cpu"] / (r["rcv"]["bytes"] / 1e9) for r in ok
                              if r["relay_cpu"] is not None and r["rcv"]["bytes"]]),
            "util": Spread.of([100 * r["relay_cpu"] / r["rcv"]["secs"] for r in ok
                               if r["relay_cpu"] is not None]),
            "integrity": m["integrity"].get(n, "-"),
        })
    pf = table.value("portforward", "gbps")
    for r in table.rows:
        r["xpf"] = ratio(r["gbps"], pf)
    sp = table.row("splice")
    table.verdicts.append(Verdict("TCP bulk: splice vs port forwarder", ratio(sp["gbps"], pf),
                                  SUITE_TARGET))
    table.verdicts.append(Verdict("TCP bulk: splice CPU/GB vs port forwarder", ratio(
        sp["cpu"], table.value("portforward", "cpu")), 1.0, higher=False))
    if table.row("haproxy"):
        table.verdicts.append(Verdict("TCP bulk: splice vs HAProxy (forced splice, 1 MiB pipes)",
                                      ratio(sp["gbps"], table.value("haproxy", "gbps")), 1.0))
        table.verdicts.append(Verdict("TCP bulk: splice CPU/GB vs HAProxy", ratio(
            sp["cpu"], table.value("haproxy", "cpu")), 1.0, higher=False))
    direct, best = table.value("direct", "gbps"), max(
        (r["gbps"].median for r in table.rows if r["relay"] != "direct" and r["gbps"]), default=0)
    if direct and best:
        table.notes.append("The direct connection reached %.2fx the best relay: %s." % (
            direct.median / best, "the load was not the limit" if direct.median >= DIRECT_HEADROOM * best
            else "the load processes may have limited the relays"))
    failures = ["tcp bulk: %s: %s" % f for f in m["failures"]]
    items = [(r["relay"], r["gbps"]) for r in table.rows]
    chart = Chart("tcp_bulk.png", "TCP bulk throughput, one session", lambda path: charts.bars(
        path, "TCP bulk, one session (median, whiskers min-max of %d runs)" % repeat, "GB/s", items))
    return Outcome([table], [chart], failures)


class _Silent:
    """An output stream for measure() when the suite prints its own progress."""

    def write(self, s):
        pass

    def flush(self):
        pass


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
