"""
Listening sockets a master process binds and its workers serve
(C{twistd splice --workers N}).

The master binds every socket itself, so a bind error is reported once
(and stops it with status 1) and C{tcp:0} means one port for all workers.
Endpoint strings are parsed as usual, on both sides, with a reactor
stand-in: where an endpoint would bind (C{listenTCP}, C{listenSSL},
C{listenUNIX}) or adopt (C{systemd:}), the master's L{Binder} makes the
sockets and a worker's L{Adopter} takes over the one meant for it.
Wrappers apply in the worker: C{ssl:} wraps the adopted socket in TLS,
C{haproxy:} reads PROXY headers from it.

A TCP address is one socket that every worker accepts from: whichever
worker the scheduler runs next takes the next client, so a worker that is
slow (a busy core), full (C{--max-sessions}) or dead (until it is
restarted) leaves its clients to the others.  Each client wakes every
worker (all but one find nothing to accept): a few microseconds against
the hundreds a session costs, and measured no slower on 2 cores than one
C{SO_REUSEPORT} socket per worker (docs/usage.md), which pins each client
to one worker by a hash of its address.  C{SPLICING_WORKER_SOCKETS=reuseport}
selects the latter, for measurements.  UNIX and systemd sockets are always
one.  UDP addresses are always one C{SO_REUSEPORT} socket per worker: the
hash keeps a client's datagrams on one worker, which must hold its session.
"""

import os
import socket

from twisted.application import service
from twisted.internet import defer, protocol, tcp, unix

from splicing.app.service import ListeningService
from splicing.relay import udp

SHARED = "shared"
REUSEPORT = "reuseport"


def sharing():
    """How TCP addresses are shared: L{SHARED} (default) or L{REUSEPORT}."""
    return REUSEPORT if os.environ.get("SPLICING_WORKER_SOCKETS") == REUSEPORT else SHARED


class _ReusePort(tcp.Port):
    """A TCP port bound with C{SO_REUSEPORT} (Twisted < 25 has no Binding for it)."""

    def createInternetSocket(self):
        s = tcp.Port.createInternetSocket(self)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return s


class Sockets:
    """
    The sockets of one C{--listen}: one per worker, or one for all.

    @ivar ports: the master's listening ports (not read: workers accept).
    """

    def __init__(self, ports, kind="stream"):
        self.ports = ports
        self.kind = kind

    def getHost(self):
        return self.ports[0].getHost()

    def stopListening(self):
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.ports])

    def forWorker(self, index):
        """(fd, family, kind) of the socket worker C{index} serves."""
        port = self.ports[index % len(self.ports)]
        return port.fileno(), int(port.socket.family), self.kind


def _quiet(port):
    """Bound and listening, but never read: the workers accept."""
    port.startListening()
    port.stopReading()
    return port


class Binder:
    """
    A reactor stand-in for the master: endpoints bind through it.

    @param count: the number of workers (sockets per TCP address).
    """

    def __init__(self, reactor, count, how=None):
        self.reactor = reactor
        self.count = count
        self.how = how or sharing()

    def __getattr__(self, name):
        return getattr(self.reactor, name)

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if self.how == SHARED:
            return Sockets([_quiet(tcp.Port(port, factory, backlog, interface, self.reactor))])
        first = _quiet(_ReusePort(port, factory, backlog, interface, self.reactor))
        bound = first.getHost().port  # tcp:0: every worker's socket on the same port
        rest = [_quiet(_ReusePort(bound, factory, backlog, interface, self.reactor)) for _ in range(self.count - 1)]
        return Sockets([first] + rest)

    def listenSSL(self, port, factory, contextFactory, backlog=50, interface=""):
        return self.listenTCP(port, factory, backlog, interface)  # TLS happens in the workers

    def listenUNIX(self, address, factory, backlog=50, mode=0o666, wantPID=0):
        return Sockets([_quiet(unix.Port(address, factory, backlog, mode, self.reactor, wantPID))])

    def adoptStreamPort(self, fileDescriptor, addressFamily, factory):
        port = self.reactor.adoptStreamPort(fileDescriptor, addressFamily, factory)
        port.stopReading()
        return Sockets([port])

    def bindUDP(self, interface, port):
        """Sockets for a UDP relay's C{udp:PORT:interface=ADDR}, as the relay binds them."""
        class Port(udp._ListenPort):
            def createInternetSocket(self):
                s = udp._ListenPort.createInternetSocket(self)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                return s

        def bind(number):
            return _quiet(Port(number, protocol.DatagramProtocol(), interface, 65536, self.reactor))

        first = bind(port)
        bound = first.getHost().port
        return Sockets([first] + [bind(bound) for _ in range(self.count - 1)], "datagram")


class _InheritedUNIXPort(unix.Port):
    """A UNIX port that leaves its file alone when it stops: the master owns it."""

    def connectionLost(self, reason):
        tcp.Port.connectionLost(self, reason)


class Adopter:
    """
    A reactor stand-in for a worker: the endpoint of one C{--listen}
    adopts the inherited socket C{fd} instead of binding one.
    """

    def __init__(self, reactor, fd, family):
        self.reactor = reactor
        self.fd = fd
        self.family = family

    def __getattr__(self, name):
        return getattr(self.reactor, name)

    def _adopt(self, factory):
        # fromfd() duplicates the descriptor: close ours, or a retired
        # worker would keep the socket queueing clients nobody accepts.
        try:
            if self.family == socket.AF_UNIX:
                port = _InheritedUNIXPort._fromListeningDescriptor(self.reactor, self.fd, factory)
                port.startListening()
            else:
                port = self.reactor.adoptStreamPort(self.fd, self.family, factory)
        finally:
            os.close(self.fd)
        return port

    def listenTCP(self, port, factory, backlog=50, interface=""):
        return self._adopt(factory)

    def listenSSL(self, port, factory, contextFactory, backlog=50, interface=""):
        from twisted.protocols.tls import TLSMemoryBIOFactory

        return self._adopt(TLSMemoryBIOFactory(contextFactory, False, factory))

    def listenUNIX(self, address, factory, backlog=50, mode=0o666, wantPID=0):
        return self._adopt(factory)

    def adoptStreamPort(self, fileDescriptor, addressFamily, factory):
        return self._adopt(factory)


class Inherited:
    """
    A worker's inherited sockets: C{{relay name: [(fd, family, kind), ...]}}
    in C{--listen} order.
    """

    def __init__(self, reactor, table):
        self.reactor = reactor
        self.table = table

    def adopters(self, name):
        """The reactor stand-ins for relay C{name}'s listens, by index."""
        return [Adopter(self.reactor, fd, family) for fd, family, _ in self.table.get(name, [])]

    def attach(self, name, relay):
        """Relay service C{name}, made to serve its inherited sockets."""
        if isinstance(relay, ListeningService):
            relay.sockets = self.adopters(name)
            return relay
        return _InheritedUDP(relay, self.datagram(name))

    def datagram(self, name):
        """UDP relay C{name}'s socket."""
        fd, family, _ = self.table[name][0]
        return socket.socket(family, socket.SOCK_DGRAM, fileno=fd)


class _InheritedUDP(service.MultiService):
    """A UDP relay (its only child) started on an inherited socket."""

    def __init__(self, relay, sock):
        service.MultiService.__init__(self)
        relay.inheritedSocket = sock
        relay.setServiceParent(self)


__all__ = ["Binder", "Sockets", "Adopter", "Inherited", "sharing"]
