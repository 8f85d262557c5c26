"""Distances between two sets of samples of any shape, for models that are not the digits zoo.

- `sliced_wasserstein(x, y)`: the sliced p-Wasserstein distance (Rabin et al. 2011; Bonneel et al. 2015),
  (E_theta W_p(<theta, X>, <theta, Y>)^p)^(1/p) over `num_projections` random unit directions theta drawn from
  `seed`. Each 1-D W_p between the empirical measures of n and m points is exact: the integral over u in (0, 1)
  of |F^-1(u) - G^-1(u)|^p, piecewise constant between the breakpoints i/n and j/m.
- `energy_distance(x, y)`: Székely and Rizzo's energy distance sqrt(2 E|X - Y| - E|X - X'| - E|Y - Y'|) with
  Euclidean norms over the empirical measures (V-statistics, so it is >= 0 and 0 only for equal sets; in 1-D
  it equals `scipy.stats.energy_distance`).

Both flatten each sample ([n, *shape] -> [n, d]), work in float64 on the host and accept different n and m.
`SlicedWasserstein(data)` and `EnergyDistance(data)` are search metrics `metric(samples, x_T) -> float`: the
distance of a schedule's samples to a fixed set `data` (held-out data, or a converged sampler's output), named
for the report.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

from omsjax.fields import count

__all__ = ["sliced_wasserstein", "energy_distance", "SlicedWasserstein", "EnergyDistance"]


def _flat(name: str, a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim < 1 or a.shape[0] < 1:
        raise ValueError(f"{name} must be samples [n, ...] with n >= 1, got shape {a.shape}")
    a = a.reshape(a.shape[0], -1)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has {int(np.sum(~np.all(np.isfinite(a), axis=1)))} sample(s) with NaN or inf")
    return a


def _pair(x, y, names=("x", "y")) -> tuple[np.ndarray, np.ndarray]:
    (a, b), x, y = names, _flat(names[0], x), _flat(names[1], y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{a} and {b} must hold samples of the same size, got {x.shape[1]} and {y.shape[1]} numbers")
    return x, y


def _quantile_pieces(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(widths, i, j): the pieces of (0, 1) between the breakpoints k/n and k/m, and on each piece the index of
    the sorted sample of x (n points) and of y (m points) that both quantile functions take there."""
    u = np.union1d(np.arange(n + 1) / n, np.arange(m + 1) / m)
    mid = 0.5 * (u[1:] + u[:-1])
    return np.diff(u), np.minimum((mid * n).astype(int), n - 1), np.minimum((mid * m).astype(int), m - 1)


def sliced_wasserstein(x, y, *, num_projections: int = 256, p: float = 2.0, seed: int = 0, names=("x", "y")) -> float:
    """The sliced p-Wasserstein distance between the samples `x` [n, ...] and `y` [m, ...] (module docstring).

    The directions are normal draws of `np.random.default_rng(seed)`, normalised (for 1-D samples every
    direction is +-1 and the result is the exact W_p); `names` name x and y in errors."""
    num_projections = count("sliced_wasserstein: num_projections", num_projections)
    seed = count("sliced_wasserstein: seed", seed, 0, maximum=2**32 - 1)  # numpy's generator takes any
    if not p >= 1:
        raise ValueError(f"p must be >= 1, got {p!r}")
    x, y = _pair(x, y, names)
    theta = np.random.default_rng(seed).standard_normal((x.shape[1], num_projections))
    theta /= np.linalg.norm(theta, axis=0, keepdims=True)
    px, py = np.sort(x @ theta, axis=0), np.sort(y @ theta, axis=0)  # [n, L], [m, L]
    w, i, j = _quantile_pieces(x.shape[0], y.shape[0])
    per_direction = w @ np.abs(px[i] - py[j]) ** p  # W_p^p of each projection
    return float(np.mean(per_direction) ** (1.0 / p))


def energy_distance(x, y, *, names=("x", "y")) -> float:
    """The energy distance between the samples `x` [n, ...] and `y` [m, ...] (module docstring); `names` name
    them in errors."""
    x, y = _pair(x, y, names)
    d2 = 2.0 * cdist(x, y).mean() - cdist(x, x).mean() - cdist(y, y).mean()
    return float(np.sqrt(max(d2, 0.0)))  # >= 0 up to rounding


class SlicedWasserstein:
    """`sliced_wasserstein(samples, data)` as a search metric `metric(samples, x_T) -> float` (lower is better);
    `data` [m, ...] the target samples, `num_projections`, `p`, `seed` as `sliced_wasserstein`'s (fixed, so every
    schedule is measured along the same directions)."""

    def __init__(self, data, *, num_projections: int = 256, p: float = 2.0, seed: int = 0):
        self.data = _flat("data", data)
        self.kw = dict(num_projections=num_projections, p=p, seed=seed)
        sliced_wasserstein(self.data[:1], self.data[:1], **self.kw)  # checks the options now, not mid-search
        self.name = f"sliced_wasserstein[p={p:g}, {num_projections} directions, {self.data.shape[0]} data samples]"

    def __call__(self, samples, x_T) -> float:
        return sliced_wasserstein(samples, self.data, names=("samples", "data"), **self.kw)


class EnergyDistance:
    """`energy_distance(samples, data)` as a search metric `metric(samples, x_T) -> float` (lower is better);
    `data` [m, ...] the target samples."""

    def __init__(self, data):
        self.data = _flat("data", data)
        self.name = f"energy_distance[{self.data.shape[0]} data samples]"

    def __call__(self, samples, x_T) -> float:
        return energy_distance(samples, self.data, names=("samples", "data"))
