"""
Load generators and reference relays for the UDP benchmark, each meant to
run as its own process so that none competes with another for one
interpreter.

    python -m benchmarks._udpload recv
        Bind 127.0.0.1 (a free port), print C{PORT <n>}, count datagrams
        with C{recvmmsg} batches.  Commands on stdin: C{reset} (zero the
        counts), C{report} (print one JSON line: datagrams, bytes, first and
        last arrival), C{quit}.

    python -m benchmarks._udpload send --port P --size S --seconds T [--rate R] [--clients N]
        Send S-byte datagrams on a connected socket for T seconds with
        C{sendmmsg} batches of 64 (all slots point at one buffer: no per
        datagram work), unpaced or paced to R datagrams/s; print one JSON
        line (sent, seconds).  With C{--clients N}, N sockets (N client
        addresses, so N relay sessions) take turns, a batch of 4 each.

    python -m benchmarks._udpload echo
        A DNS-like responder on 127.0.0.1 (a free port, printed as C{PORT
        <n>}): every datagram goes back to its sender at once.

    python -m benchmarks._udpload query --port P --count N [--fresh] [--size S]
        N queries of S bytes (default 40, a DNS query's size), one at a
        time, each waiting for its answer: from a new socket (a fresh client
        port, as a resolver sends them) with C{--fresh}, else all from one
        socket (one relay session).  Prints one JSON line: median, p90 and
        mean round trip in microseconds, answers, and lost queries (no
        answer in 1 s).

    python -m benchmarks._udpload twisted-relay --listen P --connect Q
        The reference: a plain Twisted C{DatagramProtocol} relay, the
        backend side a connected port, replies to the last client.

    python -m benchmarks._udpload splice-relay --listen P --connect Q
        L{splicing.relay.udp.UDPRelayService}.

Relays print C{READY} once listening, and answer C{counters} on stdin with
one JSON line (the splice relay's L{UDPRelayService.counters}; C{{}} for
the Twisted relay, which has no sessions).
"""

import argparse
import json
import os
import select
import socket
import sys
import time

from splicing.buffers import mmsg

BATCH = 64
BUFSIZE = 8 << 20  # the load tools' own buffers (forced when allowed)
RELAY_BUFFER = 4 << 20  # both relays', within rmem_max/wmem_max


def _bigBuffers(sock):
    for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):  # SO_*BUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, BUFSIZE)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, opt, BUFSIZE)


def _emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# -- receiver --------------------------------------------------------------


def recv(args):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    _bigBuffers(sock)
    sock.bind(("127.0.0.1", args.port))
    sock.setblocking(False)
    sys.stdout.write("PORT %d\n" % sock.getsockname()[1])
    sys.stdout.flush()
    size = 2048
    bufs = [bytearray(size) for _ in range(BATCH)]
    vec = mmsg.MessageVector(BATCH) if mmsg.available else None
    if vec is not None:
        vec.setBuffers(0, bufs)
    count = nbytes = 0
    first = last = None
    fd = sock.fileno()
    stdin = sys.stdin.fileno()
    poller = select.epoll()
    poller.register(fd, select.EPOLLIN)
    poller.register(stdin, select.EPOLLIN)
    pending = b""
    while True:
        for ready, _ in poller.poll(1.0):
            if ready == fd:
                while True:
                    try:
                        if vec is not None:
                            n = vec.recv(sock, 0, BATCH)
                            got = sum(vec.lengths(0, n))
                        else:
                            got, n = sock.recv_into(bufs[0]), 1
                    except BlockingIOError:
                        break
                    last = time.monotonic()
                    if first is None:
                        first = last
                    count += n
                    nbytes += got
            else:
                chunk = os.read(stdin, 4096)
                if not chunk:
                    return
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    cmd = line.strip()
                    if cmd == b"reset":
                        count = nbytes = 0
                        first = last = None
                        _emit({"reset": True})
                    elif cmd == b"report":
                        _emit({"datagrams": count, "bytes": nbytes, "first": first, "last": last})
                    elif cmd == b"quit":
                        return


# -- sender ----------------------------------------------------------------


def send(args):
    socks = []
    for _ in range(args.clients):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if args.clients == 1:
            _bigBuffers(sock)
        sock.connect(("127.0.0.1", args.port))
        socks.append(sock)
    if args.clients > 1:
        return _sendFromMany(args, socks)
    payload = bytearray(b"x" * args.size)
    vec = None
    if mmsg.available:
        vec = mmsg.MessageVector(BATCH)
        vec.setBuffers(0, [payload] * BATCH)  # every slot the same buffer
        vec.setGroups([(i, 1, args.size) for i in range(BATCH)])  # one datagram per message
    fd = sock.fileno()
    sent = 0
    start = time.monotonic()
    end = start + args.seconds
    interval = BATCH / args.rate if args.rate else 0.0
    due = start
    now = start
    while now < end:
        try:
            if vec is not None:
                sent += vec.send(sock, 0, BATCH)
            else:
                for _ in range(BATCH):
                    sock.send(payload)
                    sent += 1
        except BlockingIOError:
            select.select([], [fd], [], 0.01)
        except ConnectionRefusedError:
            pass  # an ICMP error from an earlier datagram: keep sending
        now = time.monotonic()
        if interval:
            due += interval
            if due > now:
                time.sleep(due - now)
                now = time.monotonic()
    _emit({"sent": sent, "seconds": time.monotonic() - start})


