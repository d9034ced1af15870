"""
The master of C{twistd splice --workers N}: N worker processes
(L{splicing.app.worker}) serve one configuration on listening sockets the
master binds (L{splicing.app.workersockets}); the master accepts nothing itself.

  - A worker that exits unexpectedly is started again, after a delay that
    doubles with each failure in a row (from 0.5 s, at most 30 s; a worker
    that ran for a minute starts the count again).
  - SIGTERM: the master closes its copies of the sockets and sends SIGTERM
    to every worker; each stops accepting and lets its sessions finish
    within C{--shutdown-timeout}.  The master exits when all have exited
    (those still there 10 s after the longest timeout get SIGKILL).
  - SIGHUP: the master reads its description again (its C{load}: the
    C{--config} file, or the command line with its C{--rules} files; one
    with errors changes nothing),
    binds the sockets of new listeners, starts a new generation of workers
    and, once all of them serve, tells the old ones to retire: they stop
    accepting and exit when their last session ended.  Sockets whose
    listener did not change are kept: no client is refused meanwhile.
  - Logs: each worker's twisted.logger events appear in the master's log
    with the fields C{worker} (its index) and C{worker_pid}.  Each worker
    checks the backends (C{--check}) for itself; a backend's change of
    state is logged once, by the first worker that saw it.
  - Metrics: the sum of the workers' (L{splicing.app.metrics.WorkerMetrics}).

No worker outlives the master: the kernel sends them SIGTERM when it dies
(Linux), and the end of their command pipe tells them too.
"""

import json
import os
import signal
import string
import sys

from twisted.application import service
from twisted.internet import defer, error, protocol
from twisted.logger import Logger, LogLevel, eventFromJSON, globalLogPublisher

from splicing.app.metrics import WorkerMetrics
from splicing.app.service import ListeningService, difference, onSIGHUP
from splicing.app.spec import namesTLS
from splicing.app.workersockets import Binder
from splicing.relay.udp import parseUDPListen

FIRST_DELAY = 0.5
MAX_DELAY = 30.0
STABLE = 60.0  # seconds a worker runs before its exit counts as a first failure
KILL_AFTER = 10.0  # seconds past the longest --shutdown-timeout
METRICS_TIMEOUT = 2.0
_LEVELS = {level.name: level for level in LogLevel.iterconstants()}

#: How a worker whose description names no TLS endpoint starts: without
#: pyOpenSSL, as where it is not installed (Twisted imports it, and
#: cryptography, at start-up whenever it can: about 13 MB of every
#: process).  The worker module runs as with C{-m}.
WITHOUT_TLS = ("# splicing.app.worker, without TLS\n"
               "import runpy, sys\n"
               "sys.modules['OpenSSL'] = None\n"
               "runpy.run_module('splicing.app.worker', run_name='__main__', alter_sys=True)\n")


def _keys(name, relay):
    """One key per listener of a L{splicing.app.spec.RelaySpec}: unchanged keys keep their sockets across a reload."""
    return [(name, relay.kind, description, index) for index, description in enumerate(relay.listen)]


class _UDPEndpoint:
    def __init__(self, binder, description):
        self.binder = binder
        self.description = description

    def listen(self, factory):
        return defer.execute(self.binder.bindUDP, *parseUDPListen(self.description))


class WorkerSockets(protocol.Factory):
    """What the master's ports name in the log; they accept nothing."""

    noisy = False

    def __init__(self, name):
        self.name = name


class Listener(ListeningService):
    """The master's sockets for one C{--listen} of relay C{name}: bound, logged, never read."""

    what = "relay"

    def __init__(self, name, kind, description, count, reactor):
        factory = WorkerSockets(name)
        ListeningService.__init__(self, [description], factory, reactor)
        self.kind = kind
        self.sockets = [Binder(reactor, count)]

    def endpoint(self, reactor, description):
        if self.kind == "udp":
            return _UDPEndpoint(reactor, description)
        return ListeningService.endpoint(self, reactor, description)


def _status(reason):
    """Structured fields and a phrase for how a process ended."""
    code, number = getattr(reason.value, "exitCode", None), getattr(reason.value, "signal", None)
    if number is not None:
        phrase = "killed by %s" % (signal.Signals(number).name,)
    else:
        phrase = "exit status %s" % (code,)
    return {"exit_code": code, "signal": number, "status": phrase}


