"""
Borrowing a Twisted transport's socket, and giving it back: the one delicate
place of the splice layer.

Twisted's poll-style reactors keep one selectable per file descriptor, and
call that selectable's C{doRead}/C{doWrite}.  A splice therefore cannot
register a second reader for the same descriptor; it takes over the
transport's own methods instead, as instance attributes that shadow the class
methods, and removes them when it ends:

  - C{doRead} belongs to the splice that uses the transport as its source,
    C{doWrite} to the splice that uses it as its drain (two different splices
    when both directions of a relay are spliced, one splice for an echo);
  - C{startReading}/C{stopReading} only record what the application wants
    while a splice owns reading, so C{pauseProducing()} and friends cannot
    stop a splice, and the wish is honoured when it ends;
  - C{connectionLost}/C{readConnectionLost} tell the owning splices first, so
    a transport lost or closed during a splice always ends it.

Bytes a splice read but did not move are given back here and reach the
protocol's C{dataReceived} before anything still in the socket (or move first
when a new splice starts on the same source).

The record stays with the transport until its connection is lost: a
transport spliced once is usually spliced again (an HTTP proxy splices every
body, chunk after chunk), so only C{doRead}/C{doWrite} change hands per
splice.  Without owners the remaining overrides behave as Twisted's own.
"""

from twisted.internet import udp

_MISSING = object()
_ATTR = "_splicingBorrowed"


def isReading(reactor, transport):
    """Whether C{transport} is registered for read events."""
    reads = getattr(reactor, "_reads", None)
    if reads is not None:
        try:
            fd = transport.fileno()
        except Exception:
            return False
        return fd in reads or transport in reads
    return transport in reactor.getReaders()


def borrow(transport, reactor):
    """The L{Borrowed} record of C{transport}, made on first use."""
    b = transport.__dict__.get(_ATTR)
    if b is None:
        b = Borrowed(transport, reactor)
    return b


def _dead():
    """The readiness handler of a transport whose connection is gone."""


