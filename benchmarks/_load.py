"""
Load generators for the relay benchmarks: a bulk TCP sender and a receiver
server, meant to run as their own processes so that they do not compete with
the relay (or with each other) for one interpreter.

    python -m benchmarks._load recv
        Listen on 127.0.0.1 (a free port), print C{PORT <n>}, then serve any
        number of connections, each in its own thread.  A session starts with
        a 16-byte header written by the sender (magic, mode, run id); for
        every session that carried a header, one JSON line is printed when
        the peer's EOF arrives.  Sessions without a header (readiness probes)
        are ignored.

    python -m benchmarks._load send --port P --id N (--seconds S | --bytes B)
        Connect, send the header, then send: with C{--seconds}, 1 MiB
        memoryviews of a preallocated buffer for S seconds (throughput mode,
        no checksum); with C{--bytes}, exactly B bytes of a deterministic
        pattern in uneven chunks, with a CRC-32 of what was sent (integrity
        mode).  Then half-close, wait for the peer's EOF, and print one JSON
        line.

    python -m benchmarks._load recv --many
        The same protocol and result lines, but one epoll loop and one
        shared 1 MiB buffer for all sessions (hundreds or thousands at once);
        result lines also carry C{t0}/C{t1} (C{time.monotonic()}).

    python -m benchmarks._load send-many --port P --sessions N --first-id K --seconds S
        N integrity sessions at once from one epoll loop, ids K...K+N-1: each
        sends whole copies of the pattern (at least one) until S seconds
        have passed, then half-closes and waits for the peer's EOF; prints
        one JSON line: per-session bytes sent and their CRC-32, and the wall
        time from the first connect to the last EOF.

Both sides move data with one system call per MiB (C{send} of a memoryview,
C{recv_into} a fixed buffer), so Python costs nothing measurable per byte.
"""

import argparse
import json
import random
import resource
import socket
import struct
import sys
import threading
import time
import zlib

CHUNK = 1 << 20
HEADER = struct.Struct("!4sc3xQ")  # magic, mode (b"T" or b"I"), pad, run id
MAGIC = b"SPLB"
IO_TIMEOUT = 5  # seconds without progress before a side gives up


