"""
The command line: C{twistd splice tcp|udp ...}, C{twistd splice --config
FILE} (and the same with C{twist}).  Options are checked completely before
anything starts; each error names the option (or the file and line).

Parsing ends in a description (L{splicing.app.spec.Config}, C{options["relays"]});
L{makeService} runs it.  A relay kind's options are listed once, in its
C{usage.Options} class below: the config file accepts the same keys and
every description carries them.
"""

import dataclasses
import os
import sys

from twisted.application import service
from twisted.python import usage

from splicing import paths
from splicing.app import config as configfile, validation
from splicing.app.build import ERROR_PAGES, buildRelay, parseGroups, ruleSet
from splicing.app.service import relaysService
from splicing.app.spec import Config, RelaySpec
from splicing.relay import checks, proxyheader, udp
from splicing.relay.access import parseNetwork
from splicing.relay.balance import POLICIES

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"


def _number(name, kind=float, minimum=0):
    """A coerce function for --name: a finite number >= minimum."""

    def parse(value):
        try:
            number = kind(value)
        except (TypeError, ValueError):
            whole = " whole" if kind is int and _isNumber(value) else ""
            raise usage.UsageError("--%s takes a%s number, not %r" % (name, whole, value))
        if not number >= minimum or number == float("inf"):
            raise usage.UsageError("--%s must be a finite number >= %s, not %r" % (name, minimum, value))
        return number

    parse.coerceDoc = ""
    return parse


def _isNumber(value):
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _repeatable(key, doc):
    """An opt_KEY method that collects every value of a repeatable option."""

    def opt(self, value):
        self[key].append(value)

    opt.__doc__ = doc
    return opt


def _reactor():
    # twist installs the reactor it was asked for after importing this module
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
        ["balance", None, "roundrobin", "How each session's backend is chosen: " + ", ".join(POLICIES) + "."],
        ["check", None, None, "Check the backends actively: tcp, 'http /PATH [code N]' or "
         "'send STRING expect STRING'; a failing one leaves the rotation."],
        ["check-interval", None, checks.DEFAULT_INTERVAL, "Seconds between two checks of a backend.",
         _number("check-interval", float, 0.05)],
        ["check-timeout", None, checks.DEFAULT_TIMEOUT, "Seconds a check may take before it fails.",
         _number("check-timeout", float, 0.01)],
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
        if self["balance"] not in POLICIES:
            raise usage.UsageError("--balance must be one of %s, not %r" % (", ".join(POLICIES), self["balance"]))
        if self["check"] is not None:
            try:
                checks.parseCheck(self["check"])
            except ValueError as e:
                raise usage.UsageError("--check %s" % (e,))
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
        _StreamOptions.postOptions(self)
        if self["header-limit"] > 131072:
            raise usage.UsageError("--header-limit may be at most 131072, not %d" % (self["header-limit"],))
        try:
            groups = parseGroups(self["group"])
        except ValueError as e:
            raise usage.UsageError(str(e))
        for descriptions in groups.values():
            for description in descriptions:
                _checkClient("group", description)
        self.files = {}
        if self["rules"] is not None:
            try:
                with open(self["rules"]) as f:
                    self.files[self["rules"]] = f.read()
            except OSError as e:
                raise usage.UsageError("--rules %s: %s" % (self["rules"], e.strerror))
        if self["error-pages"] not in ERROR_PAGES:
            raise usage.UsageError("--error-pages must be auto, on or off, not %r" % (self["error-pages"],))
        try:
            ruleSet(self, self.files)
        except ValueError as e:  # splicing.http.rulesyntax.RuleError
            raise usage.UsageError(str(e))


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
        for name, parse in (("listen", udp.parseUDPListen), ("connect", udp.parseUDPConnect)):
            if self[name] is None:
                raise usage.UsageError("--%s is required" % (name,))
            try:
                parse(self[name])
            except ValueError as e:
                raise usage.UsageError("--%s %s: %s" % (name, self[name], e))
        self._checkMetrics()


def _checkEndpoint(check, option, description):
    """Parse an endpoint string now, so a bad one is a usage error naming the option."""
    try:
        check(_reactor(), description)
    except validation.EndpointError as e:
        raise usage.UsageError("--%s %s: %s" % (option, description, e))


def _checkServer(option, description):
    _checkEndpoint(validation.checkServer, option, description)


def _checkClient(option, description):
    _checkEndpoint(validation.checkClient, option, description)


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


#: The end of C{twistd splice --help}: what to copy and paste, as the help of
#: an installed package has no docs/ folder beside it.
EXAMPLES = """
Examples (-n: stay in the foreground; --pidfile=: no twistd.pid, so several
relays can run from one directory):
  twistd -n --pidfile= splice tcp --listen tcp:8080:interface=127.0.0.1
      a TCP relay to a local demo web site: curl http://127.0.0.1:8080/
  twistd -n --pidfile= splice tcp --listen tcp:2222 --connect tcp:host=10.0.0.11:port=22
  twistd -n --pidfile= splice udp --listen udp:5353:interface=127.0.0.1 \\
      --connect udp:host=9.9.9.9:port=53 --idle 30
  twistd -n --pidfile= splice http --listen tcp:8080:interface=127.0.0.1 \\
      --connect tcp:host=127.0.0.1:port=8000 --block-path '/admin*'
  twistd -n --pidfile= splice --config relays.toml     (SIGHUP reloads it)
  twist splice tcp ...                                  (JSON logs off a terminal)
Each relay's options: twistd splice tcp --help (udp, http likewise).
The full guide, the config file and the HTTP filter rules: docs/usage.md,
docs/http.md and docs/http-rules.md in splicing's source tree.
"""


