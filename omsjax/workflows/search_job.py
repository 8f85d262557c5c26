"""The schedule-search workflow (`omsjax search` as a function): search a zoo under an NFE or a time budget and
report against the baselines.

`run(zoo_dir, out_dir, mode=..., nfe=... | budget_seconds=...)` writes
  out/schedule.json   the searched schedule (metadata: its held-out FD, NFE, cost)
  out/report.json     the searched schedule's FD and every baseline's FD at the same NFE or budget, all measured
                      on held-out noise (a seed the search never saw), with more samples than the search used;
                      the search's best few are compared on a third noise (`seed` + 3000, the selection noise;
                      `benchmarks/bench_search.py` re-scores on 2000-2002) and only the winner is evaluated on
                      the held-out noise
  out/pareto.png      cost vs. FD of everything evaluated during the search, the preset baselines marked
  out/samples.png     64 samples of the searched schedule (on the search noise)
  out/archive.jsonl   every evaluation (rerunning the same command resumes from it)

Budgets: `nfe` (model calls) or `budget_seconds`, the time to sample one batch of the zoo's `latency_batch`
images by the zoo's measured latencies (cost in ms = 1000 x seconds). In solver mode a time budget becomes the
largest NFE of the chosen model that fits. Baselines: solver mode, DDIM, DPM-Solver++(2M, 3M) and UniPC-2/3 (bh1,
bh2) over the four spacings (and, reported apart, the same with an analytical first step); model and joint modes,
DPM-Solver++(2M) and UniPC-2/3 (bh2) with logSNR and time-quadratic spacing, with each single zoo model at the
largest NFE that fits the budget.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import jax
import numpy as np

from omsjax import files
from omsjax.search import cache, encoding, loop
from omsjax.search.baselines import BASELINES, MODEL_MODE_BASELINES, MODEL_MODE_SPACINGS, baselines
from omsjax.search.baselines import baseline_nfe as _baseline_nfe
from omsjax.search.baselines import largest_nfe as _largest_nfe
from omsjax.search.evaluate import Archive, Evaluator

SELECTION_SEED_OFFSET = 3000  # the finalists' noise: seed + 3000 (search noise: seed; held-out noise: seed + 1000)

__all__ = ["BASELINES", "baselines", "run", "cache_presets"]


def run(
    zoo_dir,
    out_dir,
    *,
    mode: str = "solver",
    nfe: int | None = None,
    budget_seconds: float | None = None,
    model: int | None = None,
    config: loop.LoopConfig | None = None,
    num_samples: int = 500,
    final_samples: int = 1000,
    seed: int = 0,
    max_steps: int = 16,
    spacing: str | None = None,
    progress: bool = True,
    use_cache: bool = True,
    guidance: float | None = None,
    accuracy_weight: float = 1.0,
    guidance_choices=None,
) -> dict:
    """Search and report (module docstring); returns the report dict.

    `spacing` is the search space's base step spacing (`encoding.SPACINGS`); by default logSNR in solver mode (S3's
    choice) and time-quadratic in model and joint modes, whose steps follow it at every length: on the digits zoo
    time-quadratic is the best spacing for the multistep solvers from NFE 5 up (see `report["baselines"]`).

    The run holds `out_dir`'s `files.FolderLock`, taken before the zoo loads: a second search on the same folder
    is refused at once (`files.FolderLocked`). Every result file is written atomically.

    `use_cache`: look up the zoo's shipped evaluations of the presets (`search.cache`, made by `cache_presets`)
    instead of evaluating them again; the report counts the evaluations it took from there.

    A class-conditional zoo (`zoo.num_classes` > 0) is searched for class-balanced samples (`conditional`), at
    classifier-free guidance scale `guidance` on every step (default 1: the conditional model; `nfe` counts steps,
    each guided one two model calls), on the objective `conditional.ConditionalFD`: the FD plus `accuracy_weight`
    FD points per percentage point of accuracy lost. The report gives the FD and the accuracy of the searched
    schedule and of the best baseline apart. An unconditional zoo refuses `guidance`.

    `guidance_choices`: search the guidance scale of every step among these values (`SearchSpace.guidance_choices`;
    `guidance` must be one of them, and is the scale of the presets that seed the search and of the baselines);
    () for `encoding.default_guidance_choices(guidance)`; None (the default) guides every step at `guidance`. A
    step at scale 1 calls its model once, so under an NFE budget of model and joint modes the search may buy more
    steps by guiding fewer."""
    if (nfe is None) == (budget_seconds is None):
        raise ValueError("give exactly one of nfe and budget_seconds")
    if nfe is not None and nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    if budget_seconds is not None and not (math.isfinite(budget_seconds) and budget_seconds > 0):
        raise ValueError(f"the budget must be a number of seconds > 0, got {budget_seconds}")
    if mode not in encoding.MODES:
        raise ValueError(f"mode must be one of {encoding.MODES}, got {mode!r}")
    if guidance_choices is not None and guidance is None:
        raise ValueError("a searched guidance scale (guidance_choices, --search-guidance) needs the guidance scale "
                         "W (--guidance) that seeds it")  # fmt: skip
    if spacing is None:
        spacing = "logSNR" if mode == "solver" else "time_quadratic"
    if spacing not in encoding.SPACINGS:
        raise ValueError(f"spacing must be one of {encoding.SPACINGS}, got {spacing!r}")
    out = Path(out_dir)
    with files.FolderLock(out, what="omsjax search"):
        return _search(zoo_dir, out, mode, nfe, budget_seconds, model, config or loop.LoopConfig(), num_samples,
                       final_samples, seed, max_steps, spacing, progress, use_cache, guidance, accuracy_weight,
                       guidance_choices)  # fmt: skip


def _space(models, ns, mean, mode, nfe, budget_seconds, model, spacing, max_steps, guidance=1.0, guidance_choices=()):
    """(space, k, budget, kind, positions) of a search: the search space, the solver-mode model, the GA's budget
    and its kind ("cost" or "nfe"), and the number of time positions (model and joint modes). With
    `guidance_choices` (the per-step guidance gene), an NFE budget of model and joint modes may buy up to twice
    the steps (every step unguided), up to `max_steps`."""
    lat = [m.latency for m in models]
    k = len(models) - 1 if model is None else model
    if not 0 <= k < len(models):
        raise ValueError(f"model {k} is not in the zoo of {len(models)} models (0..{len(models) - 1})")
    budget_ms = None if budget_seconds is None else 1000.0 * budget_seconds
    common = dict(mean_afs=mean is not None, spacing=spacing, t_start=float(ns.t_max), t_end=float(ns.default_t_end),
                  guidance=float(guidance), guidance_choices=tuple(guidance_choices))  # fmt: skip
    calls = 1 if guidance == 1 else 2  # a guided step calls its model twice; --nfe counts steps
    if mode == "solver":
        n = nfe if nfe is not None else _largest_nfe(calls * lat[k], budget_ms, 10**6)
        if n < 1:
            raise ValueError(f"the budget {budget_seconds} s does not pay for one call of model {k} ({lat[k]} ms)")
        return encoding.SearchSpace.for_nfe(n, lat, model=k, **common), k, None, "cost", None
    if nfe is not None:
        positions, budget, kind = nfe + 1, float(nfe * calls), "nfe"
        if guidance_choices:
            positions = max(positions, min(nfe * calls + 1, max_steps))
    else:
        cheapest = (1 if guidance_choices and 1.0 in guidance_choices else calls) * min(lat)
        positions = min(_largest_nfe(cheapest, budget_ms, max_steps - 1) + 1, max_steps)
        budget, kind = budget_ms, "cost"
    space = encoding.SearchSpace(num_positions=positions, latencies=lat, mode=mode, **common)
    return space, k, budget, kind, positions


def _baseline_schedules(ns, space, mode, k, lat, kind, budget, positions):
    """({name: Schedule} of the published solvers, {name: Schedule} of the same with an analytical first step)."""
    base, base_afs = {}, {}
    for m in [k] if mode == "solver" else range(len(lat)):
        n_m = space.nfe if mode == "solver" else _baseline_nfe(lat[m], kind, budget, positions, space.calls_per_step)
        if n_m < 1:
            continue
        w = space.guidance
        if mode == "solver":
            base.update(baselines(ns, n_m, m, guidance=w))
            base_afs.update(baselines(ns, n_m, m, afs="zero_x0", guidance=w))
        else:
            grid = baselines(ns, n_m, m, solvers=MODEL_MODE_BASELINES, spacings=MODEL_MODE_SPACINGS, guidance=w)
            base.update({f"{name}, model {m}": s for name, s in grid.items()})
    return base, base_afs


def _conditioning(zoo_dir, manifest, guidance, n, accuracy_weight) -> tuple[dict, np.ndarray | None]:
    """The Evaluator's conditioning and objective on a class-conditional zoo (balanced labels for `n` samples, the
    null label as uncond, `conditional.ConditionalFD`), and the labels; ({}, None) on an unconditional zoo."""
    from omsjax import conditional, zoo

    k = zoo.num_classes(manifest)
    if k == 0:
        if guidance is not None:
            raise ValueError(f"guidance {guidance}: the zoo {zoo_dir} is unconditional (its members take no labels)")
        return {}, None
    labels = conditional.balanced_labels(n, k)
    cond, uncond = conditional.conditioning(labels, k)
    metric = conditional.ConditionalFD(labels, accuracy_weight=accuracy_weight)
    return dict(cond=cond, uncond=uncond, metric=metric, metric_name=metric.name), labels


def _search(zoo_dir, out, mode, nfe, budget_seconds, model, config, num_samples, final_samples, seed, max_steps,
            spacing, progress, use_cache, guidance=None, accuracy_weight=1.0,
            guidance_choices=None) -> dict:  # fmt: skip
    """`run` (its arguments checked) with the folder lock held."""
    from omsjax import plots, zoo

    models, ns, manifest = zoo.load_zoo(zoo_dir)
    lat = [m.latency for m in models]
    mean = zoo.data_mean(manifest)
    shape = tuple(manifest["image_shape"])
    budget_ms = None if budget_seconds is None else 1000.0 * budget_seconds
    cond_kw, labels = _conditioning(zoo_dir, manifest, guidance, max(num_samples, final_samples), accuracy_weight)
    w = 1.0 if guidance is None else float(guidance)
    choices = () if guidance_choices is None else tuple(guidance_choices) or encoding.default_guidance_choices(w)
    space, k, budget, kind, positions = _space(models, ns, mean, mode, nfe, budget_seconds, model, spacing, max_steps,
                                               w, choices)  # fmt: skip
    cfg = dataclasses.replace(config, ga=dataclasses.replace(config.ga, budget_kind=kind))

    archive = Archive(out / "archive.jsonl")  # one archive for both evaluators: read (and checked) once
    cached, cache_machine = cache.load(zoo_dir) if use_cache else ([], None)
    archive.remember(cached)  # the zoo's shipped evaluations of the presets: looked up, never written again
    ev = Evaluator(models, ns, space, num_samples=num_samples, noise_seed=seed, image_shape=shape, data_mean=mean,
                   archive=archive, **cond_kw)  # fmt: skip
    # The final re-evaluation (a few schedules) and the held-out score (one) on 1,000 samples: one candidate per
    # call, one program for both (padding them to the search's chunk would sample the padding too).
    held = ev.with_noise(seed + 1000, final_samples, chunk=1)
    select = ev.with_noise(seed + SELECTION_SEED_OFFSET, final_samples, chunk=1)
    t0 = time.perf_counter()
    res = loop.search(ev, space, key=jax.random.PRNGKey(seed), config=cfg, budget=budget, final_evaluator=select,
                      heldout_evaluator=held, progress=progress)  # fmt: skip
    best = res.heldout
    search_seconds = time.perf_counter() - t0

    # Baselines on the held-out noise, at the same NFE or budget.
    # The published solvers (no AFS) are the baselines; the same solvers with an analytical first step are
    # reported beside them, to show what the search adds beyond AFS.
    base, base_afs = _baseline_schedules(ns, space, mode, k, lat, kind, budget, positions)
    both = {**base, **base_afs}
    names = list(both)
    recs = held.evaluate_schedules(list(both.values()), stage=cfg.stages + 2)
    rows = {n: {"fd": r.fd, "nfe": r.nfe, "cost": r.cost} for n, r in zip(names, recs, strict=True)}
    base_rows = {n: rows[n] for n in base}
    afs_rows = {n: rows[n] for n in base_afs}
    best_base = min(base_rows, key=lambda n: base_rows[n]["fd"]) if base_rows else None
    best_afs = min(afs_rows, key=lambda n: afs_rows[n]["fd"]) if afs_rows else None
    # The plot compares like with like: everything on the search noise (the baselines' search-noise FDs).
    base_search = ev.evaluate_schedules(list(base.values()), stage=cfg.stages + 2)
    best_search = ev.evaluate_schedules([res.schedule], stage=cfg.stages + 2)[0]
    used = archive.cache_hits
    report = {
        "mode": mode,
        "zoo": str(zoo_dir),
        "nfe": nfe,
        "budget_seconds": budget_seconds,
        "budget_ms": budget_ms,
        "model": k if mode == "solver" else None,
        "spacing": spacing,
        "searched": {"fd": best.fd, "nfe": best.nfe, "cost": best.cost},
        "best_baseline": None if best_base is None else {"name": best_base, **base_rows[best_base]},
        "fd_ratio_to_best_baseline": None if best_base is None else best.fd / base_rows[best_base]["fd"],
        "baselines": base_rows,
        "best_baseline_with_afs": None if best_afs is None else {"name": best_afs, **afs_rows[best_afs]},
        "baselines_with_afs": afs_rows,
        "heldout_noise_seed": held.noise_seed,
        "heldout_samples": final_samples,
        "search_noise_seed": seed,
        "search_samples": num_samples,
        "selection_noise_seed": select.noise_seed,
        "selection_samples": final_samples,
        "evaluated": len(res.records),
        "new_evaluations": ev.evaluated,
        "stages": res.stages,
        "predictor_heldout_tau": res.heldout_tau,
        "search_seconds": search_seconds,
        "final_candidates": [{"fd": r.fd, "nfe": r.nfe, "cost": r.cost} for r in res.final],  # selection noise
        "machine": zoo.machine_name(),
        "cached_evaluations": len(used),
        "cache_machine": cache_machine if used else None,
    }
    if labels is not None:  # the objective's two parts, apart, on the held-out noise
        from omsjax import conditional

        if space.searches_guidance:
            report |= {"guidance_choices": list(space.guidance_choices),
                       "searched_guidance": np.asarray(res.schedule.guidance).tolist()}  # fmt: skip
        report |= {"guidance": w, "objective": f"{cond_kw['metric_name']}: FD + {accuracy_weight:g} x (100 - "
                   "accuracy %); the fd fields above hold this score", "conditional": {
                       name: conditional.scores(held.samples(s), labels[:final_samples])
                       for name, s in (("searched", res.schedule), ("best_baseline", both.get(best_base)))
                       if s is not None}}  # fmt: skip
    meta = dict(mode=mode, fd=best.fd, nfe=best.nfe, cost=best.cost, heldout_samples=final_samples,
                heldout_noise_seed=held.noise_seed)  # fmt: skip
    files.write_text(out / "schedule.json", res.schedule.to_json(**meta))
    files.write_json(out / "report.json", report, default=_jsonable)
    _pareto(out / "pareto.png", res.records, base_search, best_search, mode)
    plots.save_grid(ev.samples(res.schedule, reuse_chunk=True)[:64], out / "samples.png")  # nothing to compile
    return report


def cache_presets(zoo_dir, nfes, *, num_samples: int = 500, final_samples: int = 1000, seed: int = 0,
                  spacing: str = "logSNR", progress: bool = True) -> Path:  # fmt: skip
    """Evaluate the presets of solver-mode searches on the largest model of `zoo_dir` once, at each NFE of `nfes`,
    and ship them with the zoo (`search.cache`): the stage-0 preset seeds and the baselines on the search noise
    (`seed`, `num_samples`), and the baselines on the held-out noise (`seed` + 1000, `final_samples`): what
    `omsjax search --nfe N` with these settings would evaluate first. Adds to the records already cached for the
    same zoo files; returns the cache's path."""
    from omsjax import zoo

    nfes = list(nfes)
    if not nfes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in nfes):
        raise ValueError(f"the NFEs to cache must be integers >= 1, got {nfes}")
    models, ns, manifest = zoo.load_zoo(zoo_dir)
    mean = zoo.data_mean(manifest)
    shape = tuple(manifest["image_shape"])
    lat = [m.latency for m in models]
    archive = Archive()
    archive.remember(cache.load(zoo_dir)[0])
    for n in nfes:
        space, k, budget, kind, positions = _space(models, ns, mean, "solver", n, None, None, spacing, 16)
        ev = Evaluator(models, ns, space, num_samples=num_samples, noise_seed=seed, image_shape=shape, data_mean=mean,
                       archive=archive)  # fmt: skip
        held = ev.with_noise(seed + 1000, final_samples)
        base, base_afs = _baseline_schedules(ns, space, "solver", k, lat, kind, budget, positions)
        t0 = time.perf_counter()
        ev.evaluate(encoding.preset_seeds(space, ns))
        ev.evaluate_schedules(list(base.values()))
        held.evaluate_schedules([*base.values(), *base_afs.values()])
        if progress:
            print(f"NFE {n}: {ev.evaluated + held.evaluated} evaluations in {time.perf_counter() - t0:.0f} s")
    return cache.write(zoo_dir, archive.records, zoo.machine_name())


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def _pareto(path, records, base_records, best, mode):
    """Model and joint modes: cost vs. FD. Solver mode (one cost): FD against the evaluation order, by stage."""
    import matplotlib

    from omsjax import plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    ys = np.asarray([r.fd for r in records], float)
    if mode == "solver":
        xs = np.arange(len(records), dtype=float)
        stage = np.asarray([r.stage for r in records])
        for st in np.unique(stage):
            m = (stage == st) & np.isfinite(ys)
            ax.scatter(xs[m], ys[m], s=8, alpha=0.6, label=f"stage {st}")
        fb = min(r.fd for r in base_records)
        ax.axhline(fb, color="k", ls="--", lw=1, label=f"best baseline ({fb:.2f})")
        ax.axhline(best.fd, color="r", ls=":", lw=1, label=f"searched ({best.fd:.2f})")
        ax.set_xlabel(f"evaluation (NFE {best.nfe})")
    else:
        xs = np.asarray([r.cost for r in records], float)
        ok = np.isfinite(ys)
        ax.scatter(xs[ok], ys[ok], s=8, alpha=0.5, label="evaluated during the search")
        ax.scatter([r.cost for r in base_records], [r.fd for r in base_records], marker="x", color="k",
                   label="baselines")  # fmt: skip
        ax.scatter([best.cost], [best.fd], marker="*", s=160, color="r", label="searched")
        ax.set_xlabel("cost: sum of model latencies (ms per batch)")
    ax.set_yscale("log")
    ax.set_ylabel("FD (digits classifier features)")
    ax.set_title(f"omsjax search, {mode} mode (FD on the search noise)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        plots.save(fig, path, dpi=120)
    finally:
        plt.close(fig)
