"""A small Flax linen U-Net family for diffusion models on small images.

`UNet(config)(x, t)` maps a noisy image batch `x` of shape [B, H, W, C] (NHWC) and a continuous time `t`
of shape [B] (or a scalar, broadcast over the batch) to an output of shape [B, H, W, out_channels] (by
default C), e.g. a noise prediction. `t` (or EDM's c_noise) is multiplied by `config.time_scale` before the
sinusoidal embedding. A class-conditional network (`config.num_classes` K > 0) also takes labels `y` int[B] in
0..K, where K is the null label (unconditional: classifier-free guidance's second call); `y` None means all null.

Architecture (DDPM-style): sinusoidal time embedding -> MLP (plus a learned class embedding, K + 1 rows, when
conditional); a 3x3 input conv; per resolution level
`num_res_blocks` ResBlocks (GroupNorm, SiLU, 3x3 conv, + projected time embedding, GroupNorm, SiLU, 3x3 conv,
1x1 skip conv when the width changes), optionally followed by single-head self-attention; stride-2 conv
downsampling between levels; a middle ResBlock / (attention) / ResBlock; a mirrored decoder that concatenates
the encoder activations and upsamples by nearest-neighbour resize + 3x3 conv; and a final GroupNorm, SiLU and
zero-initialised 3x3 conv, so that an untrained network outputs exactly 0. H and W must be divisible by
2**(len(channel_mults) - 1).

Computation follows the input's dtype (float32 or float64); `unet_apply_fn` casts the parameters to it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["UNetConfig", "UNet", "init_unet", "unet_apply_fn", "param_count"]


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Hyperparameters of a `UNet` (hashable, so it can key caches and be a static argument).

    Attributes:
      channels: base width; level i has width channels * channel_mults[i].
      channel_mults: width multiplier per resolution level; there are len(channel_mults) - 1 downsamplings.
      num_res_blocks: ResBlocks per level in the encoder (the decoder has one more per level).
      attention_levels: indices of the resolution levels that get a self-attention block after each ResBlock
        (the middle block gets one if the last level is listed).
      out_channels: output channels (None: same as the input).
      time_embed_dim: width of the time-embedding MLP (None: 4 * channels).
      time_scale: t is multiplied by this before the sinusoidal embedding.
      groups: GroupNorm groups, clipped to the largest divisor of each layer's width that does not exceed it.
      num_classes: K > 0: class-conditional on labels 0..K-1, K being the null label; 0: unconditional (no class
        embedding parameters, so an unconditional network is unchanged by this field).
    """

    channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = ()
    out_channels: int | None = None
    time_embed_dim: int | None = None
    time_scale: float = 1000.0
    groups: int = 8
    num_classes: int = 0

    def __post_init__(self):
        # Accept lists for the tuple fields, but store tuples so that the config stays hashable.
        object.__setattr__(self, "channel_mults", tuple(self.channel_mults))
        object.__setattr__(self, "attention_levels", tuple(self.attention_levels))
        _check_positive_int("channels", self.channels)
        if len(self.channel_mults) == 0:
            raise ValueError("channel_mults must be non-empty")
        for m in self.channel_mults:
            _check_positive_int("channel_mults entries", m)
        _check_positive_int("num_res_blocks", self.num_res_blocks)
        n = len(self.channel_mults)
        for level in self.attention_levels:
            if not isinstance(level, int) or isinstance(level, bool) or not 0 <= level < n:
                raise ValueError(
                    f"attention_levels entry {level!r} is out of range: levels are 0..{n - 1} "
                    f"(one per channel_mults entry)"
                )
        if self.out_channels is not None:
            _check_positive_int("out_channels", self.out_channels)
        if self.time_embed_dim is not None:
            _check_positive_int("time_embed_dim", self.time_embed_dim)
        if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) or self.num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0 (0: unconditional), got {self.num_classes!r}")
        if not (isinstance(self.time_scale, numbers.Real) and math.isfinite(self.time_scale)):
            raise ValueError(f"time_scale must be a finite number, got {self.time_scale!r}")
        _check_positive_int("groups", self.groups)

    @property
    def num_levels(self) -> int:
        return len(self.channel_mults)

    @property
    def spatial_divisor(self) -> int:
        """H and W must be multiples of this."""
        return 2 ** (len(self.channel_mults) - 1)


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


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


