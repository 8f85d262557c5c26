"""The package's layers, read from the source with `ast`: no module imports a higher layer, no import cycle exists
(between modules, or between the application packages), every module states its job in a docstring and stays
small.

Layers, bottom to top (README "Layout"):
1. core: noise schedules, spacings, preconditionings, models, the USF step, the Schedule, presets, the sampler,
   oracles;
2. shared blocks: nets, the optimisation helper, config validation, metrics (and conditional metrics), paired
   verdicts, data, plots;
3. applications: train/, stages/, timesteps/, search/;
4. storage: the zoo;
5. workflows: the search job, the timestep run;
6. the command line.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "omsjax"

LAYERS = {
    "core": (
        "paths",
        "files",
        "checks",
        "schedules",
        "spacing",
        "precond",
        "models",
        "usf",
        "schedule",
        "presets",
        "integrate",
        "diagnose",
        "sampler",
        "oracles",
    ),
    "blocks": ("nets", "optim", "config", "metrics", "conditional", "verdict", "data", "plots"),
    "applications": ("train", "stages", "timesteps", "search"),
    "storage": ("zoo",),
    "workflows": ("workflows",),
    "cli": ("cli", "__main__"),
}
RANK = {top: i for i, (_, tops) in enumerate(LAYERS.items()) for top in tops}
NAMES = list(LAYERS)

# Modules kept so that old import paths still work after a move: each forwards to the module it names, a layer
# above, and holds nothing else (checked below). These edges are the only upward imports allowed.
COMPAT_FORWARDS = {
    "omsjax.search.job": "omsjax.workflows.search_job",
    "omsjax.timesteps": "omsjax.workflows.timesteps_run",
}
MAX_LINES = 500


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The omsjax module that `name` (a module, or a module's attribute) refers to."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """Every omsjax module that `module` imports, at the top or inside functions, including
    `importlib.import_module("omsjax....")` with a constant name."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):  # imports for type checkers only are not run
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            node.body = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: the package, node.level - 1 levels up
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names]  # each resolves to the module it names or is in
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        for name in names:
            if name == "omsjax" or name.startswith("omsjax."):
                target = _resolve(name)
                if target and target != module:
                    out.add(target)
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def _rank(module: str) -> int | None:
    """The layer of a module. The package's own `__init__` (`omsjax`), the facade, is as high as what it imports
    eagerly (the core; the rest it imports on first use)."""
    parts = module.split(".")
    if len(parts) == 1:
        return max(_rank(t) for t in GRAPH[module])
    return RANK.get(parts[1])


def test_every_module_has_a_layer():
    missing = sorted(m for m in MODULES if m != "omsjax" and _rank(m) is None)
    assert not missing, f"modules without a layer in tests/test_layers.py LAYERS: {missing}"


def test_no_module_imports_a_higher_layer():
    bad = []
    for module, targets in GRAPH.items():
        for target in targets:
            if COMPAT_FORWARDS.get(module) == target:
                continue
            lo, hi = _rank(module), _rank(target)
            if lo is not None and (hi is None or hi > lo):
                bad.append(f"{module} ({NAMES[lo]}) imports {target} ({'facade' if hi is None else NAMES[hi]})")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The non-trivial strongly connected components of `graph` (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _without_forwards(graph):
    return {m: {t for t in ts if COMPAT_FORWARDS.get(m) != t} for m, ts in graph.items()}


def test_no_import_cycle_between_modules():
    assert _cycles(_without_forwards(GRAPH)) == []


def test_no_import_cycle_between_packages():
    def unit(m):
        parts = m.split(".")
        return ".".join(parts[:2])

    pkg = {}
    for module, targets in _without_forwards(GRAPH).items():
        pkg.setdefault(unit(module), set()).update(unit(t) for t in targets if unit(t) != unit(module))
    pkg.pop("omsjax", None)  # the facade imports the core
    assert _cycles(pkg) == []


def test_the_layer_checks_catch_an_upward_import_and_a_cycle():
    graph = {"omsjax.schedules": {"omsjax.train.loop"}, "omsjax.train.loop": {"omsjax.schedules"}}
    assert _cycles(graph) == [["omsjax.schedules", "omsjax.train.loop"]]
    assert _rank("omsjax.train.loop") > _rank("omsjax.schedules")


@pytest.mark.parametrize("module", sorted(COMPAT_FORWARDS))
def test_compatibility_forwards_hold_nothing_else(module):
    tree = ast.parse(MODULES[module].read_text())
    allowed = (ast.Import, ast.ImportFrom, ast.Expr, ast.FunctionDef, ast.Assign)
    assert all(isinstance(node, allowed) for node in tree.body)
    if module == "omsjax.search.job":
        assert all(isinstance(node, (ast.ImportFrom, ast.Expr)) for node in tree.body)


def test_every_module_is_small_and_states_its_job():
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"
    silent = [m for m, p in MODULES.items() if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not silent, f"modules without a docstring: {silent}"
