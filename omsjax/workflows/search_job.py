"""The schedule-search workflow (`omsjax search` as a function): search a zoo under an NFE or a time budget and
report against the baselines.

`run(zoo_dir, out_dir, mode=..., nfe=... | budget_seconds=..., objective=Objective(...))` writes
  out/schedule.json   the schedule returned (metadata: its held-out score, the verdict, NFE, cost)
  out/report.json     the verdict against the best baseline (`search.final`): the metric, the returned schedule
                      and the best baseline on 3 draws of held-out noise (seed + 1000 ..), their paired difference
                      (mean, standard error) and verdict, the FD to data (and, on a class-conditional zoo, the
                      error rate of the requested class) of the same samples, compared the same way; every
                      baseline with its schedule and its score on the search noise; the noise check
  out/pareto.png      cost (NFE in solver mode) against the search-noise score of everything evaluated, with the
                      Pareto front and the baselines
  out/samples.png     the returned schedule's and the best baseline's samples from the same held-out noise
  out/references.npz  the reference samples the metric compared with (`metrics.ReferenceStore`)
  out/archive.jsonl   every evaluation (rerunning the same command resumes from it)

Metrics (`Objective.metric`): "reference-fd" (the default), the FD in the digits classifier's features between
a schedule's samples and the target model's own converged samples from the same noise, labels and guidance
(`metrics.ReferenceFD`; the target is the solver-mode model, else the zoo's last); "reference-rmse", the
per-sample RMSE to them; "fd", the FD to the data (on a class-conditional zoo plus `accuracy_weight` points per
point of accuracy lost). A zoo may ship the references of its default noise (`references.npz`, made by
`cache_presets` with its evaluations of the presets), fingerprinted like them.

Budgets: `nfe` (model calls) or `budget_seconds`, the time to sample one batch of the zoo's `latency_batch`
images by the zoo's measured latencies (cost in ms = 1000 x seconds). In solver mode a time budget becomes the
largest NFE of the chosen model that fits. Baselines: `baselines.for_space`, the classic solvers with their +AFS
variants in solver mode; the strongest solvers with each single zoo model at the largest NFE that fits the budget
in model and joint modes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from omsjax import fields, files, metrics
from omsjax.options import SampleOptions
from omsjax.schedule import AFS_NONE
from omsjax.search import baselines, cache, final, guided, loop, seeding
from omsjax.search.archive import Archive
from omsjax.search.baselines import BASELINES
from omsjax.search.evaluate import Evaluator
from omsjax.search.find import reference_metric, run_search
from omsjax.search.plan import FindOptions, Plan, Seeds, plan
from omsjax.search.space import default_guidance_choices

METRICS = ("reference-fd", "reference-rmse", "fd")
REFERENCES = "references.npz"  # a zoo's shipped reference samples, and a run's own

__all__ = ["BASELINES", "DEFAULTS", "METRICS", "Objective", "objective_setup", "run", "cache_presets"]


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a search minimises (module docstring): `metric` (one of `METRICS`); on a class-conditional zoo the
    guidance scale `guidance` W of every step (None: 1, the conditional model; refused on an unconditional zoo),
    `accuracy_weight` (metric "fd" only) and `guidance_choices`, the per-step guidance gene's scales (None: not
    searched; (): `default_guidance_choices(W)`); `reference`: the converged sampler of the reference
    metrics."""

    metric: str = "reference-fd"
    guidance: float | None = None
    accuracy_weight: float = 1.0
    guidance_choices: tuple | None = None
    reference: metrics.ReferenceSampler = metrics.ReferenceSampler()

    def __post_init__(self):
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.guidance_choices is not None and self.guidance is None:
            raise ValueError(
                "a searched guidance scale (guidance_choices, --search-guidance) needs the guidance "
                "scale W (--guidance) that seeds it"
            )

    @property
    def w(self) -> float:
        return 1.0 if self.guidance is None else float(self.guidance)


# The workflow's defaults, where they differ from `find_schedule`'s: 500 search samples, 1,000 held-out ones, at most
# 16 steps, time-quadratic steps (see `run`), a progress bar.
DEFAULTS = FindOptions(num_samples=500, heldout_samples=1000, max_steps=16, spacing="time_quadratic", progress=True)


