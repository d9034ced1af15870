"""
Accepting only while descriptors last.

Twisted's listening port meets C{EMFILE} on C{accept(2)} by closing a
reserved descriptor, accepting every client waiting in the backlog and
closing it at once; without the reserve it logs and returns with the
listening socket still readable, which a level-triggered epoll reports again
at once (a busy loop).  Either way a relay out of descriptors would drop the
clients that could have waited, and the sessions it accepted last fail to
connect their backends for want of one more socket.

L{DescriptorGuard} keeps a margin of descriptors free instead: before each
accept batch it bounds the batch to the sessions that fit above the margin.
It knows how many descriptors are open from C{/proc/self/fd}, counted again
only when its running estimate (the last count plus two descriptors per
client accepted since, closes ignored) says the margin is near, so a relay
far from its limit pays nothing per accept.  (The lowest free descriptor
number is no such count: a closed low descriptor leaves a gap below many
open ones.)  When the margin is gone,
or C{EMFILE}/C{ENFILE} shows up anyway (accept, a backend's socket, a pipe),
it pauses every port it watches, retries after a short delay that doubles
while the shortage lasts, and resumes once the margin is back.  New clients
meanwhile wait in the kernel's backlog; running sessions go on.  Each
shortage is logged once when it starts and once when it ends.

L{splicing.relay.sessions.SessionTable} asks the guard before resuming its ports,
so the C{--max-sessions} pause and this one never undo each other.
"""

import errno
import os
import resource

from twisted.logger import Logger

