"""
What every splice keeps, whatever path moves its bytes: the byte count, the
maximum, the idle timer and the single ending (OpenBSD's C{sounsplice}).
"""

import errno

from twisted.internet.defer import Deferred
from zope.interface import implementer

from splicing.core.errors import SpliceError
from splicing.interfaces import ISplice
from splicing.core.result import Reason, SpliceResult

#: The most a framer is shown at a time: enough for any framing unit (an
#: HTTP chunk-size or trailer line is at most 4 KiB), small enough that a
#: peek copies next to nothing.
FRAMER_PEEK = 8192


class Last(int):
    """
    A framer's answer: this many more bytes, and the framed stream ends
    there (the splice then ends with MAX, the bytes after it untouched).
    """

    __slots__ = ()

    def __repr__(self):
        return "Last(%d)" % (self,)


@implementer(ISplice)
class SpliceBase:
    """
    The bookkeeping of one splice.  Subclasses move bytes, call L{_touch}
    when something moved and L{_end} when it is over, and implement
    L{_dissolve} (give the transports back) and L{_afterDone}.
    """

    backend = None
    #: Called at the maximum to go on past it (see L{splicing.core.splice.splice}).
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

    def _frame(self, data):
        """
        The source has been read up to the maximum and C{data} follows it
        (peeked or already read; at most L{FRAMER_PEEK} bytes): ask the
        framer how far the stream goes on.  Returns whether the maximum was
        extended; False means the framer needs more than C{data}.  Once the
        framer answers L{Last}, it is dropped and the splice ends (MAX) at
        the new maximum like any other.
        """
        more = self.framer(data)
        if isinstance(more, bool) or not isinstance(more, int) or more < 0:
            raise SpliceError(errno.EINVAL, "a framer returned %r" % (more,))
        if isinstance(more, Last):
            self.framer = None
        elif not more:
            if len(data) >= FRAMER_PEEK:
                raise SpliceError(errno.EINVAL, "a framer needed more than %d bytes" % (FRAMER_PEEK,))
            return False
        self.max += more
        return True

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