def run(
    zoo_dir,
    out_dir,
    *,
    mode: str = "solver",
    nfe: int | None = None,
    budget_seconds: float | None = None,
    seed: int = 0,
    options: FindOptions = DEFAULTS,
    objective: Objective = Objective(),
    use_cache: bool = True,
) -> dict:
    """Search and report (module docstring); returns the report dict.

    The search itself is `search.find.run_search`, as for `find_schedule`: the same budget rule (`plan.plan`; a
    time budget `budget_seconds` is 1000 x that many ms of the zoo's latencies), seed convention (`plan.Seeds`:
    the search noise is `seed`, held-out seed + 1000 .., selection seed + 3000 .., the noise check seed + 4000)
    and report (keyed by `score`, with the metric's name). This workflow adds what is the command's own: the zoo
    (its data mean, class labels and image shape), the metric of `objective`, the zoo's shipped evaluations of the
    presets, the reference store, the report's extra fields, and the figures.

    `options` (default `DEFAULTS`): the model, sample counts, loop configuration, spacing, time range, step limit
    and progress bar; the guidance comes from `objective` and the metric's name from its metric. `options.spacing`
    is the search space's base step spacing (`spacing.SPACINGS`): the time genes vary around it, and model mode's
    steps follow it at every length. Default time-quadratic in every mode: on the digits zoo it is the best spacing
    of the multistep solvers from NFE 4 up, and a solver search around it found a 5-NFE schedule 25% closer to
    digits-m's converged samples than the best preset, where one around logSNR (S3's choice) found none
    (`benchmarks/RESULTS.md`).

    The run holds `out_dir`'s `files.FolderLock`, taken before the zoo loads: a second search on the same folder
    is refused at once (`files.FolderLocked`). Every result file is written atomically.

    `use_cache`: look up the zoo's shipped evaluations of the presets (`search.cache`, made by `cache_presets`)
    instead of evaluating them again; the report counts the evaluations it took from there.

    A class-conditional zoo (`zoo.num_classes` > 0) is searched for class-balanced samples (`conditional`), at
    classifier-free guidance scale `objective.guidance` W on every step (`nfe` counts steps, each guided one two
    model calls), against the target model's own samples at W (the reference metrics keep the user's target: a
    schedule cannot win by guiding less); the report gives the FD to data and the error rate of the requested class
    beside the metric. With `objective.guidance_choices` the scale of every step is searched too (W seeds it and
    guides the presets and the baselines); a step at scale 1 calls its model once, so under an NFE budget of model
    and joint modes the search may buy more steps by guiding fewer."""
    if not isinstance(options, FindOptions):
        raise ValueError(f"options must be a FindOptions, got {type(options).__name__}")
    own = {"guidance": 1.0, "guidance_choices": (), "metric_name": None}
    set_here = [k for k, v in own.items() if getattr(options, k) != v]
    if set_here:
        raise ValueError(f"omsjax search takes {', '.join(set_here)} from its objective, not from options")
    if budget_seconds is not None and not (
        isinstance(budget_seconds, (int, float)) and math.isfinite(budget_seconds) and budget_seconds > 0
    ):
        raise ValueError(f"the budget must be a number of seconds > 0, got {budget_seconds}")
    if options.spacing is None:
        options = dataclasses.replace(options, spacing=DEFAULTS.spacing)
    seeds = Seeds.of(seed)
    out = Path(out_dir)
    with files.FolderLock(out, what="omsjax search"):
        return _search(zoo_dir, out, mode, (nfe, budget_seconds), seeds, options, objective, use_cache)


def _plan(models, ns, mean, mode, nfe, budget_seconds, options: FindOptions) -> Plan:
    """`plan.plan` of a search on a zoo, with a time budget in ms."""
    budget = None if budget_seconds is None else 1000.0 * budget_seconds
    return plan(
        ns, [m.latency for m in models], mode=mode, nfe=nfe, budget=budget, options=options, mean_afs=mean is not None
    )


def _guided(options: FindOptions, objective: Objective) -> FindOptions:
    """`options` with the guidance of `objective`: its scale W, and the searched scales (default 1, W/2, W, 3W/2)."""
    gc = objective.guidance_choices
    choices = () if gc is None else tuple(gc) or default_guidance_choices(objective.w)
    return dataclasses.replace(options, guidance=objective.w, guidance_choices=choices)


