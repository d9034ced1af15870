"""
The command line: C{twistd splice tcp|udp ...}, C{twistd splice --config
FILE} (and the same with C{twist}).  Options are checked completely before
anything starts; each error names the option (or the file and line).
"""

import sys

from twisted.internet import endpoints
from twisted.python import usage

from splicing.app import config as configfile
from splicing import paths
from splicing.relay import proxyheader
from splicing.relay.access import parseNetwork

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"


def _number(name, kind=float, minimum=0):
    """A coerce function for --name: a finite number >= minimum."""

    def parse(value):
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise usage.UsageError("--%s takes a number, not %r" % (name, value))
        if not number >= minimum or number == float("inf"):
            raise usage.UsageError("--%s must be a finite number >= %s, not %r" % (name, minimum, value))
        return number

    parse.coerceDoc = ""
    return parse


def _repeatable(key, doc):
    """An opt_KEY method that collects every value of a repeatable option."""

    def opt(self, value):
        self[key].append(value)

    opt.__doc__ = doc
    return opt


def _reactor():
    from twisted.internet import reactor

    return reactor


class _Shared(usage.Options):
    optParameters = [
        ["metrics", None, None, "Serve Prometheus metrics on this server endpoint (e.g. tcp:9100)."],
    ]

    def _checkMetrics(self):
        if self["metrics"] is not None:
            _checkServer("metrics", self["metrics"])


class _StreamOptions(_Shared):
    """What every stream relay (tcp, http) takes: endpoints, --allow, paths, limits."""

    optFlags = [["no-splice", None, "Force the user-land path (no kernel splicing)."]]
    optParameters = [
        ["connect-timeout", None, 10.0, "Seconds a backend connect may take before the next is tried.",
         _number("connect-timeout")],
        ["max-sessions", None, 0, "Concurrent sessions; more clients wait in the listen backlog (0: no cap).",
         _number("max-sessions", int)],
        ["shutdown-timeout", None, 30.0, "On SIGTERM, seconds running sessions may take to finish.",
         _number("shutdown-timeout")],
        ["backend", None, "auto", "Splice path: auto, kernel, mbuf or transport."],
        ["idle", None, 600.0, "End a session after this many seconds without a byte either way (0: never).",
         _number("idle")],
    ]

    def __init__(self):
        _Shared.__init__(self)
        self["listen"], self["connect"], self["allow"] = [], [], []

    opt_listen = _repeatable("listen", "A server endpoint string to accept clients on (repeatable).")
    opt_connect = _repeatable("connect", "A client endpoint string of a backend (repeatable).")
    opt_allow = _repeatable("allow", "Accept only clients from this network, e.g. 10.0.0.0/8 (repeatable).")

    def postOptions(self):
        if self["backend"] not in ("auto",) + paths.BACKENDS:
            raise usage.UsageError("--backend must be auto, kernel, mbuf or transport, not %r" % (self["backend"],))
        if self["no-splice"]:
            if self["backend"] == "kernel":
                raise usage.UsageError("--no-splice contradicts --backend kernel")
            if self["backend"] == "auto":
                self["backend"] = "mbuf"
        for network in self["allow"]:
            try:
                parseNetwork(network)
            except ValueError as e:
                raise usage.UsageError("--allow %s" % (e,))
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        for description in self["listen"]:
            _checkServer("listen", description)
        for description in self["connect"]:
            _checkClient("connect", description)
        self._checkMetrics()


class TCPOptions(_StreamOptions):
    synopsis = "--listen ENDPOINT [--listen ...] [--connect ENDPOINT ...] [options]"
    longdesc = (
        "Relay TCP connections from every --listen endpoint to the --connect "
        "endpoints (round-robin with failover), splicing both directions. Without "
        "--connect a local demo web site is started and used as the backend."
    )
    optParameters = [
        ["half-close-timeout", None, 0.0, "End a half-closed session after this many seconds (0: only --idle).",
         _number("half-close-timeout")],
        ["send-proxy", None, None, "Send a PROXY protocol header (v1 or v2) to the backend."],
    ]

    def postOptions(self):
        _StreamOptions.postOptions(self)
        if self["send-proxy"] is not None and self["send-proxy"] not in proxyheader.VERSIONS:
            raise usage.UsageError("--send-proxy must be v1 or v2, not %r" % (self["send-proxy"],))