class UNet(nn.Module):
    """U-Net `(x [B, H, W, C], t [B], y int[B] | None) -> [B, H, W, out_channels]`; see the module docstring.

    Attributes:
      config: the `UNetConfig`.
      param_dtype: dtype of newly created parameters (None: the input's dtype). Computation always runs in
        the input's dtype; when applying the module directly, pass parameters of that dtype (`unet_apply_fn`
        casts them).
    """

    config: UNetConfig
    param_dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        x = jnp.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"x must have shape [B, H, W, C] (NHWC), got shape {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"x must be a floating-point array, got dtype {x.dtype}")
        batch, height, width, in_channels = x.shape
        d = cfg.spatial_divisor
        if height % d or width % d:
            raise ValueError(
                f"spatial size {height}x{width} must be divisible by 2**(len(channel_mults) - 1) = {d} "
                f"for channel_mults={cfg.channel_mults}"
            )
        t = jnp.asarray(t)
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (batch,))
        if t.shape != (batch,):
            raise ValueError(f"t must have shape [B] = ({batch},) or be a scalar, got shape {t.shape}")

        dtype = x.dtype
        kw = dict(dtype=dtype, param_dtype=self.param_dtype or dtype)
        groups = cfg.groups
        emb_dim = cfg.time_embed_dim or 4 * cfg.channels

        # Time embedding.
        emb = sinusoidal_embedding(t.astype(dtype) * cfg.time_scale, cfg.channels)
        emb = nn.Dense(emb_dim, name="time_dense_0", **kw)(emb)
        emb = nn.Dense(emb_dim, name="time_dense_1", **kw)(nn.silu(emb))
        if cfg.num_classes:
            y = _labels(y, batch, cfg.num_classes)
            emb = emb + nn.Embed(cfg.num_classes + 1, emb_dim, name="class_embed", **kw)(y)
        elif y is not None:
            raise ValueError("labels given to an unconditional U-Net (config.num_classes is 0)")

        def res(features: int, h: jax.Array, name: str) -> jax.Array:
            return ResBlock(features, groups, name=name, **kw)(h, emb)

        def attn(h: jax.Array, name: str) -> jax.Array:
            return AttentionBlock(groups, name=name, **kw)(h)

        # Encoder.
        h = nn.Conv(cfg.channels, (3, 3), name="conv_in", **kw)(x)
        skips = [h]
        last = cfg.num_levels - 1
        for level, mult in enumerate(cfg.channel_mults):
            for i in range(cfg.num_res_blocks):
                h = res(cfg.channels * mult, h, f"down_{level}_res_{i}")
                if level in cfg.attention_levels:
                    h = attn(h, f"down_{level}_attn_{i}")
                skips.append(h)
            if level != last:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), name=f"down_{level}_downsample", **kw)(h)
                skips.append(h)

        # Middle.
        h = res(h.shape[-1], h, "mid_res_0")
        if last in cfg.attention_levels:
            h = attn(h, "mid_attn")
        h = res(h.shape[-1], h, "mid_res_1")

        # Decoder.
        for level in reversed(range(cfg.num_levels)):
            for i in range(cfg.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = res(cfg.channels * cfg.channel_mults[level], h, f"up_{level}_res_{i}")
                if level in cfg.attention_levels:
                    h = attn(h, f"up_{level}_attn_{i}")
            if level != 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest-neighbour 2x upsampling
                h = nn.Conv(h.shape[-1], (3, 3), name=f"up_{level}_upsample", **kw)(h)
        assert not skips

        # Output head, zero-initialised so that an untrained network outputs 0.
        h = nn.silu(GroupNorm(groups, name="norm_out", **kw)(h))
        out_channels = cfg.out_channels or in_channels
        zeros = nn.initializers.zeros
        return nn.Conv(out_channels, (3, 3), kernel_init=zeros, bias_init=zeros, name="conv_out", **kw)(h)


def _labels(y, batch: int, num_classes: int) -> jax.Array:
    """Labels int32 [B] (None: the null label `num_classes` for every row); shape errors name the argument.
    Values are not checked under tracing; an out-of-range label reads a clamped row (`nn.Embed`'s indexing)."""
    if y is None:
        return jnp.full((batch,), num_classes, jnp.int32)
    y = jnp.asarray(y)
    if y.shape != (batch,) or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"labels y must be integers of shape [B] = ({batch},), got {y.dtype}{list(y.shape)}")
    return y.astype(jnp.int32)


# Standard deviation of a standard normal truncated to [-2, 2] (as in flax's `variance_scaling`).
TRUNCATED_NORMAL_STD = 0.87962566103423978


