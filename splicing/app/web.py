"""
The C{--metrics} endpoint's web site: Prometheus metrics at any path,
the status page at C{/status} and C{/status.json} (L{splicing.app.status}).

Everything is read in the reactor thread, between two turns of the
relays: a byte count taken from a running session and the same bytes
counted when it ended can never both appear in one scrape.  Scrapes and
page views are not access-logged (one line every few seconds says
nothing).

This module, prometheus_client and twisted.web are imported only by a
process that serves C{--metrics} (L{splicing.app.cli.runService}).
"""

from prometheus_client.exposition import choose_encoder
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from splicing.app import status
from splicing.app.metrics import RelayMetrics
from splicing.app.service import ListeningService


class EndpointResource(Resource):
    """
    Serves a source of metrics and status: an object with
    C{collector()} (something prometheus_client can render: C{collect()}
    yielding metric families, or a Deferred of one) and C{status()} (the
    status document, or a Deferred of one).
    """

    isLeaf = True
    log = Logger()

    def __init__(self, source):
        Resource.__init__(self)
        self.source = source

    def render_GET(self, request):
        path = request.path.rstrip(b"/") if request.path != b"/" else request.path
        if path == b"/status":
            work = defer.maybeDeferred(self.source.status).addCallback(self._html)
        elif path == b"/status.json":
            work = defer.maybeDeferred(self.source.status).addCallback(self._json)
        else:
            encoder, contentType = choose_encoder(request.getHeader("accept"))
            work = defer.maybeDeferred(self.source.collector).addCallback(
                lambda collector: (contentType, encoder(collector)))
        gone = []
        request.notifyFinish().addErrback(gone.append)  # the client left before the answer
        work.addCallbacks(self._send, self._failed, (request, gone), errbackArgs=(request, gone))
        return NOT_DONE_YET

    def render_HEAD(self, request):
        return self.render_GET(request)

    @staticmethod
    def _html(doc):
        return "text/html; charset=utf-8", status.renderHTML(doc)

    @staticmethod
    def _json(doc):
        return "application/json", status.renderJSON(doc)

    def _send(self, result, request, gone):
        contentType, body = result
        if gone:
            return
        request.setHeader("content-type", contentType)
        request.setHeader("cache-control", "no-store")
        request.setHeader("content-length", b"%d" % len(body))
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    def _failed(self, reason, request, gone):
        self.log.failure("the metrics endpoint could not answer {path}", reason, path=request.path)
        if not gone:
            request.setResponseCode(500)
            request.setHeader("content-type", "text/plain; charset=utf-8")
            request.write(b"the relay could not read its metrics; see its log\n")
            request.finish()


class QuietSite(Site):
    """A C{Site} that keeps no access log."""

    noisy = False

    def log(self, request):
        pass


def site(source):
    """The endpoint's site for C{source} (see L{EndpointResource})."""
    result = QuietSite(EndpointResource(source))
    result.name = "http"
    return result


class MetricsService(ListeningService):
    """
    Serves C{metrics} (a L{splicing.app.metrics.RelayMetrics} or
    L{splicing.app.metrics.WorkerMetrics}; None: a new C{RelayMetrics}
    for this process's relays, C{self.metrics}) on a server endpoint
    string: Prometheus metrics at any path, the status page at C{/status}
    and C{/status.json}.
    """

    what = "metrics"

    def __init__(self, description, metrics=None, reactor=None):
        self.metrics = RelayMetrics() if metrics is None else metrics
        ListeningService.__init__(self, [description], site(self.metrics), reactor)


__all__ = ["EndpointResource", "MetricsService", "QuietSite", "site"]
