"""
HTTP body throughput through the HTTP-filtering proxy, against references.

    python -m benchmarks.http_throughput [--size-mib 1024] [--repeat 2] [--small-seconds 3]
                                         [--chunk-kib 1024] [--small-only] [--baseline TREE]
                                         [--relays direct,http-proxy,tcp-relay,reverse-proxy]

A raw-socket origin process (L{benchmarks._httpload}) serves a body from a
preallocated 1 MiB buffer, with Content-Length or as 1 MiB chunks (or
C{--chunk-kib} chunks, to see the cost per chunk), and counts uploads; a
raw-socket client process downloads (C{recv_into}, counting) or uploads one
body per run.  Paths compared, each relay in its own process:

  - C{direct}: no relay (the load's own ceiling);
  - C{http-proxy}: L{splicing.http.proxy.HTTPProxyFactory} (heads parsed,
    bodies spliced);
  - C{tcp-relay}: the project's plain TCP relay (C{benchmarks.splice_relay
    --backend auto});
  - C{reverse-proxy}: C{twisted.web.proxy.ReverseProxyResource} in a Site;
  - C{haproxy-http}: HAProxy in HTTP mode (keep-alive, forced splicing, 1 MiB
    pipes), when installed;
  - C{http-proxy-baseline} (with C{--baseline TREE}): the HTTP proxy of
    another checkout of the project (e.g. C{git worktree add /tmp/main main}),
    for a before/after comparison in one run;
  - C{NAME#2} (e.g. C{tcp-relay#2}): a second, identical relay, whose ratio to
    the first is the scatter of the run itself.

Runs are interleaved round-robin, N times; the table gives the median GB/s
(1e9 bytes / client wall time) and the ratios the targets are about:
http-proxy >= 1.8x reverse-proxy and >= 0.9x tcp-relay for Content-Length
and chunked bodies, both directions; and small keep-alive requests (1 KiB
bodies, sequential on one connection) not slower than the reverse proxy.
"""

import argparse
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benchmarks._httpload import CHUNK  # bytes per chunk of the chunked cases unless --chunk-kib says otherwise
from benchmarks.tcp_throughput import (
    PY, ROOT, BenchError, _env, fmt, free_port, haproxy_command, kill, proc_cpu, wait_listening,
)

RELAYS = ["direct", "http-proxy", "tcp-relay", "reverse-proxy"]
CASES = [("dl", False), ("dl", True), ("ul", False), ("ul", True)]
THROUGHPUT_VS_REVERSE = 1.8
THROUGHPUT_VS_TCP = 0.9
SMALL_VS_TCP = 0.8  # small keep-alive requests: the proxy against the TCP relay carrying the same requests
# twisted.web.proxy cannot relay a chunked upload: ReverseProxyResource reads
# the de-chunked body but forwards the "Transfer-Encoding: chunked" field with
# it, so the origin waits for chunk framing that never comes.
UNSUPPORTED = {("reverse-proxy", ("ul", True))}


def relayKind(name):
    """C{"tcp-relay#2"} (a second, identical relay: the run's own scatter) -> C{"tcp-relay"}."""
    return name.partition("#")[0]


def unsupported(name, case):
    return (relayKind(name), case) in UNSUPPORTED


def case_name(case, chunk=CHUNK):
    what, chunked = case
    size = "%dMiB" % (chunk >> 20) if not chunk % (1 << 20) else "%dKiB" % (chunk >> 10)
    return "%s %s" % ("download" if what == "dl" else "upload", "chunked " + size if chunked else "Content-Length")


class Origin:
    def __init__(self, workdir):
        self.proc = subprocess.Popen(
            [PY, "-m", "benchmarks._httpload", "origin"], cwd=ROOT, env=_env(),
            stdout=subprocess.PIPE, stderr=open(os.path.join(workdir, "origin.log"), "wb"),
            start_new_session=True, text=True)
        q = queue.Queue()
        threading.Thread(target=lambda: q.put(self.proc.stdout.readline()), daemon=True).start()
        try:
            line = q.get(timeout=15)
        except queue.Empty:
            raise BenchError("origin did not start")
        if not line.startswith("PORT "):
            raise BenchError("origin did not start: %r" % line)
        self.port = int(line.split()[1])


