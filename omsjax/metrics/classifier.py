"""The digits classifier of the digits metric (`omsjax.metrics.digits`): a small CNN on 8x8 grey digits, its
training, its logits and features, and its storage (`checkpoints/digits/classifier/`, made by
`python -m omsjax.metrics --train`)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from omsjax import distributed, optim
from omsjax.paths import checkpoints_dir

__all__ = [
    "Classifier",
    "FEATURE_DIM",
    "NUM_CLASSES",
    "IMAGE_SHAPE",
    "ARCHITECTURE",
    "DEFAULT_DIR",
    "HOW_TO_BUILD",
    "check_images",
    "train_classifier",
    "apply_classifier",
    "accuracy",
    "features",
    "classifier_dir",
    "save_classifier",
    "load_classifier",
]

FEATURE_DIM = 128
NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)
DEFAULT_DIR = checkpoints_dir() / "digits" / "classifier"
HOW_TO_BUILD = "(create it with `python -m omsjax.metrics --train`)"
ARCHITECTURE = "conv3x3(32)-relu-conv3x3(64)-relu-avgpool2x2-flatten-dense(128)-relu[features]-dense(10)"


class Classifier(nn.Module):
    """Small CNN for 8x8x1 digits in [-1, 1]; `features=True` returns the 128 penultimate ReLU features."""

    @nn.compact
    def __call__(self, x: jax.Array, features: bool = False) -> jax.Array:
        x = jnp.asarray(x, jnp.float32)
        x = nn.relu(nn.Conv(32, (3, 3), padding="SAME")(x))
        x = nn.relu(nn.Conv(64, (3, 3), padding="SAME")(x))
        b, h, w, c = x.shape
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))  # 2x2 average pool (nn.avg_pool fails strict)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(FEATURE_DIM)(x))
        if features:
            return x
        return nn.Dense(NUM_CLASSES)(x)


# ----------------------------------------------------------------------------------------------------- data


def check_images(images: Any, name: str = "images") -> np.ndarray:
    """`images` as an array [N, 8, 8, 1] (N >= 1) of real numbers; a ValueError naming `name` otherwise."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"{name} must have shape [N, 8, 8, 1], got {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name} must be real, got dtype {x.dtype}")
    return x


# ----------------------------------------------------------------------------------------------- network


@functools.partial(jax.jit, static_argnames="features")
def apply_classifier(params: Any, x: jax.Array, features: bool = False) -> jax.Array:
    """The classifier's logits [B, 10] (or, `features=True`, its 128 features) of images x [B, 8, 8, 1]: one
    jitted call, differentiable (the timestep objectives differentiate the FD through it)."""
    return Classifier().apply({"params": params}, x, features=features)


def _apply_batched(params: Any, images: Any, features: bool, batch: int) -> np.ndarray:
    x = check_images(images).astype(np.float32)
    n = x.shape[0]
    b = max(1, min(int(batch), n))
    pad = (-n) % b  # pad the last chunk so that one compiled shape serves all chunks
    if pad:
        x = np.concatenate([x, np.zeros((pad, *IMAGE_SHAPE), np.float32)])
    out = [np.asarray(apply_classifier(params, jnp.asarray(x[i : i + b]), features)) for i in range(0, x.shape[0], b)]
    return np.concatenate(out)[:n]


def features(params: Any, images: Any, batch: int = 1024) -> np.ndarray:
    """Penultimate-layer features [N, 128] (float32) of `images` [N, 8, 8, 1], computed in jitted batches."""
    return _apply_batched(params, images, True, batch)


def accuracy(params: Any, images: Any, labels: Any, batch: int = 1024) -> float:
    """Fraction of `images` whose predicted class equals `labels`."""
    labels = np.asarray(labels)
    logits = _apply_batched(params, images, False, batch)
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must have shape [{logits.shape[0]}], got {labels.shape}")
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def _init_params(seed: int) -> Any:
    return Classifier().init(jax.random.key(seed), jnp.zeros((1, *IMAGE_SHAPE), jnp.float32))["params"]


def _shift(x: jax.Array, key: jax.Array, max_shift: int = 1) -> jax.Array:
    """Random integer translation by up to `max_shift` pixels per image; uncovered pixels become background -1."""
    m = max_shift
    xp = jnp.pad(x, ((0, 0), (m, m), (m, m), (0, 0)), constant_values=-1.0)
    offs = jax.random.randint(key, (x.shape[0], 2), 0, 2 * m + 1)
    zero = jnp.zeros((), offs.dtype)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], zero), IMAGE_SHAPE)  # noqa: E731
    return jax.vmap(crop)(xp, offs)


def train_classifier(
    images: Any, labels: Any, *, steps: int = 2000, batch: int = 128, lr: float = 1e-3, seed: int = 0
) -> Any:
    """Train a `Classifier` with Adam on `images` [N, 8, 8, 1] in [-1, 1] and int `labels` [N].

    Batches are drawn with replacement and shifted by up to one pixel at random; the result is a deterministic
    function of the inputs and `seed`. Returns the float32 parameter pytree.
    """
    x = check_images(images).astype(np.float32)
    y = np.asarray(labels)
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape [{x.shape[0]}], got {y.dtype} {y.shape}")
    if steps < 0 or batch < 1:
        raise ValueError(f"need steps >= 0 and batch >= 1, got steps={steps}, batch={batch}")
    x, y = jnp.asarray(x), jnp.asarray(y, jnp.int32)
    n = x.shape[0]
    opt = optax.adam(np.float32(lr))
    params = _init_params(seed)
    opt_state = opt.init(params)

    def loss_fn(p, xb, yb):
        logits = Classifier().apply({"params": p}, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def step(p, s, key):
        k_idx, k_shift = jax.random.split(key)
        idx = jax.random.randint(k_idx, (batch,), 0, n)
        xb = _shift(x[idx], k_shift)
        return optim.step(loss_fn, opt, p, s, xb, y[idx])

    key = jax.random.key(seed + 1)
    for i in range(steps):
        params, opt_state, _ = step(params, opt_state, jax.random.fold_in(key, i))
    return jax.tree.map(lambda a: np.asarray(a, np.float32), params)


# ------------------------------------------------------------------------------------------------ storage


def _abstract_params() -> Any:
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shapes = jax.eval_shape(_init_params, 0)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=dev), shapes)


def classifier_dir(path: Any = None) -> Path:
    """The classifier folder `path` (default the shipped one), resolved; FileNotFoundError when it is missing."""
    p = DEFAULT_DIR if path is None else Path(path)
    p = p.resolve()
    if not p.is_dir():
        raise FileNotFoundError(f"no digits classifier at {p} {HOW_TO_BUILD}")
    return p


def save_classifier(params: Any, path: Any = None) -> Path:
    """Save classifier parameters with orbax to `path/params` (default: the shipped folder), replacing them."""
    p = (DEFAULT_DIR if path is None else Path(path)).resolve()
    if not distributed.is_writer():  # process 0 alone writes (`omsjax.distributed`)
        return p
    p.mkdir(parents=True, exist_ok=True)
    with distributed.local_checkpointer() as ckptr:
        ckptr.save(p / "params", params, force=True)
        ckptr.wait_until_finished()
    return p


def load_classifier(path: Any = None) -> Any:
    """Classifier parameters from `path/params` (default: `checkpoints/digits/classifier/` of the repository)."""
    p = classifier_dir(path) / "params"
    if not p.exists():
        raise FileNotFoundError(f"no classifier parameters at {p} {HOW_TO_BUILD}")
    with distributed.local_checkpointer() as ckptr:
        return ckptr.restore(p, _abstract_params())
