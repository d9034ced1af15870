"""
relayd.conf(5) filter rules (splicing.http.rules, rulesyntax, patterns).

Heads are a small fake with the attributes the rules engine may use; a few
tests at the end run the real L{splicing.http.head} objects.
"""

import fnmatch
import hashlib
import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splicing.http import patterns
from splicing.http.patterns import globRegex
from splicing.http.head import parseRequestHead, parseResponseHead
from splicing.http.rules import Context, RuleError, RuleSet, parseRules, shorthandRules


class FakeHead:
    """The shape of a request/response head: headers as [bytes, bytes] pairs."""

    def __init__(self, target="/", method="GET", headers=(), status=None):
        self.method, self.target, self.status = method, target, status
        self.headers = [[n.encode(), v.encode()] for n, v in headers]

    @property
    def host(self):
        hosts = self.getHeader("Host")
        return hosts[0].decode() if hosts else None

    @property
    def path(self):
        return self.target.partition("?")[0]

    @path.setter
    def path(self, value):
        self.target = value + ("?" + self.query if self.query is not None else "")

    @property
    def query(self):
        path, mark, query = self.target.partition("?")
        return query if mark else None

    @query.setter
    def query(self, value):
        self.target = self.path + ("?" + value if value is not None else "")

    def getHeader(self, name):
        key = name.lower() if isinstance(name, bytes) else name.lower().encode()
        return [v for n, v in self.headers if n.lower() == key]

    def setHeader(self, name, value):
        key = name.lower()
        places = [i for i, (n, _) in enumerate(self.headers) if n.lower() == key]
        if places:
            self.headers[places[0]] = [name, value]
            self.headers = [p for i, p in enumerate(self.headers) if i not in places[1:]]
        else:
            self.headers.append([name, value])

    def appendHeader(self, name, value):
        self.headers.append([name, value])

    def removeHeader(self, name):
        self.headers = [p for p in self.headers if p[0].lower() != name.lower()]

    def get(self, name):
        """Test helper: the values of C{name} as str."""
        return [v.decode() for v in self.getHeader(name)]


def request(target="/", method="GET", host="www.example.com", headers=()):
    return FakeHead(target, method, ((("Host", host),) if host else ()) + tuple(headers))


def response(status=200, headers=()):
    return FakeHead("", None, headers, status)


def ctx(**kw):
    kw.setdefault("remoteAddr", "192.0.2.7")
    kw.setdefault("remotePort", 50123)
    kw.setdefault("serverAddr", "198.51.100.1")
    kw.setdefault("serverPort", 8080)
    return Context(**kw)


def run(rules, head, context=None, direction="request"):
    rs = parseRules(rules) if isinstance(rules, str) else rules
    return rs.evaluate(direction, head, context if context is not None else ctx())


def action(rules, *args, **kw):
    return run(rules, *args, **kw).action


ISSUE_EXAMPLE = """\
return error
match request header set "X-Forwarded-For" value "$REMOTE_ADDR"
block request path "/admin*"
match request path "/foobar" value "*" tag RING0
pass request quick tagged RING0
block request url "example.com/private/" label "no private pages"
match response header remove "Server"
"""


# --- parsing -----------------------------------------------------------------

def test_issue_example_parses_and_behaves():
    rs = parseRules(ISSUE_EXAMPLE, "relay.rules")
    assert len(rs) == 6 and rs.returnError and rs.errorStyle is None
    assert [r.line for r in rs] == [2, 3, 4, 5, 6, 7]
    head = request("/index.html", headers=[("X-Forwarded-For", "10.9.9.9")])
    v = run(rs, head)
    assert v.action == "pass" and head.get("X-Forwarded-For") == ["192.0.2.7"]
    assert action(rs, request("/admin/users")) == "block"
    v = run(rs, request("/private/x?y=1", host="WWW.Example.COM:81"))
    assert (v.action, v.label) == ("block", "no private pages")
    c = ctx()
    v = run(rs, request("/foobar"), c)
    assert v.action == "pass" and v.tags == {"RING0"} and c.tags == {"RING0"}
    # quick pass for tagged sessions: the later url block no longer applies
    assert action(rs, request("/private/"), c) == "pass"
    resp = response(headers=[("Server", "Apache"), ("Content-Type", "text/html")])
    c.request = request("/")
    assert action(rs, resp, c, "response") == "pass"
    assert resp.get("Server") == [] and resp.get("content-type") == ["text/html"]


def test_comments_blank_lines_continuations_and_quotes():
    rs = parseRules(
        "# a comment\n"
        "\n"
        "   block request path '/a b' # trailing comment\n"
        "block request \\\n"
        "   path \"/c\\\"d\"\n"
        "match request header set \"X-Long\" value \"one \\\n"
        "two\"\n"
        "match request header set X-Esc value \"a\\ b\\\\n\"\r\n"
        "block request path \"/#notacomment\"\n", "f")
    assert [r.line for r in rs] == [3, 4, 6, 8, 9]
    assert rs.rules[0].clauses[0].keys == ["/a b"]
    assert rs.rules[1].clauses[0].keys == ['/c"d']
    assert rs.rules[2].clauses[0].content == "one two"
    assert rs.rules[3].clauses[0].content == "a b\\\\n"
    assert rs.rules[4].clauses[0].keys == ["/#notacomment"]
    assert len(parseRules("")) == 0 and len(parseRules("# only\n\n")) == 0