#: --error-pages: RuleSet.errorPages
_ERROR_PAGES = {"auto": None, "on": True, "off": False}


class HTTPOptions(_StreamOptions):
    synopsis = "--listen ENDPOINT [--connect ENDPOINT ...] [--rules FILE] [options]"
    longdesc = (
        "An HTTP-filtering proxy: request and response heads are parsed strictly and "
        "filtered in user land (relayd rules), bodies are spliced. Without --connect a "
        "local demo web site is the backend."
    )
    optFlags = [
        ["websockets", None, "Allow protocol upgrades (WebSocket); refused with 403 otherwise."],
        ["connect-method", None, "Allow CONNECT tunnels; refused with 403 otherwise."],
    ]
    optParameters = [
        ["rules", None, None, "A file of relayd 'protocol http' filter rules."],
        ["header-limit", None, 8192, "Largest request or response head in bytes (at most 131072).",
         _number("header-limit", int, 256)],
        ["max-header-lines", None, 100, "Most header lines in a head.", _number("max-header-lines", int, 1)],
        ["header-timeout", None, 10.0, "Seconds a request head may take to arrive (408 after).",
         _number("header-timeout")],
        ["backend-timeout", None, 60.0, "Seconds the backend may take to answer (504 after).",
         _number("backend-timeout")],
        ["error-pages", None, "auto", "What a request blocked by a rule gets: auto (the shorthands such as "
         "--block-path answer 403; a rules file answers only if it says 'return error', as relayd), "
         "on (always an error page) or off (the connection is closed)."],
    ]

    def __init__(self):
        _StreamOptions.__init__(self)
        for key in ("group", "block-path", "set-header", "remove-header",
                    "set-response-header", "remove-response-header"):
            self[key] = []

    opt_group = _repeatable("group", "A named backend for rules' 'forward to <NAME>': NAME=ENDPOINT (repeatable).")
    opt_block_path = _repeatable("block-path", "Refuse requests whose path matches this glob (repeatable).")
    opt_set_header = _repeatable("set-header", "Set a request header: 'Name: value' (repeatable).")
    opt_remove_header = _repeatable("remove-header", "Remove a request header (repeatable).")
    opt_set_response_header = _repeatable("set-response-header", "Set a response header: 'Name: value'.")
    opt_remove_response_header = _repeatable("remove-response-header", "Remove a response header (repeatable).")

    def postOptions(self):
        from splicing.http.rules import RuleError, parseRules, shorthandRules

        _StreamOptions.postOptions(self)
        if self["header-limit"] > 131072:
            raise usage.UsageError("--header-limit may be at most 131072, not %d" % (self["header-limit"],))
        groups = {}
        for entry in self["group"]:
            name, eq, description = entry.partition("=")
            if not eq or not name:
                raise usage.UsageError("--group %s: expected NAME=ENDPOINT" % (entry,))
            _checkClient("group", description)
            groups.setdefault(name, []).append(description)
        self["groups"] = groups
        try:
            rules = shorthandRules(self["block-path"], self["set-header"], self["remove-header"],
                                   self["set-response-header"], self["remove-response-header"])
            if self["rules"] is not None:
                try:
                    with open(self["rules"]) as f:
                        text = f.read()
                except OSError as e:
                    raise usage.UsageError("--rules %s: %s" % (self["rules"], e.strerror))
                rules = parseRules(text, self["rules"]) + rules
            rules.checkGroups(list(groups))
        except RuleError as e:
            raise usage.UsageError(str(e))
        if self["error-pages"] not in _ERROR_PAGES:
            raise usage.UsageError("--error-pages must be auto, on or off, not %r" % (self["error-pages"],))
        rules.errorPages = _ERROR_PAGES[self["error-pages"]]
        self["ruleset"] = rules if len(rules) or rules.returnError else None


