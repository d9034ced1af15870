"""
Topologies for the TCP splice tests: a client, a relay and a server, all in
this process, all driven by the (epoll) reactor, modelled on OpenBSD's
regress/sys/kern/sosplice/tcp harness (Client.pm, Relay.pm, Server.pm).

- ``Peer`` is the client or the server: it writes a stream (whole, trickled or
  endless through a streaming producer), reads and hashes what arrives, can
  stop reading for a while (``pauseProducing``), reset (SO_LINGER {1,0} +
  close = RST, which is what Twisted's ``abortConnection`` does) or exit.
- ``RelayEnd`` is a protocol on one of the relay's transports.  It buffers
  nothing for itself and forwards nothing unless the test says so (``copy_to``,
  the user-land copy of the maxcopy/unsplice tests): the tests call
  ``splice()`` on the relay's transports.  It records every callback with a
  timestamp, so the tests can check that ``dataReceived`` is not called while
  spliced and that ``readConnectionLost``/``connectionLost`` come after
  ``done`` fired.
- The relay transports are paused from ``connectionMade`` until the test
  splices them (``Net.splice`` resumes and splices in the same reactor turn),
  so data sent before the splice stays in the kernel receive buffer, as in
  OpenBSD where the relay simply has not read yet.

Every wait has a timeout.  ``Net`` tracks every port, transport and delayed
call so that the fixture can close everything and check that no file
descriptor leaked.
"""

import errno
import hashlib
import os
import socket
import struct
import time

from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from zope.interface import implementer

import streams

# OpenBSD's 3 s sleeps, scaled down.
SLEEP = 0.2
# Default bound for any single wait.
TIMEOUT = 10.0

HOSTS = {4: "127.0.0.1", 6: "::1"}


def now():
    return time.monotonic()


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


async def wait(d, timeout=TIMEOUT, what="event"):
    """Wait for ``d`` (without cancelling the original on timeout)."""
    out = defer.Deferred()

    def ok(result):
        if not out.called:
            out.callback(result)
        return result

    def bad(f):
        if not out.called:
            out.errback(f)
        return None

    d.addCallbacks(ok, bad)
    dc = reactor.callLater(timeout, lambda: out.called or out.errback(
        defer.TimeoutError("timed out after %.1f s waiting for %s" % (timeout, what))))
    try:
        return await out
    finally:
        if dc.active():
            dc.cancel()


async def wait_until(pred, timeout=TIMEOUT, what="condition", step=0.005):
    """Poll ``pred`` from the reactor until true, or fail after ``timeout``."""
    deadline = now() + timeout
    while not pred():
        if now() > deadline:
            raise AssertionError("timed out after %.1f s waiting for %s" % (timeout, what))
        await sleep(step)


def set_bufs(sock, rcvbuf=None, sndbuf=None):
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if sndbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)


def count_fds():
    return len(os.listdir("/proc/self/fd"))


