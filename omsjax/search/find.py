"""`find_schedule`: the S3 search in one call, for any models, noise schedule and metric.

    result = find_schedule(models, ns, nfe=4, metric=mse_to_reference, sample_shape=(16,), key=key, quick=True)
    result.schedule, result.score, result.report

It builds the search space from the noise schedule (`SearchSpace.for_noise_schedule`), evaluates candidates with
`metric(samples, x_T) -> float` (lower is better; or "reference-fd" / "reference-rmse", the distance to the
target model's own converged samples from the same noise, `metrics.ReferenceFD` / `ReferenceRMSE`) on
`num_samples` draws of search noise, checks that this noise can rank candidates (`loop.check_noise`: the best
preset on a second draw), runs the multi-stage loop (`loop.search`) and ends as `omsjax search` does
(`search.final.finish`): its finalists and the best classic solvers (`baselines.for_space`: every solver of
`BASELINES` over the four step spacings, each also with an analytical first step, at the same NFE in solver mode;
each model alone at the largest NFE its latency fits into the budget in model and joint modes) are compared on 3
draws of selection noise, a candidate is returned only when it beats the best baseline beyond that noise (else
the baseline is, "no better schedule found"), and the result and the best baseline are scored on 3 draws of
held-out noise (`heldout_samples` each), paired: the report's `verdict` ("beats", "tie", "loses") and
`paired_difference` (mean and standard error). The search, noise-check, held-out and selection noise and the
search's own randomness come from keys split from `key`, so the reported score never saw the noise it was picked
on.

Conditional models: `sampling=omsjax.SampleOptions(cond=..., uncond=...)` (with `FindOptions(guidance=w)`,
w != 1: classifier-free guidance at every step of every candidate and baseline; `thresholding` too) goes to every
sampling call, as in `omsjax.sample`; cond's leaves hold one row per sample of the largest noise
(`max(num_samples, heldout_samples)` rows; each noise takes its first rows). A guided step counts two evaluations
in the report's NFE and cost; `FindOptions.guidance_choices` also searches the scale of every step (the per-step
guidance gene). Everything else a search may vary (solver mode's model, sample counts, time range, spacing, the
loop's configuration) is a field of `FindOptions`.

`quick=True` is a small configuration for a first look (2 stages of 16 evaluations; about a minute for the example
`examples/search_your_model.py` on a 2-core AMD EPYC); the default is `loop.LoopConfig()`. Both score on 1,024
search samples and 3 x 1,024 held-out ones: enough for a 2-D sliced-Wasserstein metric or that example's MSE to
pass the noise check.
`out=` keeps the archive (`out/archive.jsonl`: a rerun resumes without evaluating a schedule twice) and writes
`schedule.json` and `report.json` atomically, under a lock on the folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from omsjax import files, metrics
from omsjax.models import Model, as_zoo
from omsjax.options import SampleOptions
from omsjax.schedule import Schedule
from omsjax.schedules import NoiseSchedule
from omsjax.search import baselines, final, ga, loop
from omsjax.search.encoding import MODES, SearchSpace
from omsjax.search.evaluate import Archive, Evaluator

__all__ = ["FindOptions", "FindResult", "QUICK", "REFERENCE_METRICS", "find_schedule"]

REFERENCE_METRICS = ("reference-fd", "reference-rmse")

# A first look: about 50 true evaluations in all.
QUICK = loop.LoopConfig(stages=2, initial_random=16, per_stage=16, generations=20, predictor_epochs=100,
                        final_top=3, heldout_tau=False, ga=ga.GAConfig(pop_size=32, num_children=32))  # fmt: skip


@dataclasses.dataclass
class FindResult:
    """schedule: the schedule returned (the best searched one, or the best baseline when no candidate beat it);
    score: its mean metric over the held-out draws; report: a JSON-ready dict (the verdict against the best
    baseline, paired, every baseline with its schedule, the noise check, the search's stages and timings);
    `baseline(name)` rebuilds a baseline's schedule from the report."""

    schedule: Schedule
    score: float
    report: dict

    def baseline(self, name: str | None = None) -> Schedule:
        """The baseline `name` (a key of `report["baselines"]`, e.g. "UniPC-2 (bh2), logSNR"; default the best
        one, which the verdict compares with) as a `Schedule`, rebuilt from the JSON the report carries."""
        name = self.report["best_baseline"]["name"] if name is None else name
        if name not in self.report["baselines"]:
            raise ValueError(f"no baseline {name!r} in this report; it has {sorted(self.report['baselines'])}")
        return Schedule.from_json(self.report["baselines"][name]["schedule"], source=f"baseline {name!r}")


@dataclasses.dataclass(frozen=True)
class FindOptions:
    """What `find_schedule` may search and how it scores, beyond the common case (all optional).

    model: solver mode's zoo index (default the last member).
    num_samples, heldout_samples: samples of the search noise and of each selection and held-out draw (1,024 each).
    config: a `loop.LoopConfig` (its GA's budget kind is set from `nfe` / `budget`); default `loop.LoopConfig()`,
      or `QUICK` with `quick=True`.
    metric_name: names the metric in the archive and the report (default its `name` or `__qualname__`).
    spacing: the base step spacing of the genomes, one of `spacing.SPACINGS` (default the noise schedule's
      `default_spacing`: logSNR for VP, karras for EDM, time_uniform for flow).
    t_start, t_end: the first and last time of every candidate and baseline (default the noise schedule's t_max
      and default_t_end); t_min <= t_end < t_start <= t_max.
    max_steps: model and joint modes: the most steps a schedule may have.
    guidance: one classifier-free guidance scale for every step (needs `SampleOptions.uncond` when not 1).
    guidance_choices: search each step's guidance scale among these (`SearchSpace.guidance_choices`, `guidance`
      among them; e.g. `encoding.default_guidance_choices(w)`); a step at 1 calls once, so an NFE or latency
      budget of model and joint modes may buy up to twice the steps.
    progress: show a progress bar.
    """

    model: int | None = None
    num_samples: int = 1024
    heldout_samples: int = 1024
    config: loop.LoopConfig | None = None
    metric_name: str | None = None
    spacing: str | None = None
    t_start: float | None = None
    t_end: float | None = None
    max_steps: int = 20
    guidance: float = 1.0
    guidance_choices: tuple[float, ...] = ()
    progress: bool = False

    def __post_init__(self):
        for name in ("t_start", "t_end"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer))
                                  or not math.isfinite(v)):  # fmt: skip
                raise ValueError(f"find_schedule: {name} must be a finite number, got {v!r}")
        object.__setattr__(self, "guidance_choices", tuple(self.guidance_choices))


