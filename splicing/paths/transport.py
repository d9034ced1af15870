"""
The transport path: any Twisted byte-stream transport, through the
producer/consumer API.

For transports without a usable socket (TLS above all, but also stdio and
in-memory test transports) the splice intercepts the source protocol's
C{dataReceived} and writes to the drain transport, with the drain pausing
the source when its buffer fills.  Payload passes through Python, but the
semantics (max, idle, order, endings, what stays with the source) are those
of the socket paths.
"""

import errno

from twisted.internet import error as twerror
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from splicing.core.base import FRAMER_PEEK, SpliceBase
from splicing.core.endpoint import TLSMemoryBIOProtocol
from splicing.core.result import Reason
from splicing.core.takeover import isReading

_MISSING = object()


def _producerOf(transport):
    """
    The producer registered with C{transport}.  A TLS transport keeps it
    wrapped in its own C{_producer} (its C{producer} attribute is the one
    of the TCP transport under it: the wrapper).
    """
    if TLSMemoryBIOProtocol and isinstance(transport, TLSMemoryBIOProtocol):
        membrane = transport._producer
        return None if membrane is None else membrane._producer
    return getattr(transport, "producer", None)


@implementer(IPushProducer)
class _Throttle:
    """Registered with the drain: passes its flow control to the source."""

    def __init__(self, splice):
        self.splice = splice

    def pauseProducing(self):
        self.splice._pause()

    def resumeProducing(self):
        self.splice._resume()

    def stopProducing(self):
        self.splice._drainLost()


class TransportSplice(SpliceBase):
    """A splice that moves bytes through C{dataReceived} and C{write()}."""

    backend = "transport"

    def __init__(self, reactor, src, dst, max, idle):
        SpliceBase.__init__(self, reactor, max, idle)
        self._src = src.transport
        self._dst = dst.transport
        self._receiver = src.receiver
        self._saved = {}
        self._leftover = []
        self._paused = False
        self._throttle = _Throttle(self)
        self._oldProducer = None
        self._kick = None
        self._past = b""  # received past the maximum, more than the framer could judge yet

    def start(self):
        self._override("dataReceived", self._dataReceived)
        self._override("connectionLost", self._connectionLost)
        if hasattr(self._receiver, "readConnectionLost"):
            self._override("readConnectionLost", self._readConnectionLost)
        old = _producerOf(self._dst)
        if old is not None:
            self._oldProducer = (old, getattr(self._dst, "streamingProducer", True))
            self._dst.unregisterProducer()
        self._dst.registerProducer(self._throttle, True)
        self._startIdle()
        if self.max == 0 and self.framer is None:
            self._kick = self.reactor.callLater(0, self._atMax)

    # -- interception of the source protocol

    def _override(self, name, func):
        d = self._receiver.__dict__
        self._saved[name] = (d.get(name, _MISSING), func)
        d[name] = func

    def _restoreAll(self):
        d = self._receiver.__dict__
        for name, (saved, ours) in self._saved.items():
            if d.get(name) is ours:
                if saved is _MISSING:
                    del d[name]
                else:
                    d[name] = saved
        self._saved = {}

    def _original(self, name):
        saved = self._saved.get(name, (_MISSING, None))[0]
        if saved is not _MISSING:
            return saved
        return getattr(self._receiver, name)

    def _dataReceived(self, data):
        if self._past:
            data, self._past = self._past + data, b""
        while True:
            past = b""
            if self.max is not None:
                room = self.max - self.length
                data, past = data[:room], data[room:]
            if data:
                self._dst.write(data)
                self.length += len(data)
                self._touch()
            if self.max is None or self.length < self.max:
                return
            if self.framer is None:
                return self._atMax(past)
            if not past:
                return  # the framer needs what follows: wait for it
            if not self._frame(past[:FRAMER_PEEK]):
                self._past = past
                return
            data = past

    def _atMax(self, past=b""):
        """The maximum, and no framer to extend it: end; bytes past it go back."""
        self._giveBack(past)
        self._end(Reason.MAX)

    def _connectionLost(self, reason):
        original = self._original("connectionLost")
        if getattr(self._src, "disconnecting", False) or reason.check(twerror.ConnectionAborted):
            self._end(Reason.ERROR, errno.ECONNABORTED)  # closed by the application
        elif reason.check(twerror.ConnectionDone):
            self._end(Reason.EOF)
        else:
            self._end(Reason.ERROR, getattr(reason.value, "errno", None) or errno.ECONNRESET)
        original(reason)

    def _readConnectionLost(self):
        original = self._original("readConnectionLost")
        self._end(Reason.EOF)
        original()

    # -- flow control from the drain

    def _pause(self):
        if not self._paused:
            self._paused = True
            self._src.pauseProducing()

    def _resume(self):
        self._touch()
        if self._paused:
            self._paused = False
            self._src.resumeProducing()

    def _drainLost(self):
        self._end(Reason.ERROR, errno.EPIPE)

    # -- the ending

    def _giveBack(self, data):
        if data:
            self._leftover.append(data)

    def _dissolve(self):
        self._giveBack(self._past)
        self._past = b""
        if self._kick is not None and self._kick.active():
            self._kick.cancel()
        self._restoreAll()
        if _producerOf(self._dst) is self._throttle:
            self._dst.unregisterProducer()
        if self._oldProducer is not None:
            self._dst.registerProducer(*self._oldProducer)
        if self._paused:
            self._paused = False
            self._src.resumeProducing()

    def _afterDone(self, failed):
        if not self._leftover or self._receiver is None:
            return
        data = b"".join(self._leftover)
        self._leftover = []
        if self.result.reason is not Reason.EOF and self._sourcePaused():
            self._deliverOnResume(data)  # (after EOF nothing will resume it: deliver now)
        else:
            self._receiver.dataReceived(data)

    def _sourcePaused(self):
        """Whether the application paused the source (when that can be told)."""
        under = self._src
        if TLSMemoryBIOProtocol and isinstance(under, TLSMemoryBIOProtocol):
            under = under.transport
        if not isinstance(under, FileDescriptor) or not under.connected:
            return False
        return not isReading(self.reactor, under)

    def _deliverOnResume(self, data):
        """Hold bytes past max until the application resumes the source."""
        src = self._src
        d = src.__dict__
        saved = d.get("resumeProducing", _MISSING)

        def resumeProducing():
            if saved is _MISSING:
                d.pop("resumeProducing", None)
            else:
                d["resumeProducing"] = saved
            self._receiver.dataReceived(data)
            src.resumeProducing()

        d["resumeProducing"] = resumeProducing
