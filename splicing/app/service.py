"""
Relays as Twisted services, to compose with an application's own services
in a C{MultiService}: L{RelayService} (one TCP relay, with graceful stop),
L{ConfigService} (the relays of a TOML file, reloaded on SIGHUP) and
L{relaysService} (the relays of a L{splicing.app.spec.Config}); the
metrics endpoint's service is L{splicing.app.web.MetricsService}.  They take descriptions and
a function that builds a relay from one; what C{twistd splice} runs is
L{splicing.app.cli.makeService}.
"""

import atexit
import os
import signal
import sys

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger

from splicing.app import spec
from splicing.relay import alpn
from splicing.relay.access import formatAddress


def _exitNow():
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def exitWithFailure():
    """
    Make the process exit with status 1 once twistd has shut down cleanly.

    twistd offers a service no way to set its exit status, and a relay that
    could not listen must not look like a success to its supervisor: the
    exit happens at interpreter exit, after twistd removed its pid file and
    stopped logging.
    """
    if not getattr(exitWithFailure, "armed", False):
        exitWithFailure.armed = True
        atexit.register(_exitNow)


def cannotListen(log, reactor, description, error):
    """
    A relay could not listen on C{description}: one critical line, then the
    process stops with status 1 (a relay missing an address is a
    misconfiguration, not a degraded mode).
    """
    log.critical("cannot listen on {description}: {error}", description=description, error=error)
    exitWithFailure()
    # from the loop, which may not be running yet (failures at start-up)
    reactor.callLater(0, _stopReactor, reactor)


def _stopReactor(reactor):
    if reactor.running:
        reactor.stop()


class ListeningService(service.MultiService):
    """
    Listens on server endpoint strings with one factory; children (helper
    services) start before and stop after it.  A port that cannot listen
    stops the process: a relay missing one of its addresses is a
    misconfiguration, not a degraded mode.
    """

    log = Logger()
    what = "service"

    #: Reactor stand-ins, one per C{listen} entry, that the endpoints listen
    #: through instead of the reactor: in a worker process they adopt the
    #: master's sockets, in the master they bind them for the workers
    #: (L{splicing.app.workersockets}).  None: bind and accept here.
    sockets = None

    def __init__(self, listen, factory, reactor=None):
        service.MultiService.__init__(self)
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.listen = list(listen)
        self.factory = factory
        self.ports = []

    def startService(self):
        service.MultiService.startService(self)
        for index, description in enumerate(self.listen):
            reactor = self.reactor if self.sockets is None else self.sockets[index]
            d = defer.maybeDeferred(lambda: self.endpoint(reactor, description).listen(self.factory))
            d.addCallbacks(self._listening, self._failed, errbackArgs=(description,))

    def endpoint(self, reactor, description):
        """The server endpoint C{description} names (a hook); TLS ones answer ALPN (L{alpn.repair})."""
        return alpn.repair(endpoints.serverFromString(reactor, description))

    def _listening(self, port):
        if not self.running:
            return port.stopListening()
        self.ports.append(port)
        self.log.info("{what} {name} listening on {address}", what=self.what, name=getattr(self.factory, "name", ""),
                      address=formatAddress(port.getHost()))
        self.portListening(port)

    def portListening(self, port):
        """A port is listening (a hook)."""

    def _failed(self, reason, description):
        cannotListen(self.log, self.reactor, description, reason.getErrorMessage())

    def stopListening(self):
        """Close the ports; a Deferred that fires when they are closed."""
        ports, self.ports = self.ports, []
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])

    def stopService(self):
        d = self.stopListening()
        d.addCallback(lambda _: service.MultiService.stopService(self))
        return d