def _sendFromMany(args, socks):
    """Unpaced, round-robin over the client sockets, PER_CLIENT datagrams each."""
    per = 4
    payload = bytearray(b"x" * args.size)
    vec = mmsg.vector(per)
    vec.setBuffers(0, [payload] * per)
    vec.setGroups([(i, 1, args.size) for i in range(per)])
    sent = 0
    start = time.monotonic()
    end = start + args.seconds
    while time.monotonic() < end:
        for sock in socks:
            try:
                sent += vec.send(sock, 0, per)
            except (BlockingIOError, ConnectionRefusedError):
                pass
    _emit({"sent": sent, "seconds": time.monotonic() - start})


# -- DNS-like queries -------------------------------------------------------


def echo(args):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", args.port))
    sys.stdout.write("PORT %d\n" % sock.getsockname()[1])
    sys.stdout.flush()
    while True:
        data, addr = sock.recvfrom(65536)
        sock.sendto(data, addr)


def query(args):
    """One query at a time; the round trip of each, from send to answer."""
    payload = bytes(range(256)) * (args.size // 256 + 1)
    payload = payload[:args.size]
    target = ("127.0.0.1", args.port)
    rtts, lost = [], 0
    one = None
    for i in range(args.count):
        if args.fresh or one is None:
            if one is not None:
                one.close()
            one = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            one.bind(("127.0.0.1", 0))
            one.settimeout(1.0)
        t0 = time.perf_counter()
        one.sendto(payload, target)
        try:
            data = one.recv(65536)
        except socket.timeout:
            lost += 1
            continue
        rtts.append(time.perf_counter() - t0)
        if data != payload:
            lost += 1
    one.close()
    rtts.sort()
    us = lambda x: round(x * 1e6, 1)
    _emit({"answers": len(rtts), "lost": lost, "fresh": args.fresh,
           "median": us(rtts[len(rtts) // 2]) if rtts else None,
           "p90": us(rtts[int(len(rtts) * 0.9)]) if rtts else None,
           "mean": us(sum(rtts) / len(rtts)) if rtts else None})


# -- relays ----------------------------------------------------------------


def _answerCounters(reactor, counters):
    """A thread reading stdin commands; C{counters} prints one JSON line."""
    import threading

    def read():
        for line in sys.stdin:
            if line.strip() == "counters":
                reactor.callFromThread(lambda: _emit(counters()))

    threading.Thread(target=read, daemon=True).start()


def twistedRelay(args):
    from twisted.internet import protocol, reactor

    class Backend(protocol.DatagramProtocol):
        def __init__(self, front):
            self.front = front

        def datagramReceived(self, data, addr):
            if self.front.client is not None:
                self.front.transport.write(data, self.front.client)

    class Front(protocol.DatagramProtocol):
        client = None

        def datagramReceived(self, data, addr):
            self.client = addr
            try:
                backend.transport.write(data)
            except OSError:
                pass

    front = Front()
    backend = Backend(front)
    fp = reactor.listenUDP(args.listen, front, interface="127.0.0.1", maxPacketSize=65536)
    bp = reactor.listenUDP(0, backend, interface="127.0.0.1", maxPacketSize=65536)
    bp.connect("127.0.0.1", args.connect)
    for p in (fp, bp):  # the same buffers as the splice relay gets
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            p.socket.setsockopt(socket.SOL_SOCKET, opt, RELAY_BUFFER)
    _answerCounters(reactor, dict)
    reactor.callWhenRunning(lambda: print("READY", flush=True))
    reactor.run()


def spliceRelay(args):
    from twisted.internet import reactor

    from splicing.relay.udp import UDPRelayService

    service = UDPRelayService(
        "udp:%d:interface=127.0.0.1" % args.listen, "udp:127.0.0.1:%d" % args.connect,
        reactor=reactor, socketBuffer=RELAY_BUFFER,
    )
    service.startService()
    _answerCounters(reactor, service.counters)
    reactor.callWhenRunning(lambda: print("READY", flush=True))
    reactor.run()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="benchmarks._udpload")
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--port", type=int, default=0)
    s = sub.add_parser("send")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--seconds", type=float, default=2.0)
    s.add_argument("--rate", type=float, default=0.0, help="datagrams/s (0: unpaced)")
    s.add_argument("--clients", type=int, default=1, help="client sockets (relay sessions)")
    e = sub.add_parser("echo")
    e.add_argument("--port", type=int, default=0)
    q = sub.add_parser("query")
    q.add_argument("--port", type=int, required=True)
    q.add_argument("--count", type=int, default=200)
    q.add_argument("--size", type=int, default=40)
    q.add_argument("--fresh", action="store_true", help="each query from a new socket (a new relay session)")
    for name in ("twisted-relay", "splice-relay"):
        p = sub.add_parser(name)
        p.add_argument("--listen", type=int, required=True)
        p.add_argument("--connect", type=int, required=True)
    args = parser.parse_args(argv)
    {"recv": recv, "send": send, "echo": echo, "query": query, "twisted-relay": twistedRelay,
     "splice-relay": spliceRelay}[args.cmd](args)


if __name__ == "__main__":
    main()
