"""
Aggregate TCP throughput with several bulk sessions at once through one relay.

    python -m benchmarks.tcp_sessions [--sessions 16] [--seconds 3] [--repeat 2]
                                      [--relays portforward,kernel,mbuf]

Each session is its own sender process (1 MiB send() calls for --seconds)
to the shared receiver process; relays take turns (interleaved) and each
row gives the median aggregate GB/s, its min-max, and the relay's CPU
seconds per GB.  This is what decided backend="auto" for TCP (see
docs/splice.md): with many sessions the relay's one core runs out first.
"""

import argparse
import queue
import statistics
import subprocess
import tempfile

from benchmarks.tcp_throughput import PY, ROOT, BenchError, Receiver, Relay, _env, kill


def run(relay, receiver, sessions, seconds, first_id):
    cpu0 = relay.cpu()
    ids = range(first_id, first_id + sessions)
    senders = [
        subprocess.Popen(
            [PY, "-m", "benchmarks._load", "send", "--port", str(relay.port), "--id", str(i),
             "--seconds", str(seconds)],
            cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, start_new_session=True,
        )
        for i in ids
    ]
    try:
        for s in senders:
            s.wait(timeout=seconds + 30)
    finally:
        for s in senders:
            kill(s)
    got = {}
    while len(got) < sessions:
        try:
            r = receiver.results.get(timeout=20)
        except queue.Empty:
            raise BenchError("%s: only %d of %d sessions finished" % (relay.name, len(got), sessions))
        if r.get("id") in ids:
            if r.get("error"):
                raise BenchError("%s: session %s: %s" % (relay.name, r["id"], r["error"]))
            got[r["id"]] = r
    total = sum(r["bytes"] for r in got.values())
    secs = max(r["secs"] for r in got.values())
    cpu = relay.cpu() - cpu0 if cpu0 is not None else None
    return total / secs / 1e9, (cpu / (total / 1e9) if cpu is not None else None)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--relays", default="portforward,kernel,mbuf")
    args = p.parse_args(argv)
    names = args.relays.split(",")
    workdir = tempfile.mkdtemp(prefix="tcp_sessions.")
    receiver = Receiver(workdir)
    relays = [Relay(n, workdir, receiver.port) for n in names]
    results = {n: [] for n in names}
    try:
        for r in relays:
            r.start()
        next_id = 1
        for _ in range(args.repeat):
            for r in relays:
                results[r.name].append(run(r, receiver, args.sessions, args.seconds, next_id))
                next_id += args.sessions
    finally:
        for r in relays:
            r.stop()
        kill(receiver.proc)
    print("%d sessions at once, %g s per run, %d interleaved repetitions" % (args.sessions, args.seconds, args.repeat))
    print("%-12s %9s %11s %9s" % ("relay", "GB/s med", "min-max", "CPU s/GB"))
    for n in names:
        gbps = [g for g, _ in results[n]]
        cpus = [c for _, c in results[n] if c is not None]
        print("%-12s %9.2f %5.2f-%-5.2f %9s" % (
            n, statistics.median(gbps), min(gbps), max(gbps),
            "%.3f" % statistics.median(cpus) if cpus else "-"))


if __name__ == "__main__":
    main()
