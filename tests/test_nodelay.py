"""
Relays send what they forward at once (TCP_NODELAY on both of a session's
sockets): without it, a client writing a request in two pieces waited for
Nagle's algorithm and the server's delayed ACK, about 40 ms, in 3-7 % of
exchanges through the TCP relay (measured before the change).
"""

import socket

import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

from harness import wait_until
from httpharness import Proxy, WebOrigin, raw, request_bytes
from splicing.core.endpoint import noDelay


def nodelay(transport):
    return transport.getHandle().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def record(monkeypatch, module):
    """Make C{module.noDelay} record the transports it set (and still set them)."""
    seen = []

    def spy(transport):
        noDelay(transport)
        seen.append((transport, nodelay(transport)))

    monkeypatch.setattr(module + ".noDelay", spy)
    return seen


@pytest_twisted.ensureDeferred
async def test_no_delay_on_tcp_and_harmless_elsewhere(net, tmp_path):
    server = net.listen(protocol.Factory.forProtocol(protocol.Protocol))
    a = await protocol.ClientCreator(reactor, protocol.Protocol).connectTCP("127.0.0.1", server.getHost().port)
    net.transports.append(a.transport)
    assert nodelay(a.transport) == 0
    noDelay(a.transport)
    assert nodelay(a.transport) == 1
    noDelay(None)  # nothing under it: nothing to do
    port = reactor.listenUNIX(str(tmp_path / "s"), protocol.Factory.forProtocol(protocol.Protocol))
    net.ports.append(port)
    p = await protocol.ClientCreator(reactor, protocol.Protocol).connectUNIX(str(tmp_path / "s"))
    net.transports.append(p.transport)
    noDelay(p.transport)  # a UNIX socket has no Nagle: left alone, no error


class _Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


@pytest_twisted.ensureDeferred
async def test_tcp_relay_sets_no_delay_both_ways(net, monkeypatch):
    from splicing.relay.tcp import RelayFactory

    seen = record(monkeypatch, "splicing.relay.tcp")
    origin = net.listen(protocol.Factory.forProtocol(_Echo))
    factory = RelayFactory([TCP4ClientEndpoint(reactor, "127.0.0.1", origin.getHost().port)])
    relay = net.listen(factory)
    client = await protocol.ClientCreator(reactor, protocol.Protocol).connectTCP(
        "127.0.0.1", relay.getHost().port)
    net.transports.append(client.transport)
    await wait_until(lambda: len(seen) == 2, what="the session's two sockets")
    assert [value for _, value in seen] == [1, 1]
    assert seen[0][0].getPeer().port == client.transport.getHost().port  # the client side
    assert seen[1][0].getPeer().port == origin.getHost().port  # the backend side
    client.transport.loseConnection()
    await wait_until(lambda: not factory.table.active, what="the session to end")


@pytest_twisted.ensureDeferred
async def test_http_proxy_sets_no_delay_both_ways(net, monkeypatch):
    seen = record(monkeypatch, "splicing.http.session")
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])
    got, secs, how = await raw(proxy.portno, request_bytes("GET", "/fixed/10", headers=[("Connection", "close")]))
    assert b" 200 " in got.split(b"\r\n", 1)[0]
    await proxy.ended()
    assert [value for _, value in seen] == [1, 1]
    assert seen[1][0].getPeer().port == origin.portno
