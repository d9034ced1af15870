"""
A local origin for the demo relay: a small static web site on 127.0.0.1, so
that a relay started without a backend works straight away.
"""

from twisted.application import service
from twisted.logger import Logger

PAGE = b"""<!doctype html>
<title>splicing demo origin</title>
<h1>Hello through splicing</h1>
<p>This page comes from the demo origin; the bytes you read were spliced by the relay.</p>
"""


class DemoOrigin(service.Service):
    """Listens on 127.0.0.1 (an ephemeral port); C{port} is set once started."""

    log = Logger()

    def __init__(self, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.port = None
        self._listening = None

    def startService(self):
        # twisted.web only where the demo origin runs: a relay given backends never loads it
        from twisted.web import server, static

        service.Service.startService(self)
        page = static.Data(PAGE, "text/html; charset=utf-8")
        page.isLeaf = True  # the page at every path
        self._listening = self.reactor.listenTCP(0, server.Site(page), interface="127.0.0.1")
        self.port = self._listening.getHost().port
        self.log.info("demo origin listening on http://127.0.0.1:{port}/", port=self.port)

    def stopService(self):
        service.Service.stopService(self)
        if self._listening is not None:
            return self._listening.stopListening()
