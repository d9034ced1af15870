"""
Backends: client endpoint strings, a balancing policy, failover.

A relay with several C{--connect} targets chooses one per session by its
policy (L{POLICIES}: relayd's and HAProxy's C{roundrobin}, C{random},
C{source-hash}, C{least-connections}); a connect that is refused or times
out tries the next target.  A target that failed a client's connect is
skipped for C{holdoff} seconds (tried again only when every other target is
down as well), as relayd and HAProxy mark a host down after a failed check.
A target that failed its health check (L{splicing.relay.checks}) is out of
rotation until one passes; with every target out, a connect fails at once
with L{NoBackendError} instead of keeping the client waiting.  A connect
that failed for want of a local descriptor blames no target.
"""

import random
import zlib

from twisted.internet import defer, endpoints
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import IStreamClientEndpoint
from zope.interface import implementer

from splicing.relay.accepting import exhaustionErrno

#: The balancing policies, by their command-line names.
POLICIES = ("roundrobin", "random", "source-hash", "least-connections")


class NoBackendError(Exception):
    """Every backend is out of rotation (its health check failed): refuse at once."""

    def __str__(self):
        return "every backend is down"


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


def targetAddress(description):
    """
    "HOST:PORT" (C{[v6]:PORT}) of a client endpoint string, for status
    pages and logs; C{unix:PATH} as given; the description itself when it
    names neither.
    """
    try:
        args, kw = endpoints._parse(description)
    except Exception:
        return description
    kind = args[0] if args else ""
    fields = dict(zip(("host", "port"), args[1:3]))
    fields.update(kw)
    if kind == "unix":
        return "unix:%s" % (fields.get("path", args[1] if len(args) > 1 else ""),)
    host, port = fields.get("host"), fields.get("port")
    if host is None or port is None:
        return description
    return "%s:%s" % ("[%s]" % host if ":" in host else host, port)


class Target:
    """
    One backend, with what the balancer and a status page know of it.

    @ivar name: its description (the C{--connect} string).
    @ivar address: "HOST:PORT" (see L{targetAddress}).
    @ivar downUntil: until when a failed client connect holds it off.
    @ivar up: False while its health check fails (out of rotation).
    @ivar lastCheck: when (POSIX time) its last check ended, or None.
    @ivar why: what the last failed check or connect said.
    @ivar sessions: connections to it open now.
    @ivar connectErrors: client connects to it that failed.
    """

    def __init__(self, endpoint, name):
        self.endpoint = endpoint
        self.name = name
        self.address = targetAddress(name) if isinstance(name, str) else str(name)
        self.downUntil = 0.0
        self.up = True
        self.lastCheck = None
        self.why = None
        self.sessions = 0
        self.connectErrors = 0

    def opened(self, protocol):
        """
        C{protocol} connected to this target: count it until its
        connectionLost (least-connections and the status page read it).
        """
        self.sessions += 1
        lost = getattr(protocol, "connectionLost", None)

        def connectionLost(reason):
            self.sessions -= 1
            del protocol.connectionLost  # the class's again
            if lost is not None:
                lost(reason)

        protocol.connectionLost = connectionLost

    def __repr__(self):
        return "<Target %s>" % (self.name,)


def _sourceKey(client):
    """
    The bytes source-hash hashes: the client's host (its port changes per
    connection), an IPv4-mapped address as the IPv4 one (a dual-stack
    listener sees both).
    """
    host = str(getattr(client, "host", client) or "")
    if host.lower().startswith("::ffff:") and "." in host:
        host = host[7:]
    return host.encode("utf-8", "replace")


