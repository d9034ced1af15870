"""
splicing.http.deadline: the proxy's header and backend timeouts, set and
cleared on every request (twisted.internet.task.Clock, no sockets).
"""

from twisted.internet.task import Clock

from splicing.http.deadline import Deadline


def make(seconds=10.0):
    clock, fired = Clock(), []
    return clock, fired, Deadline(clock, seconds, lambda: fired.append(clock.seconds()))


def test_fires_once_after_its_time():
    clock, fired, d = make()
    d.start()
    clock.advance(9.999)
    assert fired == [] and d.armed
    clock.advance(0.001)
    assert fired == [10.0] and not d.armed
    clock.advance(100)
    assert fired == [10.0] and clock.getDelayedCalls() == []


def test_stopped_never_fires():
    clock, fired, d = make()
    d.start()
    clock.advance(3)
    d.stop()
    clock.advance(100)
    assert fired == [] and clock.getDelayedCalls() == []


def test_restart_moves_the_deadline():
    """Started again at 6 s (a new request), it fires 10 s after that, not after the first start."""
    clock, fired, d = make()
    d.start()
    clock.advance(6)
    d.stop()
    d.start()
    clock.advance(9)
    assert fired == []
    clock.advance(1)
    assert fired == [16.0]


def test_one_call_per_period_however_many_requests():
    """A thousand start/stop pairs (requests) in one period leave one DelayedCall, not a thousand."""
    clock, fired, d = make()
    for i in range(1000):
        d.start()
        clock.advance(0.001)
        d.stop()
        assert len(clock.getDelayedCalls()) == 1
    clock.advance(100)
    assert fired == [] and clock.getDelayedCalls() == []


def test_cancel_drops_the_call():
    clock, fired, d = make()
    d.start()
    d.cancel()
    assert clock.getDelayedCalls() == [] and not d.armed
    clock.advance(100)
    assert fired == []