def fd_kinds():
    """Map fd -> readlink target for this process (for leak diagnostics)."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink("/proc/self/fd/" + name)
        except OSError:
            pass
    return out


class PeerCfg:
    """
    What a client or server does.

    data          bytes to write (None = write nothing)
    endless       write the endless cycle stream until the connection dies
    write_delay   seconds after connecting before writing (OpenBSD "sleep")
    trickle       (chunk size, interval): write the data in pieces
    linger        seconds to keep the connection open after writing, before
                  the half-close (FIN)
    half_close    send FIN (loseWriteConnection) after writing
    read_delay    stop reading for this long after connecting
    rcvbuf/sndbuf socket buffer sizes (set right after connecting)
    reset_after   seconds after connecting: SO_LINGER {1,0} + close (RST)
    exit_after    seconds after connecting: close (loseConnection)
    keep          keep the received bytes (else only count and hash)
    """

    def __init__(self, data=None, endless=False, write_delay=0.0, trickle=None,
                 linger=0.0, half_close=True, read_delay=0.0, rcvbuf=None,
                 sndbuf=None, reset_after=None, exit_after=None, keep=True):
        self.data = data
        self.endless = endless
        self.write_delay = write_delay
        self.trickle = trickle
        self.linger = linger
        self.half_close = half_close
        self.read_delay = read_delay
        self.rcvbuf = rcvbuf
        self.sndbuf = sndbuf
        self.reset_after = reset_after
        self.exit_after = exit_after
        self.keep = keep


@implementer(IPushProducer)
class _Pump:
    """Endless writer: writes cycle blocks while the transport wants more."""

    def __init__(self, peer):
        self.peer = peer
        self.paused = False
        self.stopped = False
        self.block = streams.infinite_block()

    def resumeProducing(self):
        self.paused = False
        self._go()

    def pauseProducing(self):
        self.paused = True

    def stopProducing(self):
        self.stopped = True

    def _go(self):
        t = self.peer.transport
        while not (self.paused or self.stopped or self.peer.closing) and self.peer.lost_at is None \
                and not getattr(t, "disconnecting", False):
            t.write(self.block)
            self.peer.sent += len(self.block)


@implementer(IHalfCloseableProtocol)
class Peer(protocol.Protocol):
    """A client or server endpoint."""

    def __init__(self, net, name, cfg):
        self.net = net
        self.name = name
        self.cfg = cfg
        self.received = bytearray()
        self.nbytes = 0
        self._md5 = hashlib.md5()
        self.sent = 0
        self.connected_at = None
        self.eof_at = None
        self.lost_at = None
        self.lost_reason = None
        self.write_done = cfg.data is None and not cfg.endless
        self.write_done_at = None
        self.resumed_at = None
        self.reset_at = None
        self.lost = defer.Deferred()
        self.pump = None
        self.closing = False

    # -- helpers
    def later(self, delay, f, *a):
        def guarded():
            if self.lost_at is None and not self.closing:
                f(*a)
        return self.net.later(delay, guarded)

    def md5(self):
        return self._md5.hexdigest()

    # -- protocol
    def connectionMade(self):
        self.connected_at = now()
        self.net.transports.append(self.transport)
        sock = self.transport.getHandle()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        set_bufs(sock, self.cfg.rcvbuf, self.cfg.sndbuf)
        if self.cfg.read_delay:
            self.transport.pauseProducing()
            self.later(self.cfg.read_delay, self._resume_reading)
        if self.cfg.data is not None or self.cfg.endless:
            self.later(self.cfg.write_delay, self._start_writing)
        if self.cfg.reset_after is not None:
            self.later(self.cfg.reset_after, self.reset)
        if self.cfg.exit_after is not None:
            self.later(self.cfg.exit_after, self.exit)
        self.net.peer_connected(self)

    def _resume_reading(self):
        self.resumed_at = now()
        self.transport.resumeProducing()

    def _start_writing(self):
        if self.cfg.endless:
            self.pump = _Pump(self)
            self.transport.registerProducer(self.pump, True)
            self.pump.resumeProducing()
            return
        data = self.cfg.data
        if self.cfg.trickle:
            chunk, interval = self.cfg.trickle
            self._trickle(data, chunk, interval)
        else:
            if data:
                self.transport.write(data)
            self.sent += len(data)
            self._written()

    def _trickle(self, data, chunk, interval):
        piece, rest = data[:chunk], data[chunk:]
        if piece:
            self.transport.write(piece)
            self.sent += len(piece)
        if rest:
            self.later(interval, self._trickle, rest, chunk, interval)
        else:
            self._written()

    def _written(self):
        self.write_done = True
        self.write_done_at = now()
        if self.cfg.linger:
            self.later(self.cfg.linger, self._after_write)
        else:
            self._after_write()

    def _after_write(self):
        if self.cfg.half_close:
            self.transport.loseWriteConnection()

    def dataReceived(self, data):
        self.nbytes += len(data)
        self._md5.update(data)
        if self.cfg.keep:
            self.received += data

    def readConnectionLost(self):
        # The relay went away (it closes only after its splice ended): stop
        # writing and close, as the OpenBSD client/server do on EOF.
        self.eof_at = now()
        self.closing = True
        if self.pump is not None:
            self.pump.stopProducing()
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self):
        pass

    def connectionLost(self, reason):
        self.lost_at = now()
        self.lost_reason = reason
        if self.pump is not None:
            self.pump.stopProducing()
        self.lost.callback(self)

    # -- actions
    def reset(self):
        """SO_LINGER {1,0} and close: the peer gets an RST."""
        self.reset_at = now()
        self.closing = True
        if self.pump is not None:
            self.pump.stopProducing()
        sock = self.transport.getHandle()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abortConnection()

    def exit(self):
        """Close as a process exit would (unread data makes Linux send RST)."""
        self.closing = True
        if self.pump is not None:
            self.pump.stopProducing()
        self.transport.loseConnection()

    def clean_close(self):
        return self.lost_reason is not None and self.lost_reason.check(ConnectionDone) is not None


@implementer(IHalfCloseableProtocol)
class RelayEnd(protocol.Protocol):
    """One of the relay's transports.  Records, buffers and forwards nothing."""

    def __init__(self, net, name):
        self.net = net
        self.name = name
        self.received = bytearray()       # everything dataReceived got (for checks)
        self.spliced = 0                  # > 0 while this transport is a splice source
        self.violations = []              # dataReceived calls while spliced
        self.copy_to = None               # user-land copy target (a transport)
        self.close_copy_on_eof = True
        self.connected_at = None
        self.eof_at = None
        self.lost_at = None
        self.lost_reason = None
        self.paused_by_harness = False
        self.ready = defer.Deferred()
        self.eof_or_lost = defer.Deferred()
        self.lost = defer.Deferred()

    def event(self, kind, info=None):
        self.net.events.append((now(), self.name, kind, info))

    def connectionMade(self):
        self.connected_at = now()
        self.net.transports.append(self.transport)
        try:
            self.transport.getHandle().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass  # UNIX sockets; TLS (getHandle() is the SSL connection)
        # Keep everything in the kernel until the test splices.
        self.transport.pauseProducing()
        self.paused_by_harness = True
        self.event("connected")
        self.ready.callback(self)

    def dataReceived(self, data):
        self.event("data", len(data))
        if self.spliced:
            self.violations.append((now(), len(data)))
        self.received += data
        if self.copy_to is not None:
            self.copy_to.write(data)

    def readConnectionLost(self):
        self.eof_at = now()
        self.event("readConnectionLost")
        if not self.eof_or_lost.called:
            self.eof_or_lost.callback("eof")
        if self.copy_to is not None and self.close_copy_on_eof:
            self.copy_to.loseConnection()

    def writeConnectionLost(self):
        self.event("writeConnectionLost")

    def connectionLost(self, reason):
        self.lost_at = now()
        self.lost_reason = reason
        self.event("connectionLost", reason.type.__name__)
        if not self.eof_or_lost.called:
            self.eof_or_lost.callback("lost")
        self.lost.callback(self)

    def after(self, kind, t):
        """Events of this kind recorded for this end."""
        return [e for e in self.net.events if e[1] == self.name and e[2] == kind and e[0] >= t]


