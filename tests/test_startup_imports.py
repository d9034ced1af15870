"""
What a relay process imports: each process holds every module it imported
for its whole life (a few MiB each for prometheus_client, twisted.web and
the HTTP layer), so a relay imports only what its configuration uses.  Each
case parses a command line, builds the service and runs it for a moment in
a fresh interpreter, then lists the modules it holds.
"""

import json
import subprocess
import sys

import pytest

#: Modules that only some configurations use.
OPTIONAL = ("prometheus_client", "twisted.web", "splicing.http", "splicing.app.web",
            "splicing.app.metrics", "splicing.app.workers")

RUN = """
import json, sys
from twisted.internet import reactor
from splicing.app import cli
options = cli.Options()
options.parseOptions(sys.argv[1:])
top = cli.makeService(options)
reactor.callWhenRunning(top.startService)
reactor.callLater(0.3, reactor.stop)
reactor.run()
print(json.dumps(sorted(m for m in sys.modules if m.startswith(%r))))
""" % (OPTIONAL,)


def loaded(argv):
    """Which of L{OPTIONAL} a relay started with C{argv} (after C{splice}) imported."""
    done = subprocess.run([sys.executable, "-c", RUN] + argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    names = json.loads(done.stdout.splitlines()[-1])
    return {prefix for prefix in OPTIONAL for name in names if name == prefix or name.startswith(prefix + ".")}


CONNECT = ["--connect", "tcp:host=127.0.0.1:port=9"]
LISTEN = ["--listen", "tcp:0:interface=127.0.0.1"]


@pytest.mark.parametrize("argv, wanted", [
    (["tcp"] + LISTEN + CONNECT, set()),
    (["udp", "--listen", "udp:0:interface=127.0.0.1", "--connect", "udp:host=127.0.0.1:port=9"], set()),
    (["tcp"] + LISTEN + CONNECT + ["--metrics", "tcp:0:interface=127.0.0.1"],
     {"prometheus_client", "twisted.web", "splicing.app.web", "splicing.app.metrics"}),
    (["tcp"] + LISTEN, {"twisted.web"}),  # the demo origin is a twisted.web site
    (["http"] + LISTEN + CONNECT, {"splicing.http"}),
], ids=["tcp", "udp", "tcp-metrics", "tcp-demo", "http"])
def test_a_relay_imports_what_its_configuration_uses(argv, wanted):
    assert loaded(argv) == wanted
