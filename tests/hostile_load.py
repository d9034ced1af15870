"""
Hostile and good HTTP traffic through the proxy, and an origin that records
what got through (tests/test_hostile_http.py and the stress run's row).

- L{RecordingOrigin}: a strict threaded origin recording every request it
  parses;
- L{GoodClients}: keep-alive clients in threads checking every answer by its
  SHA-256 while the corpus (tests/hostile_corpus.py) is replayed beside them;
- L{replay}: one corpus case on its own connection; L{problems}: what is
  wrong with its outcome.

The origin has its own small parser (not splicing.http's: it checks what the
proxy sends, so it must not share the proxy's mistakes) and it is as strict as the
proxy: CRLF lines only, one framing header, a plain Content-Length or
exactly ``Transfer-Encoding: chunked``.  A smuggled second request would
show there as one more complete request; bytes it cannot parse are recorded
as ``invalid``, a message cut short as ``incomplete``.

The origin's answers, keep-alive unless the request says ``Connection: close``:

- ``GET /good/blob/N``: N deterministic bytes (``procs.payload``), so a good
  client checks the body by its SHA-256;
- anything else: a JSON object naming the request (index, method, target,
  body length and SHA-256).
"""

import collections
import hashlib
import http.client
import json
import random
import re
import socket
import threading
import time

import procs

_REQUEST_LINE = re.compile(rb"([A-Z]+) (\S+) (HTTP/1\.[01])")
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})([ \t]*;[^\r\n]*)?")
MAX_HEAD = 1 << 16


class Invalid(Exception):
    """The origin could not parse what the proxy sent."""


class Incomplete(Exception):
    """The connection ended inside a message."""


