"""Models, zoos and parameterisation conversions.

A `Model` wraps any pure function `apply_fn(params, x, t)` (a Flax module's apply, a closure over an equinox
model, an analytic formula) with its parameter pytree. Parameters are pytree leaves, so a zoo of models passed to a
jitted sampler is traced, never baked into the program as constants. `t` is the noise schedule's continuous time,
shape [batch]; for the "edm" parameterisation the raw network instead sees EDM's preconditioned input
(c_in x, c_noise).

A model call that fails while it is traced, or returns anything but a floating array of x's shape, raises a
ValueError that names the zoo member, the shapes it got and the signature expected (`SIGNATURE`); a model may
declare the shape of one sample (`Model.sample_shape`) for the samplers to check x_T against.

Every model output is converted to the pair (noise prediction eps, data prediction x0):
  noise: eps = F,                 x0 = (x - sigma eps) / alpha
  data:  x0 = F,                  eps = (x - alpha x0) / sigma
  v:     v = alpha eps - sigma x0, so x0 = (alpha x - sigma v)/(alpha^2 + sigma^2), eps = (sigma x + alpha v)/(...)
  edm:   x0 = D(x/alpha; s) = c_skip y + c_out F(c_in y; c_noise) with y = x/alpha, s = sigma/alpha,
         c_skip = sd^2/(s^2 + sd^2), c_out = s sd/sqrt(s^2 + sd^2), c_in = 1/sqrt(s^2 + sd^2), c_noise = ln(s)/4
         (`omsjax.precond.edm`, shared with the training losses).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from omsjax import precond

__all__ = ["Model", "PARAMETERIZATIONS", "as_zoo", "to_eps_x0", "eval_zoo", "used_members"]

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
      name: a label for messages and reports.
      sample_shape: the shape of one sample the model takes, e.g. (28, 28, 1), or None (undeclared); the
        samplers reject an x_T [B, ...] whose x_T.shape[1:] differs from it.
    """

    apply_fn: Callable = struct.field(pytree_node=False)
    params: Any = None
    parameterization: str = struct.field(pytree_node=False, default="noise")
    latency: float = struct.field(pytree_node=False, default=1.0)
    sigma_data: float = struct.field(pytree_node=False, default=0.5)
    name: str = struct.field(pytree_node=False, default="")
    sample_shape: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)

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
        if not isinstance(self.name, str):
            raise ValueError(f"Model.name must be a string, got {type(self.name).__name__}")
        if self.sample_shape is not None:
            shape = self.sample_shape
            ok = isinstance(shape, (tuple, list)) and all(
                isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in shape
            )
            if not ok:
                raise ValueError(f"Model.sample_shape must be None or a tuple of positive ints, got {shape!r}")
            object.__setattr__(self, "sample_shape", tuple(int(d) for d in shape))  # hashable, static

    def label(self, index: int | None = None) -> str:
        """How messages name this model: "zoo member 1 'small'" (or "model 'small'" without an index)."""
        name = f" {self.name!r}" if self.name else ""
        return f"model{name}" if index is None else f"zoo member {index}{name}"


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


SIGNATURE = "apply_fn(params, x [B, ...], t [B]) -> output of x's shape"


def _spec(a) -> str:
    return f"[{', '.join(str(d) for d in a.shape)}] {a.dtype}"


def _apply(model: Model, params, x, t, label: str | None = None):
    """`model.apply_fn(params, x, t)`, checked while it is traced (no extra trace, nothing in the program): an
    error inside the call, or an output that is not a floating array of x's shape, becomes a ValueError naming the
    member (`label`), the shapes it was given and the signature expected (`SIGNATURE`)."""
    who = label or model.label()
    declared = "" if model.sample_shape is None else f"; it declares sample_shape {model.sample_shape}"
    try:
        out = model.apply_fn(params, x, t)
    except Exception as e:
        raise ValueError(
            f"{who} failed when called with x {_spec(x)}, t {_spec(t)}{declared} (expected {SIGNATURE}): "
            f"{type(e).__name__}: {e}"
        ) from e
    if not (hasattr(out, "shape") and hasattr(out, "dtype")):
        raise ValueError(f"{who} returned a {type(out).__name__} for x {_spec(x)}, expected {SIGNATURE}")
    if tuple(out.shape) != tuple(x.shape) or not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"{who} returned {_spec(out)} for x {_spec(x)}{declared}: expected a floating point "
                         f"array of x's shape ({SIGNATURE})")  # fmt: skip
    return out


def to_eps_x0(model: Model, params, x, t, log_alpha, sigma, *, label: str | None = None):
    """Evaluate `model` at (x, t) and return (eps, x0). `log_alpha`, `sigma` are scalars for time t; `label` names
    the model in error messages (default `model.label()`)."""
    batch = x.shape[0]
    alpha = jnp.exp(log_alpha)
    a, s = _bcast(alpha, x), _bcast(sigma, x)
    tb = jnp.broadcast_to(jnp.asarray(t, dtype=x.dtype), (batch,))
    p = model.parameterization
    if p == "edm":
        c_skip, c_out, c_in, c_noise = precond.edm(sigma / alpha, model.sigma_data)
        c_noise = jnp.broadcast_to(c_noise, (batch,)).astype(x.dtype)
        y = x / a
        out = _apply(model, params, _bcast(c_in, x) * y, c_noise, label)
        x0 = _bcast(c_skip, x) * y + _bcast(c_out, x) * out
        eps = (x - a * x0) / s
        return eps, x0
    out = _apply(model, params, x, tb, label)
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


def eval_zoo(zoo: tuple[Model, ...], index, x, t, log_alpha, sigma, *, members: tuple[int, ...] | None = None):
    """(eps, x0) of zoo[index] at (x, t): `lax.switch` with params as operands; one model needs no switch (and
    nothing to batch under vmap). `members`: the original zoo index of each entry when `zoo` is a part of a zoo
    (`used_members`), for error messages."""
    names = members or tuple(range(len(zoo)))
    if len(zoo) == 1:
        return to_eps_x0(zoo[0], zoo[0].params, x, t, log_alpha, sigma, label=zoo[0].label(names[0]))
    params = tuple(m.params for m in zoo)
    branches = [
        (lambda ps, x, t, la, s, m=m, k=k: to_eps_x0(m, ps[k], x, t, la, s, label=m.label(names[k])))
        for k, m in enumerate(zoo)
    ]
    return jax.lax.switch(index, branches, params, x, t, log_alpha, sigma)


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
