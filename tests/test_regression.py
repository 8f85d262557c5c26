"""Regression pins: today's outputs equal the golden outputs recorded before the package restructuring.

The cases (a preset's samples on the shipped digits zoo, short plain and multi-stage training runs, two timestep
fits, a GA run and a predictor fit) are in `regression_cases.py`; `make_regression.py` recorded them. Each case is
a whole run (training, a fit, a GA, a search predictor) that compiles its own programs, 20-40 s on 2 cores, so
the pins run in the slow tier (`-m slow`, which CI runs too).
"""

from pathlib import Path

import numpy as np
import pytest
from regression_cases import CASES, TOLERANCES

GOLDEN = Path(__file__).parent / "data" / "regression.npz"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("name", sorted(CASES))
def test_outputs_equal_the_recorded_ones(name, golden, tmp_path):
    got = CASES[name](tmp_path)
    want = {k.split("/", 1)[1]: v for k, v in golden.items() if k.split("/", 1)[0] == name}
    assert want and sorted(got) == sorted(want), f"{name}: recorded {sorted(want)}, got {sorted(got)}"
    for key, ref in want.items():
        value = np.asarray(got[key])
        assert value.shape == ref.shape, f"{name}/{key}: shape {value.shape} != recorded {ref.shape}"
        scale = max(float(np.max(np.abs(ref))), 1e-30) if ref.size else 1.0
        np.testing.assert_allclose(value, ref, rtol=TOLERANCES[name], atol=TOLERANCES[name] * scale,
                                   err_msg=f"{name}/{key}")  # fmt: skip
