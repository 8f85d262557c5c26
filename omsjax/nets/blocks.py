"""The U-Net's blocks (GroupNorm, ResBlock, single-head attention, the sinusoidal time embedding) and its parts:
the input check, the time-embedding MLP, the down path with the middle block, the up path with the output head.
`nets.UNet` and the multi-decoder network of `omsjax.stages` are built from them."""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from omsjax.nets.config import UNetConfig

__all__ = [
    "GroupNorm",
    "ResBlock",
    "AttentionBlock",
    "sinusoidal_embedding",
    "check_input",
    "time_embedding",
    "down_path",
    "up_path",
]


def _num_groups(groups: int, width: int) -> int:
    """Largest divisor of `width` that is at most `groups`."""
    return max(g for g in range(1, min(groups, width) + 1) if width % g == 0)


class GroupNorm(nn.Module):
    """GroupNorm over the channels of NHWC inputs, with learned per-channel `scale` and `bias`.

    Uses the largest number of groups that divides the channel count and does not exceed `groups`. Statistics
    are computed in the input's dtype (flax's `nn.GroupNorm` promotes them to float32, which strict dtype
    promotion rejects for float64), in one jitted function (a single dispatch when run op by op).
    """

    groups: int
    dtype: Any
    param_dtype: Any
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        x, scale, bias = (jnp.asarray(a, self.dtype) for a in (x, scale, bias))
        return _group_normalize(x, scale, bias, _num_groups(self.groups, c), self.epsilon)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _group_normalize(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, eps: float) -> jax.Array:
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, groups, c // groups)
    mean = jnp.mean(g, axis=(1, 2, 4), keepdims=True)
    var = jnp.mean(jnp.square(g - mean), axis=(1, 2, 4), keepdims=True)
    g = (g - mean) * jax.lax.rsqrt(var + eps)
    return g.reshape(x.shape) * scale + bias


def sinusoidal_embedding(t: jax.Array, dim: int) -> jax.Array:
    """Transformer-style sinusoidal embedding of t [B] -> [B, 2 * (dim // 2)] (at least 2 features)."""
    half = max(dim // 2, 1)
    freqs = jnp.exp(jnp.arange(half, dtype=t.dtype) * (-math.log(10000.0) / half))
    args = t[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, 3x3 conv, + time projection, GroupNorm, SiLU, 3x3 conv; 1x1 skip if the width changes.

    Input [B, H, W, C_in] and time embedding [B, E] -> [B, H, W, features].
    """

    features: int
    groups: int
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = GroupNorm(self.groups, **kw)(x)
        h = nn.Conv(self.features, (3, 3), **kw)(nn.silu(h))
        h = h + nn.Dense(self.features, **kw)(nn.silu(emb))[:, None, None, :]
        h = GroupNorm(self.groups, **kw)(h)
        h = nn.Conv(self.features, (3, 3), **kw)(nn.silu(h))
        if x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), name="skip", **kw)(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with GroupNorm before and a residual connection."""

    groups: int
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, h, w, c = x.shape
        y = GroupNorm(self.groups, **kw)(x).reshape(b, h * w, c)
        q, k, v = jnp.split(nn.Dense(3 * c, name="qkv", **kw)(y), 3, axis=-1)
        weights = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k) * (1.0 / math.sqrt(c)), axis=-1)
        y = nn.Dense(c, name="proj", **kw)(jnp.einsum("bqk,bkc->bqc", weights, v))
        return x + y.reshape(b, h, w, c)


# The U-Net's parts, shared by `UNet` and the multi-decoder network of `omsjax.stages`. Each creates its layers in
# the calling module (call it inside an `nn.compact` method), so their parameters keep `UNet`'s flat names;
# `kw` holds the layers' dtype and param_dtype.


