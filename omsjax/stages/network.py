"""The multi-decoder U-Net: one shared encoder, one decoder per stage; its apply functions, initialisation and costs.

One shared encoder (time embedding, input conv, the down path and the middle block of `nets.UNet`) and one decoder
per stage (the up path and the output head), each with its own width. Stage k covers the times
b_{k-1} < t <= b_k (b_0 = 0, b_K = T: a boundary time belongs to the lower stage), i.e. stage(t) = #{b : t > b}.
The parameter tree is {"encoder": ..., "decoder_0": ..., ..., "decoder_{K-1}": ...}.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from omsjax import nets
from omsjax.checks import count
from omsjax.models import Model
from omsjax.stages.clustering import stage_of
from omsjax.stages.config import MultiStageConfig, StageTrainConfig

__all__ = [
    "encode",
    "decode",
    "stage_apply_fn",
    "apply_fn",
    "init_params",
    "active_params",
    "forward_flops",
    "to_model",
]

_DTYPE = jnp.float32  # the training dtype, as in omsjax.train


class _Encoder(nn.Module):
    """`nets.UNet`'s time embedding, input conv, down path and middle block: (x, t) -> (h, skips, emb)."""

    config: MultiStageConfig
    param_dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array):
        cfg = self.config.unet_config()
        kw = dict(dtype=x.dtype, param_dtype=self.param_dtype or x.dtype)
        emb = nets.time_embedding(cfg, t, kw)
        h, skips = nets.down_path(cfg, x, emb, kw)
        return h, skips, emb


class _Decoder(nn.Module):
    """`nets.UNet`'s up path and output head at base width `width`: (h, skips, emb) -> [B, H, W, out_channels]."""

    config: MultiStageConfig
    width: int
    out_channels: int
    param_dtype: Any = None

    @nn.compact
    def __call__(self, h: jax.Array, skips: tuple, emb: jax.Array) -> jax.Array:
        kw = dict(dtype=h.dtype, param_dtype=self.param_dtype or h.dtype)
        return nets.up_path(self.config.unet_config(self.width), h, skips, emb, self.out_channels, kw)


def check_input(config: MultiStageConfig, x, t):
    """`nets.check_input` for the network's shared encoder."""
    return nets.check_input(config.unet_config(), x, t)


def _cast(params: Any, dtype) -> Any:
    def cast(p):
        return p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) and p.dtype != dtype else p

    return jax.tree.map(cast, params)


def _decoder_names(config: MultiStageConfig) -> tuple[str, ...]:
    return tuple(f"decoder_{k}" for k in range(config.num_stages))


def encode(config: MultiStageConfig, params: Any, x: jax.Array, t: jax.Array):
    """The shared encoder: (h, skips, emb) for x [B, H, W, C] and t [B] (or scalar), in x's dtype."""
    x, t = check_input(config, x, t)
    return _Encoder(config).apply({"params": _cast(params["encoder"], x.dtype)}, x, t)


def decode(
    config: MultiStageConfig, params: Any, stage: int, h: jax.Array, skips: tuple, emb: jax.Array, out_channels: int
) -> jax.Array:
    """Decoder `stage` (a Python int) called directly on `encode`'s output; `out_channels` is usually the input's
    channel count (`config.out_channels or C`)."""
    width = config.decoder_channels[stage]
    p = _cast(params[f"decoder_{stage}"], h.dtype)
    return _Decoder(config, width, out_channels).apply({"params": p}, h, skips, emb)


def _branches(config: MultiStageConfig, out_channels: int) -> list[Callable]:
    """One function (decoder params tuple, h, skips, emb) -> output per stage, for `lax.switch`."""

    def branch(k: int) -> Callable:
        module = _Decoder(config, config.decoder_channels[k], out_channels)
        return lambda ps, h, skips, emb: module.apply({"params": ps[k]}, h, skips, emb)

    return [branch(k) for k in range(config.num_stages)]


@functools.cache
def stage_apply_fn(config: MultiStageConfig) -> Callable:
    """`f(params, x, t, stage)`: the shared encoder, then decoder `stage` (an int32 scalar, possibly traced) chosen
    by `lax.switch`, whatever t is; used in training, where the step's stage is drawn first. Out-of-range stages
    are clamped by `lax.switch`. Cached per config (a stable static argument)."""

    def f(params, x, t, stage):
        x, t = check_input(config, x, t)
        params = _cast(params, x.dtype)
        out_channels = config.out_channels or x.shape[-1]
        h, skips, emb = _Encoder(config).apply({"params": params["encoder"]}, x, t)
        decoders = tuple(params[n] for n in _decoder_names(config))
        return jax.lax.switch(stage, _branches(config, out_channels), decoders, h, skips, emb)

    return f


