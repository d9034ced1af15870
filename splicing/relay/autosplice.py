"""
A relay direction that copies small reads and splices bulk (HAProxy's
C{splice-auto}).

Setting up a splice costs more than a short session moves: describing both
transports, borrowing them, a pipe, Deferreds, and the teardown.  A request
and its answer, a redis command, a 1 KiB session: each is one read and one
write, which Twisted's own read plus one write do at no set-up cost.  So a
direction starts as a copy (L{splicing.relay.fallback.CopyDirection}: the
drain's flow control pauses the source) and turns into a splice the first
time a read fills Twisted's read buffer, which is where bulk begins (or
once it copied 64 KiB in all: a busy relay reads bulk in smaller pieces).  The
splice then flushes what the copy queued in the drain first (a splice's
"queued data first"), so nothing is lost or reordered, and the direction's
byte count is the copy's plus the splice's.

The direction reports the path its bulk takes (C{backend}: "kernel" on
Linux), from the start: that is the session's path in the log and metrics.
"""

from twisted.internet import defer

from splicing import paths
from splicing.core.endpoint import describe
from splicing.core.errors import SpliceError
from splicing.core.result import Reason, SpliceResult
from splicing.core.takeover import writeNow
from splicing.relay.fallback import CopyDirection, spliceOn, spliceOrCopy

#: A read this long filled Twisted's read buffer (C{abstract.FileDescriptor.bufferSize}): bulk.
BULK = 65536
#: Copied this much in all, a direction is spliced even if no read filled the buffer (a busy
#: relay reads a bulk stream in smaller pieces; copying it would cost more CPU per byte).
COPY_AT_MOST = BULK

_planned = {}  # (source class, drain class) -> the path "auto" picks for them, or None


def plannedPath(source, drain):
    """The socket path ("kernel", "mbuf") C{auto} would splice C{source} into C{drain} on, or None."""
    key = (type(source), type(drain))
    if key not in _planned:
        try:
            path = paths.choose("auto", describe(source), describe(drain))
        except SpliceError:
            return None  # (this pair, now: a closed socket says nothing about the next one)
        _planned[key] = path if path in ("kernel", "mbuf") else None
    return _planned[key]


def autoSpliceOrCopy(source, drain, path):
    """
    For C{path} "auto" between two sockets a splice can serve: an
    L{AutoDirection}; otherwise what L{spliceOrCopy} gives (a forced path
    is always spliced from the first byte).
    """
    planned = plannedPath(source, drain) if path == "auto" else None
    if planned is None:
        return spliceOrCopy(source, drain, path)
    return AutoDirection(source, drain, path, planned)


class AutoDirection(CopyDirection):
    """
    Copies until a read fills the buffer, then splices (see the module).
    Looks like a splice to the relay: C{length}, C{backend}, C{result},
    C{done}, C{unsplice()}; C{copying} says whether the source's protocol
    still hands it the bytes.
    """

    __slots__ = ("path", "backend", "copied", "copying", "splice")  # and CopyDirection's (its length unused)

    def __init__(self, source, drain, path, planned):
        self.source, self.drain = source, drain
        self.path, self.backend = path, planned
        self.copied = 0
        self.result = None
        self.done = defer.Deferred()
        self.copying = True
        self.splice = None
        drain.registerProducer(source, True)

    @property
    def length(self):
        return self.copied + (self.splice.length if self.splice is not None else 0)

    def moved(self, data):
        self.copied += len(data)
        writeNow(self.drain, data)  # one send now when nothing waits before it
        if (len(data) >= BULK or self.copied >= COPY_AT_MOST) and self.copying and self.path is not None:
            self._spliceTheRest()

    def _spliceTheRest(self):
        """Bulk: the splice takes over the source (and flushes the copied bytes the drain holds first)."""
        self.drain.unregisterProducer()
        try:
            s = spliceOn(self.source, self.drain, self.path)
        except SpliceError:
            self.drain.registerProducer(self.source, True)  # keep copying: it still moves every byte
            self.path = None
            return
        self.copying = False
        self.splice = s
        self.backend = s.backend
        s.done.addCallback(self._spliceDone)

    def _spliceDone(self, result):
        self.result = SpliceResult(self.copied + result.length, result.reason, result.error)
        self.done.callback(self.result)

    def end(self, reason=Reason.EOF):
        if self.result is not None or not self.copying:
            return
        self.copying = False
        self.result = SpliceResult(self.copied, reason)
        self.drain.unregisterProducer()
        self.done.callback(self.result)

    def unsplice(self):
        if self.splice is not None:
            if self.splice.result is None:
                self.splice.unsplice()
        else:
            self.end(Reason.UNSPLICED)


__all__ = ["AutoDirection", "autoSpliceOrCopy", "plannedPath"]
