"""
Live metrics and the status page in real twistd processes: byte counts
checked against what a test moved while its session is still open (TCP,
HTTP, UDP, and summed over --workers), nothing counted twice when it ends,
no _created series, the process collectors, backend gauges, scrapes not
access-logged, and /status naming each relay by its listening addresses.
"""

import json
import os
import re
import socket
import urllib.request
from html.parser import HTMLParser

from prometheus_client.parser import text_string_to_metric_families

import procs
from procs import Backend, connect, recv_all
from test_cli_udp_http import udp_echo  # noqa: F401 (a fixture)
from test_health import start  # noqa: F401 (a fixture)

LOCAL = "tcp:0:interface=127.0.0.1"


def get(where, path):
    return urllib.request.urlopen("http://%s:%d%s" % (where + (path,)), timeout=procs.TIMEOUT).read()


def scrape(where):
    """(text, {(sample name, ((label, value), ...)): value})."""
    text = get(where, "/metrics").decode()
    return text, {(s.name, tuple(sorted(s.labels.items()))): s.value
                  for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples, name, **labels):
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def status(where):
    return json.loads(get(where, "/status.json"))


def metrics_address(relay):
    return procs.address(relay.wait_for(r"metrics http listening on (\S+)")[0])


def exchange(sock, data):
    """Send ``data`` to an echo backend through the relay and read it back."""
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        assert chunk, "EOF after %d of %d bytes" % (len(got), len(data))
        got += chunk
    assert got == data


def test_tcp_bytes_and_status_follow_an_open_session(start):
    backend = Backend(procs.echo)
    try:
        relay = start(["tcp", "--listen", LOCAL, "--connect", backend.tcp, "--metrics", LOCAL, "--check", "tcp",
                       "--check-interval", "0.2"])
        where, metrics = relay.listening()["tcp"][0], metrics_address(relay)
        with connect(where) as s:
            exchange(s, procs.payload(300000, seed=1))
            text, samples = scrape(metrics)
            assert total(samples, "splicing_bytes_total", relay="tcp", direction="out") == 300000
            assert total(samples, "splicing_bytes_total", relay="tcp", direction="in") == 300000
            assert total(samples, "splicing_sessions_total", relay="tcp") == 0  # still running
            backend_labels = (("backend", "127.0.0.1:%d" % backend.port), ("relay", "tcp"))
            assert samples[("splicing_backend_up", backend_labels)] == 1
            assert samples[("splicing_backend_sessions", backend_labels)] == 1

            (doc,) = status(metrics)["relays"]
            assert (doc["name"], doc["kind"], doc["listen"]) == ("tcp", "tcp", ["%s:%d" % where])
            (session,) = doc["sessions"]
            assert session["client"] == "%s:%d" % s.getsockname()
            assert session["backend"] == "127.0.0.1:%d" % backend.port
            assert (session["bytes_out"], session["bytes_in"]) == (300000, 300000)
            assert session["age"] > 0 and session["path"] in ("kernel", "mbuf", "transport")
            (b,) = doc["backends"]
            assert (b["address"], b["up"], b["sessions"]) == ("127.0.0.1:%d" % backend.port, True, 1)
            assert b["last_check"] > 1e9

            exchange(s, procs.payload(70000, seed=2))
            _, samples = scrape(metrics)
            assert total(samples, "splicing_bytes_total", relay="tcp", direction="out") == 370000
            assert status(metrics)["relays"][0]["sessions"][0]["bytes_in"] == 370000
            s.shutdown(socket.SHUT_WR)
            assert recv_all(s) == b""
        relay.wait_for(r"session ended: .* 370000 bytes out, 370000 bytes in")
        text, samples = scrape(metrics)
        assert total(samples, "splicing_bytes_total", relay="tcp", direction="out") == 370000  # not twice
        assert total(samples, "splicing_bytes_total", relay="tcp", direction="in") == 370000
        assert total(samples, "splicing_sessions_total", relay="tcp") == 1
        assert samples[("splicing_backend_sessions", backend_labels)] == 0
        assert status(metrics)["relays"][0]["sessions"] == []

        assert "_created" not in text
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                     "process_start_time_seconds"):
            assert samples[(name, ())] > 0
        assert any(n == "python_info" for n, _ in samples) and any(n.startswith("python_gc_") for n, _ in samples)
        assert "GET /metrics" not in relay.text() and "/status.json" not in relay.text()  # no access log
    finally:
        backend.close()


