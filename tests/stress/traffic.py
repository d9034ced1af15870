"""
Checked traffic for the reliability tests: an origin and a client load
generator, each its own process (``python tests/stress/traffic.py origin|clients``),
written with asyncio and the standard library only, so that neither the
checker nor its descriptors and CPU share anything with the relay under test.

Every session begins with a 24-byte header from the client (magic, session
id, bytes up, bytes down, kind, mode); both sides derive the bytes from one
seeded pool, so each side knows what it must receive, hashes what arrived
(SHA-256) and compares digest and length: a lost, duplicated or reordered
byte shows up as a failed session.  Kinds:

- ``normal``: random lengths both ways, with a random half-close order:
  the client sends and shuts down first, the origin does, or both at once.
- ``client_reset``: the client sends part of its bytes and resets (RST).
- ``origin_reset``: the origin sends part of its bytes and resets.
- ``stall``: the origin never reads; the client sends until it has pushed
  ``up`` bytes or its deadline comes, then resets.
- ``idle``: the client sends the header and waits for the relay's idle
  timeout to end the session (EOF or reset, checked against a deadline).

Clients connect and send their headers at once, then wait for a barrier
(``--start-at``, ``--go-file``) before the bodies: the sessions overlap.

Each process prints one JSON summary line when it ends (the origin on
SIGTERM or SIGINT).  The origin's ``max_concurrent`` is the most sessions it
held at once, each counted from its header to the origin's last act (its
EOF, in the ``client_first`` mode): the relay held each of them at least
that long, so the relay's own peak is at least as high.  Every wait has a deadline.
"""

import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import socket
import struct
import sys
import time

MAGIC = b"SPL1"
HEADER = struct.Struct("!4sQIIBB2x")  # magic, sid, up, down, kind, mode (24 bytes)
KINDS = ["normal", "client_reset", "origin_reset", "stall", "idle"]
MODES = ["client_first", "origin_first", "together"]
POOL_SIZE = 8 << 20
_pool = None


def pool():
    global _pool
    if _pool is None:
        _pool = random.Random(20240607).randbytes(POOL_SIZE)
    return _pool


