"""
One port, two services: read the first bytes of each connection in user
land, pick the backend from them (SSH or HTTP, like sslh), then splice.

    python examples/portshare.py --listen tcp:4443 \\
        --ssh tcp:host=127.0.0.1:port=22 --http tcp:host=127.0.0.1:port=8080

An SSH client announces itself with "SSH-"; anything else goes to HTTP.
A client that says nothing for a second is assumed to be SSH (a server
speaks first there; OpenSSH clients send their banner at once anyway).
"""

import argparse
import sys

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import globalLogBeginner, textFileLogObserver

from splicing.relay.balance import clientFromString
from splicing.relay.tcp import RelayFactory, RelayProtocol
from splicing.app.service import RelayService


class PortSharer(RelayProtocol):
    headerLength = 4  # enough to tell "SSH-" from "GET ", "POST", ...
    headerTimeout = 1.0

    def chooseEndpoint(self, header):
        if header.startswith(b"SSH-") or not header:
            return self.factory.ssh
        return self.factory.http


class PortSharerFactory(RelayFactory):
    protocol = PortSharer

    def __init__(self, ssh, http, reactor):
        RelayFactory.__init__(self, [], name="portshare", reactor=reactor)
        self.ssh, self.http = ssh, http


async def main(reactor, argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="tcp:4443:interface=127.0.0.1")
    parser.add_argument("--ssh", default="tcp:host=127.0.0.1:port=22")
    parser.add_argument("--http", default="tcp:host=127.0.0.1:port=8080")
    args = parser.parse_args(argv)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    factory = PortSharerFactory(clientFromString(reactor, args.ssh), clientFromString(reactor, args.http), reactor)
    relay = RelayService([args.listen], factory, reactor=reactor)
    service.IService(relay).startService()
    await defer.Deferred()  # run until interrupted


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
