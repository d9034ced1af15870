"""
Direct dispatch (L{splicing.relay.dispatch}): marked selectables get their
readiness events without Twisted's legacy log context, everything else
exactly as before, and only the stock epoll reactor is touched.
"""

import socket

import pytest
import pytest_twisted
from twisted.internet import endpoints, protocol, reactor, selectreactor
from twisted.internet.epollreactor import EPollReactor
from twisted.python import context, log
from twisted.python.failure import Failure

from harness import wait_until
from httpharness import Proxy, WebOrigin, blob, in_thread, urlopen
from splicing.relay import dispatch
from splicing.relay.tcp import RelayFactory, RelayProtocol


class Readable:
    """A socketpair end that records, for each read event, the legacy log context's system."""

    def __init__(self, name, fail=False):
        self.sock, self.peer = socket.socketpair()
        self.sock.setblocking(False)
        self.name, self.fail = name, fail
        self.systems, self.lost = [], []

    def fileno(self):
        return self.sock.fileno()

    def logPrefix(self):
        return self.name

    def doRead(self):
        self.sock.recv(100)
        self.systems.append(context.get(log.ILogContext)["system"])
        if self.fail:
            raise RuntimeError("handler bug")

    def connectionLost(self, reason):
        self.lost.append(reason)

    def close(self):
        self.sock.close()
        self.peer.close()


@pytest.fixture
def fresh():
    """A stock epoll reactor of the test's own, driven by hand, closed afterwards."""
    r = EPollReactor()
    made = []

    def readable(name, **kw):
        s = Readable(name, **kw)
        made.append(s)
        return s

    yield r, readable
    r.removeAll()
    r.waker.connectionLost(None)
    r._poller.close()
    for s in made:
        s.close()


def test_marked_selectable_skips_the_log_context_others_keep_it(fresh):
    r, readable = fresh
    plain, direct = readable("plain"), readable("direct")
    assert dispatch.dispatchDirectly(r, direct)
    r.addReader(plain)
    r.addReader(direct)
    plain.peer.send(b"x")
    direct.peer.send(b"x")
    r.iterate(0.5)
    assert plain.systems == ["plain"]  # Twisted's callWithLogger, as before
    assert direct.systems == ["-"]  # no context pushed
    assert not hasattr(plain, dispatch.MARK)


def test_an_exception_in_a_marked_selectable_is_logged_and_disconnects_it(fresh):
    r, readable = fresh
    bad = readable("bad", fail=True)
    dispatch.dispatchDirectly(r, bad)
    r.addReader(bad)
    bad.peer.send(b"x")
    errors = []
    log.addObserver(errors.append)
    try:
        r.iterate(0.5)
    finally:
        log.removeObserver(errors.append)
    # Twisted's own handling (_doReadOrWrite): logged, removed, connectionLost with the error
    assert [e for e in errors if e.get("isError") and "handler bug" in str(e.get("failure"))]
    assert bad not in r.getReaders()
    assert len(bad.lost) == 1 and isinstance(bad.lost[0], Failure)
    assert bad.lost[0].check(RuntimeError)


def test_installed_once_and_uninstalled(fresh):
    r, readable = fresh
    assert dispatch.install(r)
    poll = r.doIteration
    assert dispatch.install(r) and r.doIteration is poll
    dispatch.uninstall(r)
    assert "doIteration" not in r.__dict__
    assert r.doIteration.__func__ is EPollReactor.doPoll


def test_other_reactors_keep_their_dispatch():
    r = selectreactor.SelectReactor()
    try:
        s = Readable("s")
        assert not dispatch.dispatchDirectly(r, s)
        assert not hasattr(s, dispatch.MARK) and "doIteration" not in r.__dict__
        s.close()
    finally:
        r.waker.connectionLost(None)

    class OwnPolling(EPollReactor):
        def doPoll(self, timeout):
            return EPollReactor.doPoll(self, timeout)

        doIteration = doPoll

    r = OwnPolling()
    try:
        assert not dispatch.install(r)
    finally:
        r.waker.connectionLost(None)
        r._poller.close()


def test_a_reactor_patched_by_someone_else_is_left_alone(fresh):
    r, readable = fresh
    theirs = r.__dict__["doIteration"] = lambda timeout: EPollReactor.doPoll(r, timeout)
    assert not dispatch.install(r)
    assert r.doIteration is theirs


def test_a_wrapping_transport_is_not_marked(fresh):
    r, _ = fresh

    class Wrapper:  # a TLS or PROXY-header wrapper: no doRead of its own
        transport = None

    w = Wrapper()
    assert not dispatch.dispatchDirectly(r, w)
    assert not hasattr(w, dispatch.MARK)



@pytest.mark.parametrize("legacy", [False, True], ids=["direct", "legacyLogContext"])
@pytest_twisted.ensureDeferred
async def test_proxy_hooks_see_the_log_context_only_when_asked(net, legacy):
    """
    The HTTP proxy's sockets are dispatched directly unless its protocol
    class asks for the legacy context: then a C{twisted.python.log} call in a
    hook carries the connection's prefix, as in any Twisted protocol.
    """
    origin = WebOrigin(net)
    proxy = Proxy(net, [origin])
    systems = []

    class Hooked(proxy.factory.protocol):
        legacyLogContext = legacy

        def filterRequest(self, head):
            systems.append(context.get(log.ILogContext)["system"])

    proxy.factory.protocol = Hooked
    for _ in range(2):
        status, _, body = await urlopen(proxy.url + "/fixed/10")
        assert status == 200 and body == blob(10)
    await proxy.ended(2)
    if legacy:
        assert len(systems) == 2 and all(s.startswith("Hooked,") and s.endswith(",127.0.0.1") for s in systems)
    else:
        assert systems == ["-", "-"]


class _Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


@pytest.mark.parametrize("legacy", [False, True], ids=["direct", "legacyLogContext"])
@pytest_twisted.ensureDeferred
async def test_relay_sessions_on_twisted_transports(net, legacy):
    """A TCP relay session that keeps Twisted's transports (a forced path) marks both sockets, unless asked not to."""
    origin = net.listen(protocol.Factory.forProtocol(_Echo))
    ended = []

    class Relay(RelayProtocol):
        legacyLogContext = legacy

        def sessionEnded(self, stats):
            ended.append((stats, self.transport, self.backend.transport))

    f = RelayFactory([endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", origin.getHost().port)],
                     backendPath="mbuf", reactor=reactor)
    f.protocol = Relay
    port = net.listen(f)
    f.table.addPort(port)
    try:
        data = bytes(range(256)) * 400

        def client():
            with socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5) as s:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                got = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        return got
                    got += chunk

        assert await in_thread(client) == data
        await wait_until(lambda: ended, 5, "the session to end")
    finally:
        f.table.removePort(port)
    stats, client_side, backend_side = ended[0]
    assert stats["bytes_out"] == stats["bytes_in"] == len(data)
    for t in (client_side, backend_side):
        assert getattr(t, dispatch.MARK, False) is (not legacy)