class RelayService(ListeningService):
    """
    Serves C{listen} (server endpoint strings) with a
    L{splicing.relay.tcp.RelayFactory}.

    Stopping (SIGTERM) stops accepting, lets running sessions finish for
    up to C{shutdownTimeout} seconds, then aborts the rest.

    @ivar hint: a format for the "how to try it" line: C{{host}} and
        C{{port}} are filled in, e.g. "curl http://{host}:{port}/".
    """

    what = "relay"

    def __init__(self, listen, factory, hint="curl telnet://{host}:{port}", reactor=None, shutdownTimeout=30.0):
        ListeningService.__init__(self, listen, factory, reactor)
        self.hint = hint
        self.shutdownTimeout = shutdownTimeout

    def portListening(self, port):
        adopt = getattr(self.factory, "portListening", None)
        if adopt is not None:
            adopt(port)  # (the TCP relay's lean sessions)
        self.factory.table.addPort(port)
        address = port.getHost()
        if getattr(address, "port", None) is not None:
            host = address.host if ":" not in address.host else "[%s]" % (address.host,)
            self.log.info("try it: {command}", command=self.hint.format(host=host, port=address.port))

    def stopAccepting(self):
        """
        Stop accepting new clients; running sessions go on.  Helpers that
        serve only new sessions (C{whileAccepting}: health checks) stop
        too: a retired relay checks no backend and logs no change.
        """
        table = self.factory.table
        table.accepting = False
        for port in self.ports:
            table.removePort(port)
        for child in list(self):
            if getattr(child, "whileAccepting", False) and child.running:
                child.stopService()
        return self.stopListening()

    def retire(self):
        """Stop accepting; a Deferred firing when the last running session ended, however late."""
        d = self.stopAccepting()
        d.addCallback(lambda _: self.factory.table.whenEmpty())
        return d

    def drain(self, timeout):
        """A Deferred firing when the sessions ended, aborting them after C{timeout} seconds."""
        table = self.factory.table
        if len(table) or table.waiting:
            self.log.info("waiting up to {timeout}s for {count} sessions", timeout=timeout, count=len(table))
        d = table.whenEmpty()
        if timeout:
            call = self.reactor.callLater(timeout, table.abortAll, "shutdown")
            d.addBoth(lambda r: call.active() and call.cancel())
        else:
            table.abortAll("shutdown")
        return d

    def stopService(self):
        service.Service.stopService(self)
        d = self.stopAccepting()
        d.addCallback(lambda _: self.drain(self.shutdownTimeout))
        d.addCallback(lambda _: service.MultiService.stopService(self))
        d.addCallback(lambda _: self.log.info("{what} {name} stopped", what=self.what, name=self.factory.name))
        return d


class ConfigService(service.Service):
    """
    The relays of a config file, by name.  SIGHUP (or L{reload}) re-reads
    it: added relays start, removed ones stop accepting (their running
    sessions go on), changed ones are replaced the same way, unchanged
    ones are untouched.  A file with errors is logged and ignored.

    @param load: a callable returning the parsed file (L{splicing.app.config.Config}).
    @param build: a callable (name, relay) -> IService.
    """

    log = Logger()

    def __init__(self, load, build, config, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.load = load
        self.build = build
        self.config = config
        self.relays = {}
        self.retired = []
        self._previous = None

    def startService(self):
        service.Service.startService(self)
        for name, relay in self.config.relays.items():
            self._start(name, relay)
        self.reactor.callWhenRunning(self._installSIGHUP)

    def _installSIGHUP(self):
        self._previous = onSIGHUP(self.reactor, self.reload)

    def _start(self, name, relay):
        svc = self.build(relay)
        self.relays[name] = (relay, svc)
        svc.startService()

    def _retire(self, name):
        relay, svc = self.relays.pop(name)
        self.retired.append(svc)
        return defer.maybeDeferred(getattr(svc, "stopAccepting", svc.stopService))

    def reload(self):
        """Re-read the file and apply the difference; a Deferred."""
        try:
            config = self.load()
        except Exception as e:
            self.log.error("reload failed, keeping the running relays: {error}", error=str(e))
            return defer.succeed(None)
        new = config.relays
        fresh, gone = difference({n: r for n, (r, _) in self.relays.items()}, new, self.log)
        d = defer.gatherResults([self._retire(n) for n in gone])

        def startNew(_):
            for name in fresh:
                self._start(name, new[name])

        return d.addCallback(startNew)

    def stopService(self):
        service.Service.stopService(self)
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
        services = [svc for _, svc in self.relays.values()] + self.retired
        self.relays, self.retired = {}, []
        return defer.gatherResults([defer.maybeDeferred(s.stopService) for s in services])


def onSIGHUP(reactor, callback):
    """Call C{callback} from the reactor on each SIGHUP; the previous handler."""
    return signal.signal(signal.SIGHUP, lambda *a: reactor.callFromThread(callback))


def difference(old, new, log):
    """L{splicing.app.spec.difference}, logged: the names of relays to start and to stop."""
    fresh, gone = spec.difference(old, new)
    log.info("reload: start {started}, stop {stopped}, keep {kept}", started=fresh, stopped=gone,
             kept=[n for n in new if n in old and n not in fresh])
    return fresh, gone


def relaysService(config, build, load=None, reactor=None):
    """
    The relays of C{config} (a L{splicing.app.spec.Config}) as one service,
    each made by C{build(spec)}: a L{ConfigService} reloaded with C{load}
    on SIGHUP when there is one, else a C{MultiService}.
    """
    if load is not None:
        return ConfigService(load, build, config, reactor)
    top = service.MultiService()
    for relay in config.relays.values():
        build(relay).setServiceParent(top)
    return top


__all__ = ["ListeningService", "RelayService", "ConfigService", "relaysService",
           "cannotListen", "exitWithFailure", "onSIGHUP"]