class WorkerProcess(protocol.ProcessProtocol):
    """One worker, as the master sees it: its messages, its snapshot, its end."""

    log = Logger()

    def __init__(self, pool, index, generation):
        self.pool = pool
        self.index = index
        self.generation = generation
        self.pid = None
        self.ready = False
        self.retiring = False
        self.snapshot = []
        self.started = pool.reactor.seconds()
        self._partial = {}
        self._asked = 0
        self._waiting = {}

    def connectionMade(self):
        self.pid = self.transport.pid

    def childDataReceived(self, fd, data):
        lines = (self._partial.get(fd, b"") + data).split(b"\n")
        self._partial[fd] = lines.pop()
        for line in lines:
            if fd == 3:
                self._message(line)
            elif line.strip():
                self.log.warn("worker {worker} (pid {worker_pid}) wrote: {line}", worker=self.index,
                              worker_pid=self.pid, line=line.decode("utf-8", "replace"))

    def _message(self, line):
        kind, _, rest = line.partition(b" ")
        if kind in (b"E", b"L"):
            self.pool.publish(self, kind, rest)
        elif kind in (b"M", b"S"):
            ident, _, data = rest.partition(b" ")
            answer = json.loads(data)
            if kind == b"M":
                self.snapshot = answer
            d = self._waiting.pop(ident, None)
            if d is not None:
                d.callback(answer)
        elif kind == b"R":
            self.ready = True
            self.pool.workerReady(self)

    def send(self, line):
        try:
            self.transport.writeToChild(0, line + b"\n")
        except (KeyError, error.ProcessExitedAlready):
            pass  # it is exiting

    def signal(self, name):
        try:
            self.transport.signalProcess(name)
        except error.ProcessExitedAlready:
            pass

    def metrics(self):
        """A Deferred snapshot: fresh, or the last one if it does not answer in time."""
        return self.ask(b"metrics", lambda: self.snapshot)

    def status(self):
        """A Deferred status document (L{splicing.app.status}); an empty one if it does not answer in time."""
        return self.ask(b"status", lambda: {"relays": []})

    def ask(self, command, otherwise):
        """A Deferred answer to C{command}, or C{otherwise()} after L{METRICS_TIMEOUT} seconds."""
        self._asked += 1
        ident = b"%d" % (self._asked,)
        d = self._waiting[ident] = defer.Deferred()
        self.send(command + b" " + ident)

        def late(result, timeout):
            self._waiting.pop(ident, None)
            return otherwise()

        return d.addTimeout(METRICS_TIMEOUT, self.pool.reactor, onTimeoutCancel=late)

    def retire(self):
        self.retiring = True
        self.send(b"retire")

    def processEnded(self, reason):
        self.pool.workerEnded(self, reason)
        waiting, self._waiting = list(self._waiting.values()), {}
        for d in waiting:
            d.callback([])  # its counters are among the retired ones now (and an empty status merges to none)


