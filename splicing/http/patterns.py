"""
The three value matchers of filter rules: C{value} globs (fnmatch(3), as
relayd), C{pattern} (patterns(7)) and C{regex} (Python's re), as L{Matcher}.

patterns(7) are the Lua string patterns that OpenBSD's httpd and relayd
carry in patterns.c (a port of Lua 5.3's lstrlib matcher).

Lua reports a malformed pattern only when the matcher reaches the bad spot,
which in a proxy would mean an error in the middle of a request.
L{compile} therefore walks the whole pattern once up front and raises
L{PatternError} for everything Lua could raise later (dangling C{%}, missing
C{]}, bad C{%b}/C{%f}, unbalanced captures, bad back-references, too many
captures, too deep a pattern); a compiled pattern's L{LuaPattern.search} never
raises.  Character classes follow the C locale: only ASCII letters, digits,
punctuation and so on belong to them, as on OpenBSD.

Matching is a search like Lua's C{string.find}: the pattern may match
anywhere unless it starts with C{^}; a C{$} at its end anchors the end.
"""

import functools
import re
import string

MAXCAPTURES = 32   # LUA_MAXCAPTURES
MAXCCALLS = 200    # nesting limit of the matcher ("pattern too complex")

_CLASSES = {
    "a": frozenset(string.ascii_letters),
    "c": frozenset(map(chr, list(range(32)) + [127])),
    "d": frozenset(string.digits),
    "g": frozenset(map(chr, range(33, 127))),
    "l": frozenset(string.ascii_lowercase),
    "p": frozenset(string.punctuation),
    "s": frozenset(" \t\n\r\f\v"),
    "u": frozenset(string.ascii_uppercase),
    "w": frozenset(string.ascii_letters + string.digits),
    "x": frozenset(string.hexdigits),
}

_POSIX = {"alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "upper": "A-Z",
          "lower": "a-z", "space": r" \t\n\r\f\v", "blank": r" \t", "xdigit": "0-9A-Fa-f",
          "punct": re.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
          "cntrl": r"\x00-\x1f\x7f", "print": r"\x20-\x7e", "graph": r"\x21-\x7e"}

_POSITION = -2     # a position capture "()"
_UNFINISHED = -1   # a capture whose ")" has not been reached


class PatternError(ValueError):
    """A malformed pattern; the message is Lua's."""


def escape(text):
    """C{text} as a pattern matching itself (punctuation gets a C{%})."""
    return "".join("%" + c if c in string.punctuation else c for c in text)


def _matchClass(c, cl):
    """Whether character C{c} is in class C{%cl} (C{cl} is the letter)."""
    members = _CLASSES.get(cl.lower()) if cl.isascii() else None
    if members is None:
        return cl == c
    return (c in members) != cl.isupper()


def _classEnd(p, i):
    """Index just past the single-character class starting at C{p[i]}."""
    c = p[i]
    i += 1
    if c == "%":
        if i >= len(p):
            raise PatternError("malformed pattern (ends with '%')")
        return i + 1
    if c == "[":
        if i < len(p) and p[i] == "^":
            i += 1
        while True:   # the first character is a member even if it is "]"
            if i >= len(p):
                raise PatternError("malformed pattern (missing ']')")
            c = p[i]
            i += 1
            if c == "%" and i < len(p):
                i += 1
            if i < len(p) and p[i] == "]":
                return i + 1
    return i


def _matchBracket(c, p, i, ec):
    """Whether C{c} is in the set C{p[i:ec+1]} ("[" ... "]")."""
    sig = True
    if p[i + 1] == "^":
        sig = False
        i += 1
    i += 1
    while i < ec:
        if p[i] == "%":
            i += 1
            if _matchClass(c, p[i]):
                return sig
        elif p[i + 1] == "-" and i + 2 < ec:
            if p[i] <= c <= p[i + 2]:
                return sig
            i += 2
        elif p[i] == c:
            return sig
        i += 1
    return not sig


