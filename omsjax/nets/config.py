"""`UNetLayout` (the levels and blocks of a U-Net) and `UNetConfig` (a `UNet`'s hyperparameters), checked on the
host."""

from __future__ import annotations

import dataclasses

from omsjax.fields import count, real

__all__ = ["UNetLayout", "UNetConfig"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class UNetLayout:
    """The levels and blocks of a U-Net, shared by `UNetConfig` and the multi-decoder network's
    `omsjax.stages.MultiStageConfig` (declared and checked once; keyword-only).

    Attributes:
      channel_mults: width multiplier per resolution level; there are len(channel_mults) - 1 downsamplings.
      num_res_blocks: ResBlocks per level in the encoder (the decoder has one more per level).
      attention_levels: indices of the resolution levels that get a self-attention block after each ResBlock
        (the middle block gets one if the last level is listed).
      out_channels: output channels (None: same as the input).
      time_embed_dim: width of the time-embedding MLP (None: 4 * the base width).
      time_scale: t is multiplied by this before the sinusoidal embedding.
      groups: GroupNorm groups, clipped to the largest divisor of each layer's width that does not exceed it.
    """

    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = ()
    out_channels: int | None = None
    time_embed_dim: int | None = None
    time_scale: float = 1000.0
    groups: int = 8

    def __post_init__(self):
        # Accept lists for the tuple fields, but store tuples so that the config stays hashable.
        for name in ("channel_mults", "attention_levels"):
            if not isinstance(getattr(self, name), (tuple, list)):
                raise ValueError(f"{name} must be a sequence of ints, got {getattr(self, name)!r}")
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.channel_mults) == 0:
            raise ValueError("channel_mults must be non-empty")
        # Store Python ints (a numpy int is accepted), so that the config hashes and round-trips through JSON.
        mults = tuple(count(f"channel_mults[{i}]", m) for i, m in enumerate(self.channel_mults))
        object.__setattr__(self, "channel_mults", mults)
        object.__setattr__(self, "num_res_blocks", count("num_res_blocks", self.num_res_blocks))
        n = len(self.channel_mults)
        levels = tuple(count(f"attention_levels[{i}]", v, 0) for i, v in enumerate(self.attention_levels))
        for level in levels:
            if level >= n:
                raise ValueError(
                    f"attention_levels entry {level!r} is out of range: levels are 0..{n - 1} "
                    f"(one per channel_mults entry)"
                )
        object.__setattr__(self, "attention_levels", levels)
        for name in ("out_channels", "time_embed_dim"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, count(name, getattr(self, name)))
        real("time_scale", self.time_scale)
        object.__setattr__(self, "groups", count("groups", self.groups))

    @property
    def num_levels(self) -> int:
        return len(self.channel_mults)

    @property
    def spatial_divisor(self) -> int:
        """H and W must be multiples of this."""
        return 2 ** (len(self.channel_mults) - 1)


@dataclasses.dataclass(frozen=True)
class UNetConfig(UNetLayout):
    """Hyperparameters of a `UNet` (hashable, so it can key caches and be a static argument).

    Attributes:
      channels: base width; level i has width channels * channel_mults[i].
      num_classes: K > 0: class-conditional on labels 0..K-1, K being the null label; 0: unconditional (no class
        embedding parameters, so an unconditional network is unchanged by this field).
      channel_mults, num_res_blocks, attention_levels, out_channels, time_embed_dim, time_scale, groups:
        `UNetLayout`'s (keyword-only).
    """

    channels: int = 32
    num_classes: int = 0

    def __post_init__(self):
        object.__setattr__(self, "channels", count("channels", self.channels))
        super().__post_init__()
        object.__setattr__(self, "num_classes", count("num_classes", self.num_classes, 0))  # 0: unconditional
