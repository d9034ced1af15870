"""
The data paths behind C{splice()}: kernel (splice(2) through pipes), mbuf
(user land without payload copies) and transport (producer/consumer, for
anything without a usable socket).  L{choose} picks one for a request.
"""

import errno
import os
import sys

from splicing.core.endpoint import STREAM, TCP
from splicing.core.errors import SpliceError

BACKENDS = ("kernel", "mbuf", "transport")

#: Process-wide off switch for the kernel path, like relayd's "no splice":
#: SPLICING_NO_KERNEL=1 in the environment, or L{setKernelEnabled}(False).
_kernelEnabled = os.environ.get("SPLICING_NO_KERNEL", "") in ("", "0")

#: What backend="auto" picks for TCP when both socket paths can serve.
#: See docs/backends.md for the measurements behind the choice.
AUTO_TCP = os.environ.get("SPLICING_AUTO", "kernel")


def setKernelEnabled(flag):
    """Turn the kernel path on or off for this process."""
    global _kernelEnabled
    _kernelEnabled = bool(flag)


def kernelAvailable():
    return _kernelEnabled and sys.platform.startswith("linux") and hasattr(os, "splice")


def _socketPaths(src, dst):
    """The socket paths that can serve the pair, best first."""
    if not (src.canUseSocket and dst.canUseSocket) or src.kind != dst.kind:
        return []
    if src.kind == TCP:
        paths = ["mbuf"]
        if kernelAvailable():
            paths.insert(0 if AUTO_TCP == "kernel" else 1, "kernel")
        return paths
    return ["mbuf"]  # UDP: splice(2) loses datagram boundaries


def choose(backend, src, dst):
    """
    The path to use for C{backend} ("auto" or a name) and two described
    endpoints; raises L{SpliceError} when it cannot serve them.
    """
    if backend not in BACKENDS and backend != "auto":
        raise SpliceError(errno.EINVAL, "unknown backend %r" % (backend,))
    socketPaths = _socketPaths(src, dst)
    transportOK = src.receiver is not None and src.kind in (TCP, STREAM) and dst.kind in (TCP, STREAM)
    if backend == "auto":
        if socketPaths:
            return socketPaths[0]
        if transportOK:
            return "transport"
        raise SpliceError(errno.EOPNOTSUPP, "no path can splice these transports")
    if backend == "transport":
        if transportOK:
            return backend
    elif backend in socketPaths:
        return backend
    elif backend == "kernel" and not kernelAvailable() and socketPaths:
        raise SpliceError(errno.EOPNOTSUPP, "the kernel path is switched off or unavailable")
    raise SpliceError(errno.EOPNOTSUPP, "the %s path cannot splice these transports" % (backend,))
