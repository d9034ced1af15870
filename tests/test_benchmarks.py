"""
The benchmark suite must not rot: its arithmetic and report, its runner,
its charts, and its load generators through a direct connection, in a few
seconds (the real figures come from C{python -m benchmarks}).
"""

import os
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import charts, report  # noqa: E402
from benchmarks.report import Spread, Table, Verdict, markdown_report  # noqa: E402
from benchmarks.scenario import Chart, Context, Outcome  # noqa: E402


def test_spread_is_median_and_range():
    s = Spread.of([3.0, 1.0, 2.0, None])
    assert (s.median, s.lo, s.hi, s.n) == (2.0, 1.0, 3.0, 3)
    assert s.format("%.1f") == "2.0 (1.0-3.0)"
    assert Spread.of([5.0]).format("%.1f") == "5.0"
    assert Spread.of([]) is None and Spread.of([None]) is None


def test_percentile_nearest_rank():
    values = list(range(100, 0, -1))  # unsorted on purpose
    assert report.percentile(values, 50) == 50
    assert report.percentile(values, 99) == 99
    assert report.percentile(values, 100) == 100
    assert report.percentile([7], 99) == 7
    assert report.percentile([], 50) is None


def test_ratio_of_medians():
    assert report.ratio(Spread.of([4.0]), Spread.of([2.0])) == 2.0
    assert report.ratio(3.0, 1.5) == 2.0
    assert report.ratio(None, 1.0) is None and report.ratio(1.0, 0) is None


def test_verdicts_say_met_or_by_how_much():
    assert "**met**" in Verdict("t", 2.1, 2.0).format()
    assert "missed by 25%" in Verdict("t", 1.5, 2.0).format()
    assert "missed by 50%" in Verdict("t", 1.5, 1.0, higher=False).format()
    assert "**met**" in Verdict("t", 0.9, 1.0, higher=False).format()
    assert not Verdict("t", None, 1.0).met
    assert "missed by 2" in Verdict("pipes", 2, 0, higher=False, unit="").format()


def test_markdown_report():
    t = Table("k", "Title", "What was measured.",
              [("relay", "relay", "%s"), ("x", "GB/s", "%.2f"), ("n", "count", "%d")])
    t.rows.append({"relay": "splice", "x": Spread.of([1.0, 2.0, 3.0]), "n": 3})
    t.rows.append({"relay": "failed", "x": None})
    t.verdicts.append(Verdict("speed", 2.0, 1.5))
    t.notes.append("a note")
    md = report.markdown_report(["- header"], [t], [("A chart", "a.png")], ["one failure"], ["footer"])
    assert "| splice | 2.00 (1.00-3.00) | 3 |" in md
    assert "| failed | - | - |" in md
    assert "| speed | 2.00x | >= 1.5x | met |" in md
    assert "![A chart](a.png)" in md and "- one failure" in md and md.endswith("footer\n")


def test_runner_reports_every_scenario_and_survives_a_failing_one(tmp_path, monkeypatch):
    from benchmarks import __main__ as runner

    def good(ctx):
        assert ctx.quick
        t = Table("g", "Good", "Measured nothing.", [("relay", "relay", "%s")], [{"relay": "x"}])
        return Outcome([t], [Chart("g.png", "G", lambda path: open(path, "w").close())])

    def bad(ctx):
        raise RuntimeError("boom")

    mod = type(sys)("fake_scenarios")
    mod.good, mod.bad = good, bad
    monkeypatch.setitem(sys.modules, "fake_scenarios", mod)
    monkeypatch.setattr(runner, "SCENARIOS", {"good": ("fake_scenarios", "good"),
                                              "bad": ("fake_scenarios", "bad")})
    monkeypatch.setattr(runner.charts, "available", lambda: True)
    assert runner.main(["--quick", "--out", str(tmp_path)]) == 1  # a failure is reported
    md = (tmp_path / "RESULTS.md").read_text()
    assert "### Good" in md and "bad: the scenario failed: RuntimeError: boom" in md
    assert "![G](g.png)" in md and (tmp_path / "g.png").exists()


def test_charts_draw(tmp_path):
    assert charts.available()  # the test extra installs matplotlib: the charts are tested, never skipped
    s = Spread.of([1.0, 1.5, 2.0])
    charts.bars(str(tmp_path / "b.png"), "t", "GB/s", [("splice", s), ("portforward", s)])
    charts.latency_cdf(str(tmp_path / "l.png"), "t", {"direct": [10.0, 11.0, 30.0]})
    charts.scaling(str(tmp_path / "s.png"), "t", "sessions", "GB/s", {"splice": [(10, s), (100, s)]})
    assert all((tmp_path / n).stat().st_size > 1000 for n in ("b.png", "l.png", "s.png"))


