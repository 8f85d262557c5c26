r"""Learned timesteps by differentiating the sampler: the trajectory fit (phase 1b; LD3) and the FD objective
(phase 1c).

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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from omsjax import optim
from omsjax.checks import check_inputs
from omsjax.fields import count
from omsjax.models import as_zoo
from omsjax.noise import NoiseSchedule
from omsjax.sampler import sample
from omsjax.schedule import Schedule
from omsjax.spacing import logits, times
from omsjax.timesteps.result import FitResult, check_fit

__all__ = ["trajectory_loss", "optimize_trajectory", "frechet_loss", "optimize_fd"]


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
    pairs,
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
    """Learn the times of `schedule` (its solver decisions are kept) by Adam on `trajectory_loss` over `pairs` =
    (x_T, x_ref), noise and the ODE endpoints from it; `batch` draws a random minibatch per step from `key`
    (default: all). `heldout`, pairs of the same form, reports the loss before and after on unseen noise
    (FitResult.heldout {"before", "after"}). `embed`: see `trajectory_loss`."""
    check_fit(steps, lr)
    if not (isinstance(pairs, (tuple, list)) and len(pairs) == 2):
        raise ValueError("pairs must be (x_T, x_ref): the noise and the ODE endpoints from it")
    x_T, x_ref = pairs
    zoo = as_zoo(zoo)
    check_inputs(zoo, ns, schedule, x_T, data_mean)
    x_T, x_ref = jnp.asarray(x_T), jnp.asarray(x_ref)
    if x_T.shape != x_ref.shape:
        raise ValueError(f"x_T {x_T.shape} and x_ref {x_ref.shape} must have the same shape")
    n = x_T.shape[0]
    if batch is not None:
        batch = count("optimize_trajectory: batch", batch, maximum=n)
    ts0 = np.asarray(schedule.ts, np.float64)
    u0 = jnp.asarray(logits(ns, ts0, spacing), jnp.asarray(schedule.ts).dtype)
    t0, t1 = float(ts0[0]), float(ts0[-1])
    f = jnp.asarray(schedule.ts).dtype

    def with_times(u):
        return schedule._replace(ts=times(ns, u, t0, t1, spacing).astype(f))

    def full_loss(u, xs, refs):
        return trajectory_loss(zoo, ns, with_times(u), xs, refs, data_mean=data_mean, embed=embed)

    def step_loss(u, k):  # one step's loss: the whole set, or a random minibatch of `batch`
        if batch is None:
            return full_loss(u, x_T, x_ref)
        idx = jax.random.choice(k, n, (batch,), replace=False)
        return full_loss(u, x_T[idx], x_ref[idx])

    key = jax.random.PRNGKey(0) if key is None else key
    u, _, hist = optim.minimize(step_loss, optax.adam(lr), u0, jax.random.split(key, steps))
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
    check_fit(steps, lr)
    zoo = as_zoo(zoo)
    batch = count("optimize_fd: batch", batch, 2)
    f = jnp.asarray(schedule.ts).dtype
    check_inputs(zoo, ns, schedule, jnp.zeros((1, *image_shape), f), data_mean)
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
    u, _, hist = optim.minimize(loss, optax.adam(lr), u0, jax.random.split(key, steps))
    ts = np.asarray(times(ns, u, t0, t1, spacing), np.float64)
    return FitResult(ts, np.asarray(u), np.asarray(hist), {})
