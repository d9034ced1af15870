"""
Batches of datagrams: C{recvmmsg(2)} / C{sendmmsg(2)} through ctypes, and
UDP segmentation offload (GSO) on the send side.

A UDP relay in Python is bound by system calls, not by bytes: one
C{recvfrom} and one C{send} per datagram cost more than everything else it
does.  A L{MessageVector} moves a whole batch per call: it receives into
caller-owned buffers (pooled mbuf clusters, one per datagram, since a
datagram's size is unknown before it is read) and sends runs of equal-sized
datagrams as one GSO message (C{UDP_SEGMENT}), which the kernel cuts back
into the very same datagrams.  Boundaries never change; no payload byte is
copied in Python.

Header arrays live in C{bytearray}s, read and written through integer
memoryviews in strided slices (one Python operation per batch, not one
ctypes attribute access per field).

L{available} is false where libc lacks the calls (or C{SPLICING_NO_MMSG}
is set); L{vector} then returns a L{PyMessageVector}, same interface, one
C{recvmsg_into}/C{sendmsg} per datagram or group.
"""

import array
import ctypes
import errno
import os
import socket
import struct
import sys

# Plain ints: socket's constants are enum members, and enum arithmetic per
# call costs more than the rest of a batch's bookkeeping.
_MSG_DONTWAIT = int(getattr(socket, "MSG_DONTWAIT", 0x40))
_MSG_NOSIGNAL = int(getattr(socket, "MSG_NOSIGNAL", 0))
_SEND_FLAGS = _MSG_DONTWAIT | _MSG_NOSIGNAL
MSG_TRUNC = int(getattr(socket, "MSG_TRUNC", 0x20))
NAMELEN = 128  # sizeof(struct sockaddr_storage)

SOL_UDP = 17
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)
#: GSO limits (Linux): segments per message, and bytes per message (a
#: conservative bound below 64 KiB minus IP and UDP headers).
GSO_SEGMENTS = 64
GSO_BYTES = 65000
#: Errors that mean "no GSO for this socket or size", not "this datagram failed".
GSO_ERRORS = frozenset((errno.EINVAL, errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EMSGSIZE))


class _msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _msghdr), ("msg_len", ctypes.c_uint)]


_SIZE = ctypes.sizeof(_mmsghdr)
_W = _SIZE // 4  # 32-bit words per header
_Q = _SIZE // 8  # 64-bit words per header
_NAMELEN = _msghdr.msg_namelen.offset // 4
_FLAGS = _msghdr.msg_flags.offset // 4
_LEN = _mmsghdr.msg_len.offset // 4
_IOV = _msghdr.msg_iov.offset // 8
_IOVLEN = _msghdr.msg_iovlen.offset // 8
_CONTROL = _msghdr.msg_control.offset // 8
_CONTROLLEN = _msghdr.msg_controllen.offset // 8
_CMSG = struct.Struct("=QiiH6x")  # cmsghdr {len, level, type} + uint16 gso_size, padded
_CMSG_LEN = 18  # CMSG_LEN(sizeof(uint16_t))


def _load():
    if os.environ.get("SPLICING_NO_MMSG") or not sys.platform.startswith("linux"):
        return None, None
    if _SIZE % 8 or ctypes.sizeof(ctypes.c_void_p) != 8:
        return None, None  # the integer views below assume LP64
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        recv, send = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None, None
    recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    send.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    recv.restype = send.restype = ctypes.c_int
    return recv, send


_recvmmsg, _sendmmsg = _load()

#: Whether batched system calls are used.
available = _recvmmsg is not None
#: Whether to try GSO at all (a socket that refuses it is remembered by its user).
gsoWanted = sys.platform.startswith("linux") and not os.environ.get("SPLICING_NO_GSO")