def _cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _set_timeouts(sock, seconds=IO_TIMEOUT):
    # Kernel-side timeouts: unlike settimeout(), they cost no poll() per call.
    tv = struct.pack("ll", seconds, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


def pattern():
    """
    The deterministic integrity pattern: a pseudo-random buffer whose length
    is not a multiple of any chunk size, so offsets drift between chunks.
    """
    return random.Random(0x5EED).randbytes(CHUNK + 4099)


# -- receiver --------------------------------------------------------------

_print_lock = threading.Lock()


def _emit(obj):
    line = json.dumps(obj)
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Tally:
    """
    One received session's accounting: the header (which may arrive split,
    and together with payload), then bytes and, in integrity mode, CRC-32.
    """

    def __init__(self):
        self.head = b""
        self.mode = self.run_id = None
        self.total = 0
        self.crc = None
        self.t0 = self.mono0 = self.cpu0 = None
        self.error = None

    def feed(self, view):
        """Account for received bytes (a memoryview); False on a bad header."""
        if self.t0 is None:
            self.t0, self.mono0, self.cpu0 = time.perf_counter(), time.monotonic(), _cpu()
        if self.mode is None:
            need = HEADER.size - len(self.head)
            self.head += bytes(view[:need])
            view = view[need:]
            if len(self.head) < HEADER.size:
                return True
            magic, mode, self.run_id = HEADER.unpack(self.head)
            if magic != MAGIC:
                self.error = "bad header %r" % self.head
                return False
            self.mode = mode
            self.crc = 0 if mode == b"I" else None
        self.total += len(view)
        if self.crc is not None:
            self.crc = zlib.crc32(view, self.crc)
        return True

    def result(self):
        """The JSON result, or None for a probe (no header)."""
        if self.mode is None:
            return {"error": self.error} if self.error else None
        return {
            "id": self.run_id,
            "mode": self.mode.decode(),
            "bytes": self.total,
            "secs": time.perf_counter() - self.t0,
            # Process-wide: other sessions (probes) are idle, so this is ours.
            "cpu": _cpu() - self.cpu0,
            "crc": self.crc,
            "error": self.error,
            "t0": self.mono0,
            "t1": time.monotonic(),
        }


def _session(conn):
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    tally = Tally()
    try:
        _set_timeouts(conn)
        recv_into = conn.recv_into
        try:
            while True:
                n = recv_into(buf)
                if not n or not tally.feed(view[:n]):
                    break
        except BlockingIOError:
            tally.error = "no EOF and no data for %d s" % IO_TIMEOUT
        except OSError as e:
            tally.error = "%s: %s" % (type(e).__name__, e)
    finally:
        conn.close()
    result = tally.result()
    if result is not None:
        _emit(result)


def _receive_many(lsock):
    """All sessions in one epoll loop, one shared buffer."""
    import select

    lsock.setblocking(False)
    ep = select.epoll()
    ep.register(lsock.fileno(), select.EPOLLIN)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    conns = {}  # fd -> (socket, Tally)

    def end(fd, error=None):
        conn, tally = conns.pop(fd)
        ep.unregister(fd)
        conn.close()
        if error:
            tally.error = error
        result = tally.result()
        if result is not None:
            _emit(result)

    lfd = lsock.fileno()
    while True:
        for fd, _ in ep.poll():
            if fd == lfd:
                while True:
                    try:
                        conn, _ = lsock.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    conns[conn.fileno()] = (conn, Tally())
                    ep.register(conn.fileno(), select.EPOLLIN)
                continue
            conn, tally = conns[fd]
            try:
                n = conn.recv_into(buf)
            except BlockingIOError:
                continue
            except OSError as e:
                end(fd, "%s: %s" % (type(e).__name__, e))
                continue
            if not n:
                end(fd)
            elif not tally.feed(view[:n]):
                end(fd)


def receiver(args):
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", args.port))
    lsock.listen(4096 if args.many else 64)
    _emit_port = "PORT %d" % lsock.getsockname()[1]
    with _print_lock:
        sys.stdout.write(_emit_port + "\n")
        sys.stdout.flush()
    if args.many:
        return _receive_many(lsock)
    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=_session, args=(conn,), daemon=True).start()


# -- sender ----------------------------------------------------------------


def sender(args):
    sock = socket.create_connection(("127.0.0.1", args.port), timeout=10)
    sock.settimeout(None)
    _set_timeouts(sock)
    mode = b"I" if args.bytes is not None else b"T"
    sock.sendall(HEADER.pack(MAGIC, mode, args.id))
    sent = 0
    crc = None
    error = phase = None
    cpu0 = _cpu()
    t0 = time.perf_counter()
    try:
        if mode == b"T":
            view = memoryview(bytearray(CHUNK))
            send = sock.send
            clock = time.perf_counter
            deadline = t0 + args.seconds
            while clock() < deadline:
                sent += send(view)
        else:
            pat = pattern()
            pview = memoryview(pat)
            crc = 0
            rng = random.Random(args.id)
            off = 0
            remaining = args.bytes
            while remaining:
                # Uneven chunks, from a few bytes up to a little over 1 MiB.
                want = min(remaining, rng.choice((1, 7, 1000, 65536, 300001, CHUNK)))
                want = min(want, len(pat) - off)
                n = sock.send(pview[off : off + want])
                crc = zlib.crc32(pview[off : off + n], crc)
                sent += n
                remaining -= n
                off = (off + n) % len(pat)
        t1 = time.perf_counter()
        cpu1 = _cpu()
        phase = "after sending everything, waiting for the peer to close"
        sock.shutdown(socket.SHUT_WR)
        # Wait for the far end to close: everything has then been delivered.
        while sock.recv(65536):
            pass
    except OSError as e:
        if phase is None:
            t1 = time.perf_counter()
            cpu1 = _cpu()
            phase = "while sending"
        if isinstance(e, BlockingIOError):
            e = "no progress for %d s" % IO_TIMEOUT
        error = "%s (%s)" % (e, phase)
    finally:
        sock.close()
    print(
        json.dumps(
            {
                "id": args.id,
                "sent": sent,
                "secs": t1 - t0,
                "cpu": cpu1 - cpu0,
                "crc": crc,
                "error": error,
            }
        ),
        flush=True,
    )
    return 0 if error is None else 1


