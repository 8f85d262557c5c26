"""`omsjax.verdict`: paired verdicts against a float64 transcription of REFERENCE §18 (mean +- 2 SE of the paired
differences), ties within the noise, and divergence by signs."""

import math

import numpy as np
import pytest

from omsjax import verdict


def _by_hand(a, b, z=2.0):
    d = [x - y for x, y in zip(a, b, strict=True)]
    m = sum(d) / len(d)
    se = math.sqrt(sum((x - m) ** 2 for x in d) / (len(d) - 1)) / math.sqrt(len(d))
    return m, se, "beats" if m + z * se < 0 else "loses" if m - z * se > 0 else "tie"


@pytest.mark.parametrize(
    "a,b",
    [
        ([1.0, 1.1, 0.9], [2.0, 2.2, 1.9]),  # far apart: beats
        ([2.0, 2.2, 1.9], [1.0, 1.1, 0.9]),  # loses
        ([1.0, 1.3, 0.8], [1.1, 1.0, 0.9]),  # within the noise: tie
        ([3.709, 3.7, 3.72, 3.69], [3.648, 3.66, 3.64, 3.65]),  # a small but consistent loss
        ([0.31094, 0.3115, 0.3109], [0.31106, 0.3110, 0.3112]),  # 1e-4 apart, noisier than that: tie
    ],
)
def test_paired_matches_the_formula(a, b):
    p = verdict.paired(a, b)
    m, se, v = _by_hand(a, b)
    assert p.mean == pytest.approx(m, rel=1e-12) and p.se == pytest.approx(se, rel=1e-12) and p.verdict == v
    assert p.diffs == pytest.approx([x - y for x, y in zip(a, b, strict=True)])


def test_the_same_scores_tie_and_z_sets_the_bar():
    assert verdict.paired([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]).verdict == "tie"
    a, b = [1.0, 1.1, 0.95], [1.2, 1.2, 1.2]
    assert verdict.paired(a, b).verdict == "beats" and verdict.paired(a, b, z=20).verdict == "tie"


def test_divergence_goes_by_signs():
    inf = math.inf
    assert verdict.paired([1.0, 2.0, 1.5], [inf, 2.5, 1.6]).verdict == "beats"
    assert verdict.paired([inf, 2.0, 1.5], [1.0, 1.0, 1.0]).verdict == "loses"
    assert verdict.paired([inf, 1.0, 1.5], [1.0, 2.0, 1.6]).verdict == "tie"  # one draw each way
    both = verdict.paired([inf, 1.0, 1.0, 1.0], [inf, 2.0, 2.0, 2.1])  # both diverged on draw 0: no difference
    assert both.diffs[0] == 0.0 and both.verdict == "beats"
    assert verdict.paired([1.0, 2.0], [inf, inf]).to_dict()["mean"] is None


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="at least 2 noise draws"):
        verdict.paired([1.0], [2.0])
    with pytest.raises(ValueError, match="same draws"):
        verdict.paired([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="not NaN"):
        verdict.paired([1.0, np.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="z must be"):
        verdict.paired([1.0, 2.0], [1.0, 2.0], z=0)
    with pytest.raises(ValueError, match="at least 2 draws"):
        verdict.mean_se([1.0])


def test_text_and_dict():
    p = verdict.paired([1.0, 1.1, 0.9], [2.0, 2.2, 1.9])
    assert p.text() == f"{p.mean:+.3f} +- {p.se:.3f} over 3 draws: beats"
    assert p.to_dict() == {"mean": p.mean, "se": p.se, "diffs": list(p.diffs), "verdict": "beats"}
