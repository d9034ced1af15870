"""
Load for the scenarios built on an echo origin: latency, session rate and
idle sessions.  Each command runs as its own process (the suite starts
them), with epoll and non-blocking sockets so one process serves thousands
of connections; only 127.0.0.1 is used and every client is bounded in time.

    python -m benchmarks._echoload origin [--close-after N] [--port P] [--reuseport]
        Listen on a free 127.0.0.1 port, print C{PORT <n>}, echo every byte
        back.  With C{--close-after N}, close a connection once N bytes went
        back (the session-rate origin: the server closes first, so TIME_WAIT
        lands on the listening side, not on the relay's ephemeral ports).
        With C{--reuseport}, several origins can listen on one port.

    python -m benchmarks._echoload ping --port P --count N
        One connection, N round trips of one byte (after 200 unrecorded
        ones); prints one JSON line with every round trip in microseconds.

    python -m benchmarks._echoload rate --port P --seconds S --concurrency C [--size 1024]
        Sessions back to back, C at a time: connect, send C{size} bytes, read
        them back until the server's EOF, check them, close.  Prints one JSON
        line: sessions completed, errors, seconds.

    python -m benchmarks._echoload hold --port P --count N
        Open N connections, send one byte on each and wait for all echoes
        (then every session is established end to end), print C{READY n};
        then on stdin: C{ping [SECONDS]} (one byte through every connection
        again, in waves back to back for that long; prints C{PINGED n waves}
        with n the connections that answered the last wave), C{quit} (or
        EOF) closes them all.
"""

import argparse
import errno
import json
import os
import resource
import select
import socket
import sys
import time

IO_TIMEOUT = 10.0


