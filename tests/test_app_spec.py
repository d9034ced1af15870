"""
Relay descriptions (splicing.app.spec): the command line and the config file
describe the same relay the same way, the description survives the trip to
a worker process unchanged, and a reload sees exactly what changed.
"""

import dataclasses
import json

import pytest
from zope.interface.verify import verifyObject

from splicing.app import cli, config, spec
from splicing.app.metrics import RelayMetrics
from splicing.app.spec import Config, RelaySpec, difference
from splicing.interfaces import IRelayMetrics

ARGS = ["--listen", "tcp:0:interface=127.0.0.1", "--listen", "unix:/tmp/x.sock", "--connect",
        "tcp:host=127.0.0.1:port=9", "--idle", "30", "--allow", "10.0.0.0/8", "--no-splice"]
TOML = """
[relay.tcp]
listen = ["tcp:0:interface=127.0.0.1", "unix:/tmp/x.sock"]
connect = "tcp:host=127.0.0.1:port=9"
idle = 30
allow = ["10.0.0.0/8"]
no-splice = true
"""


def _commandLine(args):
    options = cli.Options()
    options.parse(args)
    return options["relays"]


def test_command_line_and_config_file_describe_the_same_relay(tmp_path):
    path = tmp_path / "relays.toml"
    path.write_text(TOML)
    fromFile = config.load(str(path), cli.KINDS)
    fromArgs = _commandLine(["tcp"] + ARGS)
    assert fromFile.relays["tcp"] == fromArgs.relays["tcp"]
    relay = fromArgs.relays["tcp"]
    assert relay.listen == ("tcp:0:interface=127.0.0.1", "unix:/tmp/x.sock")
    assert relay.connect == ("tcp:host=127.0.0.1:port=9",)
    assert relay.options["idle"] == 30.0 and relay.options["backend"] == "mbuf"
    assert "workers" not in relay.options and "metrics" not in relay.options


def test_a_description_is_immutable_and_survives_json(tmp_path):
    rules = tmp_path / "rules.txt"
    rules.write_text('block request path "/admin*"\n')
    described = _commandLine(["--workers", "3", "http", "--rules", str(rules), "--group", "api=tcp:host=h:port=1",
                              "--metrics", "tcp:0"] + ARGS)
    relay = described.relays["http"]
    assert relay.files == {str(rules): 'block request path "/admin*"\n'}
    with pytest.raises(dataclasses.FrozenInstanceError):
        relay.listen = ()
    with pytest.raises(TypeError):
        relay.options["idle"] = 1
    again = Config.fromJSON(json.loads(json.dumps(described.toJSON())))
    assert again == described and again.workers == 3 and again.metrics == "tcp:0"
    assert hash(again.relays["http"]) == hash(relay)


def test_reload_replaces_only_what_changed(tmp_path):
    rules = tmp_path / "rules.txt"
    rules.write_text('block request path "/admin*"\n')
    old = _commandLine(["http", "--rules", str(rules)] + ARGS).relays
    assert difference(old, _commandLine(["http", "--rules", str(rules)] + ARGS).relays) == ([], [])
    rules.write_text('block request path "/private*"\n')  # the file's text is part of the description
    assert difference(old, _commandLine(["http", "--rules", str(rules)] + ARGS).relays) == (["http"], ["http"])
    renamed = {"other": dataclasses.replace(old["http"], name="other")}
    assert difference(old, renamed) == (["other"], ["http"])


def test_relay_metrics_provide_the_interface_relays_report_to():
    assert verifyObject(IRelayMetrics, RelayMetrics())


def test_fields_of_a_description():
    """What every description has; a relay's own options are open-ended (its Options class lists them)."""
    assert [f.name for f in dataclasses.fields(RelaySpec)] == ["kind", "name", "listen", "connect", "options", "files"]


@pytest.mark.parametrize("description, plain", [
    ("tcp:0:interface=127.0.0.1", True), ("TCP6:host=::1:port=9", True), ("unix:/tmp/x.sock", True),
    ("udp:5353", True), ("systemd:domain=INET:index=0", True), ("haproxy:tcp:0", True),
    ("ssl:0:privateKey=k.pem", False), ("haproxy:ssl:0:privateKey=k.pem", False),
    ("tls:example.com:443", False), ("onion:80", False), ("haproxy", False),
])
def test_which_endpoints_surely_need_no_tls(description, plain):
    assert spec.plainEndpoint(description) is plain


def test_a_description_names_tls_in_any_listen_connect_or_group():
    def described(**fields):
        relay = RelaySpec("http", "h", fields.get("listen", "tcp:0"), fields.get("connect", "tcp:host=a:port=1"),
                          {"group": fields.get("group", ())})
        return Config({"h": relay, "t": RelaySpec("tcp", "t", "tcp:0", "unix:/tmp/b.sock")})

    assert not spec.namesTLS(described())
    assert spec.namesTLS(described(listen="ssl:0:privateKey=k.pem"))
    assert spec.namesTLS(described(connect=["tcp:host=a:port=1", "tls:a:443"]))
    assert spec.namesTLS(described(group=["api=tls:b:443"]))
