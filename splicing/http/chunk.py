"""
Chunked bodies (RFC 9112 7.1), decoded so that the data can be spliced.

The proxy forwards framing bytes itself and lets the kernel move chunk data
with C{splice(max=n)}, so the reader never needs to see the data: it says
C{("need", n)} as soon as the chunk-size line is read and continues once
the caller reports the bytes moved (L{ChunkedReader.skipped}) or feeds them.
Framing is strict (relayd refuses signs and C{0x}; we also refuse bare LF,
spaces inside the number, more than 16 hex digits and values above
2**63-1), since a chunk size read differently by the backend is a
smuggling hole.
"""

import re

from splicing.http.errors import HTTPError
from splicing.http.head import MAX_LENGTH, parseField

_HEX = re.compile(rb"[0-9A-Fa-f]+")
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*"'
# *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] )
_EXTENSIONS = re.compile(rb"(?:[ \t]*;[ \t]*%s(?:[ \t]*=[ \t]*(?:%s|%s))?)*" % (_TOKEN, _TOKEN, _QUOTED))

_SIZE, _DATA, _CRLF, _TRAILER, _DONE = range(5)


def _fail(reason, status=400):
    raise HTTPError(status, reason)


def parseSizeLine(line):
    """The chunk size of a complete chunk-size line (with its CRLF)."""
    if line[-2:-1] != b"\r":
        _fail("bare LF in chunked framing")
    m = _HEX.match(line)
    if not m:
        _fail("chunk size is not a hexadecimal number")
    if len(m.group()) > 16 or int(m.group(), 16) > MAX_LENGTH:
        _fail("chunk size too large")
    if not _EXTENSIONS.fullmatch(line, m.end(), len(line) - 2):
        _fail("invalid chunk-size line")
    return int(m.group(), 16)


class ChunkedReader:
    """
    Incremental decoder of one chunked body.  L{feed} returns events:

      - C{("frame", bytes)}: framing to forward verbatim (chunk-size line,
        CRLF after data, trailer field lines, the final CRLF);
      - C{("data", bytes)}: chunk data found in the fed bytes;
      - C{("need", n)}: the feed ended inside chunk data and C{n} more data
        bytes follow; move them out of band and call C{skipped(n)} (or a
        smaller count if fewer moved), or feed them;
      - C{("end", rest)}: the body is complete; C{rest} are the bytes fed
        after it (the next message), and C{done} is now true.
    """

    def __init__(self, maxLine=4096, maxTrailer=8192):
        self.maxLine, self.maxTrailer = maxLine, maxTrailer
        self.done = False
        self._state = _SIZE
        self._line = bytearray()  # a partial line (or partial CRLF after data)
        self._remaining = 0       # data bytes left in the current chunk
        self._trailer = 0         # trailer bytes seen so far

    @property
    def needed(self):
        """Chunk-data bytes still expected before the CRLF (0 outside data)."""
        return self._remaining

    def skipped(self, n):
        """The caller moved C{n} data bytes itself (spliced)."""
        if self._state != _DATA or not 0 <= n <= self._remaining:
            raise ValueError("skipped(%d) with %d data bytes expected" % (n, self._remaining))
        self._remaining -= n
        if not self._remaining:
            self._state = _CRLF

    def feed(self, data):
        """Consume C{data}; the list of events it produced, in order."""
        if self.done:
            raise RuntimeError("the chunked body already ended")
        events, pos, end = [], 0, len(data)
        while pos < end:
            if self._state == _DATA:
                take = min(self._remaining, end - pos)
                events.append(("data", data[pos:pos + take]))
                pos += take
                self.skipped(take)
            elif self._state == _CRLF:
                pos = self._takeCRLF(data, pos, events)
            else:
                line, pos = self._takeLine(data, pos)
                if line is None:
                    break
                if self._state == _SIZE:
                    self._sizeLine(line, events)
                elif line == b"\r\n":
                    events += [("frame", line), ("end", data[pos:])]
                    self.done, self._state = True, _DONE
                    return events
                else:
                    self._trailerLine(line, events)
        if self._state == _DATA:
            events.append(("need", self._remaining))
        return events

    def _takeCRLF(self, data, pos, events):
        missing = 2 - len(self._line)
        self._line += data[pos:pos + missing]
        if not b"\r\n".startswith(self._line):
            _fail("chunk data not followed by CRLF")
        if len(self._line) == 2:
            self._line.clear()
            events.append(("frame", b"\r\n"))
            self._state = _SIZE
        return pos + missing

    def _takeLine(self, data, pos):
        """(line with its LF, next position), or (None, end) if incomplete."""
        nl = data.find(b"\n", pos)
        stop = len(data) if nl < 0 else nl + 1
        self._line += data[pos:stop]
        if len(self._line) > self.maxLine:
            _fail("line longer than %d bytes in chunked framing" % self.maxLine)
        if self._state == _TRAILER and self._trailer + len(self._line) > self.maxTrailer:
            _fail("trailer section longer than %d bytes" % self.maxTrailer, 431)
        if nl < 0:
            return None, stop
        line = bytes(self._line)
        self._line.clear()
        return line, stop

    def _sizeLine(self, line, events):
        size = parseSizeLine(line)
        events.append(("frame", line))
        self._remaining = size
        self._state = _DATA if size else _TRAILER

    def _trailerLine(self, line, events):
        if line[-2:-1] != b"\r":
            _fail("bare LF in trailer")
        parseField(line[:-2], 400)
        self._trailer += len(line)
        events.append(("frame", line))
