r"""Few-step sampler optimisation: learned timesteps (by an error bound, or by differentiating the sampler) and
fine-tuning on the chosen steps (Huang 2024; Align Your Steps; LD3).

Parameterisation
----------------
`times(ns, u, t_start, t_end, spacing)` maps N unconstrained logits u to N + 1 times. A base spacing gives a time
coordinate c(t), monotone in t: lambda (logSNR), t (time-uniform), sqrt(t) (time-quadratic) or sigma^(1/7) with
sigma = e^-lambda (Karras). The N steps split [c(t_start), c(t_end)] in fractions w_i / sum(w), w_i =
exp(B tanh(u_i / B)), B = 8. Every u gives strictly decreasing times with the end points fixed exactly, no
fraction underflows (they differ by at most e^(2B)), and u = 0 is the base spacing. `logits` inverts `times`.

The error bound of a first-order schedule (phase 1a)
----------------------------------------------------
Write lambda = log(alpha / sigma) and D(x, lambda) for the model's data prediction. The probability-flow ODE has
the exact solution (DPM-Solver++)

    x(lambda_N) = (sigma_N / sigma_0) x_T + sigma_N \int_{lambda_0}^{lambda_N} e^lambda D(x(lambda), lambda) dlambda.

DDIM on lambda_0 < ... < lambda_N freezes D on [lambda_{i-1}, lambda_i] at the interval's start, so its output is
(sigma_N / sigma_0) x_T + sum_i w_i D_{i-1} with w_i = sigma_N (e^{lambda_i} - e^{lambda_{i-1}}) > 0: x_T's term
plus a positive combination of the model outputs at the scheduled steps (the weights sum to
alpha_N - sigma_N alpha_0 / sigma_0, i.e. almost alpha_N: a convex combination up to that factor). Evaluated on the
exact trajectory, the error is

    e = sigma_N sum_i \int_{lambda_{i-1}}^{lambda_i} e^lambda [D(x(lambda), lambda) - D(x_{i-1}, lambda_{i-1})] dlambda,

with x_{i-1} = x(lambda_{i-1}),

and D(x(lambda), lambda) - D(x(lambda_{i-1}), lambda_{i-1}) = \int_{lambda_{i-1}}^{lambda} (d/dmu) D(x(mu), mu) dmu.
The triangle inequality and Fubini (swap the two integrals) give

    E ||e|| <= B = sigma_N sum_i \int_{lambda_{i-1}}^{lambda_i} g(mu) (e^{lambda_i} - e^mu) dmu,
    g(mu) = E ||(d/dmu) D(x(mu), mu)||,

with the total derivative along the ODE, dx/dmu = (d log sigma / dmu) x + alpha D (one forward-mode product per
sample). The ODE carries the data marginals, so x(mu) ~ p_mu is x = alpha x0 + sigma eps with x0 from the data set:
g is a plain expectation, estimated by Monte Carlo. Norms are RMS over pixels. B bounds the local (discretisation)
error exactly; the global error adds the propagation of earlier errors through D (a Groenwall factor in D's
Lipschitz constant), which we do not model. Small steps pay where g (e^{lambda_i} - e^mu) is large: at low noise
(large e^lambda) and where the denoiser changes fast.

- `bound_mc`: the unbiased one-sample-per-interval estimator: mu_i ~ U[lambda_{i-1}, lambda_i], x ~ p_{mu_i},
  sigma_N sum_i (lambda_i - lambda_{i-1}) ||dD/dmu|| (e^{lambda_i} - e^{mu_i}), averaged over samples.
- `estimate_g` tabulates g on a lambda grid (Monte Carlo, unbiased at every grid point); `bound` integrates the
  linear interpolation of the table by Gauss-Legendre quadrature on every interval: a smooth function of the
  times, minimised over the logits with optax by `optimize_bound`.

Trajectory fit (phase 1b)
-------------------------
`optimize_trajectory`: the mean squared distance between any schedule's output (DDIM, DPM-Solver++, UniPC, ...:
its decisions are kept, its times are learned) and the diffrax endpoint of the model's own ODE from the same x_T
(`metrics.ode_reference`), minimised with optax through `jax.grad` of the jitted sampler; a held-out set of x_T
measures generalisation.

The metric itself (phase 1c, ours)
---------------------------------
`optimize_fd`: the Frechet distance between the classifier features of a fresh batch of the sampler's outputs
and the data's feature statistics, differentiated through the sampler and the classifier (`frechet_loss`: the
matrix square root's trace from `eigvalsh` of Sigma_ref^(1/2) Sigma Sigma_ref^(1/2)). It needs no ODE reference
and optimises what is reported; held-out noise seeds keep the evaluation honest, but it is the evaluation metric,
so a lower FD here may partly exploit that classifier.

Align-Your-Steps-style schedule
-------------------------------
`ays_schedule`: AYS minimises a KL upper bound of the discretised SDE by coordinate-wise search. Ours: with
y = x / alpha = x0 + nu eps (nu = e^-lambda, EDM's noise level) on Brownian paths of the forward process, the
bound is sum_i \int_{nu_i}^{nu_{i-1}} E ||D(y_nu) - D(y_{nu_{i-1}})||^2 nu^-3 dnu; the model's outputs along the
paths are tabulated on a fine lambda grid, and each interior step in turn moves to the grid point that minimises
the bound between its neighbours, until no step moves.

Phase 2
-------
`finetune`: continue training a zoo model with the diffusion loss weighted toward the chosen steps (`focus_times`
of `train.TrainConfig`: a share of each batch draws its noise level from the schedule's evaluation times), small
learning rate and EMA; `alternate` runs phase 1 and phase 2 for K rounds.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from omsjax.models import Model, as_zoo, to_eps_x0
from omsjax.sampler import _check_inputs, sample
from omsjax.schedule import Schedule
from omsjax.schedules import SKIP_TYPES, NoiseSchedule

__all__ = [
    "SPACINGS",
    "U_BOUND",
    "coordinate",
    "time_of_coordinate",
    "times",
    "logits",
    "denoiser_derivative",
    "estimate_g",
    "bound",
    "bound_mc",
    "optimize_bound",
    "trajectory_loss",
    "optimize_trajectory",
    "frechet_loss",
    "optimize_fd",
    "ays_table",
    "ays_bound",
    "ays_schedule",
    "FitResult",
    "finetune",
    "run",
]

SPACINGS = SKIP_TYPES  # the step spacings of `omsjax.schedules.time_steps`
U_BOUND = 8.0
KARRAS_RHO = 7.0


def _check_spacing(spacing: str) -> None:
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")


def coordinate(ns: NoiseSchedule, t, spacing: str = "logSNR"):
    """The base spacing's coordinate of time t (monotone in t). numpy in, numpy out; jax in, jax out."""
    _check_spacing(spacing)
    if spacing == "logSNR":
        return ns.lam(t)
    if spacing == "time_uniform":
        return t
    if spacing == "time_quadratic":
        return t**0.5
    lam = ns.lam(t)
    return np.exp(-lam / KARRAS_RHO) if isinstance(lam, (np.ndarray, np.generic, float)) else jnp.exp(-lam / KARRAS_RHO)


