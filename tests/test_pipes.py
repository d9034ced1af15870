"""
The kernel path's pipe pool when descriptors run out: a splice waits for a
pipe and goes on once one can be made, even when no other splice holds a
pipe that could be returned.
"""

import errno

import pytest
import pytest_twisted
from twisted.internet import task

import streams
from harness import check_run, expect_result, wait_until
from splicing.paths import pipes
from splicing.paths.kernel import pipePool


class _Exhausted:
    """Stands in for L{pipes.Pipe}: the first C{n} pipes fail with C{code}."""

    def __init__(self, monkeypatch, n, code=errno.EMFILE):
        self.left = n
        self.code = code
        self.real = pipes.Pipe
        monkeypatch.setattr(pipes, "Pipe", self)

    def __call__(self, size):
        if self.left:
            self.left -= 1
            raise OSError(self.code, "Too many open files")
        return self.real(size)


def test_waiters_retry_after_a_shortage(monkeypatch):
    clock, pool, woken = task.Clock(), pipes.PipePool(keep=0), []
    _Exhausted(monkeypatch, 1)
    assert pool.get() is None
    pool.whenAvailable(lambda: woken.append(1), reactor=clock)
    pool.whenAvailable(lambda: woken.append(2), reactor=clock)
    assert len(clock.getDelayedCalls()) == 1  # one retry for every waiter
    clock.advance(pipes.RETRY)
    assert woken == [1, 2]
    pipe = pool.get()  # descriptors are back
    assert pipe is not None
    pool.put(pipe)


def test_waiters_without_a_shortage_wait_for_a_returned_pipe(monkeypatch):
    clock, pool, woken = task.Clock(), pipes.PipePool(limit=1, keep=0), []
    pipe = pool.get()
    assert pool.get() is None  # the limit, not a shortage: no timer
    pool.whenAvailable(lambda: woken.append(1), reactor=clock)
    assert not clock.getDelayedCalls()
    pool.put(pipe)
    assert woken == [1]


def test_other_pipe_errors_are_not_back_pressure(monkeypatch):
    _Exhausted(monkeypatch, 1, errno.EINVAL)
    with pytest.raises(OSError):
        pipes.PipePool(keep=0).get()


@pytest_twisted.ensureDeferred
async def test_kernel_splice_goes_on_after_pipes_ran_out(net, monkeypatch):
    source, writer = await net.tcp_pair(name="src")
    reader, drain = await net.tcp_pair(name="dst")
    reader.paused_by_harness = False
    reader.transport.resumeProducing()
    pipePool().clear()  # no idle pipe to fall back on, none in use to be returned
    failing = _Exhausted(monkeypatch, 3)
    data = streams.stream(131072)
    run = net.splice(source, drain, max=len(data), backend="kernel")
    writer.transport.write(data)
    await run.wait(timeout=5)
    check_run(run, "kernel")
    expect_result(run, "MAX", errno.EFBIG, len(data))
    assert failing.left == 0
    await wait_until(lambda: len(reader.received) == len(data), what="the spliced bytes")
    assert streams.md5(bytes(reader.received)) == streams.MD5["stream 131072"]
