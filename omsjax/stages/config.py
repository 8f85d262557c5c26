"""The multi-stage configs: `MultiStageConfig` (the multi-decoder U-Net) and `StageTrainConfig` (its training run),
validated on the host (`omsjax.checks`' field checks, shared with `train.TrainConfig`), with JSON round trips."""

from __future__ import annotations

import dataclasses
import itertools
import math

from omsjax import checks, nets
from omsjax.precond import T_EPS
from omsjax.train.config import OptimConfig

__all__ = ["MultiStageConfig", "StageTrainConfig"]


def _positive_ints(name: str, values) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or not values:
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {values!r}")
    return tuple(checks.count(f"{name}[{i}]", v) for i, v in enumerate(values))


@dataclasses.dataclass(frozen=True)
class MultiStageConfig(nets.UNetLayout):
    """Hyperparameters of a multi-decoder U-Net (hashable: a static argument of jitted functions).

    Attributes:
      boundaries: K - 1 strictly increasing VP times in (0, 1) splitting (0, 1] into K stages (stage k:
        b_{k-1} < t <= b_k). Empty: one stage (a plain U-Net with a shared/own split).
      decoder_channels: K base widths, one decoder per stage, stage 0 (near data) first; decoder k's level i has
        width decoder_channels[k] * channel_mults[i].
      encoder_channels: base width of the shared encoder (level i: encoder_channels * channel_mults[i]).
      channel_mults, num_res_blocks, attention_levels, out_channels, time_embed_dim, time_scale, groups:
        `nets.UNetLayout`'s (keyword-only), shared by the encoder and every decoder (time_embed_dim None:
        4 * encoder_channels).
    """

    boundaries: tuple[float, ...]
    decoder_channels: tuple[int, ...]
    encoder_channels: int = 32

    def __post_init__(self):
        b = self.boundaries
        if not isinstance(b, (tuple, list)) or not all(checks.is_real(v) for v in b):
            raise ValueError(f"boundaries must be a sequence of finite times, got {b!r}")
        b = tuple(float(v) for v in b)
        if any(not 0 < v < 1 for v in b) or any(x >= y for x, y in itertools.pairwise(b)):
            raise ValueError(f"boundaries must be strictly increasing times in (0, 1), got {b}")
        object.__setattr__(self, "boundaries", b)
        dec = _positive_ints("decoder_channels", self.decoder_channels)
        if len(dec) != len(b) + 1:
            raise ValueError(
                f"decoder_channels needs one width per stage: {len(b) + 1} stages for {len(b)} boundaries, got "
                f"{len(dec)} widths"
            )
        object.__setattr__(self, "decoder_channels", dec)
        checks.positive_int("encoder_channels", self.encoder_channels)
        super().__post_init__()

    @property
    def num_stages(self) -> int:
        return len(self.decoder_channels)

    def unet_config(self, width: int | None = None) -> nets.UNetConfig:
        """The `nets.UNetConfig` with base width `width` (None: the encoder's) and this config's other fields."""
        layout = {f.name: getattr(self, f.name) for f in dataclasses.fields(nets.UNetLayout)}
        layout["time_embed_dim"] = self.time_embed_dim or 4 * self.encoder_channels
        return nets.UNetConfig(channels=self.encoder_channels if width is None else width, **layout)

    def to_dict(self) -> dict:
        return checks.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MultiStageConfig:
        return checks.from_dict(cls, d)


@dataclasses.dataclass(frozen=True)
class StageTrainConfig(OptimConfig):
    """Hyperparameters of a multi-stage training run (hashable; the static argument of `train_step`).

    Continuous linear VP, noise prediction, float32 (as `train.TrainConfig` with precond "vp").

    Attributes:
      net: the `MultiStageConfig`.
      steps: total optimiser steps.
      batch_size, lr, warmup, grad_clip, weight_decay, ema_decay, ema_warmup, seed, checkpoint_every,
        image_shape: `train.OptimConfig`'s (keyword-only; the same learning-rate schedule `train.lr_schedule`, as
        a function of the global step; the EMA warm-up counts each group's own updates, the encoder's every step,
        a decoder's its stage's; `run_training` saves the full training state every `checkpoint_every` steps).
      stage_probs: probability of training each stage in a step; empty: proportional to the length of its time
        interval within (train.T_EPS, 1], so that t is marginally U(T_EPS, 1) as for a unified network.
    """

    net: MultiStageConfig
    steps: int
    stage_probs: tuple = ()

    def __post_init__(self):
        if not isinstance(self.net, MultiStageConfig):
            raise ValueError(f"net must be a MultiStageConfig, got {type(self.net).__name__}")
        if self.net.boundaries and self.net.boundaries[0] <= T_EPS:
            raise ValueError(
                f"net.boundaries must exceed the smallest training time {T_EPS}, got {self.net.boundaries}"
            )

        object.__setattr__(self, "steps", checks.positive_int("steps", self.steps))
        super().__post_init__()
        p = self.stage_probs
        if not isinstance(p, (tuple, list)) or not all(checks.is_real(v) and v >= 0 for v in p):
            raise ValueError(f"stage_probs must be a sequence of numbers >= 0, got {p!r}")
        if p and (len(p) != self.net.num_stages or not math.isclose(sum(p), 1.0, abs_tol=1e-9)):
            raise ValueError(f"stage_probs must have {self.net.num_stages} entries summing to 1, got {p!r}")
        object.__setattr__(self, "stage_probs", tuple(float(v) for v in p))

    @property
    def edges(self) -> tuple[float, ...]:
        """The K + 1 edges (T_EPS, b_1, ..., b_{K-1}, 1) of the stages' training intervals."""
        return (T_EPS, *self.net.boundaries, 1.0)

    @property
    def probs(self) -> tuple[float, ...]:
        """The probability of each stage per step (`stage_probs`, or proportional to the interval lengths)."""
        if self.stage_probs:
            return self.stage_probs
        e = self.edges
        return tuple((b - a) / (e[-1] - e[0]) for a, b in itertools.pairwise(e))

    def to_dict(self) -> dict:
        return checks.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StageTrainConfig:
        if not isinstance(d, dict) or not isinstance(d.get("net"), dict):
            raise ValueError("StageTrainConfig.from_dict expects a dict with a 'net' dict")
        return checks.from_dict(cls, d, nested={"net": MultiStageConfig})
