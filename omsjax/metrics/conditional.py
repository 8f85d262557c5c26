"""The conditional digits metric: the labels a class-conditional zoo is sampled and measured on, and its two scores.

A class-conditional zoo (`zoo.num_classes(manifest)` K > 0, e.g. `checkpoints/digits-cond`) takes labels int[B] in
0..K-1 as the sampler's `cond`, and the null label K as `uncond` (classifier-free guidance: at guidance scale w
the model output is out(K) + w (out(y) - out(K)); w = 1 is the plain conditional model, w = 0 the unconditional).

- `balanced_labels(n, K, classes)`: sample i asks for classes[i mod len(classes)] (default every class), so the
  first n samples are as class-balanced as n allows.
- `conditioning(labels, K)`: (cond, uncond) for `omsjax.sample` / `generate` / `Evaluator`.
- `scores(samples, labels)`: the conditional FD (the digits FD of the samples, class-balanced when the labels
  are, against the train split, itself nearly balanced) and the accuracy, the share of samples that the shipped
  digits classifier labels as their requested class: the digits analogue of FID and CLIP score.
- `ConditionalFD`: the search objective `metric(samples, x_T) -> float`: the conditional FD plus a stated
  weight per percentage point of accuracy lost; it reduces on the devices (`metrics.device.FeatureMetric`: the
  features' sums and the count of correct labels, not the samples, leave the devices).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from omsjax import checks
from omsjax.metrics.classifier import accuracy, apply_classifier
from omsjax.metrics.device import FeatureSums
from omsjax.metrics.digits import DigitsFD, fd, shipped_classifier

__all__ = ["balanced_labels", "conditioning", "scores", "ConditionalFD"]


def balanced_labels(n: int, num_classes: int, classes: Sequence[int] | None = None) -> np.ndarray:
    """int32 [n]: label i is classes[i mod len(classes)] (default 0..num_classes-1). A ValueError names a class
    outside 0..num_classes-1."""
    n = checks.positive_int("n", n)
    k = checks.positive_int("num_classes", num_classes)
    cs = list(range(k)) if classes is None else list(classes)
    if not cs:
        raise ValueError("classes is empty: give at least one label")
    for c in cs:
        if not checks.is_int(c) or not 0 <= c < k:
            raise ValueError(f"label {c!r} is not a class of this zoo (0..{k - 1}; {k} is the null label)")
    return np.asarray(cs, np.int32)[np.arange(n) % len(cs)]


def conditioning(labels: Any, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(cond, uncond): the labels int32 [n] and the null label `num_classes` for every sample."""
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape [n], got {y.dtype}{list(y.shape)}")
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        raise ValueError(
            f"label {int(y[bad[0]])} (sample {int(bad[0])}) is not a class of this zoo (0..{num_classes - 1})"
        )
    return y.astype(np.int32), np.full(y.shape, num_classes, np.int32)


def scores(samples: Any, labels: Any, *, classifier: Any = None, ref: Any = None) -> dict[str, float]:
    """{"fd", "accuracy"} of samples [N, 8, 8, 1] asked for `labels` int[N]: `metrics.fd` (clipped to [-1, 1] as
    there) and the share whose classifier prediction is the requested label (on the same clipped images)."""
    x = np.asarray(samples)
    y = np.asarray(labels)
    if y.shape != x.shape[:1]:
        raise ValueError(f"labels must have one entry per sample, shape ({x.shape[0]},), got {y.shape}")
    params = shipped_classifier() if classifier is None else classifier
    dist = fd(x, ref=ref, classifier=params)
    acc = accuracy(params, np.clip(x.astype(np.float32), -1.0, 1.0), y)
    return {"fd": float(dist), "accuracy": float(acc)}


class ConditionalFD(DigitsFD):
    """A search metric `metric(samples, x_T, cond) -> float` (lower is better) for samples asked for labels
    (the evaluator's `cond`: the rows sampled, in order; called without `cond`, the first rows of `labels`):

        score = FD + accuracy_weight * (100 - accuracy in %)

    the conditional FD, plus `accuracy_weight` FD points per percentage point of accuracy lost (0: the FD alone),
    so that a schedule cannot win on FD by drawing the wrong classes. `name` says which (the archive's metric
    name); every score's {"fd", "accuracy"} is appended to `self.history`. The features' sums and the number of
    correct labels are computed on the devices (`DigitsFD`)."""

    def __init__(self, labels: Any, *, accuracy_weight: float = 0.0, classifier: Any = None, ref: Any = None):
        super().__init__(ref=ref, classifier=classifier)
        self.labels = np.asarray(labels)
        self.accuracy_weight = checks.real("accuracy_weight", accuracy_weight, ge=0)
        self.history: list[dict[str, float]] = []
        self.name = "cond_fd" + (f"+{self.accuracy_weight:g}x_err_pct" if self.accuracy_weight else "")

    @staticmethod
    def per_sample(args, samples, cond):
        params, center = args
        x = jnp.clip(samples.astype(jnp.float32), -1.0, 1.0)
        f = apply_classifier(params, x, True)
        correct = jnp.argmax(apply_classifier(params, x, False), axis=-1) == jnp.asarray(cond).reshape(-1)
        return f - center, correct.astype(f.dtype)[:, None]

    def __call__(self, samples, x_T=None, cond=None) -> float:
        y = self.labels[: len(samples)] if cond is None else np.asarray(cond)
        if y.shape != (len(samples),):
            raise ValueError(f"labels must have one entry per sample, shape ({len(samples)},), got {y.shape}")
        return super().__call__(samples, x_T, y)

    def finalize(self, sums: FeatureSums) -> float:
        s = {"fd": super().finalize(sums), "accuracy": float(np.asarray(sums.extra)[0] / np.asarray(sums.n))}
        self.history.append(s)
        return s["fd"] + self.accuracy_weight * 100.0 * (1.0 - s["accuracy"])