def time_of_coordinate(ns: NoiseSchedule, c, spacing: str = "logSNR"):
    """The inverse of `coordinate`."""
    _check_spacing(spacing)
    if spacing == "logSNR":
        return ns.t_of_lambda(c)
    if spacing == "time_uniform":
        return c
    if spacing == "time_quadratic":
        return c**2
    log = np.log if isinstance(c, (np.ndarray, np.generic, float)) else jnp.log
    return ns.t_of_lambda(-KARRAS_RHO * log(c))


def times(ns: NoiseSchedule, u, t_start: float, t_end: float, spacing: str = "logSNR", *, valid=None):
    """N + 1 strictly decreasing times from N logits `u` (module docstring); pure JAX, differentiable in u.

    `valid` (bool[N], optional) keeps only the first `sum(valid)` steps (the rest repeat t_end): the search's
    variable-length genomes."""
    u = jnp.asarray(u)
    f = u.dtype if jnp.issubdtype(u.dtype, jnp.floating) else jnp.result_type(float)
    u = u.astype(f)
    n = u.shape[-1]
    w = jnp.exp(U_BOUND * jnp.tanh(u / U_BOUND))
    if valid is not None:
        w = jnp.where(valid, w, 0.0)
    frac = jnp.cumsum(w) / jnp.sum(w)
    c0 = coordinate(ns, jnp.asarray(t_start, f), spacing)
    c1 = coordinate(ns, jnp.asarray(t_end, f), spacing)
    ts = time_of_coordinate(ns, jnp.concatenate([c0[None], c0 + frac * (c1 - c0)]), spacing)
    ts = ts.at[0].set(t_start)
    if valid is None:
        return ts.at[n].set(t_end)
    length = jnp.sum(valid).astype(jnp.int32)
    pos = jnp.arange(n + 1, dtype=jnp.int32)
    return jnp.where((pos >= length) & (pos > 0), jnp.asarray(t_end, f), ts)


def logits(ns: NoiseSchedule, ts, spacing: str = "logSNR") -> np.ndarray:
    """The logits u (float64, mean zero) with `times(ns, u, ts[0], ts[-1], spacing) == ts`; raises ValueError for
    times that are not strictly decreasing or whose increments differ by more than e^(2 U_BOUND)."""
    ts = np.asarray(ts, np.float64)
    if ts.ndim != 1 or len(ts) < 2 or not np.all(np.diff(ts) < 0):
        raise ValueError(f"need at least two strictly decreasing times, got {ts}")
    dc = np.diff(np.asarray(coordinate(ns, ts, spacing), np.float64))
    logf = np.log(dc / dc.sum())
    v = logf - logf.mean()
    if np.any(np.abs(v) >= U_BOUND * (1 - 1e-9)):
        raise ValueError(f"the {spacing} increments differ by more than e^(2 * {U_BOUND}): not representable")
    return U_BOUND * np.arctanh(v / U_BOUND)


# ------------------------------------------------------------------------------------------ the bound (1a)


def _data_pred(model: Model, ns: NoiseSchedule, x, lam):
    t = ns.t_of_lambda(lam)
    return to_eps_x0(model, model.params, x, t, ns.log_alpha(t), ns.sigma(t))[1]


def _rms(v):
    return jnp.sqrt(jnp.mean(jnp.square(v.reshape(v.shape[0], -1)), axis=-1))


def denoiser_derivative(model: Model, ns: NoiseSchedule, x, lam):
    """(D, dD/dlambda) at (x, lambda) along the probability-flow ODE: dx/dlambda = (d log sigma/dlambda) x + alpha D.
    `x` [B, ...], `lam` a scalar."""
    lam = jnp.asarray(lam, x.dtype)
    d = _data_pred(model, ns, x, lam)
    log_sigma = lambda l: ns.log_sigma(ns.t_of_lambda(l))  # noqa: E731
    dlogsig = jax.jvp(log_sigma, (lam,), (jnp.ones_like(lam),))[1]
    alpha = jnp.exp(ns.log_alpha(ns.t_of_lambda(lam)))
    dx = dlogsig * x + alpha * d
    _, dd = jax.jvp(lambda xx, ll: _data_pred(model, ns, xx, ll), (x, lam), (dx, jnp.ones_like(lam)))
    return d, dd


