"""Sampling a schedule: `sample` (one run, one compiled program per schedule length), `sample_many` (a stack of
schedules), `sample_heun` (EDM's Heun sampler), and the host-side helpers `noise`, `prior` and `generate`.

The program itself is `omsjax.integrate.run`: one `lax.scan` over USF steps, N steps making N model calls (N - 1
with an analytical first step). Concrete schedules and noise are checked on the host first and raise ValueError
(`omsjax.checks`); invalid decisions found under tracing make the output NaN; a model that fails or returns the
wrong shape or dtype raises a ValueError naming the zoo member while the program is traced
(`omsjax.models.to_eps_x0`). A model that returns NaN or inf cannot be seen without a cost:
`omsjax.diagnose.first_nonfinite_step` finds the step afterwards, on the host, and `generate` uses it to raise.

Starting noise: every sampler here expects x_T already at the prior's scale, x_T ~ N(0, prior_std(ts[0])^2 I):
1 for the variance-preserving and flow schedules, sigma_max (e.g. 80) for EDM. `prior` draws it.

A concrete schedule compiles only the zoo members it calls (`integrate.used_members`); under jit or vmap, where the
model indices are traced, the whole zoo is in the program's `lax.switch`. Programs are cached on the identity of
each model's `apply_fn`: pass the same function object every time (a module-level function, a bound Flax
`apply`), not a fresh `lambda` per call, or every call compiles again.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from omsjax import fields
from omsjax.checks import (
    check_batch,
    check_conditioning,
    check_inputs,
    check_noise_schedule,
    check_sample_shape,
    check_x_T,
    thresholding_option,
)
from omsjax.diagnose import NonFiniteStep, first_nonfinite_step
from omsjax.fields import count, is_int
from omsjax.integrate import Switches, Trajectory, run, run_used
from omsjax.models import Model, as_zoo, to_eps_x0
from omsjax.noise import NoiseSchedule
from omsjax.options import SampleOptions
from omsjax.schedule import Schedule, is_traced, time_bounds

__all__ = [
    "sample",
    "sample_many",
    "sample_heun",
    "noise",
    "prior",
    "generate",
    "first_nonfinite_step",
    "NonFiniteStep",
    "Trajectory",
]


def sample(
    model_or_zoo: Model | Sequence[Model],
    noise_schedule: NoiseSchedule,
    schedule: Schedule,
    x_T: jax.Array,
    *,
    data_mean: jax.Array | None = None,
    cond=None,
    uncond=None,
    thresholding=None,
    return_trajectory: bool = False,
    remat: bool = False,
) -> jax.Array | tuple[jax.Array, Trajectory]:
    """Run `schedule` from x_T (at ts[0]) to ts[N] and return x at ts[N], shape of x_T.

    Args:
      model_or_zoo: an `omsjax.Model` or a sequence of them (dispatched per step by `schedule.model`).
      noise_schedule: the forward process, e.g. `omsjax.noise.vp_linear()`.
      schedule: an `omsjax.Schedule` (a pytree of arrays: jit/vmap/grad friendly).
      x_T: [batch, ...] starting noise at the prior's scale, N(0, prior_std(ts[0])^2 I) (`prior` draws it):
        unit variance for VP and flow schedules, sigma_max for EDM.
      data_mean: x0 guess for the analytical first step `afs = 2`, broadcastable to one sample.
      cond: conditioning for every model call, a pytree of arrays with the batch as leading axis (labels,
        embeddings): each call is then apply_fn(params, x, t, cond), for every member of a zoo.
      uncond: the unconditional input (e.g. the null label), cond's structure and shapes: each model call at a step
        with `schedule.guidance[i]` = w != 1 is classifier-free guided, out(uncond) + w (out(cond) - out(uncond)),
        both halves in one call on the concatenated batch (`models.guided_eps_x0`); w = 1 calls cond alone.
      thresholding: dynamic thresholding of the model's data prediction after every call (DPM-Solver++ / Imagen,
        for guided sampling of data in [-1, 1]): True for (ratio 0.995, max_val 1.0), or (ratio, max_val); per
        sample, x0 is clipped to [-s, s] and divided by s = max(max_val, the ratio-quantile of |x0|), and the noise
        prediction is recomputed from it (`integrate.dynamic_threshold`). Off (None) by default.
      return_trajectory: also return a `Trajectory`: every state x_i [N + 1, batch, ...] and the model's data
        prediction at each step [N, batch, ...] (a separate program; off, nothing is stored or computed).
      remat: wrap each step in `jax.checkpoint`: a gradient through the sampler (e.g. w.r.t. the times) then keeps
        only the per-step carries and recomputes each step's activations in the backward pass.

    Returns:
      x at ts[N], shape [batch, ...], or (x, Trajectory) with `return_trajectory`.
    """
    zoo = as_zoo(model_or_zoo)
    check_inputs(zoo, noise_schedule, schedule, x_T, data_mean, cond, uncond)
    switches = Switches(
        trajectory=bool(return_trajectory), remat=bool(remat), thresholding=thresholding_option(thresholding)
    )
    return run_used(zoo, noise_schedule, schedule, x_T, data_mean, cond=cond, uncond=uncond, switches=switches)


def sample_many(
    model_or_zoo: Model | Sequence[Model],
    noise_schedule: NoiseSchedule,
    schedules: Schedule,
    x_T: jax.Array,
    *,
    method: str = "map",
    data_mean: jax.Array | None = None,
    cond=None,
    uncond=None,
    thresholding=None,
) -> jax.Array:
    """Run a stacked batch of schedules (leading axis C) on the same x_T (and the same `cond`, `uncond` and
    `thresholding`, as in `sample`); returns [C, *x_T.shape].

    A field other than `ts` may be given once, unstacked (one schedule's shape: `afs` a scalar, a per-step field
    [N]), to share it across the candidates: under "vmap" it then stays unbatched, so a shared `model` or `afs`
    keeps its `lax.switch` a branch (not a `select` over every branch) and a shared `guidance` keeps the w == 1
    shortcut of `models.guided_eps_x0` (a batched scale runs both halves at every step). Under jit the values
    are traced, so this is the only way to say they are shared.

    method="vmap": one vectorised program. Fast for *solver* schedules of one model. Fields that choose a
      `lax.switch` branch (`model`, `afs`) and `guidance` are shared when every concrete candidate has the same
      ones; otherwise the batched index turns the switch into `select` over *every* zoo model, with its
      parameters broadcast over the candidates (a grouped convolution per layer): correct, but slow.
    method="map": `lax.map` over candidates; each runs only the models it schedules, so the cost is the sum of
      the scheduled models' latencies (use it for model schedules).
    """
    zoo = as_zoo(model_or_zoo)
    if method not in ("map", "vmap"):
        raise ValueError(f"sample_many method must be 'map' or 'vmap', got {method!r}")
    if not isinstance(schedules, Schedule) or np.ndim(schedules.ts) != 2:
        raise ValueError("sample_many needs a stacked Schedule (use omsjax.schedule.stack), ts of shape [C, N+1]")
    shared = set(shared_fields(schedules))
    num = np.shape(schedules.ts)[0]

    def candidate(c):
        return Schedule(**{f: (v if f in shared else v[c]) for f, v in schedules._asdict().items()})

    if not is_traced(schedules):
        check_batch(zoo, noise_schedule, [candidate(c) for c in range(num)], x_T, data_mean, cond, uncond)
        for name in ("model", "afs", "guidance"):
            v = np.asarray(getattr(schedules, name))
            if name not in shared and np.all(v == v[:1]):
                schedules, shared = schedules._replace(**{name: getattr(schedules, name)[0]}), shared | {name}
    else:  # the search's chunks arrive here traced, checked on the host by `sample_candidates` (`check_batch`)
        check_batch(zoo, noise_schedule, [candidate(0)], x_T, data_mean, cond, uncond)

    thr = thresholding_option(thresholding)

    def one(s, arithmetic_first=False):
        switches = Switches(arithmetic_first=arithmetic_first, thresholding=thr)
        return run(zoo, noise_schedule, s, x_T, data_mean, cond=cond, uncond=uncond, switches=switches)

    if method == "vmap":
        axes = Schedule(**{f: (None if f in shared else 0) for f in Schedule._fields})
        return jax.vmap(lambda s: one(s, True), in_axes=(axes,))(schedules)
    full = {f: jnp.broadcast_to(v, (num, *jnp.shape(v))) for f, v in schedules._asdict().items() if f in shared}
    return jax.lax.map(one, schedules._replace(**full))


def shared_fields(schedules: Schedule) -> tuple[str, ...]:
    """The fields of a stacked Schedule (ts [C, N + 1]) given once, unstacked (`sample_many`); raises ValueError
    naming a field whose shape is neither one schedule's nor C of them."""
    num, steps = np.shape(schedules.ts)[0], np.shape(schedules.ts)[1] - 1
    out = []
    for f, v in schedules._asdict().items():
        one = () if f == "afs" else (steps + 1,) if f == "ts" else (steps,)
        shape = tuple(np.shape(v))
        if f != "ts" and shape == one:
            out.append(f)
        elif shape != (num, *one):
            raise ValueError(
                f"stacked schedule field {f!r} has shape {shape}: need {(num, *one)} (C candidates) or {one} (shared)"
            )
    return tuple(out)