def address(buf):
    """The address of a writable buffer's first byte (valid while it lives)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def _raise(what):
    code = ctypes.get_errno()
    raise OSError(code, "%s: %s" % (what, os.strerror(code)))


def groups(lengths, gso):
    """
    Cut a batch into send groups C{(first, count, size)}: with C{gso}, runs
    of equal non-zero sizes (the last one of a run may be shorter, as GSO
    allows), within the GSO limits; else one datagram per group.
    """
    out = []
    n = len(lengths)
    if not gso:
        return [(i, 1, size) for i, size in enumerate(lengths)]
    size = lengths[0] if n else 0
    if size and n <= GSO_SEGMENTS and size * n <= GSO_BYTES and lengths.count(size) == n:
        return [(0, n, size)]  # the common batch: one size, one message
    i = 0
    while i < n:
        size = lengths[i]
        j = i + 1
        if size:
            stop = min(n, i + min(GSO_SEGMENTS, GSO_BYTES // size))
            while j < stop and lengths[j] == size:
                j += 1
            if j < stop and 0 < lengths[j] < size:
                j += 1
        out.append((i, j - i, size))
        i = j
    return out


class MessageVector:
    """
    C{n} slots, each one datagram buffer (iovec) and one address buffer,
    plus C{n} send headers that each cover a run of slots (a GSO group).
    """

    def __init__(self, n):
        self.n = n
        self._in = bytearray(_SIZE * n)  # receive headers, slot i -> iovec i
        self._out = bytearray(_SIZE * n)  # send headers, one per group
        self._iovs = bytearray(16 * n)
        self._names = bytearray(NAMELEN * n)
        self._cmsgs = bytearray(_CMSG.size * n)
        self._inAt, self._outAt = address(self._in), address(self._out)
        self._iovAt, self._cmsgAt = address(self._iovs), address(self._cmsgs)
        self._in32 = memoryview(self._in).cast("I")
        in64 = memoryview(self._in).cast("Q")
        self._out64 = memoryview(self._out).cast("Q")
        self._iov = memoryview(self._iovs).cast("Q")
        iovs = array.array("Q", range(self._iovAt, self._iovAt + 16 * n, 16))
        names = address(self._names)
        in64[0::_Q] = array.array("Q", range(names, names + NAMELEN * n, NAMELEN))
        in64[_IOV::_Q] = iovs
        in64[_IOVLEN::_Q] = array.array("Q", [1] * n)
        self._namelens = array.array("I", [NAMELEN] * n)

    def setBuffers(self, start, views):
        """Point slots C{start...} at these writable buffers, whole."""
        k = len(views)
        self._iov[2 * start : 2 * (start + k) : 2] = array.array("Q", [address(v) for v in views])
        self.setLengths(start, [len(v) for v in views])

    def setLengths(self, start, lengths):
        """Set the iovec lengths of the slots from C{start} on."""
        a = 2 * start + 1
        self._iov[a : a + 2 * len(lengths) : 2] = array.array("Q", lengths)

    def recv(self, sock, start, count, names=True):
        """
        Receive up to C{count} datagrams into slots C{start...}, without
        blocking.  Returns how many; C{BlockingIOError} if none was waiting.
        With C{names} false the senders' addresses are not asked for (a
        connected socket's datagrams all come from its peer): L{sender} is
        then undefined for these slots.
        """
        if names:
            a = start * _W + _NAMELEN
            self._in32[a : a + count * _W : _W] = self._namelens[:count]
        n = _recvmmsg(sock.fileno(), self._inAt + start * _SIZE, count, _MSG_DONTWAIT, None)
        if n < 0:
            _raise("recvmmsg")
        return n

    def lengths(self, start, count):
        """The sizes of the datagrams received in slots C{start...}."""
        a = start * _W + _LEN
        return self._in32[a : a + count * _W : _W].tolist()

    def truncated(self, start, count):
        """Whether one of those datagrams was cut (larger than its buffer)."""
        a = start * _W + _FLAGS
        trunc = MSG_TRUNC
        for f in self._in32[a : a + count * _W : _W].tolist():
            if f & trunc:
                return True
        return False

    def sender(self, i):
        """Where the datagram in slot C{i} came from, as Python's address tuple."""
        return parseSockaddr(bytes(self._names[i * NAMELEN : (i + 1) * NAMELEN]))

    def setGroups(self, groups):
        """Prepare send headers, one per C{(first, count, size)} group."""
        o, iovAt, cmsgAt = self._out64, self._iovAt, self._cmsgAt
        for j, (first, count, size) in enumerate(groups):
            b = j * _Q
            o[b + _IOV] = iovAt + 16 * first
            o[b + _IOVLEN] = count
            if count > 1:
                _CMSG.pack_into(self._cmsgs, j * _CMSG.size, _CMSG_LEN, SOL_UDP, UDP_SEGMENT, size)
                o[b + _CONTROL] = cmsgAt + j * _CMSG.size
                o[b + _CONTROLLEN] = _CMSG.size
            else:
                o[b + _CONTROL] = 0
                o[b + _CONTROLLEN] = 0

    def send(self, sock, start, count):
        """
        Send groups C{start..start+count-1} on a connected socket.  Returns
        how many went; an error (C{BlockingIOError} too) only if none did:
        the failing group is then the first one not sent.
        """
        n = _sendmmsg(sock.fileno(), self._outAt + start * _SIZE, count, _SEND_FLAGS)
        if n < 0:
            _raise("sendmmsg")
        return n


