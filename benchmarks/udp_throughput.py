"""
UDP datagrams per second and loss through a relay, 64-byte and 1400-byte
datagrams.

    python -m benchmarks.udp_throughput [--seconds S] [--repeat N] [--rates R1,R2]

One receiver process counts datagrams with C{recvmmsg}; for every run a
sender process sends on a connected socket with C{sendmmsg} batches of 64
for S seconds, unpaced ("max") or paced to a rate (both in
L{benchmarks._udpload}).  Relays, each its own process: C{direct} (no
relay: shows what the sender and receiver reach, i.e. that the sender is
not the bottleneck), C{twisted} (a plain C{DatagramProtocol} relay, the
backend side a connected port) and C{splice} (L{splicing.relay.udp.UDPRelayService}).
Both relays get the same 4 MiB socket buffers.  Runs are interleaved over
the relays; unpaced runs are repeated N times and the median is reported.

Reported per run: datagrams/s offered (sent) and forwarded (received),
loss, and the relay's CPU use.  Then the ratios: splice vs twisted
forwarded datagrams/s at the unpaced rate, and loss side by side at every
offered rate.  Only 127.0.0.1 is used; every process is killed on exit.
"""

import argparse
import json
import queue
import socket
import statistics
import subprocess
import threading
import time

from benchmarks.procs import PY, ROOT, BenchError, _env, free_port, kill, proc_cpu

RELAYS = ("direct", "twisted", "splice")
SIZES = (64, 1400)
TARGET = 2.0  # splice vs twisted, forwarded datagrams/s
CLIENTS = 1000  # the many-sessions run: client sockets at once
CLIENTS_SIZE = 512
QUERY_TARGET = 2.0  # a query from a new port adds at most this many times what one on a running session adds


def _spawn(args, **kw):
    return subprocess.Popen(
        [PY, "-m", "benchmarks._udpload"] + args, cwd=ROOT, env=_env(),
        start_new_session=True, text=True, **kw,
    )