def sample_heun(model: Model, noise_schedule: NoiseSchedule, ts, x_T: jax.Array) -> jax.Array:
    """EDM's Heun sampler (Karras et al. 2022, Algorithm 1, deterministic: S_churn = 0) from x_T at ts[0] to ts[N].

    The probability-flow ODE in EDM's coordinates y = x / alpha_t, s = sigma_t / alpha_t (`edm_sigma`) is
    dy/ds = (y - D(y; s)) / s = eps(x, t), so one step from s_i to s_(i+1), h = s_(i+1) - s_i, is
      d_i = eps(x_i, t_i),  y' = y_i + h d_i,  d' = eps(alpha_(i+1) y', t_(i+1)),  y_(i+1) = y_i + h (d_i + d') / 2.
    Every step is second order: the grid ends at ts[N] > 0 rather than at sigma = 0, so there is no final Euler
    step, and N steps make 2N model calls. Any parameterisation and noise schedule works (the model is called at
    the times ts); `ts` [N + 1] strictly decreasing, e.g. `spacing.time_steps(ns, N, "karras")` for EDM's grid
    (rho = 7). One compiled program per (model, N, shapes); ts are traced.
    """
    if not isinstance(model, Model):
        raise ValueError(f"sample_heun needs one omsjax.Model, got {type(model).__name__}")
    check_noise_schedule(noise_schedule)
    check_x_T(x_T)
    check_sample_shape(model, x_T)
    if np.ndim(ts) != 1 or np.shape(ts)[0] < 2:
        raise ValueError(f"ts must be a 1-D array of N + 1 >= 2 times, got shape {np.shape(ts)}")
    if not is_traced(ts):
        t = np.asarray(ts, np.float64)
        ns = noise_schedule
        if not (np.all(np.isfinite(t)) and np.all(np.diff(t) < 0)):
            raise ValueError(f"ts must be finite and strictly decreasing, got {t}")
        lo, hi = time_bounds(ns)
        if t[-1] < lo or t[0] > hi:
            raise ValueError(f"ts must lie in [t_min={ns.t_min}, T={ns.t_max}], got [{t[-1]}, {t[0]}]")
    return _heun_jit(model, noise_schedule, jnp.asarray(ts, x_T.dtype), x_T)


