"""Training of the small U-Nets (`omsjax.nets`): resumable, reproducible, data parallel.

- `TrainConfig` (frozen, hashable: it is the static argument of the jitted `train_step`) with JSON round trip.
- `TrainState` (step, params, ema_params, opt_state), `init_state(config)`.
- `train_step(config, state, data, key)`: one optimiser step. The whole data set `data` [N, H, W, C] is an
  argument (it lives on device); the step's randomness (batch indices, diffusion times, noise) comes from
  `jax.random.fold_in(key, state.step)`, so a resumed run draws exactly the batches and noise of an uninterrupted
  one, and there is no host-side iterator state to checkpoint.
- `train(config, data, out_dir)`: the loop, with orbax checkpoints of the full `TrainState` in `out_dir/ckpt`,
  `resume=True` to continue after an interruption, a tqdm bar and `out_dir/log.jsonl`.
- Data parallelism: the batch is sharded over a 1-D mesh of all devices (axis "data"), parameters and optimiser
  state are replicated; with one device this is the same program.
- `save_params` / `load_params` (orbax), `model_from_params` (an `omsjax.Model` for the sampler).

Losses (see REFERENCE.md sections 2 and 6), all written as `pred = c_skip x + c_out F(c_in x; c_noise)`:
- "vp": continuous linear VP, noise prediction; t ~ U(1e-5, 1), x = alpha_t x0 + sigma_t eps, F sees (x, t),
  loss = mean (eps_hat - eps)^2.
- "edm": EDM preconditioning; ln sigma ~ N(-1.2, 1.2^2), x = x0 + sigma eps, sigma_data = 0.5,
  loss = mean lambda(sigma) (D - x0)^2 with lambda = (sigma^2 + sd^2) / (sigma sd)^2.
- "ve": EDM's VE column (Karras et al. 2022, Table 1); ln sigma ~ U(ln 0.02, ln 100), x = x0 + sigma eps,
  c_skip = 1, c_out = sigma, c_in = 1, c_noise = ln(sigma / 2), lambda = 1 / sigma^2.
- "fdm_edm", "fdm_vp", "fdm_ve" (Fast Diffusion Model, REFERENCE.md section 6): the base method with only c_in
  replaced by the critically damped mean scale s(sigma) = `fdm_scale` (sigma: EDM's noise level sigma/alpha; for
  VP, whose x is alpha-scaled, c_in = s(sigma) / alpha_t, so that F sees s(sigma) (x0 + sigma eps) as in FDM).
  Up to sigma ~ 5, s ~ 1: the network sees the un-normalised input, as in the authors' code.
- Loss-weight warm-up (`weight_clamp_warmup` W > 0): lambda -> min(lambda, `clamp_cap(step, W)`), a pure function
  of the optimiser step, so a resumed run is the uninterrupted one.
Training runs in float32 whatever `jax_enable_x64` says.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from omsjax import nets, schedules
from omsjax.models import Model

__all__ = [
    "PRECONDS",
    "FDM_SIGMA_RANGES",
    "TrainConfig",
    "TrainState",
    "precondition",
    "fdm_scale",
    "loss_weight",
    "clamp_cap",
    "noise_schedule",
    "lr_schedule",
    "make_optimizer",
    "init_state",
    "loss_fn",
    "train_step",
    "data_sharding",
    "replicated_sharding",
    "train",
    "restore_state",
    "read_log",
    "save_params",
    "load_params",
    "model_from_params",
]

PRECONDS = ("vp", "edm", "ve", "fdm_edm", "fdm_vp", "fdm_ve")

# Continuous VP: t ~ U(T_EPS, 1). EDM: ln sigma ~ N(P_MEAN, P_STD^2), sigma_data = SIGMA_DATA.
# VE: ln sigma ~ U(ln VE_SIGMA_MIN, ln VE_SIGMA_MAX) (EDM's VE column, also its sampling range).
T_EPS = 1e-5
P_MEAN = -1.2
P_STD = 1.2
SIGMA_DATA = 0.5
VE_SIGMA_MIN = 0.02
VE_SIGMA_MAX = 100.0

# FDM: the sigma range normalising t' in `fdm_scale`, per base method (REFERENCE.md section 6). For VP it is the
# EDM sigma (sigma/alpha) of the continuous linear VP schedule at t = T_EPS and t = 1 (about 0.001 and 152.17).
_VP = schedules.vp_linear()
FDM_SIGMA_RANGES = {
    "edm": (0.002, 80.0),
    "vp": (float(_VP.edm_sigma(np.float64(T_EPS))), float(_VP.edm_sigma(np.float64(1.0)))),
    "ve": (VE_SIGMA_MIN, VE_SIGMA_MAX),
}

_DTYPE = jnp.float32


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of a training run (hashable; a static argument of `train_step`).

    Attributes:
      net: the `UNetConfig` of the network.
      steps: total optimiser steps.
      precond: "vp" (continuous linear VP, noise prediction), "edm" (EDM preconditioning), "ve" (EDM's VE
        preconditioning) or "fdm_edm" / "fdm_vp" / "fdm_ve" (Fast Diffusion Model: the base with c_in = s(sigma)).
      batch_size: global batch size (divisible by the number of devices).
      lr: peak learning rate: linear warm-up from 0 over `warmup` steps, then cosine decay to 0.1 lr at `steps`
        (if warmup >= steps the run ends during the warm-up).
      warmup: warm-up steps.
      grad_clip: clip gradients to this global norm.
      weight_decay: decoupled weight decay (AdamW) when > 0, else Adam.
      ema_decay: decay of the exponential moving average of the parameters (0 keeps the raw parameters).
      ema_warmup: ramp the EMA's decay up: the n-th update (n = 0, 1, ...) uses min(ema_decay, (1 + n) / (10 + n))
        (`ema_decay_at`), so the average forgets the random initialisation within a few hundred steps instead of
        keeping a share ema_decay^n of it (0.999^3000 = 5%). Off by default (the shipped zoo trained without it).
      seed: seeds the initialisation and every step's randomness.
      checkpoint_every: `train` saves a checkpoint every this many steps (and at the end).
      image_shape: (H, W, C) of the training images.
      focus_times: noise levels to weight the loss toward (VP times t; EDM / VE sigmas): fine-tuning on a sampler's
        steps (`omsjax.timesteps.finetune`). Empty: none.
      focus_prob: the share of each batch whose noise level is drawn uniformly from `focus_times` (the rest from the
        base distribution).
      fdm_m: FDM's damping m in s(sigma) = exp(-m B)(1 + m B) (2 by default, 1 in some of the paper's FFHQ runs);
        used by the fdm_* preconditionings only.
      weight_clamp_warmup: W: for optimiser steps < W the per-sample loss weight is min(weight, 5 * 100^(step / W));
        0 turns the clamp off.
    """

    net: nets.UNetConfig
    steps: int
    precond: str = "vp"
    batch_size: int = 128
    lr: float = 2e-3
    warmup: int = 200
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    ema_warmup: bool = False
    seed: int = 0
    checkpoint_every: int = 1000
    image_shape: tuple = (8, 8, 1)
    focus_times: tuple = ()
    focus_prob: float = 0.0
    fdm_m: float = 2.0
    weight_clamp_warmup: int = 0

    def __post_init__(self):
        if not isinstance(self.net, nets.UNetConfig):
            raise ValueError(f"net must be an omsjax.nets.UNetConfig, got {type(self.net).__name__}")
        if self.precond not in PRECONDS:
            raise ValueError(f"precond must be one of {PRECONDS}, got {self.precond!r}")
        for name in ("steps", "batch_size", "checkpoint_every"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not _is_int(self.warmup) or self.warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {self.warmup!r}")
        if not _is_int(self.seed):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if not _is_real(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not _is_real(self.grad_clip) or self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be a finite number > 0, got {self.grad_clip!r}")
        if not _is_real(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not _is_real(self.ema_decay) or not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if not isinstance(self.ema_warmup, (bool, np.bool_)):
            raise ValueError(f"ema_warmup must be a bool, got {self.ema_warmup!r}")
        object.__setattr__(self, "ema_warmup", bool(self.ema_warmup))
        shape = self.image_shape
        if not isinstance(shape, (tuple, list)) or len(shape) != 3 or not all(_is_int(s) and s > 0 for s in shape):
            raise ValueError(f"image_shape must be (H, W, C) with positive ints, got {shape!r}")
        shape = tuple(int(s) for s in shape)
        object.__setattr__(self, "image_shape", shape)
        d = self.net.spatial_divisor
        if shape[0] % d or shape[1] % d:
            raise ValueError(
                f"image_shape {shape}: H and W must be divisible by {d} for channel_mults={self.net.channel_mults}"
            )
        focus = self.focus_times
        if not isinstance(focus, (tuple, list)) or not all(_is_real(v) and v > 0 for v in focus):
            raise ValueError(f"focus_times must be a sequence of finite noise levels > 0, got {focus!r}")
        object.__setattr__(self, "focus_times", tuple(float(v) for v in focus))
        if not _is_real(self.focus_prob) or not 0 <= self.focus_prob <= 1:
            raise ValueError(f"focus_prob must be in [0, 1], got {self.focus_prob!r}")
        if self.focus_prob > 0 and not self.focus_times:
            raise ValueError("focus_prob > 0 needs focus_times")
        if _base(self.precond) == "vp" and any(v > 1 for v in self.focus_times):
            raise ValueError(f"{self.precond} focus_times are times in (0, 1], got {self.focus_times}")
        if not _is_real(self.fdm_m) or self.fdm_m <= 0:
            raise ValueError(f"fdm_m must be a finite number > 0, got {self.fdm_m!r}")
        if not _is_int(self.weight_clamp_warmup) or self.weight_clamp_warmup < 0:
            raise ValueError(f"weight_clamp_warmup must be an int >= 0, got {self.weight_clamp_warmup!r}")
        # Normalise numeric types so that equal configs hash equally (and JSON round trips are exact).
        for name in ("lr", "grad_clip", "weight_decay", "ema_decay", "focus_prob", "fdm_m"):
            object.__setattr__(self, name, float(getattr(self, name)))
        for name in ("steps", "batch_size", "warmup", "seed", "checkpoint_every", "weight_clamp_warmup"):
            object.__setattr__(self, name, int(getattr(self, name)))

    def to_dict(self) -> dict:
        """JSON-friendly dict (the net config nested, tuples as lists)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["net"] = {f.name: getattr(self.net, f.name) for f in dataclasses.fields(self.net)}
        return json.loads(json.dumps(d))  # tuples -> lists, and checks that it is JSON-able

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        if not isinstance(d, dict) or "net" not in d:
            raise ValueError("TrainConfig.from_dict expects a dict with a 'net' entry")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {sorted(unknown)}")
        net = d["net"]
        if isinstance(net, dict):
            net_names = {f.name for f in dataclasses.fields(nets.UNetConfig)}
            if set(net) - net_names:
                raise ValueError(f"unknown UNetConfig fields {sorted(set(net) - net_names)}")
            net = nets.UNetConfig(**net)
        kw = dict(d, net=net)
        for name in ("image_shape", "focus_times"):
            if name in kw:
                kw[name] = tuple(kw[name])
        return cls(**kw)


@struct.dataclass
class TrainState:
    """Everything a resumed run needs (a pytree; checkpointed as a whole)."""

    step: jax.Array  # int32 scalar: the number of optimiser steps taken
    params: Any
    ema_params: Any
    opt_state: Any


def _base(precond: str) -> str:
    """The base method of a preconditioning: "fdm_vp" -> "vp"; "vp", "edm", "ve" are their own."""
    return precond[4:] if precond.startswith("fdm_") else precond


def _check_precond(precond: str) -> None:
    if precond not in PRECONDS:
        raise ValueError(f"precond must be one of {PRECONDS}, got {precond!r}")


def fdm_scale(sigma, *, m, sigma_min, sigma_max):
    """FDM's critically damped mean scale, the c_in of the fdm_* preconditionings (REFERENCE.md section 6):

        t' = (sigma - sigma_min) / (sigma_max - sigma_min),   B(t') = 0.1 t' + 0.5 * 19.9 t'^2,
        s(sigma) = exp(-m B(t')) (1 + m B(t')).

    s(sigma_min) = 1, s decreases to exp(-10.05 m)(1 + 10.05 m) at sigma_max; no clipping outside the range.
    Elementwise in the dtype of `sigma`.
    """
    sigma = jnp.asarray(sigma)
    tp = (sigma - sigma_min) / (sigma_max - sigma_min)
    mb = m * (0.1 * tp + 0.5 * 19.9 * tp * tp)
    return jnp.exp(-mb) * (1.0 + mb)


def precondition(precond: str, sigma, sigma_data: float = SIGMA_DATA, *, fdm_m: float = 2.0):
    """(c_skip, c_out, c_in, c_noise) with pred = c_skip x + c_out F(c_in x; c_noise), x the base's noised input.

    "edm": `sigma` is EDM's noise level; c_skip = sd^2/(sigma^2+sd^2), c_out = sigma sd/sqrt(sigma^2+sd^2),
      c_in = 1/sqrt(sigma^2+sd^2), c_noise = ln(sigma)/4; pred is the denoised x0.
    "ve": `sigma` is the noise level; (1, sigma, 1, ln(sigma/2)) (Karras et al. 2022, Table 1); pred is x0.
    "vp": `sigma` is the VP time t; the network is a plain noise predictor: (0, 1, 1, t), pred is eps.
    "fdm_<base>": the base's coefficients with c_in = s(sigma) = `fdm_scale` (m = fdm_m, sigma range
      FDM_SIGMA_RANGES[base]) acting on the EDM-scaled input x0 + sigma eps; for "fdm_vp" sigma = sigma_VP(t) =
      sigma_t / alpha_t and, since the VP x is alpha_t (x0 + sigma eps), c_in = s(sigma) / alpha_t.
    """
    _check_precond(precond)
    base = _base(precond)
    level = jnp.asarray(sigma)
    if base == "edm":
        sd2 = sigma_data**2
        s2 = level * level
        c_skip = sd2 / (s2 + sd2)
        c_out = level * sigma_data * jax.lax.rsqrt(s2 + sd2)
        c_in = jax.lax.rsqrt(s2 + sd2)
        c_noise = 0.25 * jnp.log(level)
    elif base == "ve":
        c_skip, c_out, c_in, c_noise = jnp.ones_like(level), level, jnp.ones_like(level), jnp.log(0.5 * level)
    else:  # vp
        c_skip, c_out, c_in, c_noise = jnp.zeros_like(level), jnp.ones_like(level), jnp.ones_like(level), level
    if precond != base:
        lo, hi = FDM_SIGMA_RANGES[base]
        if base == "vp":
            c_in = fdm_scale(_VP.edm_sigma(level), m=fdm_m, sigma_min=lo, sigma_max=hi) * jnp.exp(-_VP.log_alpha(level))
        else:
            c_in = fdm_scale(level, m=fdm_m, sigma_min=lo, sigma_max=hi)
    return c_skip, c_out, c_in, c_noise


def loss_weight(precond: str, sigma, sigma_data: float = SIGMA_DATA):
    """Per-sample loss weight lambda of the base method (before `clamp_cap`): vp 1 (on eps), edm
    (sigma^2 + sd^2) / (sigma sd)^2, ve 1 / sigma^2 (on x0); the fdm_* variants use their base's."""
    _check_precond(precond)
    base = _base(precond)
    level = jnp.asarray(sigma)
    if base == "edm":
        return (level**2 + sigma_data**2) / (level * sigma_data) ** 2
    if base == "ve":
        return 1.0 / (level * level)
    return jnp.ones_like(level)


def clamp_cap(step, warmup: int) -> jax.Array:
    """Cap of the loss weight at optimiser step `step` (>= 0, may be traced) of a warm-up of `warmup` steps:

        cap = 5 * 100^(step / W) for step < W;   +inf for step >= W, and always when W = 0 (off).

    float32 (the training dtype), shape of `step`.
    """
    if not _is_int(warmup) or warmup < 0:
        raise ValueError(f"weight_clamp_warmup must be an int >= 0, got {warmup!r}")
    step = jnp.asarray(step)
    if warmup == 0:
        return jnp.full(step.shape, jnp.inf, _DTYPE)
    frac = step.astype(_DTYPE) / warmup
    return jnp.where(step < warmup, 5.0 * jnp.exp(frac * math.log(100.0)), jnp.inf).astype(_DTYPE)


def noise_schedule(precond: str) -> schedules.NoiseSchedule:
    """The noise schedule a model trained with `precond` is sampled on (the times its `model_from_params`
    expects): vp, fdm_vp `vp_linear()`; edm, fdm_edm `edm()` (sigma in [0.002, 80]); ve, fdm_ve `edm(0.02, 100)`."""
    _check_precond(precond)
    base = _base(precond)
    if base == "vp":
        return schedules.vp_linear()
    if base == "ve":
        return schedules.edm(VE_SIGMA_MIN, VE_SIGMA_MAX)
    return schedules.edm()


def _denoise(precond: str, net: nets.UNetConfig, fdm_m: float, params: Any, x: jax.Array, level: jax.Array):
    """pred = c_skip x + c_out F(c_in x; c_noise) for x [B, ...], level [B] (coefficients in x's dtype)."""

    def bc(v):
        v = jnp.asarray(v).astype(x.dtype)
        return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))

    c_skip, c_out, c_in, c_noise = precondition(precond, level, SIGMA_DATA, fdm_m=fdm_m)
    f = nets.unet_apply_fn(net)(params, bc(c_in) * x, jnp.asarray(c_noise).astype(x.dtype))
    return bc(c_skip) * x + bc(c_out) * f


