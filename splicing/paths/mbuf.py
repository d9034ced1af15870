"""
The mbuf path: user land without payload copies.

Bytes are read with one C{recvmsg_into} scatter call into pooled clusters and
written with one C{sendmsg} gather call; Python never joins or slices the
payload.  In-flight bytes per splice are capped (C{INFLIGHT}), so a stalled
drain holds a fixed number of clusters whatever the sender does.
"""

import errno
import socket

from zope.interface import implementer

from splicing.buffers import mmsg
from splicing.interfaces import IMover
from splicing.buffers.mbuf import Chain, ClusterPool

INFLIGHT = 1 << 20
MAX_DATAGRAM = 65536

_pool = None


def clusterPool():
    """The process's shared cluster pool for stream splices."""
    global _pool
    if _pool is None:
        _pool = ClusterPool(limit=8192)
    return _pool


@implementer(IMover)
class MbufMover:
    name = "mbuf"

    def __init__(self, srcsock, dstsock, pool=None, inflight=INFLIGHT):
        self.srcsock = srcsock
        self.dstsock = dstsock
        self.pool = pool if pool is not None else clusterPool()
        self.inflight = inflight
        self.chain = Chain(self.pool)
        self.eof = False
        self.want = self.pool.size  # what the next read asks for (see fill)

    crossed = False  # a byte stream has no datagram to cross max with

    @property
    def pending(self):
        return len(self.chain)

    @property
    def holding(self):
        return len(self.chain) > 0

    @property
    def space(self):
        return self.inflight - len(self.chain)

    def fill(self, limit):
        """
        Read up to C{limit}, asking for what recent reads took: one cluster
        at first, twice as much after a read that filled what it asked
        for, half after one that took under a quarter of it.  A request and
        its answer then cost one cluster per read, not the sixteen (and
        their memoryviews, pool calls and iovecs) of a whole 1 MiB read; a
        bulk stream reaches the full read within five.
        """
        ask = min(limit, self.want)
        n = self.chain.recv_into(self.srcsock, ask)
        if n == 0:
            self.eof = True
        elif n is not None:
            if n >= ask:
                self.want = min(self.want * 2, self.inflight)
            elif n < ask >> 2:
                self.want = max(self.want >> 1, self.pool.size)
        return n

    def flush(self):
        if not len(self.chain):
            return 0
        return self.chain.send(self.dstsock)

    def release(self):
        data = self.chain.tobytes() if len(self.chain) else b""
        self.chain.release()
        return data

    def whenAvailable(self, callback):
        self.pool.when_available(callback)


def _isUDP(sock):
    return sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_DGRAM


