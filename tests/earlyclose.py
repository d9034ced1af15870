"""
The pieces of the early-close tests (``tests/test_early_close.py``) and of
the stress tool's early-close scenario (``tests/stress``): an origin that
serves a few fixed paths over TCP or TLS, clients that close at a chosen
point with a FIN or a reset, and what a ``twistd`` process holds, read
from /proc.

Close points, in the order a request goes through the proxy:

- ``before-head``: connected, nothing sent;
- ``mid-head``: part of a request head;
- ``after-head``: a whole GET, no byte of its answer read (issue 13's case);
- ``mid-body``: a POST head and a tenth of its body;
- ``mid-response``: a 4 MiB response, 64 KiB of it read;
- ``after-response``: a whole response read, the keep-alive connection left idle.

A FIN is ``shutdown(SHUT_WR)`` then ``close()`` (what wrk and curl do at the
end of a run), a reset is ``SO_LINGER`` {1, 0} then ``close()``.
"""

import os
import socket
import ssl
import struct
import time

from procs import recv_all

MiB = 1 << 20
BIG = 4 * MiB
SMALL = b"hello"
POST_LENGTH = MiB

CLOSE_POINTS = ("before-head", "mid-head", "after-head", "mid-body", "mid-response", "after-response")
#: The points that mean something to a TCP relay (it knows no heads).
TCP_POINTS = ("before-head", "after-head", "mid-response", "after-response")
HOWS = ("fin", "rst")
#: The origin's own early closes: before answering, in the middle of a body.
ORIGIN_POINTS = ("origin-before-answer", "origin-mid-response")

_STATES = {
    "01": "ESTABLISHED", "02": "SYN-SENT", "03": "SYN-RECV", "04": "FIN-WAIT-1", "05": "FIN-WAIT-2",
    "06": "TIME-WAIT", "07": "CLOSE", "08": "CLOSE-WAIT", "09": "LAST-ACK", "0A": "LISTEN", "0B": "CLOSING",
}


# -- the origin ---------------------------------------------------------------


def _reset(sock):
    """Close with a reset (what a crashed peer's kernel sends)."""
    raw = sock
    try:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    raw.close()


def _readHead(sock, buf):
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return None, buf
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _answer(sock, status, body, length=None, close=False):
    fields = ["HTTP/1.1 %s" % status]
    if length is not None:
        fields.append("Content-Length: %d" % length)
    if close:
        fields.append("Connection: close")
    sock.sendall(("\r\n".join(fields) + "\r\n\r\n").encode() + body)


def origin(tls=None):
    """
    A ``procs.Backend`` handler serving keep-alive HTTP/1.1 (over TLS with
    the server context ``tls``).  Every TLS close is a TCP close without
    close_notify (no ``unwrap()``), as many origins do.

    Paths: ``/small`` (5 bytes), ``/big`` (4 MiB), ``/close`` (a
    close-delimited body), ``/cut`` (Content-Length 1 MiB, 64 KiB sent, then
    closed), ``/trickle`` (Content-Length 4 MiB, 64 KiB sent, then 4 KiB
each 20 ms), ``/stall`` (Content-Length 4 MiB, 64 KiB sent, then nothing
    until the relay closes), ``/origin-before-answer-{fin,rst}`` (closed on reading the
    head), ``/origin-mid-response-{fin,rst}`` (a 4 MiB body cut after 64
    KiB).  A request body (Content-Length) is read whole first.
    """
    big = os.urandom(64 * 1024) * (BIG // (64 * 1024))

    def handler(sock, backend):
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_side=True)
            except (OSError, ssl.SSLError):
                return
        buf = b""
        try:
            while True:
                head, buf = _readHead(sock, buf)
                if head is None:
                    return
                lines = head.split(b"\r\n")
                target = lines[0].split(b" ")[1].decode()
                fields = dict((k.strip().lower(), v.strip()) for k, v in (l.split(b":", 1) for l in lines[1:]))
                need = int(fields.get(b"content-length", 0))
                while len(buf) < need:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                buf = buf[need:]
                if target == "/small":
                    _answer(sock, "200 OK", SMALL, len(SMALL))
                elif target == "/big":
                    _answer(sock, "200 OK", big, len(big))
                elif target == "/close":
                    _answer(sock, "200 OK", big[:100000], close=True)
                    return
                elif target == "/cut":
                    _answer(sock, "200 OK", big[:65536], MiB)
                    return
                elif target == "/trickle":
                    _answer(sock, "200 OK", big[:65536], len(big))
                    for at in range(65536, len(big), 4096):  # 4 KiB each 20 ms: the rest would take 20 s
                        time.sleep(0.02)
                        sock.sendall(big[at:at + 4096])
                    return
                elif target == "/stall":
                    _answer(sock, "200 OK", big[:65536], len(big))
                    sock.settimeout(10)  # holds the rest back until the relay lets go (or 10 s)
                    sock.recv(1)
                    return
                elif target.startswith("/origin-before-answer-"):
                    if target.endswith("rst"):
                        _reset(sock)
                    return
                elif target.startswith("/origin-mid-response-"):
                    _answer(sock, "200 OK", big[:65536], len(big))
                    if target.endswith("rst"):
                        _reset(sock)
                    return
                else:
                    _answer(sock, "404 Not Found", b"", 0)
        except (OSError, ssl.SSLError):
            return

    return handler