def _program():
    """twistd or twist, as the user typed it (not its full path)."""
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    if name in ("twistd", "twist"):
        return name
    return "twist" if name == "__main__.py" else "twistd"


def _errorLine(options, error):
    """The one line a usage error prints: where, what, and where the full help is."""
    command = "%s splice" % (_program(),)
    helpCommand = command + (" " + options.subCommand if getattr(options, "subCommand", None) else "")
    return "%s: error: %s (see '%s --help')" % (command, error, helpCommand)


class Options(usage.Options):
    """
    C{twistd splice}'s options.  Once parsed, C{self["relays"]} is the
    description of what to run (a L{Config}) and C{self["reload"]} a
    callable that reads it again (the C{--config} file, or this command
    line with its C{--rules} files): SIGHUP's.
    """

    synopsis = "tcp|udp|http [options] | --config FILE"
    longdesc = "Spliced relays: TCP, UDP and an HTTP-filtering proxy, from the command line or a TOML file."

    def getUsage(self, width=None):
        """Twisted's usage, then L{EXAMPLES} (a longdesc would lose their lines to rewrapping)."""
        text = usage.Options.getUsage(self, width)
        return text if getattr(self, "subOptions", None) is not None else text + EXAMPLES
    optParameters = [["config", "c", None, "A TOML file of relays (reloaded on SIGHUP)."], _WORKERS]

    @property
    def subCommands(self):
        return [[kind, None, _onCommandLine(options), doc] for kind, (options, doc) in sorted(RELAYS.items())]

    def parseOptions(self, options=None):
        """
        What twistd and twist call: bad input ends the process with status 1
        and one line (they would print the whole usage before it, or a
        traceback for anything but a C{usage.UsageError}).
        """
        try:
            self.parse(options)
        except usage.UsageError as e:
            raise SystemExit(_errorLine(self, e))

    def parse(self, options=None):
        """Parse C{options}, kept as C{argv} to parse again on SIGHUP.  Raises C{usage.UsageError}."""
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
            self["reload"] = _fileLoader(self["config"], self["workers"])
            try:
                self["relays"] = self["reload"]()
            except configfile.ConfigError as e:
                raise usage.UsageError(str(e))
        elif self.subCommand is None:
            raise usage.UsageError("choose a relay: tcp, udp or http, or --config FILE")
        else:
            relay = RelaySpec.fromOptions(self.subCommand, self.subCommand, self.subOptions,
                                          getattr(self.subOptions, "files", {}))
            self["relays"] = Config({relay.name: relay}, self.subOptions["metrics"], self["workers"])
            self["reload"] = _commandLineLoader(self.argv)


def _fileLoader(path, workers):
    """A callable that reads the relays of the config file at C{path} (raises L{configfile.ConfigError})."""

    def load():
        return dataclasses.replace(configfile.load(path, KINDS), workers=workers)

    return load


def _commandLineLoader(argv):
    """A callable that parses C{argv} again (raises C{usage.UsageError})."""

    def load():
        options = Options()
        options.parse(argv)
        return options["relays"]

    return load


#: The relay kinds: subcommand (and config "type") -> (usage.Options class, description).
RELAYS = {
    "tcp": (TCPOptions, "A TCP relay."),
    "http": (HTTPOptions, "An HTTP-filtering proxy (relayd rules, bodies spliced)."),
    "udp": (UDPOptions, "A UDP relay."),
}
KINDS = {kind: options for kind, (options, _) in RELAYS.items()}


def runService(config, load, reactor):
    """
    A C{MultiService} that runs C{config} (a L{Config}): its relays, or
    with C{workers} > 1 the master of that many worker processes
    (L{splicing.app.workers.WorkerPool}); its metrics endpoint, if any.
    What only some configurations use is imported only by them: the
    master, the metrics endpoint (prometheus_client, twisted.web).  C{load} reads the
    description again on SIGHUP (a config file's relays; a worker pool's).
    """
    top = service.MultiService()
    relays = metrics = None
    if config.workers > 1:
        from splicing.app.workers import WorkerPool  # the master's machinery: only with --workers

        relays = WorkerPool(config, load, reactor)
        metrics = relays.metrics
    if config.metrics:
        from splicing.app.web import MetricsService  # prometheus_client, twisted.web: only with --metrics

        served = MetricsService(config.metrics, metrics, reactor)
        served.setServiceParent(top)
        metrics = served.metrics
    if relays is None:
        relays = relaysService(config, lambda spec: buildRelay(spec, metrics, reactor),
                               load if config.path else None, reactor)
    relays.setServiceParent(top)
    return top


def makeService(options):
    """What C{twistd splice} runs, from its parsed L{Options}."""
    return runService(options["relays"], options["reload"], _reactor())


__all__ = ["Options", "makeService", "runService", "RELAYS", "KINDS"]
