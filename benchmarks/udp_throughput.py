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
backend side a connected port) and C{splice} (L{splicing.udp.UDPRelayService}).
Both relays get the same 4 MiB socket buffers.  Runs are interleaved over
the relays; unpaced runs are repeated N times and the median is reported.

Reported per run: datagrams/s offered (sent) and forwarded (received),
loss, and the relay's CPU use.  Then the ratios: splice vs twisted
forwarded datagrams/s at the unpaced rate, and loss side by side at every
offered rate.  Only 127.0.0.1 is used; every process is killed on exit.
"""

import argparse
import json
import os
import queue
import socket
import statistics
import subprocess
import sys
import threading
import time

from benchmarks.tcp_throughput import free_port
from benchmarks.tcp_throughput import kill

PY = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
RELAYS = ("direct", "twisted", "splice")
SIZES = (64, 1400)
TARGET = 2.0  # splice vs twisted, forwarded datagrams/s


class BenchError(Exception):
    pass


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _spawn(args, **kw):
    return subprocess.Popen(
        [PY, "-m", "benchmarks._udpload"] + args, cwd=ROOT, env=_env(),
        start_new_session=True, text=True, **kw,
    )


def proc_cpu(pid):
    with open("/proc/%d/stat" % pid) as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in rest[11:13]) / CLK_TCK


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
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        ready = queue.Queue()
        threading.Thread(target=lambda: [ready.put(l) for l in self.proc.stdout], daemon=True).start()
        deadline = time.monotonic() + 15
        while True:
            try:
                if ready.get(timeout=max(0.1, deadline - time.monotonic())).startswith("READY"):
                    return
            except queue.Empty:
                raise BenchError("relay %s did not start" % name) from None

    def cpu(self):
        return proc_cpu(self.proc.pid) if self.proc is not None else None


def run(receiver, relay, size, seconds, rate):
    receiver.command("reset")
    cpu0 = relay.cpu()
    args = ["send", "--port", str(relay.port), "--size", str(size), "--seconds", str(seconds)]
    if rate:
        args += ["--rate", str(rate)]
    sender = _spawn(args, stdout=subprocess.PIPE)
    try:
        out, _ = sender.communicate(timeout=seconds + 15)
    finally:
        kill(sender)
    sent = json.loads(out.strip().splitlines()[-1])
    time.sleep(0.3)  # what is in flight arrives
    got = receiver.command("report")
    cpu = relay.cpu()
    return {
        "relay": relay.name, "size": size, "rate": rate,
        "sent": sent["sent"], "received": got["datagrams"], "seconds": sent["seconds"],
        "offered_pps": sent["sent"] / sent["seconds"],
        "pps": got["datagrams"] / sent["seconds"],
        "loss": 1.0 - got["datagrams"] / sent["sent"] if sent["sent"] else 0.0,
        "cpu": None if cpu is None else (cpu - cpu0) / sent["seconds"],
        "bytes_ok": got["bytes"] == got["datagrams"] * size,
    }


def median(results, key):
    return statistics.median(r[key] for r in results)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="benchmarks.udp_throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="per run (default 1.5)")
    parser.add_argument("--repeat", type=int, default=3, help="unpaced runs per relay and size (default 3)")
    parser.add_argument("--rates", default="100000,200000",
                        help="paced offered rates, datagrams/s, comma-separated (default 100000,200000)")
    parser.add_argument("--json", action="store_true", help="also print every run as a JSON line")
    args = parser.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",") if r]
    procs = []
    results = []
    started = time.monotonic()
    try:
        receiver = Receiver()
        procs.append(receiver.proc)
        relays = [Relay(name, receiver.port) for name in RELAYS]
        procs += [r.proc for r in relays]
        for size in SIZES:
            plan = [0] * args.repeat + rates
            for rate in plan:
                for relay in relays:  # interleaved: drift hits every relay alike
                    r = run(receiver, relay, size, args.seconds, rate)
                    results.append(r)
                    if args.json:
                        print(json.dumps(r), flush=True)
    finally:
        for p in procs:
            kill(p)
    report(results, rates)
    print("\n(%.0f s in all)" % (time.monotonic() - started))


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


if __name__ == "__main__":
    main()
