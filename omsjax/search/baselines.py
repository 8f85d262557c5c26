"""The classic solvers that searched schedules are compared with, and the NFE a single model gets under a budget.

Solver mode: every solver of `BASELINES` (DDIM, DPM-Solver++(2M, 3M), UniPC-2/3 bh1/bh2) over the four step
spacings at the search's NFE (`baselines`; `afs="zero_x0"` gives the same solvers with an analytical first step).
Model and joint modes: the smaller grid `MODEL_MODE_BASELINES` x `MODEL_MODE_SPACINGS` with each zoo model alone at
the largest NFE that fits the budget (`baseline_nfe`). Shared by `omsjax search` (`workflows.search_job`) and
`find_schedule`.
"""

from __future__ import annotations

import math

from omsjax import presets, schedules
from omsjax.schedule import Schedule

__all__ = ["BASELINES", "MODEL_MODE_BASELINES", "MODEL_MODE_SPACINGS", "baselines", "baseline_nfe", "largest_nfe"]

BASELINES = presets.BASELINES  # the published solvers searched schedules are compared with

# Model and joint modes compare with every zoo model, so they use a smaller grid of the strongest solvers.
MODEL_MODE_BASELINES = ("DPM-Solver++(2M)", "UniPC-2 (bh2)", "UniPC-3 (bh2)")
MODEL_MODE_SPACINGS = ("logSNR", "time_quadratic")


def baselines(noise_schedule, nfe: int, model: int = 0, *, afs: str = "none", solvers=None, spacings=None,
              **times) -> dict[str, Schedule]:  # fmt: skip
    """{"solver, spacing": Schedule} of the baselines at `nfe` with one zoo model (those that exist at it): every
    solver of BASELINES (or `solvers`) over every spacing (or `spacings`); `afs="zero_x0"` gives the same solvers
    with an analytical first step (one more step, same NFE). `times`: t_start / t_end (default the presets')."""
    tag = "" if afs == "none" else " +AFS"
    grid = presets.named_grid(noise_schedule, nfe, solvers or BASELINES, spacings or schedules.SKIP_TYPES, model=model,
                              afs=afs, **times)  # fmt: skip
    return {f"{name}{tag}, {skip}": s for (name, skip), s in grid.items()}


def largest_nfe(latency: float, budget: float, cap: int) -> int:
    """The most calls of a model of `latency` that `budget` (same units) pays for, at most `cap`."""
    return min(int(math.floor(budget / latency + 1e-9)), cap) if latency > 0 else cap


def baseline_nfe(latency: float, kind: str, budget: float, positions: int, calls_per_step: int = 1) -> int:
    """The steps of a single-model baseline under a model/joint-mode budget: `budget` // `calls_per_step` when
    `kind` is "nfe" (a guided step makes 2 calls), else the largest number of steps of this latency (times
    `calls_per_step`) within the cost `budget`, at most `positions`."""
    if kind == "nfe":
        return int(budget) // calls_per_step
    return largest_nfe(latency * calls_per_step, budget, positions)
