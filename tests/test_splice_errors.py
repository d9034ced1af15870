"""
API / error tests: OpenBSD regress/sys/kern/sosplice/error (spec section 2)
ported to splice().  Every refused request raises SpliceError, an OSError,
synchronously, with the OpenBSD errno; a refused request leaves nothing
spliced behind.

Not applicable: args-ELOOP, args-udp-ELOOP (no hop counter on Linux).
args-splice-EINVAL (a 2-byte option value) maps to a non-integer max.
"""

import errno
import math
import os

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor, stdio

import harness
import streams
from harness import PeerCfg, check_run, expect_result, finish, wait

BACKENDS = ("kernel", "mbuf", "transport")
ALL_BACKENDS = ("auto",) + BACKENDS


def raises(code, f, *a, **kw):
    from splicing import SpliceError
    with pytest.raises(SpliceError) as info:
        f(*a, **kw)
    e = info.value
    assert isinstance(e, OSError)
    assert e.errno == code, "errno %s, expected %s (%s)" % (
        harness.errno_name(e.errno), harness.errno_name(code), e)
    return e


def splice(*a, **kw):
    from splicing import splice as _splice
    return _splice(*a, **kw)


async def still_spliceable(net, src, dst, backend="auto"):
    """A refused request must not leave src/dst marked as spliced."""
    run = net.splice(src, dst, backend=backend)
    run.s.unsplice()
    r = await run.wait()
    check_run(run, None if backend == "auto" else backend)
    expect_result(run, "UNSPLICED", 0)


# ---------------------------------------------------------------------------
# EBUSY (args-EBUSY, args-splice-EBUSY)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest_twisted.ensureDeferred
async def test_ebusy_source(net, backend):
    a, b = await net.tcp_pair(name="ab")
    c, _ = await net.tcp_pair(name="c")
    run = net.splice(a, b, backend=backend)
    raises(errno.EBUSY, splice, a.transport, c.transport, backend=backend)
    raises(errno.EBUSY, splice, a.transport, a.transport, backend=backend)
    run.s.unsplice()
    await run.wait()
    check_run(run, backend)
    expect_result(run, "UNSPLICED", 0)
    # once dissolved, the source may be spliced again
    await still_spliceable(net, a, c, backend)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest_twisted.ensureDeferred