class SpliceRun:
    """A splice() call with the bookkeeping the tests check."""

    def __init__(self, net, s, source, drain, started):
        self.net = net
        self.s = s
        self.source = source
        self.drain = drain
        self.started = started
        self.done_at = None
        self.result = None
        self.failure = None
        self.calls = 0
        self.length_at_done = None
        self.fired = defer.Deferred()
        self.on_done = []
        s.done.addBoth(self._done)

    def _done(self, r):
        self.calls += 1
        if self.calls == 1:
            self.done_at = now()
            self.source.spliced -= 1
            self.net.events.append((self.done_at, self.source.name, "done", id(self)))
            if isinstance(r, Failure):
                self.failure = r
            else:
                self.result = r
            try:
                self.length_at_done = self.s.length
            except Exception as e:  # recorded, checked by the tests
                self.length_at_done = e
            for f in self.on_done:
                f(r)
            self.fired.callback(self)
        else:
            self.net.errors.append("done fired %d times" % self.calls)
        return r

    async def wait(self, timeout=TIMEOUT):
        await wait(self.fired, timeout, "splice done")
        if self.failure is not None:
            self.failure.raiseException()
        return self.result

    @property
    def elapsed(self):
        return self.done_at - self.started


class Topo:
    """client <-> relay(inside, outside) <-> server (or echo: client <-> relay)."""

    def __init__(self, net):
        self.net = net
        self.client = None
        self.server = None
        self.inside = None     # relay's accepted transport (to the client)
        self.outside = None    # relay's outgoing transport (to the server)
        self.echo = False

    def ends(self):
        return [e for e in (self.inside, self.outside) if e is not None]

    def peers(self):
        return [p for p in (self.client, self.server) if p is not None]


