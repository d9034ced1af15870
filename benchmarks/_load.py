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


def _session(conn):
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    try:
        _set_timeouts(conn)
        # The header may arrive split, and together with payload.
        have = 0
        t0 = None
        while have < HEADER.size:
            n = conn.recv_into(view[have:])
            if not n:
                return  # a probe, or a sender that died early
            if t0 is None:
                t0 = time.perf_counter()
                cpu0 = _cpu()
            have += n
        magic, mode, run_id = HEADER.unpack_from(buf)
        if magic != MAGIC:
            _emit({"error": "bad header %r" % bytes(buf[: HEADER.size])})
            return
        extra = have - HEADER.size
        total = extra
        crc = zlib.crc32(view[HEADER.size:have]) if mode == b"I" else None
        error = None
        recv_into = conn.recv_into
        try:
            if mode == b"I":
                while True:
                    n = recv_into(buf)
                    if not n:
                        break
                    crc = zlib.crc32(view[:n], crc)
                    total += n
            else:
                while True:
                    n = recv_into(buf)
                    if not n:
                        break
                    total += n
        except BlockingIOError:
            error = "no EOF and no data for %d s" % IO_TIMEOUT
        except OSError as e:
            error = "%s: %s" % (type(e).__name__, e)
        t1 = time.perf_counter()
        cpu1 = _cpu()
        result = {
            "id": run_id,
            "mode": mode.decode(),
            "bytes": total,
            "secs": t1 - t0,
            # Process-wide: other sessions (probes) are idle, so this is ours.
            "cpu": cpu1 - cpu0,
            "crc": crc,
            "error": error,
        }
    finally:
        conn.close()
    _emit(result)


def receiver(args):
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", args.port))
    lsock.listen(64)
    _emit_port = "PORT %d" % lsock.getsockname()[1]
    with _print_lock:
        sys.stdout.write(_emit_port + "\n")
        sys.stdout.flush()
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


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks._load")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--port", type=int, default=0)
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
    return sender(args)


if __name__ == "__main__":
    sys.exit(main())
