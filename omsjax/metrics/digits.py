"""The digits metric: a Fréchet distance in the features of a small digits classifier.

FID's Inception network is not available offline, and it is meaningless on 8x8 grey images anyway, so omsjax
measures digits samples as FID does but in the penultimate layer (128 ReLU features) of the digits classifier
(`metrics.classifier`), trained on the digits train split. The classifier and the feature statistics of the train
split ship in `checkpoints/digits/classifier/` (made by `python -m omsjax.metrics --train`):

- `reference_stats`, `shipped_classifier`, `fd`: the shipped metric; `fd(samples)` is the Fréchet distance
  between the features of `samples` ([N, 8, 8, 1], N >= 2) and those of the train split.
- `DigitsFD`, `digits_fd`: the same FD as a search metric (`metric(samples, x_T) -> float`) that reduces on the
  devices (`metrics.device.FeatureMetric`: features and their sums where the samples are, the FD on the host from
  the sums); `digits_fd = DigitsFD()` is the default metric of `omsjax.search.Evaluator`. It agrees with `fd` to
  about 1e-6 of its value (float32 sums against a float64 covariance).
- `fd_floor`: what real data scores (held-out split; random train subsets of a given size). FD is biased upwards
  for small N, so compare a model's FD with the floor at the same sample count.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from omsjax.data import load_digits
from omsjax.metrics.classifier import (
    HOW_TO_BUILD,
    IMAGE_SHAPE,
    apply_classifier,
    check_images,
    classifier_dir,
    features,
    load_classifier,
)
from omsjax.metrics.device import FeatureMetric, FeatureSums, frechet_of_sums
from omsjax.metrics.frechet import feature_stats, frechet_distance

__all__ = ["RefStats", "reference_stats", "shipped_classifier", "fd", "DigitsFD", "digits_fd", "fd_floor"]


class RefStats(NamedTuple):
    """Feature statistics of a reference set: mean [D], covariance [D, D] (float64) and sample count."""

    mu: np.ndarray
    cov: np.ndarray
    n: int


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Digits images [N, 8, 8, 1] float32 in [-1, 1] and int labels (`omsjax.data.load_digits`)."""
    x, y = load_digits(split, return_labels=True)
    return np.asarray(x, np.float32), np.asarray(y)


def reference_stats(path: Any = None) -> RefStats:
    """The shipped classifier-feature statistics of the digits train split (`path/ref_stats.npz`)."""
    p = classifier_dir(path) / "ref_stats.npz"
    if not p.exists():
        raise FileNotFoundError(f"no reference statistics at {p} {HOW_TO_BUILD}")
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
    x = check_images(samples, "samples")
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


class DigitsFD(FeatureMetric):
    """The digits FD (`fd`) as a search metric `metric(samples, x_T=None) -> float` that reduces on the devices
    (`metrics.device`): the classifier's 128 features of the clipped samples, centred on the reference mean,
    summed where the samples are; the FD from the sums on the host. `ref`, `classifier`: as in `fd` (default the
    shipped statistics and classifier, loaded once). Scores only samples of shape (8, 8, 1)."""

    name = "digits_fd"

    def __init__(self, *, ref: Any = None, classifier: Any = None):
        self._ref, self._classifier = ref, classifier

    @staticmethod
    def per_sample(args, samples, cond):
        params, center = args
        f = apply_classifier(params, jnp.clip(samples.astype(jnp.float32), -1.0, 1.0), True)
        return f - center, jnp.zeros((f.shape[0], 0), f.dtype)

    def reference(self) -> RefStats:
        return RefStats(*_default_ref()) if self._ref is None else RefStats(*self._ref[:2], 0)

    def device_args(self) -> Any:
        params = shipped_classifier() if self._classifier is None else self._classifier
        return params, jnp.asarray(self.reference().mu, jnp.float32)

    def check(self, sample_shape: tuple[int, ...]) -> None:
        if tuple(sample_shape) != IMAGE_SHAPE:
            raise ValueError(f"the digits FD scores images of shape {IMAGE_SHAPE}, got samples of shape {sample_shape}")

    def finalize(self, sums: FeatureSums) -> float:
        ref = self.reference()
        return frechet_of_sums(sums, ref.mu, ref.cov, np.asarray(ref.mu, np.float32).astype(np.float64))


digits_fd = DigitsFD()  # the default metric of `omsjax.search.Evaluator`


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
