"""
Relays as Twisted services, to compose with an application's own services
in a C{MultiService}.
"""

from twisted.application import service
from twisted.internet import endpoints
from twisted.logger import Logger


def _hostPort(address):
    host = getattr(address, "host", None)
    if host is None:
        return str(address), None
    if ":" in host:
        host = "[%s]" % (host,)
    return host, address.port


class RelayService(service.Service):
    """
    Listens on server endpoint strings and serves them with a relay factory.

    @ivar ports: the listening ports, once started.
    @ivar hint: a format for the "how to try it" line: C{{host}} and
        C{{port}} are filled in, e.g. "curl http://{host}:{port}/".
    """

    log = Logger()

    def __init__(self, listen, factory, hint="nc {host} {port}", reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.listen = list(listen)
        self.factory = factory
        self.hint = hint
        self.ports = []

    def startService(self):
        service.Service.startService(self)
        for description in self.listen:
            endpoint = endpoints.serverFromString(self.reactor, description)
            d = endpoint.listen(self.factory)
            d.addCallbacks(self._listening, self._failed, errbackArgs=(description,))

    def _listening(self, port):
        self.ports.append(port)
        host, number = _hostPort(port.getHost())
        self.log.info("relay listening on {address}", address="%s:%s" % (host, number))
        if number is not None:
            self.log.info("try it: " + self.hint.format(host=host, port=number))

    def _failed(self, reason, description):
        self.log.critical(
            "cannot listen on {description}: {error}",
            description=description,
            error=reason.getErrorMessage(),
        )
        if self.reactor.running:
            self.reactor.stop()

    def stopService(self):
        service.Service.stopService(self)
        ports, self.ports = self.ports, []
        from twisted.internet import defer

        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])