class Request:
    def __init__(self, conn, method, target, version, headers, body):
        self.conn, self.method, self.target, self.version = conn, method, target, version
        self.headers, self.body = headers, body

    def header(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def __repr__(self):
        return "<Request %s %s %d body bytes>" % (self.method, self.target, len(self.body))


class _Reader:
    """Buffered reads from a socket: lines and exact counts."""

    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def _more(self):
        data = self.sock.recv(65536)
        if not data:
            raise Incomplete(self.buf)
        self.buf += data

    def until(self, marker, limit):
        while marker not in self.buf:
            if len(self.buf) > limit:
                raise Invalid("no %r within %d bytes" % (marker, limit))
            self._more()
        data, self.buf = self.buf.split(marker, 1)
        return data + marker

    def exactly(self, n):
        while len(self.buf) < n:
            self._more()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def at_eof(self):
        """True if the peer closed cleanly between messages."""
        if self.buf:
            return False
        try:
            self._more()
        except Incomplete:
            return True
        return False


def _parse_head(head):
    lines = head[:-4].split(b"\r\n")
    if any(b"\r" in line or b"\n" in line or b"\0" in line for line in lines):
        raise Invalid("bare CR, LF or NUL in head")
    m = _REQUEST_LINE.fullmatch(lines[0])
    if not m:
        raise Invalid("request line %r" % lines[0][:100])
    headers = []
    for line in lines[1:]:
        f = _FIELD.fullmatch(line)
        if not f:
            raise Invalid("field line %r" % line[:100])
        headers.append((f.group(1).decode("latin-1"), f.group(2).decode("latin-1")))
    return [g.decode("latin-1") for g in m.groups()], headers


def _body(reader, headers):
    te = [v for k, v in headers if k.lower() == "transfer-encoding"]
    cl = [v for k, v in headers if k.lower() == "content-length"]
    if te and cl:
        raise Invalid("Content-Length and Transfer-Encoding")
    if te:
        if [v.lower() for v in te] != ["chunked"]:
            raise Invalid("Transfer-Encoding %r" % te)
        body = []
        while True:
            line = reader.until(b"\r\n", 8192)[:-2]
            m = _CHUNK_SIZE.fullmatch(line)
            if not m:
                raise Invalid("chunk-size line %r" % line[:100])
            size = int(m.group(1), 16)
            if not size:
                while reader.until(b"\r\n", 8192) != b"\r\n":  # trailers
                    pass
                return b"".join(body)
            body.append(reader.exactly(size))
            if reader.exactly(2) != b"\r\n":
                raise Invalid("chunk data not followed by CRLF")
    if cl:
        if len(set(cl)) != 1 or not cl[0].isdigit():
            raise Invalid("Content-Length %r" % cl)
        return reader.exactly(int(cl[0]))
    return b""


class RecordingOrigin:
    """A threaded strict origin on 127.0.0.1 (see the module docstring)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []     # every complete Request, in arrival order
        self.invalid = []      # (connection, reason, bytes) the origin could not parse
        self.incomplete = []   # (connection, head or b"") of messages cut short
        self.connections = 0
        self.active = 0        # connections being served
        self.backend = procs.Backend(self._serve)

    @property
    def tcp(self):
        return self.backend.tcp

    def hostile(self):
        """The complete requests that were not good clients' (targets outside /good/)."""
        with self.lock:
            return [r for r in self.requests if not r.target.startswith("/good/")]

    def settle(self, timeout=5.0):
        """Wait until every connection the origin accepted has ended (its records are final)."""
        deadline = time.monotonic() + timeout
        while (self.active or self.backend.accepted > self.connections) and time.monotonic() < deadline:
            time.sleep(0.02)

    def _serve(self, sock, backend):
        with self.lock:
            self.connections += 1
            self.active += 1
            conn = self.connections
        try:
            self._messages(sock, conn)
        finally:
            with self.lock:
                self.active -= 1

    def _messages(self, sock, conn):
        reader = _Reader(sock)
        head = b""
        try:
            while not reader.at_eof():
                head = b""
                head = reader.until(b"\r\n\r\n", MAX_HEAD)
                (method, target, version), headers = _parse_head(head)
                body = _body(reader, headers)
                request = Request(conn, method, target, version, headers, body)
                with self.lock:
                    self.requests.append(request)
                    index = len(self.requests)
                close = "close" in ",".join(request.header("connection")).lower() or version == "HTTP/1.0"
                sock.sendall(self._answer(request, index, close))
                if close:
                    return
        except Invalid as e:
            with self.lock:
                self.invalid.append((conn, str(e), head + reader.buf))
        except (Incomplete, socket.timeout, ConnectionError):
            if head or reader.buf:
                with self.lock:
                    self.incomplete.append((conn, head or reader.buf))

    @staticmethod
    def _answer(request, index, close):
        if request.target.startswith("/good/blob/"):
            body = procs.payload(int(request.target.rsplit("/", 1)[1]), seed=7)
        else:
            body = json.dumps({"index": index, "method": request.method, "target": request.target,
                               "length": len(request.body), "sha": procs.sha256(request.body)}).encode()
        head = "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), "Connection: close\r\n" if close else "")
        return head.encode() + body

    def close(self):
        self.backend.close()


# -- good clients -------------------------------------------------------------

BLOB_SIZES = (0, 1, 1000, 65536, 300000)


class GoodClients:
    """
    ``count`` keep-alive clients in threads, each looping GETs of known blobs
    and POSTs of random bodies until L{stop}; every answer is checked by
    SHA-256.  ``checked``: answers that were right (``checked_bytes``: their
    bodies and uploads); ``errors``: the others.
    """

    def __init__(self, where, count=3, seed=0):
        self.where = where
        self.checked = self.checked_bytes = 0
        self.errors = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(seed + i,), daemon=True) for i in range(count)]
        for t in self._threads:
            t.start()

    def _run(self, seed):
        rng = random.Random(seed)
        conn = None
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(*self.where, timeout=procs.TIMEOUT)
            try:
                ok = self._one(conn, rng)
            except (OSError, http.client.HTTPException) as e:
                ok = "%s: %s" % (type(e).__name__, e)
                conn.close()
                conn = None
            with self._lock:
                if isinstance(ok, int) and not isinstance(ok, bool):
                    self.checked += 1
                    self.checked_bytes += ok
                else:
                    self.errors.append(ok)
        if conn is not None:
            conn.close()

    @staticmethod
    def _one(conn, rng):
        """One request: the bytes checked, or what was wrong."""
        if rng.random() < 0.5:
            n = rng.choice(BLOB_SIZES)
            conn.request("GET", "/good/blob/%d" % n)
            r = conn.getresponse()
            body = r.read()
            if r.status == 200 and procs.sha256(body) == procs.sha256(procs.payload(n, seed=7)):
                return len(body)
            return "GET %d: %s, %d bytes" % (n, r.status, len(body))
        sent = rng.randbytes(rng.choice((0, 10, 70000)))
        conn.request("POST", "/good/sum", body=sent)
        r = conn.getresponse()
        body = r.read()
        answer = json.loads(body) if r.status == 200 else {}
        if answer.get("sha") == procs.sha256(sent) and answer.get("length") == len(sent):
            return len(sent)
        return "POST %d: %s %r" % (len(sent), r.status, body[:100])

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(procs.TIMEOUT + 5)
        return self


