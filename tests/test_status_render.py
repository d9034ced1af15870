"""
The status page's pure parts (splicing.app.status): documents merged across
workers, JSON and HTML rendered without sockets.  (Served by a real twistd
with live byte counts: test_status.py.)
"""

import json
import re
from html.parser import HTMLParser

from splicing.app.status import merge, renderHTML, renderJSON


def relay(name="web", listen=("127.0.0.1:8080",), up=True, last=100.0, sessions=(), backend_sessions=0):
    return {"name": name, "kind": "tcp", "listen": list(listen), "waiting": 0,
            "backends": [{"address": "10.0.0.1:80", "name": "tcp:host=10.0.0.1:port=80", "up": up,
                          "last_check": last, "sessions": backend_sessions, "connect_errors": 1,
                          "why": None if up else "refused"}],
            "sessions": list(sessions)}


def session(client="127.0.0.1:5000", out=10, back=20):
    return {"client": client, "backend": "10.0.0.1:80", "bytes_out": out, "bytes_in": back, "age": 1.5,
            "path": "kernel"}


def test_merge_workers():
    one = {"relays": [relay(sessions=[session()], backend_sessions=1, last=100.0)]}
    two = {"relays": [relay(listen=["127.0.0.1:8080", "[::1]:8080"], up=False, last=105.0,
                            sessions=[session("127.0.0.1:5001", 3, 4)], backend_sessions=1),
                      relay("dns", listen=["127.0.0.1:53"])]}
    merged = merge([one, two])
    web, dns = merged["relays"]
    assert web["listen"] == ["127.0.0.1:8080", "[::1]:8080"] and dns["name"] == "dns"
    assert [s["client"] for s in web["sessions"]] == ["127.0.0.1:5000", "127.0.0.1:5001"]
    (backend,) = web["backends"]
    assert backend == {"address": "10.0.0.1:80", "name": "tcp:host=10.0.0.1:port=80", "up": False,
                       "last_check": 105.0, "sessions": 2, "connect_errors": 2, "why": "refused"}
    assert one["relays"][0]["backends"][0]["sessions"] == 1  # inputs untouched
    assert merge([]) == merge([[], {"relays": []}]) == {"relays": []}  # [] : a worker that ended while asked


def test_json_round_trips():
    doc = {"relays": [relay(sessions=[session()])]}
    assert json.loads(renderJSON(doc)) == doc


class Cells(HTMLParser):
    """Headings, table cells and meta tags of a page; fails on anything that is not well nested."""

    def __init__(self):
        HTMLParser.__init__(self)
        self.h2, self.cells, self.meta, self.links, self.stack, self.text = [], [], [], [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "meta":
            self.meta.append(dict(attrs))
        elif tag in ("link", "script", "img"):
            self.links.append((tag, dict(attrs)))
        elif tag in ("h2", "td"):
            self.text = []

    def handle_endtag(self, tag):
        if tag in ("h2", "td"):
            (self.h2 if tag == "h2" else self.cells).append("".join(self.text))
            self.text = None

    def handle_data(self, data):
        if self.text is not None:
            self.text.append(data)


def parse(page):
    cells = Cells()
    cells.feed(page.decode("utf-8"))
    return cells


def test_html_names_relays_by_listening_address_and_refreshes():
    doc = {"relays": [relay(listen=["127.0.0.1:8080", "[::1]:8080"], sessions=[session()], last=90.0),
                      relay("dns", listen=["127.0.0.1:5353"], up=False, last=None)]}
    page = renderHTML(doc, now=100.0)
    got = parse(page)
    assert got.h2 == ["web (tcp) on 127.0.0.1:8080, [::1]:8080", "dns (tcp) on 127.0.0.1:5353"]
    assert {"http-equiv": "refresh", "content": "5"} in got.meta
    assert got.links == []  # no external assets: no stylesheet, script or image
    assert not re.search(rb"(src|href)=\"(https?:)?//", page)
    assert got.cells[:6] == ["10.0.0.1:80", "up", "10.0 s ago", "0", "1", ""]
    assert got.cells[6:12] == ["127.0.0.1:5000", "10.0.0.1:80", "10", "20", "1.5 s", "kernel"]
    assert got.cells[12:18] == ["10.0.0.1:80", "down", "never", "0", "1", "refused"]


def test_html_escapes_everything_from_outside():
    evil = '<script>alert("x")</script>&'
    doc = {"relays": [relay(name=evil, listen=[evil], sessions=[session(client=evil)])]}
    doc["relays"][0]["backends"][0].update(up=False, why=evil)
    page = renderHTML(doc, now=0)
    assert b"<script>" not in page and page.count(b"&lt;script&gt;") == 4
    got = parse(page)
    assert got.h2 == ["%s (tcp) on %s" % (evil, evil)]
    assert evil in got.cells


# -- the endpoint's resource, with Twisted's request stand-in


def served(source, path, method=b"GET"):
    from twisted.web.test.requesthelper import DummyRequest

    from splicing.app.web import EndpointResource

    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    request.path, request.method = path, method
    EndpointResource(source).render(request)
    assert request.finished
    return request.responseCode or 200, request.responseHeaders.getRawHeaders(b"content-type"), b"".join(
        request.written)


class Source:
    def __init__(self, fail=False):
        from prometheus_client import CollectorRegistry, Counter

        self.fail, self.registry = fail, CollectorRegistry()
        Counter("things", "Things", registry=self.registry).inc(3)

    def collector(self):
        return self.registry

    def status(self):
        if self.fail:
            raise RuntimeError("broken")
        return {"relays": [relay()]}


def test_endpoint_paths():
    code, kind, body = served(Source(), b"/status.json")
    assert (code, kind) == (200, [b"application/json"]) and json.loads(body)["relays"][0]["name"] == "web"
    code, kind, body = served(Source(), b"/status")
    assert kind == [b"text/html; charset=utf-8"] and b"<h2>web (tcp) on 127.0.0.1:8080</h2>" in body
    for path in (b"/metrics", b"/", b"/anything"):
        code, kind, body = served(Source(), path)
        assert kind[0].startswith(b"text/plain") and b"things_total 3.0" in body
    assert served(Source(), b"/status", method=b"HEAD")[2] == b""


def test_endpoint_failure_is_a_500_and_logged():
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        code, kind, body = served(Source(fail=True), b"/status.json")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert code == 500 and b"could not read its metrics" in body
    assert any(e.get("log_failure") is not None and e["log_failure"].check(RuntimeError) for e in events)
