"""
The suite's report model and its Markdown: what every scenario hands back to
L{benchmarks.__main__}, and how it becomes C{RESULTS.md}.

Pure (no processes, no plotting), so C{tests/test_benchmarks.py} can check
the arithmetic and the formatting in milliseconds.  Every figure in a table
is a L{Spread}: the median of interleaved repetitions with its min-max, so a
reader sees how far to trust it on a shared machine.
"""

import math
import statistics
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Spread:
    """The median of repeated measurements and their range."""

    median: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values):
        """From samples; C{None} when there are none (a relay that failed)."""
        values = [v for v in values if v is not None]
        if not values:
            return None
        return cls(statistics.median(values), min(values), max(values), len(values))

    def format(self, spec="%.2f"):
        if self.n == 1 or self.lo == self.hi:
            return spec % self.median
        return "%s (%s-%s)" % (spec % self.median, spec % self.lo, spec % self.hi)


def percentile(values, p):
    """The C{p}-th percentile (0-100) by nearest rank, of unsorted C{values}."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k]


def ratio(a, b):
    """C{a / b} of two medians (Spreads or numbers); C{None} if either is missing."""
    a = a.median if isinstance(a, Spread) else a
    b = b.median if isinstance(b, Spread) else b
    if a is None or b is None or not b:
        return None
    return a / b


@dataclass
class Verdict:
    """
    One target: C{value} compared with C{goal}.  C{higher} says which way is
    better (throughput: higher; latency, memory: lower).
    """

    target: str
    value: float
    goal: float
    higher: bool = True
    unit: str = "x"

    @property
    def met(self):
        if self.value is None:
            return False
        return self.value >= self.goal if self.higher else self.value <= self.goal

    def format(self):
        sign = ">=" if self.higher else "<="
        if self.value is None:
            return "%s (%s %g%s): not measured" % (self.target, sign, self.goal, self.unit)
        got = "%.2f%s" % (self.value, self.unit)
        if self.met:
            return "%s: %s (target %s %g%s): **met**" % (self.target, got, sign, self.goal, self.unit)
        if not self.goal:  # a count that should be zero: say by how many
            return "%s: %s (target %s %g%s): **missed by %s%s**" % (
                self.target, got, sign, self.goal, self.unit, "%g" % abs(self.value), self.unit)
        short = (1 - self.value / self.goal) if self.higher else (self.value / self.goal - 1)
        return "%s: %s (target %s %g%s): **missed by %.0f%%**" % (
            self.target, got, sign, self.goal, self.unit, 100 * short)


@dataclass
class Table:
    """
    One table of the report.  C{columns} are C{(key, header, spec)}; a row is
    a dict from key to a Spread, a number, or text (the key C{"relay"} names
    the row).  C{measured} says in one sentence what a figure is.
    """

    key: str
    title: str
    measured: str
    columns: list
    rows: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    verdicts: list = field(default_factory=list)

    def row(self, relay):
        for r in self.rows:
            if r.get("relay") == relay:
                return r
        return None

    def value(self, relay, key):
        r = self.row(relay)
        return None if r is None else r.get(key)


def cell(v, spec):
    if v is None:
        return "-"
    if isinstance(v, Spread):
        return v.format(spec)
    if isinstance(v, float) or isinstance(v, int) and not isinstance(v, bool):
        return spec % v
    return str(v)


def markdown_table(table):
    """The table alone, as GitHub Markdown."""
    heads = [h for _, h, _ in table.columns]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in table.rows:
        lines.append("| " + " | ".join(cell(r.get(k), spec) for k, _, spec in table.columns) + " |")
    return "\n".join(lines)


def markdown_section(table):
    out = ["### %s" % table.title, "", table.measured, "", markdown_table(table), ""]
    for v in table.verdicts:
        out.append("- " + v.format())
    if table.verdicts:
        out.append("")
    for n in table.notes:
        out.append("- " + n if not n.startswith(("    ", "```")) else n)
    if table.notes:
        out.append("")
    return "\n".join(out)


def markdown_report(header, tables, charts=(), failures=(), footer=()):
    """
    The whole C{RESULTS.md}: C{header} lines, a summary of every verdict,
    the tables, the charts (relative paths), failures, then C{footer} lines.
    """
    out = ["# Benchmark results", ""] + list(header) + [""]
    verdicts = [v for t in tables for v in t.verdicts]
    if verdicts:
        out += ["## Targets", "", "| target | measured | goal | |", "|---|---|---|---|"]
        for v in verdicts:
            out.append("| %s | %s | %s %g%s | %s |" % (
                v.target, "-" if v.value is None else "%.2f%s" % (v.value, v.unit),
                ">=" if v.higher else "<=", v.goal, v.unit,
                "met" if v.met else ("not measured" if v.value is None else "MISSED")))
        out.append("")
    out += ["## Tables", ""]
    for t in tables:
        out.append(markdown_section(t))
    if charts:
        out += ["## Charts", ""]
        for title, path in charts:
            out += ["![%s](%s)" % (title, path), ""]
    if failures:
        out += ["## Failures", ""] + ["- %s" % f for f in failures] + [""]
    out += list(footer)
    return "\n".join(out).rstrip() + "\n"
