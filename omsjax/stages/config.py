"""The multi-stage configs: `MultiStageConfig` (the multi-decoder U-Net) and `StageTrainConfig` (its training run),
validated on the host (`omsjax.config`'s field checks, shared with `train.TrainConfig`), with JSON round trips."""

from __future__ import annotations

import dataclasses
import itertools
import math

from omsjax import config as _cfg
from omsjax import nets
from omsjax.precond import T_EPS
from omsjax.train.config import check_training_fields

__all__ = ["MultiStageConfig", "StageTrainConfig"]


def _positive_ints(name: str, values, *, allow_empty: bool = False) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or (not values and not allow_empty):
        raise ValueError(
            f"{name} must be a {'' if allow_empty else 'non-empty '}sequence of positive ints, got {values!r}"
        )
    for v in values:
        if not _cfg.is_int(v) or v <= 0:
            raise ValueError(f"{name} entries must be positive ints, got {values!r}")
    return tuple(int(v) for v in values)


@dataclasses.dataclass(frozen=True)
class MultiStageConfig:
    """Hyperparameters of a multi-decoder U-Net (hashable: a static argument of jitted functions).

    Attributes:
      boundaries: K - 1 strictly increasing VP times in (0, 1) splitting (0, 1] into K stages (stage k:
        b_{k-1} < t <= b_k). Empty: one stage (a plain U-Net with a shared/own split).
      decoder_channels: K base widths, one decoder per stage, stage 0 (near data) first; decoder k's level i has
        width decoder_channels[k] * channel_mults[i].
      encoder_channels: base width of the shared encoder (level i: encoder_channels * channel_mults[i]).
      channel_mults, num_res_blocks, attention_levels, out_channels, time_embed_dim, time_scale, groups: as in
        `nets.UNetConfig` (shared by the encoder and every decoder; time_embed_dim None: 4 * encoder_channels).
    """

    boundaries: tuple[float, ...]
    decoder_channels: tuple[int, ...]
    encoder_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = ()
    out_channels: int | None = None
    time_embed_dim: int | None = None
    time_scale: float = 1000.0
    groups: int = 8

    def __post_init__(self):
        b = self.boundaries
        if not isinstance(b, (tuple, list)) or not all(_cfg.is_real(v) for v in b):
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
        _cfg.positive_int("encoder_channels", self.encoder_channels)
        object.__setattr__(self, "channel_mults", _positive_ints("channel_mults", self.channel_mults))
        attn = self.attention_levels
        if not isinstance(attn, (tuple, list)):
            raise ValueError(f"attention_levels must be a sequence of level indices, got {attn!r}")
        object.__setattr__(self, "attention_levels", tuple(attn))
        object.__setattr__(self, "time_scale", _cfg.real("time_scale", self.time_scale))
        self.unet_config()  # validates the remaining fields with nets.UNetConfig's checks

    @property
    def num_stages(self) -> int:
        return len(self.decoder_channels)

    def unet_config(self, width: int | None = None) -> nets.UNetConfig:
        """The `nets.UNetConfig` with base width `width` (None: the encoder's) and this config's other fields."""
        return nets.UNetConfig(
            channels=self.encoder_channels if width is None else width,
            channel_mults=self.channel_mults,
            num_res_blocks=self.num_res_blocks,
            attention_levels=self.attention_levels,
            out_channels=self.out_channels,
            time_embed_dim=self.time_embed_dim or 4 * self.encoder_channels,
            time_scale=self.time_scale,
            groups=self.groups,
        )

    def to_dict(self) -> dict:
        return _cfg.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MultiStageConfig:
        return _cfg.from_dict(cls, d)


@dataclasses.dataclass(frozen=True)
class StageTrainConfig:
    """Hyperparameters of a multi-stage training run (hashable; the static argument of `train_step`).

    Continuous linear VP, noise prediction, float32 (as `train.TrainConfig` with precond "vp").

    Attributes:
      net: the `MultiStageConfig`.
      steps, batch_size, lr, warmup, grad_clip, weight_decay, ema_decay, ema_warmup, seed, image_shape: as in
        `train.TrainConfig` (same learning-rate schedule `train.lr_schedule`, as a function of the global step;
        the EMA warm-up counts each group's own updates, the encoder's every step, a decoder's its stage's).
      stage_probs: probability of training each stage in a step; empty: proportional to the length of its time
        interval within (train.T_EPS, 1], so that t is marginally U(T_EPS, 1) as for a unified network.
      checkpoint_every: `run_training` saves the full training state every this many steps (and at the end).
    """

    net: MultiStageConfig
    steps: int
    batch_size: int = 128
    lr: float = 2e-3
    warmup: int = 200
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    ema_warmup: bool = False
    seed: int = 0
    image_shape: tuple = (8, 8, 1)
    stage_probs: tuple = ()
    checkpoint_every: int = 1000

    def __post_init__(self):
        if not isinstance(self.net, MultiStageConfig):
            raise ValueError(f"net must be a MultiStageConfig, got {type(self.net).__name__}")
        if self.net.boundaries and self.net.boundaries[0] <= T_EPS:
            raise ValueError(
                f"net.boundaries must exceed the smallest training time {T_EPS}, got {self.net.boundaries}"
            )

        def _set(name, value):
            object.__setattr__(self, name, value)

        check_training_fields(self, ("steps", "batch_size", "checkpoint_every"), self.net.unet_config().spatial_divisor)
        p = self.stage_probs
        if not isinstance(p, (tuple, list)) or not all(_cfg.is_real(v) and v >= 0 for v in p):
            raise ValueError(f"stage_probs must be a sequence of numbers >= 0, got {p!r}")
        if p and (len(p) != self.net.num_stages or not math.isclose(sum(p), 1.0, abs_tol=1e-9)):
            raise ValueError(f"stage_probs must have {self.net.num_stages} entries summing to 1, got {p!r}")
        _set("stage_probs", tuple(float(v) for v in p))

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
        return _cfg.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StageTrainConfig:
        if not isinstance(d, dict) or not isinstance(d.get("net"), dict):
            raise ValueError("StageTrainConfig.from_dict expects a dict with a 'net' dict")
        return _cfg.from_dict(cls, d, nested={"net": MultiStageConfig})
