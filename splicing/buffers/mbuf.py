"""
BSD-style mbufs for the user-land splice path.

The shape follows OpenBSD's C{uipc_mbuf.c}, reduced to what a relay needs:

  - a L{Cluster} is a fixed-size C{bytearray} with a reference count (the
    C{m_ext} of a BSD mbuf cluster), handed out by a bounded L{ClusterPool};
  - an L{Mbuf} is a view C{(cluster, off, len)} onto a cluster; several mbufs
    may share one cluster, each holding one reference;
  - a L{Chain} is an C{m_next} list of mbufs: one byte stream;
  - a L{PacketChain} is an C{m_nextpkt} list of chains: one chain per
    datagram, so that boundaries (and empty datagrams) survive.

Payload is written once (by C{recvmsg_into}, or L{Chain.append} for app
data) and leaves once (C{sendmsg}); splitting, trimming and sharing only move
offsets and reference counts.  The only copies are L{Chain.pullup} and the
explicit L{Chain.tobytes}.  Two rules keep sharing safe:

  - bytes after an mbuf may be written only while it holds its cluster's
    only reference (C{refs == 1}): then no other mbuf can see them;
  - operations put the chain in a consistent state I{before} dropping
    references, since the last one may run a L{ClusterPool.when_available}
    callback that uses the chain again.
"""

import errno
import socket
from collections import deque
from itertools import islice

from twisted.logger import Logger

CLUSTER_SIZE = 65536
IOV_MAX = 1024  # at most this many buffers per sendmsg/recvmsg_into call

_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
_log = Logger()


class PoolExhausted(Exception):
    """No cluster for an app-level write; the hot path gets C{None} instead."""


class ClusterPool:
    """
    A bounded source of clusters: the bound is the mbuf path's back-pressure
    (readers stop until a cluster comes back).  Up to C{keep} returned
    buffers are kept idle, so a steady transfer does not allocate per read.
    """

    def __init__(self, size=CLUSTER_SIZE, limit=1024, keep=64):
        if size < 1 or limit < 1 or keep < 0:
            raise ValueError("size and limit must be positive, keep >= 0")
        self.size, self.limit, self.keep = size, limit, keep
        self.in_use = 0
        self._idle = []  # memoryviews over idle bytearrays
        self._waiters = []

    @property
    def free(self):
        """How many idle clusters are kept for reuse."""
        return len(self._idle)

    def get(self):
        """A cluster holding one reference, or C{None} at the limit."""
        if self.in_use >= self.limit:
            return None
        self.in_use += 1
        mem = self._idle.pop() if self._idle else memoryview(bytearray(self.size))
        return Cluster(self, mem)

    def when_available(self, callback):
        """
        Call C{callback()} once, from the release path, the next time a
        cluster comes back, so a stalled reader resumes without polling.
        Register only after C{get()} failed: with nothing in use, nothing
        will ever come back.
        """
        self._waiters.append(callback)

    def _put(self, cluster):
        """Take back a cluster whose last reference went away."""
        self.in_use -= 1
        if len(self._idle) < self.keep:
            self._idle.append(cluster.mem)
        if self._waiters:
            # Swap first: a waiter that fails again re-registers for the
            # next return.  Its errors must not break the releasing caller.
            waiters, self._waiters = self._waiters, []
            for callback in waiters:
                try:
                    callback()
                except Exception:
                    _log.failure("ClusterPool.when_available callback failed")


class Cluster:
    """
    Fixed-size storage with a reference count (a BSD C{m_ext}).  It goes back
    to its pool once, at the last L{unref}: explicit, as C{__del__} timing
    would make back-pressure lie.
    """

    __slots__ = ("pool", "mem", "buf", "refs")

    def __init__(self, pool, mem):
        self.pool, self.mem, self.buf, self.refs = pool, mem, mem.obj, 1

    def ref(self):
        self.refs += 1

    def unref(self):
        refs = self.refs - 1
        if refs < 0:
            raise RuntimeError("cluster released more often than referenced")
        self.refs = refs
        if refs == 0:
            self.pool._put(self)


class Mbuf:
    """C{len} bytes of C{cluster} starting at C{off}; holds one reference."""

    __slots__ = ("cluster", "off", "len")

    def __init__(self, cluster, off, len):
        self.cluster, self.off, self.len = cluster, off, len

    def view(self):
        """The bytes of this mbuf, as a memoryview (no copy)."""
        return self.cluster.mem[self.off : self.off + self.len]


