"""
One direction of an HTTP connection: heads in user land, bodies spliced.

A L{Flow} reads the bytes of its source transport.  Heads are collected by a
L{HeadReader} and handed to its owner (the proxy), which decides what the
message's body is; the flow then moves the body: bytes already in hand are
written to the destination (copied), the rest is spliced with C{max} set to
exactly what remains, so the kernel moves it and the source's next bytes (the
next head) come back to user land.  A chunked body is one splice: at each
chunk's end its framer reads the next chunk-size line (peeked, in user land)
and extends the splice over the line and the data it announces, so framing
and data move alike.  Counters say how many bytes were spliced and how
many copied, so logs and tests can prove bodies did not pass through Python.
"""

import socket

from twisted.internet import main, tcp
from twisted.logger import Logger

from splicing.core.base import Last
from splicing.http.chunk import ChunkedReader
from splicing.http.errors import HTTPError
from splicing.http.headreader import HeadReader
from splicing.core.result import Reason
from splicing.relay.fallback import spliceOn
from splicing.core.takeover import readWith, writeNow

#: Messages one read event of a socket source handles at most (pipelined
#: requests whose bodies are in hand, or none): their bytes leave in one write.
PIPELINE = 16

#: How much user land reads from the source between chunks: the framing line
#: and a little data.  Twisted's 64 KiB reads would copy up to 64 KiB of each
#: chunk through Python before its splice starts.
FRAMING_READ = 4096


HEAD, LENGTH, CHUNKED, UNTIL_EOF, WAIT, DONE = (
    "head", "length", "chunked", "until-eof", "wait", "done",
)


