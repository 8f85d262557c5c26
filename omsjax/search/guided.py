"""The trade-off report of a search that chose its own guidance scales (the per-step guidance gene).

A schedule that guides some steps less than the user's scale W trades prompt adherence for distance to the data:
on the digits, FD to data falls and the error rate of the requested class rises as w falls. Such a schedule is
worth shipping only if no classic solver gets both at once with no more model calls. `tradeoff(...)` scores the
schedule and the presets at the scales `SCALES` (and W) on the same held-out draws, each preset at the most steps
its calls allow (equal or fewer model calls than the schedule; a guided step calls twice), and reports, on the
means over the draws, which presets dominate it on (`x`, `y`) (lower is better on both: by default the FD to
data and the error rate, in %, of the requested class): no worse on either and better on one. An empty
`dominated_by` puts the schedule on the Pareto front of that comparison.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from omsjax.schedule import Schedule
from omsjax.search import baselines
from omsjax.search.evaluate import Evaluator

__all__ = ["SCALES", "SOLVERS", "SPACINGS", "tradeoff", "dominates"]

SCALES = (1.0, 1.25, 1.5, 2.0, 3.0, 4.0)  # with the user's W
SOLVERS = baselines.MODEL_MODE_BASELINES  # the strongest multistep solvers
SPACINGS = baselines.MODEL_MODE_SPACINGS


def dominates(a: dict, b: dict, x: str, y: str) -> bool:
    """Whether point `a` ({x: value, y: value}) dominates `b`: no worse on either, better on one (lower is
    better)."""
    return a[x] <= b[x] and a[y] <= b[y] and (a[x] < b[x] or a[y] < b[y])


def tradeoff(
    held: Sequence[Evaluator],
    schedule: Schedule,
    noise_schedule,
    *,
    model: int,
    guidance: float,
    x: str = "fd",
    y: str = "error_pct",
    stage: int = 0,
) -> dict:
    """The trade-off of `schedule` against the presets of zoo member `model` at the scales `SCALES` and `guidance`
    W (module docstring). `held`: evaluators of the held-out draws whose `also` metrics include `x` and `y`.
    Returns {"x", "y", "calls", "searched": {x, y}, "presets": {name: {x, y, "guidance", "nfe"}},
    "dominated_by": [names]}, the values means over the draws."""
    calls = int(schedule.nfe())
    ts = np.asarray(schedule.ts, np.float64)
    presets = {}
    times = dict(t_start=float(ts[0]), t_end=float(ts[-1]))
    for w in dict.fromkeys((*SCALES, float(guidance))):
        steps = calls // (1 if w == 1 else 2)
        for afs in ("none", "zero_x0") if steps >= 1 else ():
            grid = baselines.baselines(
                noise_schedule, steps, model, afs=afs, solvers=SOLVERS, spacings=SPACINGS, guidance=w, **times
            )
            presets.update({f"{name}, w {w:g}": (w, s) for name, s in grid.items()})
    names = list(presets)
    scheds = [schedule] + [presets[n][1] for n in names]
    recs = [e.evaluate_schedules(scheds, stage=stage) for e in held]

    def point(i: int) -> dict:
        return {m: float(np.mean([r[i].extras[m] for r in recs])) for m in (x, y)}

    ours = point(0)
    rows = {n: {**point(i + 1), "guidance": presets[n][0], "nfe": recs[0][i + 1].nfe} for i, n in enumerate(names)}
    beaten_by = [n for n, p in rows.items() if dominates(p, ours, x, y)]
    return {
        "x": x,
        "y": y,
        "calls": calls,
        "draws": len(held),
        "searched": ours,
        "presets": rows,
        "dominated_by": beaten_by,
    }
