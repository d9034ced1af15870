"""
The report's PNG charts (matplotlib, the C{bench} extra).

Three shapes cover the suite: bars with min-max whiskers (one figure per
relay: throughput, session rate), a latency distribution (one CDF curve per
relay, on a log scale so the tail shows), and lines (aggregate throughput as
sessions grow).  matplotlib is imported lazily so the rest of the suite, and
its test, run without it.
"""


def available():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


#: Peers and the project keep their colour across charts: grey for "no relay",
#: blues for splicing's paths, warm colours for the peers.
COLOURS = {
    "direct": "#8c8c8c", "splice": "#1f4e9c", "splice-mbuf": "#5b8fd6", "kernel": "#1f4e9c",
    "mbuf": "#5b8fd6", "http-proxy": "#1f4e9c", "tcp-relay": "#5b8fd6",
    "portforward": "#dd8452", "twisted": "#dd8452", "reverse-proxy": "#dd8452",
    "haproxy": "#c44e52", "haproxy-http": "#c44e52", "socat": "#937860",
}
_SPARE = ["#55a868", "#8172b3", "#da8bc3", "#ccb974", "#64b5cd"]


def _colours(names):
    """One colour per relay name: the fixed ones, then spares in order."""
    spare = iter(_SPARE * (1 + len(names) // len(_SPARE)))
    return {n: COLOURS.get(n) or next(spare) for n in names}


def _save(plt, fig, path, note=None):
    """Every chart ends the same way: the optional footnote, a tight layout, the file."""
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.03 if note else 0, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def bars(path, title, ylabel, items, note=None):
    """
    C{items}: C{[(label, Spread)]}; bars are medians, whiskers the min-max
    of the repetitions.  Labels are written under the bars, values on top.
    """
    plt = _pyplot()
    items = [(l, s) for l, s in items if s is not None]
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    xs = range(len(items))
    meds = [s.median for _, s in items]
    err = [[s.median - s.lo for _, s in items], [s.hi - s.median for _, s in items]]
    colours = _colours([l for l, _ in items])
    ax.bar(xs, meds, yerr=err, capsize=4, color=[colours[l] for l, _ in items])
    for x, m in zip(xs, meds):
        ax.annotate("%.3g" % m, (x, m), textcoords="offset points", xytext=(0, 8),
                    ha="center", fontsize=8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([l for l, _ in items], rotation=20, ha="right", fontsize=9)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)
    _save(plt, fig, path, note)


def grouped(path, title, ylabel, groups, series, note=None):
    """
    C{groups}: the labels along x (cases); C{series}: C{{relay: [Spread or
    None per group]}}; one coloured bar per relay in every group, whiskers
    the min-max, the relays in the legend.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.4), dpi=110)
    colours = _colours(list(series))
    width = 0.8 / max(1, len(series))
    for i, (name, spreads) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2.0) * width for g in range(len(groups))]
        pts = [(x, s) for x, s in zip(xs, spreads) if s is not None]
        if not pts:
            continue
        ax.bar([x for x, _ in pts], [s.median for _, s in pts], width,
               yerr=[[s.median - s.lo for _, s in pts], [s.hi - s.median for _, s in pts]],
               capsize=2, color=colours[name], label=name)
        for x, s in pts:
            ax.annotate("%.3g" % s.median, (x, s.median), textcoords="offset points",
                        xytext=(0, 3), ha="center", fontsize=6.5, rotation=90, va="bottom")
    ax.set_xticks(list(range(len(groups))))
    ax.set_xticklabels(groups, fontsize=9)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.margins(y=0.2)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(len(series), 5), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    _save(plt, fig, path, note)


def latency_cdf(path, title, series, note=None):
    """
    C{series}: C{{relay: [round-trip microseconds]}}; one cumulative curve
    each, x on a log scale, with the median and p99 marked in the legend.
    """
    from benchmarks.report import percentile

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    colours = _colours(list(series))
    for name, samples in series.items():
        if not samples:
            continue
        s = sorted(samples)
        n = len(s)
        ys = [(i + 1) / n for i in range(n)]
        ax.plot(s, ys, label="%s (median %.0f, p99 %.0f us)" % (
            name, percentile(s, 50), percentile(s, 99)), color=colours[name], lw=1.4)
    ax.set_xscale("log")
    ax.set_xlabel("round trip, microseconds (log scale)")
    ax.set_ylabel("fraction of round trips")
    ax.set_ylim(0, 1.01)
    ax.axhline(0.5, color="#999999", lw=0.6, ls=":")
    ax.axhline(0.99, color="#999999", lw=0.6, ls=":")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=11)
    _save(plt, fig, path, note)


def scaling(path, title, xlabel, ylabel, series, note=None):
    """
    C{series}: C{{relay: [(x, Spread)]}}; one line per relay through the
    medians, a shaded band through the min-max, x on a log scale.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=110)
    colours = _colours(list(series))
    for name, points in series.items():
        points = sorted((x, s) for x, s in points if s is not None)
        if not points:
            continue
        xs = [x for x, _ in points]
        ax.plot(xs, [s.median for _, s in points], marker="o", label=name, color=colours[name])
        ax.fill_between(xs, [s.lo for _, s in points], [s.hi for _, s in points],
                        color=colours[name], alpha=0.15)
    ax.set_xscale("log")
    xs = sorted({x for pts in series.values() for x, _ in pts})
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=11)
    _save(plt, fig, path, note)