class PyMessageVector:
    """L{MessageVector} without ctypes: one system call per datagram or group."""

    def __init__(self, n):
        self.n = n
        self._views = [None] * n
        self._lens = [0] * n
        self._got = [0] * n
        self._addrs = [None] * n
        self._trunc = [False] * n
        self._groups = []

    def setBuffers(self, start, views):
        self._views[start : start + len(views)] = views
        self.setLengths(start, [len(v) for v in views])

    def setLengths(self, start, lengths):
        self._lens[start : start + len(lengths)] = lengths

    def recv(self, sock, start, count, names=True):
        for i in range(start, start + count):
            try:
                n, _, flags, addr = sock.recvmsg_into([self._views[i][: self._lens[i]]], 0, _MSG_DONTWAIT)
            except BlockingIOError:
                if i > start:
                    return i - start
                raise
            except OSError:
                if i > start:
                    return i - start  # reported by the next call, as recvmmsg does
                raise
            self._got[i], self._addrs[i], self._trunc[i] = n, addr, bool(flags & MSG_TRUNC)
        return count

    def lengths(self, start, count):
        return self._got[start : start + count]

    def truncated(self, start, count):
        return any(self._trunc[start : start + count])

    def sender(self, i):
        return self._addrs[i]

    def setGroups(self, groups):
        self._groups = list(groups)

    def send(self, sock, start, count):
        for j in range(start, start + count):
            first, k, size = self._groups[j]
            views = [self._views[i][: self._lens[i]] for i in range(first, first + k)]
            anc = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))] if k > 1 else []
            try:
                sock.sendmsg(views, anc, _SEND_FLAGS)
            except OSError:
                if j > start:
                    return j - start
                raise
        return count


def vector(n):
    """A message vector of C{n} slots: batched if the platform allows."""
    return MessageVector(n) if available else PyMessageVector(n)


def parseSockaddr(raw):
    """A C{struct sockaddr_in}/C{sockaddr_in6} as Python's address tuple."""
    if len(raw) < 2:
        return None
    family = struct.unpack_from("=H", raw)[0]
    if family == socket.AF_INET and len(raw) >= 8:
        return (socket.inet_ntop(socket.AF_INET, raw[4:8]), struct.unpack_from("!H", raw, 2)[0])
    if family == socket.AF_INET6 and len(raw) >= 28:
        port, flow = struct.unpack_from("!HI", raw, 2)
        scope = struct.unpack_from("=I", raw, 24)[0]
        return (socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, flow, scope)
    return None


__all__ = ["available", "vector", "groups", "MessageVector", "PyMessageVector", "parseSockaddr"]