class Net:
    """Per-test bookkeeping: ports, transports, delayed calls, events, errors."""

    def __init__(self, tmp_path=None):
        self.ports = []
        self.transports = []
        self.delayed = []
        self.events = []
        self.errors = []
        self.protocols = []
        self.tmp_path = tmp_path
        self._peer_waiters = {}

    def later(self, delay, f, *a):
        dc = reactor.callLater(delay, f, *a)
        self.delayed.append(dc)
        return dc

    def peer_connected(self, peer):
        d = self._peer_waiters.get(peer.name)
        if d is not None and not d.called:
            d.callback(peer)

    # -- simple building blocks
    def listen(self, factory, family=4, rcvbuf=None, sndbuf=None):
        port = reactor.listenTCP(0, factory, interface=HOSTS[family])
        self.ports.append(port)
        set_bufs(port.socket, rcvbuf, sndbuf)
        return port

    def connect(self, family, port, factory):
        connector = reactor.connectTCP(HOSTS[family], port.getHost().port, factory, timeout=5)
        return connector

    async def tcp_pair(self, family=4, name="pair"):
        """Two connected RelayEnds (accepted side, connecting side), both paused."""
        acc = RelayEnd(self, name + ".acc")
        con = RelayEnd(self, name + ".con")
        self.protocols += [acc, con]
        fa = protocol.Factory.forProtocol(lambda: acc)
        port = self.listen(fa, family)
        self.connect(family, port, _OneShotClientFactory(con))
        await wait(acc.ready, what="accept")
        await wait(con.ready, what="connect")
        await port.stopListening()
        self.ports.remove(port)
        return acc, con

    # -- the relay topology
    async def topo(self, client=None, server=None, echo=False, fam_in=4, fam_out=4,
                   server_listen_rcvbuf=None, relay_listen_rcvbuf=None,
                   relay_listen_sndbuf=None):
        t = Topo(self)
        t.echo = echo
        client = client or PeerCfg()
        server = server or PeerCfg()
        inside = RelayEnd(self, "inside")
        t.inside = inside
        self.protocols.append(inside)
        if not echo:
            srv_peer_d = defer.Deferred()
            self._peer_waiters["server"] = srv_peer_d
            sfac = protocol.Factory.forProtocol(lambda: Peer(self, "server", server))
            sport = self.listen(sfac, fam_out, rcvbuf=server_listen_rcvbuf)
        rfac = protocol.Factory.forProtocol(lambda: inside)
        rport = self.listen(rfac, fam_in, rcvbuf=relay_listen_rcvbuf, sndbuf=relay_listen_sndbuf)
        cli_peer_d = defer.Deferred()
        self._peer_waiters["client"] = cli_peer_d
        self.connect(fam_in, rport, _OneShotClientFactory(lambda: Peer(self, "client", client)))
        await wait(inside.ready, what="relay accept")
        t.client = await wait(cli_peer_d, what="client connect")
        await rport.stopListening()
        self.ports.remove(rport)
        if not echo:
            outside = RelayEnd(self, "outside")
            t.outside = outside
            self.protocols.append(outside)
            self.connect(fam_out, sport, _OneShotClientFactory(outside))
            await wait(outside.ready, what="relay connect")
            t.server = await wait(srv_peer_d, what="server accept")
            await sport.stopListening()
            self.ports.remove(sport)
        return t

    def splice(self, source, drain, *, relay_rcvbuf=None, relay_sndbuf=None, **kw):
        """Set buffers, resume the relay transports and splice, in one turn."""
        from splicing import splice
        for end in {id(source): source, id(drain): drain}.values():
            set_bufs(end.transport.getHandle(), relay_rcvbuf, relay_sndbuf)
        for end in {id(source): source, id(drain): drain}.values():
            if end.paused_by_harness:
                end.paused_by_harness = False
                end.transport.resumeProducing()
        source.spliced += 1
        started = now()
        try:
            s = splice(source.transport, drain.transport, **kw)
        except BaseException:
            source.spliced -= 1
            raise
        self.events.append((started, source.name, "spliced", None))
        return SpliceRun(self, s, source, drain, started)

    # -- teardown
    async def close_all(self, timeout=5.0):
        for dc in self.delayed:
            if dc.active():
                dc.cancel()
        for p in list(self.ports):
            try:
                await p.stopListening()
            except Exception:
                pass
        self.ports.clear()
        for t in self.transports:
            if getattr(t, "connected", 0) and not getattr(t, "disconnected", 0):
                try:
                    t.abortConnection()
                except Exception:
                    pass
        deadline = now() + timeout
        while any(getattr(t, "connected", 0) and not getattr(t, "disconnected", 0)
                  for t in self.transports):
            if now() > deadline:
                self.errors.append("transports still connected after close_all")
                break
            await sleep(0.01)
        for dc in self.delayed:
            if dc.active():
                dc.cancel()
        await sleep(0)
        await sleep(0.01)


class _OneShotClientFactory(protocol.ClientFactory):
    def __init__(self, proto):
        self._proto = proto

    def buildProtocol(self, addr):
        p = self._proto() if callable(self._proto) and not isinstance(self._proto, protocol.Protocol) else self._proto
        p.factory = self
        return p

    def clientConnectionFailed(self, connector, reason):
        raise AssertionError("connect failed: %s" % (reason.getErrorMessage(),))