class Flow:
    """
    The message stream from C{src} to C{dst}.

    The owner provides C{headReceived(flow, headBytes)} (which calls
    L{startBody} or L{wait}), C{bodyDone(flow)}, C{flowFailed(flow, reason,
    error)}, C{flowError(flow, httpError)} (bad framing found while spliced,
    or a head refused that came from a peek) and C{sourceEnded(flow)}.

    @ivar spliced: body bytes moved by splices.
    @ivar copied: bytes written from user land (heads, framing, body bytes
        that arrived together with a head).
    """

    log = Logger()

    def __init__(self, owner, name, headLimit=8192, maxLines=100, backend="auto"):
        self.owner = owner
        self.name = name
        self.backend = backend
        self.reader = HeadReader(limit=headLimit, maxLines=maxLines)
        self.state = HEAD
        self._src = None
        self.dst = None
        self.remaining = 0
        self.chunks = None
        self.splice = None
        self.spliced = 0
        self.copied = 0
        self._held = []
        self._out = []  # written before the destination existed
        self._batch = None  # written during one read event: sent together at its end
        self._inSocket = 0  # bytes after the last head that a peek saw in the socket
        self._peek = self._peekSocket = None  # a peek whose first _taken bytes are handed over
        self._taken = 0
        self._feeding = False
        self._framingError = None  # raised by the splice's framer, reported at its end
        self.srcEnded = False  # the source's read side ended: never read it again

    # -- input

    @property
    def src(self):
        return self._src

    @src.setter
    def src(self, transport):
        """The source transport: a socket one is read by L{_readSource}."""
        from twisted.internet import reactor

        old, self._src = self._src, transport
        if old is not None and old is not transport and self._peeks(old):
            readWith(old, reactor, None)  # a backend left behind reads as Twisted does
        if self._peeks(transport):
            readWith(transport, reactor, self._readSource)

    def _peeks(self, transport):
        return isinstance(transport, tcp.Connection) and self.backend != "transport"

    def _readSource(self):
        """
        The source's read events while no splice runs.  Where a head is
        expected the socket is peeked and exactly the head is taken, so a
        body behind it stays in the socket for the splice.  The peek also
        tells how many bytes followed the head: a body that is all there
        already is taken with it (L{_bodyInHand}), and a pipelined head
        behind it is handled in the same event.  What the event writes
        leaves in one C{send()}.  Returns what Twisted's C{doRead} would.
        """
        t = self._src
        self._batch = []
        try:
            for _ in range(PIPELINE):
                why = self._readOnce(t)
                if why is not None or not self._inSocket or self._src is not t or self._held:
                    return why
                if self.state != HEAD or self.splice is not None or self.dst is None or self.srcEnded:
                    return None
            return None
        finally:
            self.flush()

    def _readOnce(self, t):
        """
        One read.  A head is handed over from the peek itself, and taken
        from the socket afterwards (L{_consume}), with the body that came
        with it if that was taken too: one C{recv} for both.
        """
        sock = t.socket
        self._inSocket = 0
        peeking = self.state == HEAD and not self._held
        try:
            if peeking:
                r = self.reader  # a peek needs no more than the longest head allowed, and one byte
                data = sock.recv(r.limit + 3 - r.buffered, socket.MSG_PEEK)
            else:
                data = sock.recv(t.bufferSize)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        if not peeking:
            t.protocol.dataReceived(data)
            return None
        r = self.reader
        size = r.headLength(data)
        self._peek, self._peekSocket, self._taken = data, sock, size
        try:
            if r.buffered:  # the rest of a head begun earlier
                t.protocol.dataReceived(data if size == len(data) else data[:size])
            else:
                self._peekedHead(data if size == len(data) else data[:size])
        finally:
            if self._peek is not None and self._taken == len(self._peek):
                self.flush()  # nothing behind it to batch with: out first, the socket's copy taken after
            self._consume()
        return None

    def _peekedHead(self, data):
        """
        The start of a head, or all of it, from a peek at a socket: to the
        owner directly, as C{dataReceived} would hand it on (no bytes
        follow it here), without the protocol and L{_feed} in between.  A
        refusal goes to the owner's C{flowError}, as one found while spliced.
        """
        try:
            head, _ = self.reader.feed(data)
            if head is None:
                return  # a head in pieces: the reader holds the first
            self._feeding = True
            try:
                self.owner.headReceived(self, head)
            finally:
                self._feeding = False
        except HTTPError as e:
            self.owner.flowError(self, e)
            return
        self._bodyFromSocket()

    def _consume(self):
        """Take from the socket what was handed over from the peek (before anything else reads it)."""
        peek = self._peek
        if peek is None:
            return
        n, sock = self._taken, self._peekSocket
        self._peek = self._peekSocket = None
        self._inSocket = len(peek) - n
        try:
            sock.recv(n)  # in the socket already: the peek saw it
        except OSError:
            self._inSocket = 0  # the connection is gone; its end is reported as it comes

    def dataReceived(self, data):
        """Bytes from the source's protocol (never called while spliced)."""
        if self.state in (WAIT, DONE) or self._held:
            self._hold(data)
            return
        self._feeding = True
        try:
            self._feed(data)
        finally:
            self._feeding = False
        self._bodyFromSocket()

    def _bodyFromSocket(self):
        """
        A body (or its rest) is due and none of it is in hand: splice it
        from the socket now; or, with no destination yet, stop reading
        until there is one.
        """
        if self.splice is not None or self._held or self.state not in (LENGTH, CHUNKED, UNTIL_EOF):
            return
        if self.dst is None:
            if self._src is not None:
                self._src.pauseProducing()
        elif self.state == LENGTH:
            if not self._bodyInHand():
                self._spliceBody(self.remaining)
        elif self.state == CHUNKED:
            self._spliceBody(0, self._nextChunk)
        else:
            self._spliceBody(None)

    def _bodyInHand(self):
        """
        A Content-Length body (or its rest) that the head's peek saw whole
        in the socket is read and written with the head: one C{recv}, and no
        splice set up and torn down for a few bytes already at hand.  Bodies
        not all there yet are spliced, and never pass through Python.
        """
        n = self.remaining
        peek = self._peek
        if peek is not None:  # taken with the head, by L{_consume}
            if not 0 < n <= len(peek) - self._taken:
                return False
            data = peek[self._taken:self._taken + n]
            self._taken += n
        else:  # after a pause (no destination yet): the peek's count still holds
            if not 0 < n <= self._inSocket:
                return False
            try:
                data = self._src.socket.recv(n)
            except OSError:
                data = b""
            if not data:
                self._inSocket = 0
                return False  # the splice finds out what happened
            self._inSocket -= len(data)  # what is left is the next message's
        self._lengthData(data)
        return True

    def _feed(self, data):
        while data and self.splice is None and self.state not in (WAIT, DONE):
            if self.state != HEAD and self.dst is None:
                break  # a body, and nowhere to move it yet: hold it
            if self.state == HEAD:
                head, data = self.reader.feed(data)
                if head is None:
                    return
                self.reader.reset()
                self.owner.headReceived(self, head)
                if self.state in (WAIT, DONE):
                    self._hold(data)
                    return
            elif self.state == LENGTH:
                data = self._lengthData(data)
            elif self.state == CHUNKED:
                data = self._chunkData(data)
            elif self.state == UNTIL_EOF:
                self.write(data)
                data = b""
                self._spliceBody(None)
        if data:
            self._hold(data)

    def _hold(self, data):
        if self.state == DONE:
            return  # closing: dropped, and reading goes on (a TLS shutdown must read)
        if data:
            self._held.append(data)
            if self.src is not None:
                self.src.pauseProducing()

    def connect(self, dst):
        """The destination exists now: write what waited for it, go on."""
        self.dst = dst
        out, self._out = self._out, []
        if out:
            writeNow(dst, b"".join(out))
        if self.state != WAIT:
            self.resume()

    def tunnel(self):
        """Everything from now on is one body until EOF (an upgrade, CONNECT)."""
        self.state = UNTIL_EOF
        self.resume()
        self._spliceBody(None)

    def resume(self):
        """Process what was held (after L{wait} or before a destination existed)."""
        if self.state == WAIT:
            self.state = HEAD
        held, self._held = b"".join(self._held), []
        if self.state != DONE:
            self._readOn()
        if held:
            self.dataReceived(held)
        else:
            self._bodyFromSocket()

    def wait(self):
        """Stop parsing until L{resume} (an upgrade waits for its response)."""
        self.state = WAIT

    def _smallReads(self, on):
        """Read only a little at a time from a socket source (see L{FRAMING_READ})."""
        t = self.src
        if t is None or getattr(t, "socket", None) is None:
            return  # TLS and other transports read as they must
        if on:
            t.bufferSize = FRAMING_READ
        else:
            t.__dict__.pop("bufferSize", None)

    def stop(self):
        """
        No more messages: whatever comes is dropped, and the source is read
        on (a TLS shutdown reads the peer's close; a client still sending
        a body gets no reset before it has read its answer).
        """
        self._smallReads(False)
        self.flush()  # complete messages before this stop still go out, first
        self.state = DONE
        self._held = []
        if self.splice is not None and self.splice.result is None:
            self.splice.unsplice()
        self._readOn()

    def readEnded(self):
        """
        The source's read side ended (EOF): reading it again would only
        see the end again.  Twisted reports EOF to a half-closing protocol
        once and relies on nobody asking for read events after it: a
        source resumed then is reported EOF on every reactor turn, forever
        (a CPU spinning on a socket nothing will ever read).
        """
        self.srcEnded = True

    def _readOn(self):
        """Resume reading the source, unless its read side ended."""
        if self._src is not None and not self.srcEnded:
            self._src.resumeProducing()

    # -- output

    def write(self, data):
        if data:
            self.copied += len(data)
            if self.dst is None:
                self._out.append(data)
            elif self._batch is not None:
                self._batch.append(data)
            else:
                writeNow(self.dst, data)

    def flush(self):
        """Send what was written during this read event (before anything else goes to the destination)."""
        batch, self._batch = self._batch, None
        if batch:
            writeNow(self.dst, b"".join(batch))

    # -- bodies

    def startBody(self, kind, length=None):
        """
        Set how the body after the head just received is framed: "none",
        "length" (with C{length}), "chunked", "until-eof" (close-delimited
        responses and tunnels).
        """
        if kind == "none" or (kind == "length" and not length):
            self.state = HEAD
            self.owner.bodyDone(self)
        elif kind == "length":
            self.state = LENGTH
            self.remaining = length
        elif kind == "chunked":
            self.state = CHUNKED
            self.chunks = ChunkedReader()
            self._smallReads(True)
        else:
            self.state = UNTIL_EOF
            if not self._feeding:  # else dataReceived writes what came with the head first
                self._spliceBody(None)

    def _lengthData(self, data):
        take = data[: self.remaining]
        self.write(take)
        self.remaining -= len(take)
        rest = data[len(take):]
        if not self.remaining:
            self.state = HEAD
            self.owner.bodyDone(self)
        elif not rest:
            self._spliceBody(self.remaining)
        return rest

    def _chunkData(self, data):
        more = self._chunkFraming(data)
        if isinstance(more, bytes):
            self.owner.bodyDone(self)
            return more
        if more:
            self._spliceBody(more, self._nextChunk)
        return b""

    def _chunkFraming(self, data):
        """
        Decode C{data} (framing, maybe some chunk data) and forward it: the
        chunk data bytes still to move (0: none yet), or, once the body is
        complete, the bytes after it.
        """
        for event in self.chunks.feed(data):
            kind = event[0]
            if kind in ("frame", "data"):
                self.write(event[1])
            elif kind == "need":
                return event[1]
            elif kind == "end":
                self._chunkedEnd()
                return event[1]
        return 0

    def _chunkedEnd(self):
        self._smallReads(False)
        self.chunks = None
        self.state = HEAD

    def _nextChunk(self, data):
        """
        The splice's framer: the chunk's data has been read, C{data} (not
        taken yet) follows it.  The reader checks every complete line in
        C{data} (and any small chunks between them); the splice moves them
        with the data of the last chunk begun.  A framing error ends the
        splice where the bad line starts; L{_spliceDone} reports it.
        """
        c = self.chunks
        if c.needed:  # the data announced last time was read
            c.skipped(c.needed)
        cut = data.rfind(b"\n") + 1
        if not cut:
            if len(data) <= c.maxLine:
                return 0  # a line still incomplete: nothing changed, ask again
            cut = len(data)  # the reader says what is wrong with it
        try:
            for event in c.feed(data[:cut]):
                if event[0] == "need":
                    return cut + event[1]
                if event[0] == "end":
                    self._chunkedEnd()
                    return Last(cut - len(event[1]))
        except HTTPError as e:
            self._framingError = e
            return Last(0)
        return cut

    def _spliceBody(self, n, framer=None):
        """Splice the next C{n} body bytes (None: until EOF)."""
        if self.splice is not None or self.state == DONE:
            return
        if self._batch:  # the head before the body, then the splice
            writeNow(self.dst, b"".join(self._batch))
            self._batch = []
        self._consume()  # the head out of the socket first: the body starts behind it
        self._inSocket = 0
        s = self.splice = spliceOn(self.src, self.dst, self.backend, max=n, framer=framer)
        s.done.addCallback(self._spliceDone)

    def _spliceDone(self, result):
        self.splice = None
        self.spliced += result.length
        if self.state == DONE:
            return
        error, self._framingError = self._framingError, None
        if error is not None:
            self.owner.flowError(self, error)
            return
        if result.reason is Reason.MAX:
            if self.state == LENGTH:
                self.remaining = 0
            self.state = HEAD
            self.owner.bodyDone(self)
        elif result.reason is Reason.EOF:
            self.srcEnded = True
            if self.state == UNTIL_EOF:
                self.state = DONE
                self.owner.bodyDone(self)
            self.owner.sourceEnded(self)
        elif result.reason is not Reason.UNSPLICED:
            self.owner.flowFailed(self, result.reason, result.error)
