"""
How a splice ended: the value C{Splice.done} fires with.
"""

import enum
import errno as _errno

from zope.interface import implementer

from splicing.interfaces import ISpliceResult


class Reason(enum.Enum):
    """Why a splice dissolved (the OpenBSD cause, named)."""

    EOF = "eof"  # the source will send no more, everything moved
    MAX = "max"  # exactly max bytes moved (EFBIG)
    IDLE = "idle"  # nothing could move for idle seconds (ETIMEDOUT)
    ERROR = "error"  # a socket error or a closed transport (errno says which)
    UNSPLICED = "unspliced"  # the caller dissolved it
    SHORT = "short"  # UDP: the next datagram would cross max


#: The errno each reason carries when no other errno applies.
REASON_ERRNO = {
    Reason.EOF: 0,
    Reason.MAX: _errno.EFBIG,
    Reason.IDLE: _errno.ETIMEDOUT,
    Reason.UNSPLICED: 0,
    Reason.SHORT: 0,
}


@implementer(ISpliceResult)
class SpliceResult:
    """The ending of one splice: bytes moved, reason and errno."""

    __slots__ = ("length", "reason", "error")

    def __init__(self, length, reason, error=None):
        self.length = length
        self.reason = reason
        self.error = REASON_ERRNO.get(reason, 0) if error is None else error

    def __repr__(self):
        name = _errno.errorcode.get(self.error, str(self.error)) if self.error else "0"
        return "<SpliceResult %s length=%d error=%s>" % (self.reason.name, self.length, name)
