"""
The text of relayd.conf(5) filter rules: the lexer and the parser that
turns one rule line into a L{Rule} (the value matchers are in
L{splicing.http.patterns}).  Evaluation lives in
L{splicing.http.rules}; this module only decides what a line says, so every
mistake is reported before anything starts, with file, line and word.

The lexer follows relayd's: C{#} comments, single or double quotes, a
backslash before the closing quote, a blank or a newline escapes it (the
last continues the line, inside quotes too), unquoted keywords are reserved
and quoted text never is a keyword.
"""

import hashlib
import ipaddress
import os
import re
from collections import namedtuple

from splicing.http import patterns
from splicing.http.patterns import Matcher, globRegex

Token = namedtuple("Token", "text line quoted")

ACTIONS = ("block", "pass", "match")
TYPES = ("cookie", "header", "path", "query", "url")
OPTIONS = ("append", "hash", "log", "remove", "set")
MATCHERS = ("value", "pattern", "regex")
KEYWORDS = frozenset(ACTIONS + TYPES + OPTIONS + MATCHERS + (
    "request", "response", "quick", "inet", "inet6", "from", "to", "forward",
    "label", "no", "tag", "tagged", "method", "strip", "digest", "file",
    "return", "error", "style"))
# relayd's list (relay_http.c http_methods); like relayd, names are case-sensitive.
METHODS = frozenset((
    "ACL BASELINE-CONTROL CHECKIN CHECKOUT CONNECT COPY DELETE GET HEAD LABEL "
    "LOCK MERGE MKACTIVITY MKCOL MKREDIRECTREF MKWORKSPACE MOVE OPTIONS "
    "ORDERPATCH PATCH POST PROPFIND PROPPATCH PUT REPORT SEARCH TRACE UNCHECKOUT "
    "UNLOCK UPDATE UPDATEREDIRECTREF VERSION-CONTROL").split())
_TCHAR = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_FIELDTEXT = re.compile(r"[\t\x20-\x7e\x80-\xff]*\Z")   # a field value (obs-text as latin-1)
_URLTEXT = re.compile(r"[\x21-\x7e]*\Z")
_GLOBBY = re.compile(r"[*?\[\\]")
_QUERYNAME = re.compile(r"[^&=#\s\x00-\x1f\x7f]+\Z")


class RuleError(ValueError):
    """A rule the parser does not understand: where, which word, and why."""

    def __init__(self, filename, line, word, message):
        super().__init__(filename, line, word, message)
        self.filename, self.line, self.word, self.message = filename, line, word, message

    def __str__(self):
        return "%s:%s: %s (at %r)" % (self.filename, self.line, self.message, self.word)


def tokenize(text, filename):
    """Yield the token list of each logical line (continuations joined)."""
    chars, line = [], 1
    text = text.replace("\r\n", "\n")
    i = 0
    while i < len(text):
        if text[i] == "\\" and text[i + 1:i + 2] == "\n":
            i, line = i + 2, line + 1
            continue
        chars.append((text[i], line))
        line += text[i] == "\n"
        i += 1
    tokens, i = [], 0
    while i < len(chars):
        c, line = chars[i]
        if c == "\n":
            if tokens:
                yield tokens
            tokens, i = [], i + 1
        elif c.isspace():
            i += 1
        elif c == "#":
            while i < len(chars) and chars[i][0] != "\n":
                i += 1
        elif c in "\"'":
            word, i = [], i + 1
            while True:
                if i >= len(chars) or chars[i][0] == "\n":
                    raise RuleError(filename, line, c + "".join(word), "unterminated quoted string")
                ch = chars[i][0]
                if ch == c:
                    break
                if ch == "\\" and i + 1 < len(chars) and chars[i + 1][0] in (c, " ", "\t"):
                    i += 1
                    ch = chars[i][0]
                word.append(ch)
                i += 1
            tokens.append(Token("".join(word), line, True))
            i += 1
        elif c in "<>":
            tokens.append(Token(c, line, False))
            i += 1
        else:
            start = i
            while i < len(chars) and not chars[i][0].isspace() and chars[i][0] not in "\"'#<>":
                i += 1
            tokens.append(Token("".join(ch for ch, _ in chars[start:i]), line, False))
    if tokens:
        yield tokens


