"""
The UDP relay's datagram pump: every session socket of one relay in the
process's private epoll (L{splicing.relay.leanloop}, which the TCP relay's
lean sessions share), whose descriptor is the only reader the reactor sees.

With many clients each readiness event carries a few datagrams of one
session.  Through a Twisted port and a splice per direction, each event paid
Twisted's per-selectable dispatch (C{callWithLogger}, C{doRead}), the
splice's bookkeeping and a batch of clusters taken from the pool and given
back: more than the two system calls that move the datagrams.  Each turn
the loop hands the pump its ready sockets, and the pump moves one batch
from each: one C{recvmmsg} into the pump's own buffers, one
C{sendmmsg} to the socket on the other side, runs of equal sizes as GSO
messages (the mbuf path's batches, L{splicing.buffers.mmsg}, set up once
per relay instead of once per event).

Each socket is an L{Endpoint}: what it reads goes to its C{drain} (the
session's other socket), or, for a lean session's backend socket (C{drain}
None), to the session's C{answer} (sent from the listening socket).  A drain
that cannot take a datagram now (C{EAGAIN}) gets the rest of the batch
later, in order: its source stops being read until the drain is writable.
A socket error (C{ECONNREFUSED}, ...) ends the session.
"""

import array
import errno
import functools
import mmap
import select
import socket

from splicing.buffers import mmsg
from splicing.relay.leanloop import sessionLoop

_OUT, _ERR = int(select.EPOLLOUT), int(select.EPOLLERR)

#: The largest UDP payload is 65,527 bytes (IPv6; 65,507 over IPv4): a
#: 64 KiB buffer never truncates one.
MAX_DATAGRAM = 65536


class Endpoint:
    """
    One socket of a session.  C{datagrams}/C{length} count what was moved
    from it to its drain by the pump (the relay's "spliced" traffic).
    """

    __slots__ = ("socket", "fd", "session", "drain", "gso", "held", "mask", "datagrams", "length")

    def __init__(self, sock, session, drain=None):
        self.socket = sock
        self.fd = sock.fileno()
        self.session = session
        self.drain = drain
        # GSO only on UDP drains (any other datagram socket would ignore the
        # option and merge the datagrams); one that refuses it turns it off.
        self.gso = mmsg.gsoWanted and sock.family in (socket.AF_INET, socket.AF_INET6) \
            and sock.type == socket.SOCK_DGRAM
        self.held = None  # datagrams read here that the drain could not take yet
        self.mask = select.EPOLLIN
        self.datagrams = 0
        self.length = 0