def find_schedule(
    models: Model | Sequence[Model],
    noise_schedule: NoiseSchedule,
    *,
    metric: Callable[[np.ndarray, np.ndarray], float] | str,
    key: jax.Array,
    nfe: int | None = None,
    budget: float | None = None,
    mode: str = "solver",
    sample_shape: Sequence[int] | None = None,
    quick: bool = False,
    options: FindOptions | None = None,
    sampling: SampleOptions | None = None,
    out: str | Path | None = None,
) -> FindResult:
    """Search a schedule for `models` on `noise_schedule` that minimises `metric` (module docstring).

    Args:
      models: one `omsjax.Model` or a zoo; their `latency` is the cost model of model and joint modes.
      metric: `metric(samples, x_T) -> float`, lower is better, on numpy [n, *sample_shape] arrays (with a third
        parameter or a keyword `cond`, also the conditioning of exactly the rows sampled); or
        "reference-rmse" (any model) or "reference-fd" (digits-shaped samples; for others pass
        `metrics.ReferenceFD(reference, features=...)`), against the target member (solver mode's model, else
        the last) sampled by `metrics.ReferenceSampler()` from the same noise.
      key: a `jax.random` key.
      nfe: solver mode: the NFE (required); model and joint modes: a budget in NFE instead of `budget`. Under
        guidance it counts steps, as the presets' `nfe` does: each guided step is two model calls.
      budget: model and joint modes: the budget as a sum of the models' latencies (a guided step pays twice).
      mode: "solver" (every solver decision for one model), "model" (which model at each step) or "joint".
      sample_shape: the shape of one sample; default the models' declared `Model.sample_shape`.
      quick: the small `QUICK` configuration (ignored when `options.config` is given).
      options: a `FindOptions`: the model, sample counts, loop configuration, metric name, spacing, time range,
        step limit, guidance and progress bar.
      sampling: an `omsjax.SampleOptions`: conditioning (`cond`, and `uncond` for a guidance scale other than 1),
        the data mean (enables the analytical first step's data-mean guess) and dynamic thresholding, given to
        every sampling call as in `omsjax.sample`.
      out: a folder for the archive, schedule.json and report.json.
    """
    zoo = as_zoo(models)
    opts = FindOptions() if options is None else options
    sampling = SampleOptions() if sampling is None else sampling
    for name, v, kind in (("options", opts, FindOptions), ("sampling", sampling, SampleOptions)):
        if not isinstance(v, kind):
            raise ValueError(f"find_schedule: {name} must be a {kind.__name__}, got {type(v).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not callable(metric) and metric not in REFERENCE_METRICS:
        raise ValueError(f"metric must be callable as metric(samples, x_T) -> float or one of {REFERENCE_METRICS}, "
                         f"got {metric!r}")  # fmt: skip
    lat = [m.latency for m in zoo]
    guidance, choices = opts.guidance, opts.guidance_choices
    common = dict(mean_afs=sampling.data_mean is not None, guidance=guidance, guidance_choices=choices)
    given = {"spacing": opts.spacing, **_times(noise_schedule, opts.t_start, opts.t_end)}
    common.update({k: v for k, v in given.items() if v is not None})
    if mode == "solver":
        if budget is not None or not (isinstance(nfe, int) and nfe >= 1):
            raise ValueError(f"solver mode needs nfe= an int >= 1 (and no budget), got nfe={nfe!r}, budget={budget!r}")
        k = len(zoo) - 1 if opts.model is None else opts.model
        space = SearchSpace.for_nfe(nfe, lat, model=k, noise_schedule=noise_schedule, **common)
        limit, kind = None, "cost"
    else:
        if opts.model is not None:
            raise ValueError(f"options.model picks solver mode's model; {mode} mode chooses the models itself")
        if (nfe is None) == (budget is None):
            raise ValueError(f"{mode} mode needs exactly one of nfe= (an NFE budget) and budget= (a latency budget)")
        calls = 1 if guidance == 1 else 2  # a guided step calls its model twice
        max_steps = opts.max_steps
        if nfe is not None:  # nfe counts steps, as the presets' nfe does; the budget counts calls
            if not (isinstance(nfe, int) and nfe >= 1):
                raise ValueError(f"nfe must be an int >= 1, got {nfe!r}")
            positions, limit, kind = min(nfe + 1, max_steps), float(nfe * calls), "nfe"
            if choices:  # unguided steps call once: the budget may pay for more of them
                positions = max(positions, min(nfe * calls + 1, max_steps))
        else:
            if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget >= calls * min(lat)):
                raise ValueError(f"budget must pay for at least one step of the cheapest model ({calls * min(lat)}), "
                                 f"got {budget!r}")  # fmt: skip
            cheapest = (1 if 1.0 in choices else calls) * min(lat)
            positions = min(baselines.largest_nfe(cheapest, budget, max_steps - 1) + 1, max_steps)
            limit, kind = float(budget), "cost"
        space = SearchSpace.for_noise_schedule(noise_schedule, num_positions=positions, latencies=lat, mode=mode,
                                               **common)  # fmt: skip
    cfg = opts.config if opts.config is not None else (QUICK if quick else loop.LoopConfig())
    cfg = dataclasses.replace(cfg, ga=dataclasses.replace(cfg.ga, budget_kind=kind))
    k_search, k_noise, k_held = jax.random.split(key, 3)
    # Held-out and selection noise take 3 draws each from their seeds on (`final.FinalConfig`): seeds drawn below
    # 2**30, the selection's shifted by 2**30, cannot overlap.
    seed, held_seed, select_seed, check_seed = (int(jax.random.randint(k, (), 0, 2**30 - 8)) + off for k, off in
                                                ((k_noise, 0), (k_held, 0), (jax.random.fold_in(k_held, 1), 2**30),
                                                 (jax.random.fold_in(k_noise, 1), 0)))  # fmt: skip
    ev_kw = dict(metric=metric, metric_name=opts.metric_name, sample_shape=sample_shape, sampling=sampling)
    run = _Run(space, cfg, limit, opts, (seed, held_seed, select_seed, check_seed), k_search)
    if out is None:
        return _find(zoo, noise_schedule, run, ev_kw)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with files.FolderLock(out, what="find_schedule"):
        ev_kw["archive"] = Archive(out / "archive.jsonl")
        res = _find(zoo, noise_schedule, run, ev_kw)
        files.write_text(out / "schedule.json", res.schedule.to_json(score=res.score, mode=mode))
        files.write_json(out / "report.json", res.report)
    return res


