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

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from omsjax.nets.blocks import check_input, down_path, time_embedding, up_path
from omsjax.nets.config import UNetConfig

__all__ = ["UNet", "init_unet", "init_from_shapes", "unet_apply_fn", "param_count", "TRUNCATED_NORMAL_STD"]


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
        x, t = check_input(cfg, x, t)
        kw = dict(dtype=x.dtype, param_dtype=self.param_dtype or x.dtype)
        emb = time_embedding(cfg, t, kw)
        if cfg.num_classes:
            y = _labels(y, x.shape[0], cfg.num_classes)
            emb = emb + nn.Embed(cfg.num_classes + 1, emb.shape[-1], name="class_embed", **kw)(y)
        elif y is not None:
            raise ValueError("labels given to an unconditional U-Net (config.num_classes is 0)")
        h, skips = down_path(cfg, x, emb, kw)
        return up_path(cfg, h, skips, emb, cfg.out_channels or x.shape[-1], kw)


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
