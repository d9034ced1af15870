"""
Strict HTTP/1.x heads (RFC 9112/9110), sans-IO.

The proxy parses heads in user land and lets the kernel move bodies, so the
framing decided here (L{RequestHead.bodyKind}, C{contentLength}) is the
length handed to C{splice(max=N)}: any ambiguity a backend could read
differently is a request smuggling hole.  Hence fail closed, like relayd:
one Content-Length or one C{Transfer-Encoding: chunked}, never both, no
obs-fold, no bare LF, no NUL, tokens where tokens belong.  A head is
forwarded as it came only when it is already in the one form a head is
written in (C{Name: value}, single spaces, nothing to normalize) and nothing
edited it; any other head is re-serialized in that form, so whitespace
variants never reach a backend.
"""

import re

from splicing.http.errors import HTTPError, errorResponse  # noqa: F401 (part of this API)
from splicing.http.headreader import HeadReader  # noqa: F401 (part of this API)

MAX_LENGTH = 2**63 - 1
_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_TOKEN = re.compile(rb"[%s]+" % _TCHAR)
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")  # field-vchar, SP, HTAB
_OWS = b" \t"
_DIGITS = re.compile(rb"[0-9]+")
_REQUEST_LINE = re.compile(rb"([%s]+) ([\x21-\x7e]+) (HTTP/[0-9]\.[0-9])" % _TCHAR)
_STATUS_LINE = re.compile(rb"(HTTP/[0-9]\.[0-9]) ([1-5][0-9][0-9])(?: ([\t\x20-\x7e\x80-\xff]*))?")
_VERSIONS = ("HTTP/1.0", "HTTP/1.1")
# A head already in the form L{_Head.serialize} writes: one space after each
# colon, no whitespace around values, no NUL/CR/LF but the line ends, HTTP/1.0
# or 1.1, no fragment.  Most heads are; the proxy takes their fields with one C{findall}
# and forwards their bytes.  Whatever this refuses, the line-by-line parse
# decides (refusing it, or normalizing it), so it accepts nothing more.
_VCHAR = rb"\x21-\x7e\x80-\xff"
_CANONICAL_FIELDS = rb"((?:[%s]+: (?:[%s](?:[\t\x20%s]*[%s])?)?\r\n)*)\r\n" % (_TCHAR, _VCHAR, _VCHAR, _VCHAR)
_CANONICAL_REQUEST = re.compile(rb"([%s]+) ([\x21\x22\x24-\x7e]+) (HTTP/1\.[01])\r\n" % _TCHAR + _CANONICAL_FIELDS)
_CANONICAL_RESPONSE = re.compile(rb"(HTTP/1\.[01]) ([1-5][0-9][0-9]) ([\t\x20-\x7e\x80-\xff]*)\r\n"
                                 + _CANONICAL_FIELDS)
_CANONICAL_FIELD = re.compile(rb"([^:]+): ([^\r]*)\r\n")
# host [":" port]: a DNS-like name, IPv4 or [IPv6]; no userinfo, no oddities
# that a backend might split differently from a host rule.
_AUTHORITY = re.compile(r"([A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?")
_ABSOLUTE = re.compile(r"(https?)://([^/?]*)(/[^?]*)?(\?.*)?", re.I)
_QUERY = re.compile(r"[\x21\x22\x24-\x7e]*")  # visible ASCII but "#"
_PATH = re.compile(r"/[\x21\x22\x24-\x3e\x40-\x7e]*")  # and not "?"
_FRAMING = (b"content-length", b"transfer-encoding")
# The fields that decide framing, persistence and routing: L{_Head.frame}
# collects them in one pass over the head.
_DECISIVE = frozenset(_FRAMING + (b"connection", b"upgrade", b"host"))
# Methods whose body relayd strips: an origin may ignore their
# Content-Length and read the body as a second, unfiltered request ("CL.0").
_NO_BODY = ("GET", "HEAD", "COPY", "MOVE")


def _fail(status, reason):
    raise HTTPError(status, reason)


def _splitHead(data, status):
    """The lines of a complete head, refusing what C{HeadReader} would."""
    if not data.endswith(b"\r\n\r\n"):
        _fail(status, "head does not end with an empty line")
    if b"\0" in data:
        _fail(status, "NUL byte in head")
    lines = data[:-4].split(b"\r\n")
    crlf = len(lines) + 1  # between the lines, and the two at the end
    if data.count(b"\r") != crlf or data.count(b"\n") != crlf:
        _fail(status, "bare CR or LF in head")
    return lines