@pytest.mark.parametrize("text, line, word, fragment", [
    ("blok request", 1, "blok", "unknown keyword"),
    ("\n\n# c\npass request frobnicate", 4, "frobnicate", "unknown keyword"),
    ('pass request "x"', 1, "x", "unexpected string"),
    ("tcp { nodelay }", 1, "tcp", "unknown keyword"),
    ('block request path "/a" value', 1, "value", "missing string"),
    ("block request tag", 1, "tag", "missing string"),
    ("block request label tag", 1, "label", "missing string"),
    ("block from 10.0.0.300", 1, "10.0.0.300", "not an address"),
    ("block from 10.0.0.0/33", 1, "10.0.0.0/33", "not an address"),
    ("block to example.com", 1, "example.com", "not an address"),
    ("match request path strip x", 1, "x", "bad number"),
    ("match request path strip -1", 1, "-1", "bad number"),
    ("match request path strip 99999999999", 1, "99999999999", "bad number"),
    ('block request path "/a', 1, '"/a', "unterminated quoted string"),
    ("pass\nblock request label 'oops\nblock", 2, "'oops", "unterminated quoted string"),
    ('block url digest "abc"', 1, "abc", "32 (md5) or 40 (sha1)"),
    ('block url digest "%s"' % ("z" * 40), 1, "z" * 40, "hex digits"),
    ('block header digest "%s"' % ("a" * 40), 1, "header", "url only"),
    ('block request method GTE', 1, "GTE", "unknown HTTP method"),
    ('block request method get', 1, "get", "unknown HTTP method"),
    ("block inet from ::1", 1, "block", "address family mismatch"),
    ("block from 10.0.0.1 to ::1", 1, "block", "address family mismatch"),
    ("block request tag a tag b", 1, "tag", "given twice"),
    ("block request response", 1, "response", "given twice"),
    ("block quick quick", 1, "quick", "given twice"),
    ("match no tag no tag", 1, "no", "given twice"),
    ("match no frob", 1, "frob", "expected 'no label' or 'no tag'"),
    ("match tag a no tag", 1, "match", "both set and reset"),
    ('match header set "X"', 1, "set", "needs a 'value'"),
    ('match header set "X" pattern "a"', 1, "pattern", "takes a 'value'"),
    ('match header set "Bad Name" value "x"', 1, "Bad Name", "needs a header name"),
    ("match header remove", 1, "remove", "needs a header name"),
    ('match header set "X" value "a\x01b"', 1, "a\x01b", "cannot go into a header"),
    ('match path set value "/a b"', 1, "/a b", "cannot go into a path"),
    ('match header set "Content-Length" value "1"', 1, "Content-Length", "framing"),
    ('match header remove "transfer-encoding"', 1, "transfer-encoding", "framing"),
    ('block url set "x"', 1, "set", "url cannot set"),
    ('block url "x" pattern "y"', 1, "pattern", "url takes a 'value'"),
    ('block header "X" pattern "a%"', 1, "a%", "bad pattern: malformed pattern (ends with '%')"),
    ('block header "X" pattern "[a"', 1, "[a", "missing ']'"),
    ('block header "X" regex "("', 1, "(", "bad regex"),
    ("match response path strip 1", 1, "match", "requests only"),
    ('match response query set "a" value "b"', 1, "match", "requests only"),
    ("match response forward to <web>", 1, "match", "requests only"),
    ("block forward <web>", 1, "forward", "expected 'forward to <group>'"),
    ("block forward to web", 1, "forward", "expected 'forward to <group>'"),
    ("return errors", 1, "return", "expected 'return error'"),
    ("return error style", 1, "style", "missing string"),
    ("return error now", 1, "now", "unexpected word"),
    ('block url file "/nonexistent/keys.txt"', 1, "/nonexistent/keys.txt", "cannot read file"),
])
def test_parse_errors_name_file_line_and_word(text, line, word, fragment):
    with pytest.raises(RuleError) as info:
        parseRules(text, "rules.conf")
    e = info.value
    assert (e.filename, e.line, e.word) == ("rules.conf", line, word)
    assert fragment in e.message
    assert str(e) == "rules.conf:%d: %s (at %r)" % (line, e.message, word)
    assert isinstance(e, ValueError)


def test_return_error_style_and_defaults():
    rs = parseRules('return error style "body { color: red }"\npass')
    assert rs.returnError and rs.errorStyle == "body { color: red }"
    assert not parseRules("pass").returnError


def test_default_direction_is_request():
    rs = parseRules('match header remove "Server"')
    assert rs.rules[0].direction == "request"
    resp = response(headers=[("Server", "x")])
    run(rs, resp, ctx(request=request()), "response")
    assert resp.get("Server") == ["x"]
    req = request(headers=[("Server", "x")])
    run(rs, req)
    assert req.get("Server") == []


def test_evaluate_rejects_unknown_direction():
    with pytest.raises(ValueError):
        parseRules("pass").evaluate("sideways", request(), ctx())


