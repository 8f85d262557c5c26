"""What a search is before it runs, for `find_schedule` and `omsjax search` alike.

- `FindOptions`: what a search may vary (solver mode's model, spacing, time range, step limit, guidance) and how
  it scores (sample counts, the loop's configuration, the metric's name), beyond its mode and budget.
- `Seeds`: THE seed convention. One int seed s gives every noise of a search: the search noise is seed s,
  the held-out noise's 3 draws seeds s + 1000, s + 1001, s + 1002, the selection noise's s + 3000 .. s + 3002,
  the noise check's second draw of search noise s + 4000, and the search's own randomness (random genomes, the
  GA, the predictor) comes from `jax.random.PRNGKey(s)`; so the score a search reports never saw the noise it
  was picked on. `find_schedule(key=...)` takes s itself (an int) or draws it from a `jax.random` key
  (`seed_of`).
- `plan`: THE budget rule, the search space and the GA's budget of a mode under an NFE or a latency budget.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import numpy as np

from omsjax import fields
from omsjax.fields import count, is_int
from omsjax.noise import time_range
from omsjax.search import final, loop
from omsjax.search.baselines import largest_nfe
from omsjax.search.space import MODES, SearchSpace
from omsjax.spacing import SPACINGS

__all__ = ["FindOptions", "Seeds", "seed_of", "Plan", "plan"]

HELDOUT_OFFSET, SELECTION_OFFSET, CHECK_OFFSET = 1000, 3000, 4000


@dataclasses.dataclass(frozen=True)
class FindOptions:
    """What a search may vary and how it scores, beyond its mode and budget (all optional).

    model: solver mode's zoo index (default the last member).
    num_samples, heldout_samples: samples of the search noise and of each selection and held-out draw.
    config: a `loop.LoopConfig` (its GA's budget kind is set from the budget); default `loop.LoopConfig()`, or
      `find.QUICK` with `find_schedule(quick=True)`.
    metric_name: names the metric in the archive and the report (default its `name` or `__qualname__`).
    spacing: the base step spacing of the genomes, one of `spacing.SPACINGS` (default the noise schedule's
      `default_spacing`: logSNR for VP, karras for EDM, time_uniform for flow).
    t_start, t_end: the first and last time of every candidate and baseline (default the noise schedule's t_max
      and default_t_end); t_min <= t_end < t_start <= t_max.
    max_steps: model and joint modes: the most steps a schedule may have.
    guidance: one classifier-free guidance scale for every step (needs `SampleOptions.uncond` when not 1).
    guidance_choices: search each step's guidance scale among these (`SearchSpace.guidance_choices`, `guidance`
      among them; e.g. `space.default_guidance_choices(w)`); a step at 1 calls once, so an NFE or latency
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
            if getattr(self, name) is not None:
                object.__setattr__(self, name, fields.real(f"FindOptions.{name}", getattr(self, name)))
        for name in ("num_samples", "heldout_samples", "max_steps"):
            object.__setattr__(self, name, count(f"FindOptions.{name}", getattr(self, name), 2))
        if self.model is not None:
            object.__setattr__(self, "model", count("FindOptions.model", self.model, 0))
        if self.config is not None and not isinstance(self.config, loop.LoopConfig):
            raise ValueError(f"FindOptions.config must be a loop.LoopConfig, got {type(self.config).__name__}")
        if self.spacing is not None and self.spacing not in SPACINGS:
            raise ValueError(f"FindOptions.spacing must be one of {SPACINGS}, got {self.spacing!r}")
        object.__setattr__(self, "guidance", fields.real("FindOptions.guidance", self.guidance))
        choices = tuple(fields.real("FindOptions.guidance_choices entries", w) for w in self.guidance_choices)
        object.__setattr__(self, "guidance_choices", choices)
        object.__setattr__(self, "progress", fields.boolean("FindOptions.progress", self.progress))


class Seeds(NamedTuple):
    """The noises of a search from one int seed (module docstring)."""

    search: int
    heldout: int
    selection: int
    check: int

    @classmethod
    def of(cls, seed: int) -> Seeds:
        s = fields.seed("seed", seed, fields.SEARCH_SEED_LIMIT)
        return cls(s, s + HELDOUT_OFFSET, s + SELECTION_OFFSET, s + CHECK_OFFSET)

    @property
    def key(self) -> jax.Array:
        """The search's own randomness: `PRNGKey(seed)`."""
        return jax.random.PRNGKey(self.search)

    def final_config(self, samples: int, candidates: int = 3) -> final.FinalConfig:
        """The end of the search (`final.finish`): `candidates` finalists, 3 draws each of selection and held-out
        noise of `samples` samples, from these seeds."""
        return final.FinalConfig(
            samples=samples, candidates=candidates, selection_seed=self.selection, heldout_seed=self.heldout
        )


