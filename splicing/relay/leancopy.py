"""
One direction of a lean session: small reads copied, bulk spliced.

The same policy as L{splicing.relay.autosplice} (HAProxy's C{splice-auto}),
on plain non-blocking sockets: a read goes into one shared buffer with
C{recv_into} and out with one C{send}; what the drain does not take waits
(the source is not read meanwhile, which is the flow control).  When a read
fills the buffer, or once the direction copied 64 KiB, it splices: source
-> pooled pipe -> drain (L{splicing.paths.kernel.KernelMover}), the copied
bytes already sent first.  EOF shuts the drain's write side once everything
read has left.  The count is exact: bytes copied plus bytes spliced, each
counted once it was read from the source and then delivered in order.
"""

import select
import socket

from splicing.core.result import Reason
from splicing.paths.kernel import KernelMover
from splicing.relay.autosplice import BULK, COPY_AT_MOST

IN, OUT = select.EPOLLIN, select.EPOLLOUT
ERR = select.EPOLLERR | select.EPOLLHUP

#: Splice rounds per readiness event (each up to a pipe's capacity): others get their turn.
ROUNDS = 16

_buffer = bytearray(BULK)  # one for every direction: a read leaves it before the next one
_view = memoryview(_buffer)


class LeanDirection:
    """
    C{src} to C{dst} for C{session} (which is told of changes through
    C{rewatch}, C{directionDone} and C{failed}).

    @ivar copied: bytes copied in user land.
    @ivar spliced: bytes moved by splice(2).
    @ivar pending: bytes read that the drain has not taken yet (copying).
    @ivar mover: the L{KernelMover} once the direction splices.
    @ivar result: None while running, then a L{Reason}.
    """

    __slots__ = ("session", "src", "dst", "copied", "spliced", "pending", "mover", "eof", "result", "_waiting")

    def __init__(self, session, src, dst):
        self.session, self.src, self.dst = session, src, dst
        self.copied = self.spliced = 0
        self.pending = self.mover = self.result = None
        self.eof = self._waiting = False

    @property
    def length(self):
        return self.copied + self.spliced

    def wantsRead(self):
        return (self.result is None and not self.eof and self.pending is None and not self._waiting
                and (self.mover is None or not self.mover.pending))

    def wantsWrite(self):
        return self.result is None and (self.pending is not None or (self.mover is not None and self.mover.pending > 0))

    # -- the source is readable

    def readable(self):
        if self.mover is not None:
            self._splice()
            return
        try:
            n = self.src.recv_into(_buffer)
        except BlockingIOError:
            return
        except OSError as e:
            self.session.failed(self, e.errno)
            return
        if not n:
            self._sourceEnded()
            return
        self.copied += n
        if self._send(_view[:n]) and (n == BULK or self.copied >= COPY_AT_MOST):
            self.mover = KernelMover(self.src.fileno(), self.dst.fileno())

    def _send(self, data):
        """Send C{data}; keep what the drain does not take.  False if the session failed."""
        try:
            sent = self.dst.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            self.session.failed(self, e.errno)
            return False
        if sent < len(data):
            self.pending = bytes(data[sent:])
            self.session.rewatch()
        return True

    def _splice(self):
        m = self.mover
        for _ in range(ROUNDS):
            try:
                n = m.fill(1 << 30)
            except BlockingIOError:
                return
            except OSError as e:
                self.session.failed(self, e.errno)
                return
            if n is None:  # the pool has no pipe now: wait for one
                self._waiting = True
                self.session.rewatch()
                m.whenAvailable(self._pipeReturned)
                return
            if not n:
                self._sourceEnded()
                return
            self.spliced += n
            if not self._flush():
                return

    def _flush(self):
        """Move what the pipe holds to the drain; False when some stays (or the session failed)."""
        try:
            self.mover.flush()
        except BlockingIOError:
            pass
        except OSError as e:
            self.session.failed(self, e.errno)
            return False
        if self.mover.pending:
            self.session.rewatch()
            return False
        return True

    def _pipeReturned(self):
        self._waiting = False
        self.session.rewatch()

    def _sourceEnded(self):
        self.eof = True
        if self.pending is None and (self.mover is None or not self.mover.pending):
            self._finish()
        else:
            self.session.rewatch()  # read no more; shut the drain once what is queued left

    # -- the drain is writable

    def writable(self):
        if self.result is not None:
            return
        if self.pending is not None:
            data = self.pending
            try:
                sent = self.dst.send(data)
            except BlockingIOError:
                return
            except OSError as e:
                self.session.failed(self, e.errno)
                return
            if sent < len(data):
                self.pending = data[sent:]
                return
            self.pending = None
            if self.eof:
                self._finish()
                return
        elif self.mover is not None and self.mover.pending:
            if not self._flush():
                return
            if self.eof:
                self._finish()
                return
        else:
            return
        self.session.rewatch()

    # -- endings

    def _finish(self):
        """Everything up to the source's EOF left: half-close the drain."""
        try:
            self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.result = Reason.EOF
        self.session.directionDone(self)

    def drop(self):
        """
        The session is ending: give the pipe back (one that still holds
        bytes is closed: they are lost with the session, as a reset loses
        what the socket held).
        """
        if self.mover is not None:
            self.mover.discard()
        self.pending = None
        if self.result is None:
            self.result = Reason.UNSPLICED


__all__ = ["LeanDirection", "IN", "OUT", "ERR"]
