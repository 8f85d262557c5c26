r"""Learned timesteps by the first-order error bound (phase 1a; Huang 2024).

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
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from omsjax import optim
from omsjax.fields import count
from omsjax.models import Model, to_eps_x0
from omsjax.noise import NoiseSchedule
from omsjax.spacing import logits, times
from omsjax.timesteps.result import FitResult, check_fit

__all__ = ["denoiser_derivative", "estimate_g", "bound", "bound_mc", "optimize_bound"]


def data_prediction(model: Model, ns: NoiseSchedule, x, lam):
    t = ns.t_of_lambda(lam)
    return to_eps_x0(model, model.params, x, t, ns.log_alpha(t), ns.sigma(t))[1]


def _rms(v):
    return jnp.sqrt(jnp.mean(jnp.square(v.reshape(v.shape[0], -1)), axis=-1))


def denoiser_derivative(model: Model, ns: NoiseSchedule, x, lam):
    """(D, dD/dlambda) at (x, lambda) along the probability-flow ODE: dx/dlambda = (d log sigma/dlambda) x + alpha D.
    `x` [B, ...], `lam` a scalar."""
    lam = jnp.asarray(lam, x.dtype)
    d = data_prediction(model, ns, x, lam)
    log_sigma = lambda l: ns.log_sigma(ns.t_of_lambda(l))  # noqa: E731
    dlogsig = jax.jvp(log_sigma, (lam,), (jnp.ones_like(lam),))[1]
    alpha = jnp.exp(ns.log_alpha(ns.t_of_lambda(lam)))
    dx = dlogsig * x + alpha * d
    _, dd = jax.jvp(lambda xx, ll: data_prediction(model, ns, xx, ll), (x, lam), (dx, jnp.ones_like(lam)))
    return d, dd


def _noisy(ns, x0, lam, eps):
    t = ns.t_of_lambda(lam)
    return jnp.exp(ns.log_alpha(t)) * x0 + ns.sigma(t) * eps


def check_data(x0):
    if not hasattr(x0, "shape") or len(x0.shape) < 2 or x0.shape[0] < 1:
        raise ValueError(f"data must be an array [n, ...] of training samples, got {getattr(x0, 'shape', x0)}")


def estimate_g(model: Model, ns: NoiseSchedule, data, lam_grid, key, num_samples: int = 256, batch: int = 256):
    """g(lambda) = E ||dD/dlambda|| (RMS over pixels) at every point of `lam_grid`, by Monte Carlo over x0 drawn
    from `data` [n, ...] and fresh noise: an unbiased estimate at every grid point. Returns (mean, std error)."""
    check_data(data)
    num_samples, batch = count("estimate_g: num_samples", num_samples, 2), count("estimate_g: batch", batch)
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
    nodes = count("bound: nodes", nodes)
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
    check_data(data)
    num_samples = count("bound_mc: num_samples", num_samples, 2)
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
    check_fit(steps, lr)
    init_ts = np.asarray(init_ts, np.float64)
    u0 = jnp.asarray(logits(ns, init_ts, spacing))
    t0, t1 = float(init_ts[0]), float(init_ts[-1])
    loss = lambda u: bound(ns, times(ns, u, t0, t1, spacing), lam_grid, g)  # noqa: E731
    u, hist = _adam(loss, u0, steps, lr)
    ts = np.asarray(times(ns, u, t0, t1, spacing), np.float64)
    return FitResult(ts, np.asarray(u), np.asarray(hist), {})


def _adam(loss, u0, steps, lr):
    """Adam on `loss(u)` for `steps` steps; (u, the loss before every step and after the last)."""
    u, _, hist = optim.minimize(loss, optax.adam(lr), u0, length=steps)
    return u, jnp.concatenate([hist, jax.jit(loss)(u)[None]])