def _raise_nofile():
    """Use the hard descriptor limit: thousands of connections per process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _nodelay(s):
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


# -- origin ----------------------------------------------------------------


def origin(args):
    _raise_nofile()
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if args.reuseport:  # several origin processes on one port, the kernel spreading the clients
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    ls.bind(("127.0.0.1", args.port))
    ls.listen(4096)
    ls.setblocking(False)
    ep = select.epoll()
    ep.register(ls.fileno(), select.EPOLLIN)
    conns = {}  # fd -> [socket, bytes echoed, pending output]
    print("PORT %d" % ls.getsockname()[1], flush=True)
    lfd, close_after = ls.fileno(), args.close_after

    def close(fd):
        c = conns.pop(fd)[0]
        ep.unregister(fd)
        c.close()

    while True:
        for fd, ev in ep.poll():
            if fd == lfd:
                while True:
                    try:
                        c, _ = ls.accept()
                    except BlockingIOError:
                        break
                    except OSError as e:  # EMFILE and friends: the backlog waits
                        if e.errno in (errno.EMFILE, errno.ENFILE):
                            break
                        raise
                    c.setblocking(False)
                    _nodelay(c)
                    conns[c.fileno()] = [c, 0, b""]
                    ep.register(c.fileno(), select.EPOLLIN)
                continue
            st = conns.get(fd)
            if st is None:
                continue
            c = st[0]
            try:
                if ev & select.EPOLLOUT:
                    data, st[2] = st[2], b""
                else:
                    data = c.recv(65536)
                    if not data:
                        close(fd)
                        continue
                n = c.send(data)
            except BlockingIOError:
                n = 0
            except OSError:
                close(fd)
                continue
            st[1] += n
            st[2] = data[n:]
            if st[2]:
                ep.modify(fd, select.EPOLLOUT)
            elif ev & select.EPOLLOUT:
                ep.modify(fd, select.EPOLLIN)
            if close_after and st[1] >= close_after and not st[2]:
                close(fd)


# -- latency ---------------------------------------------------------------


def ping(args):
    s = socket.create_connection(("127.0.0.1", args.port), timeout=IO_TIMEOUT)
    _nodelay(s)
    send, recv, clock = s.send, s.recv, time.perf_counter_ns
    out = {"samples": [], "error": None}
    try:
        for _ in range(200):  # warm-up: caches, the relay's first passes
            send(b"p")
            if recv(1) != b"p":
                raise EOFError("bad echo")
        samples = [0] * args.count
        for i in range(args.count):
            t0 = clock()
            send(b"p")
            if recv(1) != b"p":
                raise EOFError("bad echo")
            samples[i] = clock() - t0
        out["samples"] = [round(t / 1000.0, 1) for t in samples]
    except (OSError, EOFError) as e:
        out["error"] = "%s: %s" % (type(e).__name__, e)
    finally:
        s.close()
    print(json.dumps(out), flush=True)


# -- session rate ------------------------------------------------------------


def rate(args):
    _raise_nofile()
    payload = bytes(range(256)) * (args.size // 256) + b"x" * (args.size % 256)
    ep = select.epoll()
    live = {}  # fd -> [socket, phase ("connect" or "read"), received bytearray]
    done = errors = 0
    first_error = None
    start = time.monotonic()
    end = start + args.seconds
    hard_end = end + IO_TIMEOUT

    def open_one():
        s = socket.socket()
        s.setblocking(False)
        _nodelay(s)
        err = s.connect_ex(("127.0.0.1", args.port))
        if err not in (0, errno.EINPROGRESS):
            s.close()
            raise OSError(err, os.strerror(err))
        live[s.fileno()] = [s, "connect", bytearray()]
        ep.register(s.fileno(), select.EPOLLOUT)

    def finish(fd, error=None):
        nonlocal done, errors, first_error
        s = live.pop(fd)[0]
        ep.unregister(fd)
        s.close()
        if error is None:
            done += 1
        else:
            errors += 1
            first_error = first_error or error
        if time.monotonic() < end:
            open_one()

    for _ in range(args.concurrency):
        open_one()
    while live and time.monotonic() < hard_end:
        for fd, ev in ep.poll(1.0):
            st = live.get(fd)
            if st is None:
                continue
            s = st[0]
            if st[1] == "connect":
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    finish(fd, os.strerror(err))
                    continue
                try:
                    s.send(payload)  # 1 KiB always fits an empty send buffer
                except OSError as e:
                    finish(fd, str(e))
                    continue
                st[1] = "read"
                ep.modify(fd, select.EPOLLIN)
                continue
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError as e:
                finish(fd, str(e))
                continue
            if data:
                st[2] += data
                continue
            if st[2] != payload:
                finish(fd, "echo of %d bytes, expected %d" % (len(st[2]), len(payload)))
            else:
                finish(fd)
    secs = time.monotonic() - start
    print(json.dumps({"sessions": done, "errors": errors, "unfinished": len(live),
                      "secs": secs, "error": first_error}), flush=True)


# -- idle sessions -------------------------------------------------------------


def _ping_all(socks, deadline):
    """One byte through every connection; returns how many echoed it."""
    ep = select.epoll()
    waiting = {}
    for s in socks:
        s.send(b"i")
        waiting[s.fileno()] = s
        ep.register(s.fileno(), select.EPOLLIN)
    ok = 0
    while waiting and time.monotonic() < deadline:
        for fd, _ in ep.poll(1.0):
            s = waiting.pop(fd, None)
            if s is None:
                continue
            ep.unregister(fd)
            try:
                if s.recv(1) == b"i":
                    ok += 1
            except OSError:
                pass
    ep.close()
    return ok


def hold(args):
    _raise_nofile()
    socks = []
    ep = select.epoll()
    pending = {}
    deadline = time.monotonic() + 60
    want = args.count
    while (len(socks) < want or pending) and time.monotonic() < deadline:
        while len(pending) < 256 and len(socks) + len(pending) < want:
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", args.port))
            pending[s.fileno()] = s
            ep.register(s.fileno(), select.EPOLLOUT)
        for fd, _ in ep.poll(1.0):
            s = pending.pop(fd)
            ep.unregister(fd)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                s.close()
                want -= 1  # reported as fewer sessions, not retried forever
            else:
                socks.append(s)
    ep.close()
    ok = _ping_all(socks, time.monotonic() + 60)
    print("READY %d" % ok, flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd and cmd[0] == "ping":  # "ping SECONDS": waves back to back for that long
            end = time.monotonic() + (float(cmd[1]) if len(cmd) > 1 else 0)
            waves = 0
            while True:
                ok = _ping_all(socks, time.monotonic() + 60)
                waves += 1
                if time.monotonic() >= end:
                    break
            print("PINGED %d %d" % (ok, waves), flush=True)
        elif cmd == ["quit"]:
            break
    for s in socks:
        s.close()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks._echoload")
    sub = p.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("origin")
    o.add_argument("--port", type=int, default=0)
    o.add_argument("--close-after", type=int, default=0)
    o.add_argument("--reuseport", action="store_true", help="share the port with other origins (SO_REUSEPORT)")
    for name in ("ping", "rate", "hold"):
        c = sub.add_parser(name)
        c.add_argument("--port", type=int, required=True)
        if name in ("ping", "hold"):
            c.add_argument("--count", type=int, required=True)
    sub.choices["rate"].add_argument("--seconds", type=float, required=True)
    sub.choices["rate"].add_argument("--concurrency", type=int, default=16)
    sub.choices["rate"].add_argument("--size", type=int, default=1024)
    args = p.parse_args(argv)
    try:
        {"origin": origin, "ping": ping, "rate": rate, "hold": hold}[args.cmd](args)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
