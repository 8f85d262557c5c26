"""The end of a search: what it returns, and the verdict on it against the classic solvers.

`finish(ev, pool, baselines, config)`, after `loop.search`:

1. every baseline (`baselines.for_space`: the classic solvers with their +AFS variants) is scored on the search
   noise (mostly archive hits: the presets seed the search); the finalists are the `candidates` best schedules
   of the search's `pool` by search score that are not baselines (a genome decoded from a preset is that preset
   up to float rounding, `archive.same_schedule`) and the `baseline_top` best baselines;
2. selection: every finalist is scored on `draws` draws of selection noise (`selection_seed` + k, `samples`
   each). The best candidate and the best baseline by their mean are compared paired (`omsjax.verdict`): the
   candidate is returned only when it beats the baseline beyond the noise; otherwise the search returns that
   baseline's schedule and says so ("no better schedule found"): a search never hands back a schedule worse
   than the best classic solver it knows;
3. verdict: the returned schedule and the best baseline are scored on `draws` draws of held-out noise
   (`heldout_seed` + k), noise neither was picked on; the paired difference's mean and standard error give the
   verdict "beats", "tie" or "loses" (or "no better schedule found" when they are the same schedule); the
   metrics of `also` (e.g. the FD to data beside a reference metric, the accuracy of a conditional model) are
   compared the same way on the same samples.

`Final.report()` is the part of a search report this makes (the same keys from `find_schedule` and
`omsjax search`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from omsjax import checks, verdict
from omsjax.schedule import Schedule
from omsjax.search.archive import Record, same_schedule
from omsjax.search.evaluate import Evaluator

__all__ = ["FinalConfig", "Final", "finish", "NO_BETTER"]

NO_BETTER = "no better schedule found"


@dataclasses.dataclass(frozen=True)
class FinalConfig:
    """How a search's result is chosen and judged (`finish`): draws of selection noise pick among the finalists,
    draws of held-out noise judge the pick (`verdict.paired`)."""

    samples: int = 1000  # samples per draw
    candidates: int = 3  # the finalists: the best searched schedules on the search noise ...
    draws: int = 3  # draws (>= 2) of selection noise and of held-out noise each
    selection_seed: int = 3000  # the selection draws' noise seeds: selection_seed + k
    heldout_seed: int = 1000  # the held-out draws': heldout_seed + k
    baseline_top: int = 3  # ... and the best baselines on the search noise
    z: float = 2.0  # the verdict's threshold, in standard errors of the paired difference

    def __post_init__(self):
        checks.positive_int("FinalConfig.samples", self.samples)
        if checks.positive_int("FinalConfig.draws", self.draws) < 2:
            raise ValueError(f"FinalConfig.draws must be >= 2 (a standard error), got {self.draws}")
        checks.integer("FinalConfig.selection_seed", self.selection_seed)
        checks.integer("FinalConfig.heldout_seed", self.heldout_seed)
        checks.positive_int("FinalConfig.baseline_top", self.baseline_top)
        checks.positive_int("FinalConfig.candidates", self.candidates)
        checks.real("FinalConfig.z", self.z, gt=0)
        if abs(self.selection_seed - self.heldout_seed) < self.draws:
            raise ValueError(
                f"FinalConfig: the selection seeds {self.selection_seed}.. and the held-out seeds "
                f"{self.heldout_seed}.. overlap over {self.draws} draws"
            )

    def seeds(self, which: str) -> list[int]:
        base = {"selection": self.selection_seed, "heldout": self.heldout_seed}[which]
        return [base + k for k in range(self.draws)]


@dataclasses.dataclass
class Final:
    """The outcome of `finish`: the `schedule` returned, its `name` (a baseline's, when the search found nothing
    better; else None), the best baseline's name and schedule, their scores, and the verdicts."""

    schedule: Schedule
    name: str | None
    best_baseline: str
    baseline_schedule: Schedule
    verdict: str
    heldout: dict  # {"searched": [K scores], "best_baseline": [K scores], "paired": Paired, "also": {...}}
    selection: dict  # the finalists' mean scores, the paired comparison that decided
    baselines: dict  # {name: {"score" (search noise), "nfe", "cost", "schedule"}}
    searched_record: Record  # the returned schedule's record on the first held-out draw (nfe, cost)

    @property
    def score(self) -> float:
        """The returned schedule's mean score over the held-out draws."""
        return float(np.mean(self.heldout["searched"]))

    def report(self, metric_name: str) -> dict:
        """The report fields of the verdict, JSON-ready (inf as None)."""
        h = self.heldout
        base_mean, base_se = verdict.mean_se(h["best_baseline"])
        std = float(np.std(h["best_baseline"], ddof=1)) if math.isfinite(base_se) else None
        also = {
            n: {
                "searched": _fin(v["searched"]),
                "best_baseline": _fin(v["best_baseline"]),
                "paired": v["paired"].to_dict(),
            }
            for n, v in h["also"].items()
        }
        return {
            "metric": metric_name,
            "verdict": self.verdict,
            "returned": "searched" if self.name is None else f"baseline: {self.name}",
            "searched": {
                "score": _fin(self.score),
                "scores": _fin(h["searched"]),
                "nfe": self.searched_record.nfe,
                "cost": self.searched_record.cost,
            },
            "best_baseline": {
                "name": self.best_baseline,
                "score": _fin(base_mean),
                "scores": _fin(h["best_baseline"]),
                "nfe": self.baselines[self.best_baseline]["nfe"],
                "cost": self.baselines[self.best_baseline]["cost"],
                "schedule": self.baselines[self.best_baseline]["schedule"],
            },
            "paired_difference": None if h["paired"] is None else h["paired"].to_dict(),
            "metric_noise": _fin(std),
            "heldout_noise_seeds": h["seeds"],
            "selection_noise_seeds": self.selection["seeds"],
            "also": also,
            "selection": self.selection,
            "baselines": self.baselines,
        }


