"""Verdicts on paired scores: "beats", "tie" or "loses", only as far as the noise allows.

Two samplers scored on the same K noise draws (lower is better) give paired differences d_k = a_k - b_k. Their
mean and standard error std(d, ddof=1) / sqrt(K) say how far apart the two are and how well K draws know it:

    "beats"  when mean(d) + z SE < 0,
    "loses"  when mean(d) - z SE > 0,
    "tie"    otherwise (z = 2 by default),

the rule of REFERENCE §18. A draw where one sampler diverged (score inf) and the other did not is a difference of
-inf or +inf; one where both diverged, 0. With a non-finite difference the verdict goes by signs: "beats" when no
draw is worse and one is better, "loses" the other way round, "tie" when they disagree.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["BEATS", "TIE", "LOSES", "VERDICTS", "Paired", "paired", "mean_se"]

BEATS, TIE, LOSES = "beats", "tie", "loses"
VERDICTS = (BEATS, TIE, LOSES)


class Paired(NamedTuple):
    """The paired comparison of a with b over K draws: `mean` and `se` of d = a - b, the differences `diffs`, and
    the `verdict` on a ("beats" b, "tie", "loses")."""

    mean: float
    se: float
    diffs: tuple[float, ...]
    verdict: str

    def text(self, digits: int = 3) -> str:
        """E.g. "-0.412 +- 0.051 over 3 draws: beats"."""
        return f"{self.mean:+.{digits}f} +- {self.se:.{digits}f} over {len(self.diffs)} draws: {self.verdict}"

    def to_dict(self) -> dict:
        """JSON-ready (inf as None)."""
        fin = lambda v: float(v) if math.isfinite(v) else None  # noqa: E731
        return {
            "mean": fin(self.mean),
            "se": fin(self.se),
            "diffs": [fin(d) for d in self.diffs],
            "verdict": self.verdict,
        }


def mean_se(values) -> tuple[float, float]:
    """(mean, standard error std(ddof=1) / sqrt(K)) of K >= 2 finite values; inf when any is inf."""
    v = np.asarray(values, np.float64)
    if v.ndim != 1 or v.size < 2:
        raise ValueError(f"a standard error needs at least 2 draws, got {v.size}")
    if not np.all(np.isfinite(v)):
        return float(np.mean(v)), float("inf")
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))


def paired(a, b, *, z: float = 2.0) -> Paired:
    """The paired comparison of scores `a` and `b` (lower is better) on the same K >= 2 noise draws (module
    docstring). NaN scores are errors."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores need the same draws: shapes {a.shape} and {b.shape}")
    if a.size < 2:
        raise ValueError(f"a paired verdict needs at least 2 noise draws, got {a.size}")
    if np.any(np.isnan(a)) or np.any(np.isnan(b)):
        raise ValueError("a paired verdict needs scores that are not NaN")
    if not (math.isfinite(z) and z > 0):
        raise ValueError(f"z must be a finite number > 0, got {z}")
    both_inf = np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))
    d = np.where(both_inf, 0.0, a - np.where(both_inf, 0.0, b))
    diffs = tuple(float(x) for x in d)
    if not np.all(np.isfinite(d)):
        mean = float(np.mean(d)) if not (np.any(d == np.inf) and np.any(d == -np.inf)) else float("nan")
        better, worse = bool(np.any(d < 0)), bool(np.any(d > 0))
        verdict = BEATS if better and not worse else LOSES if worse and not better else TIE
        return Paired(mean, float("inf"), diffs, verdict)
    mean, se = mean_se(d)
    verdict = BEATS if mean + z * se < 0 else LOSES if mean - z * se > 0 else TIE
    return Paired(mean, se, diffs, verdict)
