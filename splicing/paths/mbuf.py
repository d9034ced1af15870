"""
The mbuf path: user land without payload copies.

Bytes are read with one C{recvmsg_into} scatter call into pooled clusters and
written with one C{sendmsg} gather call; Python never joins or slices the
payload.  In-flight bytes per splice are capped (C{INFLIGHT}), so a stalled
drain holds a fixed number of clusters whatever the sender does.
"""

import socket

from zope.interface import implementer

from splicing.interfaces import IMover
from splicing.mbuf import Chain, ClusterPool, PacketChain

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
        n = self.chain.recv_into(self.srcsock, limit)
        if n == 0:
            self.eof = True
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


@implementer(IMover)
class DatagramMover:
    """
    The mbuf path for UDP: one packet chain of whole datagrams in flight.

    Linux splice(2) would merge datagrams and copy anyway, so UDP always
    takes this path.  Up to C{batch} datagrams are read per pass (each into
    its own cluster, zero-length ones included) and sent one whole datagram
    per call.  With a byte limit, the next datagram's size is peeked first:
    one that would cross the limit is not read (C{crossed}) and stays in the
    source, as OpenBSD leaves it.
    """

    name = "mbuf"
    eof = False  # UDP has no end of file

    def __init__(self, srcsock, dstsock, pool=None, batch=64):
        self.srcsock = srcsock
        self.dstsock = dstsock
        self.pool = pool if pool is not None else clusterPool()
        self.batch = batch
        self.packets = PacketChain(self.pool)
        self.crossed = False
        self._peek = bytearray(1)

    @property
    def pending(self):
        return self.packets.nbytes

    @property
    def holding(self):
        return len(self.packets) > 0

    @property
    def space(self):
        return (self.batch - len(self.packets)) * MAX_DATAGRAM

    def fill(self, limit):
        room = self.batch - len(self.packets)
        if limit >= room * MAX_DATAGRAM:  # no maximum in reach: read a batch
            count = self.packets.recvmsg_into(self.srcsock, max_datagrams=room)
            return None if count == 0 else self._bytesOfLast(count)
        got = 0
        for _ in range(room):  # a maximum: read only datagrams that fit
            try:
                size = self.srcsock.recv_into(self._peek, 0, socket.MSG_PEEK | socket.MSG_TRUNC)
            except BlockingIOError:
                if got or self.holding:
                    break
                raise
            if size > limit - got:
                self.crossed = True
                break
            if not self.packets.recvmsg_into(self.srcsock, max_datagrams=1):
                return None if not got else got
            got += size
        return got

    def _bytesOfLast(self, count):
        packets = self.packets.packets
        return sum(len(packets[-i]) for i in range(1, count + 1))

    def flush(self):
        before = self.packets.nbytes
        self.packets.send(self.dstsock)
        return before - self.packets.nbytes

    def release(self):
        """The datagrams still held, as (bytes, address) pairs."""
        owed = [(chain.tobytes(), chain.addr) for chain in self.packets.packets]
        self.packets.release()
        return owed

    def whenAvailable(self, callback):
        self.pool.when_available(callback)