def _fin(v):
    """JSON-ready floats: inf and NaN as None (lists elementwise)."""
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_fin(x) for x in v]
    return None if v is None or not math.isfinite(v) else float(v)


def _check_something_finite(ev: Evaluator, pool: Sequence[Record], base_recs: list[Record], names: list[str]):
    """No finite score anywhere is an error; search candidates none of which scored finite (a finite baseline) are a
    warning."""
    finite_pool = any(math.isfinite(r.score) for r in pool)
    finite_base = [n for n, r in zip(names, base_recs, strict=True) if math.isfinite(r.score)]
    where = next((r.note for r in [*base_recs, *pool] if r.note), "")
    why = f" (e.g. {where})" if where else ""
    if not finite_pool and not finite_base:
        raise ValueError(
            f"no schedule scored finite on the metric {ev.metric_name}: the {len(names)} baselines and the "
            f"{len(pool)} search candidates all scored NaN or inf{why}; check the metric and the models"
        )
    if pool and not finite_pool:  # an empty pool: a caller that judges the baselines alone (`search_job`'s cache)
        warnings.warn(
            f"no search candidate scored finite on the metric {ev.metric_name} ({len(pool)} evaluated, all NaN "
            f"or inf{why}); only {len(finite_base)} of {len(names)} baselines did: the result is the best baseline",
            UserWarning,
            stacklevel=3,
        )


def _scores(evaluators: Sequence[Evaluator], schedules: list[Schedule], stage: int) -> np.ndarray:
    """[len(schedules), len(evaluators)] scores."""
    return np.asarray([[r.score for r in e.evaluate_schedules(schedules, stage=stage)] for e in evaluators]).T


def finish(
    ev: Evaluator,
    pool: Sequence[Record],
    baselines: dict[str, Schedule],
    cfg: FinalConfig = FinalConfig(),
    *,
    also: dict[str, Callable] | None = None,
    stage: int = 0,
) -> Final:
    """Choose what a search returns and judge it (module docstring). `ev`: the search's evaluator (its noise,
    metric, archive); `pool`: the search's records on `ev`'s noise (`loop.SearchResult.pool`); `baselines`: {name:
    Schedule}, at least one; `also`: other metrics of the held-out samples. Evaluations get `stage`."""
    if not baselines:
        raise ValueError("finish needs at least one baseline")
    names = list(baselines)
    base_recs = ev.evaluate_schedules([baselines[n] for n in names], stage=stage)
    known = [baselines[n] for n in names]
    rows = {
        n: {"score": _fin(r.score), "nfe": r.nfe, "cost": r.cost, "schedule": json.loads(baselines[n].to_json())}
        for n, r in zip(names, base_recs, strict=True)
    }
    order = sorted(range(len(names)), key=lambda i: base_recs[i].score)
    top_base = [names[i] for i in order[: cfg.baseline_top]]
    cands, cand_scheds = [], []
    for r in sorted(pool, key=lambda r: r.score):
        s = r.to_schedule()
        if len(cands) == cfg.candidates or not math.isfinite(r.score):
            break
        if not any(same_schedule(s, k) for k in known):
            known.append(s)
            cands.append(r)
            cand_scheds.append(s)
    _check_something_finite(ev, pool, base_recs, names)
    sel = [ev.with_noise(s, cfg.samples, chunk=1) for s in cfg.seeds("selection")]
    sel_scores = _scores(sel, cand_scheds + [baselines[n] for n in top_base], stage)
    means = sel_scores.mean(axis=1)
    b = int(np.argmin(means[len(cands) :])) + len(cands)
    best_base = top_base[b - len(cands)]
    selection = {
        "seeds": cfg.seeds("selection"),
        "samples": cfg.samples,
        "candidates": [_fin(m) for m in means[: len(cands)]],
        "baselines": {n: _fin(m) for n, m in zip(top_base, means[len(cands) :], strict=True)},
    }
    chosen, name = baselines[best_base], best_base
    if cands:
        c = int(np.argmin(means[: len(cands)]))
        p = verdict.paired(sel_scores[c], sel_scores[b], z=cfg.z)
        selection["paired"] = p.to_dict()
        if p.verdict == verdict.BEATS:
            chosen, name = cand_scheds[c], None
    held = [ev.with_noise(s, cfg.samples, chunk=1, also=also) for s in cfg.seeds("heldout")]
    pair = [chosen] if name is not None else [chosen, baselines[best_base]]
    recs = [e.evaluate_schedules(pair, stage=stage) for e in held]
    ours = [r[0] for r in recs]
    theirs = [r[-1] for r in recs]
    h = {
        "seeds": cfg.seeds("heldout"),
        "samples": cfg.samples,
        "searched": [r.score for r in ours],
        "best_baseline": [r.score for r in theirs],
        "paired": None,
        "also": {},
    }
    if name is None:
        h["paired"] = verdict.paired(h["searched"], h["best_baseline"], z=cfg.z)
        result = h["paired"].verdict
    else:
        result = NO_BETTER
    for n in also or {}:
        a, bb = [r.extras[n] for r in ours], [r.extras[n] for r in theirs]
        h["also"][n] = {"searched": a, "best_baseline": bb, "paired": verdict.paired(a, bb, z=cfg.z)}
    return Final(chosen, name, best_base, baselines[best_base], result, h, selection, rows, ours[0])