def parseField(line, status=400):
    """
    One field line (without CRLF) as C{[name, value]}, value without OWS.
    Shared with the chunked trailer parser so both validate alike.
    """
    if line[:1] in (b" ", b"\t"):
        _fail(status, "obsolete line folding")
    name, colon, value = line.partition(b":")
    if not colon:
        _fail(status, "field line without a colon")
    if name[-1:] in (b" ", b"\t"):
        _fail(status, "whitespace before the colon")
    if not _TOKEN.fullmatch(name):
        _fail(status, "field name is not a token")
    value = value.strip(_OWS)
    if not _VALUE.fullmatch(value):
        _fail(status, "invalid character in field value")
    return [name, value]


def _authority(text):
    """(host lowercased, port or None) of C{host[:port]}, or None if invalid."""
    m = _AUTHORITY.fullmatch(text)
    port = m and m.group(2) and int(m.group(2))
    if not m or port == 0 or (port and port > 65535):
        return None
    return m.group(1).lower(), port


def _sameAuthority(a, b, defaultPort):
    (hostA, portA), (hostB, portB) = a, b
    return hostA == hostB and (portA or defaultPort) == (portB or defaultPort)


def _bytes(text):
    """Field names and values as given by rules: ASCII str or bytes."""
    if isinstance(text, (bytes, bytearray)):
        return bytes(text)
    if not isinstance(text, str):
        raise TypeError("field names and values are str or bytes, not %r" % (text,))
    if not text.isascii():
        raise ValueError("non-ASCII text %r (pass bytes for obs-text)" % (text,))
    return text.encode("ascii")


def _replaced(headers, field):
    """C{headers} with every field of that name replaced by C{field}, at the first one's place."""
    key = field[0].lower()
    kept = [p for p in headers if p[0].lower() != key]
    kept.insert(next((i for i, p in enumerate(headers) if p[0].lower() == key), len(kept)), field)
    return kept