# --- block / pass / match / quick ---------------------------------------------

def test_nothing_matches_passes_with_empty_verdict():
    v = run('block path "/x"', request("/y"))
    assert (v.action, v.label, v.tags, v.logs, v.forward, v.hash, v.rule) == ("pass", None, set(), [], None, None, None)


def test_last_matching_rule_wins():
    rules = 'block path "/a*"\npass path "/a/ok*"'
    assert action(rules, request("/a/x")) == "block"
    assert action(rules, request("/a/ok")) == "pass"
    v = run(rules, request("/a/ok"))
    assert v.rule.line == 2


def test_quick_stops_at_first_match():
    rules = 'block quick path "/a*"\npass path "/a/ok*"'
    assert action(rules, request("/a/ok")) == "block"
    assert action('pass quick\nblock', request()) == "pass"
    assert action('pass\nblock', request()) == "block"


def test_match_does_not_change_the_action_and_quick_on_match_is_ignored():
    assert action('block\nmatch quick path "/*"\nmatch tag x', request()) == "block"
    assert action('match quick path "/*"\nblock', request()) == "block"


def test_only_the_deciding_rule_applies_its_options():
    rules = ('block path "/a*" label "A" tag T forward to <x>\n'
             'pass path "/a/ok" label "OK"\n')
    v = run(rules, request("/a/ok"))
    assert (v.action, v.label, v.tags, v.forward) == ("pass", "OK", set(), None)
    v = run(rules, request("/a/no"))
    assert (v.action, v.label, v.tags, v.forward) == ("block", "A", {"T"}, "x")


def test_actions_run_after_all_rules_tested():
    # relayd queues edits: a later rule sees the message as it arrived
    rules = 'match header set "X-A" value "1"\nblock header "X-A"'
    head = request()
    assert action(rules, head) == "pass" and head.get("X-A") == ["1"]


# --- tags and labels ------------------------------------------------------------

def test_tags_are_sticky_across_messages_and_no_tag_clears():
    rules = ('match path "/login" tag AUTH\n'
             'match path "/x" tag OTHER\n'
             'block\n'
             'pass tagged AUTH\n'
             'match path "/logout" no tag\n')
    c = ctx()
    assert action(rules, request("/"), c) == "block"
    assert action(rules, request("/login"), c) == "pass"
    assert run(rules, request("/x"), c).tags == {"AUTH", "OTHER"}
    assert action(rules, request("/anything"), ctx()) == "block"
    assert action(rules, request("/anything"), c) == "pass"
    assert run(rules, request("/logout"), c).tags == set()
    assert action(rules, request("/anything"), c) == "block"


def test_tagged_rule_is_skipped_without_the_tag():
    assert action("block tagged X", request()) == "pass"


def test_label_is_shown_on_block_sticky_and_reset_by_no_label():
    rules = 'match path "/m" label "from match"\nblock path "/b*"\nmatch path "/r" no label'
    c = ctx()
    assert run(rules, request("/m"), c).label == "from match"
    v = run(rules, request("/b"), c)
    assert (v.action, v.label) == ("block", "from match")
    run(rules, request("/r"), c)
    assert run(rules, request("/b"), c).label is None
    assert run('block label "<b>no</b>"', request()).label == "<b>no</b>"


# --- log, hash, forward ---------------------------------------------------------

def test_log_values_are_collected():
    rules = ('match header log "User-Agent"\n'
             'match cookie log "sid"\n'
             'match query log "q*"\n'
             'match path log "/s*"\n'
             'match url log\n'
             'block path "/s*" header log "X-Missing"\n')
    head = request("/search?q=x&qq=y&z=1", headers=[("User-Agent", "curl/8"), ("Cookie", "sid=42; o=1")])
    v = run(rules, head)
    assert v.logs == ["User-Agent: curl/8", "sid: 42", "q: x", "qq: y",
                      "path: /search?q=x&qq=y&z=1", "url: www.example.com/search?q=x&qq=y&z=1"]
    assert v.action == "pass"   # the block needs X-Missing


def test_log_of_the_deciding_block_rule():
    v = run('block path "/a" header log "Referer"', request("/a", headers=[("Referer", "http://x/")]))
    assert v.action == "block" and v.logs == ["Referer: http://x/"]


def test_hash_feeds_values():
    rules = 'match query hash "sessid"\nmatch header hash "X-User"'
    v = run(rules, request("/?sessid=abc", headers=[("X-User", "bob")]))
    assert v.hash == "abcbob"
    assert run(rules, request("/")).hash is None


def test_forward_to_group_last_wins_per_message():
    rules = 'match forward to <default>\nmatch path "/api/*" forward to <api>\nmatch path "/nope" forward to <x>'
    assert run(rules, request("/api/v1")).forward == "api"
    assert run(rules, request("/")).forward == "default"
    rs = parseRules(rules)
    assert rs.forwardGroups() == {"default", "api", "x"}
    rs.checkGroups({"default", "api", "x"})
    with pytest.raises(RuleError) as info:
        rs.checkGroups({"default", "api"})
    assert (info.value.line, info.value.word) == (3, "<x>")


