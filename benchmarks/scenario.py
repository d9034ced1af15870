"""
What the suite runner (L{benchmarks.__main__}) gives a scenario and gets back.

A scenario is a function C{suite(ctx)} in a benchmark module: it measures
what it is about in a bounded time (C{ctx.quick} shrinks counts and
seconds to a smoke run) and returns an L{Outcome}: report tables and the
charts to draw.  Peers that are not installed are skipped, and the report
says so, from L{peers}.
"""

import os
import shutil
import sys
import time
from dataclasses import dataclass, field


def peers():
    """Optional peer programs: name -> path, or None when not installed."""
    return {name: shutil.which(name) for name in ("haproxy", "socat")}


@dataclass
class Context:
    quick: bool = False
    outdir: str = "."
    out: object = sys.stdout
    started: float = field(default_factory=time.monotonic)

    def log(self, msg):
        self.out.write("[%4.0fs] %s\n" % (time.monotonic() - self.started, msg))
        self.out.flush()

    def pick(self, full, quick):
        """C{full} in a real run, C{quick} in a smoke run."""
        return quick if self.quick else full

    def chart_path(self, name):
        return os.path.join(self.outdir, name)

    def peer_relays(self):
        """The optional TCP peers installed here (haproxy, socat)."""
        return [n for n, p in peers().items() if p]


@dataclass
class Chart:
    """A PNG to draw: C{draw(path)} writes it; C{title} goes into the report."""

    filename: str
    title: str
    draw: object


@dataclass
class Outcome:
    tables: list = field(default_factory=list)
    charts: list = field(default_factory=list)
    failures: list = field(default_factory=list)
