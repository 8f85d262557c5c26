"""The docs: the site builds in strict mode (mkdocs + mkdocstrings), it documents every public name and every
command, and every Python block of README.md and docs/*.md runs. A block that is a template (it needs the reader's
own model or metric) says so on its first line, `# template: NAME -- ...`, and is excluded here by that name; it
must still compile. Running the blocks is the slow tier's (the README's search block takes about 2 minutes)."""

import argparse
import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import omsjax
from omsjax import cli

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
# (file, name) of every template block; a new one must be added here by name.
TEMPLATES = {
    ("README.md", "your model"),
    ("README.md", "find_schedule"),
    ("docs/index.md", "sample with a preset"),
    ("docs/your_model.md", "find_schedule for your model"),
    ("docs/many_devices.md", "distributed search"),
}
# What a runnable block prints, by (file, index of its blocks).
EXPECT = {("README.md", 1): "omsjax_schedule", ("docs/many_devices.md", 1): "coordinate FD of N(0, I) samples: 0.00"}


def python_blocks() -> list[tuple[str, int, str | None, str]]:
    """(file relative to the repository, index among its Python blocks, template name or None, code)."""
    out = []
    for page in PAGES:
        blocks = re.findall(r"^```python\n(.*?)^```$", page.read_text(), flags=re.S | re.M)
        for i, code in enumerate(blocks):
            m = re.match(r"# template: (.+?) -- ", code)
            out.append((str(page.relative_to(REPO)), i, m.group(1) if m else None, code))
    return out


BLOCKS = python_blocks()
RUNNABLE = [b for b in BLOCKS if b[2] is None]


def test_every_block_compiles_and_the_templates_are_the_named_ones():
    assert len(BLOCKS) >= 5 and RUNNABLE
    for page, i, _, code in BLOCKS:
        compile(code, f"{page} block {i}", "exec")
    assert {(page, name) for page, _, name, _ in BLOCKS if name is not None} == TEMPLATES
    assert {(page, i) for page, i, _, _ in RUNNABLE} == set(EXPECT)


@pytest.mark.slow(seconds=170)  # the README's search block; the others take seconds
@pytest.mark.parametrize("block", RUNNABLE, ids=[f"{b[0]}-{b[1]}" for b in RUNNABLE])
def test_block_runs(block, tmp_path):
    """As a reader in a clone of the repository would run it: the shipped zoo found, outputs in a fresh folder."""
    page, i, _, code = block
    env = {**os.environ, "OMSJAX_CHECKPOINTS": str(REPO / "checkpoints")}
    env = {k: v for k, v in env.items() if not k.startswith("JAX_ENABLE_X64")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, cwd=tmp_path,
                         env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert EXPECT[(page, i)] in out.stdout, out.stdout[-2000:]


def test_the_site_builds_and_documents_every_public_name_and_command(tmp_path):
    site = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                         capture_output=True, text=True, timeout=300, cwd=REPO)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    html = "".join(p.read_text() for p in (site / "api").rglob("*.html"))
    anchors = set(re.findall(r'id="(omsjax[\w.]*)"', html))
    # Every public name of the package, documented where it is defined.
    for name in omsjax.__all__:
        obj = getattr(omsjax, name)
        where = obj.__name__ if isinstance(obj, type(os)) else f"{obj.__module__}.{obj.__qualname__}"
        assert where in anchors, f"omsjax.{name} ({where}) is not in the API reference"
    for module in ("omsjax.search.find", "omsjax.search.evaluate", "omsjax.train", "omsjax.stages", "omsjax.zoo"):
        assert module in anchors, module
    # The figure of the Schedule page is there, and every command of `omsjax` is in the command page.
    assert (site / "img" / "schedule_fields.png").stat().st_size > 10_000
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    text = (REPO / "docs" / "cli.md").read_text()
    assert set(sub.choices) == set(re.findall(r"\| `omsjax ([\w-]+)`", text))


# The modules of the public API whose every exported function and class must say what it does.
PUBLIC = ["omsjax", "omsjax.sampler", "omsjax.schedule", "omsjax.models", "omsjax.noise", "omsjax.presets",
          "omsjax.usf", "omsjax.oracles", "omsjax.spacing", "omsjax.precond", "omsjax.search", "omsjax.search.find",
          "omsjax.search.evaluate", "omsjax.search.encoding", "omsjax.search.space", "omsjax.search.loop",
          "omsjax.search.ga", "omsjax.search.predictor", "omsjax.search.final", "omsjax.search.guided",
          "omsjax.search.baselines", "omsjax.verdict", "omsjax.metrics.reference", "omsjax.train", "omsjax.stages",
          "omsjax.timesteps", "omsjax.zoo", "omsjax.metrics", "omsjax.metrics.conditional", "omsjax.nets",
          "omsjax.data", "omsjax.optim"]  # fmt: skip


def test_every_exported_function_and_class_has_a_docstring():
    missing = []
    for name in PUBLIC:
        mod = importlib.import_module(name)
        assert mod.__doc__, name
        for attr in getattr(mod, "__all__", []):
            obj = getattr(mod, attr)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and not inspect.getdoc(obj):
                missing.append(f"{name}.{attr}")
    assert not missing, missing