def seed_of(key) -> int:
    """A search's int seed: `key` itself (an int >= 0), or one drawn from a `jax.random` key, below 2**30."""
    if is_int(key):
        return Seeds.of(key).search
    if not isinstance(key, jax.Array):
        raise ValueError(f"find_schedule: key must be a jax.random key or an int seed >= 0, got {key!r}")
    return int(jax.random.randint(key, (), 0, 2**30))


class Plan(NamedTuple):
    """A search's space and the GA's budget: `limit` (None: solver mode's exact NFE) of `kind` ("cost" or
    "nfe")."""

    space: SearchSpace
    limit: float | None
    kind: str


def plan(
    noise_schedule, latencies, *, mode: str, nfe=None, budget=None, options: FindOptions, mean_afs: bool = False
) -> Plan:
    """The search space and budget of `mode` under `nfe` (model calls; steps under guidance, as the presets' nfe)
    or `budget` (a sum of the models' latencies); exactly one of the two. Solver mode: the space at `nfe`, or at
    the largest NFE of its model that `budget` pays for. Model and joint modes: nfe + 1 time positions under an
    NFE budget (up to `max_steps` more when the guidance gene may leave steps unguided), or as many as the
    cheapest model's calls `budget` pays for, up to `options.max_steps`. A guided step pays for two calls."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if (nfe is None) == (budget is None):
        raise ValueError(
            f"{mode} mode needs exactly one of nfe= (an NFE budget) and budget= (a latency budget), "
            f"got nfe={nfe!r}, budget={budget!r}"
        )
    if nfe is not None:
        nfe = count("nfe", nfe)
    time_range(noise_schedule, options.t_start, options.t_end, who="find_schedule")
    lat = [float(v) for v in latencies]
    w, choices = float(options.guidance), options.guidance_choices
    calls = 1 if w == 1 else 2
    common = dict(
        mean_afs=mean_afs,
        guidance=w,
        guidance_choices=choices,
        spacing=options.spacing,
        t_start=options.t_start,
        t_end=options.t_end,
    )
    common = {k: v for k, v in common.items() if v is not None}
    if mode == "solver":
        k = len(lat) - 1 if options.model is None else count("FindOptions.model", options.model, 0)
        if k >= len(lat):
            raise ValueError(f"model {k!r} is not in the zoo of {len(lat)} models (0..{len(lat) - 1})")
        least = calls * lat[k]
        n = nfe if nfe is not None else largest_nfe(least, _budget(budget, least, f"model {k}"), 10**6)
        space = SearchSpace.for_nfe(int(n), lat, model=int(k), noise_schedule=noise_schedule, **common)
        return Plan(space, None, "cost")
    if options.model is not None:
        raise ValueError(f"options.model picks solver mode's model; {mode} mode chooses the models itself")
    if nfe is not None:
        positions, limit, kind = int(nfe) + 1, float(nfe * calls), "nfe"
        if choices:  # unguided steps call once: the budget may pay for more of them
            positions = max(positions, min(int(nfe) * calls + 1, options.max_steps))
    else:
        limit, kind = _budget(budget, calls * min(lat), "the cheapest model"), "cost"
        cheapest = (1 if 1.0 in choices else calls) * min(lat)
        positions = min(largest_nfe(cheapest, limit, options.max_steps - 1) + 1, options.max_steps)
    space = SearchSpace.for_noise_schedule(noise_schedule, num_positions=positions, latencies=lat, mode=mode, **common)
    return Plan(space, limit, kind)


def _budget(budget, least: float, what: str) -> float:
    """A latency budget that pays for at least one step (`least`) of `what`, as a float."""
    ok = isinstance(budget, (int, float, np.floating, np.integer)) and not isinstance(budget, bool)
    if not (ok and math.isfinite(budget) and budget >= least):
        raise ValueError(f"budget must pay for at least one step of {what} ({least}), got {budget!r}")
    return float(budget)
