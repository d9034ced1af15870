"""
The equivalent of OpenBSD's regress/sys/kern/sosplice/perf/relay.c: accept
one client, connect to a server, move the bytes both ways either by copying
them through Python (-c, what read(2)/write(2) would do) or by splicing
them (-s, the default), and print the byte counts of each direction.

    python examples/relay.py [-c|-s] [-n SESSIONS] LISTEN CONNECT
    python examples/relay.py -s tcp:12345:interface=127.0.0.1 tcp:host=127.0.0.1:port=80

LISTEN and CONNECT are Twisted endpoint strings.  The process exits after
SESSIONS sessions (default 1), like relay.c.
"""

import argparse
import sys

from twisted.internet import defer, endpoints, protocol, task
from twisted.internet.interfaces import IHalfCloseableProtocol
from zope.interface import implementer

from splicing import splice


@implementer(IHalfCloseableProtocol)
class Copier(protocol.Protocol):
    """One direction's source in copy mode: every byte passes through dataReceived."""

    peer = None
    count = 0
    spliced = False  # in splice mode the splices relay EOF, not this protocol

    def connectionMade(self):
        self.finished = defer.Deferred()

    def dataReceived(self, data):
        self.count += len(data)
        self.peer.transport.write(data)

    def readConnectionLost(self):
        if not self.spliced:
            self.peer.transport.loseWriteConnection()
        if not self.finished.called:
            self.finished.callback(self.count)

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        if not self.finished.called:
            self.finished.callback(self.count)


async def session(reactor, port, connect, mode):
    accepted = defer.Deferred()
    factory = protocol.Factory.forProtocol(Copier)
    factory.buildProtocol = lambda addr: _fire(accepted, Copier())
    listening = await port.listen(factory)
    client = await accepted
    await listening.stopListening()
    client.transport.pauseProducing()
    server = await connect.connect(protocol.Factory.forProtocol(Copier))
    client.peer, server.peer = server, client
    if mode == "splice":
        client.spliced = server.spliced = True
        out, back = splice(client.transport, server.transport), splice(server.transport, client.transport)
        out.done.addCallback(lambda r: server.transport.loseWriteConnection() or r)
        back.done.addCallback(lambda r: client.transport.loseWriteConnection() or r)
        client.transport.resumeProducing()
        results = await defer.gatherResults([out.done, back.done])
        counts, path = [r.length for r in results], out.backend
    else:  # the protocols own the bytes, each transport throttling the other
        for side in (client, server):
            side.transport.registerProducer(side.peer.transport, True)
        client.transport.resumeProducing()
        counts, path = await defer.gatherResults([client.finished, server.finished]), "copy"
        for side in (client, server):
            side.transport.unregisterProducer()
    client.transport.loseConnection()
    server.transport.loseConnection()
    print("%s: %d bytes client -> server, %d bytes server -> client (%s)" % (mode, counts[0], counts[1], path))
    sys.stdout.flush()


def _fire(d, proto):
    d.callback(proto)
    return proto


async def main(reactor, argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("-c", dest="mode", action="store_const", const="copy", help="copy through Python")
    mode.add_argument("-s", dest="mode", action="store_const", const="splice", help="splice (default)")
    parser.add_argument("-n", dest="sessions", type=int, default=1, help="sessions before exiting")
    parser.add_argument("listen")
    parser.add_argument("connect")
    args = parser.parse_args(argv)
    port = endpoints.serverFromString(reactor, args.listen)
    connect = endpoints.clientFromString(reactor, args.connect)
    for _ in range(args.sessions):
        await session(reactor, port, connect, args.mode or "splice")


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