class _Run(NamedTuple):
    """A search's checked settings: the space, loop configuration, budget, options, the search, held-out,
    selection and noise-check seeds, and the key of the search's own randomness."""

    space: SearchSpace
    config: loop.LoopConfig
    limit: float | None
    options: FindOptions
    seeds: tuple[int, int, int, int]
    key: jax.Array


def _times(ns, t_start, t_end) -> dict:
    """find_schedule's `t_start` / `t_end` (finite numbers, `FindOptions` checked) as floats, checked against the
    noise schedule (None: its default)."""
    out = {name: None if v is None else float(v) for name, v in (("t_start", t_start), ("t_end", t_end))}
    lo = float(ns.default_t_end) if out["t_end"] is None else out["t_end"]
    hi = float(ns.t_max) if out["t_start"] is None else out["t_start"]
    if not float(ns.t_min) <= lo < hi <= float(ns.t_max):
        raise ValueError(
            f"find_schedule: need t_min = {float(ns.t_min):g} <= t_end < t_start <= t_max = "
            f"{float(ns.t_max):g} ({type(ns).__name__}), got t_start = {hi:g}, t_end = {lo:g}"
        )
    return out


def _metric(metric, zoo, ns, space, ev_kw) -> Callable:
    """The metric of `find_schedule`'s `metric`: a callable as given; "reference-fd" / "reference-rmse":
    the distance to the target member's own converged samples (`metrics.ReferenceFD` / `ReferenceRMSE`), from
    the same noise, conditioning and guidance, over the space's [t_start, t_end]."""
    if callable(metric):
        return metric
    member = space.model if space.mode == "solver" else len(zoo) - 1
    sampling = ev_kw["sampling"]
    ref = metrics.Reference(zoo[member], ns, t_start=space.t_start, t_end=space.t_end, guidance=space.guidance,
                            cond=sampling.cond, uncond=sampling.uncond, thresholding=sampling.thresholding)  # fmt: skip
    return metrics.ReferenceFD(ref) if metric == "reference-fd" else metrics.ReferenceRMSE(ref)


