"""
Reference relays without Twisted or C{splicing}: the two Python prototypes of
docs' perf baseline, to anchor what this machine allows in the same run.

    python -m benchmarks._protorelay --listen PORT --connect RPORT --mode splice|copy

C{splice}: C{os.splice} source -> 1 MiB pipe -> drain.  C{copy}: C{recv_into}
a 1 MiB buffer, C{send} a memoryview of it.  Single-threaded, level-triggered
epoll, both directions, half-close forwarded (EOF -> C{shutdown(SHUT_WR)}).
"""

import argparse
import fcntl
import os
import select
import socket
import sys

CAP = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK if hasattr(os, "splice") else 0


class Direction:
    def __init__(self, src, dst, mode):
        self.src, self.dst, self.mode = src, dst, mode
        self.eof = self.finished = False
        self.pending = 0
        if mode == "splice":
            self.pr, self.pw = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                fcntl.fcntl(self.pw, F_SETPIPE_SZ, CAP)
            except OSError:
                pass
        else:
            self.buf = bytearray(CAP)
            self.view = memoryview(self.buf)
            self.start = self.end = 0

    def _fill(self):
        if self.mode == "splice":
            return os.splice(self.src.fileno(), self.pw, CAP - self.pending, flags=SPLICE_FLAGS)
        n = self.src.recv_into(self.view[self.end:])
        self.end += n
        return n

    def _flush(self):
        if self.mode == "splice":
            return os.splice(self.pr, self.dst.fileno(), self.pending, flags=SPLICE_FLAGS)
        n = self.dst.send(self.view[self.start:self.end])
        self.start += n
        if self.start == self.end:
            self.start = self.end = 0
        return n

    def _room(self):
        if self.mode == "splice":
            return self.pending < CAP
        return self.end < CAP  # the free head of the buffer is reused once it drains

    def pump(self):
        while not self.finished:
            moved = False
            if not self.eof and self._room():
                try:
                    n = self._fill()
                except BlockingIOError:
                    n = None
                if n == 0:
                    self.eof = True
                elif n:
                    self.pending += n
                    moved = True
            if self.pending:
                try:
                    n = self._flush()
                except BlockingIOError:
                    n = 0
                if n:
                    self.pending -= n
                    moved = True
            if self.eof and not self.pending:
                self.finished = True
                try:
                    self.dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            if not moved:
                break

    def interest(self):
        """(events wanted on src, events wanted on dst)."""
        if self.finished:
            return 0, 0
        r = select.EPOLLIN if not self.eof and self._room() else 0
        w = select.EPOLLOUT if self.pending else 0
        return r, w

    def close(self):
        if self.mode == "splice":
            os.close(self.pr)
            os.close(self.pw)


class Session:
    def __init__(self, loop, client, server, mode):
        self.loop, self.a, self.b = loop, client, server
        self.dirs = (Direction(client, server, mode), Direction(server, client, mode))
        self.masks = {client.fileno(): 0, server.fileno(): 0}
        for s in (client, server):
            loop.ep.register(s.fileno(), 0)
            loop.sessions[s.fileno()] = self
        self.update()

    def event(self):
        try:
            for d in self.dirs:
                d.pump()
        except OSError:
            self.close()
            return
        if all(d.finished for d in self.dirs):
            self.close()
        else:
            self.update()

    def update(self):
        f, r = self.dirs
        fa, fb = f.interest()  # a readable, b writable
        ra, rb = r.interest()  # b readable, a writable
        want = {self.a.fileno(): fa | rb, self.b.fileno(): fb | ra}
        for fd, m in want.items():
            if m != self.masks[fd]:
                self.loop.ep.modify(fd, m)
                self.masks[fd] = m

    def close(self):
        for s in (self.a, self.b):
            fd = s.fileno()
            if fd in self.loop.sessions:
                del self.loop.sessions[fd]
                self.loop.ep.unregister(fd)
            s.close()
        for d in self.dirs:
            d.close()


class Loop:
    def __init__(self, listen, dest, mode):
        self.ep = select.epoll()
        self.sessions = {}
        self.dest, self.mode = dest, mode
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(listen)
        self.lsock.listen(64)
        self.lsock.setblocking(False)
        self.ep.register(self.lsock.fileno(), select.EPOLLIN)

    def accept(self):
        try:
            c, _ = self.lsock.accept()
        except BlockingIOError:
            return
        try:
            s = socket.create_connection(self.dest, timeout=10)
        except OSError:
            c.close()
            return
        c.setblocking(False)
        s.setblocking(False)
        Session(self, c, s, self.mode)

    def run(self):
        lfd = self.lsock.fileno()
        while True:
            for fd, _ in self.ep.poll():
                if fd == lfd:
                    self.accept()
                else:
                    sess = self.sessions.get(fd)
                    if sess is not None:
                        sess.event()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks._protorelay")
    p.add_argument("--listen", type=int, required=True)
    p.add_argument("--connect", type=int, required=True)
    p.add_argument("--mode", choices=("splice", "copy"), required=True)
    a = p.parse_args(argv)
    loop = Loop(("127.0.0.1", a.listen), ("127.0.0.1", a.connect), a.mode)
    print("LISTENING %d" % loop.lsock.getsockname()[1], flush=True)
    try:
        loop.run()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
