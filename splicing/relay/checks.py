"""
Active health checks of a relay's backends, as relayd's C{check tcp},
C{check http} and C{check send ... expect} and HAProxy's C{check inter}.

Every C{interval} seconds each backend is probed through the endpoint the
relay connects with (a C{tls:} backend is checked over TLS, with the same
options); a probe that does not conclude within C{timeout} seconds fails.
A backend whose probe fails is taken out of rotation
(L{splicing.relay.balance.Target.up}) and logged once; one whose probe
passes again is put back and logged once.

The probes' logic is sans-IO (L{TCPCheck}, L{HTTPCheck}, L{ExpectCheck}:
bytes to send, bytes in, a verdict out); L{HealthChecks} is the service
that runs them.
"""

import fnmatch
import re
import shlex

from twisted.application import service
from twisted.internet import defer, error, task
from twisted.internet.interfaces import IHandshakeListener, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

DEFAULT_INTERVAL = 10.0  # relayd's
DEFAULT_TIMEOUT = 5.0
#: Most reply bytes a probe keeps (an HTTP status line, an expected banner).
REPLY_LIMIT = 16384

_SYNTAX = "tcp, 'http /PATH [code N]' or 'send STRING expect STRING'"
_ESCAPES = {"r": "\r", "n": "\n", "t": "\t", "0": "\0", "\\": "\\", "'": "'", '"': '"'}


def unescape(text):
    """C{\\r}, C{\\n}, C{\\t}, C{\\0}, C{\\\\}, C{\\xHH} in a check string; ValueError for others."""
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1:i + 2]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "x" and re.match(r"[0-9a-fA-F]{2}$", text[i + 2:i + 4]):
            out.append(chr(int(text[i + 2:i + 4], 16)))
            i += 4
        else:
            raise ValueError("unknown escape %r (use \\r, \\n, \\t, \\0, \\\\ or \\xHH)" % ("\\" + nxt,))
    return "".join(out)


class CheckSpec:
    """
    What to check, parsed: C{kind} "tcp", "http" (C{path}, C{code}: None
    for any 2xx or 3xx) or "send" (C{send} and C{expect}, bytes).
    """

    def __init__(self, kind, path=None, code=None, send=b"", expect=b""):
        self.kind, self.path, self.code, self.send, self.expect = kind, path, code, send, expect

    def _key(self):
        return (self.kind, self.path, self.code, self.send, self.expect)

    def __eq__(self, other):
        return isinstance(other, CheckSpec) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return "<CheckSpec %s>" % (" ".join(repr(v) for v in self._key() if v not in (None, b"")),)

    def probe(self, host):
        """A fresh sans-IO probe of this kind; C{host} ("HOST[:PORT]") goes in an HTTP check's Host header."""
        if self.kind == "tcp":
            return TCPCheck()
        if self.kind == "http":
            return HTTPCheck(self.path, self.code, host)
        return ExpectCheck(self.send, self.expect)


def parseCheck(text):
    """
    A L{CheckSpec} from a C{--check} value: C{tcp}, C{http /PATH [code N]}
    or C{send STRING expect STRING} (shell-like quoting; C{\\r\\n} and
    C{\\xHH} escapes).  Raises ValueError saying what would be right.
    """
    if not isinstance(text, str):
        raise ValueError("expected %s, not %r" % (_SYNTAX, text))
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split, lexer.escape = True, ""
    try:
        words = list(lexer)
    except ValueError as e:
        raise ValueError("%r: %s" % (text, e))
    if words == ["tcp"]:
        return CheckSpec("tcp")
    if words[:1] == ["http"]:
        return _parseHTTP(text, words[1:])
    if words[:1] == ["send"]:
        return _parseExpect(text, words[1:])
    raise ValueError("%r: expected %s" % (text, _SYNTAX))


def _parseHTTP(text, words):
    if not words or not re.match(r"/[!-~]*$", words[0]):
        raise ValueError("%r: an http check needs a path starting with '/' (e.g. 'http /health')" % (text,))
    code = None
    if len(words) == 3 and words[1] == "code":
        if not re.match(r"[1-5][0-9][0-9]$", words[2]):
            raise ValueError("%r: the code must be an HTTP status, 100 to 599, not %r" % (text, words[2]))
        code = int(words[2])
    elif len(words) != 1:
        raise ValueError("%r: expected 'http /PATH' or 'http /PATH code N'" % (text,))
    return CheckSpec("http", path=words[0], code=code)