class _Head:
    """Fields and the editing shared by request and response heads."""

    _errorStatus = 400
    #: the bytes the head came as, and its start line then (see L{serialize})
    _raw = _rawStart = None

    def getHeader(self, name):
        """All values of C{name} (case-insensitive), in order."""
        key = _bytes(name).lower()
        return [v for n, v in self.headers if n.lower() == key]

    def setHeader(self, name, value):
        """
        Replace every C{name} field by one, at the first one's place (or at
        the end).  C{ValueError} for invalid fields, for Content-Length and
        Transfer-Encoding (the body length was decided at parse time and may
        already be in the kernel's hands), and for edits that make the head
        invalid (e.g. a Host differing from an absolute-form target).
        """
        name, value = self._checkEdit(name, value)
        self._edit(lambda headers: _replaced(headers, [name, value]))

    def appendHeader(self, name, value):
        """Add a C{name} field after all others (same refusals as setHeader)."""
        name, value = self._checkEdit(name, value)
        self._edit(lambda headers: headers + [[name, value]])

    def removeHeader(self, name):
        """Drop every C{name} field (same refusals as setHeader)."""
        key = self._checkEdit(name, b"")[0].lower()
        self._edit(lambda headers: [p for p in headers if p[0].lower() != key])

    def _checkEdit(self, name, value):
        name, value = _bytes(name), _bytes(value).strip(_OWS)
        if not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
            raise ValueError("invalid field %r: %r" % (name, value))
        if name.lower() in _FRAMING:
            raise ValueError("%s cannot be changed: the framing is fixed" % name.decode())
        return name, value

    def _edit(self, change):
        """Apply C{change} to the field list; roll back if the head breaks."""
        saved = dict(self.__dict__)
        self.headers = change(list(self.headers))
        self._raw = None
        try:
            self._frame()
        except HTTPError as e:
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise ValueError(e.reason) from None

    def _decisive(self):
        """
        The values of the fields in L{_DECISIVE}, by lowercase name, in one
        pass (a head is framed on every request: a lookup per field each
        scanning every line cost more than the rest of the parse).
        """
        found = {}
        for name, value in self.headers:
            key = name.lower()
            if key in _DECISIVE:
                values = found.get(key)
                if values is None:
                    found[key] = [value]
                else:
                    values.append(value)
        self._fields = found
        return found

    def _connectionTokens(self):
        tokens = set()
        for value in self._fields.get(b"connection", ()):
            for item in value.split(b","):
                item = item.strip(_OWS)
                if item and not _TOKEN.fullmatch(item):
                    _fail(self._errorStatus, "Connection option is not a token")
                tokens.add(item.lower())
        return tokens

    def _persistent(self, tokens):
        """RFC 9112 9.3: 1.1 persists unless closed, 1.0 only if asked to."""
        if b"close" in tokens:
            return False
        return self.version == "HTTP/1.1" or b"keep-alive" in tokens

    def _framing(self):
        """
        (Content-Length or None, chunked?) with RFC 9112 6.3's ambiguities
        refused; identical duplicate lengths collapse to one field.
        """
        status = self._errorStatus
        te, cl = self._fields.get(b"transfer-encoding"), self._fields.get(b"content-length")
        if te and cl:
            _fail(status, "Content-Length together with Transfer-Encoding")
        if te:
            if self.version == "HTTP/1.0":
                _fail(status, "Transfer-Encoding in an HTTP/1.0 message")
            if len(te) > 1:
                _fail(status, "duplicate Transfer-Encoding")
            if te[0].lower() != b"chunked":
                _fail(status, "Transfer-Encoding other than chunked")
            if te[0] != b"chunked":  # "Chunked": a backend comparing case-sensitively would not frame it
                self.headers = _replaced(self.headers, [b"Transfer-Encoding", b"chunked"])
                self._raw = None
            return None, True
        if not cl:
            return None, False
        if len(cl) == 1:
            value = cl[0]
            if value.isdigit() and value[:1] != b"0" and len(value) <= 18:  # one plain length: as is
                return int(value), False
        lengths = set()
        for value in cl:
            for item in value.split(b","):
                item = item.strip(_OWS)
                if not _DIGITS.fullmatch(item):
                    _fail(status, "Content-Length is not a decimal number")
                item = item.lstrip(b"0") or b"0"
                if len(item) > 19 or int(item) > MAX_LENGTH:
                    _fail(status, "Content-Length too large")
                lengths.add(int(item))
        if len(lengths) > 1:
            _fail(status, "differing Content-Length values")
        length = lengths.pop()
        if cl != [b"%d" % length]:
            self.headers = _replaced(self.headers, [b"Content-Length", b"%d" % length])
            self._raw = None
        return length, False

    def frame(self):
        """
        Validate the head and recompute the framing attributes: call it
        after changing C{headers} or the start line directly (the methods do).
        """
        self._raw = None
        self._frame()

    def forgetRaw(self):
        """
        Serialize this head from its fields from now on, not forward the
        bytes it came as: for code that may have changed C{headers} in place
        without calling L{frame}.
        """
        self._raw = None

    def serialize(self):
        """
        The head as bytes (start line, fields, empty line), after any
        changes.  A head that came in this very form (L{parseRequestHead}
        says so) and was not changed since is its own bytes: nothing to
        join.  A change through the methods, L{frame}, the C{path} and
        C{query} setters, or a start line attribute set directly, makes it
        serialized.
        """
        raw = self._raw
        if raw is not None and self._rawStart == self._start():
            return raw
        fields = b"".join(n + b": " + v + b"\r\n" for n, v in self.headers)
        return self._startLine().encode("latin-1") + b"\r\n" + fields + b"\r\n"

    def __repr__(self):
        return "<%s %s %s>" % (type(self).__name__, self._startLine(), self.bodyKind)