class UDPOptions(_Shared):
    synopsis = "--listen udp:PORT[:interface=ADDR] --connect udp:host=H:port=P [options]"
    longdesc = "Relay UDP datagrams, one session per client address, ended after --idle seconds."
    optParameters = [
        ["listen", None, None, "Where to receive datagrams: udp:PORT[:interface=ADDR]."],
        ["connect", None, None, "Where to send them: udp:host=H:port=P."],
        ["idle", None, 60.0, "End a client's session after this many seconds without a datagram.",
         _number("idle")],
        ["max-sessions", None, 10000, "Concurrent client sessions.", _number("max-sessions", int, 1)],
    ]

    def postOptions(self):
        try:
            from splicing.relay import udp
        except ImportError as e:  # built in parallel; the TCP relays do not need it
            raise usage.UsageError("udp relays are not available: %s" % (e,))

        for name, parse in (("listen", udp.parseUDPListen), ("connect", udp.parseUDPConnect)):
            if self[name] is None:
                raise usage.UsageError("--%s is required" % (name,))
            try:
                parse(self[name])
            except ValueError as e:
                raise usage.UsageError("--%s %s: %s" % (name, self[name], e))
        self._checkMetrics()


def _check(option, description, parse):
    """Parse an endpoint string now, so a bad one is a usage error naming the option."""
    try:
        parse(_reactor(), description)
    except (ValueError, TypeError, KeyError) as e:
        raise usage.UsageError("--%s %s: %s" % (option, description, e))


def _checkServer(option, description):
    _check(option, description, endpoints.serverFromString)


def _checkClient(option, description):
    from splicing.relay.balance import clientFromString

    _check(option, description, clientFromString)


_WORKERS = ["workers", None, None, "Serve from N processes sharing the listening sockets (default 1).",
            _number("workers", int, 1)]


class _CommandLineOnly:
    """
    Options a relay takes on the command line but not in a config file,
    which the whole process shares: C{--workers}.
    """

    optParameters = [_WORKERS]


_commandLineClasses = {}


def _onCommandLine(options):
    """C{options} (a relay's usage.Options class) with L{_CommandLineOnly}'s options."""
    if options not in _commandLineClasses:
        _commandLineClasses[options] = type(options.__name__, (options, _CommandLineOnly), {})
    return _commandLineClasses[options]


class Options(usage.Options):
    synopsis = "tcp|udp|http [options] | --config FILE"
    longdesc = "Spliced relays. See docs/usage.md, or 'twistd splice tcp --help'."
    optParameters = [["config", "c", None, "A TOML file of relays (reloaded on SIGHUP)."], _WORKERS]

    @property
    def subCommands(self):
        return [[kind, None, _onCommandLine(options), doc] for kind, (options, _, doc) in sorted(RELAYS.items())]

    def parseOptions(self, options=None):
        """Parse C{options}, kept as C{argv}: worker processes parse the same (L{splicing.app.workers})."""
        self.argv = list(sys.argv[1:] if options is None else options)
        usage.Options.parseOptions(self, options)

    def postOptions(self):
        sub = getattr(self, "subOptions", None) or {}
        workers = [w for w in (self["workers"], sub.get("workers")) if w is not None]
        if len(workers) > 1:
            raise usage.UsageError("--workers is given twice")
        self["workers"] = workers[0] if workers else 1
        if self["config"] and self.subCommand:
            raise usage.UsageError("--config and a %s subcommand exclude each other" % (self.subCommand,))
        if self["config"]:
            path = self["config"]
            self["reload"] = lambda: configfile.load(path, {k: v[0] for k, v in RELAYS.items()})
            try:
                self["relays"] = self["reload"]()
            except configfile.ConfigError as e:
                raise usage.UsageError(str(e))
        elif self.subCommand is None:
            raise usage.UsageError("choose a relay: tcp, udp or http (see --help), or --config FILE")
        else:
            relay = configfile.Relay(self.subCommand, None, self.subOptions)
            self["relays"] = configfile.Config({self.subCommand: relay}, self.subOptions["metrics"])


