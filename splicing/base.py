"""
What every splice keeps, whatever path moves its bytes: the byte count, the
maximum, the idle timer and the single ending (OpenBSD's C{sounsplice}).
"""

import errno

from twisted.internet.defer import Deferred
from zope.interface import implementer

from splicing.errors import SpliceError
from splicing.interfaces import ISplice
from splicing.result import Reason, SpliceResult


@implementer(ISplice)
class SpliceBase:
    """
    The bookkeeping of one splice.  Subclasses move bytes, call L{_touch}
    when something moved and L{_end} when it is over, and implement
    L{_dissolve} (give the transports back) and L{_afterDone}.
    """

    backend = None
    #: Called at the maximum to go on past it (see L{splicing.splice.splice}).
    framer = None

    def __init__(self, reactor, max, idle):
        self.reactor = reactor
        self.max = max
        self.idle = idle
        self.length = 0
        self.done = Deferred()
        self.result = None
        self._ended = False
        self._idleCall = None
        self._last = reactor.seconds()

    def __repr__(self):
        return "<%s %s length=%d%s>" % (
            type(self).__name__,
            self.backend,
            self.length,
            " ended" if self._ended else "",
        )

    # -- idle timeout: one timer per direction, re-armed lazily

    def _startIdle(self):
        if self.idle:
            self._idleCall = self.reactor.callLater(self.idle, self._idleCheck)

    def _touch(self):
        self._last = self.reactor.seconds()

    def _idleCheck(self):
        self._idleCall = None
        left = self._last + self.idle - self.reactor.seconds()
        if left > 0:
            self._idleCall = self.reactor.callLater(left, self._idleCheck)
        else:
            self._end(Reason.IDLE)

    # -- the maximum

    def _atMax(self, data=b""):
        """
        The maximum is reached and nothing is in flight.  Without a framer
        the splice ends (MAX) and C{data} (read past the maximum) goes back
        to the source.  A framer consumes C{data} and either extends the
        maximum (an int: that many more bytes; 0: it needs more bytes first)
        or ends the splice, returning the bytes that follow the framed
        stream.  Returns whether the splice goes on.
        """
        if self.framer is not None:
            more = self.framer(data)
            if not isinstance(more, bytes):
                if isinstance(more, bool) or not isinstance(more, int) or more < 0:
                    raise SpliceError(errno.EINVAL, "a framer returned %r" % (more,))
                self.max += more
                return True
            data = more
        self._giveBack(data)
        self._end(Reason.MAX)
        return False

    def _giveBack(self, data):
        """Bytes read past the maximum: they belong to the source again."""
        raise NotImplementedError

    # -- the ending

    def unsplice(self):
        """Dissolve now; what was not moved stays with the source."""
        if self._ended:
            raise SpliceError(errno.EPROTO, "the splice has already ended")
        self._end(Reason.UNSPLICED)

    def _end(self, reason, error=None, failed=None):
        """
        Dissolve once: give the transports back, fire C{done}, then tell the
        side that C{failed} (if any) that its connection is lost.
        """
        if self._ended:
            return
        self._ended = True
        if self._idleCall is not None and self._idleCall.active():
            self._idleCall.cancel()
        self._idleCall = None
        self._dissolve()
        # No log event here: C{done} says it, and a relay logs whole sessions
        # (twistd writes debug events too: two per session cost session rate).
        self.result = SpliceResult(self.length, reason, error)
        self.done.callback(self.result)
        self._afterDone(failed)

    def _dissolve(self):
        raise NotImplementedError

    def _afterDone(self, failed):
        raise NotImplementedError
