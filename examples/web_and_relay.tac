"""
A twisted.web site and a spliced relay in front of it, in one application:

    twistd -n --pidfile= -y examples/web_and_relay.tac

The site listens on 127.0.0.1:$WEB_PORT (8081), the relay on
127.0.0.1:$RELAY_PORT (8080): curl http://127.0.0.1:8080/
"""

import os

from twisted.application import service, strports
from twisted.internet import endpoints, reactor
from twisted.web import server, static

from splicing.relay.tcp import RelayFactory
from splicing.app.service import RelayService

webPort = int(os.environ.get("WEB_PORT", "8081"))
relayPort = int(os.environ.get("RELAY_PORT", "8080"))

application = service.Application("web and relay")
top = service.MultiService()
top.setServiceParent(application)

page = static.Data(b"<h1>served by twisted.web, spliced by splicing</h1>\n", "text/html")
page.isLeaf = True  # every path gets the page
site = server.Site(page)
strports.service("tcp:%d:interface=127.0.0.1" % webPort, site).setServiceParent(top)

backend = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", webPort)
relay = RelayFactory([backend], idle=600, name="web")
RelayService(["tcp:%d:interface=127.0.0.1" % relayPort], relay, hint="curl http://{host}:{port}/").setServiceParent(top)