class DatagramPump:
    """
    The relay's sessions' sockets in one epoll (see the module).  Start it
    with L{start}, add and remove endpoints, L{stop} it with the relay.
    """

    #: Datagrams per batch (one C{recvmmsg}); the loop bounds the ready
    #: sockets per turn, so the listening socket and the timers get theirs.
    BATCH = 64

    def __init__(self, reactor):
        self.reactor = reactor
        self._loop = None
        self._ends = {}  # fd -> Endpoint
        self._vec = None
        self._views = None
        self._full = None

    def start(self):
        self._loop = sessionLoop(self.reactor)

    def stop(self):
        if self._loop is not None:
            for fd in list(self._ends):
                self._loop.unregister(fd)
            self._loop = None
        self._ends.clear()

    # -- endpoints

    def add(self, end):
        self._loop.register(end.fd, functools.partial(self._ready, end), end.mask)
        self._ends[end.fd] = end

    def remove(self, end):
        """Forget an endpoint; before its socket is closed (its number may be reused at once)."""
        if self._ends.get(end.fd) is end:
            del self._ends[end.fd]
            if self._loop is not None:
                self._loop.unregister(end.fd)

    def _interest(self, end, mask):
        if end.mask != mask and self._ends.get(end.fd) is end:
            end.mask = mask
            self._loop.modify(end.fd, mask)

    # -- a ready socket

    def _ready(self, end, events):
        ends, fd = self._ends, end.fd
        if ends.get(fd) is not end:
            return
        if events & _OUT:
            self._release(end)
            if ends.get(fd) is not end:
                return  # its session ended there
        if events & ~_OUT:
            if not end.held:
                self._move(end)
            elif events & _ERR:  # not read while it holds: level-triggered, it would come back each turn
                error = end.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    end.session.end("error", error)

    def _buffers(self):
        """The batch's buffers, made at the first batch: anonymous memory, only touched pages count."""
        n = self.BATCH
        memory = mmap.mmap(-1, n * MAX_DATAGRAM)
        whole = memoryview(memory)
        self._views = [whole[i * MAX_DATAGRAM:(i + 1) * MAX_DATAGRAM] for i in range(n)]
        self._vec = mmsg.vector(n)
        self._vec.setBuffers(0, self._views)
        self._full = array.array("Q", [MAX_DATAGRAM] * n)
        return self._vec

    def _move(self, end):
        """One batch from C{end}'s socket to its drain (or to the session's answer)."""
        vec = self._vec or self._buffers()
        try:
            n = vec.recv(end.socket, 0, self.BATCH, False)  # connected: no addresses
        except BlockingIOError:
            return
        except OSError as e:  # a pending ICMP error (ECONNREFUSED, ...): the session is over
            end.session.end("error", e.errno)
            return
        lens = vec.lengths(0, n)
        drain = end.drain
        if drain is None:
            end.session.answer(self._views, lens)
            return
        vec.setLengths(0, lens)
        try:
            self._send(end, drain, lens)
        finally:
            vec.setLengths(0, self._full[:n])

    def _send(self, end, drain, lens):
        vec = self._vec
        groups = mmsg.groups(lens, drain.gso)
        vec.setGroups(groups)
        i, count = 0, len(groups)
        while i < count:
            try:
                sent = vec.send(drain.socket, i, count - i)
            except BlockingIOError:
                self._hold(end, drain, lens, groups[i][0])
                return
            except OSError as e:
                if groups[i][1] > 1 and e.errno in mmsg.GSO_ERRORS:
                    drain.gso = False  # this socket, or this size, cannot: one datagram per message
                    first = groups[i][0]
                    groups = groups[:i] + [(k, 1, lens[k]) for k in range(first, len(lens))]
                    vec.setGroups(groups)
                    count = len(groups)
                    continue
                end.session.relay.lost += len(lens) - groups[i][0]
                end.session.end("error", e.errno)
                return
            if sent == count - i and i == 0:
                end.datagrams += len(lens)
                end.length += sum(lens)
            else:
                for first, k, size in groups[i:i + sent]:
                    end.datagrams += k
                    end.length += sum(lens[first:first + k])
            i += sent

    def _hold(self, end, drain, lens, first):
        """The drain is full: keep the rest (copied), stop reading C{end}, wait for the drain."""
        views = self._views
        end.held = [bytes(views[k][:lens[k]]) for k in range(first, len(lens))]
        self._interest(end, end.mask & ~select.EPOLLIN)
        self._interest(drain, drain.mask | select.EPOLLOUT)

    def _release(self, drain):
        """A drain is writable again: send what its source holds, then read the source again."""
        source = drain.drain  # a session's two endpoints drain into each other
        held = source.held if source is not None else None
        while held:
            data = held[0]
            try:
                drain.socket.send(data)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                source.session.relay.lost += len(held)
                source.held = None
                source.session.end("error", e.errno)
                return
            del held[0]
            source.datagrams += 1
            source.length += len(data)
        self._interest(drain, drain.mask & ~select.EPOLLOUT)
        if source is not None:
            source.held = None
            self._interest(source, source.mask | select.EPOLLIN)


__all__ = ["DatagramPump", "Endpoint", "MAX_DATAGRAM"]