class Borrowed:
    """
    What the splice layer holds of one socket transport.

    @ivar reader: the splice that owns read events (this is its source).
    @ivar writer: the splice that owns write events (this is its drain).
    @ivar leftover: bytes read but not moved, owed to the protocol.
    @ivar appReading: whether the application wants read events (what
        C{startReading}/C{stopReading} said while a splice owned reading).
    @ivar lost: set once the connection is being lost.
    """

    def __init__(self, transport, reactor):
        self.transport = transport
        self.reactor = reactor
        self.socket = transport.socket
        self.datagram = isinstance(transport, udp.Port)
        self.reader = None
        self.writer = None
        self.leftover = []
        self.lost = False
        self.readLost = False
        self.appReading = isReading(reactor, transport)
        self._reading = False
        self._writing = False
        self._saved = {}
        transport.__dict__[_ATTR] = self
        self._override("startReading", self._startReading)
        self._override("stopReading", self._stopReading)
        self._override("connectionLost", self._connectionLost)
        self._override("readConnectionLost", self._readConnectionLost)

    # -- instance attributes shadowing the transport's methods

    def _override(self, name, func):
        d = self.transport.__dict__
        self._saved[name] = (d.get(name, _MISSING), func)
        d[name] = func

    def _restore(self, name):
        saved, ours = self._saved.pop(name, (_MISSING, None))
        d = self.transport.__dict__
        if d.get(name) is not ours:
            return  # someone else (abortConnection) replaced it since: leave theirs
        if saved is _MISSING:
            del d[name]
        else:
            d[name] = saved

    def _original(self, name):
        saved = self._saved.get(name, (_MISSING, None))[0]
        if saved is not _MISSING:
            return saved
        return getattr(type(self.transport), name).__get__(self.transport)

    def fileno(self):
        return self.socket.fileno()

    # -- the source side

    def takeRead(self, owner):
        self.reader = owner
        self._override("doRead", owner.doRead)
        # keep the registration as it is: the splice's first pass decides
        self._reading = isReading(self.reactor, self.transport)

    def wantRead(self, flag):
        if flag != self._reading:
            self._reading = flag
            if flag:
                self.reactor.addReader(self.transport)
            else:
                self.reactor.removeReader(self.transport)

    def takeLeftover(self, limit=None):
        """Take (up to C{limit}) bytes owed to the protocol, to move them first."""
        if self.datagram:
            return b""  # datagrams owed go to datagramReceived (see deliverLeftover)
        data = b"".join(self.leftover)
        if limit is not None and len(data) > limit:
            data, rest = data[:limit], data[limit:]
            self.leftover = [rest]
        else:
            self.leftover = []
        return data

    def giveBack(self, data):
        """Bytes (or, for a datagram port, (datagram, address) pairs) owed."""
        if data:
            if self.datagram:
                self.leftover.extend(data)
            else:
                self.leftover.append(bytes(data))

    def releaseRead(self, owner, leftover=b""):
        self.giveBack(leftover)
        self.reader = None
        self._restore("doRead")
        self._reading = False
        if not self.lost:
            t = self.transport
            if self.appReading and not self.readLost and t.connected and not t.disconnecting:
                self.reactor.addReader(t)
            else:
                self.reactor.removeReader(t)

    def deliverLeftover(self):
        """
        Hand the bytes owed to the protocol over, if no splice took them and
        the application wants to read.
        """
        if not self.leftover or self.reader is not None:
            return
        if not self.lost and not self.appReading:
            return  # delivered when the application resumes reading
        owed, self.leftover = self.leftover, []
        protocol = getattr(self.transport, "protocol", None)
        if protocol is None:
            return
        if self.datagram:
            for datagram, addr in owed:
                protocol.datagramReceived(datagram, addr)
        else:
            protocol.dataReceived(b"".join(owed))

    def _startReading(self):
        self.appReading = True
        if self.reader is None:
            if self.leftover:
                # what is owed goes first: read the socket only after it
                self.reactor.callLater(0, self._deliverThenRead)
            elif not self.readLost:
                self.reactor.addReader(self.transport)

    def _deliverThenRead(self):
        self.deliverLeftover()
        t = self.transport
        if self.appReading and self.reader is None and not self.readLost and t.connected and not self.lost:
            self.reactor.addReader(t)

    def _stopReading(self):
        self.appReading = False
        if self.reader is None:
            self.reactor.removeReader(self.transport)

    # -- the drain side

    def takeWrite(self, owner):
        self.writer = owner
        self._override("doWrite", owner.doWrite)

    def wantWrite(self, flag):
        if flag != self._writing:
            self._writing = flag
            if flag:
                self.reactor.addWriter(self.transport)
            else:
                self.reactor.removeWriter(self.transport)

    def hasPendingWrites(self):
        t = self.transport
        return t._tempDataLen > 0 or len(t.dataBuffer) > t.offset

    def closing(self):
        """Whether the application closed (or half-closed) the transport."""
        t = self.transport
        return bool(t.disconnecting or getattr(t, "_writeDisconnecting", False))

    def flushPendingWrites(self):
        """Let Twisted write what the application wrote; returns its verdict."""
        why = type(self.transport).doWrite(self.transport)
        # Twisted stops write events when its buffer empties; the splice
        # decides again right after.
        self._writing = False
        return why

    def releaseWrite(self, owner):
        self.writer = None
        self._restore("doWrite")
        self._writing = False
        if not self.lost:
            if self.hasPendingWrites() or self.closing():
                self.reactor.addWriter(self.transport)
            else:
                self.reactor.removeWriter(self.transport)

    # -- the end of the connection

    def _owners(self):
        owners = []
        for o in (self.reader, self.writer):
            if o is not None and o not in owners:
                owners.append(o)
        return owners

    def _connectionLost(self, reason=None):
        original = self._original("connectionLost")
        self.lost = True
        for owner in self._owners():
            owner.transportLost(self, reason)
        self.deliverLeftover()
        self._giveUp()
        if reason is None:
            original()
        else:
            original(reason)

    def _readConnectionLost(self, reason):
        original = self._original("readConnectionLost")
        self.readLost = True
        if self.reader is not None:
            self.reader.sourceEnded(self)
        self.deliverLeftover()
        original(reason)

    def fail(self, failure):
        """End the connection with C{failure}, as the reactor would."""
        if self.lost or self.datagram or not self.transport.connected:
            return  # a UDP port survives a failed datagram
        t = self.transport
        self.reactor.removeReader(t)
        self.reactor.removeWriter(t)
        t.connectionLost(failure)
        # A splice fails a transport from inside a readiness event, and the
        # reactor may call the other handler of the same event next (doWrite
        # after doRead) on this now socketless transport: make both no-ops,
        # as Twisted's abortConnection does.
        t.doRead = t.doWrite = _dead

    def _giveUp(self):
        """Remove every override: the transport is plain Twisted again."""
        if self.transport.__dict__.get(_ATTR) is not self:
            return
        for name in list(self._saved):
            self._restore(name)
        del self.transport.__dict__[_ATTR]