class RequestHead(_Head):
    """
    A parsed request head.  C{host} is the Host value, or the target's
    authority for absolute-form and CONNECT (that is where the request goes,
    so host rules must see it).  C{bodyKind} is C{"none"} (no body bytes
    follow, also for C{Content-Length: 0} and CONNECT), C{"length"}
    (C{contentLength} > 0 bytes) or C{"chunked"}; requests are never
    close-delimited.  C{headers} is a list of C{[name, value]}; edit it
    through the methods (or call L{frame} after changing it directly).
    """

    _errorStatus = 400

    def __init__(self, method, target, version, headers, absoluteHostCheck=True, raw=None):
        self.method, self.target, self.version = method, target, version
        self.headers = headers
        self._absoluteHostCheck = absoluteHostCheck
        self.isConnect = method == "CONNECT"
        if raw is not None:
            self._raw, self._rawStart = raw, self._start()
        self._frame()

    def _start(self):
        return self.method, self.target, self.version

    def _frame(self):
        """Validate Host/target and recompute the framing attributes."""
        fields = self._decisive()
        self._checkTarget()
        length, chunked = self._framing()
        if (self.isConnect or self.method == "TRACE") and (chunked or length is not None):
            _fail(400, "%s with a body" % self.method)
        if self.method in _NO_BODY and (chunked or length):
            _fail(400, "%s with a body is not forwarded" % self.method)
        self.contentLength = length
        self.bodyKind = "chunked" if chunked else ("length" if length else "none")
        tokens = self._connectionTokens()
        self.keepAlive = self._persistent(tokens)
        upgrade = fields.get(b"upgrade")
        self.upgrade = None
        if upgrade and b"upgrade" in tokens and self.version == "HTTP/1.1":
            self.upgrade = upgrade[0].split(b",")[0].strip(_OWS).lower().decode("latin-1")

    def _checkTarget(self):
        hosts = self._fields.get(b"host", ())
        if len(hosts) > 1:
            _fail(400, "duplicate Host")
        if not hosts and self.version == "HTTP/1.1":
            _fail(400, "missing Host")
        hostKey = None
        if hosts:
            host = hosts[0].decode("latin-1")
            hostKey = _authority(host)
            if hostKey is None:
                _fail(400, "invalid Host")
            self.host = host
        else:
            self.host = None
        target = self.target
        if self.isConnect:
            targetKey = _authority(target)
            if targetKey is None or targetKey[1] is None:
                _fail(400, "CONNECT target is not host:port")
            default = targetKey[1]
        elif target.startswith("/"):
            return
        elif target == "*" and self.method == "OPTIONS":
            return
        else:
            m = _ABSOLUTE.fullmatch(target)
            targetKey = m and _authority(m.group(2))
            if targetKey is None:
                _fail(400, "invalid request target")
            default = 443 if m.group(1).lower() == "https" else 80
            target = m.group(2)
        if hostKey and self._absoluteHostCheck and not _sameAuthority(hostKey, targetKey, default):
            _fail(400, "Host differs from the request target")
        self.host = target

    def _parts(self):
        """(scheme://authority, path, query); no path for authority or asterisk form."""
        m = _ABSOLUTE.fullmatch(self.target)
        prefix = self.target[:m.end(2)] if m else ""
        rest = self.target[len(prefix):]
        if not m and not rest.startswith("/"):
            return prefix, "", None
        path, mark, query = rest.partition("?")
        return prefix, path or "/", (query if mark else None)

    @property
    def path(self):
        """The raw (not decoded, not normalized) path of the target."""
        return self._parts()[1]

    @path.setter
    def path(self, value):
        prefix, path, query = self._parts()
        if not path or not _PATH.fullmatch(value):
            raise ValueError("cannot set path %r on %s" % (value, self.target))
        self.target = prefix + value + ("" if query is None else "?" + query)
        self._raw = None

    @property
    def query(self):
        """The raw query without C{?}, or None when there is none."""
        return self._parts()[2]

    @query.setter
    def query(self, value):
        prefix, path, _ = self._parts()
        if not path or (value is not None and not _QUERY.fullmatch(value)):
            raise ValueError("cannot set query %r on %s" % (value, self.target))
        self.target = prefix + path + ("" if value is None else "?" + value)
        self._raw = None

    def _startLine(self):
        return "%s %s %s" % (self.method, self.target, self.version)

    def dropUpgrade(self, protocol):
        """
        Withdraw an offer to upgrade to C{protocol} (bytes, e.g. C{b"h2c"}):
        remove it from Upgrade, and once none is left Upgrade itself, its
        C{upgrade} token in Connection and, for h2c, C{HTTP2-Settings}
        (RFC 9110 7.6.1: what Connection names goes with it).  The request
        goes on as plain HTTP/1.1, as nginx and HAProxy send it.  Whether
        anything changed.
        """
        if b"upgrade" not in self._fields:  # as framed last (every change frames)
            return False
        offers = [o.strip(_OWS) for v in self._fields[b"upgrade"] for o in v.split(b",")]
        kept = [o for o in offers if o and o.split(b"/")[0].lower() != protocol.lower()]
        if len(kept) == len([o for o in offers if o]):
            return False
        gone = {b"upgrade", b"http2-settings"} if not kept else set()
        gone |= {b"http2-settings"} if protocol.lower() == b"h2c" else set()

        def change(headers):
            out = []
            for name, value in headers:
                key = name.lower()
                if key == b"upgrade":
                    if kept and not any(n.lower() == b"upgrade" for n, _ in out):
                        out.append([name, b", ".join(kept)])
                elif key == b"connection":
                    tokens = [t.strip(_OWS) for t in value.split(b",")]
                    tokens = [t for t in tokens if t and t.lower() not in gone]
                    if tokens:
                        out.append([name, b", ".join(tokens)])
                elif key not in gone:
                    out.append([name, value])
            return out

        self._edit(change)
        return True


