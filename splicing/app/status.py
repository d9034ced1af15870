"""
The status page of the C{--metrics} endpoint, as relayctl and HAProxy's
stats page give: C{/status.json} and C{/status} (the same as a small HTML
page, refreshed by the browser, no external assets).

    {"relays": [{"name", "kind", "listen": [...],
                 "backends": [{"address": "HOST:PORT", "up", "last_check", "sessions", ...}],
                 "sessions": [{"client", "backend", "bytes_out", "bytes_in", "age", "path"}]}]}

L{describe} reads running relays (their ports, backends and live
sessions: byte counts so far); L{merge} joins the documents of
C{--workers}' workers; L{renderJSON} and L{renderHTML} are pure functions
of a document.
"""

import html
import json
import time

from splicing.relay.access import formatAddress

REFRESH = 5  # seconds between the browser's reloads of /status


def running(table):
    """The sessions running in a relay's table (a UDP relay keeps them by client)."""
    active = table.active
    return list(active.values() if isinstance(active, dict) else active)


def backendStatus(target):
    """A L{splicing.relay.balance.Target} as the status document has it."""
    return {"address": target.address, "name": target.name, "up": bool(target.up),
            "last_check": target.lastCheck, "sessions": target.sessions,
            "connect_errors": target.connectErrors, "why": None if target.up else target.why}


def relayOf(service):
    """
    What a relay service runs: a L{splicing.app.service.RelayService}'s
    factory (TCP, HTTP), or the service itself (UDP).  It has C{kind},
    C{backends()} and a session table (C{table}, or itself): C{active} and
    C{waiting}, each running session with C{status()} and C{traffic()}.
    """
    return getattr(service, "factory", service)


def tableOf(relay):
    return getattr(relay, "table", relay)


def describe(name, service):
    """
    One running relay's status: C{service} is a relay service (see
    L{relayOf}); listening addresses as bound (a port 0 shows its number).
    """
    relay = relayOf(service)
    table = tableOf(relay)
    ports = list(getattr(service, "ports", None) or [p for p in [getattr(service, "port", None)] if p])
    listen = [formatAddress(p.getHost()) for p in ports] or list(_listen(service))
    return {"name": name, "kind": relay.kind, "listen": listen,
            "backends": [backendStatus(t) for t in relay.backends()],
            "sessions": [s.status() for s in running(table)], "waiting": len(table.waiting)}


def _listen(service):
    listen = getattr(service, "listen", ())
    return [listen] if isinstance(listen, str) else listen


def document(relays):
    """The status document of C{relays}: (name, service) pairs."""
    return {"relays": [describe(name, svc) for name, svc in relays]}


def merge(documents):
    """
    One document from several processes' (C{--workers}): relays by name,
    listening addresses joined, sessions listed together, each backend
    up only if every worker sees it up, its sessions summed, its last
    check the latest.
    """
    relays = {}
    for doc in documents:
        if not doc:
            continue  # a worker that ended while asked
        for relay in doc.get("relays", []):
            into = relays.get(relay["name"])
            if into is None:
                relays[relay["name"]] = into = dict(relay, listen=[], backends=[], sessions=[], waiting=0)
            into["listen"] += [a for a in relay["listen"] if a not in into["listen"]]
            into["sessions"] += relay["sessions"]
            into["waiting"] += relay.get("waiting", 0)
            _mergeBackends(into["backends"], relay["backends"])
    return {"relays": list(relays.values())}


def _mergeBackends(into, backends):
    known = {b["name"]: b for b in into}
    for b in backends:
        have = known.get(b["name"])
        if have is None:
            known[b["name"]] = dict(b)
            into.append(known[b["name"]])
            continue
        have["up"] = have["up"] and b["up"]
        have["why"] = have["why"] or b["why"]
        have["sessions"] += b["sessions"]
        have["connect_errors"] += b["connect_errors"]
        checks = [c for c in (have["last_check"], b["last_check"]) if c is not None]
        have["last_check"] = max(checks) if checks else None


def renderJSON(doc):
    return json.dumps(doc, indent=1, sort_keys=True).encode("utf-8") + b"\n"


_STYLE = """body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0 1em}th,td{padding:.2em .8em;text-align:left;border-bottom:1px solid #ddd}
td.n{text-align:right;font-variant-numeric:tabular-nums}.up{color:#070}.down{color:#b00;font-weight:bold}
.none{color:#777}"""


def _e(value):
    return html.escape("" if value is None else str(value), quote=True)


def _ago(when, now):
    if when is None:
        return "never"
    return "%.1f s ago" % (max(0.0, now - when),)


def _table(headers, rows, numeric=()):
    head = "".join("<th>%s</th>" % _e(h) for h in headers)
    body = "".join("<tr>%s</tr>" % "".join(
        '<td class="n">%s</td>' % _e(v) if i in numeric else "<td>%s</td>" % v for i, v in enumerate(row))
        for row in rows)
    return "<table><tr>%s</tr>%s</table>" % (head, body)


def _relayHTML(relay, now):
    title = "%s (%s) on %s" % (_e(relay["name"]), _e(relay["kind"]), _e(", ".join(relay["listen"]) or "nothing"))
    backends = [[_e(b["address"]),
                 '<span class="up">up</span>' if b["up"] else '<span class="down">down</span>',
                 _e(_ago(b["last_check"], now)), b["sessions"], b.get("connect_errors", 0), _e(b.get("why") or "")]
                for b in relay["backends"]]
    sessions = [[_e(s["client"]), _e(s["backend"]), s["bytes_out"], s["bytes_in"], "%.1f s" % s["age"],
                 _e(s["path"])] for s in relay["sessions"]]
    parts = ["<h2>%s</h2>" % title,
             _table(["backend", "state", "last check", "sessions", "connect errors", "why"], backends, (3, 4))]
    if sessions:
        parts.append(_table(["client", "backend", "bytes out", "bytes in", "age", "path"], sessions, (2, 3, 4)))
    else:
        parts.append('<p class="none">no session running%s</p>' % (
            " (%d waiting)" % relay["waiting"] if relay.get("waiting") else ""))
    return "\n".join(parts)


def renderHTML(doc, now=None, refresh=REFRESH):
    """C{doc} as a page naming each relay by its listening addresses; C{now} (POSIX time) dates the checks."""
    now = time.time() if now is None else now
    body = "\n".join(_relayHTML(relay, now) for relay in doc["relays"]) or "<p>no relays</p>"
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"refresh\" content=\"%d\"><title>splicing status</title>"
            "<style>%s</style></head>\n<body><h1>splicing status</h1>\n%s\n"
            "<p class=\"none\">%s &middot; <a href=\"status.json\">status.json</a> &middot; "
            "<a href=\"metrics\">metrics</a></p>\n</body></html>\n"
            % (refresh, _STYLE, body, _e(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now)))))
    return page.encode("utf-8")


__all__ = ["describe", "document", "merge", "renderHTML", "renderJSON", "backendStatus", "relayOf", "running"]
