"""Models, zoos and parameterisation conversions.

A `Model` wraps any pure function `apply_fn(params, x, t)` (a Flax module's apply, an equinox module through
`from_equinox`, an analytic formula) with its parameter pytree. Parameters are pytree leaves, so a zoo of models
passed to a jitted sampler is traced, never baked into the program as constants. `t` is the noise schedule's
continuous time, shape [batch]; the "denoiser" parameterisation instead sees EDM's (y = x/alpha, sigma/alpha) and
"edm_raw" the preconditioned input (c_in y, c_noise).

A model call that fails while it is traced, or returns anything but a floating array of x's shape, raises a
ValueError that names the zoo member, the shapes it got and the signature expected (`SIGNATURE`); a model may
declare the shape of one sample (`Model.sample_shape`) for the samplers to check x_T against.

Every model output F is converted to the pair (noise prediction eps, data prediction x0), with x = alpha x0 + sigma eps:
  noise:    eps = F,                 x0 = (x - sigma eps) / alpha
  data:     x0 = F,                  eps = (x - alpha x0) / sigma
  v:        F = alpha eps - sigma x0, so x0 = (alpha x - sigma F)/(alpha^2 + sigma^2), eps = (sigma x + alpha F)/(...)
  score:    F = grad_x log p_t(x) = -eps / sigma, so eps = -sigma F
  flow:     F = eps - x0 (rectified-flow velocity), so x0 = (x - sigma F)/(alpha + sigma), eps = (x + alpha F)/(...)
  denoiser: x0 = D(y; s), a k-diffusion / EDM denoiser at y = x/alpha, s = sigma/alpha = exp(-lambda) (`from_denoiser`)
  edm_raw:  x0 = D(y; s) = c_skip y + c_out F(c_in y; c_noise), the raw network F inside EDM's preconditioning
            c_skip = sd^2/(s^2 + sd^2), c_out = s sd/sqrt(s^2 + sd^2), c_in = 1/sqrt(s^2 + sd^2), c_noise = ln(s)/4
            (`omsjax.precond.edm`, shared with the training losses). "edm" is its deprecated alias.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from omsjax import precond

__all__ = ["Model", "PARAMETERIZATIONS", "as_zoo", "from_equinox", "to_eps_x0", "eval_zoo"]

PARAMETERIZATIONS = ("noise", "data", "v", "score", "flow", "denoiser", "edm_raw")
_DEPRECATED = {"edm": "edm_raw"}  # old name -> current name, accepted with a DeprecationWarning


@struct.dataclass
class Model:
    """A diffusion model: `apply_fn(params, x, t)` with its `params`.

    Attributes:
      apply_fn: pure function (params, x [B, ...], t [B]) -> output [B, ...]; static (part of the program). A
        floating output of another dtype than x (a bfloat16 or float16 network, a float64 one) is cast to x's dtype,
        the sampler state's (float32 or float64, x_T's).
      params: parameter pytree (traced).
      parameterization: what apply_fn returns (module docstring): "noise" eps, "data" x0, "v" alpha eps - sigma x0,
        "score" grad_x log p_t(x) = -eps/sigma, "flow" the rectified-flow velocity eps - x0 (flow matching with
        x_t = (1 - t) x0 + t eps, as in Stable Diffusion 3 and Flux: v = dx_t/dt points from data to noise),
        "denoiser" D(y; s) -> x0 (`from_denoiser`), "edm_raw" the raw network F of EDM's preconditioning.
        "edm" (deprecated) is stored as "edm_raw" with a DeprecationWarning.
      latency: cost of one evaluation (ms per batch on the target machine), used by model-schedule search.
      sigma_data: EDM's sigma_d, used by the "edm_raw" parameterisation.
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
        if isinstance(self.parameterization, str) and self.parameterization in _DEPRECATED:
            warnings.warn(
                f'Model parameterization "{self.parameterization}" is deprecated: use "edm_raw" for the raw network F '
                "inside D = c_skip y + c_out F(c_in y; c_noise), or Model.from_denoiser for a whole k-diffusion/EDM "
                "denoiser D(y; sigma)",
                DeprecationWarning,
                stacklevel=3,  # __post_init__ <- the dataclass __init__ <- the caller
            )
            object.__setattr__(self, "parameterization", _DEPRECATED[self.parameterization])
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

    @classmethod
    def from_denoiser(
        cls,
        denoiser: Callable,
        params: Any = None,
        *,
        name: str = "",
        latency: float = 1.0,
        sample_shape: tuple[int, ...] | None = None,
    ) -> Model:
        """A Model for a whole k-diffusion / EDM denoiser (parameterisation "denoiser"), on any noise schedule.

        `denoiser(params, y [B, ...], sigma [B]) -> x0 estimate [B, ...]` is D(y; sigma) of Karras et al. (2022):
        y = x0 + sigma n is the variance-exploding input. A sampler at time t of a noise schedule calls it with
        y = x / alpha_t and sigma = sigma_t / alpha_t = exp(-lambda_t) (`NoiseSchedule.edm_sigma`), and takes
        eps = (x - alpha_t x0) / sigma_t. On `noise.edm()` alpha = 1 and sigma = t. Pass a function of stable
        identity (defined once, not a fresh lambda per call): it is part of the compiled program's cache key.
        """
        return cls(
            apply_fn=denoiser,
            params=params,
            parameterization="denoiser",
            latency=latency,
            name=name,
            sample_shape=sample_shape,
        )

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