def ema_decay_at(decay: float, warmup: bool, count: jax.Array) -> float | jax.Array:
    """The EMA decay of update number `count` (0-based, int array): the Python float `decay` without `warmup` (so
    that 1 - decay is formed in float64, as in runs without the option), else min(decay, (1 + n) / (10 + n)) in
    float32."""
    if not warmup:
        return float(decay)
    n = jnp.asarray(count).astype(_DTYPE)
    return jnp.minimum(jnp.asarray(decay, _DTYPE), (1.0 + n) / (10.0 + n))


def lr_schedule(config: TrainConfig):
    """Learning rate at optimiser step `count`: linear warm-up from 0, cosine decay to 0.1 lr at `steps`."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.lr,
        warmup_steps=config.warmup,
        decay_steps=max(config.steps, config.warmup + 1),
        end_value=0.1 * config.lr,
    )

    def lr(count):  # float32 whatever x64 says; optax's schedules mix Python floats and int counts
        with jax.numpy_dtype_promotion("standard"):
            return jnp.asarray(schedule(count), _DTYPE)

    return lr


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then Adam (AdamW when weight_decay > 0) on `lr_schedule(config)`."""
    lr = lr_schedule(config)
    if config.weight_decay > 0:
        opt = optax.adamw(lr, weight_decay=config.weight_decay)
    else:
        opt = optax.adam(lr)
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), opt)