class Relay:
    #: the checkout an C{http-proxy-baseline} runs from (C{--baseline})
    baseline = None

    def __init__(self, name, workdir, dest):
        self.name, self.workdir, self.dest = name, workdir, dest
        self.proc, self.port = None, None
        self.log = os.path.join(workdir, name + ".log")

    def command(self, port):
        d = str(self.dest)
        kind = relayKind(self.name)
        if kind in ("http-proxy", "http-proxy-baseline"):
            return [PY, "-m", "benchmarks._httpload", "proxy", "--listen", str(port), "--connect", d]
        if kind == "reverse-proxy":
            return [PY, "-m", "benchmarks._httpload", "reverseproxy", "--listen", str(port), "--connect", d]
        if kind == "haproxy-http":
            return haproxy_command(self.workdir, port, d, "http")
        if kind == "tcp-relay":
            return [PY, "-m", "benchmarks.splice_relay", "--listen", str(port), "--connect", d,
                    "--backend", "auto"]
        raise BenchError("unknown relay %r" % self.name)

    def start(self):
        if self.name == "direct":
            self.port = self.dest
            return
        port = free_port()
        env = _env()
        if relayKind(self.name) == "http-proxy-baseline":
            if not self.baseline:
                raise BenchError("http-proxy-baseline needs --baseline TREE")
            env["PYTHONPATH"] = os.path.abspath(self.baseline)
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(self.command(port), cwd=self.workdir, env=env,
                                         stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        wait_listening(port, self.proc, time.monotonic() + 15, self.name)
        self.port = port

    def cpu(self):
        return proc_cpu(self.proc.pid) if self.proc is not None else None

    def tail(self, n=8):
        try:
            with open(self.log, errors="replace") as f:
                return "\n".join("    | " + l for l in f.read().splitlines()[-n:])
        except OSError:
            return ""


def run_client(relay, what, nbytes=0, chunked=False, seconds=0.0, timeout=120, chunk=CHUNK):
    cmd = [PY, "-m", "benchmarks._httpload", "client", what, "--port", str(relay.port),
           "--bytes", str(nbytes), "--seconds", str(seconds)] + (
               ["--chunked", "--chunk-size", str(chunk)] if chunked else [])
    if relay.proc is not None and relay.proc.poll() is not None:
        raise BenchError("%s has exited (%s)\n%s" % (relay.name, relay.proc.returncode, relay.tail()))
    cpu0 = relay.cpu()
    p = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError("client timed out through %s" % relay.name)
    finally:
        kill(p)
    try:
        res = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError("client failed through %s: %s" % (relay.name, err.strip()[-300:]))
    cpu1 = relay.cpu()
    res["relay_cpu"] = None if cpu0 is None else cpu1 - cpu0
    if not res["error"] and what != "small" and res["bytes"] != nbytes:
        res["error"] = "moved %d of %d bytes" % (res["bytes"], nbytes)
    return res


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.http_throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=1024, help="body size per run, MiB (1024)")
    p.add_argument("--repeat", type=int, default=2, help="interleaved repetitions (2)")
    p.add_argument("--small-seconds", type=float, default=3.0, help="seconds of small requests per run (3)")
    p.add_argument("--chunk-kib", type=int, default=CHUNK >> 10, help="KiB per chunk, 1 to 1024 (1024)")
    p.add_argument("--relays", default=",".join(RELAYS))
    p.add_argument("--small-only", action="store_true",
                   help="only the small keep-alive requests (no bodies, no warm-up with them)")
    p.add_argument("--baseline", metavar="TREE",
                   help="another checkout whose HTTP proxy runs as http-proxy-baseline (added to --relays)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if not 0 < args.chunk_kib <= CHUNK >> 10:
        p.error("--chunk-kib must be from 1 to %d, not %d" % (CHUNK >> 10, args.chunk_kib))
    names = [n.strip() for n in args.relays.split(",") if n.strip()]
    if not args.baseline and any(relayKind(n) == "http-proxy-baseline" for n in names):
        p.error("--relays http-proxy-baseline needs --baseline TREE (the checkout whose proxy it runs)")
    if args.baseline and not os.path.isdir(os.path.join(args.baseline, "splicing")):
        p.error("--baseline %s: not a checkout of this project (no splicing/ folder in it)" % args.baseline)
    if args.baseline:
        Relay.baseline = args.baseline
        if "http-proxy-baseline" not in names:
            names.insert(names.index("http-proxy") + 1 if "http-proxy" in names else 0, "http-proxy-baseline")
    nbytes = args.size_mib << 20
    t_start = time.monotonic()
    w = sys.stdout.write
    w("http_throughput: %s, %d interleaved repetitions, %d CPUs, Python %s\n"
      % ("small requests only, %g s per run" % args.small_seconds if args.small_only else "%d MiB bodies" % args.size_mib,
         args.repeat, os.cpu_count(), sys.version.split()[0]))
    sys.stdout.flush()
    results, failures = measure(names, nbytes, args.repeat, args.small_seconds, args.verbose, args.chunk_kib << 10,
                                bodies=not args.small_only)
    report(names, results, failures, args)
    w("(total %.0f s)\n" % (time.monotonic() - t_start))
    return 1 if failures else 0


def measure(names, nbytes, repeat, small_seconds, verbose=False, chunk=CHUNK, bodies=True):
    """
    Start the relays, warm each up with every case, then C{repeat}
    interleaved rounds; returns ({(relay, case): [client results]}, failures).
    Without C{bodies}, only the small requests.
    """
    w = sys.stdout.write
    workdir = tempfile.mkdtemp(prefix="splicing-httpbench-")
    origin, relays, failures = None, {}, []
    results = {(n, c): [] for n in names for c in CASES + [("small", False)]}
    try:
        origin = Origin(workdir)
        for n in names:
            r = Relay(n, workdir, origin.port)
            try:
                r.start()
                relays[n] = r
            except BenchError as e:
                kill(r.proc)
                failures.append("%s did not start: %s" % (n, e))
        # warm-up and sanity: one small body both ways through each
        for n in list(relays) if bodies else []:
            try:
                for what, chunked in CASES:
                    if unsupported(n, (what, chunked)):
                        continue
                    res = run_client(relays[n], what, 3 * (1 << 20) + 5, chunked, timeout=30, chunk=chunk)
                    if res["error"]:
                        raise BenchError("%s: %s" % (case_name((what, chunked), chunk), res["error"]))
            except BenchError as e:
                failures.append("%s warm-up failed: %s" % (n, e))
        for rep in range(repeat):
            for case in (CASES if bodies else []) + [("small", False)]:
                for n in relays:
                    what, chunked = case
                    if unsupported(n, case):
                        continue
                    try:
                        res = run_client(relays[n], what, nbytes, chunked, small_seconds, chunk=chunk)
                    except BenchError as e:
                        res = {"error": str(e)}
                    if res.get("error"):
                        failures.append("%s, %s, run %d: %s" % (n, case_name(case, chunk) if what != "small"
                                                                else "small", rep + 1, res["error"]))
                    results[(n, case)].append(res)
                    if verbose and not res.get("error"):
                        w("  run %d %-14s %-28s %s\n" % (rep + 1, n, case_name(case, chunk) if what != "small" else "small",
                                                        "%.2f GB/s" % (res["bytes"] / res["secs"] / 1e9)
                                                        if what != "small" else "%.0f req/s"
                                                        % (res["requests"] / res["secs"])))
                        sys.stdout.flush()
        return results, failures
    finally:
        for r in relays.values():
            kill(r.proc)
        if origin is not None:
            kill(origin.proc)
        shutil.rmtree(workdir, ignore_errors=True)


def _median(runs, key):
    ok = [r for r in runs if not r.get("error") and r.get("secs")]
    return statistics.median(key(r) for r in ok) if ok else None


def report(names, results, failures, args, out=None):
    w = (out or sys.stdout).write  # (sys.stdout when called: a default bound at import would outlive a redirection)
    chunk = args.chunk_kib << 10
    gbps = lambda r: r["bytes"] / r["secs"] / 1e9
    cpu = lambda r: (r["relay_cpu"] / (r["bytes"] / 1e9)) if r.get("relay_cpu") is not None else float("nan")
    small_only = getattr(args, "small_only", False)
    if not small_only:
        w("\n%-30s" % "GB/s (median)" + "".join("%15s" % n for n in names) + "   proxy/revproxy  proxy/tcp-relay\n")
    verdicts = []
    for case in [] if small_only else CASES:
        med = {n: _median(results[(n, case)], gbps) for n in names}
        xr = med["http-proxy"] / med["reverse-proxy"] if med.get("http-proxy") and med.get("reverse-proxy") else None
        xt = med["http-proxy"] / med["tcp-relay"] if med.get("http-proxy") and med.get("tcp-relay") else None
        w("%-30s" % case_name(case, chunk) + "".join("%15s" % fmt(med[n]) for n in names)
          + "%17s%17s\n" % (fmt(xr), fmt(xt)))
        verdicts.append((case, xr, xt))
    if not small_only:
        w("\n%-30s" % "relay CPU s/GB (median)" + "".join("%15s" % n for n in names) + "\n")
    for case in [] if small_only else CASES:
        w("%-30s" % case_name(case, chunk) + "".join(
            "%15s" % fmt(_median(results[(n, case)], cpu), "%.3f") for n in names) + "\n")
    rps = {n: _median(results[(n, ("small", False))], lambda r: r["requests"] / r["secs"]) for n in names}
    perRequest = {n: _median([r for r in results[(n, ("small", False))] if r.get("relay_cpu") is not None],
                             lambda r: 1e6 * r["relay_cpu"] / r["requests"]) for n in names}
    if small_only:
        w("\n%-30s" % "" + "".join("%15s" % n[:14] for n in names))
    w("\n%-30s" % "small keep-alive req/s" + "".join("%15s" % fmt(rps[n], "%.0f") for n in names) + "\n")
    w("%-30s" % "  relay CPU us/request" + "".join("%15s" % fmt(perRequest[n], "%.1f") for n in names) + "\n")
    for n in names:
        if relayKind(n) == "http-proxy-baseline" and rps.get(n) and rps.get("http-proxy"):
            w("%-30s %.2fx the requests/s, %s the CPU per request\n" % (
                "  http-proxy / " + n, rps["http-proxy"] / rps[n],
                fmt(perRequest["http-proxy"] / perRequest[n] if perRequest.get(n) and perRequest.get("http-proxy")
                    else None, "%.2fx")))
    w("\nTargets (http-proxy%s):\n" % ("" if chunk == CHUNK else "; the issue sets them for 1 MiB chunks"))
    for case, xr, xt in verdicts:
        w("  %-28s vs reverse-proxy %sx (>= %.1fx: %s)   vs tcp-relay %sx (>= %.2fx: %s)\n" % (
            case_name(case, chunk), fmt(xr), THROUGHPUT_VS_REVERSE,
            "-" if xr is None else ("PASS" if xr >= THROUGHPUT_VS_REVERSE else "MISS"),
            fmt(xt), THROUGHPUT_VS_TCP, "-" if xt is None else ("PASS" if xt >= THROUGHPUT_VS_TCP else "MISS")))
    if rps.get("http-proxy") and rps.get("reverse-proxy"):
        x = rps["http-proxy"] / rps["reverse-proxy"]
        w("  %-28s %.0f vs %.0f req/s = %.2fx (>= 1.0x: %s)\n" % (
            "small keep-alive requests", rps["http-proxy"], rps["reverse-proxy"], x, "PASS" if x >= 1 else "MISS"))
    if rps.get("http-proxy") and rps.get("tcp-relay"):
        x = rps["http-proxy"] / rps["tcp-relay"]
        w("  %-28s %.0f vs %.0f req/s through the TCP relay = %.2fx (>= %.1fx: %s)\n" % (
            "small keep-alive requests", rps["http-proxy"], rps["tcp-relay"], x, SMALL_VS_TCP,
            "PASS" if x >= SMALL_VS_TCP else "MISS"))
    for n in names:
        first = relayKind(n)
        if first != n and first in names:
            meds = [(_median(results[(n, c)], gbps), _median(results[(first, c)], gbps)) for c in CASES]
            w("  %-28s %s (the run's own scatter: identical relays)\n" % (
                "%s / %s" % (n, first), "  ".join(fmt(a / b if a and b else None) for a, b in meds)))
    d = [_median(results[("direct", c)], gbps) for c in CASES] if "direct" in names else []
    best = [max((_median(results[(n, c)], gbps) or 0) for n in names if n != "direct") for c in CASES]
    if d and all(d):
        ratio = min(a / b for a, b in zip(d, best) if b)
        w("\ndirect / best relay >= %.2fx%s\n" % (ratio, "" if ratio >= 1.5 else
                                                   "  (WARNING: the load may be the bottleneck; "
                                                   "%d CPUs for client, relay and origin)" % os.cpu_count()))
    for n, case in sorted(UNSUPPORTED):
        if n in names:
            w("not run: %s, %s (ReverseProxyResource forwards Transfer-Encoding: chunked with the "
              "de-chunked body: the upload never completes)\n" % (n, case_name(case, chunk)))
    for f in failures:
        w("failure: %s\n" % f)


def suite(ctx):
    """Body throughput both ways and small keep-alive requests, against the peers."""
    from benchmarks import charts
    from benchmarks.report import Spread, Table, Verdict, ratio
    from benchmarks.scenario import Chart, Outcome

    names = RELAYS + (["haproxy-http"] if "haproxy" in ctx.peer_relays() else [])
    size_mib, repeat, small = ctx.pick(256, 16), ctx.pick(2, 1), ctx.pick(2.0, 0.5)
    ctx.log("http: %s, %d MiB bodies, %g s of small requests, x %d" % (
        ", ".join(names), size_mib, small, repeat))
    results, failures = measure(names, size_mib << 20, repeat, small)
    ok = lambda runs: [r for r in runs if not r.get("error") and r.get("secs")]
    gbps = {k: Spread.of([r["bytes"] / r["secs"] / 1e9 for r in ok(v)]) for k, v in results.items()}
    cpu = {k: Spread.of([r["relay_cpu"] / (r["bytes"] / 1e9) for r in ok(v)
                         if r.get("relay_cpu") is not None and r["bytes"]]) for k, v in results.items()}
    body = Table(
        "http-bodies", "HTTP bodies through the HTTP proxy",
        "One request per run with a %d MiB body, Content-Length or 1 MiB chunks, downloaded "
        "(client recv_into) or uploaded (origin counts); GB/s = body bytes / client wall time; "
        "relay CPU s/GB of the relay process; `http-proxy` is splicing's HTTP-filtering proxy, "
        "`tcp-relay` splicing's plain TCP relay (no HTTP parsing: the ceiling the proxy "
        "aims at), `reverse-proxy` twisted.web's ReverseProxyResource; %d interleaved runs, "
        "median (min-max)." % (size_mib, repeat),
        [("relay", "relay", "%s"), ("case", "body", "%s"), ("gbps", "GB/s", "%.2f"),
         ("cpu", "relay CPU s/GB", "%.3f")])
    for case in CASES:
        for n in names:
            if unsupported(n, case):
                continue
            body.rows.append({"relay": n, "case": case_name(case), "gbps": gbps[(n, case)],
                              "cpu": cpu[(n, case)]})
        px = gbps[("http-proxy", case)]
        if ("reverse-proxy", case) not in UNSUPPORTED:
            body.verdicts.append(Verdict("HTTP %s: proxy vs reverse proxy" % case_name(case),
                                         ratio(px, gbps.get(("reverse-proxy", case))),
                                         THROUGHPUT_VS_REVERSE))
        body.verdicts.append(Verdict("HTTP %s: proxy vs TCP relay" % case_name(case),
                                     ratio(px, gbps[("tcp-relay", case)]), THROUGHPUT_VS_TCP))
    body.notes.append("twisted.web's reverse proxy cannot relay a chunked upload (it forwards "
                      "Transfer-Encoding: chunked with the de-chunked body), so it has no row there.")
    key = ("small", False)
    rps = {n: Spread.of([r["requests"] / r["secs"] for r in ok(results[(n, key)])]) for n in names}
    small_t = Table(
        "http-small", "HTTP small keep-alive requests",
        "Requests/s on one keep-alive connection, one request at a time (GET, 1 KiB response "
        "body), %g s per run; %d interleaved runs, median (min-max)." % (small, repeat),
        [("relay", "relay", "%s"), ("rps", "requests/s", "%.0f"), ("cpu", "relay CPU µs/request", "%.0f"),
         ("xtcp", "x tcp-relay", "%.2f"), ("xrev", "x reverse proxy", "%.2f"), ("xha", "x haproxy-http", "%.2f")])
    cpuPer = {n: Spread.of([1e6 * r["relay_cpu"] / r["requests"] for r in ok(results[(n, key)])
                            if r.get("relay_cpu") is not None and r["requests"]]) for n in names}
    for n in names:
        small_t.rows.append({"relay": n, "rps": rps[n], "cpu": cpuPer[n], "xtcp": ratio(rps[n], rps.get("tcp-relay")),
                             "xrev": ratio(rps[n], rps.get("reverse-proxy")),
                             "xha": ratio(rps[n], rps.get("haproxy-http"))})
    small_t.verdicts.append(Verdict("HTTP small requests: proxy vs the TCP relay carrying the same requests",
                                    ratio(rps["http-proxy"], rps.get("tcp-relay")), SMALL_VS_TCP))
    small_t.verdicts.append(Verdict("HTTP small requests: proxy vs reverse proxy",
                                    ratio(rps["http-proxy"], rps.get("reverse-proxy")), 1.0))
    if "haproxy-http" in names:
        small_t.verdicts.append(Verdict("HTTP small requests: proxy vs HAProxy (HTTP mode)",
                                        ratio(rps["http-proxy"], rps.get("haproxy-http")), 1.0))
    series = {n: [gbps.get((n, c)) if (n, c) not in UNSUPPORTED else None for c in CASES]
              for n in names}
    chart = Chart("http.png", "HTTP body throughput", lambda path: charts.grouped(
        path, "HTTP bodies, %d MiB per request (median, whiskers min-max)" % size_mib, "GB/s",
        [case_name(c).replace(" Content", "\nContent").replace(" chunked", "\nchunked")
         for c in CASES], series))
    return Outcome([body, small_t], [chart], ["http: %s" % f for f in failures])


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
