"""The diffusion training loss of `TrainConfig`: noise-level sampling, the preconditioned denoiser, the loss weight
and its warm-up cap (REFERENCE.md sections 2 and 6; the formulas themselves live in `omsjax.precond`).

- "vp": t ~ U(T_EPS, 1), x = alpha_t x0 + sigma_t eps, loss = mean (eps_hat - eps)^2.
- "edm": ln sigma ~ N(P_MEAN, P_STD^2), x = x0 + sigma eps, loss = mean lambda(sigma) (D - x0)^2.
- "ve": ln sigma ~ U(ln VE_SIGMA_MIN, ln VE_SIGMA_MAX), x = x0 + sigma eps, lambda = 1 / sigma^2.
- "fdm_*": exactly their base's levels and noise (same keys); only c_in differs.
- Loss-weight warm-up (`weight_clamp_warmup` W > 0): lambda -> min(lambda, `clamp_cap(step, W)`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from omsjax import checks, nets, noise
from omsjax.precond import SIGMA_DATA, T_EPS, VE_SIGMA_MAX, VE_SIGMA_MIN, base_of, loss_weight, precondition
from omsjax.train.config import DTYPE, TrainConfig

__all__ = ["P_MEAN", "P_STD", "clamp_cap", "loss_fn"]

# EDM: ln sigma ~ N(P_MEAN, P_STD^2).
P_MEAN = -1.2
P_STD = 1.2

_VP = noise.vp_linear()


def clamp_cap(step, warmup: int) -> jax.Array:
    """Cap of the loss weight at optimiser step `step` (>= 0, may be traced) of a warm-up of `warmup` steps:

        cap = 5 * 100^(step / W) for step < W;   +inf for step >= W, and always when W = 0 (off).

    float32 (the training dtype), shape of `step`.
    """
    warmup = checks.count("weight_clamp_warmup", warmup, 0)
    step = jnp.asarray(step)
    if warmup == 0:
        return jnp.full(step.shape, jnp.inf, DTYPE)
    frac = step.astype(DTYPE) / warmup
    return jnp.where(step < warmup, 5.0 * jnp.exp(frac * math.log(100.0)), jnp.inf).astype(DTYPE)


def denoise(
    precond: str,
    net: nets.UNetConfig,
    fdm_m: float,
    params: Any,
    x: jax.Array,
    level: jax.Array,
    y: jax.Array | None = None,
):
    """pred = c_skip x + c_out F(c_in x; c_noise, y) for x [B, ...], level [B] (coefficients in x's dtype), labels
    y int[B] of a class-conditional net (None: the null label)."""

    def bc(v):
        v = jnp.asarray(v).astype(x.dtype)
        return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))

    c_skip, c_out, c_in, c_noise = precondition(precond, level, SIGMA_DATA, fdm_m=fdm_m)
    f = nets.unet_apply_fn(net)(params, bc(c_in) * x, jnp.asarray(c_noise).astype(x.dtype), y)
    return bc(c_skip) * x + bc(c_out) * f


def loss_fn(
    config: TrainConfig,
    params: Any,
    batch: jax.Array,
    key: jax.Array,
    step: jax.Array | int | None = None,
    labels: jax.Array | None = None,
) -> jax.Array:
    """Mean diffusion loss of `params` on `batch` [B, H, W, C] (float32), noise levels and noise from `key`.

    `step` (the optimiser step, may be traced) sets the loss-weight cap `clamp_cap(step, W)`; it is required when
    `config.weight_clamp_warmup` W > 0 and ignored otherwise. `labels` int[B]: a class-conditional net's labels
    (already dropped to the null label where `train_step` drew so; None: all null).
    """
    if config.weight_clamp_warmup > 0 and step is None:
        raise ValueError(f"loss_fn: weight_clamp_warmup={config.weight_clamp_warmup} needs the optimiser step")
    batch = jnp.asarray(batch, DTYPE)
    b = batch.shape[0]
    k_level, k_eps = jax.random.split(key)
    eps = jax.random.normal(k_eps, batch.shape, DTYPE)

    def bc(v):
        return v.reshape((b,) + (1,) * (batch.ndim - 1))

    k_focus = jax.random.fold_in(key, 7)  # leaves the base levels' stream unchanged

    def focus(level):  # a share focus_prob of the batch takes its level from focus_times
        if not config.focus_times:
            return level
        kf, kp = jax.random.split(k_focus)
        pick = jnp.asarray(config.focus_times, DTYPE)[jax.random.randint(kf, (b,), 0, len(config.focus_times))]
        return jnp.where(jax.random.uniform(kp, (b,), DTYPE) < config.focus_prob, pick, level)

    # The fdm_* variants draw exactly their base's levels and noise (same keys); only c_in differs.
    base = base_of(config.precond)
    if base == "vp":
        t = focus(jax.random.uniform(k_level, (b,), DTYPE, minval=T_EPS, maxval=1.0))
        alpha, sigma = jnp.exp(_VP.log_alpha(t)), _VP.sigma(t)
        x = bc(alpha) * batch + bc(sigma) * eps
        level, target = t, eps
    else:
        if base == "edm":
            sigma = jnp.exp(P_MEAN + P_STD * jax.random.normal(k_level, (b,), DTYPE))
        else:  # ve: ln sigma uniform on [ln VE_SIGMA_MIN, ln VE_SIGMA_MAX]
            u = jax.random.uniform(k_level, (b,), DTYPE)
            sigma = jnp.exp(math.log(VE_SIGMA_MIN) + u * (math.log(VE_SIGMA_MAX) - math.log(VE_SIGMA_MIN)))
        sigma = focus(sigma)
        x = batch + bc(sigma) * eps
        level, target = sigma, batch
    weight = loss_weight(config.precond, level, SIGMA_DATA)
    if config.weight_clamp_warmup > 0:
        weight = jnp.minimum(weight, clamp_cap(step, config.weight_clamp_warmup))
    pred = denoise(config.precond, config.net, config.fdm_m, params, x, level, labels)
    per_sample = jnp.mean(jnp.square(pred - target), axis=tuple(range(1, batch.ndim)))
    return jnp.mean(weight * per_sample)
