"""The digits metric: a Fréchet distance in the features of a small digits classifier.

FID's Inception network is not available offline, and it is meaningless on 8x8 grey images anyway, so omsjax
measures digits samples as FID does but in the penultimate layer (128 ReLU features) of `Classifier`, a small CNN
trained on the digits train split. The classifier and the feature statistics of the train split ship in
`checkpoints/digits/classifier/` (made by `python -m omsjax.metrics --train`):

- `Classifier`, `train_classifier`, `apply_classifier`, `accuracy`, `features`: the network, its training, its
  logits and its features.
- `frechet_distance`, `feature_stats`, `fd_from_features`: the distance between Gaussians fitted to features.
- `load_classifier`, `reference_stats`, `fd`: the shipped metric; `fd(samples)` is the Fréchet distance between
  the features of `samples` ([N, 8, 8, 1], N >= 2) and those of the train split. `digits_fd` is the same as a
  search metric (`metric(samples, x_T) -> float`), the default of `omsjax.search.Evaluator`.
- `fd_floor`: what real data scores (held-out split; random train subsets of a given size). FD is biased upwards
  for small N, so compare a model's FD with the floor at the same sample count.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import scipy.linalg

from omsjax import optim
from omsjax.data import load_digits
from omsjax.paths import checkpoints_dir

__all__ = [
    "Classifier",
    "RefStats",
    "FEATURE_DIM",
    "NUM_CLASSES",
    "IMAGE_SHAPE",
    "ARCHITECTURE",
    "DEFAULT_DIR",
    "train_classifier",
    "apply_classifier",
    "accuracy",
    "features",
    "frechet_distance",
    "feature_stats",
    "fd_from_features",
    "classifier_dir",
    "save_classifier",
    "load_classifier",
    "shipped_classifier",
    "reference_stats",
    "fd",
    "digits_fd",
    "fd_floor",
]

FEATURE_DIM = 128
NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)
DEFAULT_DIR = checkpoints_dir() / "digits" / "classifier"
_HOW = "(create it with `python -m omsjax.metrics --train`)"
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


class RefStats(NamedTuple):
    """Feature statistics of a reference set: mean [D], covariance [D, D] (float64) and sample count."""

    mu: np.ndarray
    cov: np.ndarray
    n: int


# ----------------------------------------------------------------------------------------------------- data


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Digits images [N, 8, 8, 1] float32 in [-1, 1] and int labels (`omsjax.data.load_digits`)."""
    x, y = load_digits(split, return_labels=True)
    return np.asarray(x, np.float32), np.asarray(y)


def _check_images(images: Any, name: str = "images") -> np.ndarray:
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
    x = _check_images(images).astype(np.float32)
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
    x = _check_images(images).astype(np.float32)
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


# ------------------------------------------------------------------------------------- Fréchet distance


def frechet_distance(mu1: Any, cov1: Any, mu2: Any, cov2: Any, eps: float = 1e-6) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2), in float64:
    ||mu1 - mu2||^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)).

    The matrix square root is `scipy.linalg.sqrtm` (real part taken); as in pytorch-fid, if the product is
    singular (or its root not finite), `eps * I` is added to both covariances and the root recomputed. Dead ReLU
    features make the classifier's covariances singular, so the shipped metric takes that path.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    d = mu1.shape[0]
    if mu1.ndim != 1 or mu2.shape != (d,):
        raise ValueError(f"means must be vectors of equal length, got {mu1.shape} and {mu2.shape}")
    if cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(f"covariances must have shape ({d}, {d}), got {cov1.shape} and {cov2.shape}")
    for name, a in (("mu1", mu1), ("cov1", cov1), ("mu2", mu2), ("cov2", cov2)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} has non-finite entries")
    with warnings.catch_warnings():
        warnings.simplefilter("error", scipy.linalg.LinAlgWarning)  # scipy warns when the product is singular
        try:
            covmean = scipy.linalg.sqrtm(cov1 @ cov2)
            singular = not np.all(np.isfinite(covmean))
        except scipy.linalg.LinAlgWarning:
            singular = True
    if singular:
        offset = eps * np.eye(d)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
            covmean = scipy.linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(np.real(covmean)))


def feature_stats(feats: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (float64) of features [N, D]; needs N >= 2 and finite values."""
    f = np.asarray(feats, np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must have shape [N, D], got {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {f.shape[0]}")
    if not np.all(np.isfinite(f)):
        raise ValueError("features have non-finite entries")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def fd_from_features(f1: Any, f2: Any) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N1, D] and [N2, D]."""
    return frechet_distance(*feature_stats(f1), *feature_stats(f2))


# ---------------------------------------------------------------------------------------- shipped metric


def _abstract_params() -> Any:
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shapes = jax.eval_shape(_init_params, 0)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=dev), shapes)