def test_http_session_counted_while_kept_alive(start):
    """An HTTP keep-alive session: its request and response bytes are there before it ends."""
    relay = start(["http", "--listen", LOCAL, "--metrics", LOCAL])  # the demo origin
    where, metrics = relay.listening()["http"][0], metrics_address(relay)
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(where) as s:
        s.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 4 + int(
                re.search(rb"(?i)content-length: (\d+)", answer).group(1)):
            answer += s.recv(65536)
        _, samples = scrape(metrics)
        assert total(samples, "splicing_bytes_total", relay="http", direction="in") == len(answer)
        assert total(samples, "splicing_bytes_total", relay="http", direction="out") == len(request)
        (session,) = status(metrics)["relays"][0]["sessions"]
        assert (session["bytes_out"], session["bytes_in"]) == (len(request), len(answer))
    relay.wait_for(r"http session ended: ")
    _, samples = scrape(metrics)
    assert total(samples, "splicing_bytes_total", relay="http", direction="in") == len(answer)


def test_udp_bytes_before_the_idle_timeout(start, udp_echo):  # noqa: F811
    port = procs.free_port()
    relay = start(["udp", "--listen", "udp:%d:interface=127.0.0.1" % port,
                   "--connect", "udp:host=\\:\\:1:port=%d" % udp_echo, "--idle", "60", "--metrics", LOCAL])
    metrics = metrics_address(relay)
    relay.wait_for(r"UDP relay on 127\.0\.0\.1:%d" % port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.settimeout(procs.TIMEOUT)
        c.connect(("127.0.0.1", port))
        sent = [b"datagram %d" % i for i in range(5)]
        for d in sent:
            c.send(d)
            assert c.recv(65536) == b"echo:" + d
        _, samples = scrape(metrics)
        assert total(samples, "splicing_bytes_total", relay="udp", direction="out") == sum(map(len, sent))
        assert total(samples, "splicing_bytes_total", relay="udp", direction="in") == sum(len(d) + 5 for d in sent)
        (session,) = status(metrics)["relays"][0]["sessions"]
        assert session["client"] == "127.0.0.1:%d" % c.getsockname()[1]
        assert session["bytes_out"] == sum(map(len, sent))


class Headings(HTMLParser):
    def __init__(self):
        HTMLParser.__init__(self)
        self.h2, self.meta, self.inside = [], [], False

    def handle_starttag(self, tag, attrs):
        self.inside = tag == "h2"
        if tag == "h2":
            self.h2.append("")
        if tag == "meta":
            self.meta.append(dict(attrs))

    def handle_endtag(self, tag):
        self.inside = False

    def handle_data(self, data):
        if self.inside:
            self.h2[-1] += data


def test_status_page_names_relays_by_listening_address_across_workers(start, tmp_path):
    """Two relays, two listeners each, two workers: one heading per relay with both addresses; a session's live bytes."""
    backend = Backend(procs.echo)
    try:
        config = tmp_path / "relays.toml"
        config.write_text('metrics = "%s"\n[relay.one]\nlisten = ["%s", \'tcp6:0:interface=\\:\\:1\']\nconnect = "%s"\n'
                          '[relay.two]\ntype = "http"\nlisten = ["%s", "%s"]\n'
                          % (LOCAL, LOCAL, backend.tcp, LOCAL, LOCAL))
        relay = start(["--config", str(config), "--workers", "2"])
        ports = relay.listening(4)
        metrics = metrics_address(relay)
        relay.wait_for(r"worker \d+ started", 2)
        with connect(ports["one"][0]) as s:
            exchange(s, b"x" * 5000)
            page = get(metrics, "/status")
            headings = Headings()
            headings.feed(page.decode())
            one = "one (tcp) on %s" % ", ".join("%s:%d" % a if ":" not in a[0] else "[%s]:%d" % a
                                                   for a in ports["one"])
            two = "two (http) on %s" % ", ".join("%s:%d" % a for a in ports["two"])
            assert headings.h2 == [one, two]
            assert {"http-equiv": "refresh", "content": "5"} in headings.meta
            doc = status(metrics)
            (session,) = doc["relays"][0]["sessions"]
            assert (session["bytes_out"], session["bytes_in"]) == (5000, 5000)
            assert doc["relays"][0]["backends"][0]["sessions"] == 1
            _, samples = scrape(metrics)
            assert total(samples, "splicing_bytes_total", relay="one") == 10000
            assert [v for (n, _), v in samples.items() if n == "python_info"] == [1]  # not one per process
            master = len(os.listdir("/proc/%d/fd" % relay.proc.pid))
            assert samples[("process_open_fds", ())] >= master + 2 * 5  # the master's and both workers'
            assert total(samples, "splicing_workers") == 2
    finally:
        backend.close()
