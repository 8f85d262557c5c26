"""benchmarks/bench_device.py in its CPU mode (`--tiny`): every part runs and its section is written whole."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow(seconds=80)  # compiles U-Net samplers, an evaluator, the predictor fit, the GA, a train step
def test_bench_device_tiny_writes_its_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n\n<!-- device:begin -->\nold\n<!-- device:end -->\n\n<!-- other:begin -->\nkept\n"
                       "<!-- other:end -->\n")  # fmt: skip
    # From `benchmarks/` with no checkpoint folder set, as a user runs it: under a regular (not editable) install,
    # as in CI, the script must still find the repository's checkpoints.
    env = {k: v for k, v in os.environ.items() if k != "OMSJAX_CHECKPOINTS"}
    res = subprocess.run([sys.executable, "bench_device.py", "--tiny", "--results", str(results)],
                         cwd=REPO / "benchmarks", env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    text = results.read_text()
    assert "old" not in text and "kept" in text and text.count("<!-- device:begin -->") == 1
    for part in ("(a)", "(b)", "(c)", "(d)", "(e)", "(f)"):
        assert f"### {part}" in text
    for row in ("| 8 | DDIM |", "| 8 | DPM-Solver++(3M) |", "| 8 | UniPC-3 (bh2) |", "`vmap`, one program",
                "| 1/4 large |", "| GA, 5 generations", "images/s", "| forward, batch 8 |"):  # fmt: skip
        assert row in text
    assert "nan" not in text.lower()
