"""
The socket paths' engine: OpenBSD's C{somove()} in the reactor.

One loop, driven by the source's read events and the drain's write events,
moves bytes through an L{IMover} (a pipe for the kernel path, an mbuf chain
for the mbuf path).  The loop alone decides order, maximum, EOF and errors,
so both paths have the same semantics:

  1. bytes in flight go to the drain first;
  2. when nothing is in flight, bytes the application wrote to the drain
     transport go out before more is read (so a C{write()} made before
     C{splice()} arrives before any spliced byte);
  3. then the source is read, never past C{max}.
"""

import errno
import socket

from twisted.internet import error as twerror
from twisted.python.failure import Failure

from splicing.core.base import FRAMER_PEEK, SpliceBase
from splicing.core.result import Reason

#: A stream read that returns less than asked and less than this emptied the
#: socket (small messages): the loop does not read again until the next read
#: event, which saves a failing system call per message.  Bulk reads stop
#: short of a pipe for other reasons (pipe slots), so they read again.
SHORT_READ = 65536

#: Passes of the loop per readiness event: bounds the time one splice holds
#: the reactor (each pass moves up to a pipe or an in-flight budget).
ROUNDS = 8


def _errnoOf(reason, borrowed):
    """The errno to report for a connection lost while spliced."""
    value = reason.value if reason is not None else None
    if getattr(value, "errno", None):
        return value.errno
    t = borrowed.transport
    if (reason is not None and reason.check(twerror.ConnectionAborted)) or t.disconnecting or getattr(t, "_aborting", False):
        return errno.ECONNABORTED
    return errno.ECONNRESET


