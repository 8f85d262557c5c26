"""The package's layers, read from the source with `ast`: no module imports a higher layer, no import cycle exists
(between modules, or between the application packages, type-only imports included), every module states its job
in a docstring and stays small, no module uses another module's private (`_name`) names, and no public function
takes more than 12 parameters.

Layers, bottom to top (README "Layout"):
1. core: noise schedules, spacings, preconditionings, models, the sampling options, the USF step, the Schedule,
   presets, the sampler, oracles;
2. shared blocks: nets, the optimisation helper, config validation, metrics (and conditional metrics), paired
   verdicts, data, plots;
3. applications: train/, stages/, timesteps/, search/;
4. storage: the zoo;
5. workflows: the search job, the timestep run;
6. the command line.
"""

import ast
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "omsjax"

LAYERS = {
    "core": (
        "distributed",
        "paths",
        "files",
        "fields",
        "checks",
        "options",
        "noise",
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

# Deprecated import paths (CHANGELOG.md): each forwards to the module it names, a layer above, with a
# DeprecationWarning, and holds nothing else (checked below). These edges are the only upward imports allowed.
COMPAT_FORWARDS = {
    "omsjax.timesteps": "omsjax.workflows.timesteps_run",
    "omsjax.schedules": "omsjax.spacing",  # and, as a whole module, omsjax.noise
    "omsjax.config": "omsjax.fields",
    "omsjax.conditional": "omsjax.metrics.conditional",
}
MAX_LINES = 400
MAX_PARAMS = 12


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
    """Every omsjax module that `module` imports, at the top, inside functions or for type checkers only, including
    `importlib.import_module("omsjax....")` with a constant name."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))  # imports for type checkers only count too
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
def test_deprecated_paths_warn_and_forward_only(module):
    """A deprecated path is a whole module that warns on import and forwards, or a module `__getattr__` that
    warns before it imports the new home; the forward's target is imported nowhere else."""
    tree = ast.parse(MODULES[module].read_text())
    getattr_fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "__getattr__"]
    if not getattr_fn:
        assert all(isinstance(node, (ast.Import, ast.ImportFrom, ast.Expr)) for node in tree.body)
        assert "DeprecationWarning" in ast.unparse(tree)
        return
    assert "DeprecationWarning" in ast.unparse(getattr_fn[0])
    target = COMPAT_FORWARDS[module]
    outside = [n for n in tree.body if n is not getattr_fn[0] and target in ast.unparse(n)]
    assert all(isinstance(n, (ast.Assign, ast.Expr)) for n in outside), f"{module} imports {target} outside __getattr__"


def test_every_module_is_small_and_states_its_job():
    big = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"
    silent = [m for m, p in MODULES.items() if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not silent, f"modules without a docstring: {silent}"


# NamedTuple's own API: attributes that start with "_" without being private.
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_field_defaults", "_make"}


def _private_uses(path: Path, module: str | None) -> list[str]:
    """`file:line name` for each private name of another omsjax module that the file imports (`from omsjax.x import
    _y`) or reads from a module it imported (`x._y`, with `x` bound to an omsjax module)."""
    tree = ast.parse(path.read_text(), str(path))
    package = None if module is None else (module if path.name == "__init__.py" else module.rpartition(".")[0])
    bound, out = {}, []  # local name -> omsjax module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("omsjax"):
                    bound[a.asname or a.name.split(".")[0]] = a.name if a.asname else "omsjax"
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if not (base == "omsjax" or base.startswith("omsjax.")):
                continue
            for a in node.names:
                full = f"{base}.{a.name}"
                if a.name.startswith("_") and not a.name.startswith("__") and _resolve(full) != module:
                    out.append(f"{path.name}:{node.lineno} imports {full}")
                if full in MODULES:
                    bound[a.asname or a.name] = full
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and node.attr not in NAMEDTUPLE_API
            and bound[node.value.id] != module
        ):
            out.append(f"{path.name}:{node.lineno} reads {bound[node.value.id]}.{node.attr}")
    return out


def test_no_module_uses_another_modules_private_names():
    bad = [u for m, p in MODULES.items() for u in _private_uses(p, m)]
    assert not bad, "private names used outside their module (make them public where they are, or move them):\n" + (
        "\n".join(sorted(bad))
    )


def test_tests_import_no_private_names():
    """Tests reach a module's private names only as `module._name` (the module under test), never by import."""
    tests = Path(__file__).resolve().parent
    bad = [u for p in sorted(tests.glob("*.py")) for u in _private_uses(p, None) if " imports " in u]
    assert not bad, "\n".join(bad)


def _params(fn: ast.FunctionDef) -> int:
    a = fn.args
    n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
    return n - bool(a.args and a.args[0].arg in ("self", "cls"))


def _wide(tree: ast.Module) -> list[str]:
    out = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_") and _params(node) > MAX_PARAMS:
            out.append(f"{node.name} ({_params(node)})")
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for fn in node.body:
                public = fn.name == "__init__" or not fn.name.startswith("_") if isinstance(fn, ast.FunctionDef) else 0
                if public and _params(fn) > MAX_PARAMS:
                    out.append(f"{node.name}.{fn.name} ({_params(fn)})")
    return out


def test_no_public_function_takes_more_than_12_parameters():
    """Options that travel together are grouped into small frozen dataclasses (configuration dataclasses, whose
    generated `__init__` is not in the source, are not counted)."""
    wide = {m: w for m, p in MODULES.items() if (w := _wide(ast.parse(p.read_text())))}
    assert not wide, f"public functions over {MAX_PARAMS} parameters: {wide}"


def test_the_private_name_and_width_checks_catch_a_violation(tmp_path):
    f = tmp_path / "probe.py"
    f.write_text(
        "from omsjax import schedule\nfrom omsjax.schedule import _x\nimport omsjax.models as M\n"
        "schedule._y\nM._bcast\nM.Schedule._replace\n"
    )
    uses = _private_uses(f, "omsjax.sampler")
    assert [u.split()[-1] for u in uses] == ["omsjax.schedule._x", "omsjax.schedule._y", "omsjax.models._bcast"]
    assert _private_uses(f, "omsjax.schedule") == ["probe.py:5 reads omsjax.models._bcast"]
    wide = ast.parse("def f(" + ", ".join(f"a{i}" for i in range(13)) + "): pass\ndef _g(" + "a, " * 20 + "): pass")
    assert _wide(wide) == ["f (13)"]


@pytest.mark.parametrize(
    "old,new",
    [
        ("omsjax.schedules.time_steps", "omsjax.spacing.time_steps"),
        ("omsjax.schedules.SKIP_TYPES", "omsjax.spacing.SPACINGS"),
        ("omsjax.spacing.SKIP_TYPES", "omsjax.spacing.SPACINGS"),
        ("omsjax.schedules.karras_sigmas", "omsjax.spacing.karras_sigmas"),
        ("omsjax.schedules.times_from_sigmas", "omsjax.spacing.times_from_sigmas"),
        ("omsjax.timesteps.finetune", "omsjax.workflows.timesteps_run.finetune"),
        ("omsjax.timesteps.run", "omsjax.workflows.timesteps_run.run"),
        ("omsjax.timesteps.METHODS", "omsjax.workflows.timesteps_run.METHODS"),
    ],
)
def test_deprecated_names_warn_naming_the_new_one_and_resolve_to_it(old, new):
    import importlib

    def lookup(path):
        module, _, name = path.rpartition(".")
        with warnings.catch_warnings():  # a deprecated module warns on import: tested on its own below
            warnings.simplefilter("ignore", DeprecationWarning)
            return module, name, importlib.import_module(module)

    module, name, mod = lookup(old)
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated: use {new}"):
        got = getattr(mod, name)
    new_module, new_name, new_mod = lookup(new)
    assert got is getattr(new_mod, new_name)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        _ = mod.no_such_name


@pytest.mark.parametrize(
    "old,new,name",
    [
        ("omsjax.config", "omsjax.fields", "to_dict"),
        ("omsjax.conditional", "omsjax.metrics.conditional", "scores"),
        ("omsjax.schedules", "omsjax.noise", "vp_linear"),
    ],
)
def test_a_moved_module_warns_on_import_and_forwards(old, new, name):
    import importlib
    import sys

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated: use {new}"):
        mod = importlib.import_module(old)
    assert getattr(mod, name) is getattr(importlib.import_module(new), name)
