"""
Metrics read from the running relays at scrape time (in the reactor
thread, see L{splicing.app.web}): bytes that follow the traffic while
sessions run, and each backend's state.

C{splicing_bytes_total} is the bytes of the sessions that ended plus, for
each session still running, its splices' counts so far (C{splice().length}):
sampled when scraped, not counted per byte.  A session leaves the running
table and adds its final counts to the ended ones in the same turn of the
reactor, so no scrape counts its bytes twice or loses them, and the
counter never goes down.
"""

import collections

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from splicing.app.status import relayOf, running


class LiveTraffic:
    """
    The C{splicing_bytes} counter family.

    @ivar tables: relay name -> its session table (L{splicing.app.metrics.RelayMetrics.watch}).
    """

    def __init__(self, tables):
        self.tables = tables
        self.ended = collections.Counter()

    def add(self, relay, traffic):
        """A session of C{relay} ended having moved C{traffic}: (direction, path, bytes) triples."""
        for direction, path, n in traffic:
            self.ended[(relay, direction, path)] += n

    def totals(self):
        """{(relay, direction, path): bytes}, running sessions' bytes so far included."""
        totals = collections.Counter(self.ended)
        for relay, table in list(self.tables.items()):
            for session in running(table):
                for direction, path, n in session.traffic():
                    if n:
                        totals[(relay, direction, path)] += n
        return totals

    def collect(self):
        family = CounterMetricFamily("splicing_bytes", "Bytes relayed, running sessions' bytes so far included",
                                     labels=["relay", "direction", "path"])
        for key, n in sorted(self.totals().items()):
            family.add_metric(list(key), n)
        yield family


class BackendStates:
    """
    Per backend: C{splicing_backend_up} (1 in rotation, 0 while its health
    check fails) and C{splicing_backend_sessions} (connections open to it).

    @ivar relays: relay name -> its service (see L{splicing.app.status.relayOf}).
    """

    def __init__(self, relays):
        self.relays = relays

    def collect(self):
        up = GaugeMetricFamily("splicing_backend_up", "1 while the backend is in rotation, 0 while its check fails",
                               labels=["relay", "backend"])
        sessions = GaugeMetricFamily("splicing_backend_sessions", "Connections open to the backend",
                                     labels=["relay", "backend"])
        for name, service in sorted(self.relays.items()):
            for target in relayOf(service).backends():
                up.add_metric([name, target.address], 1 if target.up else 0)
                sessions.add_metric([name, target.address], target.sessions)
        yield up
        yield sessions


__all__ = ["LiveTraffic", "BackendStates"]
