"""Every script in examples/ runs (with `--small`: tiny sizes) and prints what it promises. Each is its own Python
process that compiles its own programs, so they run in the slow tier (`-m slow`, which CI runs)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))
EXPECT = {
    "edm_denoiser.py": "EDM Heun",
    "equinox_model.py": "gradient norm",
    "flax_model.py": "sample_many over the spacings",
    "flow_model.py": "UniPC-2",
    "grad_times.py": "held-out MSE",
    "search_your_model.py": "best classic solver",
}


def test_every_example_is_listed():
    assert sorted(p.name for p in SCRIPTS) == sorted(EXPECT)


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_example_runs(script):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_ENABLE_X64")}
    out = subprocess.run([sys.executable, str(script), "--small"], capture_output=True, text=True, timeout=600,
                         cwd=EXAMPLES, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert EXPECT[script.name] in out.stdout, out.stdout[-2000:]