class SocketSplice(SpliceBase):
    """A splice between two borrowed socket transports."""

    def __init__(self, reactor, src, dst, mover, max, idle):
        SpliceBase.__init__(self, reactor, max, idle)
        self.backend = mover.name
        self._src = src
        self._dst = dst
        self._mover = mover
        self._received = 0  # bytes taken from the source (moved or in flight)
        self._head = b""  # bytes owed from an earlier splice, sent first
        self._stop = None  # EOF or SHORT: end once nothing is in flight
        self._fillBlocked = False  # EAGAIN with bytes in flight: wait for a flush
        self._dry = False  # the source had nothing to read
        self._waitingForBuffer = False
        self._kick = None
        self._past = b""  # read past the maximum, not yet accepted by the framer
        self._tail = b""  # accepted by the framer, sent after what is in flight

    def start(self):
        self._src.takeRead(self)
        self._dst.takeWrite(self)
        self._head = self._src.takeLeftover(self.max)
        self._received = len(self._head)
        self._startIdle()
        # Never move or end inside splice(): the first pass runs from the
        # reactor, on the first readiness event (an HTTP proxy starts a splice
        # per chunk: no loop turn of its own for each).  A UDP splice must not
        # wait for one: an error already pending on the port (ICMP "refused")
        # shows as EPOLLERR alone, which Twisted takes for a lost connection;
        # and a splice with nothing to wait for (max=0) needs its own turn.
        if self._src.datagram or self.max == 0:
            self._kick = self.reactor.callLater(0, self._move)
        else:
            self._interest(False)

    # -- readiness events (installed as the transports' doRead/doWrite)

    def doRead(self):
        self._dry = False
        self._move()

    def doWrite(self):
        if self._dst.closing():
            t = self._dst.transport
            err = errno.EPIPE if not t.disconnecting else errno.ECONNABORTED
            self._end(Reason.ERROR, err)
            return t.doWrite()  # Twisted's own, now restored: it closes
        self._move()

    def _bufferAvailable(self):
        self._waitingForBuffer = False
        if not self._ended:
            self._move()

    # -- the loop

    def _move(self):
        if self._ended:
            return
        self._kick = None
        mover = self._mover
        dst = self._dst
        moved = False
        drainBlocked = False
        for _ in range(ROUNDS):
            progress = False
            if self._tail and not (self._head or mover.holding):
                self._head, self._tail = self._tail, b""
            if self._head:
                try:
                    n = dst.socket.send(self._head)
                except BlockingIOError:
                    n = 0
                except OSError as e:
                    return self._end(Reason.ERROR, e.errno, dst)
                if n:
                    self._head = self._head[n:]
                    self.length += n
                    progress = True
                if self._head:
                    drainBlocked = True
            if not self._head and mover.holding:
                before = mover.pending
                try:
                    mover.flush()
                except BlockingIOError:
                    pass
                except OSError as e:
                    return self._end(Reason.ERROR, e.errno, dst)
                n = before - mover.pending
                if n or not mover.holding:
                    self.length += n
                    self._fillBlocked = False
                    progress = True
                if mover.holding:
                    drainBlocked = True
            if self.max is not None and self.length >= self.max and self.framer is None:
                return self._end(Reason.MAX)
            if not (self._head or mover.holding):
                if self._stop is not None:
                    return self._end(self._stop)
                if dst.hasPendingWrites():
                    why = dst.flushPendingWrites()
                    if why:
                        return self._end(Reason.ERROR, _errnoOf(Failure(why), dst), dst)
                    if dst.hasPendingWrites():
                        drainBlocked = True
                        break
            if self._stop is not None or self._dry or self._fillBlocked or self._waitingForBuffer or self._tail:
                if not progress:
                    break
                continue
            read = self._read()
            if read is None:
                return  # ended
            progress = progress or read
            if not progress:
                break
            moved = True
        if moved:
            self._touch()
        if self._stop is not None and not (self._head or self._tail or mover.holding):
            # EOF (or SHORT) seen in the last pass: no event would come for it
            return self._end(self._stop)
        self._interest(drainBlocked)

    def _read(self):
        """
        Read the source into the mover, never past the maximum.  At the
        maximum a framer may extend it, and the read goes on into the room
        left: a framed stream is not flushed at every frame.  Whether
        anything was read or framed; None if the splice ended.
        """
        mover = self._mover
        progress = False
        while True:
            max = self.max
            if max is not None and self._received >= max and self.framer is not None:
                framed = self._frameNext()
                if not framed:
                    return None if framed is None else progress
                progress = True
                if self._tail:
                    return progress  # what the framer took goes out first
                max = self.max
            limit = mover.space
            if max is not None:
                limit = min(limit, max - self._received)
            if limit <= 0:
                return progress
            try:
                n = mover.fill(limit)
            except BlockingIOError:
                if mover.holding:
                    self._fillBlocked = True  # a pipe can be full below its size
                else:
                    self._dry = True
                return progress
            except OSError as e:
                self._end(Reason.ERROR, e.errno, self._src)
                return None
            if n is None:
                self._waitingForBuffer = True
                mover.whenAvailable(self._bufferAvailable)
                return progress
            self._received += n
            if mover.eof:
                self._stop = Reason.EOF
            elif mover.crossed:
                self._stop = Reason.SHORT
            elif n < limit:
                if n < SHORT_READ and not self._src.datagram:
                    self._dry = True  # it took all there was: spare the EAGAIN call
            elif max is not None and self._received >= max and self.framer is not None:
                continue  # at a frame's end with room left: frame and read on
            return True

    def _frameNext(self):
        """
        The source has been read up to the maximum: show the framer what
        follows.  The bytes are peeked, so what the framer accepts moves
        through the mover like the rest and the bytes in flight keep
        flowing meanwhile.  Only a framing unit that arrived in pieces is
        taken from the socket (a peek would report the same bytes on every
        read event); what the framer then accepts of it goes out after the
        bytes in flight (C{_tail}).  True: the maximum was extended; False:
        wait for a read event; None: the splice ended.
        """
        src = self._src
        past = self._past
        if src.leftover:
            past += src.takeLeftover()
        try:
            got = src.socket.recv(FRAMER_PEEK - len(past), 0 if past else socket.MSG_PEEK)
        except BlockingIOError:
            got = None
        except OSError as e:
            self._past = past
            self._end(Reason.ERROR, e.errno, src)
            return None
        data = past + got if past and got else (got or past)
        if data:
            before = self.max
            if self._frame(data):
                if past:  # taken already: what the framer accepted goes out after the bytes in flight
                    accepted = data[: self.max - before]
                    self._past = data[len(accepted):]
                    self._tail += accepted
                    self._received += len(accepted)
                return True
            if got and not past:
                data = src.socket.recv(len(got))  # take what was peeked (it is there) and wait for more
            self._past = data
        if got == b"":
            self._stop = Reason.EOF
        else:
            self._dry = True
        return False

    def _interest(self, drainBlocked):
        mover = self._mover
        room = mover.space > 0 and not self._tail and (
            self.max is None or self._received < self.max or self.framer is not None
        )
        self._src.wantRead(
            self._stop is None and room and not self._fillBlocked and not self._waitingForBuffer
        )
        self._dst.wantWrite(
            bool(self._head or self._tail) or mover.holding or self._dst.hasPendingWrites() or drainBlocked
        )

    # -- endings

    def transportLost(self, borrowed, reason):
        """A transport of this splice lost its connection (closed, reset)."""
        self._end(Reason.ERROR, _errnoOf(reason, borrowed))

    def sourceEnded(self, borrowed):
        """The reactor saw the source's read side end (hang-up, no data)."""
        if self._stop is None:
            self._stop = Reason.EOF
        self._move()
        if not self._ended:
            self._end(Reason.EOF)

    def _dissolve(self):
        if self._kick is not None and self._kick.active():
            self._kick.cancel()
        self._kick = None
        leftover = self._mover.release()  # datagrams: a list
        if self._head or self._tail or self._past:  # byte streams only
            leftover = self._head + leftover + self._tail + self._past
        self._head = self._tail = self._past = b""
        self._dst.releaseWrite(self)
        self._src.releaseRead(self, leftover)

    def _afterDone(self, failed):
        self._src.deliverLeftover()
        if failed is not None and self.result.error:
            msg = "%s (while spliced)" % (errno.errorcode.get(self.result.error, self.result.error),)
            failed.fail(Failure(twerror.ConnectionLost(msg)))
