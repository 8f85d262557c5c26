"""The classic solvers that searched schedules are compared with, and the NFE a single model gets under a budget.

`for_space(ns, space, kind, budget)` is the one list of a search's baselines, everything its space can express:
- solver mode: every solver of `BASELINES` (DDIM, DPM-Solver++(2M, 3M), UniPC-2/3 bh1/bh2) over the four step
  spacings at the search's NFE, each also with an analytical first step ("+AFS": one more step at the same NFE),
  since the searched schedules may use one: 56 settings;
- model and joint modes: the smaller grid `MODEL_MODE_BASELINES` x (`MODEL_MODE_SPACINGS` and the noise
  schedule's `default_spacing`) with each zoo model
  alone at the largest NFE that fits the budget (`baseline_nfe`), in joint mode (which searches AFS) also +AFS.
Every step at the space's guidance scale, from its t_start to t_end. Shared by `omsjax search`
(`workflows.search_job`) and `find_schedule`.
"""

from __future__ import annotations

import math

from omsjax import presets
from omsjax.schedule import Schedule
from omsjax.search.space import SearchSpace
from omsjax.spacing import SPACINGS

__all__ = [
    "BASELINES",
    "MODEL_MODE_BASELINES",
    "MODEL_MODE_SPACINGS",
    "baselines",
    "for_space",
    "baseline_nfe",
    "largest_nfe",
]

BASELINES = presets.BASELINES  # the published solvers searched schedules are compared with

# Model and joint modes compare with every zoo model, so they use a smaller grid of the strongest solvers.
MODEL_MODE_BASELINES = ("DPM-Solver++(2M)", "UniPC-2 (bh2)", "UniPC-3 (bh2)")
MODEL_MODE_SPACINGS = ("logSNR", "time_quadratic")


def baselines(
    noise_schedule, nfe: int, model: int = 0, *, afs: str = "none", solvers=None, spacings=None, **times
) -> dict[str, Schedule]:
    """{"solver, spacing": Schedule} of the baselines at `nfe` with one zoo model (those that exist at it): every
    solver of BASELINES (or `solvers`) over every spacing (or `spacings`); `afs="zero_x0"` gives the same solvers
    with an analytical first step (one more step, same NFE). `times`: t_start / t_end (default the presets')."""
    tag = "" if afs == "none" else " +AFS"
    grid = presets.named_grid(
        noise_schedule, nfe, solvers or BASELINES, spacings or SPACINGS, model=model, afs=afs, **times
    )
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


def for_space(
    noise_schedule, space: SearchSpace, kind: str = "cost", budget: float | None = None
) -> dict[str, Schedule]:
    """{name: Schedule} of every baseline of a search in `space` (module docstring): the solver-mode grid at the
    space's NFE, or each zoo model alone at the largest NFE its latency (`kind` "cost") or the NFE budget
    (`kind` "nfe") pays for, named "solver[ +AFS], spacing[, model m, NFE n]". +AFS variants come whenever the
    space searches the analytical first step (solver and joint modes)."""
    times = dict(t_start=space.t_start, t_end=space.t_end, guidance=space.guidance)
    afs = ("none", "zero_x0") if space.mode != "model" else ("none",)
    if space.mode == "solver":
        return {
            name: s
            for a in afs
            for name, s in baselines(noise_schedule, space.nfe, space.model, afs=a, **times).items()
        }
    if budget is None:
        raise ValueError(f"{space.mode} mode's baselines need the search's budget")
    out, spacings = {}, tuple(dict.fromkeys((*MODEL_MODE_SPACINGS, noise_schedule.default_spacing)))
    for m, lat in enumerate(space.latencies):
        n = baseline_nfe(lat, kind, budget, space.num_positions, space.calls_per_step)
        for a in afs if n >= 1 else ():
            grid = baselines(noise_schedule, n, m, afs=a, solvers=MODEL_MODE_BASELINES, spacings=spacings, **times)
            out.update({f"{name}, model {m}, NFE {n}": s for name, s in grid.items()})
    return out