def bcast(v, x):
    """Broadcast a per-sample [B] (or scalar) coefficient against x [B, ...]."""
    v = jnp.asarray(v, dtype=x.dtype)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


SIGNATURE = "apply_fn(params, x [B, ...], t [B]) -> output of x's shape"
COND_SIGNATURE = "apply_fn(params, x [B, ...], t [B], cond) -> output of x's shape, cond's leaves [B, ...]"


def _spec(a) -> str:
    return f"[{', '.join(str(d) for d in a.shape)}] {a.dtype}"


def _apply(model: Model, params, x, t, label: str | None = None, cond=None):
    """`model.apply_fn(params, x, t)` (with `cond`: `apply_fn(params, x, t, cond)`), checked while it is traced (no
    extra trace, nothing in the program): an error inside the call, or an output that is not a floating array of
    x's shape, becomes a ValueError naming the member (`label`), the shapes it was given and the signature expected
    (`SIGNATURE`, `COND_SIGNATURE`). A floating output of another precision is cast to x's dtype."""
    who = label or model.label()
    declared = "" if model.sample_shape is None else f"; it declares sample_shape {model.sample_shape}"
    sig = SIGNATURE if cond is None else COND_SIGNATURE
    try:
        out = model.apply_fn(params, x, t) if cond is None else model.apply_fn(params, x, t, cond)
    except Exception as e:
        given = "" if cond is None else f", cond {jax.tree.map(_spec, cond)}"
        raise ValueError(
            f"{who} failed when called with x {_spec(x)}, t {_spec(t)}{given}{declared} (expected {sig}): "
            f"{type(e).__name__}: {e}"
        ) from e
    if not (hasattr(out, "shape") and hasattr(out, "dtype")):
        raise ValueError(f"{who} returned a {type(out).__name__} for x {_spec(x)}, expected {sig}")
    if tuple(out.shape) != tuple(x.shape) or not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(
            f"{who} returned {_spec(out)} for x {_spec(x)}{declared}: expected a floating point "
            f"array of x's shape ({sig})"
        )
    return out.astype(x.dtype)  # bfloat16 / float16 / float64 output: the state's precision (`Model`)


def to_eps_x0(model: Model, params, x, t, log_alpha, sigma, *, label: str | None = None, cond=None):
    """Evaluate `model` at (x [B, ...], t) and return (eps, x0), each of x's shape, by the formulas of the module
    docstring (x = alpha x0 + sigma eps). `t`, `log_alpha`, `sigma` are scalars (or [B]) for time t; `label` names
    the model in error messages (default `model.label()`); `cond` (a pytree of [B, ...] leaves, or None) is passed
    to the model as `apply_fn(params, x, t, cond)`."""
    batch = x.shape[0]
    alpha = jnp.exp(log_alpha)
    a, s = bcast(alpha, x), bcast(sigma, x)
    p = model.parameterization
    if p in ("denoiser", "edm_raw"):  # EDM's variables: y = x / alpha, s_edm = sigma / alpha = exp(-lambda)
        y = x / a
        s_edm = sigma / alpha
        if p == "denoiser":
            x0 = _apply(model, params, y, jnp.broadcast_to(s_edm, (batch,)).astype(x.dtype), label, cond)
        else:
            c_skip, c_out, c_in, c_noise = precond.edm(s_edm, model.sigma_data)
            c_noise = jnp.broadcast_to(c_noise, (batch,)).astype(x.dtype)
            out = _apply(model, params, bcast(c_in, x) * y, c_noise, label, cond)
            x0 = bcast(c_skip, x) * y + bcast(c_out, x) * out
        return (x - a * x0) / s, x0
    out = _apply(model, params, x, jnp.broadcast_to(jnp.asarray(t, dtype=x.dtype), (batch,)), label, cond)
    if p in ("noise", "score"):
        eps = out if p == "noise" else -s * out  # score = -eps / sigma
        return eps, (x - s * eps) / a
    if p == "data":
        return (x - a * out) / s, out
    if p == "v":  # v = alpha eps - sigma x0
        norm = a**2 + s**2
        return (s * x + a * out) / norm, (a * x - s * out) / norm
    # flow: v = eps - x0, and x = alpha x0 + sigma eps
    return (x + a * out) / (a + s), (x - s * out) / (a + s)


