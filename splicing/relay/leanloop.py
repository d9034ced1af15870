"""
One epoll for the sockets of many lean sessions, itself one reader of the reactor.

Twisted dispatches each readiness event through C{callWithLogger} (a log
context, C{logPrefix()}, C{fileno()} checks) into a transport's C{doRead},
which hands the bytes to a protocol: about ten microseconds an event before
anything is read.  A relay session that only moves bytes between two
sockets needs none of that.  L{SessionLoop} keeps their descriptors in an
epoll instance of its own, registered with the reactor as a single reader:
when any of them is ready, the reactor calls L{SessionLoop.doRead} once
(without a log context: L{splicing.relay.dispatch}),
which collects the ready descriptors with C{epoll_wait} (no waiting) and
calls each one's handler directly.  Timers, other transports and the
listening ports stay the reactor's, so everything still runs in one thread
and one loop.

A handler closing its descriptor during a batch may see the number reused
by a socket opened in the same batch (a failover connect): events for a
descriptor forgotten during the batch are dropped for the rest of it.
"""

import select

from twisted.logger import Logger

from splicing.relay.dispatch import dispatchDirectly

_loops = {}  # reactor -> its SessionLoop


def sessionLoop(reactor):
    """The L{SessionLoop} of C{reactor}, made (and added as a reader) on first use."""
    loop = _loops.get(reactor)
    if loop is None or loop.closed:
        loop = _loops[reactor] = SessionLoop(reactor)
    return loop


class SessionLoop:
    """
    Descriptors and their handlers: C{handler(events)} is called with the
    epoll event mask whenever the descriptor is ready.  Level-triggered: a
    handler that leaves bytes unread is called again on the next turn.

    @ivar batch: the most events handled per reactor turn (the rest wait a
        turn, so timers and other readers are not starved).
    """

    log = Logger()
    batch = 512

    def __init__(self, reactor):
        self.reactor = reactor
        self.epoll = select.epoll()
        self.handlers = {}
        self.closed = False
        self._stale = set()
        dispatchDirectly(reactor, self)  # (its handlers log through twisted.logger only)
        reactor.addReader(self)

    # -- the reactor's side (an IReadDescriptor)

    def fileno(self):
        return -1 if self.closed else self.epoll.fileno()

    def logPrefix(self):
        return "splicing-sessions"

    def doRead(self):
        handlers, stale = self.handlers, self._stale
        stale.clear()
        for fd, events in self.epoll.poll(0, self.batch):
            handler = handlers.get(fd)
            if handler is None or fd in stale:
                continue
            try:
                handler(events)
            except Exception:
                self.log.failure("session handler for descriptor {fd} failed", fd=fd)
                owner = getattr(handler, "__self__", None)
                if owner is not None and hasattr(owner, "crashed"):
                    owner.crashed()
        stale.clear()

    def connectionLost(self, reason):
        self.close()

    # -- the sessions' side

    def register(self, fd, handler, events):
        self.epoll.register(fd, events)
        self.handlers[fd] = handler

    def modify(self, fd, events):
        self.epoll.modify(fd, events)

    def forget(self, fd):
        """
        C{fd} is about to be closed: its handler is dropped (closing the
        descriptor removes it from the epoll, no system call needed).
        """
        if self.handlers.pop(fd, None) is not None:
            self._stale.add(fd)

    def unregister(self, fd):
        """Stop watching C{fd}, which stays open."""
        if self.handlers.pop(fd, None) is not None:
            self._stale.add(fd)
            try:
                self.epoll.unregister(fd)
            except OSError:
                pass

    def close(self):
        if not self.closed:
            self.closed = True
            self.reactor.removeReader(self)
            self.epoll.close()
            self.handlers.clear()


__all__ = ["SessionLoop", "sessionLoop"]
