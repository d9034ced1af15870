"""
One timer per relay for its sessions' idle timeouts.

A DelayedCall per session, rescheduled every quarter of C{idle}, costs a
C{callLater} and a cancel per session and a few hundred bytes per idle
session.  L{IdleSweep} instead looks at every watched session once per
quarter of C{idle}: a session whose byte count stood still since the sweep
that last saw it move, for C{idle} seconds or more, is told so.  A session
therefore ends between C{idle} and C{1.25 * idle} after its last byte, as
with the per-session checks it replaces.
"""


class IdleSweep:
    """
    Watches sessions: objects with C{moved()} (bytes moved so far, both
    ways) and C{idleTimeout()} (called once when idle for C{idle} seconds).
    """

    __slots__ = ("reactor", "idle", "sessions", "_call")

    def __init__(self, reactor, idle):
        self.reactor = reactor
        self.idle = idle
        self.sessions = {}  # session -> [bytes moved at the last change, when it was seen]
        self._call = None

    def watch(self, session):
        self.sessions[session] = [session.moved(), self.reactor.seconds()]
        if self._call is None:
            self._call = self.reactor.callLater(self.idle / 4.0, self._sweep)

    def forget(self, session):
        self.sessions.pop(session, None)
        if not self.sessions and self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _sweep(self):
        self._call = None
        now, idle = self.reactor.seconds(), self.idle
        timedOut = []
        for session, seen in self.sessions.items():
            total = session.moved()
            if total != seen[0]:
                seen[0], seen[1] = total, now
            elif now - seen[1] >= idle:
                timedOut.append(session)
        for session in timedOut:
            self.sessions.pop(session, None)
            session.idleTimeout()
        if self.sessions and self._call is None:
            self._call = self.reactor.callLater(idle / 4.0, self._sweep)


class DeadlineSweep:
    """
    Callbacks due at a deadline, checked every C{tick} seconds by one
    DelayedCall: for deadlines that are almost always cancelled (a connect
    timeout), where a DelayedCall each would cost a C{callLater} and a
    cancel per session.  A callback runs between its deadline and C{tick}
    seconds after it.  The timer is not cancelled when nothing is left
    (the next deadline would start it again at once): it lapses.
    """

    __slots__ = ("reactor", "tick", "entries", "_call")

    def __init__(self, reactor, tick):
        self.reactor = reactor
        self.tick = tick
        self.entries = {}  # key -> (deadline, callback)
        self._call = None

    def add(self, key, seconds, callback):
        """Call C{callback()} once C{seconds} have passed, unless C{key} is discarded first."""
        self.entries[key] = (self.reactor.seconds() + seconds, callback)
        if self._call is None:
            self._call = self.reactor.callLater(self.tick, self._sweep)

    def discard(self, key):
        self.entries.pop(key, None)

    def _sweep(self):
        self._call = None
        now = self.reactor.seconds()
        due = [key for key, (deadline, _) in self.entries.items() if deadline <= now]
        for key in due:
            entry = self.entries.pop(key, None)
            if entry is not None:
                entry[1]()
        if self.entries and self._call is None:
            self._call = self.reactor.callLater(self.tick, self._sweep)


__all__ = ["IdleSweep", "DeadlineSweep"]