# --- headers and macros ---------------------------------------------------------

def test_header_set_append_remove():
    rules = ('match header set "X-Set" value "new"\n'
             'match header append "X-App" value "two"\n'
             'match header remove "X-Gone"\n'
             'match header remove "X-Tmp-*"\n'
             'match header remove "X-Some" value "bad*"\n')
    head = request(headers=[("x-set", "old"), ("X-App", "one"), ("X-Gone", "1"), ("x-gone", "2"),
                            ("X-Tmp-A", "a"), ("X-Tmp-B", "b"), ("X-Some", "bad1"), ("X-Some", "good"),
                            ("X-Some", "bad2")])
    run(rules, head)
    assert head.get("X-Set") == ["new"] and head.headers[1][0] == b"X-Set"
    assert head.get("X-App") == ["one", "two"]
    assert head.get("X-Gone") == [] and head.get("X-Tmp-A") == head.get("X-Tmp-B") == []
    assert head.get("X-Some") == ["good"]


def test_header_names_case_insensitive_values_case_sensitive():
    head = request(headers=[("user-agent", "BadBot/1")])
    assert action('block header "User-Agent" value "BadBot*"', head) == "block"
    assert action('block header "USER-AGENT" value "badbot*"', head) == "pass"
    assert action('block header "X-Absent"', head) == "pass"
    assert action('block header "User-*"', head) == "block"


def test_header_set_without_existing_header_is_created_always_matches():
    head = request()
    assert action('block header set "X-New" value "v"', head) == "block"
    assert head.get("X-New") == ["v"]


def test_macros_are_expanded_once():
    rules = ('match header set "X-R" value "$REMOTE_ADDR:$REMOTE_PORT"\n'
             'match header set "X-S" value "$SERVER_ADDR:$SERVER_PORT $SERVER_NAME"\n'
             'match header set "X-H" value "$HOST"\n'
             'match header set "X-T" value "$TIMEOUT/$NOT_A_MACRO"\n')
    head = request(host="evil$REMOTE_ADDR.example")
    run(rules, head, ctx(serverName="splicing/1", timeout=600.0))
    assert head.get("X-R") == ["192.0.2.7:50123"]
    assert head.get("X-S") == ["198.51.100.1:8080 splicing/1"]
    assert head.get("X-H") == ["evil$REMOTE_ADDR.example"]
    assert head.get("X-T") == ["600/$NOT_A_MACRO"]
    head = request(host=None)
    run(rules, head, ctx(timeout=2.5))
    assert head.get("X-H") == ["198.51.100.1"] and head.get("X-T") == ["2.5/$NOT_A_MACRO"]


# --- cookies --------------------------------------------------------------------

def test_cookie_matching():
    head = request(headers=[("Cookie", 'SID=abc; theme="dark"; $Path=/; flag')])
    assert action('block cookie "sid"', head) == "block"
    assert action('block cookie "theme" value "dark"', head) == "block"
    assert action('block cookie "theme" value "DARK"', head) == "block"   # relayd: FNM_CASEFOLD
    assert action('block cookie "theme" value "D?RK"', head) == "block"
    assert action('block cookie "theme" regex "DARK"', head) == "pass"   # the extensions match as written
    assert action('block cookie "theme" value "light"', head) == "pass"
    assert action('block cookie "path"', head) == "pass"
    assert action('block cookie "flag"', head) == "pass"
    assert action('block cookie "x"', head) == "pass"
    assert action('block cookie "x"', request()) == "pass"


def test_cookie_set_append_remove_request():
    head = request(headers=[("Cookie", "a=1; b=2"), ("Cookie", "a=3")])
    run('match cookie set "A" value "9"\nmatch cookie append "c" value "$REMOTE_PORT"', head)
    assert head.get("Cookie") == ["A=9; b=2; c=50123"]
    run('match cookie remove "b"', head)
    assert head.get("Cookie") == ["A=9; c=50123"]
    run('match cookie remove "*"', head)
    assert head.get("Cookie") == []
    head = request()
    run('match cookie set "n" value "v"', head)
    assert head.get("Cookie") == ["n=v"]


def test_cookie_on_responses_uses_set_cookie():
    resp = response(headers=[("Set-Cookie", "track=1; Path=/"), ("Set-Cookie", "sid=2; HttpOnly")])
    c = ctx(request=request())
    assert action('block response cookie "track"', resp, c, "response") == "block"
    run('match response cookie remove "track"', resp, c, "response")
    assert resp.get("Set-Cookie") == ["sid=2; HttpOnly"]
    run('match response cookie set "sid" value "3; Secure"\nmatch response cookie append "n" value "1"',
        resp, c, "response")
    assert resp.get("Set-Cookie") == ["sid=3; Secure", "n=1"]


# --- path -----------------------------------------------------------------------