def serverContext(key, cert):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def clientContext():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# -- the clients --------------------------------------------------------------


def _request(target, method="GET", length=None):
    head = "%s %s HTTP/1.1\r\nHost: x\r\n" % (method, target)
    if length is not None:
        head += "Content-Length: %d\r\n" % length
    return (head + "\r\n").encode()


def _responseLength(sock, first=b""):
    """Read one whole Content-Length response; return all its bytes."""
    data = first
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            return data
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(body) < length:
        more = sock.recv(65536)
        if not more:
            break
        body += more
    return head + b"\r\n\r\n" + body


def connect(where, tls=None, timeout=5.0):
    s = socket.create_connection(where, timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is not None:
        s = tls.wrap_socket(s)
    return s


def close(sock, how):
    """End the client's side with a FIN (``fin``) or a reset (``rst``)."""
    if how == "rst":
        _reset(sock)
        return
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()


def client(where, point, how, tls=None, timeout=5.0):
    """
    One client closing at ``point`` (one of L{CLOSE_POINTS} or
    L{ORIGIN_POINTS}) with ``how``.  Returns what it read (for the origin's
    early closes: everything until the proxy closed).
    """
    s = connect(where, tls, timeout)
    got = b""
    try:
        if point == "mid-head":
            s.sendall(b"GET /small HTTP/1.1\r\nHost: ")
        elif point == "after-head":
            s.sendall(_request("/small"))
        elif point == "mid-body":
            s.sendall(_request("/small", "POST", POST_LENGTH) + b"x" * (POST_LENGTH // 10))
        elif point == "mid-response":
            s.sendall(_request("/big"))
            while len(got) < 65536:
                data = s.recv(65536)
                if not data:
                    break
                got += data
        elif point == "after-response":
            s.sendall(_request("/small"))
            got = _responseLength(s)
        elif point in ORIGIN_POINTS:
            s.sendall(_request("/%s-%s" % (point, how)))
            while True:  # (not recv_all: what came before a reset counts)
                data = s.recv(65536)
                if not data:
                    break
                got += data
            how = "fin"
    except (OSError, ssl.SSLError):
        pass
    close(s, how)
    return got


# -- what a process holds -----------------------------------------------------


def _inodes(pid):
    out = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def connections(pid):
    """The process's TCP sockets other than listening ones: [(state, local, remote)]."""
    mine = _inodes(pid)
    found = []
    for name in ("tcp", "tcp6"):
        try:
            with open("/proc/%d/net/%s" % (pid, name)) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            state, inode = _STATES.get(fields[3], fields[3]), int(fields[9])
            if inode in mine and state != "LISTEN":
                found.append((state, fields[1], fields[2]))
    return found


def descriptors(pid):
    """What the process's descriptors are (sorted), pipes apart: the kernel path's pool keeps some."""
    out = []
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if not link.startswith("pipe:"):
            out.append(link if link.startswith(("socket:", "anon_inode:")) else "%s %s" % (fd, link))
    return sorted(out)


def cpuSeconds(pid):
    """User and system CPU time the process used so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idleCPU(pid, seconds):
    """The share of a core the process used over ``seconds``."""
    before = cpuSeconds(pid)
    time.sleep(seconds)
    return (cpuSeconds(pid) - before) / seconds


def settle(pid, timeout=2.0):
    """Wait until the process holds no connection; what it still holds after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = connections(pid)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.01)


def sessionsActive(metricsWhere, relay):
    """``splicing_sessions_active`` of ``relay`` from a metrics endpoint."""
    found = metric(metricsWhere, 'splicing_sessions_active{relay="%s"}' % (relay,))
    if found is None:
        raise AssertionError("no splicing_sessions_active of %s in the metrics" % (relay,))
    return found


def metric(metricsWhere, key):
    """The value of the sample ``key`` (name and labels as the exposition writes them), or None."""
    s = socket.create_connection(metricsWhere, timeout=5.0)
    try:
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        data = recv_all(s)
    finally:
        s.close()
    for line in data.decode("latin-1").splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    return None
