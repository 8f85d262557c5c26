"""`find_schedule`: the S3 search in one call, for any models, noise schedule and metric.

    result = find_schedule(models, ns, nfe=4, metric=mse_to_reference, sample_shape=(16,), key=key, quick=True)
    result.schedule, result.score, result.report

It plans the search space and budget (`plan.plan`, from the noise schedule's range and spacing), evaluates
candidates with `metric(samples, x_T) -> float` (lower is better; or "reference-fd" / "reference-rmse", the
distance to the target model's own converged samples from the same noise, `metrics.ReferenceFD` /
`ReferenceRMSE`) on `num_samples` draws of search noise, checks that this noise can rank candidates
(`loop.check_noise`: the best preset on a second draw), runs the multi-stage loop (`loop.search`) and ends
(`search.final.finish`) in `run_search`, which `omsjax search` runs too: its finalists and the best classic
solvers (`baselines.for_space`: every solver of `BASELINES` over the four step spacings, each also with an
analytical first step, at the same NFE in solver mode; each model alone at the largest NFE its latency fits into
the budget in model and joint modes) are compared on 3 draws of selection noise, a candidate is returned only when
it beats the best baseline beyond that noise (else the baseline is, "no better schedule found"), and the result
and the best baseline are scored on 3 draws of held-out noise (`heldout_samples` each), paired: the report's
`verdict` ("beats", "tie", "loses") and `paired_difference` (mean and standard error). The search, noise-check,
held-out and selection noise and the search's own randomness come from one seed (`key`, or drawn from it) by
`plan.Seeds`, the one seed convention, so the reported score never saw the noise it was picked on.

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
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from omsjax import checks, files, metrics
from omsjax.models import Model, as_zoo
from omsjax.noise import NoiseSchedule
from omsjax.options import SampleOptions
from omsjax.schedule import Schedule
from omsjax.search import baselines, final, ga, loop
from omsjax.search.archive import Archive
from omsjax.search.evaluate import Evaluator
from omsjax.search.plan import FindOptions, Plan, Seeds, plan, seed_of
from omsjax.search.space import SearchSpace

__all__ = [
    "FindOptions",
    "FindResult",
    "Outcome",
    "QUICK",
    "REFERENCE_METRICS",
    "find_schedule",
    "reference_metric",
    "run_search",
]

REFERENCE_METRICS = ("reference-fd", "reference-rmse")

# A first look: about 50 true evaluations in all.
QUICK = loop.LoopConfig(
    stages=2,
    initial_random=16,
    per_stage=16,
    generations=20,
    predictor_epochs=100,
    final_top=3,
    heldout_tau=False,
    ga=ga.GAConfig(pop_size=32, num_children=32),
)


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
      key: the search's seed: an int, or a `jax.random` key it is drawn from (`plan.Seeds`: every noise of the
        search and its own randomness come from it).
      nfe: the budget in NFE: solver mode's exact NFE, the most of model and joint modes. Under guidance it counts
        steps, as the presets' `nfe` does: each guided step is two model calls.
      budget: instead of `nfe`, a budget as a sum of the models' latencies (a guided step pays twice); solver mode
        searches at the largest NFE of its model that the budget pays for (`plan.plan`, the one budget rule).
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
    if not callable(metric) and metric not in REFERENCE_METRICS:
        raise ValueError(
            f"metric must be callable as metric(samples, x_T) -> float or one of {REFERENCE_METRICS}, got {metric!r}"
        )
    checks.check_noise_schedule(noise_schedule)
    out = None if out is None else files.make_folder(out, "find_schedule: out=")
    seeds = Seeds.of(seed_of(key))
    the_plan = plan(
        noise_schedule,
        [m.latency for m in zoo],
        mode=mode,
        nfe=nfe,
        budget=budget,
        options=opts,
        mean_afs=sampling.data_mean is not None,
    )
    cfg = opts.config if opts.config is not None else (QUICK if quick else loop.LoopConfig())
    opts = dataclasses.replace(opts, config=cfg)
    space = the_plan.space
    if not callable(metric):
        metric = reference_metric(metric, zoo, noise_schedule, space, sampling)
    ev_kw = dict(num_samples=opts.num_samples, noise_seed=seeds.search, metric=metric, metric_name=opts.metric_name)
    ev_kw.update(sample_shape=sample_shape, sampling=sampling)
    if out is None:
        return run_search(Evaluator(zoo, noise_schedule, space, **ev_kw), the_plan, seeds, opts).result
    with files.FolderLock(out, what="find_schedule"):
        ev = Evaluator(zoo, noise_schedule, space, archive=Archive(out / "archive.jsonl"), **ev_kw)
        res = run_search(ev, the_plan, seeds, opts).result
        files.write_text(out / "schedule.json", res.schedule.to_json(score=res.score, mode=mode))
        files.write_json(out / "report.json", res.report)
    return res


class Outcome(NamedTuple):
    """What `run_search` leaves: the result (its report the one schema of every search), the end of the search
    (`final.Final`, with its `FinalConfig`), the loop's result (every record, the stages, the noise check), and
    the stage number the end's evaluations are recorded under (after the loop's own stages)."""

    result: FindResult
    final: final.Final
    final_config: final.FinalConfig
    search: loop.SearchResult
    end_stage: int


def run_search(ev: Evaluator, the_plan: Plan, seeds: Seeds, options: FindOptions, also=None) -> Outcome:
    """THE search, for `find_schedule` and `omsjax search`: the S3 loop (`loop.search`) on `ev`'s noise (seed
    `seeds.search`, its noise check on `seeds.check`), then `final.finish` against `baselines.for_space` of the
    plan's space (selection and held-out noise from `seeds`, `options.heldout_samples` each; `also`: other
    metrics of the held-out samples). The report: mode, nfe, budget and its kind, `final.Final.report` (the
    verdict, the scores, every baseline), the sample counts, the search noise's seed, the noise check, the
    evaluations, the stages and the seconds."""
    if ev.noise_seed != seeds.search or ev.space != the_plan.space:
        raise ValueError(
            f"run_search: the evaluator's noise seed {ev.noise_seed} and space must be the search's "
            f"(seed {seeds.search}, the plan's space)"
        )
    space, limit = the_plan.space, the_plan.limit
    cfg = options.config if options.config is not None else loop.LoopConfig()
    cfg = dataclasses.replace(cfg, ga=dataclasses.replace(cfg.ga, budget_kind=the_plan.kind))
    t0 = time.perf_counter()
    res = loop.search(
        ev,
        space,
        key=seeds.key,
        config=cfg,
        budget=limit,
        progress=options.progress,
        noise_evaluator=ev.with_noise(seeds.check),
    )
    fcfg = seeds.final_config(options.heldout_samples, cfg.final_top)
    end_stage = cfg.stages + 2
    fin = final.finish(
        ev, res.pool, baselines.for_space(ev.ns, space, the_plan.kind, limit), fcfg, also=also, stage=end_stage
    )
    report = {
        "mode": space.mode,
        "nfe": space.nfe if space.mode == "solver" else None,
        "budget": limit,
        "budget_kind": the_plan.kind,
        **fin.report(ev.metric_name),
        "search_samples": ev.num_samples,
        "heldout_samples": options.heldout_samples,
        "search_noise_seed": seeds.search,
        "noise_check": res.noise_check,
        "evaluated": len(res.records),
        "stages": res.stages,
        "search_seconds": time.perf_counter() - t0,
    }
    report = json.loads(json.dumps(report, default=_plain))
    return Outcome(FindResult(fin.schedule, fin.score, report), fin, fcfg, res, end_stage)


def reference_metric(name: str, zoo, ns, space: SearchSpace, sampling: SampleOptions, **reference) -> Callable:
    """The reference metric `name` ("reference-fd" or "reference-rmse"): the distance to the target member's own
    converged samples (`metrics.ReferenceFD` / `ReferenceRMSE`; the target is solver mode's model, else the zoo's
    last), from the same noise, conditioning and guidance, over the space's [t_start, t_end]. `reference`: more
    options of `metrics.Reference` (its `sampler`, a `store`)."""
    member = space.model if space.mode == "solver" else len(zoo) - 1
    ref = metrics.Reference(
        zoo[member],
        ns,
        t_start=space.t_start,
        t_end=space.t_end,
        guidance=space.guidance,
        cond=sampling.cond,
        uncond=sampling.uncond,
        thresholding=sampling.thresholding,
        **reference,
    )
    return metrics.ReferenceFD(ref) if name == "reference-fd" else metrics.ReferenceRMSE(ref)


def _plain(v):
    """JSON-ready numpy scalars (`json.dumps(default=)`); inf is written as None by `final`."""
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")
