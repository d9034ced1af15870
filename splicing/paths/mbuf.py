"""
The mbuf path: user land without payload copies.

Bytes are read with one C{recvmsg_into} scatter call into pooled clusters and
written with one C{sendmsg} gather call; Python never joins or slices the
payload.  In-flight bytes per splice are capped (C{INFLIGHT}), so a stalled
drain holds a fixed number of clusters whatever the sender does.
"""

from zope.interface import implementer

from splicing.interfaces import IMover
from splicing.mbuf import Chain, ClusterPool

INFLIGHT = 1 << 20

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