async def test_ebusy_drain(net, backend):
    a, b = await net.tcp_pair(name="ab")
    c, _ = await net.tcp_pair(name="c")
    run = net.splice(a, b, backend=backend)
    raises(errno.EBUSY, splice, c.transport, b.transport, backend=backend)
    run.s.unsplice()
    await run.wait()
    check_run(run, backend)
    await still_spliceable(net, c, b, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_source_and_drain_of_two_splices(net, backend):
    """Rule 1 and 2: a->b with b->a is allowed, and so is t->t (echo); not EBUSY."""
    a, b = await net.tcp_pair(name="ab")
    fwd = net.splice(a, b, backend=backend)
    rev = net.splice(b, a, backend=backend)
    for run in (fwd, rev):
        run.s.unsplice()
        await run.wait()
        check_run(run, backend)
        expect_result(run, "UNSPLICED", 0)
    c, _ = await net.tcp_pair(name="c")
    echo = net.splice(c, c, backend=backend)
    echo.s.unsplice()
    await echo.wait()
    check_run(echo, backend)


# ---------------------------------------------------------------------------
# ENOTCONN (args-ENOTCONN, args-splice-ENOTCONN): connection already lost


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("side", ["source", "drain"])
@pytest_twisted.ensureDeferred
async def test_enotconn(net, side, backend):
    a, b = await net.tcp_pair(name="ab")
    c, d = await net.tcp_pair(name="cd")
    c.transport.loseConnection()
    await wait(c.lost, what="connection to be lost")
    if side == "source":
        raises(errno.ENOTCONN, splice, c.transport, a.transport, backend=backend)
    else:
        raises(errno.ENOTCONN, splice, a.transport, c.transport, backend=backend)
    await still_spliceable(net, a, b)


# ---------------------------------------------------------------------------
# EOPNOTSUPP (args-EOPNOTSUPP, args-splice-EOPNOTSUPP): listening ports


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("side", ["source", "drain"])
@pytest.mark.parametrize("family", [4, 6])
@pytest_twisted.ensureDeferred
async def test_eopnotsupp_listening(net, side, family, backend):
    a, b = await net.tcp_pair(family, name="ab")
    port = net.listen(protocol.Factory.forProtocol(protocol.Protocol), family)
    if side == "source":
        raises(errno.EOPNOTSUPP, splice, port, a.transport, backend=backend)
    else:
        raises(errno.EOPNOTSUPP, splice, a.transport, port, backend=backend)
    await still_spliceable(net, a, b)


# ---------------------------------------------------------------------------
# EINVAL (args-max-EINVAL, args-idle-EINVAL, args-splice-EINVAL)

BAD_MAX = [-1, -(2 ** 63), float("nan"), float("inf"), float("-inf"), 1.5, -0.5, "10", b"10", [1]]
BAD_IDLE = [-1, -0.001, float("nan"), float("inf"), float("-inf"), "1", [1]]


@pytest.mark.parametrize("value", BAD_MAX, ids=repr)
@pytest_twisted.ensureDeferred
async def test_einval_max(net, value):
    a, b = await net.tcp_pair(name="ab")
    for backend in ALL_BACKENDS:
        raises(errno.EINVAL, splice, a.transport, b.transport, max=value, backend=backend)
    await still_spliceable(net, a, b)


@pytest.mark.parametrize("value", BAD_IDLE, ids=repr)
@pytest_twisted.ensureDeferred
async def test_einval_idle(net, value):
    a, b = await net.tcp_pair(name="ab")
    for backend in ALL_BACKENDS:
        raises(errno.EINVAL, splice, a.transport, b.transport, idle=value, backend=backend)
    await still_spliceable(net, a, b)


@pytest_twisted.ensureDeferred
async def test_einval_max_and_idle_nan(net):
    a, b = await net.tcp_pair(name="ab")
    raises(errno.EINVAL, splice, a.transport, b.transport, max=math.nan, idle=math.nan)
    await still_spliceable(net, a, b)


# ---------------------------------------------------------------------------
# EBADF (args-splice-EBADF): the socket was closed under the transport


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("side", ["source", "drain"])
@pytest_twisted.ensureDeferred
async def test_ebadf(net, side, backend):
    a, b = await net.tcp_pair(name="ab")
    c, d = await net.tcp_pair(name="cd")
    c.transport.socket.close()
    if side == "source":
        raises(errno.EBADF, splice, c.transport, a.transport, backend=backend)
    else:
        raises(errno.EBADF, splice, a.transport, c.transport, backend=backend)
    await still_spliceable(net, a, b)
    c.transport.abortConnection()
    await wait(c.lost, what="closed transport to go")


# ---------------------------------------------------------------------------
# ENOTSOCK (args-splice-ENOTSOCK): a transport with no socket under it


class _Sink(protocol.Protocol):
    def __init__(self):
        self.received = bytearray()
        self.lost = None

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = reason


def make_stdio(net):
    """A StandardIO on pipes: a connected transport that is not a socket."""
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    proto = _Sink()
    sio = stdio.StandardIO(proto, stdin=r_in, stdout=w_out, reactor=reactor)

    async def cleanup():
        sio.loseConnection()
        await harness.wait_until(lambda: proto.lost is not None, 5.0, "StandardIO to close")
        for fd in (w_in, r_out):
            os.close(fd)
    return sio, cleanup


@pytest.mark.parametrize("backend", ["kernel", "mbuf"])
@pytest.mark.parametrize("side", ["source", "drain"])
@pytest_twisted.ensureDeferred
async def test_enotsock(net, side, backend):
    a, b = await net.tcp_pair(name="ab")
    sio, cleanup = make_stdio(net)
    try:
        if side == "source":
            raises(errno.ENOTSOCK, splice, sio, a.transport, backend=backend)
        else:
            raises(errno.ENOTSOCK, splice, a.transport, sio, backend=backend)
        await still_spliceable(net, a, b)
    finally:
        await cleanup()


@pytest.mark.parametrize("side", ["source", "drain"])
@pytest_twisted.ensureDeferred
async def test_stdio_auto(net, side):
    """With backend="auto" the transport path may serve a non-socket; else ENOTSOCK."""
    from splicing import SpliceError
    a, b = await net.tcp_pair(name="ab")
    sio, cleanup = make_stdio(net)
    try:
        try:
            s = splice(sio, a.transport) if side == "source" else splice(a.transport, sio)
        except SpliceError as e:
            assert e.errno == errno.ENOTSOCK, e
        else:
            assert s.backend == "transport"
            s.unsplice()
            r = await wait(s.done, what="stdio splice to end")
            assert r.reason.name == "UNSPLICED" and r.error == 0
    finally:
        await cleanup()


# ---------------------------------------------------------------------------
# EPROTONOSUPPORT (args-splice-, args-udp-, args-unix-, args-inet-unix-)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("side", ["tcp-to-udp", "udp-to-tcp"])
@pytest_twisted.ensureDeferred
async def test_eprotonosupport_udp(net, side, backend):
    a, b = await net.tcp_pair(name="ab")
    udp = reactor.listenUDP(0, protocol.DatagramProtocol(), interface="127.0.0.1")
    net.ports.append(udp)
    if side == "tcp-to-udp":
        raises(errno.EPROTONOSUPPORT, splice, a.transport, udp, backend=backend)
    else:
        raises(errno.EPROTONOSUPPORT, splice, udp, a.transport, backend=backend)
    await still_spliceable(net, a, b)


async def unix_pair(net):
    path = str(net.tmp_path / "s.sock")
    acc = harness.RelayEnd(net, "unix.acc")
    con = harness.RelayEnd(net, "unix.con")
    port = reactor.listenUNIX(path, protocol.Factory.forProtocol(lambda: acc))
    net.ports.append(port)
    reactor.connectUNIX(path, harness._OneShotClientFactory(con), timeout=5)
    await wait(acc.ready, what="unix accept")
    await wait(con.ready, what="unix connect")
    return acc, con


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("case", ["unix-unix", "unix-tcp", "tcp-unix", "udp-unix", "unix-udp"])
@pytest_twisted.ensureDeferred
async def test_eprotonosupport_unix(net, case, backend):
    a, b = await net.tcp_pair(name="ab")
    u1, u2 = await unix_pair(net)
    udp = reactor.listenUDP(0, protocol.DatagramProtocol(), interface="127.0.0.1")
    net.ports.append(udp)
    pick = {"unix": u1.transport, "tcp": a.transport, "udp": udp}
    src, dst = case.split("-")
    source = pick[src]
    drain = u2.transport if dst == "unix" and src == "unix" else pick[dst]
    raises(errno.EPROTONOSUPPORT, splice, source, drain, backend=backend)
    await still_spliceable(net, a, b)


# ---------------------------------------------------------------------------
# EPROTO (args-unsplice-EPROTO): unsplice() after the splice ended


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_eproto_after_unsplice(net, backend):
    a, b = await net.tcp_pair(name="ab")
    run = net.splice(a, b, backend=backend)
    run.s.unsplice()
    await run.wait()
    check_run(run, backend)
    raises(errno.EPROTO, run.s.unsplice)
    assert run.calls == 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_eproto_after_eof(net, backend):
    topo = await net.topo(PeerCfg(data=streams.stream(251)), PeerCfg())
    run = await harness.start(net, topo, backend=backend)
    await finish(net, topo, run)
    check_run(run, backend)
    expect_result(run, "EOF", 0, 251)
    raises(errno.EPROTO, run.s.unsplice)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_eproto_after_max(net, backend):
    a, b = await net.tcp_pair(name="ab")
    run = net.splice(a, b, backend=backend, max=0)
    await run.wait(timeout=2.0)
    check_run(run, backend)
    expect_result(run, "MAX", errno.EFBIG, 0)
    raises(errno.EPROTO, run.s.unsplice)


# ---------------------------------------------------------------------------
# EOPNOTSUPP for a forced backend that cannot serve the pair (TLS)


def _self_signed():
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    t0 = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(t0).not_valid_after(t0 + datetime.timedelta(days=2))
            .sign(key, hashes.SHA256()))
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    pem_cert = cert.public_bytes(serialization.Encoding.PEM)
    return pem_key, pem_cert


