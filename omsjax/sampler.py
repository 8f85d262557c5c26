"""`sample`: a whole schedule as one `lax.scan` over USF steps.

Iteration i of the scan (i = 0..N-1):
  1. evaluate the model `schedule.model[i]` at (x_i, ts[i]) -- or, at i = 0 under an analytical first step, the
     guess x0 = 0 / x0 = data mean -- as one `lax.switch` over [zero-x0, mean-x0, zoo[0], ..., zoo[M-1]];
  2. push (x_i, eps_i, x0_i) into the fixed-size history;
  3. if step i-1 has a pseudo-corrector, recompute x_i from the same start with the new point (no model call);
  4. the predictor of step i gives x_{i+1}.
So N steps make N model calls at ts[0..N-1] (N - 1 with AFS) and no call after the last step.

Invalid decisions found under tracing (model index outside the zoo, order above the history, times outside the
noise schedule's [t_min, t_max], ...) make the output NaN; concrete schedules and noise are checked on the host
first and raise ValueError (`omsjax.checks`), and a model that fails or returns the wrong shape or dtype raises a
ValueError naming the zoo member while the program is traced (`omsjax.models.to_eps_x0`). A model that returns
NaN or inf cannot be seen without a cost; `first_nonfinite_step` finds the step afterwards, on the host, and
`generate` uses it to raise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from omsjax import usf
from omsjax.checks import check_inputs, check_noise_schedule, check_sample_shape, check_x_T
from omsjax.models import Model, _bcast, as_zoo, eval_zoo, to_eps_x0, used_members
from omsjax.schedule import AFS_MEAN_X0, AFS_NONE, AFS_ZERO_X0, Schedule, _is_traced, _time_bounds
from omsjax.schedules import NoiseSchedule

__all__ = ["sample", "sample_many", "sample_heun", "noise", "generate", "first_nonfinite_step", "NonFiniteStep"]


def sample(
    model_or_zoo: Model | Sequence[Model],
    noise_schedule: NoiseSchedule,
    schedule: Schedule,
    x_T: jax.Array,
    *,
    data_mean: jax.Array | None = None,
) -> jax.Array:
    """Run `schedule` from x_T (at ts[0]) to ts[N] and return x at ts[N], shape of x_T.

    Args:
      model_or_zoo: an `omsjax.Model` or a sequence of them (dispatched per step by `schedule.model`).
      noise_schedule: the forward process, e.g. `omsjax.schedules.vp_linear()`.
      schedule: an `omsjax.Schedule` (a pytree of arrays: jit/vmap/grad friendly).
      x_T: [batch, ...] starting noise.
      data_mean: x0 guess for the analytical first step `afs = 2`, broadcastable to one sample.
    """
    zoo = as_zoo(model_or_zoo)
    check_inputs(zoo, noise_schedule, schedule, x_T, data_mean)
    zoo, model, members = used_members(zoo, schedule.model, schedule.afs)
    return _sample_jit(zoo, noise_schedule, schedule._replace(model=model), x_T, data_mean, members=members)


def _guess(x, la, sigma, x0_guess):
    """(eps, x0) of the analytical first step: x0 = x0_guess, eps = (x - alpha x0)/sigma."""
    x0 = jnp.broadcast_to(x0_guess.astype(x.dtype), x.shape)
    return (x - _bcast(jnp.exp(la), x) * x0) / _bcast(sigma, x), x0


def _first_eval(zoo, ns, schedule, x_T, mean, arithmetic=False, members=None):
    """(eps, x0) at (x_T, ts[0]): the AFS guess or model[0].

    By default a `lax.switch`, so an AFS really skips the model call. With `arithmetic=True` (used under vmap,
    where a batched `afs` would turn the switch into `select` with the zoo's parameters broadcast over the
    candidates) the model runs and the guess is chosen arithmetically.
    """
    t0 = schedule.ts[0]
    la, sig = ns.log_alpha(t0), ns.sigma(t0)
    afs = schedule.afs
    if not arithmetic:
        index = jnp.where(afs == AFS_NONE, schedule.model[0] + 2, afs - 1)
        branches = [
            lambda x: _guess(x, la, sig, jnp.zeros((), x.dtype)),
            lambda x: _guess(x, la, sig, mean),
            *[
                (lambda x, m=m, k=k: to_eps_x0(m, m.params, x, t0, la, sig, label=m.label(k)))
                for k, m in zip(members or range(len(zoo)), zoo, strict=True)
            ],
        ]
        return jax.lax.switch(index, branches, x_T)
    # Arithmetic choice: nothing here turns into a batched switch under vmap.
    g0, g1 = _guess(x_T, la, sig, jnp.zeros((), x_T.dtype)), _guess(x_T, la, sig, mean)
    pick = [(afs == AFS_ZERO_X0, g0), (afs == AFS_MEAN_X0, g1)]
    eps, x0 = eval_zoo(zoo, schedule.model[0], x_T, t0, la, sig, members=members)
    for cond, (ge, gx) in pick:
        eps, x0 = jnp.where(cond, ge, eps), jnp.where(cond, gx, x0)
    return eps, x0


def _finite(a):
    """[B]: whether each sample of a [B, ...] is finite."""
    return jnp.all(jnp.isfinite(a).reshape(a.shape[0], -1), axis=1)


def _sample(zoo, ns, schedule: Schedule, x_T, data_mean, arithmetic_first=False, diagnose=False, members=None):
    """x at ts[N]; with `diagnose` (a second program, for `first_nonfinite_step`) also, per step i, whether x_(i+1)
    and the model outputs at ts[i+1] are finite [N, B] and the validity after step i [N], and for the first call
    the finiteness of its outputs [B] and the validity of the schedule. `members`: see `models.used_members`,
    which also runs here, for model indices that are concrete while the rest is traced (a fit of the times)."""
    zoo, model, members = used_members(zoo, schedule.model, schedule.afs, members)
    schedule = schedule._replace(model=model)
    n = schedule.ts.shape[-1] - 1
    ts = schedule.ts
    fdtype = ts.dtype
    lam = ns.lam(ts)
    log_alpha = ns.log_alpha(ts)
    sigma = ns.sigma(ts)
    num_models = len(zoo)
    has_mean = data_mean is not None
    mean = jnp.zeros(x_T.shape[1:], x_T.dtype) if data_mean is None else jnp.asarray(data_mean, x_T.dtype)

    afs = schedule.afs
    corr = schedule.corrector
    model = schedule.model
    model_ok = (model >= 0) & (model < num_models)
    t_lo, t_hi = _time_bounds(ns)
    ok0 = (
        jnp.all(jnp.isfinite(ts))
        & jnp.all((ts >= t_lo) & (ts <= t_hi))
        & jnp.all(jnp.diff(ts) < 0)
        & jnp.all(ts > 0)
        & jnp.all(jnp.isfinite(schedule.relax))
        & jnp.all(jnp.isfinite(schedule.d2_scale))
        & ~corr[-1]
        & (afs >= AFS_NONE)
        & (afs <= AFS_MEAN_X0)
        & ((afs != AFS_MEAN_X0) | has_mean)
        & jnp.all(model_ok[1:])
        & ((afs != AFS_NONE) | model_ok[0])
    )

    def prev(a, fill):
        return jnp.concatenate([jnp.full((1,), fill, a.dtype), a[:-1]])

    xs = dict(
        i=jnp.arange(n, dtype=jnp.int32),
        t=ts[:-1],
        lam=lam[:-1],
        la=log_alpha[:-1],
        sig=sigma[:-1],
        t_next=ts[1:],
        lam_next=lam[1:],
        la_next=log_alpha[1:],
        sig_next=sigma[1:],
        model_next=jnp.concatenate([model[1:], jnp.zeros((1,), model.dtype)]),
        order=schedule.order,
        prediction=schedule.prediction,
        start=schedule.start,
        d1=schedule.d1_points,
        relax=schedule.relax.astype(fdtype),
        relax_type=schedule.relax_type,
        d2_scale=schedule.d2_scale.astype(fdtype),
        p_corr=prev(corr, False),
        p_order=prev(schedule.order, 1),
        p_prediction=prev(schedule.prediction, 0),
        p_start=prev(schedule.start, 0),
        p_d1=prev(schedule.d1_points, 0),
        p_relax=prev(schedule.relax.astype(fdtype), 0.0),
        p_relax_type=prev(schedule.relax_type, 0),
    )

    def start_coeffs(hist, q):
        t_s = jnp.sum(jnp.where(jnp.arange(usf.HISTORY, dtype=jnp.int32) == q, hist.t, 0.0))
        return ns.log_alpha(t_s), ns.sigma(t_s)

    def body(carry, s):
        # carry: x_i (predicted), its model outputs (eps_i, x0_i), the history of earlier points, validity.
        x, eps, x0, hist, ok = carry
        hist = usf.push(hist, x, eps, x0, s["t"], s["lam"])

        # Pseudo-corrector of the previous step: same start (one further back now), order + 1, the new point in
        # every stencil, relaxation only where the predictor had no D_1 of its own (order 1).
        # Without a corrector the (discarded) update is made trivially well-posed (order 1 from the newest point):
        # a singular stencil would put NaN into gradients even where the forward value is not selected.
        pc = s["p_corr"]
        pq = jnp.where(pc, s["p_start"] + 1, 0)
        p_first = s["p_order"] == 1
        la_s, sig_s = start_coeffs(hist, pq)
        cx, wF, okc = usf.step_weights(
            hist.lam, hist.count, s["lam"], s["la"], s["sig"], la_s, sig_s,
            order=jnp.where(pc, s["p_order"] + 1, 1),
            prediction=s["p_prediction"],
            start=pq,
            d1_points=jnp.where(s["p_d1"] == 0, 0, s["p_d1"] + 1),
            relax_type=jnp.where(p_first, s["p_relax_type"], usf.RELAX_LINEAR),
            relax=jnp.where(p_first, s["p_relax"], 0.0),
        )  # fmt: skip
        x_corr = usf.apply_weights(hist, cx, wF, pq, s["p_prediction"])
        x = jnp.where(pc, x_corr, x)
        ok = ok & (~pc | okc)
        hist = hist._replace(x=hist.x.at[0].set(x))

        la_s, sig_s = start_coeffs(hist, s["start"])
        cx, wF, okp = usf.step_weights(
            hist.lam, hist.count, s["lam_next"], s["la_next"], s["sig_next"], la_s, sig_s,
            order=s["order"],
            prediction=s["prediction"],
            start=s["start"],
            d1_points=s["d1"],
            relax_type=s["relax_type"],
            relax=s["relax"],
            d2_scale=s["d2_scale"],
        )  # fmt: skip
        x_next = usf.apply_weights(hist, cx, wF, s["start"], s["prediction"])
        ok = ok & okp & (s["order"] <= usf.MAX_ORDER)

        # The model call at ts[i+1] (none after the last step). `i` is the scan counter, never batched, so this
        # stays a real conditional under vmap.
        def evaluate(x):
            return eval_zoo(zoo, s["model_next"], x, s["t_next"], s["la_next"], s["sig_next"], members=members)

        def skip(x):
            return jnp.zeros_like(x), jnp.zeros_like(x)

        eps, x0 = jax.lax.cond(s["i"] < n - 1, evaluate, skip, x_next)
        flags = (_finite(x_next), _finite(eps) & _finite(x0), ok) if diagnose else None
        return (x_next, eps, x0, hist, ok), flags

    eps0, x00 = _first_eval(zoo, ns, schedule, x_T, mean, arithmetic_first, members)
    hist0 = usf.init_history(x_T, ts[0], lam[0])
    (x, _, _, _, ok), flags = jax.lax.scan(body, (x_T, eps0, x00, hist0, ok0), xs)
    out = jnp.where(ok, x, jnp.nan)
    return (out, flags, _finite(eps0) & _finite(x00), ok0) if diagnose else out


# The whole point of `sample` is one compiled loop: keep a compiled program per (zoo, schedule length, shapes),
# so eager calls do not retrace the scan (inside a user's jit this simply inlines).
_sample_jit = jax.jit(_sample, static_argnames=("arithmetic_first", "diagnose", "members"))


def sample_many(
    model_or_zoo: Model | Sequence[Model],
    noise_schedule: NoiseSchedule,
    schedules: Schedule,
    x_T: jax.Array,
    *,
    method: str = "map",
    data_mean: jax.Array | None = None,
) -> jax.Array:
    """Run a stacked batch of schedules (leading axis C) on the same x_T; returns [C, *x_T.shape].

    method="vmap": one vectorised program. Fast for *solver* schedules of one model. Fields that choose a
      `lax.switch` branch (`model`, `afs`) are passed unbatched when every candidate shares them; otherwise the
      batched index turns the switch into `select` over *every* zoo model, with its parameters broadcast over
      the candidates (a grouped convolution per layer): correct, but slow.
    method="map": `lax.map` over candidates; each runs only the models it schedules, so the cost is the sum of
      the scheduled models' latencies (use it for model schedules).
    """
    zoo = as_zoo(model_or_zoo)
    if method not in ("map", "vmap"):
        raise ValueError(f"sample_many method must be 'map' or 'vmap', got {method!r}")
    if not isinstance(schedules, Schedule) or np.ndim(schedules.ts) != 2:
        raise ValueError("sample_many needs a stacked Schedule (use omsjax.schedule.stack), ts of shape [C, N+1]")
    if not _is_traced(schedules):
        for c in range(np.shape(schedules.ts)[0]):
            one = jax.tree_util.tree_map(lambda a, c=c: a[c], schedules)
            try:
                check_inputs(zoo, noise_schedule, one, x_T, data_mean)
            except ValueError as e:
                raise ValueError(f"candidate {c}: {e}") from None
    else:
        check_inputs(zoo, noise_schedule, jax.tree_util.tree_map(lambda a: a[0], schedules), x_T, data_mean)

    def one(s, arithmetic_first=False):
        return _sample(zoo, noise_schedule, s, x_T, data_mean, arithmetic_first)

    if method == "vmap":
        shared = {}
        if not _is_traced(schedules):
            for name in ("model", "afs"):
                v = np.asarray(getattr(schedules, name))
                if np.all(v == v[:1]):
                    shared[name] = getattr(schedules, name)[0]
        axes = Schedule(**{f: (None if f in shared else 0) for f in Schedule._fields})
        return jax.vmap(lambda s: one(s, True), in_axes=(axes,))(schedules._replace(**shared))
    return jax.lax.map(one, schedules)


def sample_heun(model: Model, noise_schedule: NoiseSchedule, ts, x_T: jax.Array) -> jax.Array:
    """EDM's Heun sampler (Karras et al. 2022, Algorithm 1, deterministic: S_churn = 0) from x_T at ts[0] to ts[N].

    The probability-flow ODE in EDM's coordinates y = x / alpha_t, s = sigma_t / alpha_t (`edm_sigma`) is
    dy/ds = (y - D(y; s)) / s = eps(x, t), so one step from s_i to s_(i+1), h = s_(i+1) - s_i, is
      d_i = eps(x_i, t_i),  y' = y_i + h d_i,  d' = eps(alpha_(i+1) y', t_(i+1)),  y_(i+1) = y_i + h (d_i + d') / 2.
    Every step is second order: the grid ends at ts[N] > 0 rather than at sigma = 0, so there is no final Euler
    step, and N steps make 2N model calls. Any parameterisation and noise schedule works (the model is called at
    the times ts); `ts` [N + 1] strictly decreasing, e.g. `schedules.time_steps(ns, N, "karras")` for EDM's grid
    (rho = 7). One compiled program per (model, N, shapes); ts are traced.
    """
    if not isinstance(model, Model):
        raise ValueError(f"sample_heun needs one omsjax.Model, got {type(model).__name__}")
    check_noise_schedule(noise_schedule)
    check_x_T(x_T)
    check_sample_shape(model, x_T)
    if np.ndim(ts) != 1 or np.shape(ts)[0] < 2:
        raise ValueError(f"ts must be a 1-D array of N + 1 >= 2 times, got shape {np.shape(ts)}")
    if not _is_traced(ts):
        t = np.asarray(ts, np.float64)
        ns = noise_schedule
        if not (np.all(np.isfinite(t)) and np.all(np.diff(t) < 0)):
            raise ValueError(f"ts must be finite and strictly decreasing, got {t}")
        lo, hi = _time_bounds(ns)
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
    t_lo, t_hi = _time_bounds(ns)
    ok = jnp.all(jnp.isfinite(ts)) & jnp.all(jnp.diff(ts) < 0) & jnp.all((ts >= t_lo) & (ts <= t_hi))
    return jnp.where(ok, y * jnp.exp(la[-1]), jnp.nan)


_heun_jit = jax.jit(_heun)


def noise(seed: int, n: int, shape: Sequence[int], dtype=jnp.float32, *, offset: int = 0) -> jax.Array:
    """n starting noises of `shape`; sample i uses the key fold_in(PRNGKey(seed), offset + i), so the same seed
    gives the same sample whatever the batch size or the batching."""
    if n < 1:
        raise ValueError(f"noise needs n >= 1, got {n}")
    key = jax.random.PRNGKey(seed)
    idx = jnp.arange(offset, offset + n, dtype=jnp.int32)
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), tuple(shape), dtype))(idx)


def generate(
    model_or_zoo: Model | Sequence[Model],
    noise_schedule: NoiseSchedule,
    schedule: Schedule,
    n: int,
    shape: Sequence[int],
    *,
    seed: int = 0,
    batch_size: int = 500,
    data_mean: jax.Array | None = None,
    dtype=jnp.float32,
) -> np.ndarray:
    """`n` samples of one schedule from `noise(seed, ...)` scaled by `noise_schedule.prior_std(ts[0])` (1 for VP,
    sigma_max for EDM), in batches (one compiled program); numpy [n, *shape].

    A batch with NaN or inf raises ValueError naming the step, its time and the model (`first_nonfinite_step`)."""
    zoo = as_zoo(model_or_zoo)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    scale = jnp.asarray(noise_schedule.prior_std(np.asarray(schedule.ts, np.float64)[0]), dtype)
    out = []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        x_T = scale * noise(seed, m, shape, dtype, offset=start)
        x = np.asarray(sample(zoo, noise_schedule, schedule, x_T, data_mean=data_mean))
        if not np.all(np.isfinite(x)):
            found = first_nonfinite_step(zoo, noise_schedule, schedule, x_T, data_mean=data_mean)
            what = found.message if found else "sample returned non-finite values (a re-run to locate them found none)"
            raise ValueError(f"{what} [generate: samples {start}..{start + m - 1} of {n}, seed {seed}]")
        out.append(x)
    return np.concatenate(out)


class NonFiniteStep(NamedTuple):
    """Where a sampling run first became non-finite (`first_nonfinite_step`).

    step:    schedule step i (its model call at ts[i]), or N for the state after the last update.
    t:       ts[step].
    cause:   "model": the zoo member called at step i returned NaN/inf on a finite input;
             "update": x_step became non-finite in the update of step - 1, every model output before was finite;
             "guess": the analytical first step's (eps, x0) from its x0 guess is non-finite (an overflow);
             "schedule": the decisions of step i are invalid for the sampler (its output is NaN by design).
    model:   the zoo index called at the step ("model"), else None.
    name:    that member's name ("" if none).
    samples: the batch indices affected at that step.
    batch:   the batch size.
    """

    step: int
    t: float
    cause: str
    model: int | None
    name: str
    samples: tuple[int, ...]
    batch: int

    @property
    def message(self) -> str:
        """One sentence for an error message or a report."""
        i, t = self.step, f"t = {self.t:.6g}"
        some = f"in {len(self.samples)} of {self.batch} sample(s)"
        some += f" (first: sample {self.samples[0]})" if self.samples else ""
        who = f"zoo member {self.model}" + (f" {self.name!r}" if self.name else "")
        return {
            "model": f"the model returned non-finite values at step {i} ({t}): {who}, on a finite input, {some}",
            "update": f"the sampler's state became non-finite at step {i} ({t}) in the update of step {i - 1}, "
            f"although every model output before was finite, {some}",
            "guess": f"the analytical first step's guess became non-finite at step 0 ({t}), {some}",
            "schedule": f"step {i} ({t}) of the schedule is not a valid update (the sampler returns NaN)",
        }[self.cause]


def first_nonfinite_step(
    model_or_zoo: Model | Sequence[Model],
    noise_schedule: NoiseSchedule,
    schedule: Schedule,
    x_T: jax.Array,
    *,
    data_mean: jax.Array | None = None,
) -> NonFiniteStep | None:
    """Locate the first step at which `sample(model_or_zoo, noise_schedule, schedule, x_T, data_mean=data_mean)`
    becomes non-finite; None when the run is finite. Host side, concrete arrays only.

    It runs a second compiled program (the same scan that also returns, per step, which samples of the state and
    of the model outputs are finite), so call it only once a result was found non-finite: `sample` itself pays
    nothing. For one candidate of `sample_many`, pass that candidate's schedule. Typical use:

        x = np.asarray(sampler.sample(zoo, ns, schedule, x_T))
        if not np.all(np.isfinite(x)):
            found = sampler.first_nonfinite_step(zoo, ns, schedule, x_T)
            raise ValueError(found.message if found else "non-finite samples")
    """
    zoo = as_zoo(model_or_zoo)
    if _is_traced((schedule, x_T, data_mean, [m.params for m in zoo])):
        raise ValueError("first_nonfinite_step runs on the host: call it with concrete arrays, outside jit/vmap")
    check_inputs(zoo, noise_schedule, schedule, x_T, data_mean)
    used, m, members = used_members(zoo, schedule.model, schedule.afs)
    _, (x_ok, f_ok, ok), f0, ok0 = jax.device_get(
        _sample_jit(used, noise_schedule, schedule._replace(model=m), x_T, data_mean, diagnose=True, members=members)
    )
    n, batch = schedule.num_steps, int(x_T.shape[0])
    ts, model, afs = np.asarray(schedule.ts, np.float64), np.asarray(schedule.model), int(np.asarray(schedule.afs))

    def found(i, cause, bad=None):
        k = int(model[i]) if cause == "model" else None
        samples = () if bad is None else tuple(int(j) for j in np.flatnonzero(bad))
        name = zoo[k].name if k is not None else ""
        return NonFiniteStep(i, float(ts[i]), cause, k, name, samples, batch)

    in_ok = np.concatenate([np.ones((1, batch), bool), x_ok[:-1]])  # x_i finite, i = 0..N-1
    out_ok = np.concatenate([f0[None], f_ok[:-1]])  # the model outputs at ts[i] finite
    for i in range(n):
        if not in_ok[i].all():
            return found(i, "update", ~in_ok[i])
        if not out_ok[i].all():
            return found(i, "guess" if i == 0 and afs != AFS_NONE else "model", ~out_ok[i])
        if not (ok0 and ok[i]):
            return found(i, "schedule")
    if not x_ok[-1].all():
        return found(n, "update", ~x_ok[-1])
    return None  # every state, every model output finite, every step valid: so is the output
