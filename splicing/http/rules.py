"""
relayd.conf(5) HTTP filter rules: parse a rules file, evaluate it against a
request or response head, apply its actions to the head in place.

Evaluation follows relayd's relay_test(): rules run in order; a rule whose
direction, family, addresses, method, C{tagged} and every TYPE clause match
"matches".  A matching C{match} rule sets its tag, label and forward group at
once and queues its actions; for C{block}/C{pass} the last matching rule
decides (C{quick} decides at once), and only that deciding rule's options
and actions are applied, after the loop.  Queued actions (header/cookie/
path/query edits, C{log}, C{hash}) run after all rules were tested, so every
rule tests the message as it arrived.  See docs/http-rules.md.

The head is duck-typed (see L{RuleSet.evaluate}); nothing here does I/O.
"""

import ipaddress
import re

from splicing.http.rulesyntax import Rule, RuleError, Token, parseLine, tokenize

__all__ = ["Context", "RuleError", "RuleSet", "Verdict", "parseRules", "shorthandRules"]

_MACRO = re.compile(r"\$(REMOTE_ADDR|REMOTE_PORT|SERVER_ADDR|SERVER_PORT|SERVER_NAME|HOST|TIMEOUT)")


class Context:
    """
    What rules know about a connection, kept by the proxy for its lifetime.

    C{tags} and C{label} are sticky for the session as in relayd (C{no tag},
    C{no label} reset them); C{request} is the request head a response
    answers, which response rules read for path, query, url and method.
    """

    def __init__(self, remoteAddr="", remotePort=0, serverAddr="", serverPort=0,
                 serverName="splicing", family=None, timeout=600.0, request=None):
        self.remoteAddr, self.remotePort = remoteAddr, remotePort
        self.serverAddr, self.serverPort, self.serverName = serverAddr, serverPort, serverName
        ip = _ip(remoteAddr)   # an IPv4-mapped client counts as inet
        self.family = family or ("inet6" if ip is not None and ip.version == 6 else "inet")
        self.timeout = timeout
        self.request = request
        self.tags = set()
        self.label = None


class Verdict:
    """
    The outcome of one evaluation.  C{action} is C{"pass"} or C{"block"};
    C{rule} is the deciding block/pass rule (None if none matched).
    """

    def __init__(self, action="pass", label=None, tags=(), logs=(), forward=None, hash=None, rule=None):
        self.action, self.label, self.tags, self.logs = action, label, set(tags), list(logs)
        self.forward, self.hash, self.rule = forward, hash, rule

    def __repr__(self):
        return "<Verdict %s label=%r tags=%r logs=%r forward=%r hash=%r>" % (
            self.action, self.label, sorted(self.tags), self.logs, self.forward, self.hash)


class RuleSet:
    """
    An ordered list of rules plus C{return error [style ...]}.

    @ivar errorPages: None: a block answers with an error page if the rules
        say C{return error} or its deciding rule asks for one
        (L{Rule.errorPage}), else the connection is closed, as relayd does;
        True or False: every block answers, or none does (the command
        line's C{--error-pages on|off}).
    """

    def __init__(self, rules=(), returnError=False, errorStyle=None, errorPages=None):
        self.rules, self.returnError, self.errorStyle = tuple(rules), returnError, errorStyle
        self.errorPages = errorPages

    def __add__(self, other):
        return RuleSet(self.rules + other.rules, self.returnError or other.returnError,
                       other.errorStyle if other.errorStyle is not None else self.errorStyle,
                       other.errorPages if other.errorPages is not None else self.errorPages)

    def answers(self, verdict):
        """Whether a block (C{verdict}) gets an error page rather than a closed connection."""
        if self.errorPages is not None:
            return self.errorPages
        return self.returnError or (verdict.rule is not None and verdict.rule.errorPage)

    def __len__(self):
        return len(self.rules)

    def __iter__(self):
        return iter(self.rules)

    def forwardGroups(self):
        """Names used by C{forward to <group>}."""
        return {r.forward for r in self.rules if r.forward is not None}

    def checkGroups(self, known):
        """Raise L{RuleError} for the first C{forward to} naming a group not in C{known}."""
        for r in self.rules:
            if r.forward is not None and r.forward not in known:
                raise RuleError(r.filename, r.line, "<%s>" % (r.forward,), "no backend group of that name")

    def evaluate(self, direction, head, context):
        """
        Run the rules for C{direction} (C{"request"}/C{"response"}) on
        C{head}, editing it in place; return a L{Verdict}.

        C{head} needs C{headers} (list of [name, value] bytes), C{getHeader},
        C{setHeader}, C{appendHeader}, C{removeHeader}; a request head also
        C{method}, C{path}, C{query} (both settable) and C{host}.
        """
        if direction not in ("request", "response"):
            raise ValueError("direction must be 'request' or 'response'")
        msg = _Message(direction, head, context)
        action, final, queued = "pass", None, []
        for rule in self.rules:
            found = _test(rule, msg)
            if found is None:
                continue
            if rule.action == "match":
                _mark(rule, msg)
                queued.append((rule, found))
                continue
            action, final = rule.action, (rule, found)
            if rule.quick:
                break
        if final is not None:
            _mark(final[0], msg)
            queued.append(final)
        for rule, found in queued:
            for clause, items in found:
                try:
                    _ACTIONS[clause.type](clause, items, msg)
                except ValueError as e:   # the head refused the edit: fail closed, as relayd drops
                    action = "block"
                    msg.logs.append("%s:%s: %s %s refused: %s" % (rule.filename, rule.line, clause.type,
                                                                 clause.option, e))
        return Verdict(action, context.label, context.tags, msg.logs, msg.forward,
                       "".join(msg.hashes) if msg.hashes else None, final and final[0])