def stream(sid, direction, length):
    """The bytes session ``sid`` sends in ``direction`` ("up" or "down")."""
    if length > POOL_SIZE // 2:
        raise ValueError("at most %d bytes per direction" % (POOL_SIZE // 2))
    offset = (sid * 2654435761 + (0 if direction == "up" else 1 << 22)) % (POOL_SIZE - length)
    return memoryview(pool())[offset:offset + length]


def digest(data):
    return hashlib.sha256(data).digest()


async def send(writer, data, rng, pace=None):
    """Write ``data`` in random pieces (varying segment boundaries), draining as we go."""
    sent = 0
    while sent < len(data):
        n = rng.randint(1, 1 << 17)
        writer.write(data[sent:sent + n])
        sent += len(data[sent:sent + n])
        await writer.drain()
        if pace:
            await asyncio.sleep(pace)
    return sent


async def receive(reader, expected_length):
    """(length, digest, how): read to EOF (or a reset), hashing."""
    h, n = hashlib.sha256(), 0
    try:
        while True:
            chunk = await reader.read(1 << 16)
            if not chunk:
                return n, h.digest(), "eof"
            n += len(chunk)
            h.update(chunk)
            if n > expected_length + (1 << 20):
                return n, h.digest(), "too-much"
    except (ConnectionResetError, BrokenPipeError):
        return n, h.digest(), "reset"


def reset(writer):
    """SO_LINGER {1, 0} and close: the peer gets an RST."""
    sock = writer.get_extra_info("socket")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


def close(writer):
    try:
        writer.close()
    except OSError:
        pass


# -- the origin --------------------------------------------------------------


class Origin:
    def __init__(self, args):
        self.args = args
        self.stats = {"role": "origin", "sessions": 0, "ok": 0, "checked_bytes": 0, "sent_bytes": 0,
                      "failed": [], "resets": 0, "stalls": 0, "concurrent": 0, "max_concurrent": 0,
                      "bad_headers": 0, "kinds": {}, "live": 0}

    async def handle(self, reader, writer):
        s = self.stats
        s["concurrent"] += 1
        counted = [False]
        try:
            try:
                raw = await asyncio.wait_for(reader.readexactly(HEADER.size), self.args.timeout)
            except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                return
            magic, sid, up, down, kind, mode = HEADER.unpack(raw)
            if magic != MAGIC or kind >= len(KINDS) or mode >= len(MODES):
                s["bad_headers"] += 1
                return reset(writer)
            s["sessions"] += 1
            counted[0] = True
            s["live"] += 1
            s["max_concurrent"] = max(s["max_concurrent"], s["live"])
            name = KINDS[kind]
            s["kinds"][name] = s["kinds"].get(name, 0) + 1
            await asyncio.wait_for(self.session(reader, writer, sid, up, down, name, MODES[mode], counted),
                                   self.args.timeout)
        except asyncio.TimeoutError:
            s["failed"].append("timeout")
        except (ConnectionError, asyncio.CancelledError):
            pass  # a reset, or the origin stopping with a stalled session open
        finally:
            s["concurrent"] -= 1
            if counted[0]:
                s["live"] -= 1
            close(writer)

    async def session(self, reader, writer, sid, up, down, kind, mode, counted):
        s, rng = self.stats, random.Random(sid)
        if kind == "stall":
            s["stalls"] += 1
            await asyncio.sleep(self.args.stall)
            return reset(writer)
        if kind == "client_reset":
            await receive(reader, up)
            s["resets"] += 1
            return
        if kind == "origin_reset":
            data = stream(sid, "down", down)
            await send(writer, data[: rng.randint(0, down)], rng)
            s["resets"] += 1
            return reset(writer)
        if kind == "idle":
            await receive(reader, 0)
            return
        out = stream(sid, "down", down)

        async def sending():
            if mode == "client_first":
                await asyncio.sleep(rng.random() * 0.05)
            s["sent_bytes"] += await send(writer, out, rng)
            if mode == "client_first" and counted[0]:
                # Our EOF is the session's last event: the relay cannot end
                # the session (and admit another) before it sees it, so the
                # count drops here, before it goes out (see "live").
                counted[0] = False
                s["live"] -= 1
            writer.write_eof()

        async def receiving():
            return await receive(reader, up)

        if mode == "origin_first":
            await sending()
            got = await receiving()
        elif mode == "client_first":
            got = await receiving()
            await sending()
        else:
            got, _ = await asyncio.gather(receiving(), sending())
        await writer.drain()
        n, d, how = got
        if (n, d, how) == (up, digest(stream(sid, "up", up)), "eof"):
            s["ok"] += 1
            s["checked_bytes"] += n
        else:
            s["failed"].append({"sid": sid, "got": n, "want": up, "how": how, "mode": mode})

    async def run(self):
        server = await asyncio.start_server(self.handle, self.args.host, self.args.port, backlog=4096,
                                            limit=1 << 16)
        port = server.sockets[0].getsockname()[1]
        print(json.dumps({"listening": port}), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.close()
        # Sessions whose client already checked its half may still be checking ours.
        deadline = time.monotonic() + self.args.drain
        while self.stats["concurrent"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.stats["open_at_stop"] = self.stats["concurrent"]
        self.stats["failed"] = self.stats["failed"][:20]
        print(json.dumps(self.stats), flush=True)


# -- the clients -------------------------------------------------------------


class Clients:
    def __init__(self, args):
        self.args = args
        self.targets = [_address(t) for t in args.target]
        self.mix = _mix(args.mix)
        self.stats = {"role": "clients", "sessions": 0, "ok": 0, "checked_bytes": 0, "sent_bytes": 0,
                      "failed": [], "kinds": {}, "connect_errors": 0, "ended_early": 0}

    async def session(self, index, start):
        a, s = self.args, self.stats
        sid = (a.id << 40) | index
        rng = random.Random(sid ^ a.seed)
        kind = rng.choices(list(self.mix), weights=list(self.mix.values()))[0]
        mode = rng.randrange(len(MODES)) if a.mode == "random" else MODES.index(a.mode)
        up, down = rng.randint(0, a.max_up), rng.randint(0, a.max_down)
        if kind == "stall":
            up = a.max_up
        s["kinds"][kind] = s["kinds"].get(kind, 0) + 1
        host, port = self.targets[index % len(self.targets)]
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=1 << 16), a.timeout)
        except (OSError, asyncio.TimeoutError):
            s["connect_errors"] += 1
            s["failed"].append({"sid": sid, "kind": kind, "how": "connect"})
            return
        s["sessions"] += 1
        try:
            writer.write(HEADER.pack(MAGIC, sid, up, down, KINDS.index(kind), mode))
            await writer.drain()
            await start.wait()
            await asyncio.wait_for(self.body(reader, writer, sid, up, down, kind, MODES[mode], rng), a.timeout)
        except asyncio.TimeoutError:
            s["failed"].append({"sid": sid, "kind": kind, "how": "timeout"})
            reset(writer)
        except ConnectionError as e:
            if kind in ("normal",):
                s["failed"].append({"sid": sid, "kind": kind, "how": type(e).__name__})
            else:
                s["ended_early"] += 1
        finally:
            close(writer)

    async def body(self, reader, writer, sid, up, down, kind, mode, rng):
        s, a = self.stats, self.args
        data = stream(sid, "up", up)
        if kind == "client_reset":
            await send(writer, data[: rng.randint(0, up)], rng)
            await asyncio.sleep(rng.random() * 0.05)
            return reset(writer)
        if kind == "origin_reset":
            await receive(reader, down)
            return
        if kind == "stall":
            try:
                s["sent_bytes"] += await asyncio.wait_for(send(writer, data, rng), a.stall)
            except asyncio.TimeoutError:
                pass
            return reset(writer)
        if kind == "idle":
            started = time.monotonic()
            n, _, how = await receive(reader, 0)
            if n or time.monotonic() - started > a.idle_deadline:
                s["failed"].append({"sid": sid, "kind": kind, "how": how, "after": time.monotonic() - started})
            else:
                s["ok"] += 1
            return

        async def sending():
            if mode == "origin_first":
                await asyncio.sleep(rng.random() * 0.05)
            s["sent_bytes"] += await send(writer, data, rng)
            writer.write_eof()

        if mode == "client_first":
            await sending()
            got = await receive(reader, down)
        elif mode == "origin_first":
            got = await receive(reader, down)
            await sending()
        else:
            got, _ = await asyncio.gather(receive(reader, down), sending())
        n, d, how = got
        if (n, d, how) == (down, digest(stream(sid, "down", down)), "eof"):
            s["ok"] += 1
            s["checked_bytes"] += n
        else:
            s["failed"].append({"sid": sid, "kind": kind, "got": n, "want": down, "how": how, "mode": mode})

    async def run(self):
        a = self.args
        start = asyncio.Event()
        started = time.monotonic()
        slots = asyncio.Semaphore(a.concurrency)

        async def one(i):
            async with slots:
                await self.session(i, start)

        tasks = [asyncio.ensure_future(one(i)) for i in range(a.sessions)]
        if a.start_at:
            await asyncio.sleep(max(0.0, a.start_at - time.time()))
        limit = time.monotonic() + a.timeout
        while a.go_file and not os.path.exists(a.go_file) and time.monotonic() < limit:
            await asyncio.sleep(0.02)
        start.set()
        await asyncio.wait(tasks, timeout=a.deadline)
        for t in tasks:
            t.cancel()
        s = self.stats
        s["unfinished"] = sum(1 for t in tasks if not t.done() or t.cancelled())
        s["elapsed"] = time.monotonic() - started
        s["failed"] = s["failed"][:20]
        print(json.dumps(s), flush=True)


def _address(text):
    host, port = text.rsplit(":", 1)
    return host.strip("[]"), int(port)


def _mix(text):
    out = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name not in KINDS:
            raise SystemExit("unknown kind %r (%s)" % (name, ", ".join(KINDS)))
        out[name] = float(weight or 1)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="role", required=True)
    o = sub.add_parser("origin")
    o.add_argument("--host", default="127.0.0.1")
    o.add_argument("--port", type=int, default=0)
    o.add_argument("--timeout", type=float, default=60.0, help="bound on one session")
    o.add_argument("--stall", type=float, default=5.0, help="how long a stalling origin holds a session")
    o.add_argument("--drain", type=float, default=10.0, help="at stop, how long open sessions may finish")
    c = sub.add_parser("clients")
    c.add_argument("--target", action="append", required=True, help="HOST:PORT (repeatable: round-robin)")
    c.add_argument("--sessions", type=int, default=100)
    c.add_argument("--concurrency", type=int, default=100)
    c.add_argument("--id", type=int, default=0, help="this process's number (session ids are unique)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--mix", default="normal")
    c.add_argument("--mode", default="random", choices=["random"] + MODES, help="who half-closes first")
    c.add_argument("--max-up", type=int, default=1 << 16)
    c.add_argument("--max-down", type=int, default=1 << 16)
    c.add_argument("--start-at", type=float, default=0.0, help="unix time to start sending (a barrier)")
    c.add_argument("--go-file", help="send once this file exists (a barrier the caller lifts)")
    c.add_argument("--timeout", type=float, default=60.0, help="bound on one session")
    c.add_argument("--stall", type=float, default=3.0, help="how long a client pushes into a stalled origin")
    c.add_argument("--idle-deadline", type=float, default=10.0)
    c.add_argument("--deadline", type=float, default=300.0, help="bound on the whole run")
    args = p.parse_args(argv)
    role = Origin(args) if args.role == "origin" else Clients(args)
    asyncio.run(role.run())


if __name__ == "__main__":
    sys.exit(main())
