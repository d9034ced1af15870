"""
C{splice()}: OpenBSD's C{sosplice()} for Twisted transports.

The checks run in the kernel's order and raise L{SpliceError} synchronously;
an accepted request is handed to one path (kernel, mbuf or transport) and
never ends inside this call: C{done} fires from the reactor.
"""

import errno
import math
import weakref

from splicing import paths
from splicing.core.endpoint import STREAM, TCP, UDP, UNIX, describe
from splicing.core.errors import SpliceError
from splicing.core.somove import SocketSplice
from splicing.core.takeover import borrow
from splicing.paths.kernel import KernelMover
from splicing.paths.mbuf import DatagramMover, MbufMover
from splicing.paths.transport import TransportSplice

#: Which splice uses each transport as its source / drain (EBUSY).
_sources = weakref.WeakKeyDictionary()
_drains = weakref.WeakKeyDictionary()


def _checkMax(max):
    if max is None:
        return None
    if isinstance(max, bool) or not isinstance(max, int):
        if isinstance(max, float) and max.is_integer() and max >= 0:
            return int(max)
        raise SpliceError(errno.EINVAL, "max must be a non-negative integer, not %r" % (max,))
    if max < 0:
        raise SpliceError(errno.EINVAL, "max must not be negative")
    return max


def _checkIdle(idle):
    if idle is None:
        return None
    if isinstance(idle, bool) or not isinstance(idle, (int, float)):
        raise SpliceError(errno.EINVAL, "idle must be a number of seconds, not %r" % (idle,))
    if not math.isfinite(idle) or idle < 0:
        raise SpliceError(errno.EINVAL, "idle must be finite and not negative")
    return float(idle) or None  # 0 means no timeout, as OpenBSD's zero timeval


def _key(endpoint):
    return endpoint.socketTransport if endpoint.socketTransport is not None else endpoint.transport


def _checkSide(e, role, forced):
    """The per-side checks: EPROTONOSUPPORT, EBADF, ENOTSOCK."""
    if e.kind == UNIX:
        raise SpliceError(errno.EPROTONOSUPPORT, "%s is a UNIX socket" % (role,))
    if e.kind is None:
        raise SpliceError(errno.ENOTSOCK, "%s is not a transport a splice can use" % (role,))
    if e.closed:
        raise SpliceError(errno.EBADF, "the %s socket is closed" % (role,))
    if e.kind == STREAM and forced in ("kernel", "mbuf"):
        raise SpliceError(errno.ENOTSOCK, "%s has no socket under it" % (role,))


def sosplice(source, drain, max, idle, backend):
    """
    Check a request; return the described endpoints and the path to use.
    """
    src = describe(source)
    dst = describe(drain)
    _checkSide(src, "source", backend)
    max = _checkMax(max)
    idle = _checkIdle(idle)
    _checkSide(dst, "drain", backend)
    if (src.kind == UDP) != (dst.kind == UDP):
        raise SpliceError(errno.EPROTONOSUPPORT, "cannot splice TCP and UDP together")
    if src.listening or dst.listening:
        raise SpliceError(
            errno.EOPNOTSUPP, "the %s is a listening port" % ("source" if src.listening else "drain",)
        )
    if not (src.bound if src.kind == UDP else src.connected):
        raise SpliceError(errno.ENOTCONN, "the source is not %s" % ("bound" if src.kind == UDP else "connected",))
    if not dst.connected:
        raise SpliceError(errno.ENOTCONN, "the drain is not connected")
    if _key(src) in _sources:
        raise SpliceError(errno.EBUSY, "the source is already spliced")
    if _key(dst) in _drains:
        raise SpliceError(errno.EBUSY, "the drain is already the drain of a splice")
    path = paths.choose(backend, src, dst)
    return src, dst, max, idle, path


def splice(source, drain, max=None, idle=None, backend="auto", reactor=None, framer=None):
    """
    Splice C{source} into C{drain}: move every byte the source receives to
    the drain, without the source's protocol seeing it, until EOF, C{max}
    bytes, C{idle} seconds without progress, an error, or C{unsplice()}.

    @param source: a connected Twisted transport (TCP, TLS, ...).
    @param drain: a connected Twisted transport; may be C{source} itself.
    @param max: stop after exactly this many bytes (C{Reason.MAX}, EFBIG).
    @param idle: seconds without progress before C{Reason.IDLE} (ETIMEDOUT).
    @param backend: "auto", "kernel", "mbuf" or "transport".
    @param framer: an extension for framed byte streams (HTTP chunks): when
        the source has been read up to C{max}, instead of ending, the splice
        calls C{framer(data)} with the bytes that follow (up to 8 KiB,
        peeked: not taken from the source).  The framer returns how many
        more bytes the splice moves (its framing and the payload it
        announces: it may exceed C{len(data)}), 0 if it needs more bytes
        than C{data} to tell (it is called again with more, so it must not
        have changed its state), or C{Last(n)}: n more bytes, then the
        stream ends (MAX) and what follows stays with the source.  The
        framing moves with the payload, so nothing is copied through
        Python and the bytes in flight never wait for the framer; one
        splice serves a whole chunked body.
    @return: an L{ISplice}; its C{done} Deferred fires with the result.
    @raise SpliceError: the request is invalid (errno says why).
    """
    if reactor is None:
        from twisted.internet import reactor
    src, dst, max, idle, path = sosplice(source, drain, max, idle, backend)
    if framer is not None:
        if not callable(framer):
            raise SpliceError(errno.EINVAL, "framer must be callable, not %r" % (framer,))
        if src.kind == UDP:
            raise SpliceError(errno.EPROTONOSUPPORT, "a framer needs a byte stream, not datagrams")
    if path == "transport":
        s = TransportSplice(reactor, src, dst, max, idle)
    else:
        s = _socketSplice(reactor, src, dst, max, idle, path)
    srcKey, dstKey = _key(src), _key(dst)
    _sources[srcKey] = s
    _drains[dstKey] = s
    s.framer = framer
    s.done.addBoth(_forget, s, srcKey, dstKey)
    s.start()
    return s


def _forget(result, s, srcKey, dstKey):
    """The splice ended: its source and drain may be spliced again (no closure: idle relays hold many)."""
    if _sources.get(srcKey) is s:
        del _sources[srcKey]
    if _drains.get(dstKey) is s:
        del _drains[dstKey]
    return result


def _socketSplice(reactor, src, dst, max, idle, path):
    if path == "kernel":
        mover = KernelMover(src.socket.fileno(), dst.socket.fileno())
    elif src.kind == UDP:
        mover = DatagramMover(src.socket, dst.socket)
    else:
        mover = MbufMover(src.socket, dst.socket)
    return SocketSplice(
        reactor,
        borrow(src.socketTransport, reactor),
        borrow(dst.socketTransport, reactor),
        mover,
        max,
        idle,
    )


__all__ = ["splice", "sosplice", "TCP", "UDP"]