def init_unet(config: UNetConfig, key: jax.Array, image_shape: tuple[int, int, int], dtype: Any = jnp.float32) -> Any:
    """Initialise a `UNet(config)` for images of shape (H, W, C); returns the linen `params` pytree only.

    The parameter tree is exactly that of `UNet(config).init`, with flax's default initialisation for every
    layer (kernels `lecun_normal`: truncated normal of variance 1/fan_in; zero biases; unit GroupNorm scales)
    and a zero output conv. All random kernels are drawn from one random call under one `jax.jit`, cached per
    (config, image_shape, dtype): a flax init with one random call per parameter shape costs about a second of
    compilation per shape on CPU.
    """
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (H, W, C), got {image_shape!r}")
    return _init_unet(config, key, tuple(int(s) for s in image_shape), jnp.dtype(dtype))


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _init_unet(config: UNetConfig, key: jax.Array, image_shape: tuple[int, int, int], dtype: Any) -> Any:
    x = jnp.zeros((1, *image_shape), dtype)
    t = jnp.zeros((1,), dtype)
    shapes = jax.eval_shape(UNet(config, param_dtype=dtype).init, key, x, t)["params"]
    return init_from_shapes(shapes, key, dtype)


def init_from_shapes(shapes: Any, key: jax.Array, dtype: Any) -> Any:
    """Parameters for a tree of `jax.ShapeDtypeStruct`s (a flax module's `eval_shape`d params) with flax's default
    initialisation: kernels `lecun_normal` (truncated normal of variance 1/fan_in), embeddings [K, D] truncated
    normal of variance 1/D, zero biases, unit GroupNorm scales, and zero kernels in any layer named `conv_out`.
    All random kernels come from one random call, in the order of the flattened tree (the U-Net and the
    multi-decoder network share this rule)."""
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)

    def kind(path: tuple) -> str:
        names = [getattr(p, "key", None) for p in path]
        if names[-1] == "embedding":  # rows [K + 1, D]: variance 1/D, as flax's Embed
            return "embedding"
        if names[-1] == "kernel":
            return "zeros" if "conv_out" in names else "lecun_normal"
        if names[-1] == "bias":
            return "zeros"
        if names[-1] == "scale":
            return "ones"
        raise NotImplementedError(f"no initialisation rule for parameter {jax.tree_util.keystr(path)}")

    kinds = [kind(path) for path, _ in path_leaves]
    random = ("lecun_normal", "embedding")
    total = sum(leaf.size for (_, leaf), k in zip(path_leaves, kinds, strict=True) if k in random)
    noise = jax.random.truncated_normal(key, -2.0, 2.0, (total,), dtype) * (1.0 / TRUNCATED_NORMAL_STD)
    leaves, offset = [], 0
    for (_, leaf), k in zip(path_leaves, kinds, strict=True):
        if k in random:
            fan_in = leaf.shape[-1] if k == "embedding" else math.prod(leaf.shape[:-1])
            leaves.append(noise[offset : offset + leaf.size].reshape(leaf.shape) * (1.0 / math.sqrt(fan_in)))
            offset += leaf.size
        else:
            leaves.append((jnp.ones if k == "ones" else jnp.zeros)(leaf.shape, dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)


@functools.cache
def unet_apply_fn(config: UNetConfig) -> Callable[..., jax.Array]:
    """The pure function `apply_fn(params, x, t, cond=None) = UNet(config).apply({"params": params}, x, t, cond)`
    (`cond`: a conditional network's labels int[B], None: the null label; the sampler's `cond=` / `uncond=`).

    Cached per config: equal configs return the same function object, so it can be a static argument of
    `jax.jit` / a branch of `jax.lax.switch` without recompilation. Floating-point parameters are cast to the
    dtype of `x` (a no-op when they already match), so float32 parameters can run on float64 inputs.
    """
    module = UNet(config)

    def apply_fn(params: Any, x: jax.Array, t: jax.Array, cond: jax.Array | None = None) -> jax.Array:
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.floating):

            def cast(p: jax.Array) -> jax.Array:
                if jnp.issubdtype(p.dtype, jnp.floating) and p.dtype != x.dtype:
                    return p.astype(x.dtype)
                return p

            params = jax.tree_util.tree_map(cast, params)
        return module.apply({"params": params}, x, t, cond)

    return apply_fn


def param_count(params: Any) -> int:
    """Total number of scalar parameters in a pytree (of arrays, or of `jax.ShapeDtypeStruct`s)."""
    leaves = jax.tree_util.tree_leaves(params)
    return sum(math.prod(p.shape if hasattr(p, "shape") else jnp.shape(p)) for p in leaves)
