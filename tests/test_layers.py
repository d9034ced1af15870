"""
The package's layers, read from its source with C{ast} (nothing is
imported): no import cycle, no import pointing up, and in-function imports
only where one is named below with its reason.

The layers, lowest first (a module may import its own layer and the ones
below it, never one above)::

    0  splicing.interfaces           the zope.interface contracts every layer relies on
    1  splicing.core, .paths,        splicing itself: the splice (core), the ways bytes move
       .buffers, splicing (the face)   (paths) and the buffers they move in; the package's
                                     __init__ re-exports core (splice, SpliceError, Reason)
    2  splicing.relay                TCP and UDP relays built on splice()
    3  splicing.http                 the HTTP proxy: a relay that reads heads in user land
    4  splicing.app                  what an operator touches: command line, config file,
                                     services, metrics, workers

Why this order: data and control flow from the operator down to the
socket.  The application layer turns a command line into relays; a relay
asks the core to splice; the core never needs to know who asked.  HTTP sits
above the plain relays because it reuses their balancing, access lists and
session table, and adds heads and rules on top.

Imports are edges between modules, counted wherever they appear (inside a
function too): C{from splicing.x import y} is an edge to C{splicing.x.y}
when that is a module, else to C{splicing.x}.  A package's C{__init__}
that Python runs on the way to a submodule is not an edge.
"""

import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "splicing")

LAYERS = {
    "splicing.interfaces": 0,
    "splicing.core": 1,
    "splicing.paths": 1,
    "splicing.buffers": 1,
    "splicing": 1,
    "splicing.relay": 2,
    "splicing.http": 3,
    "splicing.app": 4,
}

#: The in-function imports allowed, (module, imported module): each for an
#: optional dependency or to keep a start-up cost off the path that does not need it.
#: Each process of a relay holds what it imported for its whole life, so
#: what only some configurations use is imported only by them
#: (docs/performance.md, "Memory").  (The reactor imports inside functions
#: are Twisted's, not the package's, so not counted: twist installs the
#: reactor it was asked for after it imported the plugin's modules.)
IN_FUNCTION = {
    ("splicing.app.cli", "splicing.app.web"):
        "the metrics endpoint (prometheus_client, twisted.web): only with --metrics",
    ("splicing.app.cli", "splicing.app.workers"): "the master of --workers: only with --workers",
    ("splicing.app.worker", "splicing.app.metrics"): "prometheus_client in a worker: only with --metrics",
    ("splicing.app.build", "splicing.http.proxy"): "the HTTP proxy: only for an HTTP relay",
    ("splicing.app.build", "splicing.http.rules"): "HTTP rules: only for an HTTP relay",
}


def modules():
    """{dotted name: path} of every module of the package."""
    found = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, os.path.dirname(ROOT))[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts.pop()
                found[".".join(parts)] = path
    return found


class _Imports(ast.NodeVisitor):
    """Every import of one module: (imported names, inside a function?)."""

    def __init__(self, module, isPackage):
        self.package = module if isPackage else module.rpartition(".")[0]
        self.depth = 0
        self.found = []

    def _function(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node):
        for alias in node.names:
            self.found.append(([alias.name], self.depth > 0, node.lineno))

    def visit_ImportFrom(self, node):
        base = node.module or ""
        if node.level:
            parts = self.package.split(".")
            parts = parts[: len(parts) - node.level + 1]
            base = ".".join(parts + ([base] if base else []))
        names = [base] + [base + "." + alias.name for alias in node.names]
        self.found.append((names, self.depth > 0, node.lineno))


def graph():
    """{module: {imported module: [(line, in a function?), ...]}} within the package."""
    known = modules()
    edges = {}
    for module, path in known.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        visitor = _Imports(module, path.endswith("__init__.py"))
        visitor.visit(tree)
        targets = edges.setdefault(module, {})
        for names, inFunction, line in visitor.found:
            base, members = names[0], names[1:]
            hits = [m for m in members if m in known] if members else []
            if not hits and base in known:
                hits = [base]
            for target in hits:
                if target != module:
                    targets.setdefault(target, []).append((line, inFunction))
    return edges


def layer(module):
    """The rank of C{module}'s layer (the longest prefix in L{LAYERS})."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise AssertionError("%s is in no layer: add its package to LAYERS" % (module,))


def cycles(edges):
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, onStack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        onStack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in onStack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                onStack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _where(edges, a, b):
    return "%s -> %s (line %s)" % (a, b, ", ".join(str(line) for line, _ in edges[a][b]))


def test_every_module_is_in_a_layer():
    for module in modules():
        layer(module)


def test_no_import_cycle():
    edges = graph()
    found = cycles(edges)
    detail = []
    for component in found:
        members = set(component)
        detail.append("cycle among %s:\n  %s" % (", ".join(component), "\n  ".join(
            _where(edges, a, b) for a in component for b in sorted(edges[a]) if b in members)))
    assert not found, "\n".join(detail)


def test_imports_point_down():
    edges = graph()
    upward = [_where(edges, a, b) + ": layer %d imports layer %d" % (layer(a), layer(b))
              for a in sorted(edges) for b in sorted(edges[a]) if layer(b) > layer(a)]
    assert not upward, "imports pointing up:\n  " + "\n  ".join(upward)


def test_in_function_imports_are_the_named_few():
    edges = graph()
    inFunction = {(a, b) for a in edges for b, uses in edges[a].items() if any(f for _, f in uses)}
    unexpected = sorted(inFunction - set(IN_FUNCTION))
    assert not unexpected, "imports inside functions (move them to the top, or name them in IN_FUNCTION " \
        "with the reason):\n  " + "\n  ".join(_where(edges, a, b) for a, b in unexpected)
    assert len(IN_FUNCTION) <= 6, "a handful, not %d" % (len(IN_FUNCTION),)


def test_few_modules_directly_in_the_package():
    top = [m for m in modules() if m.count(".") == 1 and m.rpartition(".")[2] not in
           {p.rpartition(".")[2] for p in LAYERS if p.count(".") == 1 and p != "splicing.interfaces"}]
    assert len(top) + 1 <= 12, top


def test_the_checks_see_a_cycle_and_an_upward_import():
    """The walk itself: a made-up graph with a cycle and an upward edge."""
    edges = {"splicing.relay.a": {"splicing.app.b": [(1, False)]},
             "splicing.app.b": {"splicing.relay.a": [(2, True)]}}
    assert cycles(edges) == [["splicing.app.b", "splicing.relay.a"]]
    assert layer("splicing.app.b") > layer("splicing.relay.a")
    assert "splicing.core.splice" in graph()["splicing"]