def check_input(config: UNetConfig, x, t) -> tuple[jax.Array, jax.Array]:
    """(x, t) checked: x a floating-point [B, H, W, C] whose H and W are multiples of `config.spatial_divisor`;
    t [B] or a scalar (broadcast), cast to x's dtype."""
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must have shape [B, H, W, C] (NHWC), got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a floating-point array, got dtype {x.dtype}")
    batch, height, width, _ = x.shape
    d = config.spatial_divisor
    if height % d or width % d:
        raise ValueError(
            f"spatial size {height}x{width} must be divisible by 2**(len(channel_mults) - 1) = {d} "
            f"for channel_mults={config.channel_mults}"
        )
    t = jnp.asarray(t)
    if t.ndim == 0:
        t = jnp.broadcast_to(t, (batch,))
    if t.shape != (batch,):
        raise ValueError(f"t must have shape [B] = ({batch},) or be a scalar, got shape {t.shape}")
    return x, t.astype(x.dtype)


def time_embedding(cfg: UNetConfig, t: jax.Array, kw: dict) -> jax.Array:
    """The time embedding [B, time_embed_dim]: sinusoidal features of t * time_scale through a 2-layer MLP."""
    dim = cfg.time_embed_dim or 4 * cfg.channels
    emb = sinusoidal_embedding(t * cfg.time_scale, cfg.channels)
    emb = nn.Dense(dim, name="time_dense_0", **kw)(emb)
    return nn.Dense(dim, name="time_dense_1", **kw)(nn.silu(emb))


def down_path(cfg: UNetConfig, x: jax.Array, emb: jax.Array, kw: dict) -> tuple[jax.Array, tuple]:
    """The input conv, the down path and the middle block: (h, the skip activations for `up_path`)."""
    h = nn.Conv(cfg.channels, (3, 3), name="conv_in", **kw)(x)
    skips = [h]
    last = cfg.num_levels - 1
    for level, mult in enumerate(cfg.channel_mults):
        for i in range(cfg.num_res_blocks):
            h = ResBlock(cfg.channels * mult, cfg.groups, name=f"down_{level}_res_{i}", **kw)(h, emb)
            if level in cfg.attention_levels:
                h = AttentionBlock(cfg.groups, name=f"down_{level}_attn_{i}", **kw)(h)
            skips.append(h)
        if level != last:
            h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), name=f"down_{level}_downsample", **kw)(h)
            skips.append(h)
    h = ResBlock(h.shape[-1], cfg.groups, name="mid_res_0", **kw)(h, emb)
    if last in cfg.attention_levels:
        h = AttentionBlock(cfg.groups, name="mid_attn", **kw)(h)
    h = ResBlock(h.shape[-1], cfg.groups, name="mid_res_1", **kw)(h, emb)
    return h, tuple(skips)


def up_path(cfg: UNetConfig, h: jax.Array, skips: tuple, emb: jax.Array, out_channels: int, kw: dict) -> jax.Array:
    """The up path (concatenating `down_path`'s skips; nearest-neighbour 2x upsampling + 3x3 conv) and the output
    head: GroupNorm, SiLU and a zero-initialised 3x3 conv, so that an untrained network outputs exactly 0."""
    skips = list(skips)
    for level in reversed(range(cfg.num_levels)):
        for i in range(cfg.num_res_blocks + 1):
            h = jnp.concatenate([h, skips.pop()], axis=-1)
            h = ResBlock(cfg.channels * cfg.channel_mults[level], cfg.groups, name=f"up_{level}_res_{i}", **kw)(h, emb)
            if level in cfg.attention_levels:
                h = AttentionBlock(cfg.groups, name=f"up_{level}_attn_{i}", **kw)(h)
        if level != 0:
            h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
            h = nn.Conv(h.shape[-1], (3, 3), name=f"up_{level}_upsample", **kw)(h)
    if skips:
        raise ValueError(f"up_path: {len(skips)} skip activations left over (not down_path's)")
    h = nn.silu(GroupNorm(cfg.groups, name="norm_out", **kw)(h))
    zeros = nn.initializers.zeros
    return nn.Conv(out_channels, (3, 3), kernel_init=zeros, bias_init=zeros, name="conv_out", **kw)(h)
