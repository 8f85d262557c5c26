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

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from omsjax.models import Model, as_zoo, to_eps_x0
from omsjax.sampler import _check_inputs, sample
from omsjax.schedule import Schedule
from omsjax.schedules import NoiseSchedule

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
    "ays_table",
    "ays_bound",
    "ays_schedule",
    "FitResult",
]

SPACINGS = ("logSNR", "time_uniform", "time_quadratic", "karras")
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


def trajectory_loss(zoo, ns: NoiseSchedule, schedule: Schedule, x_T, x_ref, *, data_mean=None):
    """Mean squared distance between `schedule`'s output from x_T and the reference endpoints `x_ref`; pure JAX
    (jit / grad in the schedule's times)."""
    out = sample(zoo, ns, schedule, x_T, data_mean=data_mean)
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
) -> FitResult:
    """Learn the times of `schedule` (its solver decisions are kept) by Adam on `trajectory_loss` against the ODE
    endpoints `x_ref` of `x_T`; `batch` draws a random minibatch per step (default: all). `heldout = (x_T, x_ref)`
    reports the loss before and after on unseen noise (FitResult.heldout {"before", "after"})."""
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
        return trajectory_loss(zoo, ns, with_times(u), xs, refs, data_mean=data_mean)

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