def send_many(args):
    """Many integrity sessions at once; see the module docstring."""
    import select

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    pat = pattern()
    pview = memoryview(pat)
    block_crcs = [0]  # CRC-32 of k whole patterns, grown on demand: one session's worth

    def crc_of(blocks):
        while len(block_crcs) <= blocks:
            block_crcs.append(zlib.crc32(pat, block_crcs[-1]))
        return block_crcs[blocks]

    ep = select.epoll()
    # fd -> [socket, id, offset in the pattern, whole patterns sent, phase]
    live = {}
    done = {}
    # Connect everything first, then send the headers (the receiver starts
    # its clock at a header): the span measured is data transfer with all
    # sessions open, not how fast a relay accepts.
    socks = [socket.create_connection(("127.0.0.1", args.port), timeout=10)
             for _ in range(args.sessions)]
    t0 = time.monotonic()
    deadline = t0 + args.seconds
    for i, sock in enumerate(socks):
        sock.setblocking(False)
        sock.send(HEADER.pack(MAGIC, b"I", args.first_id + i))  # 16 bytes: always fits
        live[sock.fileno()] = [sock, args.first_id + i, 0, 0, "send"]
        ep.register(sock.fileno(), select.EPOLLOUT)
    hard_end = deadline + 60
    while live and time.monotonic() < hard_end:
        for fd, _ in ep.poll(1.0):
            st = live[fd]
            sock = st[0]
            try:
                if st[4] == "send":
                    n = sock.send(pview[st[2]:min(len(pat), st[2] + CHUNK)])
                    st[2] += n
                    if st[2] == len(pat):
                        st[2] = 0
                        st[3] += 1
                        if time.monotonic() >= deadline:
                            sock.shutdown(socket.SHUT_WR)
                            st[4] = "drain"
                            ep.modify(fd, select.EPOLLIN)
                    continue
                if sock.recv(65536):
                    continue
                error = None
            except BlockingIOError:
                continue
            except OSError as e:
                error = "%s: %s" % (type(e).__name__, e)
            ep.unregister(fd)
            sock.close()
            del live[fd]
            sent = st[3] * len(pat) + st[2]
            done[st[1]] = {"sent": sent, "crc": crc_of(st[3]) if not st[2] else None,
                           "error": error}
    for st in live.values():
        done[st[1]] = {"sent": st[3] * len(pat) + st[2], "crc": None,
                       "error": "unfinished after %d s" % (hard_end - t0)}
        st[0].close()
    print(json.dumps({"sessions": done, "secs": time.monotonic() - t0}), flush=True)
    return 0 if all(d["error"] is None for d in done.values()) else 1


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks._load")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--port", type=int, default=0)
    r.add_argument("--many", action="store_true", help="one epoll loop for all sessions")
    m = sub.add_parser("send-many")
    m.add_argument("--port", type=int, required=True)
    m.add_argument("--sessions", type=int, required=True)
    m.add_argument("--first-id", type=int, required=True)
    m.add_argument("--seconds", type=float, required=True)
    s = sub.add_parser("send")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--id", type=int, required=True)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--seconds", type=float)
    g.add_argument("--bytes", type=int)
    args = p.parse_args(argv)
    if args.cmd == "recv":
        try:
            receiver(args)
        except KeyboardInterrupt:
            pass
        return 0
    if args.cmd == "send-many":
        return send_many(args)
    return sender(args)


if __name__ == "__main__":
    sys.exit(main())
