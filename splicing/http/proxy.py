"""
The HTTP-filtering proxy: relayd's HTTP relay, with chunked bodies spliced too.

L{HTTPProxyFactory} holds what every session shares (backends and their
groups, rules, limits, timeouts, the session table, metrics) and makes one
L{HTTPProxyProtocol} (L{splicing.http.session}) per client connection.
"""

from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from splicing.relay.admission import Admission
from splicing.relay.access import AllowList
from splicing.relay.balance import BalancedEndpoint
from splicing.http.errors import HTTPError
from splicing.http.rules import Context
from splicing.http.session import HTTPProxyProtocol
from splicing.relay.report import Reporter
from splicing.relay.sessions import SessionTable


@implementer(IProtocolNegotiationFactory)
class HTTPProxyFactory(Admission, Factory):
    """
    Makes L{HTTPProxyProtocol}s.  Over TLS it selects ALPN C{http/1.1}
    (L{splicing.relay.alpn}): a client that offers h2 too speaks HTTP/1.1 here.

    @param endpoints: client endpoints of the default backend (round-robin).
    @param groups: named backend groups for rules' C{forward to <group>}:
        a mapping of name to a list of client endpoints.
    @param rules: a L{splicing.http.rules.RuleSet} or None.
    @param idle: seconds without a byte either way before a session ends
        (0: never); a request body stalled that long gets 408.
    @param name: the relay's name in logs and metrics.
    @param metrics: an L{splicing.interfaces.IRelayMetrics}, or None.
    """

    protocol = HTTPProxyProtocol
    log = Logger()
    kind = "http"
    noisy = False  # no "Starting factory" lines: the relay logs its own start

    def __init__(
        self,
        endpoints,
        groups=None,
        rules=None,
        backendPath="auto",
        headerLimit=8192,
        maxHeaderLines=100,
        headerTimeout=10.0,
        backendTimeout=60.0,
        idle=600.0,
        allowUpgrade=False,
        allowConnect=False,
        serverName="splicing",
        allow=(),
        maxSessions=0,
        name="http",
        reactor=None,
        metrics=None,
    ):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.groups = {None: list(endpoints)}
        self.groups.update({name: list(eps) for name, eps in (groups or {}).items()})
        self.rules = rules
        if rules is not None:
            rules.checkGroups([g for g in self.groups if g is not None])
        self.backendPath = backendPath
        self.headerLimit = headerLimit
        self.maxHeaderLines = maxHeaderLines
        self.headerTimeout = headerTimeout
        self.backendTimeout = backendTimeout
        self.idle = idle
        self.allowUpgrade = allowUpgrade
        self.allowConnect = allowConnect
        self.serverName = serverName
        self.allow = allow if isinstance(allow, AllowList) else AllowList(allow)
        self.table = SessionTable(maxSessions)
        self.name = name
        self.report = Reporter(metrics, name, self.table)
        for group in self.groups.values():
            for endpoint in group:
                if isinstance(endpoint, BalancedEndpoint):
                    endpoint.balancer.onFailure = self._targetFailed
        self._next = {}

    def acceptableProtocols(self):
        """ALPN: the one protocol the proxy speaks."""
        return [b"http/1.1"]

    def _targetFailed(self, target, failure):
        """A balancer's attempt failed (it may go on with the next target): counted per target, as TCP's."""
        self.report("connectFailed", target.name)

    def rejected(self, protocol, why):
        protocol.why = why  # its session line says why
        Admission.rejected(self, protocol, why)

    def backends(self):
        """The balanced targets of every group, with their state (for status pages and metrics)."""
        return [target for group in self.groups.values() for endpoint in group
                if isinstance(endpoint, BalancedEndpoint) for target in endpoint.balancer.targets]

    def endpointFor(self, group):
        endpoints = self.groups.get(group)
        if not endpoints:
            raise HTTPError(502, "no backend for group %r" % (group,))
        i = self._next.get(group, 0)
        self._next[group] = i + 1
        return endpoints[i % len(endpoints)]

    def newContext(self, transport):
        if self.rules is None:
            return None
        peer, host = transport.getPeer(), transport.getHost()
        return Context(
            remoteAddr=getattr(peer, "host", ""),
            remotePort=getattr(peer, "port", 0),
            serverAddr=getattr(host, "host", ""),
            serverPort=getattr(host, "port", 0),
            serverName=self.serverName,
            family=None,  # derived; an IPv4-mapped client counts as inet
            timeout=self.backendTimeout,
        )

    def applyRules(self, direction, head, context, request=None):
        if self.rules is None:
            return None
        if request is not None:
            context.request = request
        return self.rules.evaluate(direction, head, context)


__all__ = ["HTTPProxyFactory", "HTTPProxyProtocol"]