@functools.cache
def apply_fn(config: MultiStageConfig) -> Callable:
    """`apply_fn(params, x, t)`: the multi-stage network as a plain model function (noise prediction).

    Per sample exact: sample i goes through decoder stage_of(t_i). The encoder runs once on the batch; then a
    `lax.scan` over the K stages runs `lax.switch` on the scalar index k if some sample is in stage k, and on an
    extra zero branch otherwise, and keeps the rows of stage k. So a batch at one time t (every sampler call)
    costs the encoder and one decoder, a mixed batch one decoder per stage present; every
    decoder is compiled once, and the whole function is differentiable (scan and switch). Floating-point parameters
    are cast to x's dtype. Cached per config.
    """
    bounds = config.boundaries
    num = config.num_stages

    def f(params, x, t):
        x, t = check_input(config, x, t)
        params = _cast(params, x.dtype)
        out_channels = config.out_channels or x.shape[-1]
        h, skips, emb = _Encoder(config).apply({"params": params["encoder"]}, x, t)
        decoders = tuple(params[n] for n in _decoder_names(config))
        shape = x.shape[:-1] + (out_channels,)
        branches = _branches(config, out_channels)
        if num == 1:
            return branches[0](decoders, h, skips, emb)
        stage = stage_of(bounds, t)

        def body(out, k):
            rows = stage == k
            index = jnp.where(jnp.any(rows), k, num)  # branch `num`: no sample in stage k, nothing to compute
            y = jax.lax.switch(index, [*branches, lambda *_: jnp.zeros(shape, x.dtype)], decoders, h, skips, emb)
            return jnp.where(rows[:, None, None, None], y, out), None

        out, _ = jax.lax.scan(body, jnp.zeros(shape, x.dtype), jnp.arange(num, dtype=jnp.int32))
        return out

    return f


def init_params(config: MultiStageConfig, key: jax.Array, image_shape: tuple[int, int, int], dtype: Any = _DTYPE):
    """Fresh parameters {"encoder", "decoder_0", ...}: flax's default initialisation (lecun-normal kernels, zero
    biases, unit GroupNorm scales) with zero output convs, so that an untrained network outputs exactly 0; all
    kernels from one random call under one jit (as `nets.init_unet`)."""
    if not isinstance(config, MultiStageConfig):
        raise ValueError(f"config must be a MultiStageConfig, got {type(config).__name__}")
    if not isinstance(image_shape, (tuple, list)) or len(image_shape) != 3:
        raise ValueError(f"image_shape must be (H, W, C), got {image_shape!r}")
    return _init_params(config, key, tuple(int(s) for s in image_shape), jnp.dtype(dtype))


def _param_shapes(config: MultiStageConfig, image_shape: tuple[int, int, int], dtype) -> dict:
    x = jax.ShapeDtypeStruct((1, *image_shape), dtype)
    t = jax.ShapeDtypeStruct((1,), dtype)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    enc = jax.eval_shape(_Encoder(config, param_dtype=dtype).init, key, x, t)["params"]
    h, skips, emb = jax.eval_shape(lambda p, x, t: _Encoder(config).apply({"params": p}, x, t), enc, x, t)
    out = config.out_channels or image_shape[-1]
    shapes = {"encoder": enc}
    for name, w in zip(_decoder_names(config), config.decoder_channels, strict=True):
        dec = _Decoder(config, w, out, param_dtype=dtype)
        shapes[name] = jax.eval_shape(dec.init, key, h, skips, emb)["params"]
    return shapes


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _init_params(config: MultiStageConfig, key: jax.Array, image_shape: tuple[int, int, int], dtype) -> dict:
    return nets.init_from_shapes(_param_shapes(config, image_shape, dtype), key, dtype)


def active_params(params: Any, stage: int) -> int:
    """Parameters used by a forward pass at a time of stage `stage`: the encoder's plus decoder `stage`'s (compare
    with `nets.param_count` of a unified U-Net for an equal-compute comparison)."""
    if f"decoder_{stage}" not in params:
        raise ValueError(f"stage {stage!r} has no decoder in these parameters")
    return nets.param_count(params["encoder"]) + nets.param_count(params[f"decoder_{stage}"])


def forward_flops(config, params: Any, image_shape, *, stage: int | None = None, batch: int = 1) -> float:
    """XLA's FLOP count of one forward pass on a batch of `batch` images: of the encoder plus decoder `stage` for
    a `MultiStageConfig`, of the whole network for a `nets.UNetConfig` (stage None). A training step costs about
    three forward passes in either case."""
    x = jax.ShapeDtypeStruct((batch, *image_shape), _DTYPE)
    t = jax.ShapeDtypeStruct((batch,), _DTYPE)
    if isinstance(config, nets.UNetConfig):
        fn = nets.unet_apply_fn(config)
    elif isinstance(config, MultiStageConfig):
        count("stage", stage, 0, maximum=config.num_stages - 1)

        def fn(p, x, t):
            h, skips, emb = encode(config, p, x, t)
            return decode(config, p, stage, h, skips, emb, config.out_channels or x.shape[-1])
    else:
        raise ValueError(f"config must be a MultiStageConfig or nets.UNetConfig, got {type(config).__name__}")
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), _DTYPE), params)
    cost = jax.jit(fn).lower(abstract, x, t).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost["flops"])


def to_model(config: MultiStageConfig | StageTrainConfig, params: Any, latency: float = 1.0, name: str = "") -> Model:
    """An ordinary `omsjax.Model` (noise parameterisation, continuous linear VP time) for a multi-stage network:
    it joins a zoo and goes through `omsjax.sample` like any other; `latency` is its cost model entry."""
    net = config.net if isinstance(config, StageTrainConfig) else config
    if not isinstance(net, MultiStageConfig):
        raise ValueError(f"config must be a MultiStageConfig or StageTrainConfig, got {type(config).__name__}")
    return Model(
        apply_fn=apply_fn(net),
        params=params,
        parameterization="noise",
        latency=latency,
        name=name or f"multistage-{net.num_stages}",
    )
