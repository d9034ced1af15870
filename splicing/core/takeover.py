"""
Borrowing a Twisted transport's socket, and giving it back: the one delicate
place of the splice layer.

Twisted's poll-style reactors keep one selectable per file descriptor, and
call that selectable's C{doRead}/C{doWrite}.  A splice therefore cannot
register a second reader for the same descriptor; it takes over the
transport's own methods instead.  The transport's class is swapped for a
subclass (one per transport class, shared) whose methods ask the transport's
L{Borrowed} record, so a borrowed transport costs one record and no bound
methods (an idle relay holds thousands):

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

from twisted.internet import tcp, udp

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


def readWith(transport, reactor, read):
    """
    Have C{read()} handle C{transport}'s read events while no splice owns
    them, in place of Twisted's C{doRead} (returning what it returns); None
    gives them back to Twisted.  For a protocol that must not read past a
    boundary, such as the end of an HTTP head: it peeks and takes exactly
    what is its own, and the bytes behind stay in the socket for a splice.
    """
    borrow(transport, reactor).appRead = read


def writeNow(transport, data):
    """
    Write C{data} to a socket transport with one C{send()} now, when nothing
    is queued before it; what the socket does not take (and everything, for
    any other transport or state) goes through C{transport.write}, so the
    order is kept.  Twisted's C{write} only buffers: the bytes leave on the
    next reactor turn, after one more C{epoll_wait} and two changes of the
    descriptor's interest, which for a small message costs more than the
    send.  Never while a splice owns the transport's write events.
    """
    t = transport
    b = getattr(t, "__dict__", {}).get(_ATTR)
    if (
        isinstance(t, tcp.Connection)
        and t.connected
        and not (t.disconnecting or t._writeDisconnected or t._writeDisconnecting or getattr(t, "TLS", False))
        and not t._tempDataLen
        and len(t.dataBuffer) <= t.offset
        and (b is None or b.writer is None)
    ):
        try:
            sent = t.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # Twisted meets the error again on its write event and loses the connection
        if sent == len(data):
            return
        data = data[sent:]
    t.write(data)


def _dead():
    """The readiness handler of a transport whose connection is gone."""


# -- the borrowed classes: each method asks the transport's record

def _doRead(self):
    b = self.__dict__[_ATTR]
    if b.reader is not None:
        return b.reader.doRead()
    if b.appRead is not None:
        return b.appRead()
    return b.cls.doRead(self)


def _doWrite(self):
    b = self.__dict__[_ATTR]
    return b.writer.doWrite() if b.writer is not None else b.cls.doWrite(self)


def _startReading(self):
    self.__dict__[_ATTR]._startReading()


def _stopReading(self):
    self.__dict__[_ATTR]._stopReading()


def _connectionLost(self, reason=None):
    b = self.__dict__.get(_ATTR)
    if b is None:
        # A call bound while the transport was borrowed (abortConnection
        # queues one) and run after it was given back: Twisted's own,
        # which ignores a connection already lost.
        return self.connectionLost(reason)
    b._connectionLost(reason)


def _readConnectionLost(self, reason):
    self.__dict__[_ATTR]._readConnectionLost(reason)


#: What a borrowed class overrides; the last four may also be instance
#: attributes someone set before, which the record keeps and calls.
_METHODS = {
    "doRead": _doRead,
    "doWrite": _doWrite,
    "startReading": _startReading,
    "stopReading": _stopReading,
    "connectionLost": _connectionLost,
    "readConnectionLost": _readConnectionLost,
}
_LIFECYCLE = ("startReading", "stopReading", "connectionLost", "readConnectionLost")
_borrowedClasses = {}


def _borrowedClass(cls):
    """The subclass of C{cls} a borrowed transport has (same name, so logs read alike)."""
    sub = _borrowedClasses.get(cls)
    if sub is None:
        sub = _borrowedClasses[cls] = type(cls.__name__, (cls,), dict(_METHODS, __module__=cls.__module__))
    return sub


class Borrowed:
    """
    What the splice layer holds of one socket transport.

    @ivar reader: the splice that owns read events (this is its source).
    @ivar writer: the splice that owns write events (this is its drain).
    @ivar leftover: bytes read but not moved, owed to the protocol.
    @ivar appReading: whether the application wants read events (what
        C{startReading}/C{stopReading} said while a splice owned reading).
    @ivar lost: set once the connection is being lost.
    @ivar appRead: what handles read events while no splice owns them, in
        place of Twisted's C{doRead} (see L{readWith}); None: Twisted's.
    """

    def __init__(self, transport, reactor):
        self.transport = transport
        self.reactor = reactor
        self.socket = transport.socket
        self.datagram = isinstance(transport, udp.Port)
        self.reader = None
        self.writer = None
        self.leftover = []
        self.appRead = None
        self.lost = False
        self.readLost = False
        self.appReading = isReading(reactor, transport)
        self._reading = False
        self._writing = False
        self.cls = type(transport)
        d = transport.__dict__
        self._saved = None
        if any(name in d for name in _LIFECYCLE):  # rare: keep them, they are the originals
            self._saved = {name: d.pop(name) for name in _LIFECYCLE if name in d}
        d[_ATTR] = self
        transport.__class__ = _borrowedClass(self.cls)

    def _original(self, name):
        if self._saved and name in self._saved:
            return self._saved[name]
        return getattr(self.cls, name).__get__(self.transport)

    def fileno(self):
        return self.socket.fileno()

    # -- the source side

    def takeRead(self, owner):
        self.reader = owner
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
        why = self.cls.doWrite(self.transport)
        # Twisted stops write events when its buffer empties; the splice
        # decides again right after.
        self._writing = False
        return why

    def releaseWrite(self, owner):
        self.writer = None
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
        """
        Tell the owning splices, hand the protocol what it is owed, then
        lose the connection as Twisted would.  Whatever the splices' or the
        protocol's callbacks raise, the socket is closed: an exception must
        not leave a descriptor open that nothing will ever close.
        """
        original = self._original("connectionLost")
        self.lost = True
        try:
            for owner in self._owners():
                owner.transportLost(self, reason)
            self.deliverLeftover()
        finally:
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
        t = self.transport
        if self.lost or self.datagram or not t.connected or getattr(t, "_aborting", False):
            # A UDP port survives a failed datagram; an aborted transport has
            # its connectionLost queued already (abortConnection), and Twisted
            # never calls it twice.
            return
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
        t = self.transport
        if t.__dict__.get(_ATTR) is not self:
            return
        t.__class__ = self.cls
        del t.__dict__[_ATTR]
        if self._saved:
            t.__dict__.update(self._saved)
