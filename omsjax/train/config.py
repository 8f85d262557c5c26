"""`TrainConfig`: the hyperparameters of a U-Net training run, validated on the host, with a JSON round trip."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from omsjax import checks, nets
from omsjax.precond import PRECONDS, base_of

__all__ = ["OptimConfig", "TrainConfig", "DTYPE"]

DTYPE = jnp.float32  # training runs in float32 whatever `jax_enable_x64` says


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """The fields every training config shares, declared and checked once: the optimiser, the EMA, the seed, the
    checkpoint interval and the image shape. `TrainConfig` and `omsjax.stages.StageTrainConfig` extend it (the
    fields are keyword-only) with their network `net`, a `nets.UNetLayout`, checked first; each error names the
    field.

    Attributes:
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
      checkpoint_every: the run saves a checkpoint every this many steps (and at the end).
      image_shape: (H, W, C) of the training images; H and W multiples of the network's `spatial_divisor`.
    """

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

    def __post_init__(self):
        # Normalise numeric types so that equal configs hash equally (and JSON round trips are exact).
        def _set(name, value):
            object.__setattr__(self, name, value)

        for name in ("batch_size", "checkpoint_every"):
            _set(name, checks.positive_int(name, getattr(self, name)))
        _set("warmup", checks.nonneg_int("warmup", self.warmup))
        _set("seed", checks.integer("seed", self.seed))
        _set("lr", checks.real("lr", self.lr, gt=0))
        _set("grad_clip", checks.real("grad_clip", self.grad_clip, gt=0))
        _set("weight_decay", checks.real("weight_decay", self.weight_decay, ge=0))
        _set("ema_decay", checks.real("ema_decay", self.ema_decay, ge=0, lt=1))
        _set("ema_warmup", checks.boolean("ema_warmup", self.ema_warmup))
        shape = checks.image_shape("image_shape", self.image_shape)
        _set("image_shape", shape)
        net = self.net  # every training config's network, a `nets.UNetLayout`, sets the images' divisor
        d = net.spatial_divisor
        if shape[0] % d or shape[1] % d:
            raise ValueError(
                f"image_shape {shape}: H and W must be divisible by {d} for channel_mults={net.channel_mults}"
            )


@dataclasses.dataclass(frozen=True)
class TrainConfig(OptimConfig):
    """Hyperparameters of a training run (hashable; a static argument of `train_step`).

    Attributes:
      net: the `UNetConfig` of the network.
      steps: total optimiser steps.
      precond: "vp" (continuous linear VP, noise prediction), "edm" (EDM preconditioning), "ve" (EDM's VE
        preconditioning) or "fdm_edm" / "fdm_vp" / "fdm_ve" (Fast Diffusion Model: the base with c_in = s(sigma)).
      batch_size, lr, warmup, grad_clip, weight_decay, ema_decay, ema_warmup, seed, checkpoint_every,
        image_shape: `OptimConfig`'s (keyword-only).
      focus_times: noise levels to weight the loss toward (VP times t; EDM / VE sigmas): fine-tuning on a sampler's
        steps (`omsjax.workflows.timesteps_run.finetune`). Empty: none.
      focus_prob: the share of each batch whose noise level is drawn uniformly from `focus_times` (the rest from the
        base distribution).
      fdm_m: FDM's damping m in s(sigma) = exp(-m B)(1 + m B) (2 by default, 1 in some of the paper's FFHQ runs);
        used by the fdm_* preconditionings only.
      weight_clamp_warmup: W: for optimiser steps < W the per-sample loss weight is min(weight, 5 * 100^(step / W));
        0 turns the clamp off.
      label_dropout: a class-conditional net (`net.num_classes` K > 0): the probability that a training image's
        label is replaced by the null label K, so that one network learns the conditional and the unconditional
        model (classifier-free guidance). Ignored when K = 0.
    """

    net: nets.UNetConfig
    steps: int
    precond: str = "vp"
    focus_times: tuple = ()
    focus_prob: float = 0.0
    fdm_m: float = 2.0
    weight_clamp_warmup: int = 0
    label_dropout: float = 0.1

    def __post_init__(self):
        if not isinstance(self.net, nets.UNetConfig):
            raise ValueError(f"net must be an omsjax.nets.UNetConfig, got {type(self.net).__name__}")
        if self.precond not in PRECONDS:
            raise ValueError(f"precond must be one of {PRECONDS}, got {self.precond!r}")

        # Normalise numeric types so that equal configs hash equally (and JSON round trips are exact).
        def _set(name, value):
            object.__setattr__(self, name, value)

        object.__setattr__(self, "steps", checks.positive_int("steps", self.steps))
        super().__post_init__()
        focus = self.focus_times
        if not isinstance(focus, (tuple, list)) or not all(checks.is_real(v) and v > 0 for v in focus):
            raise ValueError(f"focus_times must be a sequence of finite noise levels > 0, got {focus!r}")
        _set("focus_times", tuple(float(v) for v in focus))
        _set("focus_prob", checks.real("focus_prob", self.focus_prob, ge=0, le=1))
        if self.focus_prob > 0 and not self.focus_times:
            raise ValueError("focus_prob > 0 needs focus_times")
        if base_of(self.precond) == "vp" and any(v > 1 for v in self.focus_times):
            raise ValueError(f"{self.precond} focus_times are times in (0, 1], got {self.focus_times}")
        _set("fdm_m", checks.real("fdm_m", self.fdm_m, gt=0))
        _set("weight_clamp_warmup", checks.nonneg_int("weight_clamp_warmup", self.weight_clamp_warmup))
        _set("label_dropout", checks.real("label_dropout", self.label_dropout, ge=0, lt=1))

    def to_dict(self) -> dict:
        """JSON-friendly dict (the net config nested, tuples as lists)."""
        return checks.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        if not isinstance(d, dict) or "net" not in d:
            raise ValueError("TrainConfig.from_dict expects a dict with a 'net' entry")
        return checks.from_dict(cls, d, nested={"net": nets.UNetConfig}, tuples=("image_shape", "focus_times"))
