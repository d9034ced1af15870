"""
OpenBSD sosplice regress data generators (regress/sys/kern/sosplice funcs.pl),
re-implemented from the description in the spec, section 1:

- ``stream(n)``: ``n - 1`` bytes of the cycle ``0-9A-Za-z\\n`` (63-byte lines)
  followed by a final ``\\n`` (empty for ``n == 0``).
- ``datagrams(lengths)``: each datagram of length ``l`` carries ``l - 1`` bytes
  of one *continuing* cycle plus a final ``\\n``; a zero length gives an empty
  datagram.

The expected MD5 values of the spec's table (section 6) are in ``MD5``.
"""

import hashlib
import string

CYCLE = (string.digits + string.ascii_uppercase + string.ascii_lowercase + "\n").encode("ascii")
assert len(CYCLE) == 63

_cache = {}


def _cycle_bytes(start, count):
    """``count`` bytes of the endless cycle, beginning at cycle offset ``start``."""
    start %= len(CYCLE)
    reps = (start + count) // len(CYCLE) + 1
    return (CYCLE * reps)[start:start + count]


def stream(n):
    """The ``write_stream`` byte string of length ``n``."""
    if n < 0:
        raise ValueError(n)
    if n == 0:
        return b""
    data = _cache.get(n)
    if data is None:
        data = _cycle_bytes(0, n - 1) + b"\n"
        if n <= 1 << 21:
            _cache[n] = data
    return data


def datagrams(lengths, start=0):
    """The ``write_datagram`` payloads for ``lengths`` (a list of bytes objects)."""
    out = []
    pos = start
    for length in lengths:
        if length < 0:
            raise ValueError(length)
        if length == 0:
            out.append(b"")
            continue
        out.append(_cycle_bytes(pos, length - 1) + b"\n")
        pos += length - 1
    return out


def infinite_block(size=63 * 1040):
    """A block of whole cycles: writing it repeatedly gives an endless cycle stream."""
    assert size % len(CYCLE) == 0
    return CYCLE * (size // len(CYCLE))


def md5(data):
    """Hex MD5 of ``data`` (bytes, bytearray or memoryview)."""
    return hashlib.md5(bytes(data)).hexdigest()


# Section 6 of the spec, keyed by a short description.
MD5 = {
    "empty": "d41d8cd98f00b204e9800998ecf8427e",
    "stream 251": "bc3a3f39af35fe5b1687903da2b00c7f",
    "first 113 of 251": "dc099ef642faa02bce71298f11e7d44d",
    "first 63": "4a3c3783fc56943715c53e435973b2ee",
    "stream 6": "857f2261690a2305dba03062e778a73b",
    "stream 9216": "6d263239be35ccf30cb04c5f58a35dbe",
    "stream 131072": "31e5ad3d0d2aeb1ad8aaa847dfa665c2",
    "first 32117 of 131072": "ee338e9693fb2a2ec101bb28935ed123",
    "stream 1048576": "6649bbec13f3d7efaedf01c0cfa54f88",
    "write 32749+65521+2039": "0efc7833e5c0652823ca63eaccb9918f",
    "first 61 of 251": "4b5efc5f86fa5fc873c82103ceece85d",
    "datagrams 1": "68b329da9893e34099c7d8ad5cb9c940",
    "datagrams 1,3": "5df2ad5a8fa778004d06dc070811754c",
    "datagrams 1,2": "52f58714e430f1fc84346961c240054b",
    "datagrams 1,2,3": "868972544a6c4312aa52568c8dfa2366",
    "datagrams 0..5": "553af7b8fc0e205ead2562ab61a2ad13",
    "datagrams 5..0": "464ddb107046ee0a42f43b202e826b8f",
    "datagrams multi": "544464f20384567028998e1a1a4c5b1e",
    "datagrams 1,10000,2": "2ec9a4b45a449095245177d2cf51dd24",
    "datagram 65507": "20f83f523b6b48b11d9f8a15e507e16a",
    "stream 1 + datagrams 2,3,4 + stream 5": "1830da3b4358ccedeb49877c2cff8c86",
}

# Expected MD5 of a whole stream of the given length (T-plain checks).
STREAM_MD5 = {
    0: MD5["empty"],
    6: MD5["stream 6"],
    251: MD5["stream 251"],
    9216: MD5["stream 9216"],
    131072: MD5["stream 131072"],
    1048576: MD5["stream 1048576"],
}
