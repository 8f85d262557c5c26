"""The classic solvers as USF schedules: DDIM, DPM-Solver (singlestep), DPM-Solver++ (multistep), UniPC.

Each function returns an `omsjax.Schedule` that reproduces the published implementation (LuChengTHU/dpm-solver,
wl-zhao/UniPC) step for step. Every preset with the same number of steps N has the same pytree structure and
dtypes, so one compiled sampler runs them all.

Common arguments: `noise_schedule`, `nfe` (model calls), `skip` ('logSNR', 'time_uniform', 'time_quadratic',
'karras'; default the noise schedule's `default_spacing`: logSNR for VP, karras for EDM, time_uniform for flow),
`t_start` (default T), `t_end` (default: the schedule's, 1e-3 for continuous VP, sigma_min for EDM),
`model` (the zoo index used at every step), `guidance` (the classifier-free guidance scale: a number for every
step or one per step; 1, the default, is unguided; `nfe` counts the steps' model calls without guidance, while
`Schedule.nfe()` counts each guided step twice).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from omsjax import usf
from omsjax.fields import count
from omsjax.noise import NoiseSchedule
from omsjax.schedule import AFS_NAMES, Schedule, make
from omsjax.spacing import SPACINGS, time_steps

__all__ = ["ddim", "dpm_solver", "dpm_solver_pp", "unipc", "PRESETS", "preset", "NAMED", "with_guidance"]

_PRED = {"noise": usf.NOISE, "data": usf.DATA}


def _check_common(noise_schedule, nfe, model, prediction, afs):
    if not isinstance(noise_schedule, NoiseSchedule):
        raise ValueError(f"noise_schedule must be an omsjax noise schedule, got {type(noise_schedule).__name__}")
    count("nfe", nfe)
    count("model (a zoo index)", model, 0)
    if prediction not in _PRED:
        raise ValueError(f"prediction must be 'noise' or 'data', got {prediction!r}")
    if afs not in AFS_NAMES:
        raise ValueError(f"afs must be one of {AFS_NAMES}, got {afs!r}")


def _build(ts, orders, starts, d1, relax_types, prediction, correctors, model, afs, d2_scale=None) -> Schedule:
    n = len(orders)
    return make(
        ts=ts,
        model=np.full(n, model),
        order=orders,
        prediction=np.full(n, _PRED[prediction]),
        start=starts,
        d1_points=d1,
        relax=np.zeros(n),
        relax_type=relax_types,
        corrector=correctors,
        afs=AFS_NAMES.index(afs),
        d2_scale=np.ones(n) if d2_scale is None else d2_scale,
    )


def with_guidance(schedule: Schedule, guidance) -> Schedule:
    """`schedule` with the classifier-free guidance scale `guidance`: a real number for every step, or one per step
    (its number of steps, e.g. `dpm_solver`'s sub-steps); 1 everywhere is the unguided schedule."""
    n = schedule.num_steps
    g = np.asarray(guidance, dtype=object if isinstance(guidance, str) else None)
    if g.dtype.kind not in "iuf" or g.ndim > 1 or not np.all(np.isfinite(g)):
        raise ValueError(f"guidance must be a finite real scale or one per step, got {guidance!r}")
    if g.ndim == 1 and g.shape != (n,):
        raise ValueError(f"guidance has {g.shape[0]} scales but the schedule has {n} steps")
    return schedule._replace(guidance=jnp.asarray(np.broadcast_to(g, (n,)), schedule.guidance.dtype))


def _steps_for(nfe, afs):
    # An analytical first step replaces the first model call: one more step for the same NFE.
    return nfe + (afs != "none")


def ddim(
    noise_schedule: NoiseSchedule,
    nfe: int,
    *,
    skip: str | None = None,
    t_start: float | None = None,
    t_end: float | None = None,
    model: int = 0,
    prediction: str = "noise",
    afs: str = "none",
    guidance=1.0,
) -> Schedule:
    """DDIM (= DPM-Solver-1 = DPM-Solver++-1): order 1 at every step; both predictions give the same update."""
    _check_common(noise_schedule, nfe, model, prediction, afs)
    n = _steps_for(nfe, afs)
    ts = time_steps(noise_schedule, n, skip, t_start=t_start, t_end=t_end)
    z = np.zeros(n, int)
    return with_guidance(_build(ts, np.ones(n, int), z, z, z, prediction, np.zeros(n, bool), model, afs), guidance)


def _multistep_orders(n, order, lower_order_final):
    # DPM-Solver++ / UniPC: warm-up orders 1..order-1, then `order`, lowered at the end if requested.
    orders = []
    for step in range(1, n + 1):
        if step < order:
            orders.append(step)
        elif lower_order_final:
            orders.append(min(order, n + 1 - step))
        else:
            orders.append(order)
    return np.asarray(orders)


def dpm_solver_pp(
    noise_schedule: NoiseSchedule,
    nfe: int,
    order: int = 2,
    *,
    skip: str | None = None,
    t_start: float | None = None,
    t_end: float | None = None,
    model: int = 0,
    solver_type: str = "dpmsolver",
    lower_order_final: bool = True,
    prediction: str = "data",
    afs: str = "none",
    guidance=1.0,
) -> Schedule:
    """Multistep DPM-Solver++(kM) (data prediction). Lower-order final steps only when NFE < 10, as in
    `DPM_Solver.sample(method='multistep', lower_order_final=True)`; order-2 steps use the DPM-Solver-2
    coefficient ('dpmsolver' type; 'taylor' uses the plain Taylor term); order-3 steps use the published 3M
    update, whose second-derivative term is half the Taylor term (`d2_scale = 0.5`)."""
    _check_common(noise_schedule, nfe, model, prediction, afs)
    if order not in (1, 2, 3):
        raise ValueError(f"dpm_solver_pp order must be 1, 2 or 3, got {order!r}")
    if solver_type not in ("dpmsolver", "taylor"):
        raise ValueError(f"solver_type must be 'dpmsolver' or 'taylor', got {solver_type!r}")
    n = _steps_for(nfe, afs)
    if n < order:
        raise ValueError(f"dpm_solver_pp of order {order} needs at least {order} steps, got {n}")
    ts = time_steps(noise_schedule, n, skip, t_start=t_start, t_end=t_end)
    orders = _multistep_orders(n, order, lower_order_final and n < 10)
    relax = np.where((orders == 2) & (solver_type == "dpmsolver"), usf.RELAX_DPM2, usf.RELAX_LINEAR)
    # The published order-3 multistep update uses D_2 = (D1_0 - D1_1)/(r_0 + r_1): half the Taylor term.
    d2_scale = np.where(orders == 3, 0.5, 1.0)
    z = np.zeros(n, int)
    return with_guidance(_build(ts, orders, z, z, relax, prediction, np.zeros(n, bool), model, afs, d2_scale), guidance)


def _singlestep_outer(noise_schedule, nfe, order, skip, t_start, t_end):
    """DPM-Solver-fast's outer orders and outer times (`get_orders_and_timesteps_for_singlestep_solver`)."""
    skip = noise_schedule.default_spacing if skip is None else skip
    if order == 3:
        k = nfe // 3 + 1
        if nfe % 3 == 0:
            orders = [3] * (k - 2) + [2, 1]
        elif nfe % 3 == 1:
            orders = [3] * (k - 1) + [1]
        else:
            orders = [3] * (k - 1) + [2]
    elif order == 2:
        if nfe % 2 == 0:
            k = nfe // 2
            orders = [2] * k
        else:
            k = nfe // 2 + 1
            orders = [2] * (k - 1) + [1]
    else:
        k = nfe
        orders = [1] * nfe
    if skip == "logSNR":
        outer = time_steps(noise_schedule, k, skip, t_start=t_start, t_end=t_end)
    else:
        grid = time_steps(noise_schedule, nfe, skip, t_start=t_start, t_end=t_end)
        outer = grid[np.cumsum([0] + orders)]
    return orders, outer


def dpm_solver(
    noise_schedule: NoiseSchedule,
    nfe: int,
    order: int = 3,
    *,
    skip: str | None = None,
    t_start: float | None = None,
    t_end: float | None = None,
    model: int = 0,
    solver_type: str = "dpmsolver",
    prediction: str = "noise",
    guidance=1.0,
) -> Schedule:
    """Singlestep DPM-Solver-k, the 'fast' order pattern of `DPM_Solver.sample(method='singlestep')`.

    An outer step of order o becomes o USF sub-steps on a grid that includes its intermediate times (spaced by
    `skip` inside the outer step): order 1, then start points 1..o-1 back. With the 'dpmsolver' type an order-2
    outer step uses the DPM-Solver-2 factor, and an order-3 one ends with an order-2 step whose derivative uses
    only the last intermediate point (DPM-Solver-3's published update); 'taylor' uses full Taylor terms.
    """
    _check_common(noise_schedule, nfe, model, prediction, "none")
    if order not in (1, 2, 3):
        raise ValueError(f"dpm_solver order must be 1, 2 or 3, got {order!r}")
    if solver_type not in ("dpmsolver", "taylor"):
        raise ValueError(f"solver_type must be 'dpmsolver' or 'taylor', got {solver_type!r}")
    outer_orders, outer = _singlestep_outer(noise_schedule, nfe, order, skip, t_start, t_end)
    ts = [outer[0]]
    orders, starts, relax = [], [], []
    for o, s, t in zip(outer_orders, outer[:-1], outer[1:], strict=True):
        ts.extend(time_steps(noise_schedule, o, skip, t_start=s, t_end=t)[1:])
        orders.append(1)
        starts.append(0)
        relax.append(usf.RELAX_LINEAR)
        if o == 2:
            orders.append(2)
            starts.append(1)
            relax.append(usf.RELAX_DPM2 if solver_type == "dpmsolver" else usf.RELAX_LINEAR)
        elif o == 3:
            orders += [2, 2] if solver_type == "dpmsolver" else [2, 3]
            starts += [1, 2]
            relax += [usf.RELAX_LINEAR, usf.RELAX_LINEAR]
    n = len(orders)
    z = np.zeros(n, int)
    sched = _build(np.asarray(ts), orders, starts, z, relax, prediction, np.zeros(n, bool), model, "none")
    return with_guidance(sched, guidance)


def unipc(
    noise_schedule: NoiseSchedule,
    nfe: int,
    order: int = 2,
    *,
    variant: str = "bh2",
    skip: str | None = None,
    t_start: float | None = None,
    t_end: float | None = None,
    model: int = 0,
    prediction: str = "data",
    lower_order_final: bool = True,
    afs: str = "none",
    guidance=1.0,
) -> Schedule:
    """Multistep UniPC-p with B(h) = h (bh1) or e^h - 1 (bh2): UniP-p predictor, UniC corrector on every step
    but the last (free: it reuses the next model call). Order-2 predictors and the order-1 corrector use the
    published rho = 1/2, i.e. the bh relaxation factor; lower-order final steps as in `UniPC.sample`."""
    _check_common(noise_schedule, nfe, model, prediction, afs)
    if order not in (1, 2, 3):
        raise ValueError(f"unipc order must be 1, 2 or 3, got {order!r}")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"unipc variant must be 'bh1' or 'bh2', got {variant!r}")
    n = _steps_for(nfe, afs)
    if n < order:
        raise ValueError(f"unipc of order {order} needs at least {order} steps, got {n}")
    ts = time_steps(noise_schedule, n, skip, t_start=t_start, t_end=t_end)
    orders = _multistep_orders(n, order, lower_order_final)
    bh = usf.RELAX_BH1 if variant == "bh1" else usf.RELAX_DPM2
    relax = np.where(orders <= 2, bh, usf.RELAX_LINEAR)
    correctors = np.arange(n) < n - 1
    z = np.zeros(n, int)
    return with_guidance(_build(ts, orders, z, z, relax, prediction, correctors, model, afs), guidance)


