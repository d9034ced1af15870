"""
One worker process of C{twistd splice --workers N}: L{splicing.app.workers}
starts it as C{python -m splicing.app.worker SETUP}, SETUP being JSON (its
index, the master's pid, its inherited sockets by relay).  The first line
on descriptor 0 is the description of the relays to run (a
L{splicing.app.spec.Config} as JSON): it builds them as the master would
and serves the inherited sockets (L{splicing.app.workersockets}).

Talking to the master:

  - descriptor 0, from the master: the description, then C{metrics ID}
    (answer with a snapshot), C{status ID} (answer with the status page's
    document) and C{retire} (stop accepting, exit once the last session ended); its
    end means the master is gone: stop as on SIGTERM;
  - descriptor 3, to the master, one message a line: C{L EVENT} (a
    twisted.logger event as JSON: the worker logs nothing itself),
    C{M ID SNAPSHOT} (L{splicing.app.metrics.RelayMetrics.snapshot}),
    C{S ID DOCUMENT} (L{splicing.app.metrics.RelayMetrics.status}), C{R}
    (serving).

SIGTERM stops it as twistd stops the relays (graceful, within
C{--shutdown-timeout}); SIGHUP is ignored: reloading is the master's (it
replaces its workers).  On Linux the kernel sends SIGTERM when the master
dies (C{PR_SET_PDEATHSIG}), so no worker outlives it.
"""

import atexit
import ctypes
import json
import os
import select
import signal
import sys
import threading

from twisted.internet import defer, stdio
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger, eventAsJSON, globalLogBeginner
from twisted.protocols.basic import LineOnlyReceiver

from splicing.app.build import buildRelay
from splicing.app.service import relaysService
from splicing.app.spec import Config
from splicing.app.workersockets import Inherited

PR_SET_PDEATHSIG = 1
COMMANDS, MESSAGES = 0, 3
LOG_DELAY = 0.02