def _cut(m, k):
    """Cut C{m} after C{k} bytes; return the rest, sharing the cluster."""
    m.cluster.ref()
    rest = Mbuf(m.cluster, m.off + k, m.len - k)
    m.len = k
    return rest


def _unref_all(mbufs):
    for m in mbufs:
        m.cluster.unref()


class Chain:
    """
    One byte stream: a deque of mbufs (C{mbufs}, read-only for callers) and
    a running length.  No mbuf is empty, so no iovec is wasted.
    """

    __slots__ = ("pool", "mbufs", "_len", "addr")

    def __init__(self, pool):
        self.pool, self.mbufs, self._len = pool, deque(), 0
        self.addr = None  # where a datagram came from (PacketChain.recvmsg_into)

    def __len__(self):
        return self._len

    def __repr__(self):
        return f"<Chain len={self._len} mbufs={len(self.mbufs)}>"

    def _tailspace(self):
        """The last mbuf and how many bytes may be written after it."""
        if self.mbufs:
            m = self.mbufs[-1]
            if m.cluster.refs == 1:
                return m, len(m.cluster.mem) - m.off - m.len
        return None, 0

    def append(self, data):
        """
        Copy C{data} to the end (the one copy of a user write); all or
        nothing, L{PoolExhausted} is raised before anything is written.
        """
        mv = memoryview(data).cast("B")
        n = mv.nbytes
        if not n:
            return
        tail, space = self._tailspace()
        take = min(space, n)
        size = self.pool.size
        clusters = []
        for _ in range(-(-(n - take) // size)):
            c = self.pool.get()
            if c is None:
                for got in clusters:
                    got.unref()
                raise PoolExhausted(f"no cluster for {n - take} bytes")
            clusters.append(c)
        if take:
            end = tail.off + tail.len
            tail.cluster.mem[end : end + take] = mv[:take]
            tail.len += take
        pos = take
        for c in clusters:
            k = min(size, n - pos)
            c.mem[:k] = mv[pos : pos + k]
            self.mbufs.append(Mbuf(c, 0, k))
            pos += k
        self._len += n

    def append_chain(self, other):
        """Move C{other}'s mbufs to the end of this chain (C{m_cat}, no copy)."""
        if other is self:
            raise ValueError("cannot append a chain to itself")
        self.mbufs.extend(other.mbufs)
        self._len += other._len
        other.mbufs, other._len = deque(), 0

    def prepend(self, header):
        """
        Put C{header} in front (C{M_PREPEND}): in the first cluster's leading
        space if this mbuf owns it, else at the end of a fresh cluster,
        which leaves room for the next prepend.
        """
        mv = memoryview(header).cast("B")
        h = mv.nbytes
        if not h:
            return
        if h > self.pool.size:
            raise ValueError(f"header of {h} bytes is larger than a cluster")
        if not self.mbufs:
            return self.append(mv)
        m = self.mbufs[0]
        if m.cluster.refs == 1 and m.off >= h:
            m.off -= h
            m.len += h
            m.cluster.mem[m.off : m.off + h] = mv
        else:
            c = self.pool.get()
            if c is None:
                raise PoolExhausted("no cluster for a header")
            off = len(c.mem) - h
            c.mem[off:] = mv
            self.mbufs.appendleft(Mbuf(c, off, h))
        self._len += h

    def split(self, n):
        """Keep the first C{n} bytes, return the rest (C{m_split})."""
        if not 0 <= n <= self._len:
            raise ValueError(f"cannot split {self._len} bytes at {n}")
        rest, mbufs = Chain(self.pool), self.mbufs
        head, pos = deque(), 0
        while pos < n:
            m = mbufs.popleft()
            if pos + m.len > n:  # straddles: both halves share the cluster
                mbufs.appendleft(_cut(m, n - pos))
            head.append(m)
            pos += m.len
        self.mbufs, rest.mbufs = head, mbufs
        rest._len, self._len = self._len - n, n
        return rest

    def adj(self, n):
        """
        Trim C{n} bytes from the front (C{n > 0}) or C{-n} from the back
        (C{m_adj}); trimming more than there is empties the chain.
        """
        if n >= 0:
            self._trim_front(n)
        else:
            self._trim_back(-n)

    def _trim_front(self, n):
        if n >= self._len:
            return self.release()
        mbufs, gone = self.mbufs, []
        self._len -= n
        while mbufs[0].len <= n:
            m = mbufs.popleft()
            n -= m.len
            gone.append(m)
        m = mbufs[0]
        m.off += n
        m.len -= n
        _unref_all(gone)

    def _trim_back(self, n):
        if n >= self._len:
            return self.release()
        mbufs, gone = self.mbufs, []
        self._len -= n
        while mbufs[-1].len <= n:
            m = mbufs.pop()
            n -= m.len
            gone.append(m)
        mbufs[-1].len -= n
        _unref_all(gone)

    def copym(self, off, n=None):
        """
        A new chain sharing bytes C{[off, off + n)} by reference
        (C{m_copym}); C{n=None} means to the end.
        """
        if n is None:
            n = self._len - off
        if off < 0 or n < 0 or off + n > self._len:
            raise ValueError(f"range [{off}, {off}+{n}) outside {self._len} bytes")
        copy = Chain(self.pool)
        stop, pos = off + n, 0
        if n:
            for m in self.mbufs:
                end = pos + m.len
                if end > off:
                    a = max(off, pos) - pos
                    b = min(stop, end) - pos
                    m.cluster.ref()
                    copy.mbufs.append(Mbuf(m.cluster, m.off + a, b - a))
                    if end >= stop:
                        break
                pos = end
        copy._len = n
        return copy

    def pullup(self, n):
        """The first C{n} bytes as C{bytes}: the one place that copies."""
        if not 0 <= n <= self._len:
            raise ValueError(f"cannot pull up {n} of {self._len} bytes")
        parts = []
        for m in self.mbufs:
            if not n:
                break
            k = min(m.len, n)
            parts.append(m.cluster.mem[m.off : m.off + k])
            n -= k
        return parts[0].tobytes() if len(parts) == 1 else b"".join(parts)

    def find(self, pattern, start=0, end=None):
        """
        Like C{bytes.find}, across mbuf boundaries.  Each mbuf is searched in
        place (C{bytearray.find} with bounds); only a window of
        C{len(pattern) - 1} bytes either side of a boundary is copied.
        """
        pattern, size = bytes(pattern), self._len
        if start > size:
            return -1
        start, end, _ = slice(start, end).indices(size)
        p = len(pattern)
        if end - start < p:
            return -1
        if not p:
            return start
        keep, carry, pos = p - 1, b"", 0
        for m in self.mbufs:
            mend = pos + m.len
            if mend <= start:
                pos = mend
                continue
            if pos >= end:
                break
            a = max(start, pos)  # chain offset of this segment
            lo = m.off + (a - pos)
            hi = m.off + (min(end, mend) - pos)
            buf = m.cluster.buf
            if carry:
                # A match starting in the carried bytes, ending in this mbuf.
                window = carry + buf[lo : min(lo + keep, hi)]
                i = window.find(pattern, 0, len(carry) + keep)
                if i >= 0:
                    return a - len(carry) + i
            i = buf.find(pattern, lo, hi)
            if i >= 0:
                return pos + (i - m.off)
            if keep:
                if hi - lo >= keep:
                    carry = bytes(buf[hi - keep : hi])
                else:
                    carry = (carry + buf[lo:hi])[-keep:]
            pos = mend
        return -1

    def buffers(self, limit=IOV_MAX):
        """Memoryviews of the first C{limit} mbufs, ready for C{sendmsg}."""
        return [m.cluster.mem[m.off : m.off + m.len] for m in islice(self.mbufs, limit)]

    def tobytes(self):
        """The whole chain as C{bytes}: an explicit copy."""
        return b"".join(self.buffers(len(self.mbufs)))

    def release(self):
        """Drop every reference; the chain is empty afterwards."""
        mbufs, self.mbufs, self._len = self.mbufs, deque(), 0
        _unref_all(mbufs)

    def recv_into(self, sock, limit):
        """
        Read at most C{limit} bytes from a stream socket with one
        C{recvmsg_into}, scattered over the tail's free space and as many
        fresh clusters as the pool gives (at most C{IOV_MAX} buffers).

        Returns the count (0 at EOF), or C{None} when there was nowhere to
        read into (pool exhausted and no tail space, or C{limit < 1}).
        C{OSError}s (C{BlockingIOError} too) propagate; unused clusters
        always go back to the pool.
        """
        if limit < 1:
            return None
        views = []
        tail, space = self._tailspace()
        take = min(space, limit)
        if take:
            end = tail.off + tail.len
            views.append(tail.cluster.mem[end : end + take])
        fresh, rest, pool = [], limit - take, self.pool
        while rest > 0 and len(views) < IOV_MAX:
            c = pool.get()
            if c is None:
                break
            k = min(rest, len(c.mem))
            views.append(c.mem[:k])
            fresh.append(c)
            rest -= k
        if not views:
            return None
        try:
            n = sock.recvmsg_into(views)[0]
        except BaseException:
            for c in fresh:
                c.unref()
            raise
        if take:
            tail.len += min(take, n)
        left, used = max(n - take, 0), 0
        while left:
            c = fresh[used]
            k = min(len(c.mem), left)
            self.mbufs.append(Mbuf(c, 0, k))
            left -= k
            used += 1
        self._len += n
        for c in fresh[used:]:
            c.unref()
        return n

    def send(self, sock):
        """
        Write from the front with one C{sendmsg} of at most C{IOV_MAX}
        buffers and trim what went out.  Returns the count; 0 if empty.
        """
        if not self._len:
            return 0
        n = sock.sendmsg(self.buffers(IOV_MAX), (), _MSG_NOSIGNAL)
        if n:
            self._trim_front(n)
        return n


class PacketChain:
    """
    Datagrams as a deque of chains (C{packets}, read-only for callers), so
    that boundaries, and zero-length datagrams, are kept.
    """

    __slots__ = ("pool", "packets", "nbytes")

    def __init__(self, pool):
        self.pool, self.packets, self.nbytes = pool, deque(), 0

    def __len__(self):
        return len(self.packets)

    def append(self, chain):
        """Queue one datagram; an empty chain is an empty datagram."""
        self.packets.append(chain)
        self.nbytes += len(chain)

    def peek(self):
        return self.packets[0] if self.packets else None

    def popleft(self):
        chain = self.packets.popleft()
        self.nbytes -= len(chain)
        return chain

    def release(self):
        """Drop every datagram and its clusters."""
        packets, self.packets, self.nbytes = self.packets, deque(), 0
        for chain in packets:
            chain.release()

    def recvmsg_into(self, sock, max_datagrams=64, limit=None):
        """
        Read up to C{max_datagrams} datagrams, each with one C{recvmsg_into}
        into a whole fresh cluster.  Returns how many; 0 means the pool had
        no cluster.  C{BlockingIOError} only if nothing was read.

        C{limit} is a soft byte budget, checked between datagrams (a datagram
        cannot be read in part), so it may be exceeded by one datagram.  One
        larger than a cluster (AF_UNIX can send those) raises
        C{OSError(EMSGSIZE)} rather than arriving truncated.
        """
        pool, count, got = self.pool, 0, 0
        while count < max_datagrams and (limit is None or got < limit):
            c = pool.get()
            if c is None:
                break
            try:
                n, _, flags, addr = sock.recvmsg_into([c.mem])
            except BaseException as e:
                c.unref()
                if count and isinstance(e, BlockingIOError):
                    break
                raise
            if flags & socket.MSG_TRUNC:
                c.unref()
                raise OSError(errno.EMSGSIZE, "datagram larger than a cluster")
            chain = Chain(pool)
            chain.addr = addr
            if n:
                chain.mbufs.append(Mbuf(c, 0, n))
                chain._len = n
            else:
                c.unref()  # an empty datagram needs no storage
            self.append(chain)
            count += 1
            got += n
        return count

    def send(self, sock):
        """
        Send whole datagrams from the front, one call each, until the socket
        would block.  Returns how many went; C{BlockingIOError} only if none.
        """
        packets, sent = self.packets, 0
        while packets:
            chain = packets[0]
            mbufs = chain.mbufs
            # More pieces than one call takes: copy rather than split it.
            data = chain.buffers() if len(mbufs) <= IOV_MAX else [chain.tobytes()]
            try:
                sock.sendmsg(data, (), _MSG_NOSIGNAL)
            except BlockingIOError:
                if sent:
                    break
                raise
            self.popleft()
            chain.release()
            sent += 1
        return sent