def test_loads_through_a_direct_connection():
    """The echo and bulk load generators, end to end, with no relay (about 3 s)."""
    from benchmarks import latency, session_rate, tcp_sessions

    runs, failures = latency.measure(["direct"], 50, 1)
    assert not failures and len(runs["direct"][0]) == 50
    runs, failures = session_rate.measure(["direct"], 0.3, 1, 4)
    assert not failures and runs["direct"][0]["sessions"] > 0
    results, failures = tcp_sessions.measure(["direct"], [3], 0.2, 1)
    assert not failures and results[("direct", 3)][0][0] > 0  # every session's CRC matched


def test_quick_context_picks_small_values():
    assert Context(quick=True).pick(10000, 400) == 400
    assert Context(quick=False).pick(10000, 400) == 10000


def test_udp_queries_table_and_verdict():
    """The DNS-like query rows: added latency against direct, the ratio new port / running session."""
    from benchmarks import udp_throughput

    q = lambda median: [{"median": median, "p90": median, "mean": median, "lost": 0}]
    results = {("direct", True): q(20.0), ("direct", False): q(15.0),
               ("twisted", True): q(60.0), ("twisted", False): q(50.0),
               ("splice", True): q(120.0), ("splice", False): q(55.0)}
    table = udp_throughput.queryTable(results, 10, 1)
    rows = {r["relay"]: r for r in table.rows}
    assert (rows["splice"]["afresh"], rows["splice"]["asame"], rows["splice"]["x"]) == (100.0, 40.0, 2.5)
    assert "afresh" not in rows["direct"]
    (v,) = table.verdicts
    assert v.value == 2.5 and v.goal == udp_throughput.QUERY_TARGET and not v.higher and not v.met
    assert "| splice | 120 | 55 | 100 | 40 | 2.50 |" in markdown_report([], [table])


def test_udp_queries_through_the_relays():
    """The echo responder and the query client, fresh ports and one session, through both relays (a few seconds)."""
    from benchmarks import udp_throughput

    results = udp_throughput.queries(5, 1)
    assert set(results) == {(n, f) for n in udp_throughput.RELAYS for f in (True, False)}
    assert all(r["answers"] == 5 and r["lost"] == 0 for v in results.values() for r in v)


def test_http_small_requests_rows_against_the_tcp_relay(monkeypatch):
    """The small-request table: requests/s, relay CPU per request, x tcp-relay and the 0.8x verdict (no load run)."""
    from benchmarks import http_throughput as h

    def fake(names, nbytes, repeat, small, verbose=False, chunk=None):
        results = {(n, c): [] for n in names for c in h.CASES + [("small", False)]}
        rps = {"direct": 20000, "http-proxy": 7000, "tcp-relay": 10000, "reverse-proxy": 2000, "haproxy-http": 12000}
        for n in names:
            for c in h.CASES:
                results[(n, c)].append({"bytes": nbytes, "secs": 1.0, "relay_cpu": 0.1, "error": None})
            results[(n, ("small", False))].append(
                {"requests": rps[n], "secs": 1.0, "relay_cpu": None if n == "direct" else rps[n] * 50e-6,
                 "bytes": rps[n] * 1024, "error": None})
        return results, []

    monkeypatch.setattr(h, "measure", fake)
    monkeypatch.setattr(Context, "peer_relays", lambda self: [])
    outcome = h.suite(Context(quick=True))
    small = next(t for t in outcome.tables if t.key == "http-small")
    rows = {r["relay"]: r for r in small.rows}
    assert rows["http-proxy"]["xtcp"] == 0.7 and round(rows["http-proxy"]["cpu"].median, 6) == 50.0
    v = next(v for v in small.verdicts if "TCP relay" in v.target)
    assert v.value == 0.7 and v.goal == h.SMALL_VS_TCP and not v.met


def test_added_latency_ratio_is_against_what_haproxy_adds():
    from benchmarks import latency

    summ = {"direct": {"median": Spread.of([20.0])}, "splice": {"median": Spread.of([50.0])},
            "haproxy": {"median": Spread.of([40.0])}}
    assert latency.added_ratio(summ, "splice") == 1.5  # adds 30 us where HAProxy adds 20
    assert latency.added_ratio({"direct": summ["direct"], "splice": summ["splice"]}, "splice") is None
    summ["haproxy"]["median"] = Spread.of([20.0])
    assert latency.added_ratio(summ, "splice") is None  # HAProxy added nothing: no ratio, no division by zero


def test_redis_benchmark_csv_and_lowest_ratio():
    from benchmarks import redis_bench

    text = ('"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",'
            '"p99_latency_ms","max_latency_ms"\n"PING_INLINE","51020.41","0.252","0.016","0.223",'
            '"0.495","0.935","3.247"\n"SET","34722.22","0.350","0.032","0.279","0.831","1.839","3.295"\n'
            '"GET","53763.44","0.247","0.032","0.239","0.375","0.503","1.807"\n')
    assert redis_bench.parse_csv(text) == {"PING_INLINE": 51020.41, "SET": 34722.22, "GET": 53763.44}
    summ = redis_bench.summarize({
        "direct": [{"PING_INLINE": 100.0, "SET": 100.0, "GET": 100.0, "cpu_us": None}],
        "splice": [{"PING_INLINE": 80.0, "SET": 50.0, "GET": 90.0, "cpu_us": 20.0}]})
    assert redis_bench.worst_ratio(summ, "splice") == 0.5
    assert redis_bench.worst_ratio(summ, "haproxy") is None