def _keys(config: TrainConfig) -> tuple[jax.Array, jax.Array]:
    """(init key, base key of the per-step randomness)."""
    k_init, k_train = jax.random.split(jax.random.PRNGKey(config.seed))
    return k_init, k_train


def init_state(config: TrainConfig) -> TrainState:
    """Fresh float32 parameters (EMA = parameters), optimiser state and step 0."""
    params = nets.init_unet(config.net, _keys(config)[0], config.image_shape, _DTYPE)
    tx = make_optimizer(config)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=tx.init(params),
    )


def loss_fn(
    config: TrainConfig, params: Any, batch: jax.Array, key: jax.Array, step: jax.Array | int | None = None
) -> jax.Array:
    """Mean diffusion loss of `params` on `batch` [B, H, W, C] (float32), noise levels and noise from `key`.

    `step` (the optimiser step, may be traced) sets the loss-weight cap `clamp_cap(step, W)`; it is required when
    `config.weight_clamp_warmup` W > 0 and ignored otherwise.
    """
    if config.weight_clamp_warmup > 0 and step is None:
        raise ValueError(f"loss_fn: weight_clamp_warmup={config.weight_clamp_warmup} needs the optimiser step")
    batch = jnp.asarray(batch, _DTYPE)
    b = batch.shape[0]
    k_level, k_eps = jax.random.split(key)
    eps = jax.random.normal(k_eps, batch.shape, _DTYPE)

    def bc(v):
        return v.reshape((b,) + (1,) * (batch.ndim - 1))

    k_focus = jax.random.fold_in(key, 7)  # leaves the base levels' stream unchanged

    def focus(level):  # a share focus_prob of the batch takes its level from focus_times
        if not config.focus_times:
            return level
        kf, kp = jax.random.split(k_focus)
        pick = jnp.asarray(config.focus_times, _DTYPE)[jax.random.randint(kf, (b,), 0, len(config.focus_times))]
        return jnp.where(jax.random.uniform(kp, (b,), _DTYPE) < config.focus_prob, pick, level)

    # The fdm_* variants draw exactly their base's levels and noise (same keys); only c_in differs.
    base = _base(config.precond)
    if base == "vp":
        t = focus(jax.random.uniform(k_level, (b,), _DTYPE, minval=T_EPS, maxval=1.0))
        alpha, sigma = jnp.exp(_VP.log_alpha(t)), _VP.sigma(t)
        x = bc(alpha) * batch + bc(sigma) * eps
        level, target = t, eps
    else:
        if base == "edm":
            sigma = jnp.exp(P_MEAN + P_STD * jax.random.normal(k_level, (b,), _DTYPE))
        else:  # ve: ln sigma uniform on [ln VE_SIGMA_MIN, ln VE_SIGMA_MAX]
            u = jax.random.uniform(k_level, (b,), _DTYPE)
            sigma = jnp.exp(math.log(VE_SIGMA_MIN) + u * (math.log(VE_SIGMA_MAX) - math.log(VE_SIGMA_MIN)))
        sigma = focus(sigma)
        x = batch + bc(sigma) * eps
        level, target = sigma, batch
    weight = loss_weight(config.precond, level, SIGMA_DATA)
    if config.weight_clamp_warmup > 0:
        weight = jnp.minimum(weight, clamp_cap(step, config.weight_clamp_warmup))
    pred = _denoise(config.precond, config.net, config.fdm_m, params, x, level)
    per_sample = jnp.mean(jnp.square(pred - target), axis=tuple(range(1, batch.ndim)))
    return jnp.mean(weight * per_sample)