def objective_setup(zoo_dir, out, models, ns, space, manifest, objective: Objective, n: int):
    """(evaluator keywords: metric, metric_name, sampling (the conditioning and the zoo's data mean); `also`: the
    report's other metrics of the held-out samples; labels or None) of a search with `objective` on the zoo (module
    docstring). `n`: the most samples of one noise (balanced labels for them on a class-conditional zoo)."""
    from omsjax import zoo
    from omsjax.metrics import conditional

    num_classes = zoo.num_classes(manifest)
    if num_classes == 0 and objective.guidance is not None:
        raise ValueError(
            f"guidance {objective.guidance}: the zoo {zoo_dir} is unconditional (its members take no labels)"
        )
    labels, cond, uncond = None, None, None
    if num_classes:
        labels = conditional.balanced_labels(n, num_classes)
        cond, uncond = conditional.conditioning(labels, num_classes)
    kw = {"sampling": SampleOptions(cond=cond, uncond=uncond, data_mean=zoo.data_mean(manifest))}
    if num_classes:

        def fd(x, x_T):
            return conditional.scores(x, labels[: len(x)])["fd"]

        def error_pct(x, x_T):
            return 100.0 * (1.0 - conditional.scores(x, labels[: len(x)])["accuracy"])

        also = {"fd": fd, "error_pct": error_pct}
    else:
        also = {"fd": metrics.digits_fd}
    if objective.metric == "fd":
        if num_classes:
            kw["metric"] = conditional.ConditionalFD(labels, accuracy_weight=objective.accuracy_weight)
            kw["metric_name"] = kw["metric"].name
        else:
            also = {}  # the metric is the FD to data itself
        return kw, also, labels
    store = metrics.ReferenceStore(out / REFERENCES, cache.fingerprint(zoo_dir), shipped=Path(zoo_dir) / REFERENCES)
    kw["metric"] = reference_metric(
        objective.metric, models, ns, space, kw["sampling"], sampler=objective.reference, store=store
    )
    return kw, also, labels


def _search(
    zoo_dir, out, mode, budgets, seeds: Seeds, options: FindOptions, objective: Objective, use_cache: bool
) -> dict:
    """`run` (its arguments checked) with the folder lock held."""
    from omsjax import zoo

    nfe, budget_seconds = budgets
    models, ns, manifest = zoo.load_zoo(zoo_dir)
    options = _guided(options, objective)
    the_plan = _plan(models, ns, zoo.data_mean(manifest), mode, nfe, budget_seconds, options)
    space = the_plan.space
    n = max(options.num_samples, options.heldout_samples)
    kw, also, labels = objective_setup(zoo_dir, out, models, ns, space, manifest, objective, n)

    archive = Archive(out / "archive.jsonl")  # one archive for every evaluator: read (and checked) once
    cached, cache_machine = cache.load(zoo_dir) if use_cache else ([], None)
    archive.remember(cached)  # the zoo's shipped evaluations of the presets: looked up, never written again
    ev = Evaluator(
        models,
        ns,
        space,
        num_samples=options.num_samples,
        noise_seed=seeds.search,
        sample_shape=tuple(manifest["image_shape"]),
        archive=archive,
        **kw,
    )
    done = run_search(ev, the_plan, seeds, options, also=also)
    fin, res, fcfg = done.final, done.search, done.final_config
    used = archive.cache_hits
    report = {
        **done.result.report,
        "zoo": str(zoo_dir),
        "budget_seconds": budget_seconds,
        "budget_ms": None if budget_seconds is None else 1000.0 * budget_seconds,
        "model": space.model if mode == "solver" else None,
        "spacing": space.spacing,
        "reference": None if objective.metric == "fd" else ev.metric.reference.name,
        "new_evaluations": ev.evaluated,
        "predictor_heldout_tau": res.heldout_tau if math.isfinite(res.heldout_tau) else None,
        "machine": zoo.machine_name(),
        "cached_evaluations": len(used),
        "cache_machine": cache_machine if used else None,
    }
    if labels is not None:
        report["guidance"] = objective.w
        report["guided_calls"] = _guided_calls(fin.schedule)
        if objective.metric == "fd":
            report["objective"] = f"{kw['metric_name']}: FD + {objective.accuracy_weight:g} x (100 - accuracy %)"
        if space.searches_guidance:  # the schedule chose its scales: its trade-off against presets at every scale
            report["guidance_choices"] = list(space.guidance_choices)
            report["searched_guidance"] = np.asarray(fin.schedule.guidance).tolist()
            held = [ev.with_noise(s, fcfg.samples, chunk=1, also=also) for s in fcfg.seeds("heldout")]
            target = space.model if mode == "solver" else len(models) - 1
            report["guidance_tradeoff"] = guided.tradeoff(
                held, fin.schedule, ns, model=target, guidance=objective.w, stage=done.end_stage
            )
    meta = dict(
        mode=mode,
        metric=ev.metric_name,
        score=report["searched"]["score"],
        verdict=fin.verdict,
        nfe=fin.searched_record.nfe,
        cost=fin.searched_record.cost,
        heldout_samples=fcfg.samples,
        heldout_noise_seeds=fcfg.seeds("heldout"),
        returned=report["returned"],
    )
    files.write_text(out / "schedule.json", fin.schedule.to_json(**meta))
    files.write_json(out / "report.json", report)
    _figures(out, ev, res.records, fin, report, fcfg)
    return report


def _guided_calls(schedule) -> int:
    """The model calls of `schedule` made at a guidance scale other than 1, two per such step (an analytical first
    step calls no model, so its scale does not count): 0 means the schedule samples the unguided conditional
    model, whatever its guidance field says."""
    guided = np.asarray(schedule.guidance) != 1.0
    guided[0] &= int(np.asarray(schedule.afs)) == AFS_NONE
    return 2 * int(np.sum(guided))