def errno_name(n):
    return errno.errorcode.get(n, str(n))


# ---------------------------------------------------------------------------
# Flows shared by the TCP tests


def roles(topo, direction):
    """(source end, drain end, writer peer, reader peer) for a direction."""
    if topo.echo:
        return topo.inside, topo.inside, topo.client, topo.client
    if direction == "forward":
        return topo.inside, topo.outside, topo.client, topo.server
    return topo.outside, topo.inside, topo.server, topo.client


async def start(net, topo, direction="forward", relay_delay=0.0, **kw):
    """The relay: optionally sleep (data queues in the kernel), then splice."""
    source, drain, _, _ = roles(topo, direction)
    if relay_delay:
        await sleep(relay_delay)
    return net.splice(source, drain, **kw)


async def finish(net, topo, run, direction="forward", expect_eof_notice=None,
                 done_timeout=TIMEOUT):
    """
    Wait for the splice to end, then act as the exiting OpenBSD relay: close
    the drain (its peer sees EOF; the core itself never closes it) and the
    source, and wait until client and server are gone.  Returns the result.
    """
    r = await run.wait(done_timeout)
    source, drain, writer, reader = roles(topo, direction)
    from splicing import Reason
    if expect_eof_notice is None:
        expect_eof_notice = r.reason is Reason.EOF
    if expect_eof_notice:
        # The EOF that ended the splice must reach the source's protocol.
        await wait(source.eof_or_lost, 5.0, "EOF to reach the source protocol after done")
    if r.reason is Reason.EOF:
        # Rule 25: the core does not shut down or close the drain at EOF.
        assert drain.lost_at is None and not drain.transport.disconnecting, \
            "the core closed the drain at EOF"
        assert reader.eof_at is None, "the drain's peer saw EOF before the relay closed the drain"
    if topo.echo and r.reason is not Reason.EOF:
        # Closing with unread data sends RST and drops the unsent echo: wait
        # until the echoed bytes reached the client first.
        await wait_until(lambda: reader.nbytes >= r.length or reader.lost_at is not None,
                         what="echoed bytes to reach the client")
    await close_relay(net, topo)
    return r


async def close_relay(net, topo, timeout=TIMEOUT):
    for end in topo.ends():
        if end.lost_at is None:
            end.transport.loseConnection()
    for end in topo.ends():
        await wait(end.lost, timeout, "relay %s to close" % end.name)
    for p in topo.peers():
        await wait(p.lost, timeout, "%s to close" % p.name)


def check_run(run, backend=None):
    """Checks every splice run must pass."""
    s = run.s
    r = run.result
    from splicing import Reason
    assert run.failure is None, run.failure
    assert r is not None
    assert isinstance(r.reason, Reason), r.reason
    assert isinstance(r.length, int) and isinstance(r.error, int), (r.length, r.error)
    assert r.length == s.length, ("result length %r != Splice.length %r" % (r.length, s.length))
    assert run.length_at_done == r.length, run.length_at_done
    assert run.calls == 1
    if backend is not None and backend != "auto":
        assert s.backend == backend
    else:
        assert s.backend in ("kernel", "mbuf", "transport"), s.backend
    src = run.source
    # no dataReceived while spliced
    assert not src.violations, "source protocol got dataReceived while spliced: %r" % (src.violations[:5],)
    # data / EOF / loss notifications on the source (and connectionLost on
    # the drain) come after done fired.  (A FIN from the drain's peer may
    # reach the drain protocol at any time: it does not end the splice.)
    for (t, name, kind, info) in run.net.events:
        if t < run.started:
            continue
        if (name == src.name and kind in ("data", "readConnectionLost", "connectionLost")) or \
                (name == run.drain.name and kind == "connectionLost"):
            assert t >= run.done_at, "%s on %s before done fired (%.4f < %.4f)" % (
                kind, name, t, run.done_at)


def expect_result(run, reason, err=0, length=None):
    from splicing import Reason
    r = run.result
    reason = getattr(Reason, reason)
    assert r.reason is reason, "reason %r (error %s), expected %r" % (
        r.reason, errno_name(r.error), reason)
    if isinstance(err, (tuple, list, set)):
        assert r.error in err, "error %s, expected one of %s" % (
            errno_name(r.error), [errno_name(e) for e in err])
    else:
        assert r.error == err, "error %s, expected %s" % (errno_name(r.error), errno_name(err))
    if length is not None:
        assert r.length == length, "length %d, expected %d" % (r.length, length)