def parseRules(text, filename="<rules>"):
    """A L{RuleSet} from rules-file text; L{RuleError} names the first bad line and word."""
    rules, returnError, style = [], False, None
    for tokens in tokenize(text, filename):
        parsed = parseLine(tokens, filename)
        if isinstance(parsed, Rule):
            rules.append(parsed)
        else:
            returnError, style = True, parsed[1]
    return RuleSet(rules, returnError, style)


_SHORTHANDS = (("--block-path", "block request path"),
               ("--set-header", "match request header set"),
               ("--remove-header", "match request header remove"),
               ("--set-response-header", "match response header set"),
               ("--remove-response-header", "match response header remove"))


def shorthandRules(blockPaths=(), setHeaders=(), removeHeaders=(), setResponseHeaders=(), removeResponseHeaders=()):
    """The command-line shorthands as rules, in this order; errors name the option and its position."""
    lines = []
    groups = (blockPaths, setHeaders, removeHeaders, setResponseHeaders, removeResponseHeaders)
    for (option, words), entries in zip(_SHORTHANDS, groups):
        for n, entry in enumerate(entries, 1):
            tokens = [Token(w, n, False) for w in words.split()]
            if words.endswith(" set"):
                name, colon, value = entry.partition(":")
                if not colon or not name.strip():
                    raise RuleError(option, n, entry, "expected 'Name: value'")
                tokens += [Token(name.strip(), n, True), Token("value", n, False), Token(value.strip(), n, True)]
            else:   # quoted: an argument is never taken for a keyword
                tokens.append(Token(entry, n, True))
            rule = parseLine(tokens, option)
            rule.errorPage = True   # a user who typed --block-path expects an answer
            lines.append(rule)
    return RuleSet(lines)


def _ip(text):
    """An ip_address from C{text} (scope dropped, IPv4-mapped as IPv4), or None."""
    try:
        ip = ipaddress.ip_address(str(text).split("%", 1)[0])
    except ValueError:
        return None
    return ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip


