"""The static structure of a genome search: `SearchSpace` (the number of positions, the zoo's latencies, the mode
and which decisions are searched). `encoding` decodes genomes of a space into schedules.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from omsjax import usf
from omsjax.fields import count
from omsjax.noise import NoiseSchedule, time_range
from omsjax.spacing import SPACINGS

__all__ = ["MODES", "BASE_SOLVERS", "SearchSpace", "default_guidance_choices"]

MODES = ("solver", "model", "joint")
BASE_SOLVERS = ("unipc", "dpm_solver_pp")


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The static structure of a search.

    Attributes:
      num_positions: N, the most steps a decoded schedule has.
      latencies: the zoo's per-model latencies (ms per batch): the cost model; the zoo size Z is its length.
      mode: "solver", "model" or "joint" (module docstring).
      model: the zoo index of solver mode.
      nfe: solver mode: the exact NFE (then num_positions must be nfe + 1).
      max_order: the highest order the search may pick (1..4).
      mean_afs: whether the AFS "data-set mean" guess is allowed (needs the zoo's data mean).
      base_solver: model mode's fixed solver: "unipc" (UniPC-2 bh2, corrector on every step but the last, lower
        order final) or "dpm_solver_pp" (DPM-Solver++(2M), lower order final under 10 steps).
      spacing: the base step spacing, one of SPACINGS: the time coordinate the `u` genes split (module docstring).
        Model mode's steps follow it exactly; solver and joint modes search around it. `for_noise_schedule`
        takes the noise schedule's `default_spacing`.
      t_start, t_end: the fixed end times. The defaults (1.0, 1e-3) suit the VP schedules; for any other noise
        schedule build the space with `for_noise_schedule` (or `for_nfe(..., noise_schedule=ns)`), which takes
        t_start = ns.t_max and t_end = ns.default_t_end. `check_times(ns)` says whether they fit a schedule.
      guidance: the classifier-free guidance scale of every decoded step (`Schedule.guidance`; 1: unguided). A
        guided step calls its model twice: `cost`, `nfe` and the budgets of model and joint modes count both.
      guidance_choices: empty (the default): every step is guided at `guidance`. Otherwise the per-step guidance
        gene is searched (any mode): step i's scale is guidance_choices[gene_i], so the search learns at which
        steps guidance helps. At least two distinct finite values, `guidance` among them (the presets that seed
        the search are guided at it); a step at 1 calls its model once (the sampler skips the unconditional
        half), any other twice, and `cost`, `nfe` and the budgets count each step's own calls.
        `default_guidance_choices(w)` gives (1, w/2, w, 3w/2).
    """

    num_positions: int
    latencies: tuple
    mode: str = "solver"
    model: int = 0
    nfe: int | None = None
    max_order: int = 3
    mean_afs: bool = False
    base_solver: str = "unipc"
    spacing: str = "logSNR"
    t_start: float = 1.0
    t_end: float = 1e-3
    guidance: float = 1.0
    guidance_choices: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "latencies", tuple(float(v) for v in self.latencies))
        object.__setattr__(self, "num_positions", count("SearchSpace.num_positions", self.num_positions, 2))
        if not self.latencies or not all(math.isfinite(v) and v >= 0 for v in self.latencies):
            raise ValueError(f"latencies must be a non-empty sequence of finite numbers >= 0, got {self.latencies}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        object.__setattr__(self, "model", count("SearchSpace.model", self.model, 0))
        if self.model >= self.num_models:
            raise ValueError(f"model {self.model!r} is not in the zoo of {self.num_models} model(s)")
        if self.mode == "solver":
            object.__setattr__(self, "nfe", count("SearchSpace.nfe (solver mode)", self.nfe))
            if self.num_positions != self.nfe + 1:
                raise ValueError(
                    f"solver mode: num_positions must be nfe + 1 = {self.nfe + 1}, got {self.num_positions}"
                )
        elif self.nfe is not None:
            raise ValueError(f"nfe is fixed only in solver mode; {self.mode} mode has a budget instead")
        object.__setattr__(self, "max_order", count("SearchSpace.max_order", self.max_order, maximum=usf.MAX_ORDER))
        if self.base_solver not in BASE_SOLVERS:
            raise ValueError(f"base_solver must be one of {BASE_SOLVERS}, got {self.base_solver!r}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {SPACINGS}, got {self.spacing!r}")
        if not (math.isfinite(self.t_start) and math.isfinite(self.t_end) and self.t_start > self.t_end > 0):
            raise ValueError(f"need t_start > t_end > 0, got {self.t_start}, {self.t_end}")
        if isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float)):
            raise ValueError(f"guidance must be a real number, got {self.guidance!r}")
        if not math.isfinite(self.guidance):
            raise ValueError(f"guidance must be finite, got {self.guidance}")
        choices = tuple(self.guidance_choices)
        if any(isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) for v in choices):
            raise ValueError(f"guidance_choices must be real numbers, got {self.guidance_choices!r}")
        choices = tuple(float(v) for v in choices)
        object.__setattr__(self, "guidance_choices", choices)
        if choices:
            if len(choices) < 2 or len(set(choices)) != len(choices) or not all(map(math.isfinite, choices)):
                raise ValueError(f"guidance_choices must be at least two distinct finite scales, got {choices}")
            if float(self.guidance) not in choices:
                raise ValueError(
                    f"guidance_choices {choices} must include the space's guidance {self.guidance:g} "
                    "(the scale of the presets that seed the search)"
                )

    @property
    def bounds(self) -> tuple[float, float]:
        """(t_start, t_end)."""
        return (self.t_start, self.t_end)

    def timeless(self) -> SearchSpace:
        """This space with placeholder end times (1, 0.5): the static key of the compiled search programs
        (`encoding.decode`, the predictor, the GA), which take the real `bounds` as a traced argument, so searches
        that differ only in their time range share one compilation."""
        return dataclasses.replace(self, t_start=1.0, t_end=0.5)

    @property
    def num_models(self) -> int:
        return len(self.latencies)

    @property
    def searches_guidance(self) -> bool:
        """Whether the per-step guidance gene is searched (`guidance_choices`)."""
        return bool(self.guidance_choices)

    @property
    def calls_per_step(self) -> int:
        """Model calls of one step at most: 2 where a step may be guided (the conditional and the unconditional
        output), else 1. With `guidance_choices`, a step at scale 1 calls once (`encoding.step_calls`)."""
        return 2 if any(w != 1 for w in (self.guidance, *self.guidance_choices)) else 1

    @property
    def skip(self) -> int:
        """The model index that removes a position (model and joint modes)."""
        return self.num_models

    @property
    def searches_models(self) -> bool:
        return self.mode in ("model", "joint")

    @property
    def searches_solver(self) -> bool:
        return self.mode in ("solver", "joint")

    @property
    def num_afs(self) -> int:
        return 3 if self.mean_afs else 2

    @classmethod
    def for_nfe(
        cls, nfe: int, latencies, *, model: int = 0, noise_schedule: NoiseSchedule | None = None, **kw
    ) -> SearchSpace:
        """Solver mode at a fixed NFE; with `noise_schedule`, its end times (`for_noise_schedule`)."""
        kw = dict(num_positions=int(nfe) + 1, latencies=latencies, mode="solver", model=model, nfe=int(nfe), **kw)
        return cls(**kw) if noise_schedule is None else cls.for_noise_schedule(noise_schedule, **kw)

    @classmethod
    def for_noise_schedule(cls, noise_schedule: NoiseSchedule, **kw) -> SearchSpace:
        """A space whose end times and base spacing are the noise schedule's: t_start = t_max, t_end =
        default_t_end, spacing = default_spacing (explicit `t_start` / `t_end` / `spacing` in `kw` win); the other
        fields as in `SearchSpace(**kw)`."""
        ns = noise_schedule
        own = {"t_start": float(ns.t_max), "t_end": float(ns.default_t_end), "spacing": ns.default_spacing}
        return cls(**{**own, **kw})

    def check_times(self, noise_schedule: NoiseSchedule) -> None:
        """Raise `ValueError` unless t_min <= t_end < t_start <= t_max of `noise_schedule` (`noise.time_range`)."""
        hint = "; build it with SearchSpace.for_noise_schedule(ns, ...) or SearchSpace.for_nfe(..., noise_schedule=ns)"
        time_range(noise_schedule, self.t_start, self.t_end, who="SearchSpace", hint=hint)


def default_guidance_choices(w: float) -> tuple[float, ...]:
    """(1, w/2, w, 3w/2): unguided, half, full and one and a half times the scale `w` (!= 1), without repeats
    (w = 2 gives (1, 2, 3)); the per-step guidance gene's default values (`omsjax search --search-guidance`)."""
    w = float(w)
    if not math.isfinite(w) or w == 1:
        raise ValueError(f"a searched guidance scale needs a finite guidance w != 1, got {w:g}")
    return tuple(dict.fromkeys((1.0, w / 2, w, 1.5 * w)))
