"""
How the HTTP proxy's connections end: what a transport still owes its
peer, and a bound on how long a closing session may wait for it.

A session ends by closing both connections.  A graceful close
(C{loseConnection}) first flushes what the application wrote, which a peer
that stopped reading never lets finish: L{Linger} resets what is still
open after the session's idle timeout, so no socket outlives its session
by more than that.  A client that sent its EOF while a response is
outstanding may have left: L{StallWatch} ends the session once that
response stops moving (L{HALF_CLOSED_STALL}).
"""


def writesPending(transport):
    """
    Whether C{transport} (TCP, or TLS over TCP) is open and holds bytes
    written but not yet handed to the kernel.
    """
    if not isOpen(transport):
        return False
    for t in (transport, getattr(transport, "transport", None)):  # TLS: the TCP transport under it
        if t is None:
            continue
        if getattr(t, "_appSendBuffer", None):
            return True
        if getattr(t, "_tempDataLen", 0) or len(getattr(t, "dataBuffer", b"")) > getattr(t, "offset", 0):
            return True
    return False


def isOpen(transport):
    """Whether C{transport} is connected and neither lost nor aborted yet."""
    return bool(getattr(transport, "connected", False) and not getattr(transport, "disconnected", False)
                and not getattr(transport, "_aborting", False) and not getattr(transport, "_aborted", False))


def reset(transport):
    """
    Abort C{transport} unless it is gone or aborted already: Twisted's TLS
    transport fails on a second abort, or on one after its connection was
    lost.
    """
    if transport is not None and isOpen(transport):
        transport.abortConnection()


class Linger:
    """
    Reset the transports of an ended session that are still open after
    C{timeout} seconds (0: never).
    """

    def __init__(self, reactor, timeout):
        self.reactor = reactor
        self.timeout = timeout
        self._call = None
        self._transports = ()

    def start(self, *transports):
        if not self.timeout or self._call is not None:
            return
        self._transports = [t for t in transports if t is not None]
        self._call = self.reactor.callLater(self.timeout, self._reset)

    def cancel(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._transports = ()

    def _reset(self):
        self._call = None
        for t in self._transports:
            reset(t)
        self._transports = ()


#: Seconds a response may make no progress after the client ended its side
#: (EOF) before the session ends (C{client-gone}).  A FIN cannot tell a
#: client that half-closed and still reads from one that closed and left
#: (curl --max-time, a closed tab): while bytes move, the answer goes on; a
#: client gone for good learns nothing of a stalled origin, and would hold
#: both connections until --idle.  nginx ends such a session at once (499).
HALF_CLOSED_STALL = 1.0


class StallWatch:
    """
    Call C{callback()} once C{progress()} has not changed for C{timeout}
    seconds (looked at every quarter of it), unless L{cancel}led first.
    """

    def __init__(self, reactor, timeout, progress, callback):
        self.reactor = reactor
        self.timeout = timeout
        self.progress = progress
        self.callback = callback
        self._call = None
        self._last = self._since = None

    def start(self):
        if self._call is not None or not self.timeout:
            return
        self._last, self._since = self.progress(), self.reactor.seconds()
        self._call = self.reactor.callLater(self.timeout / 4.0, self._check)

    def cancel(self):
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _check(self):
        self._call = None
        now, progress = self.reactor.seconds(), self.progress()
        if progress != self._last:
            self._last, self._since = progress, now
        elif now - self._since >= self.timeout:
            self.callback()
            return
        self._call = self.reactor.callLater(min(self.timeout / 4.0, self._since + self.timeout - now), self._check)