@functools.cache
def _mesh() -> Mesh:
    return Mesh(np.array(jax.devices()), ("data",))


def data_sharding() -> NamedSharding:
    """Sharding of a batch: leading axis split over all devices."""
    return NamedSharding(_mesh(), P("data"))


def replicated_sharding() -> NamedSharding:
    """Sharding of parameters, optimiser state and the data set: a full copy on every device."""
    return NamedSharding(_mesh(), P())


def _check_batch(config: TrainConfig) -> None:
    n = len(jax.devices())
    if config.batch_size % n:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the number of devices ({n})")


@functools.partial(jax.jit, static_argnums=0)
def train_step(config: TrainConfig, state: TrainState, data: jax.Array, key: jax.Array) -> tuple[TrainState, dict]:
    """One optimiser step on a batch drawn from `data` [N, H, W, C] with `fold_in(key, state.step)`.

    Pure (jitted, `config` static). Returns the new state and metrics {"loss", "grad_norm", "lr"}. The batch is
    sharded over the devices' "data" axis; the new parameters and optimiser state are replicated.
    """
    _check_batch(config)
    step_key = jax.random.fold_in(key, state.step)
    k_idx, k_loss = jax.random.split(step_key)
    idx = jax.random.randint(k_idx, (config.batch_size,), 0, data.shape[0], dtype=jnp.int32)
    batch = jax.lax.with_sharding_constraint(jnp.asarray(data, _DTYPE)[idx], data_sharding())
    loss, grads = jax.value_and_grad(loss_fn, argnums=1)(config, state.params, batch, k_loss, state.step)
    tx = make_optimizer(config)
    # optax mixes Python floats with its int32 step count (e.g. Adam's bias correction b1**count), which strict
    # dtype promotion rejects; the results are float32 either way.
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    d = ema_decay_at(config.ema_decay, config.ema_warmup, state.step)
    ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema_params, params)
    rep = replicated_sharding()
    params, ema, opt_state = jax.lax.with_sharding_constraint((params, ema, opt_state), rep)
    new = TrainState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": lr_schedule(config)(state.step)}
    return new, metrics