@implementer(IMover)
class DatagramMover:
    """
    The mbuf path for UDP: one batch of whole datagrams in flight.

    Linux splice(2) would merge datagrams and copy anyway, so UDP always
    takes this path.  A batch is this path's packet chain: pooled clusters,
    one per datagram (its size is unknown before it is read), filled by one
    C{recvmmsg}, and their lengths, emptied by one C{sendmmsg} in which runs
    of equal sizes travel as single GSO messages that the kernel cuts back
    into the same datagrams (L{splicing.buffers.mmsg}).  No Python object is made
    per datagram.  The next batch is read only once this one is sent, so
    order is kept and a slow drain holds at most one batch.

    The batch grows while reads fill it and shrinks to what arrives; when
    the source runs dry its clusters go back to the pool, so an idle splice
    holds none.  With a byte limit in reach, each datagram's size is peeked
    first: one that would cross the limit is not read (C{crossed}) and
    stays in the source, as OpenBSD leaves it.
    """

    name = "mbuf"
    eof = False  # UDP has no end of file
    crossed = False

    _pool = None
    _vectors = {}  # batch size -> idle message vectors: a mover holds one only while busy

    @classmethod
    def sharedPool(cls):
        """The process's cluster pool for datagrams (kept apart from streams')."""
        if cls._pool is None:
            cls._pool = ClusterPool(size=MAX_DATAGRAM, limit=4096, keep=256)
        return cls._pool

    def __init__(self, srcsock, dstsock, pool=None, batch=64):
        self.srcsock = srcsock
        self.dstsock = dstsock
        self.pool = pool if pool is not None else self.sharedPool()
        self.batch = batch
        self.datagrams = 0  # moved to the drain (for relays' counters)
        # GSO only where the kernel cuts a message back into UDP datagrams:
        # any other datagram socket would ignore the option and merge them.
        self.gso = mmsg.gsoWanted and _isUDP(dstsock)
        self._clusters = []  # slot i of the batch is cluster i
        self._vec = None
        self._lens = []  # sizes of the datagrams of this batch
        self._groups = None  # send groups, built at the first flush
        self._next = 0  # first group not sent
        self._pending = 0
        self._want = 4
        self._peek = bytearray(1)

    @property
    def pending(self):
        return self._pending

    @property
    def holding(self):
        return bool(self._lens)

    @property
    def space(self):
        return 0 if self._lens else self.batch * MAX_DATAGRAM

    # -- reading

    def _slots(self, count):
        """Clusters and a vector for C{count} slots; fewer if the pool is short."""
        clusters = self._clusters
        fresh = []
        while len(clusters) + len(fresh) < count:
            c = self.pool.get()
            if c is None:
                break
            fresh.append(c)
        if self._vec is None:
            idle = self._vectors.get(self.batch)
            self._vec = idle.pop() if idle else mmsg.vector(self.batch)
            clusters.extend(fresh)
            self._vec.setBuffers(0, [c.mem for c in clusters])
        elif fresh:
            self._vec.setBuffers(len(clusters), [c.mem for c in fresh])
            clusters.extend(fresh)
        return min(count, len(clusters))

    def _dry(self):
        """Nothing held: give the clusters and the vector back."""
        clusters, self._clusters = self._clusters, []
        if self._vec is not None:
            self._vectors.setdefault(self.batch, []).append(self._vec)
            self._vec = None
        for c in clusters:
            c.unref()

    def fill(self, limit):
        if limit >= self.batch * MAX_DATAGRAM:
            return self._fillBatch()
        return self._fillUpTo(limit)

    def _fillBatch(self):
        room = self._slots(self._want)
        if not room:
            self._dry()
            return None
        try:
            n = self._vec.recv(self.srcsock, 0, room)
        except BaseException:
            self._dry()
            raise
        self._take(0, n)
        self._want = min(self.batch, max(4, 2 * n))
        return self._pending

    def _fillUpTo(self, limit):
        """A maximum in reach: read one datagram at a time, only those that fit."""
        got = 0
        for i in range(self.batch):
            try:
                size = self.srcsock.recv_into(self._peek, 0, socket.MSG_PEEK | socket.MSG_TRUNC)
            except BlockingIOError:
                if got or self._lens:
                    break
                self._dry()
                raise
            if size > limit - got:
                self.crossed = True
                break
            if self._slots(i + 1) <= i:
                break
            self._take(i, self._vec.recv(self.srcsock, i, 1))
            got += size
        if not self._lens:
            self._dry()
            return None if not self.crossed else 0
        return got

    def _take(self, start, n):
        vec = self._vec
        if vec.truncated(start, n):
            self._lens.extend(vec.lengths(start, n))
            raise OSError(errno.EMSGSIZE, "datagram larger than a cluster")
        lens = vec.lengths(start, n)
        self._lens.extend(lens)
        self._pending += sum(lens)

    # -- writing

    def flush(self):
        if not self._lens:
            return 0
        vec = self._vec
        if self._groups is None:
            self._groups = mmsg.groups(self._lens, self.gso)
            vec.setLengths(0, self._lens)
            vec.setGroups(self._groups)
        before = self._pending
        groups = self._groups
        while self._next < len(groups):
            try:
                sent = vec.send(self.dstsock, self._next, len(groups) - self._next)
            except OSError as e:
                if groups[self._next][1] > 1 and e.errno in mmsg.GSO_ERRORS:
                    self._noGSO()  # this socket, or this size, cannot: one datagram per message
                    groups = self._groups
                    continue
                if before != self._pending:
                    break  # report what went; the error comes again
                raise
            for first, count, size in groups[self._next : self._next + sent]:
                self._pending -= size * (count - 1) + self._lens[first + count - 1]
                self.datagrams += count
            self._next += sent
        if self._next == len(groups):
            self._sent()
        return before - self._pending

    def _noGSO(self):
        self.gso = False
        first = self._groups[self._next][0]
        rest = [(i, 1, self._lens[i]) for i in range(first, len(self._lens))]
        self._groups = self._groups[: self._next] + rest
        self._vec.setGroups(self._groups)

    def _sent(self):
        """The batch is out: the clusters take the next one."""
        n = len(self._lens)
        self._lens = []
        self._groups = None
        self._next = 0
        self._pending = 0
        self._vec.setLengths(0, [self.pool.size] * n)
        if len(self._clusters) > self._want:
            extra = self._clusters[self._want :]
            del self._clusters[self._want :]
            for c in extra:
                c.unref()

    def release(self):
        """The datagrams still held, as (bytes, address) pairs."""
        owed = []
        if self._lens:
            done = self._groups[self._next][0] if self._groups else 0
            for i in range(done, len(self._lens)):
                mem = self._clusters[i].mem
                owed.append((bytes(mem[: self._lens[i]]), self._senderOf(i)))
        self._lens = []
        self._groups = None
        self._next = 0
        self._pending = 0
        if self._vec is not None:
            self._vec.setLengths(0, [self.pool.size] * len(self._clusters))
        self._dry()
        return owed

    def _senderOf(self, i):
        addr = self._vec.sender(i)
        if addr is not None and len(addr) > 2:
            addr = addr[:2]  # as Twisted gives IPv6 addresses to datagramReceived
        return addr

    def whenAvailable(self, callback):
        self.pool.when_available(callback)