def classifier_dir(path: Any = None) -> Path:
    """The classifier folder `path` (default the shipped one), resolved; FileNotFoundError when it is missing."""
    p = DEFAULT_DIR if path is None else Path(path)
    p = p.resolve()
    if not p.is_dir():
        raise FileNotFoundError(f"no digits classifier at {p} {_HOW}")
    return p


def save_classifier(params: Any, path: Any = None) -> Path:
    """Save classifier parameters with orbax to `path/params` (default: the shipped folder), replacing them."""
    p = (DEFAULT_DIR if path is None else Path(path)).resolve()
    p.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(p / "params", params, force=True)
        ckptr.wait_until_finished()
    return p


def load_classifier(path: Any = None) -> Any:
    """Classifier parameters from `path/params` (default: `checkpoints/digits/classifier/` of the repository)."""
    p = classifier_dir(path) / "params"
    if not p.exists():
        raise FileNotFoundError(f"no classifier parameters at {p} {_HOW}")
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(p, _abstract_params())


def reference_stats(path: Any = None) -> RefStats:
    """The shipped classifier-feature statistics of the digits train split (`path/ref_stats.npz`)."""
    p = classifier_dir(path) / "ref_stats.npz"
    if not p.exists():
        raise FileNotFoundError(f"no reference statistics at {p} {_HOW}")
    with np.load(p) as z:
        return RefStats(np.asarray(z["mu"], np.float64), np.asarray(z["cov"], np.float64), int(z["n"]))


@functools.lru_cache(maxsize=1)
def shipped_classifier() -> Any:
    """The shipped classifier's parameters (`load_classifier()`), loaded once per process."""
    return load_classifier()


@functools.lru_cache(maxsize=1)
def _default_ref() -> RefStats:
    return reference_stats()


def fd(samples: Any, *, ref: Any = None, classifier: Any = None) -> float:
    """Fréchet distance between the classifier features of `samples` and the digits train-split statistics.

    Args:
      samples: float images [N, 8, 8, 1] (N >= 2), data scale [-1, 1]. Values outside [-1, 1] are clipped to it
        before the classifier (the one deliberate clip: samples are images, and a sampler's slight overshoot
        should not be read as off-distribution features). Non-finite values (NaN, inf) raise ValueError.
      ref: (mu, cov[, n]) statistics to compare with; default the shipped `reference_stats()`.
      classifier: classifier parameters; default the shipped `load_classifier()`.
    """
    x = _check_images(samples, "samples")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"samples must be floating point images in [-1, 1], got dtype {x.dtype}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {x.shape[0]}")
    if not np.all(np.isfinite(x)):
        raise ValueError("samples have non-finite entries (NaN or inf)")
    x = np.clip(x.astype(np.float32), -1.0, 1.0)
    params = shipped_classifier() if classifier is None else classifier
    mu_r, cov_r = (_default_ref() if ref is None else ref)[:2]
    return frechet_distance(*feature_stats(features(params, x)), mu_r, cov_r)


def digits_fd(samples: Any, x_T: Any = None, *, ref: Any = None, classifier: Any = None) -> float:
    """`fd(samples)` with the search metrics' signature `metric(samples, x_T) -> float` (x_T is not used): the
    default metric of `omsjax.search.Evaluator`; the classifier and statistics are loaded once and cached."""
    return fd(samples, ref=ref, classifier=classifier)


def fd_floor(
    n: int = 1000, repeats: int = 5, *, seed: int = 0, ref: Any = None, classifier: Any = None
) -> dict[str, Any]:
    """FD of real data against the train statistics: the held-out split (300 images, never seen in training) and
    `repeats` random subsets of `n` train images without replacement (mean, std; optimistic, as the subsets are
    part of the reference). FD grows as N shrinks, so compare a model's FD with the floor at its sample count.
    """
    params = shipped_classifier() if classifier is None else classifier
    ref = _default_ref() if ref is None else ref
    heldout, _ = _load_digits("heldout")
    train, _ = _load_digits("train")
    if not 2 <= n <= train.shape[0]:
        raise ValueError(f"n must be in [2, {train.shape[0]}] (train split size), got {n}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    rng = np.random.RandomState(seed)
    f_train = features(params, train)
    mu_r, cov_r = ref[:2]
    vals = [
        frechet_distance(*feature_stats(f_train[rng.choice(train.shape[0], n, replace=False)]), mu_r, cov_r)
        for _ in range(repeats)
    ]
    return {
        "heldout_n": int(heldout.shape[0]),
        "heldout": fd(heldout, ref=ref, classifier=params),
        "train_resample_n": int(n),
        "train_resample_repeats": int(repeats),
        "train_resample_mean": float(np.mean(vals)),
        "train_resample_std": float(np.std(vals)),
    }
