"""
Relays from their descriptions: a L{splicing.app.spec.RelaySpec} becomes
the C{IService} that runs it (L{buildRelay}), given the metrics to report
to (or None) and the reactor.  The command line checks options with the
same functions (L{parseGroups}, L{ruleSet}), so what was checked is what
runs.
"""

from twisted.internet import endpoints
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from splicing.app.demo import DemoOrigin
from splicing.app.service import RelayService, cannotListen
from splicing.relay.balance import BalancedEndpoint, Balancer, Target, clientFromString
from splicing.relay.checks import HealthChecks, parseCheck
from splicing.relay.tcp import RelayFactory
from splicing.relay.udp import UDPRelayService


def parseGroups(entries):
    """
    C{--group NAME=ENDPOINT} values -> {name: [endpoint string, ...]}.
    Raises ValueError naming the bad entry.
    """
    groups = {}
    for entry in entries:
        name, eq, description = entry.partition("=")
        if not eq or not name:
            raise ValueError("--group %s: expected NAME=ENDPOINT" % (entry,))
        groups.setdefault(name, []).append(description)
    return groups


#: --error-pages: RuleSet.errorPages
ERROR_PAGES = {"auto": None, "on": True, "off": False}


def ruleSet(options, files):
    """
    The HTTP proxy's rules: the C{--rules} file's (its text in C{files})
    and the shorthand options', or None when there are none.  Raises
    L{splicing.http.rulesyntax.RuleError} (a ValueError).
    """
    from splicing.http.rules import parseRules, shorthandRules  # the HTTP layer: only for splice http

    rules = shorthandRules(options["block-path"], options["set-header"], options["remove-header"],
                           options["set-response-header"], options["remove-response-header"])
    if options["rules"] is not None:
        rules = parseRules(files[options["rules"]], options["rules"]) + rules
    rules.checkGroups(list(parseGroups(options["group"])))
    rules.errorPages = ERROR_PAGES[options["error-pages"]]
    return rules if len(rules) or rules.returnError else None


class _DemoEndpoint:
    """Connects to the demo origin, whose port is known only once it started."""

    description = "demo-origin"  # the target's name in metrics, as the TCP relay's

    def __init__(self, reactor, origin):
        self.reactor = reactor
        self.origin = origin

    def connect(self, factory):
        return endpoints.TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.origin.port).connect(factory)


def _demo(reactor):
    """The demo origin (a service) and an endpoint that reaches it."""
    origin = DemoOrigin(reactor)
    return origin, _DemoEndpoint(reactor, origin)


def _relayService(spec, factory, origin, hint, reactor):
    """
    A stream relay's service, with its children: the demo origin when
    there is one, then the backends' health checks when asked for (both
    start before the relay listens and stop after its last session).
    """
    relay = RelayService(spec.listen, factory, hint=hint, reactor=reactor,
                         shutdownTimeout=spec.options["shutdown-timeout"])
    if origin is not None:
        origin.setServiceParent(relay)
    options = spec.options
    if options["check"] is not None:
        HealthChecks(factory.backends(), parseCheck(options["check"]), interval=options["check-interval"],
                     timeout=options["check-timeout"], relay=spec.name, reactor=reactor).setServiceParent(relay)
    return relay


def _balancer(reactor, options, descriptions):
    """C{--balance}'s policy, with failover, over C{descriptions} (client endpoint strings)."""
    targets = [Target(clientFromString(reactor, c), c) for c in descriptions]
    return Balancer(targets, reactor, timeout=options["connect-timeout"], policy=options["balance"])


def _streamSettings(spec, metrics, reactor):
    """The keyword arguments every stream relay's factory (TCP, HTTP) takes alike."""
    options = spec.options
    return dict(backendPath=options["backend"], idle=options["idle"], allow=options["allow"],
                maxSessions=options["max-sessions"], name=spec.name, metrics=metrics, reactor=reactor)


def _tcpService(spec, metrics, reactor):
    options = spec.options
    if spec.connect:
        balancer, hint, origin = _balancer(reactor, options, spec.connect), "curl telnet://{host}:{port}", None  # nc [::1] PORT fails with both Debian netcats
    else:
        origin, endpoint = _demo(reactor)
        balancer = Balancer([Target(endpoint, "demo-origin")], reactor, timeout=options["connect-timeout"])
        hint = "curl http://{host}:{port}/"
    factory = RelayFactory(
        balancer,
        halfCloseTimeout=options["half-close-timeout"],
        sendProxy=options["send-proxy"],
        **_streamSettings(spec, metrics, reactor),
    )
    return _relayService(spec, factory, origin, hint, reactor)


def _httpService(spec, metrics, reactor):
    from splicing.http.proxy import HTTPProxyFactory  # the HTTP layer: only for splice http

    options, origin = spec.options, None
    if spec.connect:
        default = [BalancedEndpoint(_balancer(reactor, options, spec.connect))]
    else:
        origin, endpoint = _demo(reactor)
        default = [endpoint]
    groups = parseGroups(options["group"])
    factory = HTTPProxyFactory(
        default,
        groups={g: [BalancedEndpoint(_balancer(reactor, options, d))] for g, d in groups.items()},
        rules=ruleSet(options, spec.files),
        headerLimit=options["header-limit"],
        maxHeaderLines=options["max-header-lines"],
        headerTimeout=options["header-timeout"],
        backendTimeout=options["backend-timeout"],
        allowUpgrade=options["websockets"],
        allowConnect=options["connect-method"],
        **_streamSettings(spec, metrics, reactor),
    )
    return _relayService(spec, factory, origin, "curl http://{host}:{port}/", reactor)


class _UDPRelay(UDPRelayService):
    """The UDP relay as twistd runs it: a port that cannot listen stops the process, as a TCP relay's does."""

    log = Logger()

    def __init__(self, spec, **kwargs):
        UDPRelayService.__init__(self, spec.listen[0], spec.connect[0], **kwargs)
        self.description = spec.listen[0]

    def startService(self):
        try:
            UDPRelayService.startService(self)
        except CannotListenError as e:
            cannotListen(self.log, self.reactor, self.description, str(e))


def _udpService(spec, metrics, reactor):
    return _UDPRelay(spec, idle=spec.options["idle"], maxSessions=spec.options["max-sessions"], reactor=reactor,
                     name=spec.name, metrics=metrics)


#: The relay kinds: kind -> builder (spec, metrics, reactor) -> IService.
BUILDERS = {"tcp": _tcpService, "http": _httpService, "udp": _udpService}


def buildRelay(spec, metrics, reactor):
    """
    The IService that runs C{spec} (a L{splicing.app.spec.RelaySpec}),
    reporting to C{metrics} (a L{splicing.app.metrics.RelayMetrics}, which
    also reads its backends and sessions for the status page).
    """
    relay = BUILDERS[spec.kind](spec, metrics, reactor)
    if metrics is not None:
        metrics.watchRelay(spec.name, relay)
    return relay


__all__ = ["buildRelay", "parseGroups", "ruleSet", "BUILDERS"]