def _abstract_state(config: TrainConfig) -> TrainState:
    rep = replicated_sharding()
    shapes = jax.eval_shape(functools.partial(init_state, config))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), shapes)


def _checkpoint_manager(ckpt_dir: Path) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        ckpt_dir.resolve(),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True, cleanup_tmp_directories=True),
    )


def restore_state(out_dir, config: TrainConfig, step: int | None = None) -> TrainState:
    """The `TrainState` checkpointed by `train` in `out_dir/ckpt` at `step` (default: the latest)."""
    ckpt_dir = Path(out_dir) / "ckpt"
    if not ckpt_dir.exists():
        raise FileNotFoundError(f"no checkpoints in {ckpt_dir}")
    mngr = _checkpoint_manager(ckpt_dir)
    try:
        step = mngr.latest_step() if step is None else step
        if step is None or step not in mngr.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {ckpt_dir} (have {list(mngr.all_steps())})")
        return mngr.restore(step, args=ocp.args.StandardRestore(_abstract_state(config)))
    finally:
        mngr.close()


def _log_rows(path: Path) -> list[dict]:
    """The JSON lines of a log (a partial last line, from a killed run, is skipped)."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def read_log(out_dir) -> list[tuple[int, float]]:
    """The (step, loss) pairs of `out_dir/log.jsonl` (loss: mean over the steps since the previous line)."""
    return [(int(r["step"]), float(r["loss"])) for r in _log_rows(Path(out_dir) / "log.jsonl")]


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past `step` (written by a run killed after its last checkpoint)."""
    if path.exists():
        path.write_text("".join(json.dumps(r) + "\n" for r in _log_rows(path) if r["step"] <= step))


