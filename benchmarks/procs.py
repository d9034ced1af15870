"""
Processes of the benchmarks: start them in their own session (so a
terminal's Ctrl-C reaches only the driver, which then kills them all),
find free ports, read their CPU time, and stop them.

L{Load} is the common shape of a load process: C{python -m benchmarks.X ...}
that prints a ready line (C{PORT n}, C{READY}, C{LISTENING n}) and then
JSON result lines.
"""

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

PY = sys.executable
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    pass


# -- processes -------------------------------------------------------------


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def free_port(kind=socket.SOCK_STREAM):
    """A free 127.0.0.1 port for C{kind} (SOCK_STREAM or SOCK_DGRAM)."""
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def wait_listening(port, proc, deadline, what):
    """Connect-retry until C{port} accepts, the process dies, or time is up."""
    while True:
        if proc is not None and proc.poll() is not None:
            raise BenchError("%s exited with status %s before listening" % (what, proc.returncode))
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=1)
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError("%s not listening on %d after waiting" % (what, port))
            time.sleep(0.05)
        else:
            s.close()
            return


def twistd():
    """The venv's twistd (the one that runs this working tree), else PATH's."""
    path = os.path.join(os.path.dirname(PY), "twistd")
    if not os.path.exists(path):
        path = shutil.which("twistd") or path
    return path


def kill(proc):
    """Stop one process we started (and its process group: socat forks)."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 3)):
        try:
            os.killpg(proc.pid, sig)  # its own session: pgid == pid
        except ProcessLookupError:
            return
        except PermissionError:
            proc.send_signal(sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            pass


def proc_cpu(pid):
    """utime+stime (+ reaped children's) of a process, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        rest = f.read().rsplit(")", 1)[1].split()
    # rest[0] is field 3 (state): utime, stime, cutime, cstime are fields 14-17.
    return sum(int(x) for x in rest[11:15]) / CLK_TCK


def stop_all(stoppables, workdir=None):
    """Stop every relay or load given (anything with C{stop()}), then remove C{workdir}."""
    for x in stoppables:
        x.stop()
    if workdir:
        shutil.rmtree(workdir, ignore_errors=True)


def _procField(path, name):
    """A C{name: N kB} field of a /proc file, in bytes (0 if the process is gone)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(name):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss(pid):
    """Resident set size of a process, bytes (0 if it is gone)."""
    return _procField("/proc/%d/status" % pid, "VmRSS:")


def pss(pid):
    """
    Proportional set size, bytes: resident pages, each shared page divided by
    the processes sharing it, so a sum over processes counts shared libraries
    once (a sum of RSS counts them once per process).
    """
    return _procField("/proc/%d/smaps_rollup" % pid, "Pss:")


def descendants(pid):
    """C{pid} and every process below it (workers a relay forked)."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def pipe_fds(pid):
    """How many of the process's descriptors are pipes."""
    n = 0
    try:
        names = os.listdir("/proc/%d/fd" % pid)
    except OSError:
        return 0
    for fd in names:
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith("pipe:"):
                n += 1
        except OSError:
            pass
    return n


class Load:
    """
    One load process (C{python -m MODULE ARGS...}): its stdout lines in a
    queue, stdin kept open for commands when C{commands} is true.
    """

    def __init__(self, module, args, workdir=None, commands=False, name=None):
        self.name = name or module.rsplit(".", 1)[-1]
        log = open(os.path.join(workdir, self.name + ".log"), "ab") if workdir else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [PY, "-m", module] + [str(a) for a in args], cwd=ROOT, env=_env(),
                stdin=subprocess.PIPE if commands else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=log, start_new_session=True, text=True)
        finally:
            if workdir:
                log.close()
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)  # EOF

    def expect(self, prefix, timeout):
        """The next line starting with C{prefix}, or BenchError after C{timeout} s."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError("%s: no %r line within %g s" % (self.name, prefix, timeout))
            if line is None:
                raise BenchError("%s exited (status %s) before %r" % (
                    self.name, self.proc.wait(), prefix))
            if line.startswith(prefix):
                return line

    def port(self, timeout=15):
        return int(self.expect("PORT ", timeout).split()[1])

    def result(self, timeout):
        """The JSON line the process prints last (it exits after it)."""
        return json.loads(self.expect("{", timeout))

    def send(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def stop(self):
        kill(self.proc)


def run_load(module, args, timeout):
    """Run one load process to its end; its JSON result line."""
    load = Load(module, args)
    try:
        return load.result(timeout)
    finally:
        load.stop()