class _Message:
    """One evaluation: the head, the request it belongs to, and what actions collect."""

    def __init__(self, direction, head, context):
        self.direction, self.head, self.context = direction, head, context
        self.request = head if direction == "request" else context.request
        self.logs, self.hashes, self.forward = [], [], None

    def headers(self):
        return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self.head.headers]

    def values(self, name):
        return [v.decode("latin-1") for v in self.head.getHeader(name)]

    def host(self):
        """The request's host as relayd canonicalizes it: lower case, no port, no trailing dot."""
        host = getattr(self.request, "host", None)
        if not host:
            return None
        host = host.strip().lower()
        if host.startswith("["):
            return host[:host.find("]") + 1] if "]" in host else None
        return host.rsplit(":", 1)[0].strip(".") if host.count(":") <= 1 else host

    def expand(self, text):
        """C{text} with relayd's macros replaced (one pass: expansions are not expanded again)."""
        ctx = self.context
        hosts = self.request.getHeader("Host") if self.request is not None else []
        timeout = ctx.timeout
        values = {
            "REMOTE_ADDR": ctx.remoteAddr, "REMOTE_PORT": ctx.remotePort,
            "SERVER_ADDR": ctx.serverAddr, "SERVER_PORT": ctx.serverPort, "SERVER_NAME": ctx.serverName,
            "HOST": hosts[0].decode("latin-1") if hosts else (getattr(self.request, "host", None) or ctx.serverAddr),
            "TIMEOUT": int(timeout) if float(timeout).is_integer() else timeout}
        return _MACRO.sub(lambda m: re.sub("[\r\n\0]", "", str(values[m.group(1)])), text)

    def setHeaders(self, name, values):
        """Replace every C{name} header by C{values} (in order, at the end)."""
        self.head.removeHeader(_b(name))
        for v in values:
            self.head.appendHeader(_b(name), _b(v))


def _b(text):
    return text.encode("latin-1", "replace")


def _mark(rule, msg):
    """Options relayd applies at once when a rule takes effect: forward, tag, label."""
    ctx = msg.context
    if rule.forward is not None:
        msg.forward = rule.forward
    if rule.noTag:
        ctx.tags.clear()
    if rule.tag is not None:
        ctx.tags.add(rule.tag)
    if rule.noLabel:
        ctx.label = None
    if rule.label is not None:
        ctx.label = rule.label


def _test(rule, msg):
    """Each clause with what it found, if C{rule} matches C{msg}; else None."""
    ctx = msg.context
    if rule.direction != msg.direction or (rule.family and rule.family != ctx.family):
        return None
    for net, addr in ((rule.source, ctx.remoteAddr), (rule.destination, ctx.serverAddr)):
        if net is not None:
            ip = _ip(addr)
            if ip is None or ip.version != net.version or ip not in net:
                return None
    if rule.method is not None and getattr(msg.request, "method", None) != rule.method:
        return None
    if rule.tagged is not None and rule.tagged not in ctx.tags:
        return None
    found = []
    for clause in rule.clauses:
        items = _TESTS[clause.type](clause, msg)
        if items is None:
            return None
        found.append((clause, items))
    return found


def _pick(clause, pairs):
    """The (name, value) pairs whose name is a key and whose value matches; None if none."""
    hits = [(n, v) for n, v in pairs if clause.keyMatches(n) and (clause.value is None or clause.value(v))]
    return hits or None


def _edits(clause):
    return clause.option in ("set", "append")


def _testHeader(clause, msg):
    return [] if _edits(clause) else _pick(clause, msg.headers())


def _cookies(msg):
    """[name, value, raw] per cookie: each pair of Cookie, or each Set-Cookie's first pair (as relayd)."""
    if msg.direction == "request":
        raws = [r.strip() for h in msg.values("Cookie") for r in h.split(";") if r.strip()]
    else:
        raws = msg.values("Set-Cookie")
    out = []
    for raw in raws:
        name, eq, value = raw.split(";", 1)[0].strip().partition("=")
        value = value.strip()
        if len(value) > 1 and value[0] == value[-1] == '"':
            value = value[1:-1]
        out.append([name.strip() if eq and not name.startswith("$") else None, value, raw])
    return out


def _query(query):
    """[name, value, raw] per query parameter; one without "=" has the value ""."""
    return [[*p.partition("=")[::2], p] for p in query.split("&") if p] if query else []


def _entries(clause, entries):
    return [] if _edits(clause) else _pick(clause, [(n, v) for n, v, _ in entries if n is not None])


def _testCookie(clause, msg):
    return _entries(clause, _cookies(msg))


def _testQuery(clause, msg):
    return None if msg.request is None else _entries(clause, _query(msg.request.query))


def _target(req):
    return req.path + ("?" + req.query if req.query is not None else "")


def _testPath(clause, msg):
    req = msg.request
    if req is None or not req.path:
        return None
    if clause.option == "strip":
        return []
    if clause.keys is not None and not clause.keyMatches(req.path):
        return None
    if not _edits(clause) and clause.value is not None and not clause.value(req.query or ""):
        return None
    return [("path", _target(req))]