def guided_eps_x0(
    model: Model, params, x, t, log_alpha, sigma, *, cond=None, uncond=None, w=1.0, label: str | None = None
):
    """(eps, x0) of `model` at (x, t) under classifier-free guidance with scale `w` (a scalar, traced or not).

    Without `uncond` (or where w == 1): the model on `cond` alone (`to_eps_x0`). Otherwise one call on the
    concatenated batch [x; x] with conditioning [cond; uncond] (each leaf concatenated on its leading axis), and
    out = out(uncond) + w (out(cond) - out(uncond)) for eps and x0 alike. Every parameterisation maps the model's
    output to (eps, x0) affinely at fixed (x, t), and the weights (1 - w, w) sum to 1, so this is guidance applied
    to the model's own output: the noise and the data prediction agree exactly (x = alpha x0 + sigma eps), as in
    DPM-Solver's model wrapper. w == 1 skips the unconditional half (`lax.cond`; under vmap over w both run).
    """
    if uncond is None:
        return to_eps_x0(model, params, x, t, log_alpha, sigma, label=label, cond=cond)
    b = x.shape[0]

    def single(x, cond, uncond):
        return to_eps_x0(model, params, x, t, log_alpha, sigma, label=label, cond=cond)

    def both(x, cond, uncond):
        pair = jax.tree.map(lambda c, u: jnp.concatenate([c, u]), cond, uncond)
        t2, la2, s2 = (jnp.concatenate([v, v]) if jnp.ndim(v) else v for v in (t, log_alpha, sigma))
        eps2, x02 = to_eps_x0(model, params, jnp.concatenate([x, x]), t2, la2, s2, label=label, cond=pair)
        ws = jnp.asarray(w, x.dtype)
        return eps2[b:] + ws * (eps2[:b] - eps2[b:]), x02[b:] + ws * (x02[:b] - x02[b:])

    if not isinstance(w, jax.core.Tracer):  # a concrete scale: only the branch that runs is in the program
        return (single if float(w) == 1.0 else both)(x, cond, uncond)
    return jax.lax.cond(w == 1, single, both, x, cond, uncond)


def eval_zoo(
    zoo: tuple[Model, ...],
    index,
    x,
    t,
    log_alpha,
    sigma,
    *,
    members: tuple[int, ...] | None = None,
    cond=None,
    uncond=None,
    w=1.0,
):
    """(eps, x0) of zoo[index] at (x, t): `lax.switch` with params as operands; one model needs no switch (and
    nothing to batch under vmap). `members`: the original zoo index of each entry when `zoo` is a part of a zoo
    (`used_members`), for error messages. `cond`, `uncond`, `w`: conditioning and guidance (`guided_eps_x0`)."""
    names = members or tuple(range(len(zoo)))
    if len(zoo) == 1:
        return guided_eps_x0(
            zoo[0], zoo[0].params, x, t, log_alpha, sigma, cond=cond, uncond=uncond, w=w, label=zoo[0].label(names[0])
        )
    params = tuple(m.params for m in zoo)
    branches = [
        (
            lambda ps, x, t, la, s, c, u, w, m=m, k=k: guided_eps_x0(
                m, ps[k], x, t, la, s, cond=c, uncond=u, w=w, label=m.label(names[k])
            )
        )
        for k, m in enumerate(zoo)
    ]
    return jax.lax.switch(index, branches, params, x, t, log_alpha, sigma, cond, uncond, w)