def _parseExpect(text, words):
    if len(words) != 3 or words[1] != "expect":
        raise ValueError("%r: expected 'send STRING expect STRING' (quote strings with spaces)" % (text,))
    try:
        send, expect = (unescape(w).encode("latin-1") for w in (words[0], words[2]))
    except (ValueError, UnicodeEncodeError) as e:
        raise ValueError("%r: %s" % (text, e))
    if not expect:
        raise ValueError("%r: the expected string is empty" % (text,))
    return CheckSpec("send", send=send, expect=expect)


# -- sans-IO probes: request bytes, then feed() and lost() give a verdict (ok, why) or None


class TCPCheck:
    """Passes once connected (for TLS: once the handshake is done)."""

    request = b""

    def connected(self):
        return True, "connected"

    def feed(self, data):
        return None

    def lost(self, why):
        return False, why or "connection closed"

    def timedOut(self, seconds):
        return False, "no answer within %gs" % (seconds,)


class HTTPCheck:
    """A GET of C{path}: passes on status C{code}, or any 2xx or 3xx when C{code} is None."""

    _STATUS = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: [^\r\n]*)?\r?\n")

    def __init__(self, path, code, host):
        self.code = code
        self.buffer = b""
        self.request = (b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: splicing-check\r\nConnection: close\r\n\r\n"
                        % (path.encode("ascii"), _hostHeader(host)))

    def connected(self):
        return None

    def feed(self, data):
        self.buffer += data
        if b"\n" not in self.buffer[:REPLY_LIMIT]:
            if len(self.buffer) >= REPLY_LIMIT:
                return False, "no HTTP status line in the first %d bytes" % (REPLY_LIMIT,)
            return None
        match = self._STATUS.match(self.buffer)
        if match is None:
            return False, "not an HTTP response: %r" % (self.buffer.split(b"\n", 1)[0][:80],)
        status = int(match.group(1))
        if (status == self.code) if self.code is not None else 200 <= status < 400:
            return True, "status %d" % (status,)
        wanted = "%d" % self.code if self.code is not None else "2xx or 3xx"
        return False, "status %d, expected %s" % (status, wanted)

    def lost(self, why):
        return False, "closed before a status line" + (": %s" % why if why else "")

    def timedOut(self, seconds):
        if not self.buffer:
            return False, "no answer within %gs" % (seconds,)
        return False, "no status line within %gs" % (seconds,)


def _hostHeader(host):
    """C{host} for a Host header: ASCII as it is, an internationalized name in IDNA, "localhost" if none."""
    if not host:
        return b"localhost"
    try:
        return host.encode("ascii")
    except UnicodeEncodeError:
        name, colon, port = host.rpartition(":") if host.rpartition(":")[2].isdigit() else (host, "", "")
        return name.encode("idna") + colon.encode() + port.encode()


class ExpectCheck:
    """
    Sends C{send}, then passes once the reply matches C{expect}: a glob
    (C{*}, C{?}, C{[...]}, relayd's rule) matched against the whole reply so
    far, or, without glob characters, a string the reply contains.
    """

    def __init__(self, send, expect):
        self.request = send
        self.expect = expect
        self.glob = any(c in expect for c in b"*?[")
        self.buffer = b""

    def connected(self):
        return None

    def matches(self):
        if self.glob:
            return fnmatch.fnmatchcase(self.buffer, self.expect)
        return self.expect in self.buffer

    def feed(self, data):
        self.buffer = (self.buffer + data)[:REPLY_LIMIT]
        if self.matches():
            return True, "got %r" % (self.expect.decode("latin-1"),)
        if len(self.buffer) >= REPLY_LIMIT:
            return False, self._mismatch()
        return None

    def _mismatch(self):
        return "expected %r, got %r" % (self.expect.decode("latin-1"), self.buffer[:80].decode("latin-1"))

    def lost(self, why):
        return False, self._mismatch() + (" (%s)" % why if why else "")

    def timedOut(self, seconds):
        if not self.buffer:
            return False, "no answer within %gs" % (seconds,)
        return False, "%s within %gs" % (self._mismatch(), seconds)