PRESETS = {"ddim": ddim, "dpm_solver": dpm_solver, "dpm_solver_pp": dpm_solver_pp, "unipc": unipc}


def preset(name: str, noise_schedule: NoiseSchedule, nfe: int, **kwargs) -> Schedule:
    """A preset by name (for the command line): one of `PRESETS`."""
    if name not in PRESETS:
        raise ValueError(f"unknown solver {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name](noise_schedule, nfe, **kwargs)


# Named solver settings, as the command line and the search's baselines spell them: name -> (preset, kwargs).
NAMED = {
    "DDIM": ("ddim", {}),
    "DPM-Solver-2": ("dpm_solver", {"order": 2}),
    "DPM-Solver-3": ("dpm_solver", {"order": 3}),
    "DPM-Solver++(2M)": ("dpm_solver_pp", {"order": 2}),
    "DPM-Solver++(3M)": ("dpm_solver_pp", {"order": 3}),
    "UniPC-2 (bh1)": ("unipc", {"order": 2, "variant": "bh1"}),
    "UniPC-2 (bh2)": ("unipc", {"order": 2, "variant": "bh2"}),
    "UniPC-3 (bh1)": ("unipc", {"order": 3, "variant": "bh1"}),
    "UniPC-3 (bh2)": ("unipc", {"order": 3, "variant": "bh2"}),
}

# The multistep solvers that searched schedules are seeded with and compared against (names of NAMED).
BASELINES = (
    "DDIM",
    "DPM-Solver++(2M)",
    "DPM-Solver++(3M)",
    "UniPC-2 (bh1)",
    "UniPC-2 (bh2)",
    "UniPC-3 (bh1)",
    "UniPC-3 (bh2)",
)


def named(name: str, noise_schedule: NoiseSchedule, nfe: int, **kwargs) -> Schedule:
    """The named solver setting `name` (a key of `NAMED`) at `nfe`; `kwargs` as the presets' (skip, model, afs,
    t_start, t_end, ...)."""
    if name not in NAMED:
        raise ValueError(f"unknown solver {name!r}; expected one of {sorted(NAMED)}")
    kind, kw = NAMED[name]
    return preset(kind, noise_schedule, nfe, **kw, **kwargs)


def named_grid(noise_schedule: NoiseSchedule, nfe: int, names=BASELINES, spacings=SPACINGS, **kwargs) -> dict:
    """{(name, spacing): Schedule} of the named solvers `names` over the step `spacings` at `nfe`, in that order;
    `kwargs` go to every preset. A setting that does not exist at `nfe` (a preset's ValueError, e.g. an analytical
    first step that leaves no step for the solver) has no entry."""
    out = {}
    for name in names:
        for skip in spacings:
            try:
                out[(name, skip)] = named(name, noise_schedule, nfe, skip=skip, **kwargs)
            except ValueError:
                continue
    return out