def train(
    config: TrainConfig,
    data,
    out_dir,
    *,
    resume: bool = False,
    progress: bool = True,
    log_every: int = 50,
    stop_at: int | None = None,
    init_params: Any = None,
) -> TrainState:
    """Train to `config.steps` (or stop after step `stop_at`, as if interrupted there); returns the final state.

    `data`: the training images [N, H, W, C] (values roughly in [-1, 1]), put on device once. Checkpoints of the
    full `TrainState` go to `out_dir/ckpt` every `config.checkpoint_every` steps and at the end (the last 2 are
    kept); `out_dir/config.json` records the config; `out_dir/log.jsonl` gets one line
    {"step", "loss", "images_per_s"} every `log_every` steps (loss averaged over those steps).
    `resume=True` restores the latest checkpoint (a fresh start if there is none) and continues; the result
    equals an uninterrupted run's. `resume=False` refuses a non-empty checkpoint directory. `init_params`
    (fine-tuning) starts from those parameters (EMA too, fresh optimiser state) instead of a fresh initialisation;
    they must have the network's structure and shapes.
    """
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not _is_int(log_every) or log_every < 1:
        raise ValueError(f"log_every must be a positive int, got {log_every!r}")
    end = config.steps if stop_at is None else min(int(stop_at), config.steps)
    _check_batch(config)
    data = np.asarray(data, np.float32)
    if data.ndim != 4 or tuple(data.shape[1:]) != config.image_shape:
        raise ValueError(f"data must have shape [N, *image_shape] = [N, {config.image_shape}], got {data.shape}")
    if data.shape[0] < 1:
        raise ValueError("data is empty")

    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "ckpt"
    log_path = out_dir / "log.jsonl"
    config_path = out_dir / "config.json"
    if not resume and ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        raise ValueError(
            f"checkpoint directory {ckpt_dir} is not empty: pass resume=True to continue that run, "
            f"or choose another out_dir"
        )
    if resume and config_path.exists():
        old = json.loads(config_path.read_text())
        try:  # a run recorded before a field existed has that field's default
            old = TrainConfig.from_dict(old).to_dict()
        except (ValueError, TypeError):
            pass
        new = config.to_dict()
        diff = sorted(k for k in new if k not in ("steps", "checkpoint_every") and old.get(k) != new[k])
        if diff:
            raise ValueError(f"resume: {out_dir} was trained with a different config (fields {diff} differ)")
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(config.to_dict(), indent=2))

    rep = replicated_sharding()
    data_dev = jax.device_put(data, rep)
    key = jax.device_put(_keys(config)[1], rep)
    mngr = _checkpoint_manager(ckpt_dir)
    try:
        latest = mngr.latest_step() if resume else None
        if latest is not None:
            state = mngr.restore(latest, args=ocp.args.StandardRestore(_abstract_state(config)))
        else:
            state = init_state(config)
            if init_params is not None:
                same = jax.tree.structure(state.params) == jax.tree.structure(init_params) and all(
                    tuple(a.shape) == tuple(np.shape(b))
                    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(init_params), strict=True)
                )
                if not same:
                    raise ValueError("init_params do not match the network of config.net (structure or shapes)")
                params = jax.tree.map(lambda a: jnp.asarray(a, _DTYPE), init_params)
                state = TrainState(step=state.step, params=params, ema_params=jax.tree.map(jnp.copy, params),
                                   opt_state=make_optimizer(config).init(params))  # fmt: skip
            state = jax.device_put(state, rep)
        start = int(state.step)
        _truncate_log(log_path, start)

        bar = tqdm(total=config.steps, initial=start, disable=not progress, desc="train", unit="step")
        losses, running, t0, n_window = [], None, time.perf_counter(), 0
        with open(log_path, "a") as log:
            for step in range(start + 1, end + 1):
                state, metrics = train_step(config, state, data_dev, key)
                losses.append(metrics["loss"])
                n_window += 1
                if step % log_every == 0 or step == end:
                    window = float(np.mean(jax.device_get(losses)))
                    dt = time.perf_counter() - t0
                    ips = n_window * config.batch_size / max(dt, 1e-9)
                    running = window if running is None else 0.9 * running + 0.1 * window
                    log.write(json.dumps({"step": step, "loss": window, "images_per_s": ips}) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{running:.4f}", img_s=f"{ips:.0f}")
                    bar.update(n_window)
                    losses, t0, n_window = [], time.perf_counter(), 0
                if step % config.checkpoint_every == 0 or step == end:
                    mngr.save(step, args=ocp.args.StandardSave(state), force=True)
        bar.close()
        mngr.wait_until_finished()
    finally:
        mngr.close()
    return state


def _abstract(tree: Any) -> Any:
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def f(x):
        sharding = getattr(x, "sharding", None) or dev
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(f, tree)


def save_params(path, params: Any) -> None:
    """Save a parameter pytree with orbax to the directory `path` (replaced if it exists)."""
    path = Path(path).resolve()
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, params, force=True)
        ckptr.wait_until_finished()