class Clause:
    """One C{TYPE [OPTION] [KEY] [value ...]} part of a rule; all of a rule's clauses must match."""

    def __init__(self, type, option=None, keys=None, digest=False, value=None, content=None, strip=None):
        self.type, self.option, self.keys, self.digest = type, option, keys, digest
        self.value, self.content, self.strip = value, content, strip
        self._fold = type in ("header", "cookie", "url")
        # Plain keys go in a set so that long key files stay cheap; only globs are matched one by one.
        globs = [k for k in keys or () if not digest and _GLOBBY.search(k)]
        self._exact = {k.lower() if self._fold else k for k in keys or ()} - set(globs)
        self._globs = [globRegex(k, self._fold).fullmatch for k in globs]
        self._algorithms = {hashlib.sha1 if len(k) == 40 else hashlib.md5 for k in keys} if digest else ()

    def keyMatches(self, subject):
        """Whether C{subject} (a name, a path, a URL) is one of this clause's keys."""
        if self.keys is None:
            return True
        if self.digest:
            data = subject.encode("utf-8", "surrogateescape")
            return any(a(data).hexdigest() in self._exact for a in self._algorithms)
        return (subject.lower() if self._fold else subject) in self._exact or any(g(subject) for g in self._globs)

    @property
    def name(self):
        """The key as a literal name (what C{set}/C{append} create)."""
        return self.keys[0]


class Rule:
    """A parsed rule line; attributes mirror relayd.conf(5) keywords."""

    def __init__(self, action, filename, line, text):
        self.action, self.filename, self.line, self.text = action, filename, line, text
        self.direction = "request"   # relayd's default direction
        self.quick = False
        self.family = self.source = self.destination = self.forward = None
        self.label = self.tag = self.tagged = self.method = None
        self.noLabel = self.noTag = False
        self.clauses = []
        #: a block it decides answers with an error page even without
        #: C{return error} (the command-line shorthands)
        self.errorPage = False

    def __repr__(self):
        return "<Rule %s:%s %s>" % (self.filename, self.line, self.text)


class _Line:
    """The tokens of one line and a cursor over them, for the parser."""

    def __init__(self, tokens, filename):
        self.tokens, self.filename, self.pos = tokens, filename, 0

    def peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def isKeyword(self, token, *words):
        return token is not None and not token.quoted and token.text in (words or KEYWORDS)

    def next(self):
        token = self.peek()
        self.pos += 1
        return token

    def string(self, after):
        """The string after keyword token C{after}; an error if the line ends or a keyword follows."""
        token = self.peek()
        if token is None or self.isKeyword(token):
            raise self.error(after, "missing string after %r" % (after.text,))
        return self.next()

    def error(self, token, message):
        return RuleError(self.filename, token.line, token.text, message)


def parseLine(tokens, filename):
    """Parse one line: a L{Rule}, or C{("return", style)} for C{return error [style STRING]}."""
    p = _Line(tokens, filename)
    first = p.next()
    if p.isKeyword(first, "return"):
        if not p.isKeyword(p.next(), "error"):
            raise p.error(first, "expected 'return error'")
        style = None
        if p.isKeyword(p.peek(), "style"):
            style = p.string(p.next()).text
        if p.peek() is not None:
            raise p.error(p.peek(), "unexpected word after 'return error'")
        return ("return", style)
    if not p.isKeyword(first, *ACTIONS):
        message = "unexpected string" if first.quoted else "unknown keyword"
        raise p.error(first, message + "; a rule starts with block, pass, match or return error")
    rule = Rule(first.text, filename, first.line, " ".join(t.text for t in tokens))
    seen = set()
    while p.peek() is not None:
        token = p.next()
        word = token.text
        if not p.isKeyword(token):
            raise p.error(token, "unexpected string" if token.quoted else "unknown keyword")
        if word in TYPES:
            rule.clauses.append(_parseClause(p, token))
            continue
        once = {"request": "direction", "response": "direction", "inet": "family", "inet6": "family",
                "no": "no " + getattr(p.peek(), "text", "")}.get(word, word)
        if once in seen:
            raise p.error(token, "%r given twice" % (word,))
        seen.add(once)
        if word in ("request", "response"):
            rule.direction = word
        elif word == "quick":
            rule.quick = True
        elif word in ("inet", "inet6"):
            rule.family = word
        elif word in ("from", "to"):
            addr = p.string(token)
            try:
                net = ipaddress.ip_network(addr.text, strict=False)
            except ValueError:
                raise p.error(addr, "not an address or network (ADDR[/prefix])") from None
            setattr(rule, "source" if word == "from" else "destination", net)
        elif word == "forward":
            to, lt, name, gt = (p.next() for _ in range(4))
            if not p.isKeyword(to, "to") or not lt or lt.text != "<" or not name or not gt or gt.text != ">":
                raise p.error(token, "expected 'forward to <group>'")
            rule.forward = name.text
        elif word in ("label", "tag", "tagged", "method"):
            arg = p.string(token)
            if word == "method" and arg.text not in METHODS:
                raise p.error(arg, "unknown HTTP method")
            setattr(rule, word, arg.text)
        elif word == "no":
            what = p.next()
            if not p.isKeyword(what, "label", "tag"):
                raise p.error(what or token, "expected 'no label' or 'no tag'")
            setattr(rule, "noLabel" if what.text == "label" else "noTag", True)
        else:
            raise p.error(token, "%r is not valid here" % (word,))
    _checkRule(p, rule, first)
    return rule