def _same_leaf(a, b) -> bool:
    """Whether two static (non-array) leaves of equinox modules are interchangeable: identical, or equal by type and
    `==` (an `==` that fails or is ambiguous counts as different)."""
    if a is b:
        return True
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return False


class _EquinoxApply:
    """The apply_fn of `from_equinox`: (params [the module's arrays], x [B, ...], t [B]) -> module output [B, ...].

    Equal (and equally hashed) for two modules of one structure, whatever their weights: same static part
    (structure, static fields, non-array leaves such as activation functions) and same flags. The samplers' jit
    compares a zoo's static data by equality, so such modules share one compiled program.
    """

    __slots__ = ("static", "batched", "channels_first", "_key", "_leaves")

    def __init__(self, static, batched: bool, channels_first: bool):
        self.static, self.batched, self.channels_first = static, bool(batched), bool(channels_first)
        leaves, treedef = jax.tree.flatten(static)  # arrays are None in `static`: no leaves
        self._key, self._leaves = (self.batched, self.channels_first, treedef, len(leaves)), tuple(leaves)

    def __eq__(self, other):
        return (
            isinstance(other, _EquinoxApply)
            and self._key == other._key
            and all(_same_leaf(a, b) for a, b in zip(self._leaves, other._leaves, strict=True))
        )

    def __hash__(self):
        try:
            return hash((self._key, self._leaves))
        except TypeError:  # an unhashable static leaf: equal objects still hash equally
            return hash(self._key)

    def __call__(self, params, x, t, *cond):
        """`module(x, t)`, or `module(x, t, cond)` when the sampler has conditioning (its leaves [B, ...] are
        mapped with x when the module takes one sample)."""
        import equinox as eqx

        module = eqx.combine(params, self.static)
        if self.channels_first:  # omsjax's x is channels-last [B, ..., C]; the module takes [B, C, ...]
            x = jnp.moveaxis(x, -1, 1)
        out = module(x, t, *cond) if self.batched else jax.vmap(module)(x, t, *cond)
        return jnp.moveaxis(out, 1, -1) if self.channels_first else out


def from_equinox(
    module,
    *,
    parameterization: str = "noise",
    batched: bool = False,
    channels_first: bool = False,
    name: str = "",
    latency: float = 1.0,
    sample_shape: tuple[int, ...] | None = None,
) -> Model:
    """A Model for an equinox module called as `module(x, t)`, its weights traced and its program compiled once;
    a conditional module is called as `module(x, t, cond)` when the sampler is given `cond` (and `uncond` for
    classifier-free guidance: the unconditional half is the same call with `uncond`).

    The module is split with `eqx.partition(module, eqx.is_array)`: its arrays become `Model.params` (a pytree of
    the module's type, traced by the samplers, so `jax.grad`, `vmap` and new weights need no recompilation) and
    the rest (structure, static fields, activation functions) stays in the apply_fn, a hashable object equal for
    every module of the same structure. A fresh `lambda x, t: module(x, t)` or closure as apply_fn would instead
    recompile on every call (jit caches on the apply_fn's identity, a new object each time) and bake the weights
    into the program as constants.

    Args:
      module: an `equinox.Module` with `__call__(x, t)`, or `__call__(x, t, cond)` for a conditional model (one
        sample's conditioning, e.g. a label, or the batch's with `batched=True`).
      parameterization: what the module returns (`PARAMETERIZATIONS`); it receives what `to_eps_x0` passes for
        it: the schedule's time t, or sigma / alpha for "denoiser", c_noise for "edm_raw".
      batched: False (default): the module maps one sample, x [...], t a scalar (and cond's leaves without the
        batch axis), and is vmapped over the batch; True: it takes x [B, ...], t [B] (and cond [B, ...]) itself.
      channels_first: the module expects the channel axis first, [C, H, W] (or [B, C, H, W] when batched), while
        omsjax's samples are channels-last [B, H, W, C]: x is transposed in and the output back.
      name, latency, sample_shape: as in `Model`.

    Returns:
      Model(apply_fn, params = the module's arrays, ...): apply_fn(params, x [B, ...], t [B]) -> [B, ...].
    """
    import equinox as eqx  # optional: imported on use only

    params, static = eqx.partition(module, eqx.is_array)
    return Model(
        apply_fn=_EquinoxApply(static, batched, channels_first),
        params=params,
        parameterization=parameterization,
        latency=latency,
        name=name,
        sample_shape=sample_shape,
    )