def _find(zoo, ns, run: _Run, ev_kw) -> FindResult:
    """The search and its report (arguments checked by `find_schedule`)."""
    space, cfg, limit, opts = run.space, run.config, run.limit, run.options
    seed, held_seed, select_seed, check_seed = run.seeds
    n_search, n_held = opts.num_samples, opts.heldout_samples
    ev_kw = dict(ev_kw)
    ev_kw["metric"] = _metric(ev_kw["metric"], zoo, ns, space, ev_kw)
    ev = Evaluator(zoo, ns, space, num_samples=n_search, noise_seed=seed, **ev_kw)
    t0 = time.perf_counter()
    res = loop.search(ev, space, key=run.key, config=cfg, budget=limit, noise_evaluator=ev.with_noise(check_seed),
                      progress=opts.progress)  # fmt: skip
    fcfg = final.FinalConfig(samples=n_held, candidates=cfg.final_top, selection_seed=select_seed,
                             heldout_seed=held_seed)  # fmt: skip
    fin = final.finish(ev, res.pool, baselines.for_space(ns, space, cfg.ga.budget_kind, limit), fcfg,
                       stage=cfg.stages + 2)  # fmt: skip
    report = {
        "mode": space.mode,
        "nfe": space.nfe if space.mode == "solver" else None,
        "budget": limit,
        "budget_kind": cfg.ga.budget_kind,
        **fin.report(ev.metric_name),
        "search_samples": n_search,
        "heldout_samples": n_held,
        "search_noise_seed": seed,
        "noise_check": res.noise_check,
        "evaluated": len(res.records),
        "stages": res.stages,
        "search_seconds": time.perf_counter() - t0,
    }
    return FindResult(fin.schedule, fin.score, json.loads(json.dumps(report, default=_plain)))


def _plain(v):
    """JSON-ready numpy scalars (`json.dumps(default=)`); inf is written as None by `final`."""
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")
