"""
How a relay moves one direction: a splice when one can serve the pair, or
the relay's fallbacks.  A forced path (C{--no-splice}, C{--backend}) gives
way to the transport path for TLS; UNIX sockets, which OpenBSD's sosplice
refuses with EPROTONOSUPPORT (and so does the core), are copied by the
relay's protocols themselves (L{CopyDirection}).  A copy looks like a
splice to the relay (C{length}, C{backend}, C{result}, C{done},
C{unsplice()}), so sessions count, log and end the same way.
"""

import errno

from twisted.internet import defer

from splicing.core.endpoint import describe
from splicing.core.errors import SpliceError
from splicing.core.result import Reason, SpliceResult
from splicing.core.splice import splice


def spliceOn(source, drain, path, **kw):
    """A splice on C{path}; a forced socket path gives way to the transport path for TLS."""
    try:
        return splice(source, drain, backend=path, **kw)
    except SpliceError as e:
        forcedSocketPath = path not in ("auto", "transport")
        tls = describe(source).tls or describe(drain).tls
        if not (forcedSocketPath and tls and e.errno in (errno.EOPNOTSUPP, errno.ENOTSOCK)):
            raise
    return splice(source, drain, backend="transport", **kw)


def spliceOrCopy(source, drain, path):
    """A splice of C{source} into C{drain} on C{path} (or a fallback), or raise L{SpliceError}."""
    try:
        return spliceOn(source, drain, path)
    except SpliceError as e:
        if e.errno == errno.EPROTONOSUPPORT:
            return CopyDirection(source, drain)
        raise


class CopyDirection:
    """
    Bytes from C{source} to C{drain} through C{dataReceived}; the drain's
    flow control pauses the source.  The source's protocol calls L{moved}
    with each chunk and L{end} at EOF.
    """

    __slots__ = ("source", "drain", "length", "result", "done", "__weakref__")

    backend = "copy"
    copying = True  # the source's protocol hands it every chunk (an AutoDirection stops when it splices)

    def __init__(self, source, drain):
        self.source, self.drain = source, drain
        self.length = 0
        self.result = None
        self.done = defer.Deferred()
        drain.registerProducer(source, True)

    @property
    def copied(self):
        """Bytes copied in user land: all of them."""
        return self.length

    def moved(self, data):
        self.length += len(data)
        self.drain.write(data)

    def end(self, reason=Reason.EOF):
        if self.result is not None:
            return
        self.result = SpliceResult(self.length, reason)
        self.drain.unregisterProducer()
        self.done.callback(self.result)

    def unsplice(self):
        self.end(Reason.UNSPLICED)


__all__ = ["CopyDirection", "spliceOrCopy"]
