"""
Backends: client endpoint strings, round-robin with failover.

A relay with several C{--connect} targets takes them in turn.  A connect
that is refused or times out tries the next target; a target that failed is
skipped for C{holdoff} seconds (tried again only when every other target is
down as well), as relayd and HAProxy mark a host down after a failed check.
A connect that failed for want of a local descriptor blames no target.
"""

from twisted.internet import defer, endpoints
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IStreamClientEndpoint
from zope.interface import implementer

from splicing.relay.accepting import exhaustionErrno


def clientFromString(reactor, description):
    """
    A client endpoint for C{description}.  Unlike Twisted's parser, C{tcp:}
    resolves host names to IPv4 or IPv6 (a L{HostnameEndpoint}, Twisted
    #7387), and connects to an address literal directly: no resolver thread
    and no connection race per session for C{host=127.0.0.1} or C{::1}.
    Every other prefix (C{tls:}, C{unix:}, plugins) is Twisted's.
    """
    endpoint = endpoints.clientFromString(reactor, description)
    if type(endpoint) is endpoints.TCP4ClientEndpoint:
        args, kw = endpoints._parse(description)
        kw = endpoints._parseClientTCP(*args[1:], **kw)
        host, port = kw["host"], kw["port"]
        timeout, bindAddress = kw.get("timeout", 30), kw.get("bindAddress")
        if isIPAddress(host):
            return endpoint
        if isIPv6Address(host):
            return endpoints.TCP6ClientEndpoint(reactor, host, port, timeout=timeout, bindAddress=bindAddress)
        return endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout, bindAddress=bindAddress)
    return endpoint


class Target:
    """One backend: its endpoint, its name (the description) and when it may be tried again."""

    def __init__(self, endpoint, name):
        self.endpoint = endpoint
        self.name = name
        self.downUntil = 0.0

    def __repr__(self):
        return "<Target %s>" % (self.name,)


class Balancer:
    """
    Round-robin over L{Target}s with failover.

    @param targets: L{Target}s, or (endpoint, name) pairs.
    @param timeout: seconds a connect may take before the next target is tried.
    @param holdoff: seconds a failed target is skipped.
    @param onFailure: called with (target, failure) after each failed attempt.
    """

    def __init__(self, targets, reactor, timeout=10.0, holdoff=10.0, onFailure=None):
        self.targets = [t if isinstance(t, Target) else Target(*t) for t in targets]
        self.reactor = reactor
        self.timeout = timeout
        self.holdoff = holdoff
        self.onFailure = onFailure
        self._next = 0

    def order(self):
        """This connect's targets: the next in turn first, the ones marked down last."""
        n = len(self.targets)
        if not n:
            return []
        start, self._next = self._next % n, self._next + 1
        turn = self.targets[start:] + self.targets[:start]
        now = self.reactor.seconds()
        return [t for t in turn if t.downUntil <= now] + sorted(
            (t for t in turn if t.downUntil > now), key=lambda t: t.downUntil
        )

    def connect(self, factory):
        """A Deferred firing with (protocol, target); fails with the last error when all fail."""
        return self._attempt(self.order(), factory, None)

    def _attempt(self, remaining, factory, lastFailure):
        if not remaining:
            if lastFailure is None:
                return defer.fail(ValueError("no backend endpoint"))
            return defer.fail(lastFailure)
        target = remaining[0]
        d = target.endpoint.connect(factory)
        if self.timeout:
            d.addTimeout(self.timeout, self.reactor)

        def ok(protocol):
            target.downUntil = 0.0
            return protocol, target

        def failed(f):
            if exhaustionErrno(f) is not None:
                # Our own descriptors ran out, not the target: holding it
                # off or trying the others would only spread the blame.
                return f
            target.downUntil = self.reactor.seconds() + self.holdoff
            if self.onFailure is not None:
                self.onFailure(target, f)
            return self._attempt(remaining[1:], factory, f)

        return d.addCallbacks(ok, failed)


@implementer(IStreamClientEndpoint)
class BalancedEndpoint:
    """
    A L{Balancer} as a plain client endpoint: C{connect} fires with the
    protocol, which learns the name of the target it reached (C{target}),
    for its session's log event.
    """

    def __init__(self, balancer):
        self.balancer = balancer

    def connect(self, factory):
        return self.balancer.connect(factory).addCallback(_named)


def _named(result):
    protocol, target = result
    protocol.target = target.name
    return protocol


__all__ = ["Balancer", "BalancedEndpoint", "Target", "clientFromString"]