def _check(p, i):
    """
    Walk the pattern as the matcher will and raise every error Lua would
    raise; the capture state at each position is fixed by the text, so this
    static walk is exact (depth is over-estimated, never under).
    """
    captures = []   # True while open
    depth = 1
    while i < len(p):
        c = p[i]
        if c == "(":
            if len(captures) >= MAXCAPTURES:
                raise PatternError("too many captures")
            if p[i + 1:i + 2] == ")":
                captures.append(False)
                i += 2
            else:
                captures.append(True)
                i += 1
            depth += 1
        elif c == ")":
            if True not in captures:
                raise PatternError("invalid pattern capture")
            captures[len(captures) - 1 - captures[::-1].index(True)] = False
            depth += 1
            i += 1
        elif c == "%" and p[i + 1:i + 2] == "b":
            if i + 3 >= len(p):
                raise PatternError("malformed pattern (missing arguments to '%b')")
            i += 4
        elif c == "%" and p[i + 1:i + 2] == "f":
            i += 2
            if p[i:i + 1] != "[":
                raise PatternError("missing '[' after '%f' in pattern")
            i = _classEnd(p, i)
        elif c == "%" and p[i + 1:i + 2].isdigit() and p[i + 1].isascii():
            n = int(p[i + 1]) - 1
            if n < 0 or n >= len(captures) or captures[n]:
                raise PatternError("invalid capture index %%%d" % (n + 1,))
            i += 2
        else:
            i = _classEnd(p, i)
            if i < len(p) and p[i] in "*+-?":
                depth += 1
                i += 1
        if depth > MAXCCALLS:
            raise PatternError("pattern too complex")
    if True in captures:
        raise PatternError("unfinished capture")


class LuaPattern:
    """A checked pattern; L{search} answers whether it occurs in a string."""

    def __init__(self, pattern):
        self.pattern = pattern
        self._anchor = pattern.startswith("^")
        self._start = 1 if self._anchor else 0
        _check(pattern, self._start)

    def __repr__(self):
        return "LuaPattern(%r)" % (self.pattern,)

    def search(self, subject):
        """Whether the pattern matches C{subject} somewhere (at 0 if C{^})."""
        last = 0 if self._anchor else len(subject)
        for s in range(last + 1):
            if self._match(subject, s, self._start, []) is not None:
                return True
        return False

    def _single(self, src, s, i, ep):
        if s >= len(src):
            return False
        c, pc = src[s], self.pattern[i]
        if pc == ".":
            return True
        if pc == "%":
            return _matchClass(c, self.pattern[i + 1])
        if pc == "[":
            return _matchBracket(c, self.pattern, i, ep - 1)
        return pc == c

    def _match(self, src, s, i, caps):
        """End index of a match of C{pattern[i:]} at C{src[s:]}, or None."""
        p = self.pattern
        while i < len(p):
            c = p[i]
            if c == "(":
                position = p[i + 1:i + 2] == ")"
                caps.append([s, _POSITION if position else _UNFINISHED])
                res = self._match(src, s, i + (2 if position else 1), caps)
                if res is None:
                    caps.pop()
                return res
            if c == ")":
                cap = [k for k in caps if k[1] == _UNFINISHED][-1]
                cap[1] = s - cap[0]
                res = self._match(src, s, i + 1, caps)
                if res is None:
                    cap[1] = _UNFINISHED
                return res
            if c == "$" and i + 1 == len(p):
                return s if s == len(src) else None
            nxt = p[i + 1:i + 2]
            if c == "%" and nxt == "b":
                s = self._balance(src, s, p[i + 2], p[i + 3])
                if s is None:
                    return None
                i += 4
                continue
            if c == "%" and nxt == "f":
                ep = _classEnd(p, i + 2)
                prev = src[s - 1] if s > 0 else "\0"
                cur = src[s] if s < len(src) else "\0"
                if _matchBracket(prev, p, i + 2, ep - 1) or not _matchBracket(cur, p, i + 2, ep - 1):
                    return None
                i = ep
                continue
            if c == "%" and nxt.isdigit() and nxt.isascii():
                start, length = caps[int(nxt) - 1]
                if length == _POSITION or src[s:s + length] != src[start:start + length]:
                    return None
                s += length
                i += 2
                continue
            ep = _classEnd(p, i)
            q = p[ep] if ep < len(p) else ""
            if not self._single(src, s, i, ep):
                if q in ("*", "?", "-"):
                    i = ep + 1
                    continue
                return None
            if q == "?":
                res = self._match(src, s + 1, ep + 1, caps)
                if res is not None:
                    return res
                i = ep + 1
                continue
            if q in ("*", "+"):
                n = 1 if q == "+" else 0
                while self._single(src, s + n, i, ep):
                    n += 1
                while n >= (1 if q == "+" else 0):
                    res = self._match(src, s + n, ep + 1, caps)
                    if res is not None:
                        return res
                    n -= 1
                return None
            if q == "-":
                while True:
                    res = self._match(src, s, ep + 1, caps)
                    if res is not None:
                        return res
                    if not self._single(src, s, i, ep):
                        return None
                    s += 1
            s += 1
            i = ep
        return s

    @staticmethod
    def _balance(src, s, b, e):
        if s >= len(src) or src[s] != b:
            return None
        depth = 1
        for k in range(s + 1, len(src)):
            if src[k] == e:
                depth -= 1
                if depth == 0:
                    return k + 1
            elif src[k] == b:
                depth += 1
        return None