class ResponseHead(_Head):
    """
    A parsed response head.  C{bodyKind} follows RFC 9112 6.3: C{"none"}
    for HEAD, 1xx, 204, 304 and C{Content-Length: 0}; C{"tunnel"} for 101
    and 2xx to CONNECT (both sides become a raw stream); C{"chunked"};
    C{"length"}; else C{"close"} (body until EOF, never keep-alive).
    """

    _errorStatus = 502

    def __init__(self, version, status, reason, headers, requestMethod, raw=None):
        self.version, self.status, self.reason = version, status, reason
        self.headers = headers
        self.requestMethod = requestMethod
        if raw is not None:
            self._raw, self._rawStart = raw, self._start()
        self._frame()

    def _start(self):
        return self.version, self.status, self.reason

    def _frame(self):
        """Validate and recompute the framing attributes."""
        self._decisive()
        length, chunked = self._framing()
        status = self.status
        if (status < 200 or status == 204) and (chunked or length):
            _fail(502, "%d response with a body" % status)
        if status == 101 or (self.requestMethod == "CONNECT" and 200 <= status < 300):
            kind = "tunnel"
        elif self.requestMethod == "HEAD" or status < 200 or status in (204, 304):
            kind = "none"
        elif chunked:
            kind = "chunked"
        elif length is not None:
            kind = "length" if length else "none"
        else:
            kind = "close"
        self.bodyKind, self.contentLength = kind, length
        self.keepAlive = self._persistent(self._connectionTokens()) and kind not in ("close", "tunnel")

    def _startLine(self):
        return "%s %d %s" % (self.version, self.status, self.reason)


def _canonicalRequest(data):
    """C{(method, target, version, headers, data)} of a head in the one form, or None."""
    m = _CANONICAL_REQUEST.fullmatch(data)
    if m is None:
        return None
    method, target, version, fields = m.groups()
    headers = [[n, v] for n, v in _CANONICAL_FIELD.findall(fields)]
    return method.decode("ascii"), target.decode("ascii"), version.decode("ascii"), headers, bytes(data)


def _requestLines(data):
    """C{(method, target, version, headers, None)} of any head, each line checked on its own."""
    lines = _splitHead(data, 400)
    m = _REQUEST_LINE.fullmatch(lines[0])
    if not m:
        _fail(400, "malformed request line")
    method, target, version = (g.decode("ascii") for g in m.groups())
    if version not in _VERSIONS:
        _fail(505, "unsupported HTTP version %s" % version)
    if "#" in target:
        _fail(400, "fragment in request target")
    return method, target, version, [parseField(line, 400) for line in lines[1:]], None


def parseRequestHead(data, *, absoluteHostCheck=True):
    """
    Parse a complete request head (as returned by L{HeadReader.feed}).
    With C{absoluteHostCheck} false, an absolute-form or CONNECT target may
    name another host than the Host field (the target wins, RFC 9112 3.2.2).
    """
    method, target, version, headers, raw = _canonicalRequest(data) or _requestLines(data)
    return RequestHead(method, target, version, headers, absoluteHostCheck, raw)


def _canonicalResponse(data):
    """C{(version, status, reason, headers, data)} of a head in the one form, or None."""
    m = _CANONICAL_RESPONSE.fullmatch(data)
    if m is None:
        return None
    version, status, reason, fields = m.groups()
    headers = [[n, v] for n, v in _CANONICAL_FIELD.findall(fields)]
    return version.decode("ascii"), int(status), reason.decode("latin-1"), headers, bytes(data)


def _responseLines(data):
    """C{(version, status, reason, headers, None)} of any head, each line checked on its own."""
    lines = _splitHead(data, 502)
    m = _STATUS_LINE.fullmatch(lines[0])
    if not m or m.group(1).decode() not in _VERSIONS:
        _fail(502, "malformed status line")
    headers = [parseField(line, 502) for line in lines[1:]]
    return m.group(1).decode(), int(m.group(2)), (m.group(3) or b"").decode("latin-1"), headers, None


def parseResponseHead(data, requestMethod):
    """Parse a complete response head to a request made with C{requestMethod}."""
    version, status, reason, headers, raw = _canonicalResponse(data) or _responseLines(data)
    return ResponseHead(version, status, reason, headers, requestMethod, raw)
