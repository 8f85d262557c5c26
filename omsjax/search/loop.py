"""The S3 multi-stage search: GA sampling -> true evaluation -> predictor training -> predictor-guided GA -> ...

`search(evaluator, space, ...)`:
  stage 0: the presets (`seeding.preset_seeds`) and random genomes (repaired to the budget) are evaluated;
    with a `noise_evaluator` (a second draw of search noise), the best and the fifth best preset are scored again
    on it: when the gap between them changes by more than its size from one draw to the other, the search noise
    cannot tell good candidates apart, and a warning names `num_samples` (`check_noise`,
    `SearchResult.noise_check`);
  stage s = 1..K: the predictor is (re)trained on every schedule evaluated so far; a GA seeded with the best
    evaluated genomes runs `generations` generations on the predictor's scores (one jitted `lax.scan`), and its
    best genomes not yet evaluated are evaluated (exploitation); a share `explore_fraction` of the stage's
    `per_stage` evaluations instead goes to children of the best evaluated genomes selected by their true FD
    (exploration: S3's released GA on true evaluations, which keeps improving where the predictor, trained on a
    few hundred schedules, ranks the GA's novel genomes poorly);
  final: the `final_top` best schedules by search FD are evaluated again by `final_evaluator` (other noise, more
    samples), and the best of them is returned; `heldout_evaluator` (a third noise) then scores that one schedule
    alone, so its reported score is not the best of several draws on the noise it is reported on.
Model and joint modes take a budget (`budget_kind` "cost": the sum of latencies, or "nfe"); solver mode fixes the
NFE in the space. Everything evaluated goes to the evaluator's archive, so a rerun resumes without evaluating a
schedule twice.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from omsjax import checks
from omsjax.schedule import Schedule
from omsjax.search import encoding, ga, predictor, seeding
from omsjax.search.archive import Record, genome_from_dict, schedule_key
from omsjax.search.encoding import Genome
from omsjax.search.evaluate import Evaluator
from omsjax.search.space import SearchSpace

__all__ = ["LoopConfig", "SearchResult", "search", "check_noise"]


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """The S3 loop's settings (see the module docstring)."""

    stages: int = 4  # search stages after the initial one
    initial_random: int = 40  # random genomes evaluated at the start (with the preset seeds)
    per_stage: int = 40  # evaluations per stage
    explore_fraction: float = 0.5  # the share of a stage's evaluations spent on children of the best evaluated
    generations: int = 30  # GA generations on the predictor per stage
    ga: ga.GAConfig = ga.GAConfig()  # the genetic search's settings
    predictor_epochs: int = 300  # the predictor's training epochs per stage
    predictor_loss: str = "hinge"  # its ranking loss (`predictor.LOSSES`)
    predictor_threshold: float = 0.25  # the loss's threshold (`predictor.Training.threshold`)
    final_top: int = 5  # the best schedules by search score evaluated again at the end
    heldout_tau: bool = True  # also train a predictor on half the archive and report tau on the other half

    def __post_init__(self):
        ga.check_positive_ints(self, ("initial_random", "per_stage", "generations", "predictor_epochs", "final_top"))
        checks.real("LoopConfig.explore_fraction", self.explore_fraction, ge=0.0, le=1.0)
        checks.nonneg_int("LoopConfig.stages", self.stages)


@dataclasses.dataclass
class SearchResult:
    schedule: Schedule  # the best schedule after the final re-evaluation
    final: list[Record]  # the final re-evaluation of the top candidates, best first
    records: list[Record]  # everything evaluated during the search (search noise)
    stages: list[dict]  # per stage: evaluated, best score so far, predictor taus, seconds
    heldout_tau: float  # predictor trained on half the evaluated schedules, Kendall tau on the other half
    heldout: Record | None = None  # the chosen schedule on `heldout_evaluator`'s noise (when one was given)
    noise_check: dict | None = None  # the best and fifth best preset on two search-noise draws (`check_noise`)
    pool: list[Record] = dataclasses.field(
        default_factory=list
    )  # every evaluated schedule within the budget, best first


def _training(config) -> predictor.Training:
    """The predictor's training options of a `SearchConfig`."""
    return predictor.Training(
        epochs=config.predictor_epochs, loss=config.predictor_loss, threshold=config.predictor_threshold
    )


# Populations are small: stacking, indexing and concatenating them on the host (numpy) avoids compiling a program
# per operation and shape, as eager jnp indexing would.
def _stack(gs: list[Genome]) -> Genome:
    return jax.tree.map(lambda *xs: jnp.asarray(np.stack([np.asarray(x) for x in xs])), *gs)