def test_path_key_glob_case_sensitive_query_value_not():
    assert action('block path "/cgi-bin/*"', request("/cgi-bin/x")) == "block"
    assert action('block path "/CGI-BIN/*"', request("/cgi-bin/x")) == "pass"
    rules = 'block path "/cgi-bin/index.cgi" value "*command=*"'
    assert action(rules, request("/cgi-bin/index.cgi?x=1&command=ls")) == "block"
    assert action(rules, request("/cgi-bin/index.cgi?COMMAND=ls")) == "block"   # relayd: FNM_CASEFOLD
    assert action(rules, request("/cgi-bin/index.cgi?x=ls")) == "pass"
    assert action(rules, request("/cgi-bin/index.cgi")) == "pass"
    assert action('block path', request("/anything")) == "block"


@pytest.mark.parametrize("n, path, result", [
    (0, "/a/b/c", "/a/b/c"), (1, "/a/b/c", "/b/c"), (2, "/a/b/c?q=1", "/c?q=1"),
    (3, "/a/b/c", "/c"), (1, "/", "/"), (1, "/a/", "/"), (5, "/a", "/a")])
def test_path_strip(n, path, result):
    head = request(path)
    run("match path strip %d" % n, head)
    assert head.target == result


def test_path_set_append_remove():
    head = request("/old/x?q=1")
    run('match path set "/old/*" value "/new"', head)
    assert head.target == "/new?q=1"
    run('match path set "/old/*" value "/never"', head)
    assert head.target == "/new?q=1"
    run('match path append value "/$SERVER_PORT"', head)
    assert head.target == "/new/8080?q=1"
    run('match path remove "/new*"', head)
    assert head.target == "/?q=1"


# --- query ----------------------------------------------------------------------

def test_query_matching():
    head = request("/s?foo=bar&ok=yes&debug")
    assert action('block query "foo" value "bar"', head) == "block"
    assert action('block query "foo" value "BAR"', head) == "pass"
    assert action('block query "FOO"', head) == "pass"
    assert action('block query "debug"', head) == "block"
    assert action('block query "o*" value "y*"', head) == "block"
    assert action('block query "foo"', request("/s")) == "pass"


def test_query_set_append_remove():
    head = request("/s?a=1&b=2&a=3&flag")
    run('match query set "a" value "$REMOTE_ADDR"', head)
    assert head.query == "a=192.0.2.7&b=2&flag"
    run('match query append "b" value "4"\nmatch query set "new" value "x"', head)
    assert head.query == "a=192.0.2.7&b=2&flag&b=4&new=x"
    run('match query remove "b" value "2"\nmatch query remove "flag"', head)
    assert head.query == "a=192.0.2.7&b=4&new=x"
    run('match query remove "*"', head)
    assert head.query is None and head.target == "/s"


# --- url ------------------------------------------------------------------------

@pytest.mark.parametrize("key, hit", [
    ("www.example.com/1/2/3/4/5.html?query=yes", True),
    ("www.example.com/1/2/3/4/5.html", True),
    ("www.example.com/", True),
    ("www.example.com/1/", True),
    ("www.example.com/1/2/3/", True),
    ("www.example.com/1/2/3/4/", False),   # only 4 path prefixes
    ("example.com/1/2/3/4/5.html?query=yes", True),
    ("EXAMPLE.com/1/2/", True),            # case-insensitive
    ("example.com/1/2/3/4/5.HTML", True),
    ("com/", False),                       # never the bare top-level label
    ("www.example.com:81/", False),        # the port is not part of the host
    ("www.example.com/1", False),          # prefixes end in "/"
    ("example.com/*.html", True),          # keys may be globs here
])
def test_url_lookup_variants(key, hit):
    head = request("/1/2/3/4/5.html?query=yes", host="www.example.com:81")
    assert action('block url "%s"' % key, head) == ("block" if hit else "pass")


def test_url_host_suffixes_are_limited_to_five_labels():
    head = request("/", host="a.b.c.d.e.f.com")
    assert action('block url "c.d.e.f.com/"', head) == "block"
    assert action('block url "b.c.d.e.f.com/"', head) == "pass"
    assert action('block url "a.b.c.d.e.f.com/"', head) == "block"
    assert action('block url "f.com/"', head) == "block"
    assert action('block url "0.1/"', request("/", host="10.0.0.1")) == "pass"
    assert action('block url "10.0.0.1/"', request("/", host="10.0.0.1")) == "block"


def test_url_without_host_does_not_match():
    assert action('block url "example.com/"', request("/", host=None)) == "pass"


def test_url_with_value_as_relayd_regress_writes_it():
    """relayd.conf(5): url [digest] KEY [value VALUE]; relayd looks the key up and ignores the value."""
    head = request("/3", host="foo.bar")
    assert action('block request url "foo.bar/3" value "*"', head) == "block"
    assert action('block request url "foo.bar/3" value "nothing-like-it"', head) == "block"
    assert action('block request url "foo.bar/4" value "*"', head) == "pass"
    sha1 = hashlib.sha1(b"foo.bar/3").hexdigest()
    assert action('block url digest "%s" value "*"' % sha1, head) == "block"


def test_url_digest_sha1_and_md5():
    sha1 = hashlib.sha1(b"example.com/private/").hexdigest()
    md5 = hashlib.md5(b"www.example.com/a.html?x=1").hexdigest()
    head = request("/private/page.html")
    assert action('block url digest "%s"' % sha1.upper(), head) == "block"
    assert action('block url digest "%s"' % md5, head) == "pass"
    assert action('block url digest %s' % md5, request("/a.html?x=1")) == "block"