def load_params(path, like: Any) -> Any:
    """Load parameters saved by `save_params`, bit-exact, with the structure, shapes and dtypes of `like`
    (arrays, or `jax.ShapeDtypeStruct`s e.g. from `jax.eval_shape`)."""
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"no parameters at {path}")
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(path, _abstract(like))


@functools.cache
def _preconditioned_apply_fn(precond: str, net: nets.UNetConfig, fdm_m: float):
    """apply_fn(params, x, t) = the trained network with its preconditioning, at time t of `noise_schedule(precond)`
    (cached: equal arguments give the same function, so samplers do not recompile)."""

    def apply_fn(params: Any, x: jax.Array, t: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        t = jnp.broadcast_to(jnp.asarray(t).astype(x.dtype), x.shape[:1])
        return _denoise(precond, net, fdm_m, params, x, t)

    return apply_fn


def model_from_params(config: TrainConfig, params: Any, latency: float = 1.0, name: str = "") -> Model:
    """An `omsjax.Model` for trained parameters, to be sampled on `noise_schedule(config.precond)`.

    "vp": the raw network, parameterisation "noise"; "edm": the raw network, parameterisation "edm" (sigma_data
    0.5, the preconditioning applied by `Model`); "fdm_vp": the network with its c_in = s(sigma_VP(t)) / alpha_t,
    "noise"; "ve", "fdm_edm", "fdm_ve": the denoiser D(x; sigma = t) with the training preconditioning, "data"
    (t is the noise level sigma of an EDM-type schedule, alpha = 1).
    """
    precond = config.precond
    if precond == "vp":
        apply_fn, parameterization = nets.unet_apply_fn(config.net), "noise"
    elif precond == "edm":
        apply_fn, parameterization = nets.unet_apply_fn(config.net), "edm"
    else:
        apply_fn = _preconditioned_apply_fn(precond, config.net, config.fdm_m)
        parameterization = "noise" if _base(precond) == "vp" else "data"
    return Model(
        apply_fn=apply_fn,
        params=params,
        parameterization=parameterization,
        latency=latency,
        sigma_data=SIGMA_DATA,
        name=name,
    )