class Receiver:
    def __init__(self):
        self.proc = _spawn(["recv"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        line = self._next(15)
        if not line.startswith("PORT "):
            raise BenchError("receiver said %r" % line)
        self.port = int(line.split()[1])

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def _next(self, timeout):
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise BenchError("the receiver did not answer") from None

    def command(self, cmd):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return json.loads(self._next(10))


class Relay:
    def __init__(self, name, backendPort):
        self.name = name
        self.proc = None
        self.port = backendPort
        if name == "direct":
            return
        self.port = free_port(socket.SOCK_DGRAM)
        self.proc = _spawn(
            ["%s-relay" % name, "--listen", str(self.port), "--connect", str(backendPort)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        self.lines = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(l) for l in self.proc.stdout],
                         daemon=True).start()
        deadline = time.monotonic() + 15
        while True:
            try:
                if self.lines.get(timeout=max(0.1, deadline - time.monotonic())).startswith("READY"):
                    return
            except queue.Empty:
                raise BenchError("relay %s did not start" % name) from None

    def cpu(self):
        return proc_cpu(self.proc.pid) if self.proc is not None else None

    def counters(self):
        """The relay's own counters (sessions, ...); {} for direct and the Twisted relay."""
        if self.proc is None:
            return {}
        self.proc.stdin.write("counters\n")
        self.proc.stdin.flush()
        try:
            return json.loads(self.lines.get(timeout=10))
        except queue.Empty:
            raise BenchError("relay %s did not report its counters" % self.name) from None


def run(receiver, relay, size, seconds, rate, clients=1):
    receiver.command("reset")
    cpu0 = relay.cpu()
    args = ["send", "--port", str(relay.port), "--size", str(size), "--seconds", str(seconds),
            "--clients", str(clients)]
    if rate:
        args += ["--rate", str(rate)]
    sender = _spawn(args, stdout=subprocess.PIPE)
    try:
        out, _ = sender.communicate(timeout=seconds + 15)
    finally:
        kill(sender)
    sent = json.loads(out.strip().splitlines()[-1])
    # What is in flight arrives: wait until the count stops growing (a relay with a
    # backlog in 1,000 sessions' buffers keeps forwarding after the sender stopped;
    # counted late, it would land in the next relay's run).
    got, deadline = receiver.command("report"), time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.3)
        again = receiver.command("report")
        if again["datagrams"] == got["datagrams"]:
            break
        got = again
    cpu = relay.cpu()
    return {
        "relay": relay.name, "size": size, "rate": rate, "clients": clients,
        "sent": sent["sent"], "received": got["datagrams"], "seconds": sent["seconds"],
        "offered_pps": sent["sent"] / sent["seconds"],
        "pps": got["datagrams"] / sent["seconds"],
        "loss": 1.0 - got["datagrams"] / sent["sent"] if sent["sent"] else 0.0,
        "cpu": None if cpu is None else (cpu - cpu0) / sent["seconds"],
        "bytes_ok": got["bytes"] == got["datagrams"] * size,
    }


def queries(count, repeat, log=lambda result: None):
    """
    DNS-like queries (40 bytes, one at a time, each waiting for its answer)
    to an echo responder, directly and through each relay: from a fresh
    client port per query (a new relay session each, as resolvers send
    them) and all from one socket (one running session); C{repeat}
    interleaved rounds.  Returns {(relay, fresh): [query results]} (median,
    p90, mean in microseconds; see L{benchmarks._udpload.query}).
    """
    procs, out = [], {}
    try:
        echo = _spawn(["echo"], stdout=subprocess.PIPE)
        procs.append(echo)
        line = echo.stdout.readline()
        if not line.startswith("PORT "):
            raise BenchError("the echo responder said %r" % line)
        port = int(line.split()[1])
        relays = [Relay(name, port) for name in RELAYS]
        procs += [r.proc for r in relays]
        for _ in range(repeat):
            for fresh in (True, False):
                for relay in relays:
                    q = _spawn(["query", "--port", str(relay.port), "--count", str(count)]
                               + (["--fresh"] if fresh else []), stdout=subprocess.PIPE)
                    try:
                        res, _ = q.communicate(timeout=count * 0.05 + 20)
                    finally:
                        kill(q)
                    r = json.loads(res.strip().splitlines()[-1])
                    r["relay"] = relay.name
                    out.setdefault((relay.name, fresh), []).append(r)
                    log(r)
    finally:
        for p in procs:
            kill(p)
    return out


def queryTable(results, count, repeat):
    """The report's table of DNS-like queries, and its verdict (see L{queries})."""
    from benchmarks.report import Spread, Table, Verdict

    table = Table(
        "udp-queries", "UDP: DNS-like queries from a new port and on a running session",
        "%d queries of 40 bytes, one at a time, to an echo responder, each from a fresh client "
        "port (`new port`: a new relay session per query, as resolvers send them) or all from one "
        "socket (`running`: one session); median round trip in microseconds; `added`: the median "
        "minus the direct one; %d interleaved rounds, median (min-max) of the rounds' medians."
        % (count, repeat),
        [("relay", "relay", "%s"), ("fresh", "new port µs", "%.0f"), ("same", "running µs", "%.0f"),
         ("afresh", "added, new port", "%.0f"), ("asame", "added, running", "%.0f"),
         ("x", "new port / running (added)", "%.2f")])
    med = {k: Spread.of([r["median"] for r in v if r.get("median") is not None]) for k, v in results.items()}
    direct = {fresh: med.get(("direct", fresh)) for fresh in (True, False)}
    verdicts = {}
    for name in RELAYS:
        fresh, same = med.get((name, True)), med.get((name, False))
        row = {"relay": name, "fresh": fresh, "same": same}
        if name != "direct" and fresh and same and direct[True] and direct[False]:
            added = fresh.median - direct[True].median, same.median - direct[False].median
            row.update(afresh=added[0], asame=added[1], x=added[0] / added[1] if added[1] > 0 else None)
            verdicts[name] = row["x"]
        table.rows.append(row)
    table.verdicts.append(Verdict("UDP query from a new port: added latency vs a running session's",
                                  verdicts.get("splice"), QUERY_TARGET, higher=False))
    lost = sum(r["lost"] for v in results.values() for r in v)
    if lost:
        table.notes.append("%d queries got no answer within 1 s." % lost)
    return table


def median(results, key):
    return statistics.median(r[key] for r in results)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="benchmarks.udp_throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="per run (default 1.5)")
    parser.add_argument("--repeat", type=int, default=3, help="unpaced runs per relay and size (default 3)")
    parser.add_argument("--rates", default="100000,200000",
                        help="paced offered rates, datagrams/s, comma-separated (default 100000,200000)")
    parser.add_argument("--json", action="store_true", help="also print every run as a JSON line")
    parser.add_argument("--queries", type=int, default=0,
                        help="only DNS-like queries: this many per run, new port and running session")
    parser.add_argument("--clients", type=int, default=0,
                        help="also run with this many client sockets at once (%d B datagrams)"
                             % CLIENTS_SIZE)
    args = parser.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",") if r]
    started = time.monotonic()
    if args.queries:
        from benchmarks.report import markdown_report

        table = queryTable(queries(args.queries, args.repeat), args.queries, args.repeat)
        print(markdown_report([], [table], [], [], []))
        print("(%.0f s in all)" % (time.monotonic() - started))
        return
    results, counters = measure(args.seconds, args.repeat, rates, args.clients,
                                log=lambda r: args.json and print(json.dumps(r), flush=True))
    report(results, rates)
    if args.clients:
        by = {}
        for r in results:
            if r["clients"] == args.clients:
                by.setdefault(r["relay"], []).append(r)
        print("\n%d clients at once, %d B, unpaced:" % (args.clients, CLIENTS_SIZE))
        for name, rs in by.items():
            print("  %-8s fwd %8.1f kpps, loss %5.1f%%" % (
                name, median(rs, "pps") / 1e3, 100 * median(rs, "loss")))
        print("  splice relay counters: %s" % json.dumps(counters))
    print("\n(%.0f s in all)" % (time.monotonic() - started))


