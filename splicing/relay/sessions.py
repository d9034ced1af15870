"""
A relay's running sessions: the C{--max-sessions} cap and graceful drain.

When the cap is reached the listening ports stop reading, so new clients
wait in the kernel's accept backlog instead of being refused (the backlog
itself is the endpoint's C{backlog=} argument); the few a port accepted in
the same turn wait here, paused, for a slot.  The ports are also paused
while the process is short of descriptors (L{splicing.relay.accepting}): a port
reads only when neither reason holds.  At shutdown the table says when the
last session ended.
"""

import collections

from twisted.internet import defer

from splicing.relay import accepting


class SessionTable:
    """
    @ivar active: the sessions running (objects with C{begin()} and C{abort(how)}).
    @ivar waiting: sessions accepted while full, in arrival order.
    @ivar ports: the listening ports to pause when full.
    @ivar guard: the L{splicing.relay.accepting.DescriptorGuard} pausing them
        when descriptors run short (the process's own by default).
    """

    def __init__(self, maxSessions=0, guard=None):
        self.maxSessions = maxSessions
        self.guard = accepting.guard if guard is None else guard
        self.active = set()
        self.waiting = collections.deque()
        self.ports = []
        self.accepting = True
        self._empty = []
        self._paused = None  # what the ports were last told (None: nothing yet)

    def __len__(self):
        return len(self.active)

    @property
    def full(self):
        return bool(self.maxSessions) and len(self.active) >= self.maxSessions

    def admit(self, session):
        """Begin C{session} now, or when a slot frees."""
        if self.full:
            self.waiting.append(session)
        else:
            self.active.add(session)
            session.begin()
        self._steer()

    def release(self, session):
        """C{session} ended (or went away while waiting); idempotent."""
        if session in self.waiting:
            self.waiting.remove(session)
        if session not in self.active:
            return
        self.active.discard(session)
        while self.waiting and not self.full:
            nxt = self.waiting.popleft()
            self.active.add(nxt)
            nxt.begin()
        self._steer()
        if not self.active and not self.waiting:
            empty, self._empty = self._empty, []
            for d in empty:
                d.callback(None)

    def _steer(self, force=False):
        """
        Pause the ports when full or short of descriptors, resume them when
        neither: only when that changes (it is asked at every admit and release).
        """
        pause = self.full or not self.accepting or self.guard.paused
        if pause == self._paused and not force:
            return
        self._paused = pause
        for port in self.ports:
            if pause:
                port.stopReading()
            else:
                port.startReading()

    def addPort(self, port):
        self.ports.append(port)
        self.guard.subscribe(self)
        self.guard.watch(port)
        self._steer(force=True)

    def removePort(self, port):
        if port in self.ports:
            self.ports.remove(port)
            self.guard.unwatch(port)
        if not self.ports:
            self.guard.unsubscribe(self)

    def whenEmpty(self):
        """A Deferred that fires once no session runs or waits."""
        if not self.active and not self.waiting:
            return defer.succeed(None)
        d = defer.Deferred()
        self._empty.append(d)
        return d

    def abortAll(self, how="shutdown"):
        for session in list(self.waiting) + list(self.active):
            session.abort(how)


__all__ = ["SessionTable"]
