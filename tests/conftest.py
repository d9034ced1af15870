"""
Fixtures for the splice tests (pytest-twisted, default epoll reactor).

``net`` gives a fresh ``harness.Net``; at teardown it closes every port and
transport the test made, lets the reactor turn, then checks that

- nothing was logged as an error by Twisted (unhandled errors in Deferreds,
  exceptions in callbacks: a crashing core shows up here), and
- no file descriptor leaked: the number of open descriptors is back to what
  it was before the test.  Pipes are counted separately: a kernel backend may
  keep a bounded pool of pipes across tests, so pipes may grow up to
  ``PIPE_ALLOWANCE`` above the session's starting point, never more (a
  per-splice pipe leak exceeds it within a few dozen tests).
"""

import gc
import os
import sys

import pytest_twisted
from hypothesis import HealthCheck, settings
from twisted.logger import formatEvent, globalLogPublisher

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402

PIPE_ALLOWANCE = 64

# The machines this runs on are shared: a property test whose example
# generation is slowed by other work must not fail for it (what is checked
# is never timing).
settings.register_profile("shared-machine", suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("shared-machine")
_session = {}


def _split_fds():
    pipes = other = 0
    for fd, target in harness.fd_kinds().items():
        if target.startswith("pipe:"):
            pipes += 1
        else:
            other += 1
    return pipes, other


class _ErrorObserver:
    def __init__(self):
        self.errors = []

    def __call__(self, event):
        if event.get("isError") or event.get("log_failure") is not None:
            text = formatEvent(event)
            f = event.get("log_failure")
            if f is not None:
                text += "\n" + f.getTraceback()
            self.errors.append(text)


@pytest_twisted.async_yield_fixture
async def net(tmp_path):
    try:
        # Twisted reserves one descriptor (/dev/null) at the first listen;
        # take it now so that it is part of the baseline.
        from twisted.internet import tcp
        tcp._reservedFD.reserve()
    except Exception:
        pass
    # The relays' session loop (one epoll for the process, made at first use
    # and kept, as the reserved descriptor): part of the baseline too.
    from twisted.internet import reactor
    from splicing.relay.leanloop import sessionLoop
    sessionLoop(reactor)
    gc.collect()
    await harness.sleep(0)
    pipes0, other0 = _split_fds()
    _session.setdefault("pipes", pipes0)
    before = harness.fd_kinds()
    obs = _ErrorObserver()
    globalLogPublisher.addObserver(obs)
    n = harness.Net(tmp_path)
    try:
        yield n
    finally:
        try:
            await n.close_all()
            # Let the core finish whatever it does on close (one or two turns),
            # then compare; poll briefly so that a lazy close is not a leak.
            deadline = harness.now() + 1.0
            while True:
                gc.collect()
                pipes, other = _split_fds()
                ok = other <= other0 and pipes <= _session["pipes"] + PIPE_ALLOWANCE
                if ok or harness.now() > deadline:
                    break
                await harness.sleep(0.02)
        finally:
            globalLogPublisher.removeObserver(obs)
    errors = obs.errors + n.errors
    assert not errors, "errors logged during the test:\n" + "\n----\n".join(errors)
    after = harness.fd_kinds()
    new = {fd: t for fd, t in after.items() if before.get(fd) != t}
    assert other <= other0, "file descriptors leaked: %d -> %d; new: %r" % (other0, other, new)
    assert pipes <= _session["pipes"] + PIPE_ALLOWANCE, (
        "pipes leaked: %d at session start, %d now" % (_session["pipes"], pipes))