def test_redis_scenario_skips_with_a_note_without_redis(monkeypatch):
    from benchmarks import redis_bench

    monkeypatch.setattr(redis_bench, "available", lambda: False)
    logged = []
    ctx = Context(quick=True)
    monkeypatch.setattr(ctx, "log", logged.append)
    (table,) = redis_bench.suite(ctx).tables
    assert "not installed" in table.measured and redis_bench.INSTALL in table.measured
    assert any("skipped" in m for m in logged)


def test_redis_benchmark_through_a_direct_connection():
    """A real redis-server and redis-benchmark (about 2 s); where redis is absent the scenario skips (above)."""
    import pytest

    from benchmarks import redis_bench

    if not redis_bench.available():
        pytest.skip("redis-server/redis-benchmark not installed: %s" % redis_bench.INSTALL)
    runs, failures = redis_bench.measure(["direct"], 300, 5, 1)
    assert not failures and set(runs["direct"][0]) >= set(redis_bench.TESTS)
    assert all(runs["direct"][0][t] > 0 for t in redis_bench.TESTS)


def test_workers_scale_table_ratios_and_machine():
    """The many-core table: x 1 against the same relay's one process, splice vs HAProxy at each count."""
    from benchmarks import workers_scale as ws

    rows = []
    for kind, n, rate, cpu in [("direct", 0, 50000, None), ("splice", 1, 10000, 100), ("haproxy", 1, 15000, 60),
                               ("splice", 2, 19000, 105), ("haproxy", 2, 28000, 62)]:
        label = "direct" if kind == "direct" else "%s %d" % (kind, n)
        rows.append({"label": label, "kind": kind, "n": n, "rate": rate, "cpu_us": cpu, "errors": 0,
                     "relay_cores": None if cpu is None else rate * cpu / 1e6, "load_cores": 1.5})
    text = ws.markdown(rows, 3, 1, 4, 4)
    lines = {l.split(" | ")[0].lstrip("| "): l for l in text.splitlines() if l.startswith("| ")}
    assert "| 19000 | 1.90 | 0.68 | 105 |" in lines["splice 2"]  # 19000/10000, 19000/28000
    assert "| 28000 | 1.87 | - | 62 |" in lines["haproxy 2"]
    assert "| 10000 | 1.00 | 0.67 |" in lines["splice 1"]
    assert text.startswith("Machine: ") and "%d cores" % os.cpu_count() in text.splitlines()[0]


def test_workers_scale_loads_share_one_origin_port():
    """Several echo origins on one port, several rate clients at once, through a direct connection (about 2 s)."""
    import shutil
    import tempfile

    from benchmarks import workers_scale as ws

    workdir = tempfile.mkdtemp()
    origins, port = ws.origins(2, workdir)
    try:
        assert all(o.proc.poll() is None for o in origins)  # the second bound the same port
        res = ws.run_rates(port, 0.5, 8, 2)
        assert res["sessions"] > 0 and res["errors"] == 0 and res["error"] is None
    finally:
        for o in origins:
            o.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_haproxy_threads_config():
    from benchmarks import workers_scale as ws

    import tempfile
    r = ws.HAProxyThreads(4, tempfile.mkdtemp(), 1234)
    cmd = r.command(5678)
    with open(cmd[-1]) as f:
        cfg = f.read()
    assert cfg.startswith("global\n    nbthread 4\n") and "bind 127.0.0.1:5678" in cfg and r.label == "haproxy, 4 threads"


def test_http_small_only_beside_a_baseline_tree(capsys, monkeypatch):
    """
    C{--small-only} runs the small requests and no body; C{--baseline TREE}
    runs that checkout's proxy beside this one (here the same tree) and
    compares them (about 3 s).  Without a tree, or with a folder that is not
    a checkout, it says so before starting anything.
    """
    import pytest

    from benchmarks import http_throughput as h

    monkeypatch.setattr(h.Relay, "baseline", None)  # (main sets it for the run)
    rc = h.main(["--small-only", "--small-seconds", "0.3", "--repeat", "1", "--relays", "http-proxy",
                 "--baseline", ROOT])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "small requests only" in out and "Content-Length" not in out and "chunked" not in out
    line = next(l for l in out.splitlines() if l.startswith("small keep-alive req/s"))
    assert len(line.split()) == 5 and all(int(x) > 0 for x in line.split()[3:])  # both proxies answered
    assert "http-proxy / http-proxy-baseline" in out
    for argv, words in ((["--relays", "http-proxy-baseline"], "needs --baseline TREE"),
                        (["--baseline", "/nonexistent"], "not a checkout")):
        with pytest.raises(SystemExit) as e:
            h.main(["--small-only"] + argv)
        assert e.value.code == 2 and words in capsys.readouterr().err