def _take(pop: Genome, idx) -> Genome:
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a)[np.asarray(idx, np.int64)]), pop)


def _concat(*pops: Genome) -> Genome:
    return jax.tree.map(lambda *xs: jnp.asarray(np.concatenate([np.asarray(x, xs[0].dtype) for x in xs])), *pops)


def _size(pop: Genome) -> int:
    return int(jax.tree_util.tree_leaves(pop)[0].shape[0])


@functools.partial(jax.jit, static_argnames=("space", "gcfg"))
def _within_budget(space, gcfg, pop, budget):
    return jax.vmap(lambda g: ga.within_budget(space, gcfg, g, budget))(pop)


@functools.partial(jax.jit, static_argnames=("space", "gcfg"))
def _repair_jit(space, gcfg, pop, key, budget):
    keys = jax.random.split(key, _size(pop))
    return jax.vmap(lambda g, k: ga.repair(space, gcfg, g, k, budget))(pop, keys)


# The GA's programs are compiled once per (space.timeless(), GA config, generations) and reused by every later
# search: the noise schedule, end times, predictor parameters and budget are traced arguments (the GA's operators
# never read the times; the predictor's fitness gets them as `bounds`).
def _repair(space, gcfg, pop, key, budget):
    return _repair_jit(space.timeless(), gcfg, pop, key, budget)


def _run_ga(space, gcfg, generations, ns, params, state, budget):
    return _run_ga_jit(space.timeless(), gcfg, generations, ns, params, state, budget, space.bounds)


@functools.partial(jax.jit, static_argnames=("space", "gcfg", "generations"))
def _run_ga_jit(space, gcfg, generations, ns, params, state, budget, bounds):
    fitness = lambda pop: predictor.score(space, ns, params, pop, bounds=bounds)  # noqa: E731
    return ga.run(space, gcfg, fitness, state, generations, budget)


def _init_ga(space, gcfg, ns, params, seeds, key, budget):
    return _init_ga_jit(space.timeless(), gcfg, ns, params, seeds, key, budget, space.bounds)


@functools.partial(jax.jit, static_argnames=("space", "gcfg"))
def _init_ga_jit(space, gcfg, ns, params, seeds, key, budget, bounds):
    fitness = lambda pop: predictor.score(space, ns, params, pop, bounds=bounds)  # noqa: E731
    return ga.init(space, gcfg, fitness, key, seeds, budget)


def _explore(space, gcfg, pop, fit, key, budget):
    return _explore_jit(space.timeless(), gcfg, pop, fit, key, budget)


@functools.partial(jax.jit, static_argnames=("space", "gcfg"))
def _explore_jit(space, gcfg, pop, fit, key, budget):
    return ga.children(space, gcfg, pop, fit, key, budget)


def _feasible(space, gcfg, pop, budget):
    if budget is None:
        return np.ones(_size(pop), bool)
    return np.asarray(_within_budget(space.timeless(), gcfg, pop, budget))


def _training_set(space: SearchSpace, records: list[Record]) -> tuple[Genome, np.ndarray]:
    """The genomes of this space's structure (N positions, the guidance gene where it is searched) and their
    scores; an archive may hold other spaces' genomes under the same evaluation key."""

    def fits(d) -> bool:
        return len(d["model"]) == space.num_positions and ("guidance" in d) == space.searches_guidance

    # In the order of their schedule keys, not of the archive: a search reads the same training set (and so trains
    # the same predictor) whether its presets were evaluated in this run, resumed from its archive or read from a
    # zoo's shipped evaluations.
    rs = sorted((r for r in records if r.genome is not None and fits(r.genome)), key=lambda r: r.key)
    return _stack([genome_from_dict(r.genome) for r in rs]), np.asarray([r.score for r in rs], np.float64)