class _DemoEndpoint:
    """Connects to the demo origin, whose port is known only once it started."""

    description = "demo-origin"  # the target's name in metrics, as the TCP relay's

    def __init__(self, reactor, origin):
        self.reactor = reactor
        self.origin = origin

    def connect(self, factory):
        return endpoints.TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.origin.port).connect(factory)


def _tcpService(name, options, metrics, reactor):
    from splicing.relay.balance import Balancer, Target, clientFromString
    from splicing.relay.tcp import RelayFactory

    targets = [Target(clientFromString(reactor, c), c) for c in options["connect"]]
    hint, origin = "nc {host} {port}", None
    if not targets:
        origin, endpoint = _demo(reactor)
        targets = [Target(endpoint, "demo-origin")]
        hint = "curl http://{host}:{port}/"
    factory = RelayFactory(
        Balancer(targets, reactor, timeout=options["connect-timeout"]),
        backendPath=options["backend"],
        idle=options["idle"],
        halfCloseTimeout=options["half-close-timeout"],
        sendProxy=options["send-proxy"],
        allow=options["allow"],
        maxSessions=options["max-sessions"],
        name=name,
        metrics=metrics,
        reactor=reactor,
    )
    return _relayService(options, factory, origin, hint, reactor)


def _demo(reactor):
    """The demo origin (a service) and an endpoint that reaches it."""
    from splicing.app.demo import DemoOrigin

    origin = DemoOrigin(reactor)
    return origin, _DemoEndpoint(reactor, origin)


def _relayService(options, factory, origin, hint, reactor):
    """A stream relay's service, with the demo origin as its child when there is one."""
    from splicing.app.service import RelayService

    relay = RelayService(options["listen"], factory, hint=hint, reactor=reactor,
                         shutdownTimeout=options["shutdown-timeout"])
    if origin is not None:
        origin.setServiceParent(relay)
    return relay


def _backends(reactor, options, descriptions):
    """One client endpoint: round-robin with failover over C{descriptions}."""
    from splicing.relay.balance import BalancedEndpoint, Balancer, Target, clientFromString

    targets = [Target(clientFromString(reactor, c), c) for c in descriptions]
    return BalancedEndpoint(Balancer(targets, reactor, timeout=options["connect-timeout"]))


def _httpService(name, options, metrics, reactor):
    from splicing.http.proxy import HTTPProxyFactory

    origin = None
    if options["connect"]:
        default = [_backends(reactor, options, options["connect"])]
    else:
        origin, endpoint = _demo(reactor)
        default = [endpoint]
    factory = HTTPProxyFactory(
        default,
        groups={g: [_backends(reactor, options, d)] for g, d in options["groups"].items()},
        rules=options["ruleset"],
        backendPath=options["backend"],
        headerLimit=options["header-limit"],
        maxHeaderLines=options["max-header-lines"],
        headerTimeout=options["header-timeout"],
        backendTimeout=options["backend-timeout"],
        idle=options["idle"],
        allowUpgrade=options["websockets"],
        allowConnect=options["connect-method"],
        allow=options["allow"],
        maxSessions=options["max-sessions"],
        name=name,
        metrics=metrics,
        reactor=reactor,
    )
    return _relayService(options, factory, origin, "curl http://{host}:{port}/", reactor)


def _udpService(name, options, metrics, reactor):
    from splicing.relay.udp import UDPRelayService

    return UDPRelayService(options["listen"], options["connect"], idle=options["idle"],
                           maxSessions=options["max-sessions"], reactor=reactor, name=name, metrics=metrics)


#: The relay kinds: subcommand (and config "type") -> (usage.Options class,
#: builder (name, options, metrics, reactor) -> IService, description).
RELAYS = {
    "tcp": (TCPOptions, _tcpService, "A TCP relay."),
    "http": (HTTPOptions, _httpService, "An HTTP-filtering proxy (relayd rules, bodies spliced)."),
    "udp": (UDPOptions, _udpService, "A UDP relay."),
}


def buildRelay(name, relay, metrics, reactor):
    """The IService of one relay (a L{splicing.app.config.Relay}) called C{name}."""
    return RELAYS[relay.kind][1](name, relay.options, metrics, reactor)


def makeService(options):
    from splicing.app.service import makeService

    return makeService(options)
