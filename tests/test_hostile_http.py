"""
Hostile HTTP against a real ``twistd splice http`` process.

The corpus (tests/hostile_corpus.py: smuggling, obfuscated framing, bare
LF/CR, NUL, oversized numbers, floods, long lines, bad versions, tunnels not
enabled) is replayed one connection per case while good keep-alive clients
run beside it.  For each case: the statuses the client gets, that a refusal
closes the connection, and what a strict recording origin completed for it
(nothing, or exactly the good requests sent before, or the body bytes of the
one request that carried the smuggled one).  The good clients check every
answer by SHA-256 throughout.  The in-process versions of single cases are in
tests/test_http_proxy.py; this file is about the whole corpus through the
command line, with others served meanwhile.
"""

import socket
import time

import pytest

import procs
from hostile_corpus import CASES
from hostile_load import GoodClients, RecordingOrigin, origin_problems, problems, replay


@pytest.fixture(scope="module")
def origin():
    o = RecordingOrigin()
    yield o
    o.close()


def start_proxy(tmp, origin, *options):
    relay = procs.Twistd(tmp, ["http", "--listen", "tcp:0:interface=127.0.0.1", "--connect", origin.tcp]
                         + list(options), name="http")
    (where,) = relay.listening()["http"]
    return relay, where


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory, origin):
    """The whole corpus, once, with three good clients running; then the proxy stops."""
    relay, where = start_proxy(tmp_path_factory.mktemp("hostile"), origin, "--header-timeout", "5")
    try:
        good = GoodClients(where, count=3)
        time.sleep(0.3)  # the good clients are under way before the first case
        outcomes = {case.name: replay(where, case) for case in CASES}
        good.stop()
        log = relay.text()
    finally:
        relay.close()  # the origin sees every connection end
    origin.settle()
    return outcomes, origin_problems(origin, CASES), good, log


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_case(corpus_run, case):
    """Its statuses, a closed connection after a refusal, and only what it allows at the origin."""
    outcomes, at_origin, _, _ = corpus_run
    assert problems(outcomes[case.name]) + at_origin.get(case.name, []) == []


def test_good_clients_served_throughout_the_corpus(corpus_run):
    outcomes, at_origin, good, log = corpus_run
    assert good.errors == [] and good.checked >= 30, (good.checked, good.errors[:5])
    assert at_origin.get("?", []) == []  # nothing at the origin that no case explains
    assert "Traceback" not in log and "Unhandled" not in log


@pytest.fixture
def slow_proxy(tmp_path, origin):
    relay, where = start_proxy(tmp_path, origin, "--header-timeout", "1")
    yield relay, where
    relay.close()


def test_slowloris_head_gets_408_after_header_timeout(slow_proxy, origin):
    """A head trickled a byte every 100 ms: 408 after --header-timeout (1 s), nothing at the origin; others served."""
    relay, where = slow_proxy
    before = len(origin.requests)
    good = GoodClients(where, count=2, seed=10)
    text = b"GET /h/slowloris HTTP/1.1\r\nHost: hostile.test\r\nX-Slow: " + b"z" * 100
    got, sent, t0 = b"", 0, time.monotonic()
    with socket.create_connection(where, timeout=5) as s:
        s.settimeout(0.1)
        while time.monotonic() - t0 < 5:
            try:
                more = s.recv(65536)
            except socket.timeout:
                s.sendall(text[sent:sent + 1])
                sent += 1
                continue
            except ConnectionResetError:
                break
            if not more:
                break
            got += more
    elapsed = time.monotonic() - t0
    good.stop()
    assert got.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in got, got[:200]
    assert 0.9 < elapsed < 2.5, elapsed
    assert not [r for r in origin.requests[before:] if r.target == "/h/slowloris"]
    assert good.errors == [] and good.checked > 0, good.errors[:5]


def test_slow_body_is_not_cut_by_the_header_timeout(slow_proxy, origin):
    """
    --header-timeout covers the head only (as HAProxy's timeout http-request):
    a body trickled over 2 s, twice the header timeout, arrives whole.
    """
    relay, where = slow_proxy
    body = b"0123456789" * 2
    with socket.create_connection(where, timeout=5) as s:
        s.sendall(b"POST /h/slow-body HTTP/1.1\r\nHost: hostile.test\r\nContent-Length: %d\r\n\r\n" % len(body))
        for i in range(len(body)):
            time.sleep(0.1)
            s.sendall(body[i:i + 1])
        s.shutdown(socket.SHUT_WR)
        answer = procs.recv_all(s)
    assert answer.startswith(b"HTTP/1.1 200 ") and procs.sha256(body).encode() in answer, answer[:300]
    assert [r.body for r in origin.requests if r.target == "/h/slow-body"] == [body]


def test_stalled_body_ends_after_idle_timeout(tmp_path, origin):
    """
    A body that stops coming (slowloris on the body) holds a session and an
    origin connection; as with relayd's session timeout and HAProxy's
    timeout client, the proxy's --idle ends it once nothing moved for that
    long, while others are served.  The origin never completes the request.
    """
    relay, where = start_proxy(tmp_path, origin, "--header-timeout", "1", "--idle", "1")
    try:
        good = GoodClients(where, count=2, seed=20)
        with socket.create_connection(where, timeout=6) as s:
            s.sendall(b"POST /h/stalled-body HTTP/1.1\r\nHost: hostile.test\r\nContent-Length: 1000\r\n\r\n"
                      + b"x" * 10)
            t0 = time.monotonic()
            try:
                answer = procs.recv_all(s)
            except (socket.timeout, ConnectionResetError) as e:
                answer = repr(e).encode()
            elapsed = time.monotonic() - t0
        good.stop()
        assert elapsed < 3.0, (elapsed, answer[:200])
        assert not [r for r in origin.requests if r.target == "/h/stalled-body"]
        assert good.errors == [] and good.checked > 0, good.errors[:5]
    finally:
        relay.close()