class WorkerPool(service.MultiService):
    """
    Runs a L{splicing.app.spec.Config} (with C{workers} > 1) in worker
    processes, each given the description.  Its children are the master's
    L{Listener}s.

    @param load: a callable that returns the description as it reads now (SIGHUP's).
    @ivar metrics: the L{WorkerMetrics} a C{--metrics} endpoint serves.
    """

    log = Logger()

    def __init__(self, config, load, reactor):
        service.MultiService.__init__(self)
        self.reactor = reactor
        self.count = config.workers
        self.load = load
        self.config = config
        self.metrics = WorkerMetrics(self.gatherMetrics, reactor)
        self.listeners = {}
        self.generation = 0
        self.current = {}
        self.processes = set()
        self.restarts = {}
        self.failures = {}
        self.backendStates = {}  # (relay, address) -> the last "up" or "down" logged
        self.stopping = None
        self._previous = None

    # -- starting

    def startService(self):
        service.MultiService.startService(self)
        if self.bind(self.config):
            self.spawnGeneration()
        self._previous = onSIGHUP(self.reactor, self.reload)

    def bind(self, config):
        """
        Listeners for C{config}'s relays (kept if unchanged; a removed one
        closes at once, for the old workers too); False if one failed.
        """
        keys = [key for name, relay in config.relays.items() for key in _keys(name, relay)]
        for key in [k for k in self.listeners if k not in keys]:
            self.listeners.pop(key).disownServiceParent()
        for key in keys:
            if key not in self.listeners:
                name, kind, description, _ = key
                self.listeners[key] = Listener(name, kind, description, self.count, self.reactor)
                self.listeners[key].setServiceParent(self)
        return all(listener.ports for listener in self.listeners.values())

    def spawnGeneration(self):
        self.generation += 1
        self.backendStates.clear()  # new workers start with every backend up: their changes are news
        for call in self.restarts.values():
            call.cancel()
        self.restarts.clear()
        self.current = {index: self.spawn(index) for index in range(self.count)}

    def spawn(self, index):
        """Start worker C{index} of the current generation with its sockets."""
        fds, table = {0: "w", 1: "r", 2: "r", 3: "r"}, {}
        for name, relay in self.config.relays.items():
            table[name] = []
            for key in _keys(name, relay):
                fd, family, kind = self.listeners[key].ports[0].forWorker(index)
                child = len(fds)
                fds[child] = fd
                table[name].append((child, family, kind))
        setup = json.dumps({"index": index, "master": os.getpid(), "sockets": table})
        worker = WorkerProcess(self, index, self.generation)
        start = ["-m", "splicing.app.worker"] if namesTLS(self.config) else ["-c", WITHOUT_TLS]
        self.reactor.spawnProcess(worker, sys.executable, [sys.executable] + start + [setup],
                                  env=_environment(), childFDs=fds)
        # the description, as the first line of its commands: no limit on its size as in argv
        worker.send(json.dumps(self.config.toJSON(), separators=(",", ":")).encode("utf-8"))
        self.processes.add(worker)
        self.metrics.workers.set(len(self.processes))
        self.log.info("worker {worker} started (pid {worker_pid})", worker=index, worker_pid=worker.pid,
                      generation=self.generation)
        return worker

    def workerReady(self, worker):
        if worker.generation != self.generation or not all(w.ready for w in self.current.values()):
            return
        for old in [w for w in self.processes if w.generation < self.generation and not w.retiring]:
            old.retire()

    # -- what workers say

    def publish(self, worker, kind, data):
        """Publish a worker's log event (C{E}: plain fields, C{L}: Twisted's JSON) in the master's log."""
        try:
            if kind == b"E":
                event = json.loads(data.decode("utf-8"))
                event["log_level"] = _LEVELS[event["log_level"]]
            else:
                event = eventFromJSON(data.decode("utf-8"))
                _unflatten(event)
        except (ValueError, KeyError):
            return
        if self._sameBackendState(event):
            return
        event["worker"], event["worker_pid"] = worker.index, worker.pid
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = "%s#%s" % (event.get("log_namespace", "-"), level.name if level is not None else "-")
        event["log_system"] = "worker %d %s" % (worker.index, system)
        globalLogPublisher(event)

    def _sameBackendState(self, event):
        """
        Whether C{event} is a backend's change of state (L{splicing.relay.checks})
        that another worker already reported: each worker checks for
        itself, the log says each change once.
        """
        state = event.get("state")
        if state not in ("up", "down") or "address" not in event:
            return False
        key = (event.get("relay"), event["address"])
        if self.backendStates.get(key) == state:
            return True
        self.backendStates[key] = state
        return False

    def gatherMetrics(self, what="metrics"):
        """A Deferred list of every running worker's snapshot (C{what}: "metrics") or status document ("status")."""
        return defer.gatherResults([getattr(w, what)() for w in self.processes])

    # -- ends and restarts

    def workerEnded(self, worker, reason):
        self.processes.discard(worker)
        self.metrics.workers.set(len(self.processes))
        self.metrics.retire(worker.snapshot)
        fields = _status(reason)
        fields.update(worker=worker.index, worker_pid=worker.pid, generation=worker.generation)
        if self.stopping is not None or worker.retiring or self.current.get(worker.index) is not worker:
            self.log.info("worker {worker} (pid {worker_pid}) exited: {status}", **fields)
            if self.stopping is not None and not self.processes and not self.stopping.called:
                self.stopping.callback(None)
            return
        uptime = self.reactor.seconds() - worker.started
        failures = 1 if uptime >= STABLE else self.failures.get(worker.index, 0) + 1
        self.failures[worker.index] = failures
        delay = min(MAX_DELAY, FIRST_DELAY * 2 ** (failures - 1))
        self.log.warn("worker {worker} (pid {worker_pid}) exited unexpectedly after {uptime:.1f}s: {status}; "
                      "restarting it in {delay:.1f}s", uptime=uptime, delay=delay, failures=failures, **fields)
        self.restarts[worker.index] = self.reactor.callLater(delay, self.restart, worker.index)

    def restart(self, index):
        del self.restarts[index]
        self.metrics.restarts.inc()
        self.current[index] = self.spawn(index)

    # -- reload and stop

    def reload(self):
        """SIGHUP: a new generation of workers for the description as it reads now."""
        try:
            config = self.load()
        except Exception as e:  # the file's or the command line's error, said in one line
            self.log.error("reload failed, keeping the running relays: {error}", error=str(e))
            return
        difference(self.config.relays, config.relays, self.log)
        self.config = config
        if self.bind(self.config):
            self.spawnGeneration()

    def stopService(self):
        service.Service.stopService(self)
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
        for call in self.restarts.values():
            call.cancel()
        self.restarts.clear()
        self.stopping = defer.Deferred()
        for worker in self.processes:
            worker.signal("TERM")
        if not self.processes:
            self.stopping.callback(None)
        timeouts = [relay.options.get("shutdown-timeout") or 0 for relay in self.config.relays.values()]
        kill = self.reactor.callLater(max(timeouts) + KILL_AFTER, self._killAll)
        self.stopping.addBoth(lambda r: kill.active() and kill.cancel())
        return defer.gatherResults([self.stopping, service.MultiService.stopService(self)])

    def _killAll(self):
        for worker in self.processes:
            self.log.warn("worker {worker} (pid {worker_pid}) did not stop: killing it", worker=worker.index,
                          worker_pid=worker.pid)
            worker.signal("KILL")


def _unflatten(event):
    """
    Let the master format a worker's event from its fields when it can:
    Twisted's JSON form keeps C{str()} of each field, without its format
    spec (C{{duration:.3f}} would print every digit).
    """
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(event.get("log_format") or "") if name]
    except ValueError:
        return
    if all(isinstance(event.get(name), (str, int, float)) for name in names):
        event.pop("log_flattened", None)


def _environment():
    """The master's environment, with this package importable (twistd may have found it on its own path)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


__all__ = ["WorkerPool", "WorkerProcess", "Listener"]