def _heun(model, ns, ts, x_T):
    la, sig, s = ns.log_alpha(ts), ns.sigma(ts), ns.edm_sigma(ts)

    def slope(y, i):  # dy/ds = eps at (alpha_i y, t_i)
        a = jnp.exp(la[i])
        return to_eps_x0(model, model.params, a * y, ts[i], la[i], sig[i])[0]

    def body(y, i):
        h = s[i + 1] - s[i]
        d = slope(y, i)
        d_next = slope(y + h * d, i + 1)
        return y + 0.5 * h * (d + d_next), None

    y, _ = jax.lax.scan(body, x_T / jnp.exp(la[0]), jnp.arange(ts.shape[0] - 1))
    # Traced times (checked on the host when concrete): NaN when not finite, decreasing and in [t_min, t_max].
    t_lo, t_hi = time_bounds(ns)
    ok = jnp.all(jnp.isfinite(ts)) & jnp.all(jnp.diff(ts) < 0) & jnp.all((ts >= t_lo) & (ts <= t_hi))
    return jnp.where(ok, y * jnp.exp(la[-1]), jnp.nan)


_heun_jit = jax.jit(_heun)


def noise(seed: int, n: int, shape: Sequence[int], dtype=jnp.float32, *, offset: int = 0) -> jax.Array:
    """n standard normal draws of `shape` [n, *shape]; sample i uses the key fold_in(PRNGKey(seed), offset + i), so
    the same seed gives the same sample whatever the batch size or the batching. Unit variance: see `prior` for
    noise at a noise schedule's scale."""
    seed, offset = fields.seed("noise: seed", seed), count("noise: offset", offset, 0)
    return _noise(jax.random.PRNGKey(seed), n, shape, dtype, offset, who="noise")


