"""
The suite's hook for C{benchmarks/workers.py} (session rate with
C{twistd splice tcp --workers 1} vs C{2}), which another engineer owns.

If that module exists and exposes C{run(...)}, the suite calls it with the
keyword arguments it accepts among C{seconds}, C{repeat}, C{quick}, C{out}
(a stream for its printed table) and reports what it returns: an
L{Outcome}, a list of L{Table}s, or anything else as text.  Otherwise the
report says the hook found nothing to run.
"""

import contextlib
import importlib.util
import inspect
import io

from benchmarks.report import Table
from benchmarks.scenario import Outcome


def suite(ctx):
    if importlib.util.find_spec("benchmarks.workers") is None:
        return _note("benchmarks/workers.py does not exist yet: nothing run.")
    import benchmarks.workers as workers

    run = getattr(workers, "run", None)
    if not callable(run):
        return _note("benchmarks/workers.py has no run() function yet: nothing run "
                     "(`python -m benchmarks.workers` runs it on its own).")
    offered = {"seconds": ctx.pick(3.0, 0.5), "repeat": ctx.pick(3, 1), "quick": ctx.quick}
    params = inspect.signature(run).parameters
    takes_all = any(p.kind == p.VAR_KEYWORD for p in params.values())
    printed = io.StringIO()
    if "out" in params or takes_all:
        offered["out"] = printed
    kwargs = {k: v for k, v in offered.items() if takes_all or k in params}
    ctx.log("workers: benchmarks.workers.run(%s)" % ", ".join(
        "%s=%r" % (k, v) for k, v in kwargs.items() if k != "out"))
    with contextlib.redirect_stdout(printed):
        result = run(**kwargs)
    if isinstance(result, Outcome):
        return result
    if isinstance(result, list) and all(isinstance(t, Table) for t in result):
        return Outcome(tables=result)
    text = printed.getvalue().strip()
    if result is not None and not isinstance(result, int):
        text = (text + "\n" if text else "") + repr(result)
    return _note("benchmarks.workers.run() output:", text)


def _note(line, text=None):
    table = Table("workers", "Session rate with --workers 1 and 2 (benchmarks/workers.py)",
                  line, [("relay", "relay", "%s")])
    if text:
        table.notes.append("```\n%s\n```" % text)
    return Outcome(tables=[table])
