"""
A minimal TCP relay for the benchmarks, built on L{splicing.splice}.

    python -m benchmarks.splice_relay --listen PORT --connect RPORT \\
        [--host 127.0.0.1] --backend kernel|mbuf|transport|auto|copy

For each accepted connection: pause reading, connect to C{host:RPORT}, then
splice client -> server and server -> client with the chosen backend; when
the forward splice's C{done} fires (EOF from the client), unsplice the
reverse direction and close both connections (C{loseConnection}, so anything
the drain still buffers is written first).

C{--backend copy} does not use C{splicing} at all: a plain user-land relay
(C{dataReceived} -> peer C{transport.write}, with producer flow control),
the same shape as C{twistd portforward}, as a sanity reference.

Prints C{LISTENING <port>} once listening (useful with C{--listen 0}).
"""

import argparse
import sys

from twisted.internet import protocol
from twisted.python import log

SPLICE_BACKENDS = ("auto", "kernel", "mbuf", "transport")


# -- plain user-land copy relay (reference) --------------------------------


class CopyProtocol(protocol.Protocol):
    peer = None

    def dataReceived(self, data):
        self.peer.transport.write(data)

    def connectionLost(self, reason):
        if self.peer is not None:
            self.peer.transport.loseConnection()
            self.peer = None


# -- spliced relay ---------------------------------------------------------


class ServerSide(protocol.Protocol):
    """The relay's connection to the destination."""

    def __init__(self, client):
        self.client = client

    def connectionMade(self):
        self.client.serverConnected(self)

    def dataReceived(self, data):
        # Only reached before the splices start or after they end.
        if self.client.mode == "copy" and self.client.transport is not None:
            self.client.transport.write(data)

    def connectionLost(self, reason):
        self.client.serverLost(self)


class ServerFactory(protocol.ClientFactory):
    noisy = False

    def __init__(self, client):
        self.client = client

    def buildProtocol(self, addr):
        return ServerSide(self.client)

    def clientConnectionFailed(self, connector, reason):
        log.msg("connect to destination failed: %s" % (reason.getErrorMessage(),))
        self.client.transport.loseConnection()


class ClientSide(protocol.Protocol):
    """An accepted connection: the source of the forward splice."""

    server = None
    forward = None
    reverse = None
    closed = False

    def __init__(self, factory):
        self.factory = factory
        self.mode = factory.backend

    def connectionMade(self):
        self.transport.pauseProducing()
        from twisted.internet import reactor

        reactor.connectTCP(
            self.factory.host, self.factory.port, ServerFactory(self), timeout=10
        )

    def serverConnected(self, server):
        self.server = server
        if self.closed:
            server.transport.loseConnection()
            return
        if self.mode == "copy":
            # Producer flow control both ways, like twisted.protocols.portforward.
            server.transport.registerProducer(self.transport, True)
            self.transport.registerProducer(server.transport, True)
            self.transport.resumeProducing()
            return
        from splicing import splice

        backend = self.mode
        try:
            self.forward = splice(self.transport, server.transport, backend=backend)
            self.reverse = splice(server.transport, self.transport, backend=backend)
        except Exception as e:
            log.msg("splice(backend=%r) failed: %r" % (backend, e))
            self.closeBoth()
            return
        # One line per connection: the benchmark checks that no silent fallback happened.
        log.msg("BACKEND requested=%s forward=%s reverse=%s"
                % (backend, self.forward.backend, self.reverse.backend))
        self.forward.done.addCallbacks(self.forwardDone, self.spliceFailed)
        self.reverse.done.addCallbacks(self.reverseDone, self.spliceFailed)

    def forwardDone(self, r):
        if getattr(r.reason, "name", r.reason) != "EOF":
            log.msg(
                "forward splice ended: reason=%s error=%s length=%d backend=%s"
                % (r.reason, r.error, r.length, self.forward.backend)
            )
        self.closeBoth()

    def reverseDone(self, r):
        if getattr(r.reason, "name", r.reason) not in ("EOF", "UNSPLICED"):
            log.msg("reverse splice ended: reason=%s error=%s" % (r.reason, r.error))

    def spliceFailed(self, failure):
        log.err(failure, "splice done errback")
        self.closeBoth()

    def closeBoth(self):
        if self.reverse is not None:
            try:
                self.reverse.unsplice()
            except Exception:
                pass  # already ended
        if self.server is not None:
            self.server.transport.loseConnection()
        self.transport.loseConnection()

    def dataReceived(self, data):
        # copy mode; in splice mode only reached if a splice gave data back.
        if self.server is not None:
            self.server.transport.write(data)

    def connectionLost(self, reason):
        self.closed = True
        if self.mode == "copy" and self.server is not None:
            self.server.transport.loseConnection()

    def serverLost(self, server):
        if self.mode == "copy":
            self.transport.loseConnection()


class RelayFactory(protocol.Factory):
    noisy = False

    def __init__(self, host, port, backend):
        self.host = host
        self.port = port
        self.backend = backend

    def buildProtocol(self, addr):
        return ClientSide(self)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.splice_relay")
    p.add_argument("--listen", type=int, required=True, help="port (0: any free port)")
    p.add_argument("--interface", default="127.0.0.1")
    p.add_argument("--connect", type=int, required=True, help="destination port")
    p.add_argument("--host", default="127.0.0.1", help="destination host")
    p.add_argument("--backend", choices=SPLICE_BACKENDS + ("copy",), default="auto")
    p.add_argument("--verbose", action="store_true", help="log to stderr")
    args = p.parse_args(argv)

    if args.backend != "copy":
        import splicing  # noqa: F401  fail now rather than on the first connection
        from splicing import splice  # noqa: F401

    from twisted.internet import reactor

    log.startLogging(sys.stderr, setStdout=False)
    factory = RelayFactory(args.host, args.connect, args.backend)
    port = reactor.listenTCP(args.listen, factory, interface=args.interface)
    print("LISTENING %d" % (port.getHost().port,), flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