def cache_presets(
    zoo_dir,
    nfes,
    *,
    options: FindOptions = DEFAULTS,
    seed: int = 0,
    objective: Objective = Objective(),
    progress: bool = True,
) -> Path:
    """Evaluate the presets of solver-mode searches on the largest model of `zoo_dir` once, at each NFE of `nfes`,
    and ship them with the zoo (`search.cache`), with the reference samples they were compared with
    (`references.npz`): what `omsjax search --nfe N` with these settings evaluates without a searched candidate
    (the preset seeds and every baseline on the search noise, the noise check, the best baselines on the selection
    noise and the best one on the held-out noise, `search.final`). Adds to the records already cached for the same
    zoo files; returns the cache's path. `options`: the search's (`num_samples`, `heldout_samples`, `spacing` and
    `max_steps` are the ones that matter)."""
    from omsjax import zoo

    nfes = [fields.count(f"cache_presets: nfes[{i}]", n) for i, n in enumerate(nfes)]
    if not nfes:
        raise ValueError("cache_presets: nfes must list at least one NFE, got none")
    seeds = Seeds.of(seed)
    models, ns, manifest = zoo.load_zoo(zoo_dir)
    mean = zoo.data_mean(manifest)
    shape = tuple(manifest["image_shape"])
    options = _guided(options, objective)
    num_samples, final_samples = options.num_samples, options.heldout_samples
    archive = Archive()
    archive.remember(cache.load(zoo_dir)[0])
    for n in nfes:
        the_plan = _plan(models, ns, mean, "solver", n, None, options)
        space = the_plan.space
        kw, also, _ = objective_setup(
            zoo_dir, Path(zoo_dir), models, ns, space, manifest, objective, max(num_samples, final_samples)
        )
        ev = Evaluator(
            models,
            ns,
            space,
            num_samples=num_samples,
            noise_seed=seeds.search,
            sample_shape=shape,
            archive=archive,
            **kw,
        )
        t0 = time.perf_counter()
        recs = ev.evaluate(seeding.preset_seeds(space, ns))
        loop.check_noise(ev, ev.with_noise(seeds.check), recs)
        base = baselines.for_space(ns, space, the_plan.kind, the_plan.limit)
        final.finish(ev, [], base, seeds.final_config(final_samples), also=also, stage=2)
        if progress:
            print(f"NFE {n}: {len(archive)} evaluations in {time.perf_counter() - t0:.0f} s")
    return cache.write(zoo_dir, archive.records, zoo.machine_name())


def _figures(out: Path, ev: Evaluator, records, fin: final.Final, report: dict, fcfg: final.FinalConfig) -> None:
    """pareto.png (cost, or NFE in solver mode, against the search-noise score of everything evaluated, the Pareto
    front drawn, the baselines marked) and samples.png (the returned schedule's and the best baseline's samples from
    the first held-out noise, side by side, titled with their scores there)."""
    from omsjax import plots

    mode, metric = report["mode"], report["metric"]
    short = metric.split("[")[0]
    cost = "nfe" if mode == "solver" else "cost"
    pts = [(getattr(r, cost), r.score, False) for r in records]
    pts += [(row[cost], math.inf if row["score"] is None else row["score"], True) for row in fin.baselines.values()]
    chosen = ev.evaluate_schedules([fin.schedule])[0]  # on the search noise: in the archive
    xlabel = "model calls (NFE)" if mode == "solver" else "cost: sum of model latencies (ms per batch)"
    title = (
        f"{mode} mode, {short} on the search noise (seed {ev.noise_seed}, {ev.num_samples} samples)\n"
        f"held-out verdict against the best baseline: {fin.verdict}"
    )
    best = fin.baselines[fin.best_baseline]["score"]
    plots.search_pareto(
        pts,
        (getattr(chosen, cost), chosen.score),
        out / "pareto.png",
        xlabel=xlabel,
        ylabel=short,
        title=title,
        jitter=mode == "solver",
        best_baseline=best,
    )
    held = ev.with_noise(fcfg.seeds("heldout")[0], fcfg.samples, chunk=1)
    s, b = report["searched"], report["best_baseline"]
    panels = {
        f"returned: {'searched' if fin.name is None else fin.name}\n{short} {s['scores'][0]:.4g}": held.samples(
            fin.schedule
        )[:64]
    }
    if fin.name is None:
        panels[f"best baseline: {b['name']}\n{short} {b['scores'][0]:.4g}"] = held.samples(fin.baseline_schedule)[:64]
    plots.side_by_side(panels, out / "samples.png", title=f"held-out noise (seed {held.noise_seed}), the same x_T")
