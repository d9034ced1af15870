"""
The early-close scenario of ``python -m tests.stress``: thousands of clients
closing at every point of a request (``tests/earlyclose.py``: before, in and
after the head, in the body, in and after the response; FIN or reset), the
origin closing early too, from 64 threads at once, against one ``twistd
splice http`` or ``splice tcp`` process.  Afterwards the relay must hold no
connection within two seconds, no more descriptors or pipes than before,
use no CPU while idle, report no active session and have logged no error.
"""

import os
import pathlib
import random
import re
import tempfile
import threading
import time

import earlyclose as ec
import procs
from stress import load
from test_relay_tcp import make_cert

THREADS = 64
_BAD = re.compile(r"Traceback|critical|Unhandled")
_METRICS = re.compile(r"metrics \S+ listening on (\S+)")


def scenario(run, row, relay, kind):
    """Fill ``row`` for ``relay`` ("http" or "tcp") on ``kind`` (a --backend, or "tls-origin")."""
    tmp = tempfile.mkdtemp(dir=run.tmp)
    key, cert = make_cert(pathlib.Path(tmp))
    roots = os.path.join(tmp, "roots")
    os.mkdir(roots)
    with open(cert, "rb") as f, open(os.path.join(roots, "ca.pem"), "wb") as g:
        g.write(f.read())
    tls = kind == "tls-origin"
    origin = procs.Backend(ec.origin(ec.serverContext(key, cert) if tls else None))
    connect = "tls:host=127.0.0.1:port=%d:trustRoots=%s" % (origin.port, roots) if tls else origin.tcp
    args = [relay, "--listen", "tcp:0:interface=127.0.0.1:backlog=1024", "--connect", connect,
            "--metrics", "tcp:0:interface=127.0.0.1"] + ([] if tls else ["--backend", kind])
    proc = run.relay(args, "early-%s-%s" % (relay, kind))
    try:
        (where,) = proc.listening()[relay]
        metrics = procs.address(proc.wait_for(_METRICS.pattern)[0])
        probe = load.Probe(proc.proc.pid)
        points = ec.CLOSE_POINTS + ec.ORIGIN_POINTS if relay == "http" else ec.TCP_POINTS
        n = run.n(3000)
        _clients(where, points, n // 5, seed=1)  # the working size of pools, caches and the heap
        ec.settle(probe.pid)
        baseline = load.settle(probe, {"fds": 0, "pipes": 0, "rss": 0}, timeout=1.0)
        counts, failed = _clients(where, points, n, seed=len(kind) + len(relay))
        row.sessions = n
        row.faults = n - counts.get("after-response", 0)
        row.checked = counts.get("checked", 0)
        left = ec.settle(probe.pid, 2.0)
        # the kernel path's pool keeps up to 8 idle pipes (16 descriptors): not a leak
        pool = dict(baseline, pipes=max(baseline["pipes"], 16))
        after = load.settle(probe, pool, timeout=2.0)
        row.leaks += len(left) + max(0, after["fds"] - pool["fds"]) + max(0, after["pipes"] - pool["pipes"])
        cpu = ec.idleCPU(probe.pid, 1.0)
        active = ec.sessionsActive(metrics, relay)
        errors = len(_BAD.findall(proc.text()))
        row.failures += len(failed) + (cpu >= 0.05) + (active != 0) + errors
        row.notes.append("%s; after: %d connections, fds %d -> %d, pipes %d -> %d, idle CPU %.0f%%, "
                         "%d sessions active, %d errors logged" % (
                             ", ".join("%s %d" % kv for kv in sorted(counts.items()) if kv[0] != "checked"),
                             len(left), baseline["fds"], after["fds"], baseline["pipes"], after["pipes"],
                             100 * cpu, active, errors))
        if failed:
            row.notes.append("failed: %r" % failed[:3])
        return row.done(probe)
    finally:
        proc.close()
        origin.close()


def _clients(where, points, n, seed):
    """``n`` clients from L{THREADS} threads, each at a random point: (counts by point, failures)."""
    rng = random.Random(seed)
    plan = [(rng.choice(points), rng.choice(ec.HOWS)) for _ in range(n)]
    counts, failed, lock = {}, [], threading.Lock()

    def worker(mine):
        for point, how in mine:
            try:
                got = ec.client(where, point, how, timeout=10.0)
            except OSError as e:  # a connect refused or timed out: the relay failed a client
                with lock:
                    failed.append((point, how, repr(e)))
                continue
            ok = point != "after-response" or got.endswith(b"\r\n\r\n" + ec.SMALL)
            with lock:
                counts[point] = counts.get(point, 0) + 1
                counts["checked"] = counts.get("checked", 0) + len(got)
                if not ok:
                    failed.append((point, how, got[:100]))

    threads = [threading.Thread(target=worker, args=(plan[i::THREADS],), daemon=True) for i in range(THREADS)]
    deadline = time.monotonic() + 120
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        failed.append(("timeout", "", "clients still running after 120 s"))
    return counts, failed