def test_file_keys(tmp_path):
    keys = tmp_path / "bad-urls.txt"
    keys.write_text("# blocked\n\nexample.com/private/  trailing words\nexample.org/\n")
    rules = tmp_path / "relay.rules"
    rules.write_text('block url file "bad-urls.txt" label "listed"\n')
    rs = parseRules(rules.read_text(), str(rules))
    assert rs.rules[0].clauses[0].keys == ["example.com/private/", "example.org/"]
    assert action(rs, request("/private/x")) == "block"
    assert action(rs, request("/", host="www.example.org")) == "block"
    assert action(rs, request("/public/")) == "pass"
    digests = tmp_path / "digests"
    digests.write_text(hashlib.md5(b"example.com/").hexdigest() + "\n")
    assert action(parseRules('block url digest file "%s"' % digests), request("/x")) == "block"
    headers = tmp_path / "headers"
    headers.write_text("X-Debug\nX-Trace\n")
    head = request(headers=[("X-Trace", "1"), ("X-Keep", "1")])
    run('match header remove file "%s"' % headers, head)
    assert [n for n, _ in head.headers] == [b"Host", b"X-Keep"]
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(RuleError, match="no keys"):
        parseRules('block url file "%s"' % (tmp_path / "empty"))


def test_large_key_files_mix_plain_keys_and_globs(tmp_path):
    keys = tmp_path / "blocklist"
    keys.write_text("".join("host%d.example/\n" % i for i in range(20000)) + "*.evil.test/*\n")
    rs = parseRules('block url file "%s"' % keys)
    assert action(rs, request("/x", host="HOST19999.example")) == "block"
    assert action(rs, request("/a/b", host="www.evil.test")) == "block"
    assert action(rs, request("/", host="host20000.example")) == "pass"


# --- value matchers -------------------------------------------------------------

def test_glob_escapes_and_classes():
    head = request(headers=[("X", "a*")])
    assert action(r'block header "X" value "a\*"', head) == "block"
    assert action(r'block header "X" value "a\*"', request(headers=[("X", "ab")])) == "pass"
    assert action('block header "X" value "[!b]?"', head) == "block"
    assert action('block header "X" value "[[:alpha:]][[:punct:]]"', head) == "block"
    assert action('block header "X" value "[[:digit:]]*"', head) == "pass"


def test_pattern_values_are_lua_patterns():
    head = request("/?id=12345", headers=[("X-Id", "user-42"), ("X-Ws", "a b")])
    assert action('block header "X-Id" pattern "^user%-%d+$"', head) == "block"
    assert action('block header "X-Id" pattern "^user%-%a+$"', head) == "pass"
    assert action('block header "X-Id" pattern "%d"', head) == "block"   # a search, not anchored
    assert action('block header "X-Ws" pattern "%S%s%S"', head) == "block"
    assert action('block query "id" pattern "^%d%d%d%d%d$"', head) == "block"
    assert action('block path "/*" pattern "^id=[0-5]+$"', head) == "block"
    assert action('block path "/*" pattern "^id=[0-4]+$"', head) == "pass"


def test_regex_values_are_python_re_search():
    head = request(headers=[("User-Agent", "Mozilla/5.0 (sqlmap)")])
    assert action(r'block header "User-Agent" regex "\(sqlmap\)"', head) == "block"
    assert action(r'block header "User-Agent" regex "^sqlmap"', head) == "pass"
    assert action(r'block cookie "s" regex "^[0-9a-f]{4}$"', request(headers=[("Cookie", "s=beef")])) == "block"


# --- method, family, addresses, responses --------------------------------------

def test_method():
    assert action("block method POST", request(method="POST")) == "block"
    assert action("block method POST", request(method="GET")) == "pass"
    rules = 'block response method DELETE header "X-Deleted"'
    resp = response(headers=[("X-Deleted", "yes")])
    assert action(rules, resp, ctx(request=request(method="DELETE")), "response") == "block"
    assert action(rules, resp, ctx(request=request(method="GET")), "response") == "pass"
    assert action(rules, resp, ctx(), "response") == "pass"


def test_response_rules_read_the_request_from_the_context():
    rules = 'block response path "/secret*" header "Content-Type" value "text/html*"'
    resp = response(headers=[("Content-Type", "text/html; charset=utf-8")])
    assert action(rules, resp, ctx(request=request("/secret/x")), "response") == "block"
    assert action(rules, resp, ctx(request=request("/public")), "response") == "pass"
    assert action(rules, resp, ctx(), "response") == "pass"
    assert action('block response url "example.com/"', resp, ctx(request=request("/")), "response") == "block"


