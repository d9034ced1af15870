"""
Prometheus metrics (C{--metrics ENDPOINT}): sessions, bytes (live: see
L{splicing.app.live}), errors, backends, the kernel path's pipes and the
standard process and platform collectors, served by C{twisted.web} on any
server endpoint with the status page (L{splicing.app.web}).  Every relay
kind (TCP, HTTP, UDP) reports to the same families, told apart by their
C{relay} label; the HTTP proxy adds its requests and responses.

Each process has its own registry (not prometheus_client's global one), so
several relays, or tests, can run in one process without clashing.  No
C{_created} series are exported (they double the output and Prometheus
needs none).
"""

from prometheus_client import (
    CollectorRegistry, Counter, GCCollector, Gauge, PlatformCollector, ProcessCollector, disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from twisted.internet import defer
from zope.interface import implementer

from splicing.app import status
from splicing.app.live import BackendStates, LiveTraffic
from splicing.interfaces import IRelayMetrics
from splicing.paths.kernel import pipePool

disable_created_metrics()


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
        self.connectErrors = Counter("splicing_connect_errors", "Failed backend connects", ["relay", "target"], registry=r)
        self.refusedClients = Counter("splicing_refused", "Clients refused", ["relay", "reason"], registry=r)
        self.httpRequests = Counter("splicing_http_requests", "HTTP requests accepted for a backend", ["relay"],
                                    registry=r)
        self.httpResponses = Counter("splicing_http_responses", "HTTP responses sent to clients, the proxy's own too",
                                     ["relay", "code_class"], registry=r)
        self._live = _LiveCollector()
        r.register(self._live)
        self.traffic = LiveTraffic(self._live.tables)
        r.register(self.traffic)
        #: relay name -> its service, for the backends' gauges and the status page
        self.relays = {}
        r.register(BackendStates(self.relays))
        processCollectors(r)

    def watch(self, relay, table):
        """
        Report C{table}'s running and waiting sessions as C{relay}'s:
        anything with C{active} and C{waiting} collections (a
        L{splicing.relay.sessions.SessionTable}), read at each scrape.
        """
        self._live.tables[relay] = table

    def watchRelay(self, relay, service):
        """
        Read C{relay}'s backends and sessions from its C{service} (see
        L{splicing.app.status.relayOf}) for the backends' gauges and the
        status page; a relay built again under the same name replaces it.
        """
        self.relays[relay] = service

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
        self.traffic.add(relay, traffic)

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
        return snapshot(self.registry)

    def collector(self):
        """What the endpoint renders (L{splicing.app.web}): this process's registry."""
        return self.registry

    def status(self):
        """The status document of this process's relays (L{splicing.app.status})."""
        return status.document(sorted(self.relays.items()))


def processCollectors(registry):
    """prometheus_client's standard collectors (process, platform, garbage collector) in C{registry}."""
    for collector in (ProcessCollector, PlatformCollector, GCCollector):
        collector(registry=registry)


def snapshot(registry):
    """Every sample of C{registry} now, as JSON-able data."""
    return [[m.name, m.type, m.documentation, [[s.name, s.labels, s.value] for s in m.samples]]
            for m in registry.collect()]


#: Samples that are not summed over processes: the oldest start, the
#: smallest limit, a backend up only if up in every worker, one python_info.
_SMALLEST = {"process_start_time_seconds", "process_max_fds", "splicing_backend_up"}
_LARGEST = {"python_info"}


def _join(sample, a, b):
    if sample in _SMALLEST:
        return min(a, b)
    if sample in _LARGEST:
        return max(a, b)
    return a + b


def combine(snapshots, kinds=None):
    """
    The sum of L{RelayMetrics.snapshot}s, sample by sample (but see
    L{_SMALLEST} and L{_LARGEST}); only families of C{kinds} if given.
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
                    value = _join(sample, values[key], value)
                values[key] = value
    return [[name, kind, doc, [[sample, dict(labels), value] for (sample, labels), value in sorted(values.items())]]
            for name, (kind, doc, values) in sorted(families.items())]


class WorkerMetrics:
    """
    What the master of C{--workers N} serves: the sum of its workers'
    metrics, asked for at each scrape, with the master's own process
    metrics and its own (workers running, restarts); the merge of their
    status pages.  The counters of workers that ended are kept
    (L{retire}), so no total ever goes down.

    @param gather: called in the reactor thread with "metrics" or
        "status", returns a Deferred firing with the running workers'
        snapshots or status documents.
    """

    def __init__(self, gather, reactor):
        self.gather = gather
        self.reactor = reactor
        self.retired = []
        self.registry = r = CollectorRegistry()
        self.workers = Gauge("splicing_workers", "Worker processes running", registry=r)
        self.restarts = Counter("splicing_worker_restarts", "Workers restarted after an unexpected exit",
                                registry=r)
        processCollectors(r)

    def retire(self, snapshot):
        """Keep the counters of a worker that ended, as last reported."""
        self.retired = combine([self.retired, snapshot], kinds=("counter",))

    def collector(self):
        """A Deferred of what the endpoint renders: every process's metrics, combined."""
        return self.gather("metrics").addCallback(self._combined)

    def _combined(self, snapshots):
        return _Families(combine([self.retired, snapshot(self.registry)] + list(snapshots)))

    def status(self):
        """A Deferred status document: the workers' merged."""
        return defer.maybeDeferred(self.gather, "status").addCallback(status.merge)


class _Families:
    """Combined snapshots as a collector prometheus_client renders."""

    def __init__(self, families):
        self.families = families

    def collect(self):
        for name, kind, doc, samples in self.families:
            family = Metric(name, doc, kind)
            for sample in samples:
                family.add_sample(*sample)
            yield family


__all__ = ["RelayMetrics", "WorkerMetrics", "combine"]
