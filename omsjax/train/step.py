"""One optimiser step of U-Net training: `TrainState`, `init_state`, the optimiser and its learning rate, the EMA,
and data-parallel sharding.

The step's randomness (batch indices, diffusion times, noise) comes from `jax.random.fold_in(key, state.step)`,
so a resumed run draws exactly the batches and noise of an uninterrupted one, and there is no host-side iterator
state to checkpoint. The batch is sharded over a 1-D mesh of all devices (axis "data"), parameters and optimiser
state are replicated; with one device this is the same program.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from omsjax import nets
from omsjax.train.config import DTYPE, TrainConfig
from omsjax.train.losses import loss_fn

__all__ = [
    "TrainState",
    "ema_decay_at",
    "lr_schedule",
    "make_optimizer",
    "init_state",
    "train_step",
    "drop_labels",
    "data_sharding",
    "replicated_sharding",
]


@struct.dataclass
class TrainState:
    """Everything a resumed run needs (a pytree; checkpointed as a whole)."""

    step: jax.Array  # int32 scalar: the number of optimiser steps taken
    params: Any
    ema_params: Any
    opt_state: Any


def ema_decay_at(decay: float, warmup: bool, count: jax.Array) -> float | jax.Array:
    """The EMA decay of update number `count` (0-based, int array): the Python float `decay` without `warmup` (so
    that 1 - decay is formed in float64, as in runs without the option), else min(decay, (1 + n) / (10 + n)) in
    float32."""
    if not warmup:
        return float(decay)
    n = jnp.asarray(count).astype(DTYPE)
    return jnp.minimum(jnp.asarray(decay, DTYPE), (1.0 + n) / (10.0 + n))


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
            return jnp.asarray(schedule(count), DTYPE)

    return lr


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then Adam (AdamW when weight_decay > 0) on `lr_schedule(config)`."""
    lr = lr_schedule(config)
    if config.weight_decay > 0:
        opt = optax.adamw(lr, weight_decay=config.weight_decay)
    else:
        opt = optax.adam(lr)
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), opt)


def seed_keys(config) -> tuple[jax.Array, jax.Array]:
    """(init key, base key of the per-step randomness) of a config with a `seed`."""
    k_init, k_train = jax.random.split(jax.random.PRNGKey(config.seed))
    return k_init, k_train


def init_state(config: TrainConfig) -> TrainState:
    """Fresh float32 parameters (EMA = parameters), optimiser state and step 0."""
    params = nets.init_unet(config.net, seed_keys(config)[0], config.image_shape, DTYPE)
    tx = make_optimizer(config)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=tx.init(params),
    )


@functools.cache
def _mesh() -> Mesh:
    return Mesh(np.array(jax.devices()), ("data",))


def data_sharding() -> NamedSharding:
    """Sharding of a batch: leading axis split over all devices."""
    return NamedSharding(_mesh(), P("data"))


def replicated_sharding() -> NamedSharding:
    """Sharding of parameters, optimiser state and the data set: a full copy on every device."""
    return NamedSharding(_mesh(), P())


def check_batch(config: TrainConfig) -> None:
    n = len(jax.devices())
    if config.batch_size % n:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the number of devices ({n})")


def drop_labels(config: TrainConfig, labels: jax.Array, key: jax.Array) -> jax.Array:
    """Classifier-free guidance's label dropout: each label int[B] becomes the null label K = `net.num_classes`
    with probability `config.label_dropout`."""
    drop = jax.random.uniform(key, labels.shape, DTYPE) < config.label_dropout
    return jnp.where(drop, config.net.num_classes, labels).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=0)
def train_step(
    config: TrainConfig, state: TrainState, data: jax.Array, key: jax.Array, labels: jax.Array | None = None
) -> tuple[TrainState, dict]:
    """One optimiser step on a batch drawn from `data` [N, H, W, C] with `fold_in(key, state.step)`; a
    class-conditional net (`config.net.num_classes` > 0) needs the images' `labels` int[N], dropped to the null
    label at rate `config.label_dropout` (from a key of their own: the batch and noise are an unconditional
    run's).

    Pure (jitted, `config` static). Returns the new state and metrics {"loss", "grad_norm", "lr"}. The batch is
    sharded over the devices' "data" axis; the new parameters and optimiser state are replicated.
    """
    check_batch(config)
    if (labels is None) != (config.net.num_classes == 0):
        raise ValueError("labels are needed by a class-conditional net (config.net.num_classes > 0) and only by one")
    step_key = jax.random.fold_in(key, state.step)
    k_idx, k_loss = jax.random.split(step_key)
    idx = jax.random.randint(k_idx, (config.batch_size,), 0, data.shape[0], dtype=jnp.int32)
    batch = jax.lax.with_sharding_constraint(jnp.asarray(data, DTYPE)[idx], data_sharding())
    y = None
    if labels is not None:
        y = drop_labels(config, jnp.asarray(labels)[idx], jax.random.fold_in(step_key, 3))
        y = jax.lax.with_sharding_constraint(y, data_sharding())
    loss, grads = jax.value_and_grad(loss_fn, argnums=1)(config, state.params, batch, k_loss, state.step, y)
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