@functools.lru_cache(maxsize=1024)
def globRegex(glob, casefold=False):
    """fnmatch(3) without flags as a compiled regex: C{* ? [..] [!..]}, C{\\} escapes."""
    out, i, n = [], 0, len(glob)
    while i < n:
        c = glob[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\" and i < n:
            out.append(re.escape(glob[i]))
            i += 1
        elif c == "[" and _bracketEnd(glob, i) is not None:
            end = _bracketEnd(glob, i)
            out.append(_bracket(glob[i:end]))
            i = end + 1
        else:
            out.append(re.escape(c))
    return re.compile("".join(out), re.DOTALL | (re.IGNORECASE if casefold else 0))


def _bracketEnd(glob, i):
    """Index of the "]" closing a bracket expression opened before C{i}."""
    if glob[i:i + 1] in ("!", "^"):
        i += 1
    if glob[i:i + 1] == "]":
        i += 1
    while i < len(glob) and glob[i] != "]":
        if glob.startswith("[:", i) and glob.find(":]", i + 2) != -1:
            i = glob.find(":]", i + 2) + 1
        elif glob[i] == "\\":
            i += 1
        i += 1
    return i if i < len(glob) else None


def _bracket(body):
    """A regex class for the bracket expression C{body} (without brackets)."""
    negate = body[:1] in ("!", "^")
    body, parts, i = body[1:] if negate else body, [], 0
    while i < len(body):
        if body.startswith("[:", i) and body.find(":]", i + 2) != -1:
            end = body.find(":]", i + 2)
            parts.append(_POSIX.get(body[i + 2:end], ""))
            i = end + 2
            continue
        if body[i] == "\\" and i + 1 < len(body):
            i += 1
        lo = body[i]
        if body[i + 1:i + 2] == "-" and i + 2 < len(body):
            hi = body[i + 3] if body[i + 2] == "\\" and i + 3 < len(body) else body[i + 2]
            if lo <= hi:   # C's fnmatch: a reversed range matches nothing
                parts.append(re.escape(lo) + "-" + re.escape(hi))
            i += 4 if body[i + 2] == "\\" else 3
            continue
        parts.append(re.escape(lo))
        i += 1
    if not parts:
        return "[^\\s\\S]" if not negate else "[\\s\\S]"
    return "[" + ("^" if negate else "") + "".join(parts) + "]"


class Matcher:
    """One value test: C{value} (glob, whole string), C{pattern} (patterns(7), search), C{regex} (re.search)."""

    def __init__(self, kind, text, casefold=False):
        self.kind, self.text = kind, text
        if kind == "value":
            self._test = globRegex(text, casefold).fullmatch
        elif kind == "pattern":
            self._test = compile(text).search
        else:
            self._test = re.compile(text).search

    def __call__(self, subject):
        return bool(self._test(subject))

    def __repr__(self):
        return "%s %r" % (self.kind, self.text)


def compile(pattern):
    """A L{LuaPattern}; raises L{PatternError} if C{pattern} is malformed."""
    return LuaPattern(pattern)


__all__ = ["LuaPattern", "Matcher", "PatternError", "compile", "escape", "globRegex"]
