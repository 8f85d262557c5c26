"""`model_from_params`: an `omsjax.Model` for trained U-Net parameters, with its training preconditioning."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from omsjax import nets
from omsjax.models import Model
from omsjax.precond import SIGMA_DATA, base_of
from omsjax.train.config import TrainConfig
from omsjax.train.losses import denoise

__all__ = ["model_from_params"]


@functools.cache
def _preconditioned_apply_fn(precond: str, net: nets.UNetConfig, fdm_m: float):
    """apply_fn(params, x, t, cond=None) = the trained network with its preconditioning, at time t of
    `noise_schedule(precond)` (cached: equal arguments give the same function, so samplers do not recompile)."""

    def apply_fn(params: Any, x: jax.Array, t: jax.Array, cond: jax.Array | None = None) -> jax.Array:
        x = jnp.asarray(x)
        t = jnp.broadcast_to(jnp.asarray(t).astype(x.dtype), x.shape[:1])
        return denoise(precond, net, fdm_m, params, x, t, cond)

    return apply_fn


def model_from_params(config: TrainConfig, params: Any, latency: float = 1.0, name: str = "") -> Model:
    """An `omsjax.Model` for trained parameters, to be sampled on `noise_schedule(config.precond)`.

    "vp": the raw network, parameterisation "noise"; "edm": the raw network, parameterisation "edm_raw" (sigma_data
    0.5, the preconditioning applied by `Model`); "fdm_vp": the network with its c_in = s(sigma_VP(t)) / alpha_t,
    "noise"; "ve", "fdm_edm", "fdm_ve": the denoiser D(x; sigma = t) with the training preconditioning, "data"
    (t is the noise level sigma of an EDM-type schedule, alpha = 1). A class-conditional net takes its labels
    int[B] as the sampler's `cond` (and the null label `config.net.num_classes` as `uncond`).
    """
    precond = config.precond
    if precond == "vp":
        apply_fn, parameterization = nets.unet_apply_fn(config.net), "noise"
    elif precond == "edm":
        apply_fn, parameterization = nets.unet_apply_fn(config.net), "edm_raw"
    else:
        apply_fn = _preconditioned_apply_fn(precond, config.net, config.fdm_m)
        parameterization = "noise" if base_of(precond) == "vp" else "data"
    return Model(apply_fn, params, parameterization, latency=latency, sigma_data=SIGMA_DATA, name=name)