@pytest.mark.parametrize("rule, remote, server, family, hit", [
    ("block inet", "192.0.2.7", "198.51.100.1", None, True),
    ("block inet6", "192.0.2.7", "198.51.100.1", None, False),
    ("block inet6", "2001:db8::7", "2001:db8::1", None, True),
    ("block inet", "::ffff:192.0.2.7", "::ffff:198.51.100.1", None, True),
    ("block inet", "192.0.2.7", "198.51.100.1", "inet6", False),
    ("block from 192.0.2.0/24", "192.0.2.7", "198.51.100.1", None, True),
    ("block from 192.0.2.0/24", "192.0.3.7", "198.51.100.1", None, False),
    ("block from 192.0.2.7", "192.0.2.7", "198.51.100.1", None, True),
    ("block from 192.0.2.0/24", "::ffff:192.0.2.7", "::1", None, True),
    ("block from 2001:db8::/32", "2001:db8:1::5", "::1", None, True),
    ("block from 2001:db8::/32", "2001:db9::5", "::1", None, False),
    ("block from 2001:db8::/32", "192.0.2.7", "::1", None, False),
    ("block from fe80::/10", "fe80::1%eth0", "::1", None, True),
    ("block to 198.51.100.0/24", "192.0.2.7", "198.51.100.1", None, True),
    ("block to 198.51.100.0/24", "192.0.2.7", "203.0.113.1", None, False),
    ("block inet6 to ::1/128", "::1", "::1", None, True),
    ("block from 10.0.0.0/8", "not-an-ip", "::1", None, False),
])
def test_family_and_addresses(rule, remote, server, family, hit):
    c = Context(remoteAddr=remote, serverAddr=server, family=family)
    assert action(rule, request(), c) == ("block" if hit else "pass")


# --- shorthands and combination -------------------------------------------------

def test_shorthands():
    rs = shorthandRules(blockPaths=["/admin*"], setHeaders=["X-Via: splicing $SERVER_PORT"],
                        removeHeaders=["X-Debug"], setResponseHeaders=["X-Frame-Options: DENY"],
                        removeResponseHeaders=["Server"])
    assert [(r.action, r.direction) for r in rs] == [
        ("block", "request"), ("match", "request"), ("match", "request"),
        ("match", "response"), ("match", "response")]
    head = request("/", headers=[("X-Debug", "1")])
    assert run(rs, head).action == "pass"
    assert head.get("X-Via") == ["splicing 8080"] and head.get("X-Debug") == []
    assert action(rs, request("/admin/x")) == "block"
    resp = response(headers=[("Server", "nginx")])
    run(rs, resp, ctx(request=head), "response")
    assert resp.get("Server") == [] and resp.get("X-Frame-Options") == ["DENY"]
    # values that look like keywords or hold quotes stay strings
    rs = shorthandRules(blockPaths=["block"], setHeaders=['X-Q: say "hi" \\'])
    head = request("/block")
    assert run(rs, request("block")).action == "block"
    run(rs, head)
    assert head.get("X-Q") == ['say "hi" \\']


@pytest.mark.parametrize("kw, option, n, word", [
    ({"setHeaders": ["X-Ok: 1", "no colon"]}, "--set-header", 2, "no colon"),
    ({"setHeaders": [": v"]}, "--set-header", 1, ": v"),
    ({"setResponseHeaders": ["Bad Name: v"]}, "--set-response-header", 1, "Bad Name"),
    ({"removeHeaders": ["Content-Length"]}, "--remove-header", 1, "Content-Length"),
    ({"setHeaders": ["X: a\nb"]}, "--set-header", 1, "a\nb"),
])
def test_shorthand_errors(kw, option, n, word):
    with pytest.raises(RuleError) as info:
        shorthandRules(**kw)
    assert (info.value.filename, info.value.line, info.value.word) == (option, n, word)


def test_ruleset_addition_keeps_order_and_error_settings():
    a = parseRules('return error style "a"\nblock path "/x*"', "file")
    b = shorthandRules(blockPaths=["/y"]) + parseRules('pass path "/x/ok"')
    both = a + b
    assert [r.filename for r in both] == ["file", "--block-path", "<rules>"]
    assert both.returnError and both.errorStyle == "a"
    assert action(both, request("/x/ok")) == "pass"
    assert action(both, request("/y")) == "block"
    assert (RuleSet() + parseRules('return error style "b"')).errorStyle == "b"
    assert not (RuleSet() + RuleSet()).returnError
    assert len(a) == 1 and len(a + a) == 2


# --- the real heads -------------------------------------------------------------