# -- the probe over a connection


@implementer(IHandshakeListener)
class ProbeProtocol(Protocol):
    """Runs one sans-IO probe over a connection; C{verdict} fires once with (ok, why)."""

    def __init__(self, check):
        self.check = check
        self.verdict = defer.Deferred(lambda d: self.transport and self.transport.abortConnection())

    def connectionMade(self):
        if self.check.request:
            self.transport.write(self.check.request)
        if not ISSLTransport.providedBy(self.transport):
            self._conclude(self.check.connected())

    def handshakeCompleted(self):
        self._conclude(self.check.connected())

    def dataReceived(self, data):
        self._conclude(self.check.feed(data))

    def connectionLost(self, reason):
        self._conclude(self.check.lost(None if reason.check(error.ConnectionDone) else reason.getErrorMessage()))

    def _conclude(self, verdict):
        if verdict is None or self.verdict.called:
            return
        self.verdict.callback(verdict)
        self.transport.loseConnection()


def probe(check, endpoint, reactor, timeout):
    """A Deferred (ok, why): C{check} (a sans-IO probe) over a connection from C{endpoint}."""
    factory = Factory.forProtocol(lambda: ProbeProtocol(check))
    factory.noisy = False
    d = endpoint.connect(factory)
    d.addCallback(lambda protocol: protocol.verdict)
    if timeout:
        d.addTimeout(timeout, reactor)

    def failed(f):
        if f.check(defer.TimeoutError, defer.CancelledError, error.ConnectingCancelledError):
            return check.timedOut(timeout)
        return False, f.getErrorMessage()

    return d.addErrback(failed)


class HealthChecks(service.Service):
    """
    Checks C{targets} (L{splicing.relay.balance.Target}s) every
    C{interval} seconds, the first time as it starts; stopping cancels the
    probes in flight and leaves no timer behind.

    @param spec: a L{CheckSpec}.
    @param relay: the relay's name, in the log events.
    """

    log = Logger()
    #: Only new sessions need it: a relay that stops accepting stops it.
    whileAccepting = True

    def __init__(self, targets, spec, interval=DEFAULT_INTERVAL, timeout=DEFAULT_TIMEOUT, relay="", reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.targets = list(targets)
        self.spec = spec
        self.interval = interval
        self.timeout = timeout
        self.relay = relay
        self.reactor = reactor
        self.inFlight = {}
        self._loop = None

    def startService(self):
        service.Service.startService(self)
        self._loop = task.LoopingCall(self.checkAll)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True)

    def stopService(self):
        service.Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        for d in list(self.inFlight.values()):
            d.cancel()

    def checkAll(self):
        """One round: probe every target not still being probed."""
        for target in self.targets:
            if target not in self.inFlight:
                self.checkOne(target)

    def checkOne(self, target):
        host = "localhost" if target.address.startswith("unix:") else target.address  # what curl would send
        d = self.inFlight[target] = probe(self.spec.probe(host), target.endpoint, self.reactor, self.timeout)
        d.addCallback(lambda verdict: self.record(target, *verdict))
        d.addBoth(self._probed, target)
        return d

    def _probed(self, result, target):
        self.inFlight.pop(target, None)

    def record(self, target, ok, why):
        """A probe's verdict: a change of state is logged once, the rest is quiet."""
        target.lastCheck = self.reactor.seconds()
        if not self.running:
            return
        if ok:
            target.downUntil = 0.0  # a passing check is fresher news than a client's failed connect
        if ok and not target.up:
            target.up, target.why = True, None
            self.log.info("backend {address} up: {why}", address=target.address, target=target.name,
                          relay=self.relay, why=why, state="up")
        elif not ok:
            target.why = why
            if target.up:
                target.up = False
                self.log.warn("backend {address} down: {why}", address=target.address, target=target.name,
                              relay=self.relay, why=why, state="down")


__all__ = ["CheckSpec", "HealthChecks", "HTTPCheck", "ExpectCheck", "TCPCheck", "parseCheck", "probe",
           "DEFAULT_INTERVAL", "DEFAULT_TIMEOUT"]
