"""`SampleOptions`: what every sampling call of an evaluation or a search gets besides the schedule and the noise.

The conditioning (`cond`, and `uncond` for classifier-free guidance), the data mean of an analytical first step
and dynamic thresholding travel together from `find_schedule` through the `Evaluator` to every sampling call; this
one value carries them (the same meaning as `omsjax.sample`'s keywords of the same names). `cond`'s and
`uncond`'s leaves hold one row per sample (leading axis); an evaluation on n samples takes the first n rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from omsjax.checks import check_conditioning, thresholding_option

__all__ = ["SampleOptions"]


@dataclasses.dataclass(frozen=True, eq=False)
class SampleOptions:
    """Conditioning, data mean and thresholding of every sampling call (see `omsjax.sample`).

    cond: labels or embeddings, a pytree of arrays with one row per sample (None: unconditional models).
    uncond: the unconditional input of classifier-free guidance (cond's structure), needed for a guidance scale
      other than 1.
    data_mean: the x0 guess of the analytical first step "mean_x0", broadcastable to one sample.
    thresholding: None (off), True (ratio 0.995, max_val 1.0) or (ratio, max_val); stored as the pair or None.
    """

    cond: Any = None
    uncond: Any = None
    data_mean: Any = None
    thresholding: Any = None

    def __post_init__(self):
        object.__setattr__(self, "thresholding", thresholding_option(self.thresholding))
        if self.uncond is not None and self.cond is None:
            raise ValueError("uncond (the unconditional input of guidance) needs cond, the conditioning")

    def rows(self, n: int, name: str = "n") -> SampleOptions:
        """These options for the first `n` samples (cond's and uncond's first n rows), checked; a ValueError
        (naming `n` as `name`) when cond has fewer rows."""
        rows = [np.shape(a)[0] for a in jax.tree.leaves((self.cond, self.uncond)) if np.ndim(a) >= 1]
        if self.cond is not None and (not rows or min(rows) < n):
            raise ValueError(
                f"cond and uncond need at least {name} = {n} rows (one per sample), got {min(rows, default=0)}"
            )
        take = lambda t: None if t is None else jax.tree.map(lambda a: a[:n], t)  # noqa: E731
        out = dataclasses.replace(self, cond=take(self.cond), uncond=take(self.uncond))
        check_conditioning(out.cond, out.uncond, n)
        return out