def test_with_real_request_and_response_heads():
    rs = parseRules(ISSUE_EXAMPLE)
    head = parseRequestHead(b"GET /private/a?b=1 HTTP/1.1\r\nHost: www.Example.com\r\n"
                            b"Cookie: a=1; b=2\r\n\r\n")
    c = ctx()
    v = rs.evaluate("request", head, c)
    assert (v.action, v.label) == ("block", "no private pages")
    assert head.getHeader("X-Forwarded-For") == [b"192.0.2.7"]
    head = parseRequestHead(b"GET /a/b/c?x=1 HTTP/1.1\r\nHost: h\r\nCookie: a=1; b=2\r\n\r\n")
    run('match path strip 1\nmatch query set "y" value "2"\nmatch cookie remove "a"', head)
    assert head.target == "/b/c?x=1&y=2" and head.getHeader("Cookie") == [b"b=2"]
    resp = parseResponseHead(b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 0\r\n\r\n", "GET")
    c.request = head
    assert rs.evaluate("response", resp, c).action == "pass"
    assert resp.getHeader("Server") == []


def test_an_edit_the_head_refuses_blocks_and_is_logged():
    head = parseRequestHead(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    v = run('match header remove "Host"\nmatch header log "Host"', head)
    assert v.action == "block"
    assert v.logs[0] == "Host: h" or v.logs[-1] == "Host: h"
    assert any(line.startswith("<rules>:1: header remove refused") for line in v.logs)
    assert head.getHeader("Host") == [b"h"]


# --- the Lua pattern matcher (property tests) -----------------------------------

PATTERN_CHARS = "ab.%()[]^$*+-?1dwsSAbf"
LITERAL_CHARS = "abcxyz /:=&"


@settings(max_examples=300, deadline=None)
@given(st.text(PATTERN_CHARS, max_size=12), st.text("ab()[]1 .-", max_size=12))
def test_pattern_matcher_never_raises_on_checked_patterns(pattern, subject):
    try:
        compiled = patterns.compile(pattern)
    except patterns.PatternError as e:
        with pytest.raises(RuleError, match=re.escape(str(e))):
            parseRules("block header X pattern '%s'" % pattern.replace("'", "\\'"))
        return
    assert compiled.search(subject) in (True, False)
    parseRules("block header X pattern '%s'" % pattern)


@settings(max_examples=200, deadline=None)
@given(st.text(LITERAL_CHARS, max_size=6), st.text(LITERAL_CHARS, max_size=20))
def test_literal_patterns_match_like_substring_search(literal, subject):
    assert patterns.compile(literal).search(subject) == (literal in subject)
    assert patterns.compile("^" + literal).search(subject) == subject.startswith(literal)
    assert patterns.compile(literal + "$").search(subject) == subject.endswith(literal)


@settings(max_examples=200, deadline=None)
@given(st.text(string.printable, max_size=8), st.text(string.printable, max_size=20))
def test_escaped_text_matches_itself(text, subject):
    escaped = patterns.escape(text)
    assert patterns.compile(escaped).search(subject + text)
    assert patterns.compile(escaped).search(subject) == (text in subject)


@pytest.mark.parametrize("pattern, subject, expected", [
    ("%d+", "abc123", True), ("^%d+$", "12a", False), ("%a%A", "a1", True), ("%l%u", "aB", True),
    ("%x%X", "fG", True), ("%p", "a.b", True), ("%c", "a\x01", True), ("%g", " ", False),
    ("%w+%s*=%s*%w+", "k = v", True), ("[%w_]+$", "a_b", True), ("[a-c]+", "xxb", True),
    ("[^a-c]", "abc", False), ("[]]", "]", True), ("[a%-]", "-", True), ("a-b", "ab", True),
    ("a?b", "b", True), ("a+ab", "ab", False), ("a+ab", "aab", True), ("a-$", "aa", True),
    ("^a*$", "", True), ("%bxy", "axxyyb", True), ("%bxy", "ayyx", False), ("%bxy", "axxy", True),
    ("%f[%w]%w+", "  hi", True), ("%f[%a]b", "ab", False), ("(a)%1", "aa", True), ("(a)%1", "ab", False),
    ("()a", "a", True), ("%.", "x", False), ("$", "", True), ("a$b", "a$b", True), ("^", "x", True),
])
def test_pattern_examples(pattern, subject, expected):
    assert patterns.compile(pattern).search(subject) is expected


@pytest.mark.parametrize("pattern, message", [
    ("a%", "ends with '%'"), ("[a", "missing ']'"), ("%bx", "missing arguments to '%b'"),
    ("%fx", "missing '[' after '%f'"), ("%1", "invalid capture index"), ("(a)%2", "invalid capture index"),
    ("(a%1)", "invalid capture index"), ("(a", "unfinished capture"), ("a)", "invalid pattern capture"),
    ("(" * 33 + ")" * 33, "too many captures"), ("a*" * 200, "pattern too complex"),
])
def test_malformed_patterns(pattern, message):
    with pytest.raises(patterns.PatternError, match=re.escape(message)):
        patterns.compile(pattern)


@settings(max_examples=300, deadline=None)
@given(st.text("ab*?[]!-", max_size=8), st.text("ab[]!-", max_size=8))
def test_globs_agree_with_fnmatch_without_escapes(glob, subject):
    assert bool(globRegex(glob).fullmatch(subject)) == fnmatch.fnmatchcase(subject, glob)


# --- error pages: return error, the shorthands, --error-pages ------------------------

def test_error_pages_follow_return_error_the_shorthands_and_the_switch():
    fileRules = parseRules('block path "/admin*"')
    both = fileRules + shorthandRules(blockPaths=["/private*"])
    byFile = both.evaluate("request", request("/admin/x"), ctx())
    byShorthand = both.evaluate("request", request("/private/x"), ctx())
    assert (byFile.action, byShorthand.action) == ("block", "block")
    assert not both.answers(byFile) and both.answers(byShorthand)   # relayd's silent close; an answer
    assert (parseRules("return error") + both).answers(byFile)
    both.errorPages = True
    assert both.answers(byFile) and both.answers(byShorthand)
    both.errorPages = False
    assert not both.answers(byFile) and not both.answers(byShorthand)
