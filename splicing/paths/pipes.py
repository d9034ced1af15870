"""
A pool of pipes for the kernel path, as HAProxy keeps one.

A pipe is borrowed only while spliced bytes sit in it, so an idle session
costs no descriptors.  Pipes are grown with F_SETPIPE_SZ up to
/proc/sys/fs/pipe-max-size (quietly keeping the default size where the
kernel refuses), a pipe that still holds data after an error is closed
rather than reused, and the number of pipes alive is capped: running out is
back-pressure (the splice waits for a pipe), never an exception.
"""

import errno
import fcntl
import os

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
DEFAULT_SIZE = 1 << 20
SMALL_SIZE = 65536  # Linux's default pipe size

#: Seconds before splices that found no descriptor for a pipe try again.
#: Descriptors freed elsewhere (a closed session) return no pipe to the
#: pool, so waiting only for one would stall a splice when none is in use.
RETRY = 0.05


def _readInt(path, default):
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return default


def maxPipeSize():
    return _readInt("/proc/sys/fs/pipe-max-size", SMALL_SIZE)


def pipeBudget():
    """
    Bytes of pipe capacity this process should hold at most: past the user's
    pipe-user-pages-soft the kernel hands out one-page pipes, which would
    make splicing crawl; stay well under it (half of it, leaving room for
    other processes of the same user).
    """
    pages = _readInt("/proc/sys/fs/pipe-user-pages-soft", 16384) or 16384
    return pages * 4096 // 2


class Pipe:
    """Both ends of one pipe, and how many bytes it can hold."""

    __slots__ = ("r", "w", "capacity")

    def __init__(self, size):
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self.capacity = fcntl.fcntl(self.w, F_SETPIPE_SZ, size)
        except OSError:  # EPERM past the user's pipe pages: keep what we have
            self.capacity = fcntl.fcntl(self.w, F_GETPIPE_SZ)

    def close(self):
        os.close(self.r)
        os.close(self.w)


class PipePool:
    """
    Pipes for splices: C{get()} one before moving bytes, C{put(pipe, empty)}
    it back once they are out.

    @ivar size: the capacity asked of new pipes.
    @ivar limit: the most pipes alive at once (borrowed plus idle).
    @ivar keep: the most idle pipes kept for reuse.
    @ivar budget: bytes of pipe capacity to stay under (see L{pipeBudget});
        past it new pipes get the default 64 KiB.
    """

    def __init__(self, size=DEFAULT_SIZE, limit=1024, keep=8, budget=None):
        self.size = min(size, maxPipeSize())
        self.limit = limit
        self.keep = keep
        self.budget = pipeBudget() if budget is None else budget
        self.capacity = 0  # bytes of capacity of every pipe alive
        self.inUse = 0
        self._idle = []
        self._waiters = []
        self._short = False  # the last pipe could not be made (EMFILE/ENFILE)
        self._retry = None

    @property
    def idle(self):
        return len(self._idle)

    def get(self):
        """A pipe, or None when C{limit} pipes are alive (wait with L{whenAvailable})."""
        if self._idle:
            pipe = self._idle.pop()
        elif self.inUse + len(self._idle) < self.limit:
            # Large pipes while the budget allows, the default size after.
            size = self.size if self.capacity + self.size <= self.budget else SMALL_SIZE
            try:
                pipe = Pipe(size)
            except OSError as e:
                if e.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                    raise
                self._short = True  # the same as running out, retried after RETRY
                return None
            self.capacity += pipe.capacity
        else:
            return None
        self.inUse += 1
        return pipe

    def put(self, pipe, empty=True):
        """Return C{pipe}; one that may still hold data is closed."""
        self.inUse -= 1
        if empty and len(self._idle) < self.keep and pipe.capacity == self.size:
            self._idle.append(pipe)
        else:
            self.capacity -= pipe.capacity
            pipe.close()
        self._wake()

    def whenAvailable(self, callback, reactor=None):
        """
        Call C{callback()} once, the next time a pipe is returned, or after
        L{RETRY} seconds if the pool ran short of descriptors.
        """
        self._waiters.append(callback)
        if self._short and self._retry is None:
            if reactor is None:
                from twisted.internet import reactor
            self._retry = reactor.callLater(RETRY, self._wake)

    def _wake(self):
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._short = False
        waiters, self._waiters = self._waiters, []
        for callback in waiters:
            callback()

    def clear(self):
        """Close the idle pipes (at shutdown, or to count descriptors)."""
        while self._idle:
            pipe = self._idle.pop()
            self.capacity -= pipe.capacity
            pipe.close()
