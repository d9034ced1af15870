"""
Readiness events for the relays' own selectables, without a log context each.

Twisted's epoll reactor calls every ready selectable through
C{log.callWithLogger}: C{logPrefix()}, a copy of the legacy log context
with its C{system} set, a push and a pop, so that C{twisted.python.log}
calls made meanwhile carry the prefix.  That costs 1.3 µs an event warm
and more after the process slept: in a 1-byte ping-pong through the TCP
relay it was half of the relay's user time per round trip (12 -> 6-7 µs
without it), and 10 % of the HTTP proxy's CPU per small request.  The
relays log with L{twisted.logger}, whose events never read that context,
so for a selectable whose code is all ours it buys nothing.

L{dispatchDirectly} marks such a selectable (the session loop; the HTTP
proxy's and the TCP relay's sockets, unless their protocol class sets
C{legacyLogContext}) and gives the reactor
an iteration that calls C{_doReadOrWrite} (Twisted's own read, write,
error and disconnect handling) directly for marked selectables, and
through C{callWithLogger} exactly as before for every other.  It replaces
only the stock C{EPollReactor.doPoll}: another reactor, or a subclass with
its own polling, keeps its dispatch, which is slower and never different.
"""

import errno

from twisted.python import log

#: The attribute that marks a selectable for direct dispatch.
MARK = "_splicingDirect"


def dispatchDirectly(reactor, selectable):
    """
    Dispatch C{selectable}'s readiness events without a log context.  A
    transport that wraps a socket transport (TLS) is left as it is: its
    code is Twisted's, which may log through the context.

    @return: whether C{reactor} dispatches it directly from now on.
    """
    if not callable(getattr(selectable, "doRead", None)) or not install(reactor):
        return False
    setattr(selectable, MARK, True)
    return True


def install(reactor):
    """Give C{reactor} the direct dispatch, once; False for a reactor it does not fit."""
    own = getattr(reactor, "__dict__", {}).get("doIteration")
    if own is not None:  # ours already, or someone else's: left as it is
        return getattr(own, MARK, False)
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # (no epoll: not Linux)
        return False
    cls, stock = type(reactor), EPollReactor.doPoll
    if not isinstance(reactor, EPollReactor) or not (cls.doIteration is stock and cls.doPoll is stock):
        return False
    reactor.doIteration = _directPoll(reactor)
    return True


def uninstall(reactor):
    """Give C{reactor} its own dispatch back (marks stay, unread)."""
    if getattr(getattr(reactor, "__dict__", {}).get("doIteration"), MARK, False):
        del reactor.doIteration


def _directPoll(reactor):
    """C{EPollReactor.doPoll} for C{reactor}, marked selectables dispatched directly."""
    selectables, dispatch, callWithLogger = reactor._selectables, reactor._doReadOrWrite, log.callWithLogger

    def doPoll(timeout):
        if timeout is None:
            timeout = -1  # wait indefinitely
        try:
            ready = reactor._poller.poll(timeout, len(selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        for fd, event in ready:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            if getattr(selectable, MARK, False):
                dispatch(selectable, fd, event)
            else:
                callWithLogger(selectable, dispatch, selectable, fd, event)

    setattr(doPoll, MARK, True)
    return doPoll


__all__ = ["dispatchDirectly", "install", "uninstall", "MARK"]
