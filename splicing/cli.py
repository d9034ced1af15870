"""
The command line: C{twistd splice tcp ...} (and C{twist splice tcp ...}).
"""

from twisted.application import service
from twisted.internet import endpoints
from twisted.python import usage

from splicing import paths
from splicing.demo import DemoOrigin
from splicing.relay import RelayFactory
from splicing.service import RelayService

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"


def _seconds(name):
    def parse(value):
        try:
            seconds = float(value)
        except ValueError:
            raise usage.UsageError("--%s takes a number of seconds, not %r" % (name, value))
        if not seconds >= 0 or seconds == float("inf"):
            raise usage.UsageError("--%s must be a finite number of seconds >= 0" % (name,))
        return seconds

    return parse


class TCPOptions(usage.Options):
    synopsis = "--listen ENDPOINT [--listen ...] [--connect ENDPOINT ...] [options]"
    longdesc = (
        "Relay TCP connections from every --listen endpoint to the --connect "
        "endpoints (round-robin), splicing both directions. Without --connect "
        "a local demo web site is started and used as the backend."
    )
    optFlags = [["no-splice", None, "Force the user-land path (no kernel splicing)."]]
    optParameters = [
        ["idle", None, 600.0, "End a session after this many seconds without a byte either way (0: never).", _seconds("idle")],
        ["backend", None, "auto", "Splice path: auto, kernel, mbuf or transport."],
    ]

    def __init__(self):
        usage.Options.__init__(self)
        self["listen"] = []
        self["connect"] = []

    def opt_listen(self, description):
        """A server endpoint string to accept clients on (repeatable)."""
        self["listen"].append(description)

    def opt_connect(self, description):
        """A client endpoint string of a backend (repeatable)."""
        self["connect"].append(description)

    def postOptions(self):
        if self["backend"] not in ("auto",) + paths.BACKENDS:
            raise usage.UsageError("--backend must be auto, kernel, mbuf or transport, not %r" % (self["backend"],))
        if self["no-splice"]:
            if self["backend"] == "kernel":
                raise usage.UsageError("--no-splice contradicts --backend kernel")
            if self["backend"] == "auto":
                self["backend"] = "mbuf"
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        for description in self["listen"]:
            _checkServer(description)
        for description in self["connect"]:
            _checkClient(description)


def _checkServer(description):
    from twisted.internet import reactor

    try:
        endpoints.serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        raise usage.UsageError("--listen %r: %s" % (description, e))


def _checkClient(description):
    from twisted.internet import reactor

    try:
        endpoints.clientFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        raise usage.UsageError("--connect %r: %s" % (description, e))


class Options(usage.Options):
    synopsis = "tcp [options]"
    subCommands = [["tcp", None, TCPOptions, "A TCP relay."]]

    def postOptions(self):
        if self.subCommand is None:
            raise usage.UsageError("choose a relay: tcp (see --help)")


class _DemoEndpoint:
    """Connects to the demo origin, whose port is known only once it started."""

    def __init__(self, reactor, origin):
        self.reactor = reactor
        self.origin = origin

    def connect(self, factory):
        return endpoints.TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.origin.port).connect(factory)


def makeService(options):
    from twisted.internet import reactor

    top = service.MultiService()
    sub = options.subOptions
    connect = [endpoints.clientFromString(reactor, c) for c in sub["connect"]]
    hint = "nc {host} {port}"
    if not connect:
        origin = DemoOrigin(reactor)
        origin.setServiceParent(top)
        connect = [_DemoEndpoint(reactor, origin)]
        hint = "curl http://{host}:{port}/"
    factory = RelayFactory(connect, backendPath=sub["backend"], idle=sub["idle"], reactor=reactor)
    RelayService(sub["listen"], factory, hint=hint, reactor=reactor).setServiceParent(top)
    return top
