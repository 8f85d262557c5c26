"""Models, zoos and parameterisation conversions.

A `Model` wraps any pure function `apply_fn(params, x, t)` (a Flax module's apply, a closure over an equinox
model, an analytic formula) with its parameter pytree. Parameters are pytree leaves, so a zoo of models passed to a
jitted sampler is traced, never baked into the program as constants. `t` is the noise schedule's continuous time,
shape [batch]; for the "edm" parameterisation the raw network instead sees EDM's preconditioned input
(c_in x, c_noise).

Every model output is converted to the pair (noise prediction eps, data prediction x0):
  noise: eps = F,                 x0 = (x - sigma eps) / alpha
  data:  x0 = F,                  eps = (x - alpha x0) / sigma
  v:     v = alpha eps - sigma x0, so x0 = (alpha x - sigma v)/(alpha^2 + sigma^2), eps = (sigma x + alpha v)/(...)
  edm:   x0 = D(x/alpha; s) = c_skip y + c_out F(c_in y; c_noise) with y = x/alpha, s = sigma/alpha,
         c_skip = sd^2/(s^2 + sd^2), c_out = s sd/sqrt(s^2 + sd^2), c_in = 1/sqrt(s^2 + sd^2), c_noise = ln(s)/4
         (`omsjax.precond.edm`, shared with the training losses).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from omsjax import precond

__all__ = ["Model", "PARAMETERIZATIONS", "as_zoo", "to_eps_x0", "eval_zoo"]

PARAMETERIZATIONS = ("noise", "data", "v", "edm")


@struct.dataclass
class Model:
    """A diffusion model: `apply_fn(params, x, t)` with its `params`.

    Attributes:
      apply_fn: pure function (params, x [B, ...], t [B]) -> output [B, ...]; static (part of the program).
      params: parameter pytree (traced).
      parameterization: one of "noise", "data", "v", "edm".
      latency: cost of one evaluation (ms per batch on the target machine), used by model-schedule search.
      sigma_data: EDM's sigma_d, used by the "edm" parameterisation.
    """

    apply_fn: Callable = struct.field(pytree_node=False)
    params: Any = None
    parameterization: str = struct.field(pytree_node=False, default="noise")
    latency: float = struct.field(pytree_node=False, default=1.0)
    sigma_data: float = struct.field(pytree_node=False, default=0.5)
    name: str = struct.field(pytree_node=False, default="")

    def __post_init__(self):
        if not callable(self.apply_fn):
            raise ValueError(f"Model.apply_fn must be callable, got {type(self.apply_fn).__name__}")
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"Model.parameterization must be one of {PARAMETERIZATIONS}, got {self.parameterization!r}"
            )
        if not (isinstance(self.latency, (int, float)) and self.latency >= 0):
            raise ValueError(f"Model.latency must be a number >= 0, got {self.latency!r}")
        if not (isinstance(self.sigma_data, (int, float)) and self.sigma_data > 0):
            raise ValueError(f"Model.sigma_data must be > 0, got {self.sigma_data!r}")


def as_zoo(model_or_zoo: Model | Sequence[Model]) -> tuple[Model, ...]:
    """A tuple of Models from one Model or a sequence of them, with a clear error otherwise."""
    if isinstance(model_or_zoo, Model):
        return (model_or_zoo,)
    if isinstance(model_or_zoo, (list, tuple)) and len(model_or_zoo) > 0:
        for i, m in enumerate(model_or_zoo):
            if not isinstance(m, Model):
                raise ValueError(f"zoo entry {i} is a {type(m).__name__}, expected omsjax.Model")
        return tuple(model_or_zoo)
    raise ValueError(f"expected an omsjax.Model or a non-empty sequence of them, got {type(model_or_zoo).__name__}")


def _bcast(v, x):
    """Broadcast a per-sample [B] (or scalar) coefficient against x [B, ...]."""
    v = jnp.asarray(v, dtype=x.dtype)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def to_eps_x0(model: Model, params, x, t, log_alpha, sigma):
    """Evaluate `model` at (x, t) and return (eps, x0). `log_alpha`, `sigma` are scalars for time t."""
    batch = x.shape[0]
    alpha = jnp.exp(log_alpha)
    a, s = _bcast(alpha, x), _bcast(sigma, x)
    tb = jnp.broadcast_to(jnp.asarray(t, dtype=x.dtype), (batch,))
    p = model.parameterization
    if p == "edm":
        c_skip, c_out, c_in, c_noise = precond.edm(sigma / alpha, model.sigma_data)
        c_noise = jnp.broadcast_to(c_noise, (batch,)).astype(x.dtype)
        y = x / a
        out = model.apply_fn(params, _bcast(c_in, x) * y, c_noise)
        x0 = _bcast(c_skip, x) * y + _bcast(c_out, x) * out
        eps = (x - a * x0) / s
        return eps, x0
    out = model.apply_fn(params, x, tb)
    if out.shape != x.shape:
        raise ValueError(f"model {model.name or model.apply_fn} returned shape {out.shape} for input {x.shape}")
    if p == "noise":
        eps = out
        x0 = (x - s * eps) / a
    elif p == "data":
        x0 = out
        eps = (x - a * x0) / s
    else:  # v
        norm = a**2 + s**2
        x0 = (a * x - s * out) / norm
        eps = (s * x + a * out) / norm
    return eps, x0


def eval_zoo(zoo: tuple[Model, ...], index, x, t, log_alpha, sigma):
    """(eps, x0) of zoo[index] at (x, t): `lax.switch` with params as operands; one model needs no switch (and
    nothing to batch under vmap)."""
    if len(zoo) == 1:
        return to_eps_x0(zoo[0], zoo[0].params, x, t, log_alpha, sigma)
    params = tuple(m.params for m in zoo)
    branches = [(lambda ps, x, t, la, s, m=m, k=k: to_eps_x0(m, ps[k], x, t, la, s)) for k, m in enumerate(zoo)]
    return jax.lax.switch(index, branches, params, x, t, log_alpha, sigma)
