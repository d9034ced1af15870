"""
The UDP relay's datagram pump (splicing.relay.udppump) on its own, with real
sockets: whole datagrams in order and counted exactly, a drain that is full
for a while (the rest of a batch waits, nothing is lost or reordered), and a
socket error that ends the session.
"""

import errno
import socket

import pytest_twisted
from twisted.internet import reactor

from harness import wait_until


class FakeRelay:
    lost = 0


class FakeSession:
    def __init__(self):
        self.relay = FakeRelay()
        self.ended = None

    def end(self, how, error=0):
        self.ended = (how, error)


def pair(family=socket.AF_INET):
    """Two UDP sockets on loopback connected to each other, non-blocking."""
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    a, b = socket.socket(family, socket.SOCK_DGRAM), socket.socket(family, socket.SOCK_DGRAM)
    for s in (a, b):
        s.bind((host, 0))
    a.connect(b.getsockname()[:2])
    b.connect(a.getsockname()[:2])
    for s in (a, b):
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # a burst waits whole
    return a, b


def gather(sock, got):
    """Append what waits in C{sock} to C{got}; how many are there now."""
    while True:
        try:
            got.append(sock.recv(65536))
        except BlockingIOError:
            return len(got)


@pytest_twisted.ensureDeferred
async def test_a_full_drain_holds_the_rest_of_the_batch_in_order():
    """
    The drain is a datagram socket whose peer does not read (AF_UNIX with
    a small send buffer: sends fail with EAGAIN, which a loopback UDP socket
    never does): the pump stops reading the source, and when the peer reads, the held
    datagrams go first, then the rest; every datagram once, in order, counted.
    """
    from splicing.relay.udppump import DatagramPump, Endpoint

    pump = DatagramPump(reactor)
    pump.start()
    client, source = pair()
    drain, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (drain, peer):
        s.setblocking(False)
    drain.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)  # full after a few datagrams
    session = FakeSession()
    sink = Endpoint(drain, session)
    end = Endpoint(source, session, sink)
    sink.drain = end  # a session's two sockets drain into each other
    pump.add(end)
    pump.add(sink)
    sent = [b"%04d" % i + b"." * (i % 50) for i in range(150)]
    got = []
    try:
        for d in sent:
            client.send(d)
        await wait_until(lambda: end.held, what="the drain to fill")
        assert end.datagrams < len(sent)
        await wait_until(lambda: gather(peer, got) >= len(sent), what="every datagram")
    finally:
        pump.stop()
        for s in (client, source, drain, peer):
            s.close()
    assert got == sent
    assert end.datagrams == len(sent) and end.length == sum(map(len, sent))
    assert end.held is None and session.ended is None and session.relay.lost == 0
    assert sink.gso is False  # not UDP: GSO would merge datagrams


@pytest_twisted.ensureDeferred
async def test_gso_runs_arrive_as_the_same_datagrams():
    """Equal sizes in a batch travel as GSO messages; the receiver sees the very same datagrams."""
    from splicing.relay.udppump import DatagramPump, Endpoint

    pump = DatagramPump(reactor)
    pump.start()
    client, source = pair()
    drain, receiver = pair(socket.AF_INET6)
    session = FakeSession()
    end = Endpoint(source, session, Endpoint(drain, session))
    pump.add(end)
    sent = [bytes([i]) * 1200 for i in range(60)] + [b"short", b""] + [b"x" * 700] * 5
    got = []
    try:
        for d in sent:
            client.send(d)
        await wait_until(lambda: gather(receiver, got) >= len(sent), what="every datagram")
    finally:
        pump.stop()
        for s in (client, source, drain, receiver):
            s.close()
    assert got == sent and end.datagrams == len(sent) and end.length == sum(map(len, sent))


@pytest_twisted.ensureDeferred
async def test_a_refused_peer_ends_the_session():
    """An ICMP port unreachable reaches the source as ECONNREFUSED: the session ends with it."""
    from splicing.relay.udppump import DatagramPump, Endpoint

    pump = DatagramPump(reactor)
    pump.start()
    source, gone = pair()
    gone.close()  # nothing listens there any more
    session = FakeSession()
    end = Endpoint(source, session, None)
    pump.add(end)
    try:
        source.send(b"anyone?")
        await wait_until(lambda: session.ended, what="the end")
    finally:
        pump.stop()
        source.close()
    assert session.ended == ("error", errno.ECONNREFUSED)
