"""
A timeout that is set and cleared on every request and rarely reached.

The proxy's header and backend timeouts used to be a C{callLater} and a
C{cancel} each per request: two heap operations and a cancelled call left in
the reactor's heap each time.  A L{Deadline} is a time, and at most one
C{DelayedCall} which, when it comes, looks at the time: a cleared or moved
deadline costs one attribute, and a busy connection schedules about one call
per timeout period.
"""


class Deadline:
    """
    Call C{callback()} once C{seconds} have passed since L{start}, unless
    L{stop} came first.

    @ivar armed: whether a deadline is set.
    """

    def __init__(self, reactor, seconds, callback):
        self.reactor = reactor
        self.seconds = seconds
        self.callback = callback
        self.at = None
        self._call = None

    @property
    def armed(self):
        return self.at is not None

    def start(self):
        """Set the deadline C{seconds} from now (moving it, if set)."""
        self.at = self.reactor.seconds() + self.seconds
        if self._call is None:
            self._call = self.reactor.callLater(self.seconds, self._due)

    def stop(self):
        """Clear the deadline (the scheduled call, if any, will find nothing to do)."""
        self.at = None

    def cancel(self):
        """Clear the deadline and drop the scheduled call (the connection is over)."""
        self.at = None
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _due(self):
        self._call = None
        if self.at is None:
            return
        left = self.at - self.reactor.seconds()
        if left > 0:  # moved since this call was scheduled
            self._call = self.reactor.callLater(left, self._due)
            return
        self.at = None
        self.callback()


__all__ = ["Deadline"]