def _noisy(ns, x0, lam, eps):
    t = ns.t_of_lambda(lam)
    return jnp.exp(ns.log_alpha(t)) * x0 + ns.sigma(t) * eps


def _check_data(x0):
    if not hasattr(x0, "shape") or len(x0.shape) < 2 or x0.shape[0] < 1:
        raise ValueError(f"data must be an array [n, ...] of training samples, got {getattr(x0, 'shape', x0)}")


def estimate_g(model: Model, ns: NoiseSchedule, data, lam_grid, key, num_samples: int = 256, batch: int = 256):
    """g(lambda) = E ||dD/dlambda|| (RMS over pixels) at every point of `lam_grid`, by Monte Carlo over x0 drawn
    from `data` [n, ...] and fresh noise: an unbiased estimate at every grid point. Returns (mean, std error)."""
    _check_data(data)
    if not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples must be an int >= 2, got {num_samples!r}")
    data = jnp.asarray(data)
    lam_grid = jnp.asarray(lam_grid, data.dtype)
    b = min(batch, num_samples)
    reps = -(-num_samples // b)

    @jax.jit
    def one(lam, k):
        def body(_, kk):
            k1, k2 = jax.random.split(kk)
            x0 = data[jax.random.randint(k1, (b,), 0, data.shape[0], dtype=jnp.int32)]
            eps = jax.random.normal(k2, x0.shape, x0.dtype)
            return None, _rms(denoiser_derivative(model, ns, _noisy(ns, x0, lam, eps), lam)[1])

        return jax.lax.scan(body, None, jax.random.split(k, reps))[1].reshape(-1)[:num_samples]

    vals = jnp.stack([one(lam, jax.random.fold_in(key, j)) for j, lam in enumerate(lam_grid)])
    return jnp.mean(vals, -1), jnp.std(vals, -1) / math.sqrt(num_samples)


def _lams(ns, ts):
    return ns.lam(jnp.asarray(ts))


def bound(ns: NoiseSchedule, ts, lam_grid, g, *, nodes: int = 16):
    """B of the times `ts` (module docstring) with g the linear interpolation of the table (lam_grid, g), by
    Gauss-Legendre quadrature with `nodes` points per interval; differentiable in `ts`."""
    lam = _lams(ns, ts)
    f = lam.dtype
    xg, wg = np.polynomial.legendre.leggauss(nodes)
    xg, wg = jnp.asarray((xg + 1) / 2, f), jnp.asarray(wg / 2, f)
    lo, hi = lam[:-1], lam[1:]
    h = hi - lo
    mu = lo[:, None] + h[:, None] * xg[None]
    gm = jnp.interp(mu, jnp.asarray(lam_grid, f), jnp.asarray(g, f))
    integrand = gm * (jnp.exp(hi)[:, None] - jnp.exp(mu))
    sigma_n = ns.sigma(jnp.asarray(ts)[-1])
    return sigma_n * jnp.sum(h * jnp.sum(wg[None] * integrand, -1))


def bound_mc(model: Model, ns: NoiseSchedule, ts, data, key, num_samples: int = 256):
    """The unbiased Monte-Carlo estimate of B for the times `ts`: (mean, std error) over `num_samples` draws of one
    (mu_i, x0, eps) per interval."""
    _check_data(data)
    data = jnp.asarray(data)
    lam = _lams(ns, ts).astype(data.dtype)
    sigma_n = ns.sigma(jnp.asarray(ts, data.dtype)[-1])

    @jax.jit
    def run(key):
        def interval(carry, args):
            lo, hi, k = args
            k1, k2, k3 = jax.random.split(k, 3)
            mu = lo + (hi - lo) * jax.random.uniform(k1, (num_samples,), data.dtype)
            x0 = data[jax.random.randint(k2, (num_samples,), 0, data.shape[0], dtype=jnp.int32)]
            eps = jax.random.normal(k3, x0.shape, x0.dtype)

            def one(m, a, e):
                return _rms(denoiser_derivative(model, ns, _noisy(ns, a[None], m, e[None]), m)[1])[0]

            dd = jax.vmap(one)(mu, x0, eps)
            return carry + (hi - lo) * dd * (jnp.exp(hi) - jnp.exp(mu)), None

        keys = jax.random.split(key, lam.shape[0] - 1)
        tot, _ = jax.lax.scan(interval, jnp.zeros((num_samples,), data.dtype), (lam[:-1], lam[1:], keys))
        return sigma_n * tot

    vals = run(key)
    return jnp.mean(vals), jnp.std(vals) / math.sqrt(num_samples)


class FitResult(NamedTuple):
    """An optimised schedule: its times, the logits, and the objective's history (first, every step, last)."""

    ts: np.ndarray
    u: np.ndarray
    history: np.ndarray
    heldout: dict


def _check_fit(steps, lr):
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a number > 0, got {lr!r}")


def optimize_bound(
    ns: NoiseSchedule,
    init_ts,
    lam_grid,
    g,
    *,
    steps: int = 500,
    lr: float = 0.05,
    spacing: str = "logSNR",
) -> FitResult:
    """Minimise `bound` over the logits of a schedule with the end points and number of steps of `init_ts`
    (Adam, one jitted `lax.scan`). Returns the times, logits and the bound at every step."""
    _check_fit(steps, lr)
    init_ts = np.asarray(init_ts, np.float64)
    u0 = jnp.asarray(logits(ns, init_ts, spacing))
    t0, t1 = float(init_ts[0]), float(init_ts[-1])
    loss = lambda u: bound(ns, times(ns, u, t0, t1, spacing), lam_grid, g)  # noqa: E731
    u, hist = _adam(loss, u0, steps, lr)
    ts = np.asarray(times(ns, u, t0, t1, spacing), np.float64)
    return FitResult(ts, np.asarray(u), np.asarray(hist), {})


def _adam(loss, u0, steps, lr):
    opt = optax.adam(lr)

    @jax.jit
    def run(u):
        def body(carry, _):
            u, s = carry
            val, grad = jax.value_and_grad(loss)(u)
            with jax.numpy_dtype_promotion("standard"):
                upd, s = opt.update(grad, s, u)
            return (optax.apply_updates(u, upd), s), val

        (u, _), hist = jax.lax.scan(body, (u, opt.init(u)), None, length=steps)
        return u, jnp.concatenate([hist, loss(u)[None]])

    return run(u0)


# --------------------------------------------------------------------------------- trajectory fit (1b)


def trajectory_loss(zoo, ns: NoiseSchedule, schedule: Schedule, x_T, x_ref, *, data_mean=None, embed=None):
    """Mean squared distance between `schedule`'s output from x_T and the reference endpoints `x_ref`, in pixels
    or, with `embed` (a differentiable map of a batch, e.g. a classifier's features: LD3 uses LPIPS), between the
    embeddings; pure JAX (jit / grad in the schedule's times)."""
    out = sample(zoo, ns, schedule, x_T, data_mean=data_mean)
    if embed is not None:
        out, x_ref = embed(out), embed(x_ref)
    return jnp.mean(jnp.square(out - x_ref))


def optimize_trajectory(
    zoo,
    ns: NoiseSchedule,
    schedule: Schedule,
    x_T,
    x_ref,
    *,
    heldout=None,
    steps: int = 200,
    lr: float = 0.05,
    batch: int | None = None,
    spacing: str = "logSNR",
    data_mean=None,
    key=None,
    embed=None,
) -> FitResult:
    """Learn the times of `schedule` (its solver decisions are kept) by Adam on `trajectory_loss` against the ODE
    endpoints `x_ref` of `x_T`; `batch` draws a random minibatch per step (default: all). `heldout = (x_T, x_ref)`
    reports the loss before and after on unseen noise (FitResult.heldout {"before", "after"}). `embed`: see
    `trajectory_loss`."""
    _check_fit(steps, lr)
    zoo = as_zoo(zoo)
    _check_inputs(zoo, ns, schedule, x_T, data_mean)
    x_T, x_ref = jnp.asarray(x_T), jnp.asarray(x_ref)
    if x_T.shape != x_ref.shape:
        raise ValueError(f"x_T {x_T.shape} and x_ref {x_ref.shape} must have the same shape")
    n = x_T.shape[0]
    if batch is not None and not (isinstance(batch, int) and 1 <= batch <= n):
        raise ValueError(f"batch must be an int in 1..{n}, got {batch!r}")
    ts0 = np.asarray(schedule.ts, np.float64)
    u0 = jnp.asarray(logits(ns, ts0, spacing), jnp.asarray(schedule.ts).dtype)
    t0, t1 = float(ts0[0]), float(ts0[-1])
    f = jnp.asarray(schedule.ts).dtype

    def with_times(u):
        return schedule._replace(ts=times(ns, u, t0, t1, spacing).astype(f))

    def full_loss(u, xs, refs):
        return trajectory_loss(zoo, ns, with_times(u), xs, refs, data_mean=data_mean, embed=embed)

    key = jax.random.PRNGKey(0) if key is None else key
    opt = optax.adam(lr)

    @jax.jit
    def run(u):
        def body(carry, k):
            u, s = carry
            if batch is None:
                xs, refs = x_T, x_ref
            else:
                idx = jax.random.choice(k, n, (batch,), replace=False)
                xs, refs = x_T[idx], x_ref[idx]
            val, grad = jax.value_and_grad(full_loss)(u, xs, refs)
            with jax.numpy_dtype_promotion("standard"):
                upd, s = opt.update(grad, s, u)
            return (optax.apply_updates(u, upd), s), val

        (u, _), hist = jax.lax.scan(body, (u, opt.init(u)), jax.random.split(key, steps))
        return u, hist

    u, hist = run(u0)
    full = jax.jit(full_loss)
    hist = np.concatenate([np.asarray(hist), [float(full(u, x_T, x_ref))]])
    held = {}
    if heldout is not None:
        hx, hr = (jnp.asarray(a) for a in heldout)
        held = {"before": float(full(u0, hx, hr)), "after": float(full(u, hx, hr))}
    ts = np.asarray(times(ns, u, t0, t1, spacing), np.float64)
    return FitResult(ts, np.asarray(u), hist, held)


def frechet_loss(feats, mu_ref, cov_ref_sqrt, trace_ref):
    """The Frechet distance between the Gaussian fit of `feats` [B, D] and the reference (mu_ref, Sigma_ref), with
    `cov_ref_sqrt` = Sigma_ref^(1/2) and `trace_ref` = tr Sigma_ref precomputed:
    ||mu - mu_ref||^2 + tr Sigma + tr Sigma_ref - 2 tr (Sigma_ref^(1/2) Sigma Sigma_ref^(1/2))^(1/2), the last
    term by `eigvalsh` (differentiable where the eigenvalues are distinct). Pure JAX; B >= 2."""
    mu = jnp.mean(feats, 0)
    xc = feats - mu
    cov = xc.T @ xc / (feats.shape[0] - 1)
    ev = jnp.linalg.eigvalsh(cov_ref_sqrt @ cov @ cov_ref_sqrt)
    tr_sqrt = jnp.sum(jnp.sqrt(jnp.maximum(ev, 1e-10)))
    return jnp.sum(jnp.square(mu - mu_ref)) + jnp.trace(cov) + trace_ref - 2.0 * tr_sqrt


def optimize_fd(
    zoo,
    ns: NoiseSchedule,
    schedule: Schedule,
    embed,
    ref,
    *,
    image_shape,
    batch: int = 256,
    steps: int = 60,
    lr: float = 0.05,
    spacing: str = "logSNR",
    data_mean=None,
    key=None,
) -> FitResult:
    """Learn the times of `schedule` (its decisions kept) by Adam on the Frechet distance (`frechet_loss`) between
    the `embed` features (e.g. the FD classifier's) of a fresh batch of `batch` samples per step and the reference
    statistics `ref` = (mu, cov): the metric itself, differentiated through the sampler. No ODE reference is
    needed; every step draws new x_T (a stochastic gradient of the FD of the sampler's distribution)."""
    _check_fit(steps, lr)
    zoo = as_zoo(zoo)
    if not (isinstance(batch, int) and batch >= 2):
        raise ValueError(f"batch must be an int >= 2, got {batch!r}")
    f = jnp.asarray(schedule.ts).dtype
    _check_inputs(zoo, ns, schedule, jnp.zeros((1, *image_shape), f), data_mean)
    mu_r, cov_r = (np.asarray(a, np.float64) for a in ref[:2])
    w, v = np.linalg.eigh(cov_r)
    sqrt_r = jnp.asarray((v * np.sqrt(np.maximum(w, 0.0))) @ v.T, jnp.float32)
    mu_r, tr_r = jnp.asarray(mu_r, jnp.float32), jnp.asarray(np.trace(cov_r), jnp.float32)
    ts0 = np.asarray(schedule.ts, np.float64)
    u0 = jnp.asarray(logits(ns, ts0, spacing), f)
    t0, t1 = float(ts0[0]), float(ts0[-1])
    prior = float(ns.prior_std(t0))  # 1 for VP, sigma_max for EDM

    def loss(u, k):
        s = schedule._replace(ts=times(ns, u, t0, t1, spacing).astype(f))
        x_T = prior * jax.random.normal(k, (batch, *image_shape), f)
        out = sample(zoo, ns, s, x_T, data_mean=data_mean)
        feats = embed(jnp.clip(out, -1.0, 1.0)).astype(jnp.float32)
        return frechet_loss(feats, mu_r, sqrt_r, tr_r)

    key = jax.random.PRNGKey(0) if key is None else key
    opt = optax.adam(lr)

    @jax.jit
    def run(u):
        def body(carry, k):
            u, s = carry
            val, grad = jax.value_and_grad(loss)(u, k)
            with jax.numpy_dtype_promotion("standard"):
                upd, s = opt.update(grad, s, u)
            return (optax.apply_updates(u, upd), s), val

        (u, _), hist = jax.lax.scan(body, (u, opt.init(u)), jax.random.split(key, steps))
        return u, hist

    u, hist = run(u0)
    ts = np.asarray(times(ns, u, t0, t1, spacing), np.float64)
    return FitResult(ts, np.asarray(u), np.asarray(hist), {})


# ------------------------------------------------------------------------------------------ AYS-style


def ays_table(model: Model, ns: NoiseSchedule, data, lam_grid, key, num_samples: int = 256):
    """The model's data predictions along `num_samples` Brownian paths of the forward process at every point of
    `lam_grid` (ascending): [G, num_samples, ...]. y = x0 + nu eps on each path (nu = e^-lambda), coupled by
    independent increments from the smallest nu up."""
    _check_data(data)
    data = jnp.asarray(data)
    lam_grid = jnp.asarray(lam_grid, data.dtype)
    if not bool(jnp.all(jnp.diff(lam_grid) > 0)):
        raise ValueError("lam_grid must be strictly increasing")
    k1, k2 = jax.random.split(key)
    x0 = data[jax.random.randint(k1, (num_samples,), 0, data.shape[0], dtype=jnp.int32)]
    nu = jnp.exp(-lam_grid)[::-1]  # ascending noise level
    var = jnp.concatenate([nu[:1] ** 2, jnp.diff(nu**2)])
    incr = jax.random.normal(k2, (nu.shape[0],) + x0.shape, x0.dtype) * jnp.sqrt(var).reshape((-1,) + (1,) * x0.ndim)
    y = x0[None] + jnp.cumsum(incr, axis=0)  # [G, S, ...] at ascending nu
    y = y[::-1]  # back to ascending lambda

    @jax.jit
    def one(yy, lam):
        t = ns.t_of_lambda(lam)
        return _data_pred(model, ns, jnp.exp(ns.log_alpha(t)) * yy, lam)

    return jnp.stack([one(y[j], lam_grid[j]) for j in range(lam_grid.shape[0])])


def _ays_cum(lam_grid, table) -> np.ndarray:
    """cum[a, b] = sum_{j <= b} w_j E ||D_j - D_a||^2 (RMS^2 per pixel), w_j = e^{2 lambda_j} dlambda_j: the bound
    of an interval from grid point a to b is cum[a, b] - cum[a, a]."""
    lam_grid = np.asarray(lam_grid, np.float64)
    G = len(lam_grid)
    tab = jnp.asarray(table)
    if tab.shape[0] != G:
        raise ValueError(f"the table has {tab.shape[0]} rows, the grid {G} points")
    flat = tab.reshape(G, tab.shape[1], -1)
    sq = jnp.mean(jnp.sum(flat**2, -1), -1)
    cross = jnp.einsum("asd,bsd->ab", flat, flat) / flat.shape[1]
    diff2 = np.maximum(np.asarray((sq[:, None] + sq[None, :] - 2 * cross) / flat.shape[-1], np.float64), 0.0)
    w = np.exp(2 * lam_grid) * np.gradient(lam_grid)  # nu^-3 dnu = e^{2 lambda} dlambda
    return np.cumsum(w[None, :] * diff2, axis=1)


def _grid_index(ns, ts, lam_grid):
    lam = np.asarray(ns.lam(np.asarray(ts, np.float64)), np.float64)
    idx = np.abs(lam[:, None] - np.asarray(lam_grid, np.float64)[None]).argmin(-1)
    return idx


def ays_bound(ns: NoiseSchedule, ts, lam_grid, table) -> float:
    """The AYS-style bound of the times `ts` (each snapped to its nearest grid point)."""
    cum = _ays_cum(lam_grid, table)
    idx = _grid_index(ns, ts, lam_grid)
    return float(sum(cum[a, b] - cum[a, a] for a, b in zip(idx[:-1], idx[1:], strict=True)))


def ays_schedule(
    ns: NoiseSchedule,
    nfe: int,
    lam_grid,
    table,
    *,
    t_start: float,
    t_end: float,
    init_ts=None,
    sweeps: int = 20,
) -> np.ndarray:
    """Coordinate search of the AYS-style bound (module docstring) over the points of `lam_grid` (ascending, from
    lambda(t_start) to lambda(t_end)): each interior step in turn moves to the grid point between its neighbours
    that minimises the bound, until a sweep moves nothing. Starts from `init_ts` (default: uniform in lambda).
    Returns the N + 1 times (float64, decreasing, the end points exact)."""
    lam_grid = np.asarray(lam_grid, np.float64)
    G = len(lam_grid)
    if not isinstance(nfe, int) or not 1 <= nfe < G:
        raise ValueError(f"nfe must be an int in 1..{G - 1} (the grid has {G} points), got {nfe!r}")
    ends = np.asarray(ns.lam(np.asarray([t_start, t_end], np.float64)), np.float64)
    if not np.allclose(ends, lam_grid[[0, -1]], rtol=1e-6, atol=1e-9):
        raise ValueError(f"lam_grid must run from lambda(t_start) = {ends[0]} to lambda(t_end) = {ends[1]}")
    cum = _ays_cum(lam_grid, table)

    def seg(a, b):
        return cum[a, b] - cum[a, a]

    if init_ts is None:
        idx = np.round(np.linspace(0, G - 1, nfe + 1)).astype(int)
    else:
        idx = _grid_index(ns, init_ts, lam_grid)
        idx[0], idx[-1] = 0, G - 1
    if len(idx) != nfe + 1 or len(np.unique(idx)) != nfe + 1:
        raise ValueError("the initial schedule needs nfe + 1 distinct grid points: use a finer lam_grid")
    for _ in range(sweeps):
        moved = False
        for i in range(1, nfe):
            lo, hi = idx[i - 1], idx[i + 1]
            cands = np.arange(lo + 1, hi)
            best = int(cands[int(np.argmin([seg(lo, c) + seg(c, hi) for c in cands]))])
            if best != idx[i]:
                idx[i], moved = best, True
        if not moved:
            break
    ts = np.asarray(ns.t_of_lambda(lam_grid[idx]), np.float64)
    ts[0], ts[-1] = t_start, t_end
    return ts


# ----------------------------------------------------------------------------------------- phase 2 and the job


def finetune(
    zoo_dir,
    model: int,
    focus_times,
    out_dir,
    *,
    data=None,
    steps: int = 600,
    lr: float = 2e-4,
    focus_prob: float = 0.5,
    ema_decay: float = 0.995,
    seed: int = 0,
    name: str | None = None,
    progress: bool = True,
) -> tuple[Model, Path]:
    """Phase 2: fine-tune zoo member `model` with its diffusion loss weighted toward `focus_times` (a share
    `focus_prob` of every batch takes its noise level from them), warm-up then cosine decay from `lr`, EMA
    `ema_decay` starting at the member's weights. Writes `out_dir/train` (checkpoints, log: resumable) and
    `out_dir/zoo`, a one-member zoo with the fine-tuned EMA weights; the source zoo is only read. `data`: the
    training images (default: the digits train split for a digits zoo). Returns (the model, the zoo folder)."""
    from omsjax import data as data_mod
    from omsjax import train, zoo

    models, _, manifest = zoo.load_zoo(zoo_dir)
    if not (isinstance(model, int) and 0 <= model < len(models)):
        raise ValueError(f"model {model!r} is not in the zoo of {len(models)} models")
    entry = manifest["models"][model]
    if data is None:
        if manifest.get("dataset") != "digits":
            raise ValueError(f"the zoo's data set is {manifest.get('dataset')!r}: pass the training images as data")
        data = data_mod.load_digits("train")
    base = train.TrainConfig.from_dict(entry["config"])
    focus = tuple(float(t) for t in focus_times)
    cfg = dataclasses.replace(base, steps=int(steps), lr=float(lr), warmup=max(1, min(50, int(steps) // 10)),
                              ema_decay=float(ema_decay), seed=int(seed), checkpoint_every=int(steps),
                              focus_times=focus, focus_prob=float(focus_prob))  # fmt: skip
    out = Path(out_dir)
    state = train.train(cfg, data, out / "train", resume=True, progress=progress, init_params=models[model].params)
    name = name or f"{entry['name']}-ft"
    zoo.add_member(out / "zoo", name, cfg, state.ema_params, train_steps=int(entry.get("train_steps", 0)) + steps,
                   dataset=manifest.get("dataset", "digits"), data_mean=manifest.get("data_mean"),
                   latency_batch=int(entry.get("latency_batch", 256)))  # fmt: skip
    ft, _, _ = zoo.load_zoo(out / "zoo")
    return ft[0], out / "zoo"


METHODS = ("bound", "trajectory", "ays", "fd")


def _phase1(method, zoo, k, ns, template, x0, keys, cfg):
    """The times of `template` (a preset at model k) chosen by `method` on zoo[k]; (ts, info)."""
    m = zoo[k]
    t0, t1 = float(np.asarray(template.ts)[0]), float(np.asarray(template.ts)[-1])
    lam_grid = np.linspace(float(ns.lam(t0)), float(ns.lam(t1)), cfg["grid"])
    nfe = int(template.nfe())
    if method == "bound":
        g, _ = estimate_g(m, ns, x0, lam_grid, keys[0], num_samples=cfg["g_samples"])
        res = optimize_bound(ns, np.asarray(template.ts), lam_grid, g, steps=cfg["bound_steps"], lr=0.05)
        return res.ts, {"bound_before": float(res.history[0]), "bound_after": float(res.history[-1])}
    if method == "ays":
        table = ays_table(m, ns, x0, lam_grid, keys[1], num_samples=cfg["ays_samples"])
        ts = ays_schedule(ns, nfe + int(int(np.asarray(template.afs)) != 0), lam_grid, table, t_start=t0, t_end=t1)
        return ts, {"ays_bound_before": ays_bound(ns, np.asarray(template.ts), lam_grid, table),
                    "ays_bound_after": ays_bound(ns, ts, lam_grid, table)}  # fmt: skip
    if method == "fd":  # the FD itself, from the standard spacing with the lowest FD on the training noise
        from omsjax import metrics

        x_T = cfg["traj_data"](None)[0]
        fd_of = jax.jit(lambda s: sample(zoo, ns, s, x_T, data_mean=cfg["data_mean"]))
        cands = [template._replace(ts=jnp.asarray(_spacing_ts(ns, template, sp), jnp.asarray(template.ts).dtype))
                 for sp in SPACINGS]  # fmt: skip
        best = min(cands, key=lambda s: metrics.fd(np.asarray(fd_of(s))))
        res = optimize_fd(zoo, ns, best, cfg["fd_embed"], metrics.reference_stats(), image_shape=x_T.shape[1:],
                          batch=min(256, x_T.shape[0]), steps=cfg["traj_steps"], lr=cfg["traj_lr"],
                          data_mean=cfg["data_mean"], key=keys[2])  # fmt: skip
        return res.ts, {"batch_fd_first": float(res.history[0]), "batch_fd_last": float(res.history[-1])}
    # trajectory: start from the standard spacing with the lowest training loss
    x_T, x_ref, held = cfg["traj_data"](m)
    best, best_loss = None, math.inf
    init_loss = jax.jit(lambda s: trajectory_loss(zoo, ns, s, x_T, x_ref, embed=cfg["embed"]))  # one compile
    for sp in SPACINGS:
        cand = template._replace(ts=jnp.asarray(_spacing_ts(ns, template, sp), jnp.asarray(template.ts).dtype))
        loss = float(init_loss(cand))
        if loss < best_loss:
            best, best_loss = cand, loss
    res = optimize_trajectory(zoo, ns, best, x_T, x_ref, heldout=held, steps=cfg["traj_steps"], lr=cfg["traj_lr"],
                              batch=min(64, x_T.shape[0]), key=keys[2], embed=cfg["embed"])  # fmt: skip
    return res.ts, {"train_mse_before": float(res.history[0]), "train_mse_after": float(res.history[-1]),
                    "heldout_mse_before": res.heldout["before"], "heldout_mse_after": res.heldout["after"]}  # fmt: skip


def _spacing_ts(ns, template, spacing):
    from omsjax import schedules

    ts = np.asarray(template.ts, np.float64)
    return schedules.time_steps(ns, len(ts) - 1, spacing, t_start=float(ts[0]), t_end=float(ts[-1]))


def run(
    zoo_dir,
    out_dir,
    *,
    model: int | None = None,
    solver: str = "DDIM",
    nfe: int = 5,
    method: str = "trajectory",
    rounds: int = 0,
    train_samples: int = 256,
    heldout_samples: int = 128,
    fd_samples: int = 1000,
    seed: int = 0,
    traj_steps: int = 300,
    finetune_steps: int = 600,
    distance: str = "features",
    progress: bool = True,
) -> dict:
    """`omsjax optimize-steps`: learn the times of `solver` at `nfe` on zoo member `model` (default: the largest) by
    `method` ("bound", "trajectory", "ays" or "fd": the FD itself through the sampler, `optimize_fd`), optionally
    alternating with `rounds` of fine-tuning (phase 2), and
    compare with the standard spacings on held-out noise. The trajectory fit's `distance` is "pixels" or
    "features" (the FD classifier's features: the perceptual distance, as LD3 uses LPIPS). Writes
    out/schedule.json (for `omsjax evaluate --schedule`; after fine-tuning its model is member 0 of the last
    round's zoo, out/finetune{K-1}/zoo, named in the report and the schedule's metadata),
    out/report.json and out/timesteps.png."""
    from omsjax import data as data_mod
    from omsjax import metrics, plots, presets, sampler, zoo
    from omsjax.search.evaluate import Evaluator

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if distance not in ("pixels", "features"):
        raise ValueError(f"distance must be 'pixels' or 'features', got {distance!r}")
    if solver not in presets.NAMED:
        raise ValueError(f"unknown solver {solver!r}; expected one of {sorted(presets.NAMED)}")
    for name, v, lo in (("nfe", nfe, 1), ("rounds", rounds, 0), ("train_samples", train_samples, 2),
                        ("heldout_samples", heldout_samples, 2), ("fd_samples", fd_samples, 2)):  # fmt: skip
        if not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    models, ns, manifest = zoo.load_zoo(zoo_dir)
    k = len(models) - 1 if model is None else model
    if not (isinstance(k, int) and 0 <= k < len(models)):
        raise ValueError(f"model {k!r} is not in the zoo of {len(models)} models (0..{len(models) - 1})")
    kind, kw = presets.NAMED[solver]
    template = presets.preset(kind, ns, nfe, model=k, **kw)
    shape = tuple(manifest["image_shape"])
    mean = manifest.get("data_mean")
    mean = None if mean is None else jnp.asarray(np.asarray(mean, np.float32))
    x0 = jnp.asarray(data_mod.load_digits("train")) if manifest.get("dataset") == "digits" else None
    if x0 is None and method in ("bound", "ays"):
        raise ValueError("the bound and AYS methods need the zoo's training data (digits zoos only here)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0, t1 = float(np.asarray(template.ts)[0]), float(np.asarray(template.ts)[-1])
    x_T = float(ns.prior_std(t0)) * sampler.noise(seed + 500, train_samples, shape)
    x_H = float(ns.prior_std(t0)) * sampler.noise(seed + 600, heldout_samples, shape)

    def traj_data(m):
        if m is None:  # the FD objective needs no ODE reference
            return x_T, None, None
        ref = lambda x: metrics.ode_reference(m, ns, x, t0, t1)  # noqa: E731
        return x_T, ref(x_T), (x_H, ref(x_H))

    cls = metrics.load_classifier()
    feats = lambda x: metrics._apply(cls, x.astype(jnp.float32), True)  # noqa: E731
    cfg = {"grid": 256, "g_samples": 128, "bound_steps": 500, "ays_samples": 256, "traj_steps": traj_steps,
           "traj_lr": 0.05, "traj_data": traj_data, "embed": feats if distance == "features" else None,
           "fd_embed": feats, "data_mean": mean}  # fmt: skip
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    zoo_now, k_now, ft_dir = models, k, None
    rounds_info = []
    for r in range(rounds + 1):
        tsr, info = _phase1(method, zoo_now, k_now, ns, template._replace(model=jnp.full_like(template.model, k_now)),
                            x0, keys, cfg)  # fmt: skip
        rounds_info.append({"round": r, "ts": [float(v) for v in tsr], **info})
        if r == rounds:
            break
        ft_model, ft_dir = finetune(zoo_dir if r == 0 else ft_dir, k_now, tsr[:-1], out / f"finetune{r}",
                                    steps=finetune_steps, seed=seed + r, progress=progress)  # fmt: skip
        zoo_now, k_now = (ft_model,), 0
    final = template._replace(ts=jnp.asarray(tsr, jnp.asarray(template.ts).dtype),
                              model=jnp.full_like(template.model, k_now))  # fmt: skip

    # Compare on held-out noise: the standard spacings (original model), the optimised times (final model).
    ev = Evaluator(models, ns, num_samples=fd_samples, noise_seed=seed + 1000, image_shape=shape, data_mean=mean)
    rows = {}
    ref_H = metrics.ode_reference(models[k], ns, x_H, t0, t1)

    def row(zoo_, sched, ev_, ref_):
        out_h = sampler.sample(zoo_, ns, sched, x_H, data_mean=mean)
        return {"fd": ev_.evaluate_schedules([sched])[0].fd, "traj_rmse": metrics.trajectory_error(out_h, ref_)}

    for sp in SPACINGS:
        s = template._replace(ts=jnp.asarray(_spacing_ts(ns, template, sp), jnp.asarray(template.ts).dtype))
        rows[sp] = row(models, s, ev, ref_H)
    if rounds == 0:
        opt_row = row(models, final, ev, ref_H)
    else:
        ev_ft = Evaluator(zoo_now, ns, num_samples=fd_samples, noise_seed=seed + 1000, image_shape=shape,
                          data_mean=mean)  # fmt: skip
        opt_row = row(zoo_now, final, ev_ft, metrics.ode_reference(zoo_now[0], ns, x_H, t0, t1))
    best_sp = min(SPACINGS, key=lambda sp: rows[sp]["fd"])
    label = method + ("" if rounds == 0 else f" + fine-tuning x{rounds}")
    report = {
        "zoo": str(zoo_dir), "model": k, "solver": solver, "nfe": nfe, "method": method, "rounds": rounds,
        "distance": distance if method == "trajectory" else None,
        "optimized": {"label": label, "ts": [float(v) for v in tsr], **opt_row},
        "spacings": rows, "best_spacing": best_sp,
        "fd_ratio_to_best_spacing": opt_row["fd"] / rows[best_sp]["fd"],
        "phase1": rounds_info, "finetuned_zoo": None if ft_dir is None else str(ft_dir),
        "heldout_noise_seed": seed + 1000, "fd_samples": fd_samples, "heldout_trajectories": heldout_samples,
        "train_trajectories": train_samples,
    }  # fmt: skip
    (out / "schedule.json").write_text(final.to_json(solver=solver, method=label, fd=opt_row["fd"],
                                                     zoo=str(zoo_dir) if ft_dir is None else str(ft_dir)))  # fmt: skip
    (out / "report.json").write_text(json.dumps(report, indent=2))
    plots.timesteps_plot(ns, {**{sp: _spacing_ts(ns, template, sp) for sp in SPACINGS}, label: tsr},
                         out / "timesteps.png", title=f"{solver}, NFE {nfe}")  # fmt: skip
    return report