#: Errors that mean "this process (or the system) has no descriptor or
#: socket buffer to spare", not "the peer refused".
EXHAUSTION = frozenset([errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
_NAMES = {errno.errorcode[e]: e for e in EXHAUSTION}


def exhaustionErrno(failure):
    """
    The errno if C{failure} (a Failure or an exception) is descriptor
    exhaustion (EMFILE, ENFILE, ENOBUFS, ENOMEM), else None.
    """
    exc = getattr(failure, "value", failure)
    for candidate in (getattr(exc, "osError", None), getattr(exc, "errno", None),
                      *(getattr(exc, "args", ()) or ())[:1]):
        if isinstance(candidate, int) and candidate in EXHAUSTION:
            return candidate
    return None


def softLimit():
    """RLIMIT_NOFILE's soft limit now (C{prlimit} may change it while we run)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


#: Descriptors a session holds for its life: its client and its backend
#: socket.  Pipes are borrowed only while bytes are in flight; the margin
#: covers them.
PER_SESSION = 2


def countOpen():
    """The descriptors open in this process now."""
    return len(os.listdir("/proc/self/fd")) - 1  # less the directory's own


class DescriptorGuard:
    """
    Pauses accepting while the process is short of descriptors.

    @ivar margin: descriptors to keep free for the sessions already running
        (backend sockets, pipes); None: 1/128 of the soft limit, at least 32.
    @ivar first: the first pause, in seconds; it doubles up to C{longest}
        while the shortage lasts.
    @ivar paused: whether the watched ports are paused for want of descriptors.
    """

    log = Logger()

    def __init__(self, reactor=None, margin=None, first=0.05, longest=2.0):
        self._reactor = reactor
        self.margin = margin
        self.first = first
        self.longest = longest
        self.paused = False
        self.delay = first
        self.episodes = 0
        self._tables = set()
        self._ports = {}
        self._retry = None
        self._since = None
        self._pauses = 0
        self._recovered = None
        self._open = None  # descriptors counted open, plus PER_SESSION per accept since

    @property
    def reactor(self):
        if self._reactor is None:
            from twisted.internet import reactor
            self._reactor = reactor
        return self._reactor

    def room(self, recount=False):
        """
        (free descriptors at least, the margin).  The open ones are counted
        again when the estimate leaves no more than the margin free (or when
        C{recount}).
        """
        limit = softLimit()
        margin = self.margin if self.margin is not None else max(32, limit // 128)
        if recount or self._open is None or limit - self._open <= margin:
            try:
                self._open = countOpen()
            except OSError as e:
                if e.errno not in EXHAUSTION:
                    raise
                self._open = limit  # not even one for the directory
        return max(0, limit - self._open), margin

    # -- who is steered

    def subscribe(self, table):
        """C{table._steer()} is called whenever C{paused} changes."""
        self._tables.add(table)

    def unsubscribe(self, table):
        self._tables.discard(table)

    def watch(self, port):
        """Guard C{port}'s accept batches (a Twisted listening port; others are ignored)."""
        if port in self._ports or not hasattr(port, "numberAccepts") or not hasattr(port, "doRead"):
            return
        original = port.doRead
        self._ports[port] = original
        inner = getattr(port, "_logger", None)
        if inner is not None:
            def observe(event, forward=inner.observer):
                forward(event)
                self._acceptLogged(event)

            port._logger = Logger(namespace=inner.namespace, observer=observe)

        def doRead():
            if self.paused:
                port.stopReading()
                return None
            free, margin = self.room()
            if free <= margin:
                self.exhausted("accept", errno.EMFILE if free == 0 else None)
                return None
            batch = port.numberAccepts = max(1, min(port.numberAccepts, (free - margin) // PER_SESSION))
            try:
                return original()
            finally:
                # Twisted leaves numberAccepts at the count accepted when the
                # backlog ran dry, else raises it: at most `batch` came in.
                if self._open is not None:
                    self._open += PER_SESSION * min(batch, port.numberAccepts)

        port.doRead = doRead

    def unwatch(self, port):
        original = self._ports.pop(port, None)
        if original is not None:
            port.doRead = original
            port.__dict__.pop("_logger", None)

    def _acceptLogged(self, event):
        """Twisted's port logs accept(2)'s EMFILE (and drops what it accepted); pause then."""
        fmt = event.get("log_format") or ""
        if fmt.startswith("EMFILE encountered"):
            self.exhausted("accept", errno.EMFILE)
        elif fmt.startswith("Could not accept new connection") and event.get("acceptError") in _NAMES:
            self.exhausted("accept", _NAMES[event["acceptError"]])

    # -- episodes

    def exhausted(self, where, error=None):
        """
        Descriptors ran out (or the margin is gone) while doing C{where}
        ("accept", "connect", ...): pause accepting, retry after a delay.
        """
        if self.paused:
            return
        now = self.reactor.seconds()
        self.paused = True
        self._pauses += 1
        if self._since is None:
            # A shortage soon after the last one continues its back-off.
            if self._recovered is None or now - self._recovered > 10 * self.longest:
                self.delay = self.first
            self._since = now
            self.episodes += 1
            free, margin = self.room(recount=True)
            self.log.warn(
                "out of file descriptors ({where}: {error}): accepting paused, {free} free of {limit}, "
                "keeping {margin}",
                descriptors="exhausted", where=where, error=errno.errorcode.get(error, "margin"),
                free=free, limit=softLimit(), margin=margin)
        self._steer()
        self._retry = self.reactor.callLater(self.delay, self._check)

    def _check(self):
        self._retry = None
        free, margin = self.room(recount=True)
        if free <= margin:
            self.delay = min(self.delay * 2, self.longest)
            self._pauses += 1
            self._retry = self.reactor.callLater(self.delay, self._check)
            return
        now = self.reactor.seconds()
        self.log.info(
            "file descriptors available again: accepting resumed after {duration:.2f}s ({pauses} pauses)",
            descriptors="recovered", duration=now - self._since, pauses=self._pauses, free=free,
            limit=softLimit())
        self.paused = False
        self._since = None
        self._pauses = 0
        self._recovered = now
        self.delay = min(self.delay * 2, self.longest)  # kept if the shortage comes back soon
        self._steer()

    def _steer(self):
        for table in list(self._tables):
            table._steer()
        if self.paused:
            for port in list(self._ports):
                port.stopReading()

    def stop(self):
        """Cancel a pending retry (tests; a stopping process)."""
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None


#: The process's guard: descriptors are a per-process resource.
guard = DescriptorGuard()

__all__ = ["DescriptorGuard", "guard", "exhaustionErrno", "countOpen", "softLimit", "EXHAUSTION"]
