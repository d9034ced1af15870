"""
Prometheus metrics (C{--metrics ENDPOINT}): sessions, bytes, errors and the
kernel path's pipes, served by C{twisted.web} on any server endpoint.  Every
relay kind (TCP, HTTP, UDP) reports to the same families, told apart by
their C{relay} label; the HTTP proxy adds its requests and responses.

Each process has its own registry (not prometheus_client's global one), so
several relays, or tests, can run in one process without clashing.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from twisted.internet.threads import blockingCallFromThread
from zope.interface import implementer

from splicing.interfaces import IRelayMetrics
from splicing.paths.kernel import pipePool


class _LiveCollector:
    """Values read at scrape time: running and waiting sessions, pipes."""

    def __init__(self):
        self.tables = {}

    def collect(self):
        active = GaugeMetricFamily("splicing_sessions_active", "Sessions running", labels=["relay"])
        waiting = GaugeMetricFamily("splicing_sessions_waiting", "Clients accepted, waiting for a slot", labels=["relay"])
        for name, table in sorted(self.tables.items()):
            active.add_metric([name], len(table.active))
            waiting.add_metric([name], len(table.waiting))
        yield active
        yield waiting
        pool = pipePool()
        for name, value, doc in (("in_use", pool.inUse, "Pipes holding spliced bytes"),
                                 ("idle", pool.idle, "Empty pipes kept for reuse"),
                                 ("limit", pool.limit, "Most pipes alive at once")):
            yield GaugeMetricFamily("splicing_pipes_" + name, doc, value=value)


@implementer(IRelayMetrics)
class RelayMetrics:
    """
    The relays' counters: a L{splicing.relay.tcp.RelayFactory}, an
    L{splicing.http.proxy.HTTPProxyFactory} and a
    L{splicing.relay.udp.UDPRelayService} report to it (the last two through a
    L{splicing.relay.report.Reporter}).  Everything is in C{registry}, so L{snapshot} and
    L{combine} carry it from C{--workers}' workers to their master.
    """

    def __init__(self, registry=None):
        self.registry = CollectorRegistry() if registry is None else registry
        r = self.registry
        self.sessions = Counter("splicing_sessions", "Sessions ended", ["relay", "how"], registry=r)
        self.bytes = Counter("splicing_bytes", "Bytes relayed", ["relay", "direction", "path"], registry=r)
        self.connectErrors = Counter("splicing_connect_errors", "Failed backend connects", ["relay", "target"], registry=r)
        self.refusedClients = Counter("splicing_refused", "Clients refused", ["relay", "reason"], registry=r)
        self.httpRequests = Counter("splicing_http_requests", "HTTP requests accepted for a backend", ["relay"],
                                    registry=r)
        self.httpResponses = Counter("splicing_http_responses", "HTTP responses sent to clients, the proxy's own too",
                                     ["relay", "code_class"], registry=r)
        self._live = _LiveCollector()
        r.register(self._live)

    def watch(self, relay, table):
        """
        Report C{table}'s running and waiting sessions as C{relay}'s:
        anything with C{active} and C{waiting} collections (a
        L{splicing.relay.sessions.SessionTable}), read at each scrape.
        """
        self._live.tables[relay] = table

    def sessionEnded(self, relay, stats):
        """A TCP relay's session ended: C{stats} as L{splicing.relay.tcp.RelayProtocol.statistics} gives them."""
        path = stats["path"] or "none"
        self.ended(relay, stats["how"], [("out", path, stats["bytes_out"]), ("in", path, stats["bytes_in"])])

    def ended(self, relay, how, traffic):
        """
        A session of any kind ended C{how}; C{traffic} is (direction, path,
        bytes) for each way its bytes moved: direction "out" is client to
        backend, "in" backend to client, as in the TCP relay's logs.
        """
        self.sessions.labels(relay, how).inc()
        for direction, path, n in traffic:
            self.bytes.labels(relay, direction, path).inc(n)

    def connectFailed(self, relay, target):
        self.connectErrors.labels(relay, target).inc()

    def refused(self, relay, reason):
        self.refusedClients.labels(relay, reason).inc()

    def httpRequest(self, relay):
        self.httpRequests.labels(relay).inc()

    def httpResponse(self, relay, status):
        """A response head went to a client: counted by class ("2xx"), as HAProxy does."""
        self.httpResponses.labels(relay, "%dxx" % (status // 100)).inc()

    def snapshot(self):
        """Every sample now, as JSON-able data (a worker sends it to its master)."""
        return [[m.name, m.type, m.documentation, [[s.name, s.labels, s.value] for s in m.samples]]
                for m in self.registry.collect()]


def combine(snapshots, kinds=None):
    """
    The sum of L{RelayMetrics.snapshot}s, sample by sample (a C{_created}
    timestamp takes the earliest); only families of C{kinds} if given.
    """
    families = {}
    for snapshot in snapshots:
        for name, kind, doc, samples in snapshot:
            if kinds is not None and kind not in kinds:
                continue
            values = families.setdefault(name, (kind, doc, {}))[2]
            for sample, labels, value in samples:
                key = (sample, tuple(sorted(labels.items())))
                if key in values:
                    value = min(value, values[key]) if sample.endswith("_created") else value + values[key]
                values[key] = value
    return [[name, kind, doc, [[sample, dict(labels), value] for (sample, labels), value in sorted(values.items())]]
            for name, (kind, doc, values) in sorted(families.items())]


class WorkerMetrics:
    """
    What the master of C{--workers N} serves: the sum of its workers'
    metrics, asked for at each scrape, and its own (workers running,
    restarts).  The counters of workers that ended are kept
    (L{retire}), so no total ever goes down.

    @param gather: called in the reactor thread, returns a Deferred firing
        with the running workers' snapshots.
    """

    def __init__(self, gather, reactor):
        self.gather = gather
        self.reactor = reactor
        self.retired = []
        self.registry = r = CollectorRegistry()
        self.workers = Gauge("splicing_workers", "Worker processes running", registry=r)
        self.restarts = Counter("splicing_worker_restarts", "Workers restarted after an unexpected exit",
                                registry=r)
        r.register(self)

    def retire(self, snapshot):
        """Keep the counters of a worker that ended, as last reported."""
        self.retired = combine([self.retired, snapshot], kinds=("counter",))

    def collect(self):
        """Called by the endpoint in a thread of the reactor's pool (prometheus_client's WSGI app)."""
        snapshots = blockingCallFromThread(self.reactor, self.gather)
        for name, kind, doc, samples in combine([self.retired] + snapshots):
            family = Metric(name, doc, kind)
            for sample in samples:
                family.add_sample(*sample)
            yield family


__all__ = ["RelayMetrics", "WorkerMetrics", "combine"]