def _heldout_tau(space, ns, genomes, fds, key, cfg: LoopConfig) -> float:
    """Kendall tau of a predictor trained on a random half, measured on the other half."""
    n = len(fds)
    if n < 8:
        return float("nan")
    perm = np.asarray(jax.random.permutation(key, n))
    tr, ho = perm[: n // 2], perm[n // 2 :]
    res = predictor.fit(
        space, ns, _take(genomes, tr), fds[tr], key, training=_training(cfg), heldout=(_take(genomes, ho), fds[ho])
    )
    return res.heldout_tau


def search(
    evaluator: Evaluator,
    space: SearchSpace,
    *,
    key: jax.Array,
    config: LoopConfig = LoopConfig(),
    budget: float | None = None,
    final_evaluator: Evaluator | None = None,
    heldout_evaluator: Evaluator | None = None,
    noise_evaluator: Evaluator | None = None,
    progress: bool = True,
    log: Callable[[str], Any] | None = None,
) -> SearchResult:
    """Run the multi-stage search (module docstring). `budget` is in the units of `config.ga.budget_kind`
    (required in model and joint modes, ignored in solver mode)."""
    ns = evaluator.ns
    gcfg = config.ga
    if space.searches_models:
        if budget is None or not (math.isfinite(budget) and budget > 0):
            raise ValueError(f"{space.mode} mode needs a finite budget > 0, got {budget!r}")
    else:
        budget = None
    b = jnp.asarray(jnp.inf if budget is None else budget, jnp.result_type(float))
    k_rand, k_rep, k_pred, k_ga, k_tau = jax.random.split(key, 5)

    # Stage 0: presets and random genomes.
    seeds = seeding.preset_seeds(space, ns, budget=budget if gcfg.budget_kind == "cost" else None)
    rand = encoding.random_genomes(space, k_rand, config.initial_random)
    rand = _repair(space, gcfg, rand, k_rep, b)
    pop0 = _concat(seeds, rand)
    pop0 = _take(pop0, np.flatnonzero(_feasible(space, gcfg, pop0, budget)))
    if _size(pop0) == 0:
        raise ValueError(f"no schedule fits the budget {budget} ({gcfg.budget_kind})")

    stages = []
    bar = tqdm(total=config.stages + 1, desc="search", unit="stage", disable=not progress)
    start = time.perf_counter()
    recs = evaluator.evaluate(pop0, stage=0)
    stages.append(
        {
            "stage": 0,
            "evaluated": len(recs),
            "best_score": min(r.score for r in recs),
            "seconds": time.perf_counter() - start,
        }
    )
    n_seeds = int(np.sum(_feasible(space, gcfg, seeds, budget)))  # the presets lead pop0 (the feasible ones)
    noise = None if noise_evaluator is None else check_noise(evaluator, noise_evaluator, recs[:n_seeds])
    bar.update(1)

    params = None
    for s in range(1, config.stages + 1):
        t_stage = time.perf_counter()
        # Only what earlier stages evaluated: a resumed search retraces the interrupted one exactly.
        records = [r for r in evaluator.archive.select(evaluator.eval_key) if r.genome is not None and r.stage < s]
        known = {r.key for r in records}
        genomes, fds = _training_set(space, records)
        fit = predictor.fit(
            space, ns, genomes, fds, jax.random.fold_in(k_pred, s), training=_training(config), params=params
        )
        params = fit.params
        order = np.argsort(fds, kind="stable")[: gcfg.pop_size]
        state = _init_ga(space, gcfg, ns, params, _take(genomes, order), jax.random.fold_in(k_ga, s), b)
        state, best_curve = _run_ga(space, gcfg, config.generations, ns, params, state, b)
        n_explore = int(round(config.per_stage * config.explore_fraction))
        keys = set(known)
        exploit = _fresh(space, ns, state.population, np.asarray(state.fitness), keys, config.per_stage - n_explore)
        fit_true = jnp.asarray(np.where(np.isfinite(fds[order]), fds[order], np.inf))
        kids = _explore(space, gcfg, _take(genomes, order), fit_true, jax.random.fold_in(k_ga, 1000 + s), b)
        kid_ok = np.where(_feasible(space, gcfg, kids, budget), 0.0, np.inf)
        explore_idx = _fresh(space, ns, kids, kid_ok, keys, n_explore)
        picked = [_take(g, idx) for g, idx in ((state.population, exploit), (kids, explore_idx)) if idx]
        cand = _concat(*picked) if picked else None
        new = evaluator.evaluate(cand, stage=s) if picked else []
        tau_new = float("nan")
        if len(new) >= 3:
            pred_new = np.asarray(predictor.score(space, ns, params, cand))
            fd_new = np.asarray([r.score for r in new])
            tau_new = predictor.kendall_tau(pred_new, fd_new) if np.ptp(pred_new) > 0 else float("nan")
        fd_exploit = [r.score for r in new[: len(exploit)]]
        fd_explore = [r.score for r in new[len(exploit) :]]
        best = min([r.score for r in records] + [r.score for r in new])
        stages.append(
            {
                "stage": s,
                "evaluated": len(new),
                "best_score": best,
                "train_tau": fit.train_tau,
                "tau_on_new": tau_new,
                "predicted_best": float(best_curve[-1]),
                "best_exploit_score": min(fd_exploit, default=float("nan")),
                "best_explore_score": min(fd_explore, default=float("nan")),
                "seconds": time.perf_counter() - t_stage,
            }
        )
        if log is not None:
            log(f"stage {s}: {len(new)} evaluated, best score {best:.3f}, train tau {fit.train_tau:.2f}")
        bar.update(1)
    bar.close()

    records = [r for r in evaluator.archive.select(evaluator.eval_key) if r.stage <= config.stages]
    pool = [r for r in records if budget is None or _record_fits(r, gcfg, budget)]
    if not pool:
        raise ValueError("no evaluated schedule fits the budget")
    pool = sorted(pool, key=lambda r: r.score)
    top = pool[: config.final_top]
    final_eval = final_evaluator or evaluator
    final = final_eval.evaluate_schedules([r.to_schedule() for r in top], stage=config.stages + 1)
    final = sorted(final, key=lambda r: r.score)
    tau = float("nan")
    if config.heldout_tau:
        genomes, fds = _training_set(space, records)
        tau = _heldout_tau(space, ns, genomes, fds, k_tau, config)
    chosen = final[0].to_schedule()
    held = None
    if heldout_evaluator is not None:
        held = heldout_evaluator.evaluate_schedules([chosen], stage=config.stages + 1)[0]
    return SearchResult(chosen, final, records, stages, tau, held, noise, pool)


def check_noise(evaluator: Evaluator, other: Evaluator, presets: list[Record], rank: int = 5) -> dict:
    """Can the search noise tell candidates apart? Every candidate is scored on the same noise, so what decides
    its rank is the difference between scores, not their level: the best of the `presets` (records on
    `evaluator`'s noise) and the `rank`-th best are scored again on `other` (a second draw of the same size). The
    gap between them on the search noise is the spread the search must resolve; how much that gap changes from
    one draw to the other is the noise of a comparison. When the noise exceeds the spread, a warning names
    `num_samples`. Returns {"presets": [best, rank-th] keys, "scores": {key: [search, other]}, "spread",
    "noise", "ok"}."""
    ranked = sorted({r.key: r for r in presets if math.isfinite(r.score)}.values(), key=lambda r: r.score)
    if len(ranked) < 2:
        return {"presets": [], "scores": {}, "spread": None, "noise": None, "ok": None}
    pair = [ranked[0], ranked[min(rank, len(ranked)) - 1]]
    again = [r.score for r in other.evaluate_schedules([r.to_schedule() for r in pair], stage=0)]
    spread = pair[1].score - pair[0].score
    noise = abs((again[1] - again[0]) - spread) if all(map(math.isfinite, again)) else math.inf
    ok = bool(noise <= spread)
    if not ok:
        warnings.warn(
            f"the search noise cannot rank candidates: the gap between the best and the "
            f"{min(rank, len(ranked))}th best preset is {spread:.3g} on the search noise and "
            f"{again[1] - again[0]:.3g} on a second draw of num_samples = {evaluator.num_samples}; raise "
            "num_samples",
            stacklevel=2,
        )
    return {
        "presets": [r.key for r in pair],
        "scores": {r.key: [r.score, a] for r, a in zip(pair, again, strict=True)},
        "spread": spread,
        "noise": noise,
        "ok": ok,
    }


def _fresh(space, ns, pop: Genome, fitness: np.ndarray, keys: set, n: int) -> list[int]:
    """Indices of up to n members of `pop` (in order of `fitness`, finite only) whose schedules are not in
    `keys` and differ from each other; their keys are added to `keys`."""
    chosen = []
    host = jax.tree.map(np.asarray, pop)
    for i in np.argsort(fitness, kind="stable"):
        if len(chosen) >= n or not np.isfinite(fitness[i]):
            break
        k = schedule_key(encoding.to_schedule(space, ns, jax.tree.map(lambda a, i=i: a[i], host)))
        if k not in keys:
            keys.add(k)
            chosen.append(int(i))
    return chosen


def _record_fits(r: Record, gcfg: ga.GAConfig, budget: float) -> bool:
    v = r.nfe if gcfg.budget_kind == "nfe" else r.cost
    return v <= budget * (1 + 1e-9)