def measure(seconds, repeat, rates, clients=0, log=lambda result: None):
    """
    Every run, interleaved over the relays: C{repeat} unpaced runs and one
    per paced rate for each size; then, with C{clients}, C{repeat} unpaced
    runs from that many client sockets at once.  Returns (run dicts, the
    splice relay's counters after the many-clients runs).
    """
    procs = []
    results = []
    counters = {}
    try:
        receiver = Receiver()
        procs.append(receiver.proc)
        relays = [Relay(name, receiver.port) for name in RELAYS]
        procs += [r.proc for r in relays]
        plans = [(size, rate, 1) for size in SIZES for rate in [0] * repeat + rates]
        plans += [(CLIENTS_SIZE, 0, clients)] * (repeat if clients else 0)
        for size, rate, n in plans:
            for relay in relays:  # interleaved: drift hits every relay alike
                r = run(receiver, relay, size, seconds, rate, n)
                results.append(r)
                log(r)
        if clients:
            counters = relays[-1].counters()
    finally:
        for p in procs:
            kill(p)
    return results, counters


def report(results, rates):
    print("\n%-5s %-9s %-8s %12s %12s %8s %9s" % ("size", "offered", "relay", "sent kpps", "fwd kpps", "loss", "relay CPU"))
    by = {}
    for r in results:
        by.setdefault((r["size"], r["rate"], r["relay"]), []).append(r)
    for size in SIZES:
        for rate in [0] + rates:
            for name in RELAYS:
                rs = by.get((size, rate, name))
                if not rs:
                    continue
                cpu = [r["cpu"] for r in rs if r["cpu"] is not None]
                print("%-5d %-9s %-8s %12.1f %12.1f %7.1f%% %9s" % (
                    size, "max" if not rate else "%dk" % (rate // 1000), name,
                    median(rs, "offered_pps") / 1e3, median(rs, "pps") / 1e3, 100 * median(rs, "loss"),
                    "%.0f%%" % (100 * statistics.median(cpu)) if cpu else "-"))
    print("\nratios (medians):")
    for size in SIZES:
        direct = by.get((size, 0, "direct"))
        tw, sp = by.get((size, 0, "twisted")), by.get((size, 0, "splice"))
        if not (tw and sp):
            continue
        ratio = median(sp, "pps") / median(tw, "pps")
        line = "  %4d B: splice %.1f kpps vs twisted %.1f kpps = %.2fx (target %.1fx: %s)" % (
            size, median(sp, "pps") / 1e3, median(tw, "pps") / 1e3, ratio, TARGET,
            "met" if ratio >= TARGET else "missed by %.0f%%" % (100 * (1 - ratio / TARGET)))
        if direct:
            line += "; direct %.1f kpps (splice at %.0f%% of it)" % (
                median(direct, "pps") / 1e3, 100 * median(sp, "pps") / median(direct, "pps"))
        print(line)
        for rate in [0] + rates:
            tw, sp = by.get((size, rate, "twisted")), by.get((size, rate, "splice"))
            if tw and sp:
                ltw, lsp = median(tw, "loss"), median(sp, "loss")
                print("         loss at %-5s offered: splice %5.1f%%, twisted %5.1f%% (%s)" % (
                    "max" if not rate else "%dk" % (rate // 1000), 100 * lsp, 100 * ltw,
                    "no more than twisted" if lsp <= ltw + 0.001 else "MORE than twisted"))
    bad = [r for r in results if not r["bytes_ok"]]
    if bad:
        print("\nWARNING: %d runs received datagrams of the wrong size" % len(bad))


def suite(ctx):
    """Datagrams/s one client and 1,000 clients at once: splice vs a plain Twisted relay."""
    from benchmarks import charts
    from benchmarks.report import Spread, Table, Verdict, ratio
    from benchmarks.scenario import Chart, Outcome

    seconds, repeat = ctx.pick(1.5, 0.4), ctx.pick(3, 1)
    clients = ctx.pick(CLIENTS, 50)
    count = ctx.pick(300, 30)
    ctx.log("udp: DNS-like queries, %d per run, new port and running session, x %d" % (count, repeat))
    asked = queries(count, repeat)
    ctx.log("udp: %s, sizes %s and %d clients, %g s x %d" % (
        ", ".join(RELAYS), SIZES, clients, seconds, repeat))
    results, counters = measure(seconds, repeat, [], clients)
    table = Table(
        "udp", "UDP datagrams per second",
        "Unpaced senders with sendmmsg batches for %g s per run, to a receiver counting with "
        "recvmmsg (all separate processes); `fwd kpps` = datagrams the receiver got per second "
        "of sending; loss = 1 - received/sent; relay CPU as a fraction of one core; both relays "
        "get 4 MiB socket buffers; %d interleaved runs, median (min-max). `clients`: 1 = one "
        "client socket (one relay session); %d = that many client sockets taking turns, %d "
        "datagrams each per turn, so the splice relay runs that many sessions at once "
        "(client to backend direction)." % (seconds, repeat, clients, 4),
        [("relay", "relay", "%s"), ("clients", "clients", "%d"), ("size", "bytes", "%d"),
         ("pps", "fwd kpps", "%.1f"), ("xtw", "x twisted", "%.2f"), ("loss", "loss", "%.1f%%"),
         ("cpu", "relay CPU", "%.0f%%")])
    by = {}
    for r in results:
        by.setdefault((r["relay"], r["size"], r["clients"]), []).append(r)
    cases = [(size, 1) for size in SIZES] + [(CLIENTS_SIZE, clients)]
    summ = {}
    for (name, size, n), rs in by.items():
        summ[(name, size, n)] = {
            "pps": Spread.of([r["pps"] / 1e3 for r in rs]),
            "loss": Spread.of([100 * r["loss"] for r in rs]),
            "cpu": Spread.of([100 * r["cpu"] for r in rs if r["cpu"] is not None])}
    for size, n in cases:
        tw = summ.get(("twisted", size, n), {}).get("pps")
        for name in RELAYS:
            s = summ.get((name, size, n), {})
            table.rows.append({"relay": name, "clients": n, "size": size, "pps": s.get("pps"),
                               "xtw": ratio(s.get("pps"), tw) if name != "direct" else None,
                               "loss": s.get("loss"), "cpu": s.get("cpu")})
        table.verdicts.append(Verdict("UDP %d B, %d client%s: splice vs Twisted relay" % (
            size, n, "s" if n > 1 else ""), ratio(summ.get(("splice", size, n), {}).get("pps"), tw),
            TARGET))
    if counters:
        table.notes.append(
            "The splice relay's own counters after the %d-client runs: %d sessions created in all "
            "(%d clients x %d runs), %d dropped over the cap, %d datagrams forwarded in user land "
            "(a session's first two datagrams and their answers, before it is spliced, and those "
            "that reached the listener before a session existed). "
            "Sessions of earlier runs stay until their idle timeout (60 s)." % (
                clients, counters.get("sessionsTotal", 0), clients, repeat,
                counters.get("dropped", 0), counters.get("userland", 0)))
    series = {name: [summ.get((name, size, n), {}).get("pps") for size, n in cases]
              for name in RELAYS}
    chart = Chart("udp.png", "UDP forwarding rate", lambda path: charts.grouped(
        path, "UDP datagrams forwarded per second (unpaced senders)", "thousand datagrams/s",
        ["%d B, %d client%s" % (size, n, "s" if n > 1 else "") for size, n in cases], series))
    return Outcome([table, queryTable(asked, count, repeat)], [chart], [])


if __name__ == "__main__":
    main()
