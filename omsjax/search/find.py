"""`find_schedule`: the S3 search in one call, for any models, noise schedule and metric.

    result = find_schedule(models, ns, nfe=4, metric=mse_to_reference, sample_shape=(16,), key=key, quick=True)
    result.schedule, result.score, result.report

It builds the search space from the noise schedule (`SearchSpace.for_noise_schedule`), evaluates candidates with
`metric(samples, x_T) -> float` (lower is better) on `num_samples` draws of search noise, runs the multi-stage
loop (`loop.search`), picks among its finalists on selection noise (`heldout_samples` other draws), scores the
winner on held-out noise (as many draws again), and compares it with the classic solvers on the same held-out
noise, as `omsjax search` reports them (`search.baselines`): every solver of `BASELINES` over the four step
spacings at the same NFE (solver mode), or each model alone at the largest NFE its latency fits into the budget
(model and joint modes). The search noise, the held-out noise (the selection noise is folded from its key) and
the search's own randomness come from three keys split from `key`, so the reported score never saw the noise it
was picked on.

Conditional models: `cond` (and `uncond` with `guidance` w != 1, classifier-free guidance at every step of every
candidate and baseline; `thresholding`) go to every sampling call, as in `omsjax.sample`; their leaves hold one row
per sample of the largest noise (`max(num_samples, heldout_samples)` rows; each noise takes its first rows).
A guided step counts two evaluations in the report's NFE and cost; `guidance_choices` also searches the scale of
every step (the per-step guidance gene).

`quick=True` is a small configuration for a first look (2 stages of 16 evaluations, 32 search samples); the
default is `loop.LoopConfig()`. `out=` keeps the archive (`out/archive.jsonl`: a rerun resumes without evaluating
a schedule twice) and writes `schedule.json` and `report.json` atomically, under a lock on the folder.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

from omsjax import files
from omsjax.models import Model, as_zoo
from omsjax.schedule import Schedule
from omsjax.schedules import NoiseSchedule
from omsjax.search import baselines, ga, loop
from omsjax.search.encoding import MODES, SearchSpace
from omsjax.search.evaluate import Archive, Evaluator

__all__ = ["FindResult", "QUICK", "find_schedule"]

# A first look: about 50 true evaluations in all.
QUICK = loop.LoopConfig(stages=2, initial_random=16, per_stage=16, generations=20, predictor_epochs=100,
                        final_top=3, heldout_tau=False, ga=ga.GAConfig(pop_size=32, num_children=32))  # fmt: skip


@dataclasses.dataclass
class FindResult:
    """schedule: the best schedule found; score: its metric on the held-out noise; report: a JSON-ready dict (the
    baselines' held-out scores, the best of them, the search's stages and timings)."""

    schedule: Schedule
    score: float
    report: dict


def find_schedule(
    models: Model | Sequence[Model],
    noise_schedule: NoiseSchedule,
    *,
    metric: Callable[[np.ndarray, np.ndarray], float],
    key: jax.Array,
    sample_shape: Sequence[int] | None = None,
    nfe: int | None = None,
    budget: float | None = None,
    mode: str = "solver",
    model: int | None = None,
    num_samples: int | None = None,
    heldout_samples: int | None = None,
    quick: bool = False,
    config: loop.LoopConfig | None = None,
    metric_name: str | None = None,
    spacing: str = "logSNR",
    max_steps: int = 20,
    data_mean=None,
    cond=None,
    uncond=None,
    guidance: float = 1.0,
    guidance_choices: Sequence[float] = (),
    thresholding=None,
    out: str | Path | None = None,
    progress: bool = False,
) -> FindResult:
    """Search a schedule for `models` on `noise_schedule` that minimises `metric` (module docstring).

    Args:
      models: one `omsjax.Model` or a zoo; their `latency` is the cost model of model and joint modes.
      metric: `metric(samples, x_T) -> float`, lower is better, on numpy [n, *sample_shape] arrays.
      key: a `jax.random` key.
      sample_shape: the shape of one sample; default the models' declared `Model.sample_shape`.
      nfe: solver mode: the NFE (required); model and joint modes: a budget in NFE instead of `budget`. Under
        guidance it counts steps, as the presets' `nfe` does: each guided step is two model calls.
      budget: model and joint modes: the budget as a sum of the models' latencies (a guided step pays twice).
      mode: "solver" (every solver decision for one model), "model" (which model at each step) or "joint".
      model: solver mode's zoo index (default the last member).
      num_samples, heldout_samples: draws of search and held-out noise (default 32 / 64 with `quick`, else
        128 / 256).
      quick: the small `QUICK` configuration (ignored when `config` is given).
      config: a `loop.LoopConfig` (its GA's budget kind is set from `nfe` / `budget`).
      metric_name: names the metric in the archive (default its `__qualname__`).
      spacing: the base step spacing of the genomes, one of `schedules.SKIP_TYPES`.
      max_steps: model and joint modes: the most steps a schedule may have.
      data_mean: enables the analytical first step's data-mean guess.
      cond, uncond, guidance, thresholding: conditioning, classifier-free guidance (one scale for every step) and
        dynamic thresholding (module docstring; `omsjax.sample`).
      guidance_choices: search each step's guidance scale among these (`SearchSpace.guidance_choices`, `guidance`
        among them; e.g. `encoding.default_guidance_choices(w)`); a step at 1 calls once, so an NFE or latency
        budget of model and joint modes may buy up to twice the steps.
      out: a folder for the archive, schedule.json and report.json.
      progress: show a progress bar.
    """
    zoo = as_zoo(models)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not callable(metric):
        raise ValueError(f"metric must be callable as metric(samples, x_T) -> float, got {metric!r}")
    lat = [m.latency for m in zoo]
    common = dict(spacing=spacing, mean_afs=data_mean is not None, guidance=guidance,
                  guidance_choices=tuple(guidance_choices))  # fmt: skip
    if mode == "solver":
        if budget is not None or not (isinstance(nfe, int) and nfe >= 1):
            raise ValueError(f"solver mode needs nfe= an int >= 1 (and no budget), got nfe={nfe!r}, budget={budget!r}")
        k = len(zoo) - 1 if model is None else model
        space = SearchSpace.for_nfe(nfe, lat, model=k, noise_schedule=noise_schedule, **common)
        limit, kind = None, "cost"
    else:
        if model is not None:
            raise ValueError(f"model= picks solver mode's model; {mode} mode chooses the models itself")
        if (nfe is None) == (budget is None):
            raise ValueError(f"{mode} mode needs exactly one of nfe= (an NFE budget) and budget= (a latency budget)")
        calls = 1 if guidance == 1 else 2  # a guided step calls its model twice
        if nfe is not None:  # nfe counts steps, as the presets' nfe does; the budget counts calls
            if not (isinstance(nfe, int) and nfe >= 1):
                raise ValueError(f"nfe must be an int >= 1, got {nfe!r}")
            positions, limit, kind = min(nfe + 1, max_steps), float(nfe * calls), "nfe"
            if guidance_choices:  # unguided steps call once: the budget may pay for more of them
                positions = max(positions, min(nfe * calls + 1, max_steps))
        else:
            if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget >= calls * min(lat)):
                raise ValueError(f"budget must pay for at least one step of the cheapest model ({calls * min(lat)}), "
                                 f"got {budget!r}")  # fmt: skip
            cheapest = (1 if 1.0 in tuple(guidance_choices) else calls) * min(lat)
            positions = min(baselines.largest_nfe(cheapest, budget, max_steps - 1) + 1, max_steps)
            limit, kind = float(budget), "cost"
        space = SearchSpace.for_noise_schedule(noise_schedule, num_positions=positions, latencies=lat, mode=mode,
                                               **common)  # fmt: skip
    cfg = config if config is not None else (QUICK if quick else loop.LoopConfig())
    cfg = dataclasses.replace(cfg, ga=dataclasses.replace(cfg.ga, budget_kind=kind))
    n_search = num_samples or (32 if quick else 128)
    n_held = heldout_samples or 2 * n_search
    k_search, k_noise, k_held = jax.random.split(key, 3)
    seed, held_seed, select_seed = (int(jax.random.randint(k, (), 0, 2**31 - 1))
                                    for k in (k_noise, k_held, jax.random.fold_in(k_held, 1)))  # fmt: skip
    ev_kw = dict(metric=metric, metric_name=metric_name, sample_shape=sample_shape, data_mean=data_mean, cond=cond,
                 uncond=uncond, thresholding=thresholding)  # fmt: skip
    seeds = (seed, held_seed, select_seed)
    if out is None:
        return _find(zoo, noise_schedule, space, cfg, limit, ev_kw, n_search, n_held, seeds, k_search, progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with files.FolderLock(out, what="find_schedule"):
        ev_kw["archive"] = Archive(out / "archive.jsonl")
        res = _find(zoo, noise_schedule, space, cfg, limit, ev_kw, n_search, n_held, seeds, k_search, progress)
        files.write_text(out / "schedule.json", res.schedule.to_json(score=res.score, mode=mode))
        files.write_json(out / "report.json", res.report)
    return res


def _find(zoo, ns, space, cfg, limit, ev_kw, n_search, n_held, seeds, key, progress) -> FindResult:
    """The search and its report (arguments checked by `find_schedule`); `seeds`: the search, held-out and
    selection noise seeds."""
    seed, held_seed, select_seed = seeds
    ev = Evaluator(zoo, ns, space, num_samples=n_search, noise_seed=seed, **ev_kw)
    held = ev.with_noise(held_seed, n_held)
    t0 = time.perf_counter()
    res = loop.search(ev, space, key=key, config=cfg, budget=limit, final_evaluator=ev.with_noise(select_seed, n_held),
                      heldout_evaluator=held, progress=progress)  # fmt: skip
    best = res.heldout
    seconds = time.perf_counter() - t0
    base = _baselines(ns, space, cfg.ga.budget_kind, limit)
    recs = held.evaluate_schedules(list(base.values()), stage=cfg.stages + 2)
    rows = {name: {"score": r.score, "nfe": r.nfe, "cost": r.cost} for name, r in zip(base, recs, strict=True)}
    best_name = min(rows, key=lambda n: rows[n]["score"]) if rows else None
    report = {
        "mode": space.mode,
        "metric": ev.metric_name,
        "nfe": space.nfe if space.mode == "solver" else None,
        "budget": limit,
        "budget_kind": cfg.ga.budget_kind,
        "searched": {"score": best.score, "nfe": best.nfe, "cost": best.cost},
        "best_baseline": None if best_name is None else {"name": best_name, **rows[best_name]},
        "beats_best_baseline": None if best_name is None else bool(best.score < rows[best_name]["score"]),
        "baselines": rows,
        "search_samples": n_search,
        "heldout_samples": n_held,
        "search_noise_seed": seed,
        "heldout_noise_seed": held_seed,
        "selection_noise_seed": select_seed,
        "evaluated": len(res.records),
        "stages": res.stages,
        "search_seconds": seconds,
    }
    report = {k: _plain(v) for k, v in report.items()}
    return FindResult(res.schedule, float(best.score), report)


def _baselines(ns, space: SearchSpace, kind: str, limit) -> dict[str, Schedule]:
    """The classic solvers at the search's NFE (solver mode), or each model alone at the largest NFE that fits the
    budget (model and joint modes), as `omsjax search` reports them (`search.baselines`), from t_start to t_end."""
    times = dict(t_start=space.t_start, t_end=space.t_end, guidance=space.guidance)
    if space.mode == "solver":
        return baselines.baselines(ns, space.nfe, space.model, **times)
    out = {}
    for m, lat in enumerate(space.latencies):
        n = baselines.baseline_nfe(lat, kind, limit, space.num_positions, space.calls_per_step)
        if n >= 1:
            grid = baselines.baselines(ns, n, m, solvers=baselines.MODEL_MODE_BASELINES,
                                       spacings=baselines.MODEL_MODE_SPACINGS, **times)  # fmt: skip
            out.update({f"{name}, model {m}, NFE {n}": s for name, s in grid.items()})
    return out


def _plain(v):
    """JSON-ready: numpy scalars to Python numbers, inf to None (JSON has no inf)."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