class Balancer:
    """
    L{Target}s chosen by a policy, with failover.

    @param targets: L{Target}s, or (endpoint, name) pairs.
    @param timeout: seconds a connect may take before the next target is tried.
    @param holdoff: seconds a failed target is skipped.
    @param onFailure: called with (target, failure) after each failed attempt.
    @param policy: one of L{POLICIES}.
    """

    def __init__(self, targets, reactor, timeout=10.0, holdoff=10.0, onFailure=None, policy="roundrobin"):
        if policy not in POLICIES:
            raise ValueError("the balancing policy must be one of %s, not %r" % (", ".join(POLICIES), policy))
        self.targets = [t if isinstance(t, Target) else Target(*t) for t in targets]
        self.reactor = reactor
        self.timeout = timeout
        self.holdoff = holdoff
        self.onFailure = onFailure
        self.policy = policy
        self.random = random.Random()
        self._next = 0

    def _turn(self, client):
        """Every target, the one the policy picks first, the rest in failover order."""
        n = len(self.targets)
        if self.policy == "random":
            turn = list(self.targets)
            self.random.shuffle(turn)
            return turn
        if self.policy == "source-hash":
            start = zlib.crc32(_sourceKey(client)) % n
        else:
            start, self._next = self._next % n, self._next + 1
        turn = self.targets[start:] + self.targets[:start]
        if self.policy == "least-connections":
            turn.sort(key=lambda t: t.sessions)  # stable: ties keep the round-robin turn
        return turn

    def order(self, client=None):
        """
        This connect's targets: the policy's choice first, those held off
        after a failed connect last, those whose check failed not at all.
        """
        if len(self.targets) < 2:  # nothing to choose or sort (the common single backend)
            return [t for t in self.targets if t.up]
        now = self.reactor.seconds()
        turn = [t for t in self._turn(client) if t.up]
        return [t for t in turn if t.downUntil <= now] + sorted(
            (t for t in turn if t.downUntil > now), key=lambda t: t.downUntil
        )

    def connect(self, factory, client=None):
        """
        A Deferred firing with (protocol, target); fails with the last error
        when all fail, with L{NoBackendError} at once when every target is
        out of rotation.  C{client} (an address) is what source-hash hashes.
        """
        if self.allDown():
            return defer.fail(NoBackendError())
        return self._attempt(self.order(client), factory, None)

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
            self.reached(target)
            target.opened(protocol)
            return protocol, target

        def failed(f):
            if exhaustionErrno(f) is not None:
                # Our own descriptors ran out, not the target: holding it
                # off or trying the others would only spread the blame.
                return f
            self.missed(target, f)
            return self._attempt(remaining[1:], factory, f)

        return d.addCallbacks(ok, failed)

    def allDown(self):
        """Whether every target is out of rotation (its health check failed)."""
        for t in self.targets:
            if t.up:
                return False
        return bool(self.targets)

    def reached(self, target):
        """A connect to C{target} succeeded: it is no longer held off."""
        target.downUntil = 0.0

    def missed(self, target, failure):
        """A connect to C{target} failed with C{failure}: hold it off, count it, say why."""
        target.downUntil = self.reactor.seconds() + self.holdoff
        target.connectErrors += 1
        target.why = failure.getErrorMessage()
        if self.onFailure is not None:
            self.onFailure(target, failure)


@implementer(IStreamClientEndpoint)
class BalancedEndpoint:
    """
    A L{Balancer} as a plain client endpoint: C{connect} fires with the
    protocol, which learns the name of the target it reached (C{target}),
    for its session's log event.
    """

    def __init__(self, balancer):
        self.balancer = balancer

    def connect(self, factory, client=None):
        return self.balancer.connect(factory, client).addCallback(_named)


def _named(result):
    """The connected protocol, told which target it reached (the HTTP session event names it)."""
    protocol, target = result
    protocol.target = target.name
    return protocol


def connectFrom(endpoint, factory, client):
    """C{endpoint.connect(factory)}; a L{BalancedEndpoint} is told the C{client} (for source-hash)."""
    if isinstance(endpoint, BalancedEndpoint):
        return endpoint.connect(factory, client)
    return endpoint.connect(factory)


__all__ = ["Balancer", "BalancedEndpoint", "NoBackendError", "POLICIES", "Target", "clientFromString",
           "connectFrom", "targetAddress"]
