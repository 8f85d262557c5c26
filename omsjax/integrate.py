"""The compiled program of a schedule: one `lax.scan` over USF steps (`run`, jitted as `run_jit`).

Iteration i of the scan (i = 0..N-1):
  1. evaluate the model `schedule.model[i]` at (x_i, ts[i]) -- or, at i = 0 under an analytical first step, the
     guess x0 = 0 / x0 = data mean -- as one `lax.switch` over [zero-x0, mean-x0, zoo[0], ..., zoo[M-1]]; with
     conditioning `cond` every call is apply_fn(params, x, t, cond), and with `uncond` the call at ts[i] is guided
     with scale `schedule.guidance[i]` (`models.guided_eps_x0`); with `thresholding` the model's data prediction
     is clipped per sample (`dynamic_threshold`) and its noise prediction recomputed from it;
  2. push (x_i, eps_i, x0_i) into the fixed-size history;
  3. if step i-1 has a pseudo-corrector, recompute x_i from the same start with the new point (no model call);
  4. the predictor of step i gives x_{i+1}.
So N steps make N model calls at ts[0..N-1] (N - 1 with AFS) and no call after the last step.

Invalid decisions found under tracing (model index outside the zoo, order above the history, times outside the
noise schedule's [t_min, t_max], ...) make the output NaN. Static switches choose what else the program returns
or does, each at no cost when off: `trajectory` (every x_i and the model's x0 at each step), `diagnose` (per-step
finiteness, for `omsjax.diagnose`), `remat` (`jax.checkpoint` around each step, for gradients through long
schedules). The host-side API is `omsjax.sampler`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from omsjax import usf
from omsjax.models import Model, bcast, eval_zoo, guided_eps_x0
from omsjax.schedule import AFS_MEAN_X0, AFS_NONE, AFS_ZERO_X0, Schedule, time_bounds

__all__ = ["Trajectory", "Switches", "used_members", "run", "run_jit", "run_used", "dynamic_threshold"]


class Trajectory(NamedTuple):
    """Every state and data prediction of a sampling run (`sample(..., return_trajectory=True)`).

    x:  [N + 1, B, ...] the states x_0 = x_T, x_1, ..., x_N = the output (x_i after step i-1's corrector, the point
        step i starts from);
    x0: [N, B, ...] the data prediction of the model call at (x_i, ts[i]) (at i = 0 under an analytical first
        step: its x0 guess);
    t:  [N + 1] the times ts.
    """

    x: jax.Array
    x0: jax.Array
    t: jax.Array


# The per-step fields of the scan that make the predictor's `usf.StepDecisions`, in its field order.
_PREDICTOR_FIELDS = ("order", "prediction", "start", "d1", "relax_type", "relax", "d2_scale")


def used_members(zoo: tuple[Model, ...], model, afs=None, members: tuple[int, ...] | None = None):
    """Compile only what runs: (the members that `model` calls, `model` remapped to index them, their original
    indices) when the model indices are concrete; (zoo, model, members) unchanged when they are traced.

    `model` is a schedule's int[..., N] model indices; `afs` its (concrete) AFS decision(s) [...], under which
    step 0 calls no model (its index is then mapped to the first member kept). An index outside the zoo maps to -1,
    so it stays invalid. `members` composes with an earlier restriction. A sampler given the result compiles one
    network per member used instead of every member of the zoo inside its `lax.switch`.
    """
    names = members or tuple(range(len(zoo)))
    if isinstance(model, jax.core.Tracer) or isinstance(afs, jax.core.Tracer):
        return zoo, model, names
    m = np.asarray(model)
    z = len(zoo)
    called = np.ones(m.shape, bool)
    if afs is not None and m.shape[-1] > 1:
        called[..., 0] = np.asarray(afs) == 0
    valid = (m >= 0) & (m < z)
    used = sorted({int(i) for i in m[called & valid]} or {int(i) for i in m[valid]})
    if not used or len(used) == z:
        return zoo, model, names
    lut = np.full(z, -1, np.int64)
    lut[used] = np.arange(len(used))
    new = np.where(valid, lut[np.clip(m, 0, z - 1)], -1)
    new = np.where(called | ~valid, new, np.maximum(new, 0))  # an uncalled step 0 indexes any member kept
    return tuple(zoo[i] for i in used), jnp.asarray(new, jnp.asarray(model).dtype), tuple(names[i] for i in used)


def _guess(x, la, sigma, x0_guess):
    """(eps, x0) of the analytical first step: x0 = x0_guess, eps = (x - alpha x0)/sigma."""
    x0 = jnp.broadcast_to(x0_guess.astype(x.dtype), x.shape)
    return (x - bcast(jnp.exp(la), x) * x0) / bcast(sigma, x), x0


def _first_eval(zoo, ns, schedule, x_T, mean, arithmetic=False, members=None, cond=None, uncond=None):
    """(eps, x0) at (x_T, ts[0]): the AFS guess or model[0].

    By default a `lax.switch`, so an AFS really skips the model call. With `arithmetic=True` (used under vmap,
    where a batched `afs` would turn the switch into `select` with the zoo's parameters broadcast over the
    candidates) the model runs and the guess is chosen arithmetically.
    """
    t0 = schedule.ts[0]
    la, sig = ns.log_alpha(t0), ns.sigma(t0)
    afs = schedule.afs
    guide = dict(cond=cond, uncond=uncond, w=schedule.guidance[0])
    if not arithmetic:
        index = jnp.where(afs == AFS_NONE, schedule.model[0] + 2, afs - 1)
        branches = [
            lambda x: _guess(x, la, sig, jnp.zeros((), x.dtype)),
            lambda x: _guess(x, la, sig, mean),
            *[
                (lambda x, m=m, k=k: guided_eps_x0(m, m.params, x, t0, la, sig, label=m.label(k), **guide))
                for k, m in zip(members or range(len(zoo)), zoo, strict=True)
            ],
        ]
        return jax.lax.switch(index, branches, x_T)
    # Arithmetic choice: nothing here turns into a batched switch under vmap.
    g0, g1 = _guess(x_T, la, sig, jnp.zeros((), x_T.dtype)), _guess(x_T, la, sig, mean)
    pick = [(afs == AFS_ZERO_X0, g0), (afs == AFS_MEAN_X0, g1)]
    eps, x0 = eval_zoo(zoo, schedule.model[0], x_T, t0, la, sig, members=members, **guide)
    for cond, (ge, gx) in pick:
        eps, x0 = jnp.where(cond, ge, eps), jnp.where(cond, gx, x0)
    return eps, x0


def dynamic_threshold(x, x0, log_alpha, sigma, thresholding):
    """(eps, x0) with x0 dynamically thresholded (Imagen; DPM-Solver++'s `thresholding=True`): per sample,
    s = max(max_val, quantile(|x0|, ratio)) over its entries, x0 <- clip(x0, -s, s) / s; then eps = (x - alpha x0) /
    sigma, so the noise and data predictions still agree. `thresholding` = (ratio, max_val)."""
    ratio, max_val = thresholding
    s = jnp.quantile(jnp.abs(x0).reshape(x0.shape[0], -1), ratio, axis=1)
    s = bcast(jnp.maximum(s, max_val), x0)
    x0 = jnp.clip(x0, -s, s) / s
    return (x - bcast(jnp.exp(log_alpha), x) * x0) / bcast(sigma, x), x0


def _finite(a):
    """[B]: whether each sample of a [B, ...] is finite."""
    return jnp.all(jnp.isfinite(a).reshape(a.shape[0], -1), axis=1)


@dataclasses.dataclass(frozen=True)
class Switches:
    """What the program computes besides x at ts[N] (static: one compiled program per value).

    arithmetic_first: choose the first call's AFS guess arithmetically instead of by `lax.switch` (under vmap).
    diagnose: a second program, for `first_nonfinite_step`: also, per step i, whether x_(i+1) and the model outputs
      at ts[i+1] are finite [N, B], the validity after step i [N] and whether the raw conditional and unconditional
      outputs there are finite [N, B] (two more calls per step); for the first call the finiteness of its outputs
      [B], the validity of the schedule, and its raw outputs' finiteness [B].
    trajectory: also return a `Trajectory`.
    remat: recompute each step's activations in the backward pass instead of storing them.
    thresholding: None, or (ratio, max_val) for `dynamic_threshold` after every model call.
    """

    arithmetic_first: bool = False
    diagnose: bool = False
    trajectory: bool = False
    remat: bool = False
    thresholding: tuple[float, float] | None = None


def run(
    zoo,
    ns,
    schedule: Schedule,
    x_T,
    data_mean=None,
    *,
    cond=None,
    uncond=None,
    members=None,
    switches: Switches = Switches(),
):
    """x at ts[N] (with `switches`, also the diagnosis or the `Trajectory`, see `Switches`). `members`: see
    `used_members`, which also runs here, for model indices that are concrete while the rest is traced (a
    fit of the times). `cond`, `uncond`: the conditioning of every model call, and the unconditional one of guided
    calls (pytrees with the batch as leading axis); without `uncond`, a guidance scale other than 1 is invalid."""
    arithmetic_first, diagnose, trajectory = switches.arithmetic_first, switches.diagnose, switches.trajectory
    remat, thresholding = switches.remat, switches.thresholding
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
    t_lo, t_hi = time_bounds(ns)
    ok0 = (
        jnp.all(jnp.isfinite(ts))
        & jnp.all((ts >= t_lo) & (ts <= t_hi))
        & jnp.all(jnp.diff(ts) < 0)
        & jnp.all(ts > 0)
        & jnp.all(jnp.isfinite(schedule.relax))
        & jnp.all(jnp.isfinite(schedule.d2_scale))
        & jnp.all(jnp.isfinite(schedule.guidance))
        & (uncond is not None or jnp.all(schedule.guidance == 1))
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
        guidance_next=jnp.concatenate([schedule.guidance[1:], jnp.ones((1,), schedule.guidance.dtype)]),
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
        corrector = usf.StepDecisions(
            order=jnp.where(pc, s["p_order"] + 1, 1),
            prediction=s["p_prediction"],
            start=pq,
            d1_points=jnp.where(s["p_d1"] == 0, 0, s["p_d1"] + 1),
            relax_type=jnp.where(p_first, s["p_relax_type"], usf.RELAX_LINEAR),
            relax=jnp.where(p_first, s["p_relax"], 0.0),
        )
        cx, wF, okc = usf.step_weights(hist.lam, hist.count, (s["lam"], s["la"], s["sig"]), (la_s, sig_s), corrector)
        x_corr = usf.apply_weights(hist, cx, wF, pq, s["p_prediction"])
        x = jnp.where(pc, x_corr, x)
        ok = ok & (~pc | okc)
        hist = hist._replace(x=hist.x.at[0].set(x))

        la_s, sig_s = start_coeffs(hist, s["start"])
        predictor = usf.StepDecisions(*(s[k] for k in _PREDICTOR_FIELDS))
        target = (s["lam_next"], s["la_next"], s["sig_next"])
        cx, wF, okp = usf.step_weights(hist.lam, hist.count, target, (la_s, sig_s), predictor)
        x_next = usf.apply_weights(hist, cx, wF, s["start"], s["prediction"])
        ok = ok & okp & (s["order"] <= usf.MAX_ORDER)

        # The model call at ts[i+1] (none after the last step). `i` is the scan counter, never batched, so this
        # stays a real conditional under vmap.
        def evaluate(x):
            eps, x0 = eval_zoo(
                zoo,
                s["model_next"],
                x,
                s["t_next"],
                s["la_next"],
                s["sig_next"],
                members=members,
                cond=cond,
                uncond=uncond,
                w=s["guidance_next"],
            )
            if thresholding is not None:
                eps, x0 = dynamic_threshold(x, x0, s["la_next"], s["sig_next"], thresholding)
            if not diagnose:
                return eps, x0
            at = (s["t_next"], s["la_next"], s["sig_next"])
            return eps, x0, _raw_finite(zoo, s["model_next"], x, at, members, cond, uncond)

        def skip(x):
            return (jnp.zeros_like(x),) * 2 + ((jnp.ones(x.shape[:1], bool),) if diagnose else ())

        x0_i = hist.x0[0]  # the model's (or the AFS guess's) data prediction at (x_i, ts[i])
        eps, x0, *raw = jax.lax.cond(s["i"] < n - 1, evaluate, skip, x_next)
        flags = (_finite(x_next), _finite(eps) & _finite(x0), ok, *raw) if diagnose else None
        if trajectory:
            flags = (x, x0_i)  # x: x_i after the corrector
        return (x_next, eps, x0, hist, ok), flags

    eps0, x00 = _first_eval(zoo, ns, schedule, x_T, mean, arithmetic_first, members, cond, uncond)
    if thresholding is not None:  # the model's prediction only, not an analytical first step's guess
        te, tx = dynamic_threshold(x_T, x00, log_alpha[0], sigma[0], thresholding)
        eps0, x00 = jnp.where(afs == AFS_NONE, te, eps0), jnp.where(afs == AFS_NONE, tx, x00)
    hist0 = usf.init_history(x_T, ts[0], lam[0])
    step = jax.checkpoint(body) if remat else body
    (x, _, _, _, ok), flags = jax.lax.scan(step, (x_T, eps0, x00, hist0, ok0), xs)
    out = jnp.where(ok, x, jnp.nan)
    if trajectory:
        states = jnp.concatenate([flags[0], out[None]])
        return out, Trajectory(jnp.where(ok, states, jnp.nan), jnp.where(ok, flags[1], jnp.nan), ts)
    if not diagnose:
        return out
    at0 = (ts[0], log_alpha[0], sigma[0])
    return out, flags, _finite(eps0) & _finite(x00), ok0, _raw_finite(zoo, model[0], x_T, at0, members, cond, uncond)


def _raw_finite(zoo, index, x, at, members, cond, uncond):
    """[B], for the diagnosis: whether the called member's conditional and unconditional outputs at `at` = (t,
    log alpha, sigma) are both finite (all True without `uncond`), so that a non-finite guided output whose two
    halves are finite is the guided combination's doing, not the model's."""
    if uncond is None:
        return jnp.ones(x.shape[:1], bool)
    ok = [
        _finite(e) & _finite(x0)
        for e, x0 in (eval_zoo(zoo, index, x, *at, members=members, cond=c) for c in (cond, uncond))
    ]
    return ok[0] & ok[1]


# The whole point of `sample` is one compiled loop: keep a compiled program per (zoo, schedule length, shapes,
# switches), so eager calls do not retrace the scan (inside a user's jit this simply inlines).
run_jit = jax.jit(run, static_argnames=("members", "switches"))


def run_used(
    zoo, ns, schedule: Schedule, x_T, data_mean=None, *, cond=None, uncond=None, switches: Switches = Switches()
):
    """`run_jit` of a schedule that compiles only the zoo members it calls (`used_members`, when its model
    indices are concrete): what `sampler.sample` and `diagnose.first_nonfinite_step` run."""
    zoo, model, members = used_members(zoo, schedule.model, schedule.afs)
    return run_jit(
        zoo,
        ns,
        schedule._replace(model=model),
        x_T,
        data_mean,
        cond=cond,
        uncond=uncond,
        members=members,
        switches=switches,
    )