def _noise(key, n, shape, dtype, offset=0, who="noise"):
    n, shape = count(f"{who}: n", n), fields.shape(f"{who}: shape", shape)
    if not isinstance(key, jax.Array):
        raise ValueError(f"{who}: key must be a jax.random key, got {key!r}")
    idx = jnp.arange(offset, offset + n, dtype=jnp.int32)
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), tuple(shape), dtype))(idx)


def prior(
    noise_schedule: NoiseSchedule, key: jax.Array, n: int, shape: Sequence[int], *, t=None, dtype=jnp.float32
) -> jax.Array:
    """Starting noise x_T [n, *shape] ~ N(0, prior_std(t)^2 I) for a sampler started at time `t` (default the
    schedule's t_max): unit variance for VP and flow schedules, sigma_t (80 at EDM's default t_max) for EDM.
    Sample i uses the key fold_in(key, i), so the draws do not depend on n."""
    t = noise_schedule.t_max if t is None else t
    scale = jnp.asarray(noise_schedule.prior_std(np.asarray(t, np.float64)), dtype)
    return scale * _noise(key, n, shape, dtype, who="prior")


def generate(
    model_or_zoo: Model | Sequence[Model],
    noise_schedule: NoiseSchedule,
    schedule: Schedule,
    n: int,
    shape: Sequence[int],
    *,
    key: jax.Array | int = 0,
    batch_size: int = 500,
    data_mean: jax.Array | None = None,
    cond=None,
    uncond=None,
    thresholding=None,
    dtype=jnp.float32,
) -> np.ndarray:
    """`n` samples of one schedule from prior noise (unit normal draws scaled by `noise_schedule.prior_std(ts[0])`:
    1 for VP, sigma_max for EDM), in batches (one compiled program); numpy [n, *shape].

    The draws come from `key`, a `jax.random` key or an int seed (the CLI's `--seed`, meaning PRNGKey(seed)): sample
    i uses fold_in(key, i), so the same key gives the same samples whatever `batch_size`.
    A batch with NaN or inf raises ValueError naming the step, its time and the model (`first_nonfinite_step`).
    `cond` and `uncond` (as in `sample`) hold one entry per sample, leading axis n; each batch takes its rows.
    `thresholding` as in `sample`."""
    n, batch_size = count("generate: n", n), count("generate: batch_size", batch_size)
    zoo = as_zoo(model_or_zoo)
    check_conditioning(cond, uncond, n)
    from_seed = is_int(key)
    if not (from_seed or isinstance(key, jax.Array)):
        raise ValueError(f"key must be a jax.random key or an int seed, got {key!r}")
    if from_seed:
        fields.seed("generate: key", key)
    seed, key = key, jax.random.PRNGKey(key) if from_seed else key
    scale = jnp.asarray(noise_schedule.prior_std(np.asarray(schedule.ts, np.float64)[0]), dtype)
    out = []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        x_T = scale * _noise(key, m, shape, dtype, offset=start, who="generate")  # checks `shape` before any sampling
        rows = {
            k: None if v is None else jax.tree.map(lambda a, s=start, m=m: a[s : s + m], v)
            for k, v in (("cond", cond), ("uncond", uncond))
        }
        x = np.asarray(
            sample(zoo, noise_schedule, schedule, x_T, data_mean=data_mean, thresholding=thresholding, **rows)
        )
        if not np.all(np.isfinite(x)):
            options = SampleOptions(data_mean=data_mean, thresholding=thresholding, **rows)
            found = first_nonfinite_step(zoo, noise_schedule, schedule, x_T, options)
            what = found.message if found else "sample returned non-finite values (a re-run to locate them found none)"
            src = f"seed {seed}" if from_seed else "the given key"
            raise ValueError(f"{what} [generate: samples {start}..{start + m - 1} of {n}, {src}]")
        out.append(x)
    return np.concatenate(out)