def _parseClause(p, typeToken):
    """C{TYPE [OPTION] [digest HEX | file PATH | KEY] [value|pattern|regex STR]}, or C{path strip N}."""
    type = typeToken.text
    option, optToken = None, typeToken
    if p.isKeyword(p.peek(), *OPTIONS) or (type == "path" and p.isKeyword(p.peek(), "strip")):
        optToken = p.next()
        option = optToken.text
    if option == "strip":
        number = p.string(optToken)
        if not number.text.isdigit() or not number.text.isascii() or int(number.text) > 2 ** 31 - 1:
            raise p.error(number, "bad number for 'path strip'")
        return Clause(type, "strip", strip=int(number.text))
    keys, digest, keyToken = None, False, None
    if p.isKeyword(p.peek(), "digest"):
        keyToken, digest = p.next(), True
    if p.isKeyword(p.peek(), "file"):
        keyToken = p.next()
        keys = _readKeys(p, p.string(keyToken))
    elif digest or (p.peek() is not None and not p.isKeyword(p.peek())):
        keyToken = p.string(keyToken) if digest else p.next()
        keys = [keyToken.text]
    if digest:
        if type != "url":
            raise p.error(typeToken, "digest applies to url only")
        for key in keys:
            if len(key) not in (32, 40) or not re.fullmatch("[0-9A-Fa-f]+", key):
                raise p.error(keyToken, "a digest is 32 (md5) or 40 (sha1) hex digits: %r" % (key,))
        keys = [k.lower() for k in keys]
    value = content = None
    if p.isKeyword(p.peek(), *MATCHERS):
        kindToken = p.next()
        valueToken = p.string(kindToken)
        if type == "url":
            # relayd.conf(5): url [digest] KEY [value VALUE]; relayd looks up the key only
            if kindToken.text != "value":
                raise p.error(kindToken, "url takes a 'value' (which relayd ignores), not a %s" % kindToken.text)
        elif option in ("set", "append"):
            if kindToken.text != "value":
                raise p.error(kindToken, "%s takes a 'value', not a %s" % (option, kindToken.text))
            content = _checkContent(p, type, valueToken)
        else:
            try:
                # relayd's fnmatch(3) folds case for cookie values and path's query
                value = Matcher(kindToken.text, valueToken.text, casefold=type in ("cookie", "path"))
            except (patterns.PatternError, re.error) as e:
                raise p.error(valueToken, "bad %s: %s" % (kindToken.text, e)) from None
    if option in ("set", "append", "remove") and type == "url":
        raise p.error(optToken, "url cannot %s (as in relayd)" % (option,))
    if option in ("set", "append") and content is None:
        raise p.error(optToken, "%s %s needs a 'value'" % (type, option))
    if option in ("set", "append", "remove") and type != "path":
        nameOk = _TCHAR if type != "query" else _QUERYNAME
        if keys is None or (option != "remove" and (len(keys) != 1 or not nameOk.match(keys[0]))):
            raise p.error(keyToken or optToken, "%s %s needs a %s name" % (type, option, type))
        if type == "header" and any(k.lower() in ("content-length", "transfer-encoding") for k in keys):
            raise p.error(keyToken, "the body framing (Content-Length, Transfer-Encoding) cannot be changed")
    return Clause(type, option, keys, digest, value, content)


def _checkContent(p, type, token):
    """New text for a header, cookie, path or query must not break the message."""
    text = token.text
    allowed = _FIELDTEXT if type in ("header", "cookie") else _URLTEXT
    if not allowed.match(text):
        raise p.error(token, "this value cannot go into a %s" % (type,))
    return text


def _readKeys(p, pathToken):
    """Keys from a C{file}: one a line, cut at the first blank, no empty or C{#} lines."""
    path = pathToken.text
    if not os.path.isabs(path) and not p.filename.startswith("<"):
        path = os.path.join(os.path.dirname(p.filename), path)
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            keys = [line.split()[0] for line in f if line.split() and not line.startswith("#")]
    except OSError as e:
        raise p.error(pathToken, "cannot read file: %s" % (e.strerror,)) from None
    if not keys:
        raise p.error(pathToken, "the file holds no keys")
    return keys


def _checkRule(p, rule, first):
    """Checks that need the whole rule: families, methods, request-only parts."""
    versions = {n.version for n in (rule.source, rule.destination) if n is not None}
    if rule.family is not None:
        versions.add(4 if rule.family == "inet" else 6)
    if len(versions) > 1:
        raise p.error(first, "address family mismatch")
    if (rule.tag and rule.noTag) or (rule.label and rule.noLabel):
        raise p.error(first, "a rule cannot both set and reset a tag or label")
    if rule.direction == "response":
        if rule.forward is not None:
            raise p.error(first, "forward to applies to requests only")
        for clause in rule.clauses:
            if clause.type in ("path", "query") and clause.option in ("set", "append", "remove", "strip"):
                raise p.error(first, "%s %s applies to requests only" % (clause.type, clause.option))
