"""
How a relay reports to metrics it is given (an L{splicing.interfaces.IRelayMetrics},
such as L{splicing.app.metrics.RelayMetrics}) or to none: the relays never
import the application layer that serves the metrics.
"""


class Reporter:
    """
    One relay's line to an L{IRelayMetrics<splicing.interfaces.IRelayMetrics>},
    or to none: the relay reports unconditionally, C{report("refused",
    "allow")}, and its name is added.

    @param table: what C{metrics.watch} reads the relay's live sessions
        from, or None.
    """

    def __init__(self, metrics, relay, table=None):
        self.metrics = metrics
        self.relay = relay
        if metrics is not None and table is not None:
            metrics.watch(relay, table)

    def __call__(self, event, *args):
        if self.metrics is not None:
            getattr(self.metrics, event)(self.relay, *args)


__all__ = ["Reporter"]
