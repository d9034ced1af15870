"""
A transport that is the source of one splice and the blocked drain of the
other (a relay's backend) is reset by its peer: the reset shows as one
readiness event with both read and write set.  The read handler ends the
connection; the write handler the reactor calls next must find nothing to
do (found by the long reliability run: an AttributeError per session when
an origin died under load).
"""

import errno
import socket
import struct

import pytest
import pytest_twisted
from twisted.internet.error import ConnectionAborted

from harness import check_run, set_bufs, sleep, wait_until


@pytest.mark.parametrize("backend", ["kernel", "mbuf"])
@pytest_twisted.ensureDeferred
async def test_backend_reset_while_its_drain_side_is_blocked(net, backend):
    client, client_peer = await net.tcp_pair(name="client")
    backend_end, backend_peer = await net.tcp_pair(name="backend")
    set_bufs(backend_end.transport.getHandle(), sndbuf=16384)
    set_bufs(backend_peer.transport.getHandle(), rcvbuf=16384)  # and it never reads
    out = net.splice(client, backend_end, backend=backend)
    back = net.splice(backend_end, client, backend=backend)
    client_peer.paused_by_harness = False
    client_peer.transport.resumeProducing()
    client_peer.transport.write(b"x" * (4 << 20))
    await wait_until(lambda: out.s.length > 0, what="bytes to reach the backend")
    await sleep(0.1)  # the backend's buffers are full: the splice waits for write events
    assert out.result is None and back.result is None
    sock = backend_peer.transport.getHandle()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    backend_peer.transport.abortConnection()  # unread bytes: an RST
    for run in (out, back):
        await run.wait()
        check_run(run, backend)
    assert back.result.error in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED)
    await wait_until(lambda: backend_end.lost_at is not None, what="the backend side to be lost")
    # the net fixture fails the test if the reactor logged an error


@pytest.mark.parametrize("backend", ["kernel", "mbuf"])
@pytest_twisted.ensureDeferred
async def test_done_callback_aborting_the_reset_drain(net, backend):
    """
    A splice ends because its drain was reset, and the application's C{done}
    callback calls C{abortConnection()} on that drain, as a proxy closing
    its session does.  Twisted queues C{connectionLost} for the abort; the
    core must not lose the connection a second time behind it (it did:
    C{KeyError: '_splicingBorrowed'} from the queued call, the transport's
    record being gone).
    """
    client, client_peer = await net.tcp_pair(name="client")
    drain, drain_peer = await net.tcp_pair(name="drain")
    run = net.splice(client, drain, backend=backend)
    drain.transport.pauseProducing()  # only the splice's write may see the reset
    sock = drain_peer.transport.getHandle()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    drain_peer.transport.abortConnection()
    await sleep(0.05)
    aborted = []
    run.on_done.append(lambda r: (aborted.append(True), drain.transport.abortConnection()))
    client_peer.paused_by_harness = False
    client_peer.transport.resumeProducing()
    client_peer.transport.write(b"x" * (1 << 20))
    await run.wait()
    assert aborted
    assert run.result.error in (errno.ECONNRESET, errno.EPIPE)
    await wait_until(lambda: drain.lost_at is not None, what="the drain to be lost")
    await sleep(0.05)  # the queued connectionLost has run
    assert len(drain.after("connectionLost", 0)) == 1
    assert drain.lost_reason.check(ConnectionAborted)  # the application's abort, not a second loss