async def tls_pair(net):
    from twisted.internet import ssl
    pem_key, pem_cert = _self_signed()
    server_opts = ssl.PrivateCertificate.loadPEM(pem_key + pem_cert).options()
    acc = harness.RelayEnd(net, "tls.acc")
    con = harness.RelayEnd(net, "tls.con")
    port = reactor.listenSSL(0, protocol.Factory.forProtocol(lambda: acc), server_opts,
                             interface="127.0.0.1")
    net.ports.append(port)
    reactor.connectSSL("127.0.0.1", port.getHost().port, harness._OneShotClientFactory(con),
                       ssl.CertificateOptions(), timeout=5)
    await wait(acc.ready, what="TLS accept")
    await wait(con.ready, what="TLS connect")
    return acc, con


@pytest.mark.parametrize("backend", ["kernel", "mbuf"])
@pytest.mark.parametrize("side", ["source", "drain"])
@pytest_twisted.ensureDeferred
async def test_eopnotsupp_forced_backend_tls(net, side, backend):
    a, b = await net.tcp_pair(name="ab")
    t1, t2 = await tls_pair(net)
    if side == "source":
        raises(errno.EOPNOTSUPP, splice, t1.transport, a.transport, backend=backend)
    else:
        raises(errno.EOPNOTSUPP, splice, a.transport, t1.transport, backend=backend)
    await still_spliceable(net, a, b)
    # the TLS transport itself is still usable by the transport path
    await still_spliceable(net, t1, a, backend="transport")