def _urlKeys(host, path, query):
    """relayd's lookup keys: full host then its 5..2-label suffixes, each with path+query, path, 4 prefixes."""
    labels = host.split(".")
    hosts = [host]
    if _ip(host.strip("[]")) is None:
        hosts += [".".join(labels[-k:]) for k in range(min(5, len(labels) - 1), 1, -1)]
    for h in dict.fromkeys(hosts):
        if query is not None:
            yield h + path + "?" + query
        yield h + path
        cut = path.find("/")
        for _ in range(4):
            if cut == -1 or cut + 1 >= len(path):
                break
            yield h + path[:cut + 1]
            cut = path.find("/", cut + 1)


def _testUrl(clause, msg):
    req, host = msg.request, msg.host()
    if req is None or host is None or not req.path:
        return None
    if not any(clause.keyMatches(k) for k in _urlKeys(host, req.path, req.query)):
        return None
    return [("url", host + _target(req))]


_TESTS = {"header": _testHeader, "cookie": _testCookie, "path": _testPath,
          "query": _testQuery, "url": _testUrl}


def _report(clause, items, msg):
    """C{log} and C{hash}: shared by every type."""
    if clause.option == "log":
        msg.logs.extend("%s: %s" % item for item in items)
    elif clause.option == "hash":
        msg.hashes.extend(v for _, v in items)


def _actHeader(clause, items, msg):
    if clause.option == "set":
        msg.head.setHeader(_b(clause.name), _b(msg.expand(clause.content)))
    elif clause.option == "append":
        msg.head.appendHeader(_b(clause.name), _b(msg.expand(clause.content)))
    elif clause.option == "remove":
        names = {n.lower(): n for n, _ in msg.headers() if clause.keyMatches(n)}
        for name in names.values():
            values = msg.values(name)
            kept = [v for v in values if clause.value is not None and not clause.value(v)]
            if len(kept) != len(values):
                msg.setHeaders(name, kept)
    _report(clause, items, msg)


def _edit(clause, entries, msg):
    """C{set}/C{append}/C{remove} on [name, value, raw] entries (cookies, query parameters); new raws."""
    if clause.option == "remove":
        entries = [e for e in entries if e[0] is None or not clause.keyMatches(e[0])
                   or (clause.value is not None and not clause.value(e[1]))]
    else:
        new = [clause.name, None, "%s=%s" % (clause.name, msg.expand(clause.content))]
        fold = clause.type == "cookie"   # cookie names are case-insensitive, query names are not
        same = [i for i, e in enumerate(entries)
                if e[0] is not None and (e[0].lower() == clause.name.lower() if fold else e[0] == clause.name)]
        if clause.option == "set" and same:   # replace the first in place, drop the others
            entries[same[0]] = new
            entries = [e for i, e in enumerate(entries) if i not in same[1:]]
        else:
            entries.append(new)
    return [e[2] for e in entries]


def _actCookie(clause, items, msg):
    if clause.option in ("set", "append", "remove"):
        raws = _edit(clause, _cookies(msg), msg)
        if msg.direction == "request":
            msg.setHeaders("Cookie", ["; ".join(raws)] if raws else [])
        else:
            msg.setHeaders("Set-Cookie", raws)
    _report(clause, items, msg)


def _actPath(clause, items, msg):
    req = msg.request
    if clause.option == "set":
        req.path = msg.expand(clause.content)
    elif clause.option == "append":
        req.path = req.path + msg.expand(clause.content)
    elif clause.option == "remove":
        req.path = "/"
    elif clause.option == "strip":
        req.path = _strip(req.path, clause.strip)
    _report(clause, items, msg)


def _strip(path, n):
    """relayd's server_root_strip(): drop N leading directories, never the last component."""
    for _ in range(n):
        cut = path.find("/", 1)
        if cut == -1:
            break
        path = path[cut:]
    return path


def _actQuery(clause, items, msg):
    if clause.option in ("set", "append", "remove"):
        msg.request.query = "&".join(_edit(clause, _query(msg.request.query), msg)) or None
    _report(clause, items, msg)


_ACTIONS = {"header": _actHeader, "cookie": _actCookie, "path": _actPath,
            "query": _actQuery, "url": _report}
