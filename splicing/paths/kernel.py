"""
The kernel path: Linux splice(2), source socket -> pipe -> drain socket.

Bytes never enter the process.  A pipe is borrowed from the pool when bytes
are to be moved and returned as soon as it is empty.  SPLICE_F_MORE is never
used (it delays the last segment, as Go learnt).
"""

import os

from zope.interface import implementer

from splicing.interfaces import IMover
from splicing.paths.pipes import PipePool

FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)

_pool = None


def pipePool():
    """The process's shared pipe pool."""
    global _pool
    if _pool is None:
        _pool = PipePool()
    return _pool


@implementer(IMover)
class KernelMover:
    name = "kernel"

    def __init__(self, srcfd, dstfd, pool=None):
        self.srcfd = srcfd
        self.dstfd = dstfd
        self.pool = pool if pool is not None else pipePool()
        self.pipe = None
        self.pending = 0
        self.eof = False

    crossed = False  # a byte stream has no datagram to cross max with

    @property
    def holding(self):
        return self.pending > 0

    @property
    def space(self):
        if self.pipe is None:
            return self.pool.size
        return self.pipe.capacity - self.pending

    def fill(self, limit):
        pipe = self.pipe
        if pipe is None:
            pipe = self.pipe = self.pool.get()
            if pipe is None:
                return None
        try:
            n = os.splice(self.srcfd, pipe.w, min(limit, pipe.capacity - self.pending), flags=FLAGS)
        except OSError:
            self._returnIfEmpty()
            raise
        self.pending += n
        if not n:
            self.eof = True
            self._returnIfEmpty()
        return n

    def flush(self):
        if not self.pending:
            return 0
        n = os.splice(self.pipe.r, self.dstfd, self.pending, flags=FLAGS)
        self.pending -= n
        self._returnIfEmpty()
        return n

    def _returnIfEmpty(self):
        if self.pipe is not None and not self.pending:
            self.pool.put(self.pipe)
            self.pipe = None

    def release(self):
        pipe, self.pipe = self.pipe, None
        if pipe is None:
            return b""
        chunks = []
        left = self.pending
        try:
            while left:
                chunk = os.read(pipe.r, left)
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
        except OSError:
            pass
        self.pending = 0
        self.pool.put(pipe, empty=not left)
        return b"".join(chunks)

    def discard(self):
        """
        Give the pipe back without reading what it holds (its reader is
        gone): a pipe that still holds bytes is closed by the pool.
        """
        pipe, self.pipe = self.pipe, None
        if pipe is not None:
            self.pool.put(pipe, empty=not self.pending)
        self.pending = 0

    def whenAvailable(self, callback):
        self.pool.whenAvailable(callback)