def dieWithParent(master):
    """Be sent SIGTERM when the master exits (Linux); exit now if it already has."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the end of the command pipe still tells
    if os.getppid() != master:
        sys.exit(0)


def _systemd():
    """
    C{systemd:} listeners parse here as in the master (then adopt the socket
    the master handed over): Twisted must see systemd's variables as meant
    for this process.  It read them when it was imported, and removed all
    but the names (one per socket) from the environment.
    """
    from twisted.internet import endpoints
    from twisted.python.systemd import ListenFDs

    count = len(os.environ["LISTEN_FDNAMES"].split(":"))
    environ = dict(os.environ, LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(count))
    endpoints._SystemdParser._sddaemon = ListenFDs.fromEnvironment(environ)


class Channel:
    """
    Messages to the master, as whole lines.  Log events are batched: they
    go out L{LOG_DELAY} seconds after the first of a batch (one write, one
    wake-up of the master for many sessions' events); other messages go
    out at once, after them.  Any thread, or a signal handler, may log.
    """

    def __init__(self, fd, reactor):
        self.fd = fd
        self.reactor = reactor
        # Reentrant: a signal handler that logs may interrupt a flush.
        self.lock = threading.RLock()
        self.pending = []
        self.scheduled = False

    def send(self, *words):
        with self.lock:
            self.pending.append(" ".join(words))
            self._flush()

    def logEvent(self, event):
        """A twisted.logger observer: the master publishes the event."""
        line = _plain(event)
        with self.lock:
            self.pending.append(line)
            if self.scheduled:
                return
            self.scheduled = True
        # callFromThread: safe from other threads and from signal handlers
        self.reactor.callFromThread(self.reactor.callLater, LOG_DELAY, self.flush)

    def flush(self):
        with self.lock:
            self._flush()

    def _flush(self):
        self.scheduled = False
        if self.pending:
            view = memoryview(("\n".join(self.pending) + "\n").encode("utf-8"))
            self.pending = []
            while view:
                try:
                    view = view[os.write(self.fd, view):]
                except BlockingIOError:  # someone set the pipe non-blocking (systemd's endpoint)
                    select.select([], [self.fd], [], 1.0)


_PLAIN = (str, int, float, bool, type(None))
_OBJECTS = ("log_logger", "log_source", "log_level")


def _plain(event):
    """
    A message for C{event}: C{E} and its fields as JSON when they are all
    plain values (a session's end: cheap), else C{L} and Twisted's JSON
    form (which flattens objects to text).
    """
    fields = {k: v for k, v in event.items() if k not in _OBJECTS}
    if all(isinstance(v, _PLAIN) for v in fields.values()) and "log_level" in event:
        fields["log_level"] = event["log_level"].name
        try:
            return "E " + json.dumps(fields, separators=(",", ":"))
        except ValueError:
            pass
    return "L " + eventAsJSON(event)


class Worker:
    """The relays of one worker and what the master asks of them."""

    log = Logger()

    def __init__(self, index, relays, metrics, channel, reactor):
        self.index = index
        self.relays = relays
        self.metrics = metrics
        self.channel = channel
        self.reactor = reactor
        self.stopping = False

    def start(self):
        self.relays.startService()
        self.channel.send("R")

    def report(self, ident):
        snapshot = self.metrics.snapshot() if self.metrics is not None else []
        self.channel.send("M", ident, json.dumps(snapshot, separators=(",", ":")))

    def reportStatus(self, ident):
        doc = self.metrics.status() if self.metrics is not None else {"relays": []}
        self.channel.send("S", ident, json.dumps(doc, separators=(",", ":")))

    def retire(self):
        """The master replaced this worker: stop accepting, exit once every session ended."""
        self.log.info("worker {worker} retiring: exits when its last session ended", worker=self.index)
        d = defer.gatherResults([defer.maybeDeferred(getattr(s, "retire", s.stopService)) for s in self.relays])
        d.addBoth(lambda _: self.stop())

    def stop(self):
        if not self.stopping:
            self.stopping = True
            try:
                self.reactor.stop()
            except ReactorNotRunning:
                pass  # already stopping (SIGTERM)

    def stopped(self):
        """The relays have stopped: the master keeps the final counters."""
        self.report("final")


class Commands(LineOnlyReceiver):
    """The master's requests, on descriptor 0."""

    delimiter = b"\n"

    def __init__(self, worker):
        self.worker = worker

    def lineReceived(self, line):
        words = line.decode("ascii", "replace").split()
        if words[:1] == ["metrics"] and len(words) == 2:
            self.worker.report(words[1])
        elif words[:1] == ["status"] and len(words) == 2:
            self.worker.reportStatus(words[1])
        elif words == ["retire"]:
            self.worker.retire()

    def connectionLost(self, reason):
        self.worker.stop()  # the master is gone


def readDescription(fd):
    """
    The first line on C{fd} (the master's description), read a byte at a
    time so that the commands after it stay unread for L{Commands}.
    """
    line = bytearray()
    while not line.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            sys.exit(0)  # the master is gone
        line += byte
    return Config.fromJSON(json.loads(line.decode("utf-8")))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    setup = json.loads(argv[0])
    os.setpgrp()  # a terminal's Ctrl-C reaches the master, which stops the workers
    messages = MESSAGES
    if os.environ.get("LISTEN_FDNAMES"):
        _systemd()
        # systemd's numbers start at 3 as well: its endpoint closes 3 once it
        # adopted "its" socket (the one the master handed over, in fact).
        messages = os.dup(MESSAGES)
    dieWithParent(setup["master"])
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from twisted.internet import reactor

    channel = Channel(messages, reactor)
    globalLogBeginner.beginLoggingTo([channel.logEvent], redirectStandardIO=False)
    atexit.register(channel.flush)

    config = readDescription(COMMANDS)
    metrics = None
    if config.metrics:
        from splicing.app.metrics import RelayMetrics  # prometheus_client: only with --metrics

        metrics = RelayMetrics()
    inherited = Inherited(reactor, {name: [tuple(s) for s in sockets] for name, sockets in setup["sockets"].items()})
    relays = relaysService(config, lambda spec: inherited.attach(spec.name, buildRelay(spec, metrics, reactor)))
    worker = Worker(setup["index"], relays, metrics, channel, reactor)
    stdio.StandardIO(Commands(worker), stdin=COMMANDS, stdout=1)
    reactor.callWhenRunning(worker.start)
    reactor.addSystemEventTrigger("before", "shutdown", relays.stopService)
    reactor.addSystemEventTrigger("during", "shutdown", worker.stopped)
    reactor.run()


if __name__ == "__main__":
    main()
