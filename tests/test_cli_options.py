"""
Bad command lines and bad config files, in real twistd processes: each
exits non-zero with a one-line error naming the option (or file:line), and
nothing starts.  The processes run in parallel to keep this quick.
"""

import concurrent.futures
import re

import pytest

import procs

GOOD_CONNECT = "tcp:host=127.0.0.1:port=9"

BAD_OPTIONS = {
    "allow": (["tcp", "--allow", "10.0.0.0/33", "--connect", GOOD_CONNECT], "--allow 10.0.0.0/33: not a network"),
    "send-proxy": (["tcp", "--send-proxy", "v3"], "--send-proxy must be v1 or v2, not 'v3'"),
    "idle": (["tcp", "--idle", "-1"], "--idle must be a finite number >= 0, not '-1'"),
    "idle-word": (["tcp", "--idle", "soon"], "--idle takes a number, not 'soon'"),
    "max-sessions": (["tcp", "--max-sessions", "many"], "--max-sessions takes a number, not 'many'"),
    "connect": (["tcp", "--connect", "carrier-pigeon:host=x"], "--connect carrier-pigeon:host=x: "),
    "listen": (["tcp", "--listen", "tcp:notaport"], "--listen tcp:notaport: "),
    "metrics": (["tcp", "--metrics", "nope:1"], "--metrics nope:1: "),
    "no-splice": (["tcp", "--no-splice", "--backend", "kernel"], "--no-splice contradicts --backend kernel"),
    "nothing": ([], "choose a relay: tcp, udp or http"),
    "http-header-limit": (["http", "--header-limit", "200000"], "--header-limit may be at most 131072, not 200000"),
    "http-group": (["http", "--group", "nogroup"], "--group nogroup: expected NAME=ENDPOINT"),
    "http-set-header": (["http", "--set-header", "NoColon"], "--set-header:1: expected 'Name: value'"),
    "http-rules-missing": (["http", "--rules", "no-such-rules.txt"], "--rules no-such-rules.txt: No such file or directory"),
    "http-error-pages": (["http", "--error-pages", "sometimes"], "--error-pages must be auto, on or off, not 'sometimes'"),
    "unknown": (["tcp", "--frobnicate"], "option --frobnicate not recognized"),
}

CONFIGS = {
    # name: (file text, expected "relays.toml:LINE: ..." message)
    "syntax": ('[relay.a]\nlisten = "tcp:0"\nconnect = \n', "relays.toml:3: Invalid value"),
    "allow": (
        '# relays\n\n[relay.a]\nlisten = "tcp:0"\n\n[relay.b]\nallow = ["10.0.0.0/33"]\n',
        "relays.toml:7: relay b: --allow 10.0.0.0/33: not a network",
    ),
    "unknown-key": ('[relay.a]\nlisten = "tcp:0"\nspeed = 11\n', "relays.toml:3: relay a: speed is not an option of a tcp relay"),
    "type": ('[relay.a]\ntype = "sctp"\n', "relays.toml:2: relay a: type must be one of"),
    "flag": ('[relay.a]\nno-splice = "yes"\n', "relays.toml:2: relay a: --no-splice is a flag: true or false"),
    "metrics-in-relay": ('[relay.a]\nmetrics = "tcp:0"\n', "relays.toml:2: relay a: metrics belongs at the top of the file"),
    "empty": ("# nothing\n", "relays.toml:1: no relays"),
    "top-level": ('speed = 1\n[relay.a]\n', "relays.toml:1: unknown setting 'speed'"),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("configs")
    jobs = {("option", k): args for k, (args, _) in BAD_OPTIONS.items()}
    for name, (text, _) in CONFIGS.items():
        folder = tmp / name
        folder.mkdir()
        (folder / "relays.toml").write_text(text)
        jobs[("config", name)] = ["--config", "relays.toml"], folder
    jobs[("config", "missing")] = ["--config", "missing.toml"], tmp
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = {}
        for key, job in jobs.items():
            args, cwd = job if isinstance(job, tuple) else (job, None)
            futures[key] = pool.submit(procs.run_twistd, args, cwd=cwd)
        return {key: f.result() for key, f in futures.items()}


def _error_line(output):
    lines = [l for l in output.strip().splitlines() if l.strip()]
    return lines[-1]


@pytest.mark.parametrize("name", sorted(BAD_OPTIONS))
def test_bad_option(results, name):
    status, output = results[("option", name)]
    assert status != 0
    assert BAD_OPTIONS[name][1] in _error_line(output), output
    assert "listening on" not in output and "Traceback" not in output


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_bad_config_file(results, name):
    status, output = results[("config", name)]
    assert status != 0
    line = _error_line(output)
    assert re.search(": " + re.escape(CONFIGS[name][1]), line), output
    assert "listening on" not in output and "Traceback" not in output


def test_bad_rules_file_names_file_line_and_word(tmp_path):
    (tmp_path / "rules.txt").write_text("# fine\nblock request path \"/a*\"\nblock request bogus\n")
    status, output = procs.run_twistd(["http", "--rules", "rules.txt"], cwd=tmp_path)
    assert status != 0
    assert "rules.txt:3: unknown keyword (at 'bogus')" in _error_line(output), output
    assert "listening on" not in output


def test_address_in_use_exits_non_zero():
    """A relay that cannot listen must not look like a success to its supervisor."""
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        status, output = procs.run_twistd(["tcp", "--listen", "tcp:%d:interface=127.0.0.1" % port,
                                           "--connect", GOOD_CONNECT])
    finally:
        busy.close()
    assert status == 1, output
    assert "cannot listen on tcp:%d" % port in output


def test_udp_address_in_use_exits_non_zero_without_a_traceback():
    """The UDP relay says so in one line too (its port binds inside startService, not through an endpoint)."""
    import socket

    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", 0))
    try:
        port = busy.getsockname()[1]
        status, output = procs.run_twistd(["udp", "--listen", "udp:%d:interface=127.0.0.1" % port,
                                           "--connect", "udp:host=127.0.0.1:port=9"])
    finally:
        busy.close()
    assert status == 1, output
    assert "cannot listen on udp:%d:interface=127.0.0.1: " % port in output, output
    assert "Address already in use" in output
    assert "Traceback" not in output, output


def test_missing_config_file(results):
    status, output = results[("config", "missing")]
    assert status != 0
    assert "missing.toml: No such file or directory" in _error_line(output)
