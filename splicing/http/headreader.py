"""
Where a head ends in a byte stream, sans-IO: the framing of heads before
they are parsed (L{splicing.http.head}).  Oversized or malformed framing is
refused as early as possible, whatever pieces the network cut the bytes in.
"""

from splicing.http.errors import HTTPError


def _fail(status, reason):
    raise HTTPError(status, reason)


class HeadReader:
    """
    Find the end of a head in a byte stream, refusing oversized or
    malformed framing as early as possible.  Work is O(n) over all input: a
    scan offset remembers where the current unterminated line starts.
    After a head is returned the reader is ready for the next one.
    """

    def __init__(self, limit=8192, maxLines=100):
        self.limit, self.maxLines = limit, maxLines
        self.reset()

    @property
    def buffered(self):
        """Bytes of an unfinished head held so far (a slowloris sends a few)."""
        return len(self._buf)

    def reset(self):
        """Forget any partial head (for the next message on a connection)."""
        self._buf = bytearray()
        self._scan = 0   # start of the line being looked at
        self._seek = 0   # where the search for its LF resumes
        self._start = 0  # where the head starts (after one tolerated CRLF)
        self._lines = 0

    def _whole(self, data):
        """
        Whether C{data} is exactly one complete head that the line-by-line
        scan would accept: what a socket reader took after a peek usually
        is.  Checked with a few scans in C; anything else (a head in pieces,
        bytes after it, anything the scan would refuse or tolerate) takes the
        scan, which says exactly what is wrong.
        """
        n = len(data)
        if n > self.limit or data[-4:] != b"\r\n\r\n" or data[:2] == b"\r\n":
            return False
        crlf = data.count(b"\r\n")
        return (
            data.find(b"\r\n\r\n") == n - 4
            and data.count(b"\n") == crlf
            and crlf - 1 <= self.maxLines
            and b"\0" not in data
        )

    def headLength(self, data):
        """
        How many bytes of C{data} (peeked, not fed yet) the current head
        takes: through its empty line, or all of them.  A reader of a socket
        takes that many, so the body behind the head stays in the socket.
        """
        tail = bytes(self._buf[-3:])  # the empty line may have begun already
        end = (tail + data).find(b"\r\n\r\n")
        return len(data) if end < 0 else end + 4 - len(tail)

    def feed(self, data):
        """C{(head, rest)} once the empty line is seen, else C{(None, b"")}."""
        if not self._buf and self._whole(data):
            return bytes(data), b""
        buf = self._buf
        buf += data
        while True:
            bound = self._start + self.limit
            nl = buf.find(b"\n", self._seek, bound)
            if nl < 0:
                self._seek = max(self._seek, min(len(buf), bound))
                break
            begin, self._scan = self._scan, nl + 1
            self._seek = self._scan
            if nl == begin or buf[nl - 1] != 13:
                _fail(400, "bare LF in head")
            if buf.find(b"\0", begin, nl) >= 0:
                _fail(400, "NUL byte in head")
            if nl - 1 > begin:
                self._lines += 1
                if self._lines > self.maxLines:
                    _fail(431, "more than %d lines in head" % self.maxLines)
            elif self._lines:
                head, rest = bytes(buf[self._start:self._scan]), bytes(buf[self._scan:])
                self.reset()
                return head, rest
            elif self._start:
                _fail(400, "more than one empty line before the head")
            else:
                self._start = self._scan
        if len(buf) - self._start > self.limit:
            _fail(431, "head longer than %d bytes" % self.limit)
        return None, b""


__all__ = ["HeadReader"]