# -- replaying a case ---------------------------------------------------------


class Outcome:
    """What the client of one case got: responses (status, headers, body), how it ended, when."""

    def __init__(self, case, responses, how, seconds, rest):
        self.case, self.responses, self.how, self.seconds, self.rest = case, responses, how, seconds, rest

    @property
    def statuses(self):
        return tuple(status for status, _, _ in self.responses)


def _split_responses(data):
    """The proxy's answers all carry Content-Length: (status, {name: value}, body) each, and the rest."""
    out = []
    while b"\r\n\r\n" in data:
        head, rest = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        fields = dict((k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:]))
        n = int(fields.get("content-length", 0))
        if len(rest) < n:
            break
        out.append((int(lines[0].split(" ")[1]), fields, rest[:n]))
        data = rest[n:]
    return out, data


def replay(where, case, timeout=5.0):
    """Send ``case`` on a connection of its own (half-closed unless it is refused) and read to the end."""
    t0 = time.monotonic()
    with socket.create_connection(where, timeout=timeout) as s:
        try:
            s.sendall(case.data)
            if not case.refused:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # refused and reset before all was sent: the answer may still be readable
        data, how = b"", "eof"
        while True:
            try:
                more = s.recv(65536)
            except socket.timeout:
                how = "timeout"
                break
            except ConnectionResetError:
                how = "reset"
                break
            if not more:
                break
            data += more
    responses, rest = _split_responses(data)
    return Outcome(case, responses, how, time.monotonic() - t0, rest)


def problems(outcome, close_within=3.0):
    """What is wrong with what the client got (an empty list: nothing)."""
    case, found = outcome.case, []
    if outcome.statuses != case.statuses or outcome.rest:
        found.append("statuses %r (and %d bytes more), want %r" % (outcome.statuses, len(outcome.rest), case.statuses))
    if case.refused:
        last = outcome.responses[-1][1] if outcome.responses else {}
        if last.get("connection") != "close":
            found.append("the refusal does not say Connection: close")
    if outcome.how == "timeout" or outcome.seconds > close_within:
        found.append("the connection stayed open (%s after %.1f s)" % (outcome.how, outcome.seconds))
    return found


def origin_problems(origin, cases, times=1):
    """
    Compare what the origin completed, per case, with what each case allows
    (``times`` replays of each); incomplete messages only for ``partial``
    cases, nothing invalid at all.  ``{case name or '?': [problem, ...]}``.
    """
    from hostile_corpus import case_of

    by_case = collections.defaultdict(collections.Counter)
    for r in origin.hostile():
        by_case[case_of(r.target) or "?"][(r.target, hashlib.sha256(r.body).hexdigest())] += 1
    found = collections.defaultdict(list)
    for case in cases:
        want = collections.Counter({(t, hashlib.sha256(b).hexdigest()): times for t, b in case.reaches})
        got = by_case.pop(case.name, collections.Counter())
        if got != want:
            found[case.name].append("origin completed %r, want %r" % (sorted(got.elements()), sorted(want.elements())))
    for name, got in by_case.items():
        found[name].append("unexpected requests at the origin: %r" % sorted(got.elements()))
    for r in origin.hostile():
        variant = framing_variant(r)
        if variant:
            found[case_of(r.target) or "?"].append(variant)
    partial = {c.name for c in cases if c.partial}
    for conn, data in origin.incomplete:
        name = _case_in(data)
        if name not in partial:
            found[name or "?"].append("the origin saw a message cut short: %r" % data[:120])
    for conn, reason, data in origin.invalid:
        found[_case_in(data) or "?"].append("the origin could not parse %r: %s" % (data[:120], reason))
    return dict(found)


def framing_variant(request):
    """
    Framing fields not in their one canonical form (C{Content-Length: N},
    C{Transfer-Encoding: chunked}): the proxy re-serializes heads so that no
    variant a backend might read differently reaches it.
    """
    te, cl = request.header("transfer-encoding"), request.header("content-length")
    if te and te != ["chunked"]:
        return "the origin saw Transfer-Encoding %r" % te
    if cl and (len(cl) > 1 or cl[0] != str(int(cl[0]))):
        return "the origin saw Content-Length %r" % cl
    return None


def _case_in(data):
    from hostile_corpus import case_of

    m = re.match(rb"[A-Z]+ (\S+) ", data)
    return m and case_of(m.group(1).decode("latin-1"))
