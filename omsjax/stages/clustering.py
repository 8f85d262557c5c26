r"""Timestep clustering (REFERENCE.md section 7): which noise levels the optimal denoiser treats alike.

With the optimal denoiser x0*(x, t) of the training set (`oracles.EmpiricalDenoiser`) and the same pairs
(x0, eps), x_t = alpha_t x0 + sigma_t eps, the optimal noise prediction is

    eps*_t = (x_t - alpha_t x0*(x_t, t)) / sigma_t = eps + (alpha_t / sigma_t) (x0 - x0*(x_t, t)),

and the similarity of the noise levels a, b is the fraction of pixels where the two predictions agree,

    S(a, b) = E_{x0, eps} (1/D) sum_p 1{ |eps*_a - eps*_b|_p <= eta }          (eta = 2/255 by default).

`similarity` / `similarity_matrix` estimate S by Monte Carlo, computing eps*_a - eps*_b as the difference of the
deviations (alpha/sigma)(x0 - x0*) (no cancellation at small t, where x0* = x0 to the last bit). With
`prediction="x0"` the data predictions x0* are compared instead. `boundaries` applies the paper's threshold rule,
`partition` the contiguous-partition alternative (dynamic programming), `uniform_boundaries` the ablation baselines.
`clustering_report` runs all of them on a data set (`omsjax stages cluster`); `stage_of` maps times to stages.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from omsjax import noise
from omsjax.checks import count, integer
from omsjax.checks import is_real as _is_real
from omsjax.noise import NoiseSchedule
from omsjax.oracles import EmpiricalDenoiser
from omsjax.spacing import time_steps

__all__ = [
    "PREDICTIONS",
    "DEFAULT_ETA",
    "similarity",
    "similarity_matrix",
    "boundaries",
    "Partition",
    "partition",
    "partition_score",
    "uniform_boundaries",
    "clustering_report",
    "stage_of",
]

PREDICTIONS = ("eps", "x0")
DEFAULT_ETA = 2.0 / 255.0


def _check_times(name: str, times, ns: NoiseSchedule) -> np.ndarray:
    t = np.asarray(times, np.float64)
    if t.ndim != 1 or t.size < 1:
        raise ValueError(f"{name} must be a 1-D array of times, got shape {t.shape}")
    if not np.all(np.isfinite(t)) or np.any(t <= 0) or np.any(t > ns.t_max * (1 + 1e-12)):
        raise ValueError(f"{name} must lie in (0, T = {ns.t_max}], got min {t.min()}, max {t.max()}")
    return t


def _deviations(denoiser, ns, x0, eps, times, prediction):
    """[G, S, D]: eps*_t - eps = (alpha/sigma)(x0 - x0*) ("eps") or x0*_t - x0 ("x0") at each time of `times`."""

    def one(t):
        alpha, sigma = jnp.exp(ns.log_alpha(t)), ns.sigma(t)
        x = alpha * x0 + sigma * eps
        d = x0 - denoiser.x0(ns, x, t)
        return (alpha / sigma) * d if prediction == "eps" else -d

    return jax.lax.map(one, times)


def _draw(flat: jax.Array, key: jax.Array, i: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sample i of the Monte Carlo: (x0 uniform over the rows of flat [n, D], eps ~ N(0, I_D)) from fold_in(key, i)."""
    k_idx, k_eps = jax.random.split(jax.random.fold_in(key, i))
    j = jax.random.randint(k_idx, (), 0, flat.shape[0])
    return flat[j], jax.random.normal(k_eps, flat.shape[1:], flat.dtype)


@functools.partial(jax.jit, static_argnames=("num_samples", "batch_size", "prediction"))
def _agreement_counts(denoiser, ns, data, times_a, times_b, key, eta, *, num_samples, batch_size, prediction):
    """int32 [A, B]: the number of (sample, pixel) pairs whose predictions at a and b agree within eta.

    Sample i draws its x0 index and its noise from `fold_in(key, i)`, so the counts do not depend on batch_size.
    """
    flat = data.reshape(data.shape[0], -1)
    n_chunks = -(-num_samples // batch_size)

    def chunk(counts, c):
        i = c * batch_size + jnp.arange(batch_size)
        x0, eps = jax.vmap(lambda i: _draw(flat, key, i))(i)
        dev_a = _deviations(denoiser, ns, x0, eps, times_a, prediction)
        dev_b = dev_a if times_b is None else _deviations(denoiser, ns, x0, eps, times_b, prediction)
        valid = (i < num_samples)[:, None]  # padding of the last chunk

        def row(d):  # d [S, D] at one time a -> [B]
            agree = (jnp.abs(d[None] - dev_b) <= eta) & valid[None]
            return jnp.sum(agree, axis=(1, 2), dtype=jnp.int32)

        return counts + jax.lax.map(row, dev_a), None

    n_b = times_a.shape[0] if times_b is None else times_b.shape[0]
    counts = jnp.zeros((times_a.shape[0], n_b), jnp.int32)
    counts, _ = jax.lax.scan(chunk, counts, jnp.arange(n_chunks))
    return counts


def similarity(
    denoiser: EmpiricalDenoiser,
    noise_schedule: NoiseSchedule,
    data,
    times_a,
    times_b,
    key: jax.Array,
    *,
    num_samples: int,
    eta: float = DEFAULT_ETA,
    prediction: str = "eps",
    batch_size: int = 256,
) -> np.ndarray:
    """Monte-Carlo similarity S(a, b) of the optimal denoiser at every pair of times, float64 [A, B] on the host.

    S(a, b) = E (1/D) sum_p 1{|eps*_a(x_a) - eps*_b(x_b)|_p <= eta} with x_t = alpha_t x0 + sigma_t eps for the
    same (x0, eps) at a and b; x0 uniform over `data` [n, ...] (usually the denoiser's own training set),
    eps ~ N(0, I). `prediction="x0"` compares the data predictions x0*. Computed in `data`'s dtype, `batch_size`
    samples at a time (memory ~ (A + B) * batch_size * D); the result does not depend on `batch_size`.
    """
    if not isinstance(denoiser, EmpiricalDenoiser):
        raise ValueError(f"denoiser must be an omsjax.oracles.EmpiricalDenoiser, got {type(denoiser).__name__}")
    if not isinstance(noise_schedule, NoiseSchedule):
        raise ValueError(f"noise_schedule must be an omsjax noise schedule, got {type(noise_schedule).__name__}")
    data = jnp.asarray(data)
    if data.ndim < 2 or data.shape[0] < 1 or not jnp.issubdtype(data.dtype, jnp.floating):
        raise ValueError(f"data must be a floating-point array [n, ...] with n >= 1, got {data.shape} {data.dtype}")
    if math.prod(data.shape[1:]) != math.prod(denoiser.data.shape[1:]):
        raise ValueError(f"data samples {data.shape[1:]} do not match the denoiser's {denoiser.data.shape[1:]}")
    count("num_samples", num_samples)
    count("batch_size", batch_size)
    if not _is_real(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    dtype = data.dtype
    ta = jnp.asarray(_check_times("times_a", times_a, noise_schedule), dtype)
    tb = None if times_b is None else jnp.asarray(_check_times("times_b", times_b, noise_schedule), dtype)
    counts = _agreement_counts(
        denoiser,
        noise_schedule,
        data,
        ta,
        tb,
        key,
        jnp.asarray(eta, dtype),
        num_samples=int(num_samples),
        batch_size=int(min(batch_size, num_samples)),
        prediction=prediction,
    )
    return np.asarray(counts, np.float64) / (num_samples * math.prod(data.shape[1:]))


def similarity_matrix(
    denoiser: EmpiricalDenoiser, noise_schedule: NoiseSchedule, data, grid, key: jax.Array, **options
) -> np.ndarray:
    """The symmetric similarity matrix S(grid_i, grid_j), float64 [G, G]: `similarity(denoiser, noise_schedule,
    data, grid, None, key, **options)` (its keyword options: num_samples, eta, prediction, batch_size); the
    predictions at each grid time are computed once per batch of samples. Its diagonal is 1."""
    return similarity(denoiser, noise_schedule, data, grid, None, key, **options)


def _check_sim(sim) -> np.ndarray:
    s = np.asarray(sim, np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] < 2:
        raise ValueError(f"sim must be a square matrix [G, G] with G >= 2, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("sim must be finite")
    return s


def boundaries(sim, grid, alpha: float) -> tuple[float, float]:
    """The paper's two boundaries (t1, t2) from a similarity matrix over an increasing time grid.

    Rule (grid indices 0..G-1; grid[0] ~ 0 stands for the t ~ 0 denoiser, grid[-1] for the t = T one; stage 0 is
    t <= t1, stage 1 is t1 < t <= t2, stage 2 is t > t2):
      m0[j] = mean(sim[0..j, 0])          mean similarity to the first denoiser over the grid points t <= grid[j],
      m1[j] = mean(sim[j+1..G-1, G-1])    mean similarity to the last denoiser over the grid points t > grid[j];
      t1 = grid[k1], k1 = the largest k such that m0[j] >= alpha for every j <= k (the running mean "stays" above
           alpha: the last index before it first drops below);
      t2 = grid[k2], k2 = the smallest k <= G-2 such that m1[j] >= alpha for every k <= j <= G-2.
    m0[0] = m1[G-2] = 1, so both exist. Raises ValueError when k1 >= k2 (no middle stage: t1 >= t2), naming
    both; a larger alpha moves t1 down and t2 up.
    """
    s = _check_sim(sim)
    g = np.asarray(grid, np.float64)
    n = s.shape[0]
    if g.shape != (n,) or not np.all(np.diff(g) > 0):
        raise ValueError(f"grid must be a strictly increasing array of {n} times (one per row of sim)")
    if not _is_real(alpha) or not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    m0 = np.cumsum(s[:, 0]) / np.arange(1, n + 1)
    below = np.nonzero(m0 < alpha)[0]
    k1 = n - 1 if below.size == 0 else int(below[0]) - 1
    tail = s[1:, -1][::-1]  # sim[G-1, G-1], sim[G-2, G-1], ..., sim[1, G-1]
    m1 = (np.cumsum(tail) / np.arange(1, n))[::-1]  # m1[j] = mean(sim[j+1.., G-1]), j = 0..G-2
    below = np.nonzero(m1 < alpha)[0]
    k2 = 0 if below.size == 0 else int(below[-1]) + 1
    if k1 < 0 or k1 >= k2:
        raise ValueError(
            f"boundaries: t1 = {g[max(k1, 0)]:.4g} (index {k1}) is not below t2 = {g[k2]:.4g} (index {k2}) at "
            f"alpha = {alpha}: no middle stage; raise alpha or refine the grid"
        )
    return float(g[k1]), float(g[k2])


class Partition(NamedTuple):
    """A contiguous partition of a grid into stages.

    starts: int [K - 1], the grid index of the first point of stages 1..K-1.
    times: float [K - 1], the boundary times grid[starts - 1] (a boundary belongs to the lower stage), or None.
    score: the size-weighted mean intra-stage similarity (see `partition_score`).
    """

    starts: np.ndarray
    times: np.ndarray | None
    score: float


def partition_score(sim, starts) -> float:
    """(1/G) sum_k (1/|I_k|) sum_{a, b in I_k} sim[a, b]: the mean over grid points of their mean similarity to
    the members of their own stage (the stages I_k split 0..G-1 at `starts`)."""
    s = _check_sim(sim)
    edges = [0, *[int(i) for i in starts], s.shape[0]]
    return float(sum(s[a:b, a:b].sum() / (b - a) for a, b in itertools.pairwise(edges)) / s.shape[0])


def partition(sim, num_stages: int, grid=None) -> Partition:
    """The contiguous partition of the grid into `num_stages` non-empty stages maximising `partition_score`.

    Size-weighted (each grid point counts once) rather than a plain mean over stages, which a singleton stage
    (mean similarity 1) would win trivially. Exact dynamic programming over the end points, O(K G^2) with the
    block sums from a 2-D prefix sum: best[k, j] = max_i best[k-1, i] + block(i, j) / (j - i).
    """
    s = _check_sim(sim)
    n = s.shape[0]
    num_stages = count("num_stages", num_stages, maximum=n)  # at most G
    c = np.zeros((n + 1, n + 1))
    c[1:, 1:] = np.cumsum(np.cumsum(s, axis=0), axis=1)
    i = np.arange(n + 1)
    lo, hi = i[:, None], i[None, :]  # interval [lo, hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        cost = (c[hi, hi] - c[lo, hi] - c[hi, lo] + c[lo, lo]) / (hi - lo)
    cost = np.where(hi > lo, cost, -np.inf)
    best = np.full((num_stages + 1, n + 1), -np.inf)
    arg = np.zeros((num_stages + 1, n + 1), int)
    best[0, 0] = 0.0
    for k in range(1, num_stages + 1):
        total = best[k - 1][:, None] + cost  # [start i, end j]
        arg[k] = np.argmax(total, axis=0)
        best[k] = total[arg[k], np.arange(n + 1)]
    starts, j = [], n
    for k in range(num_stages, 0, -1):
        j = int(arg[k, j])
        starts.append(j)
    starts = np.asarray(starts[::-1][1:], int)
    times = None
    if grid is not None:
        g = np.asarray(grid, np.float64)
        if g.shape != (n,) or not np.all(np.diff(g) > 0):
            raise ValueError(f"grid must be a strictly increasing array of {n} times (one per row of sim)")
        times = g[starts - 1]
    return Partition(starts=starts, times=times, score=float(best[num_stages, n] / n))


def uniform_boundaries(
    noise_schedule: NoiseSchedule,
    num_stages: int,
    spacing: str = "time_uniform",
    *,
    t_start: float | None = None,
    t_end: float | None = None,
) -> tuple[float, ...]:
    """Ablation baselines: the K - 1 interior points of `omsjax.spacing.time_steps(ns, K, spacing)` in increasing order,
    i.e. stages of equal length in t ("time_uniform") or in log-SNR ("logSNR") between t_end (default: the
    schedule's default end time) and t_start (default T)."""
    ts = time_steps(noise_schedule, count("num_stages", num_stages), spacing, t_start=t_start, t_end=t_end)
    return tuple(float(t) for t in ts[1:-1][::-1])


def _levels(ns: NoiseSchedule, times, grid: np.ndarray, sim: np.ndarray) -> dict:
    """Boundary times as t, half log-SNR lambda and EDM sigma = exp(-lambda), with the `partition_score` on `sim`
    of the partition they induce on `grid` (a boundary belongs to the lower stage)."""
    t = np.asarray(times, np.float64)
    starts = np.searchsorted(grid, t, side="right")
    ok = starts.size == 0 or (np.all(np.diff(starts) > 0) and starts[0] > 0 and starts[-1] < grid.size)
    return {
        "t": t.tolist(),
        "lambda": np.asarray(ns.lam(t), np.float64).tolist(),
        "sigma": np.asarray(ns.edm_sigma(t), np.float64).tolist(),
        "score": partition_score(sim, starts) if ok else None,
    }


def clustering_report(
    data,
    *,
    grid_size: int = 100,
    num_samples: int = 1000,
    alpha: float = 0.6,
    num_stages: int = 3,
    prediction: str = "eps",
    eta: float = DEFAULT_ETA,
    seed: int = 0,
    batch_size: int = 256,
) -> dict:
    """Timestep clustering of a data set [n, ...] with its own `EmpiricalDenoiser` on the continuous linear VP schedule
    (`noise.vp_linear()`), as a JSON-friendly dict.

    The similarity matrix (`similarity_matrix`, x0 uniform over `data`, key PRNGKey(seed), in data's dtype) over the
    grid of `grid_size` times linspace(1e-3, 1, G) (grid[0], the samplers' end time, stands for t ~ 0), then:
    "threshold": the paper's (t1, t2) at `alpha` (`boundaries`; None with "threshold_error" when there is no middle
    stage), "partition": the best contiguous partition into `num_stages` stages (`partition`), "uniform_t" and
    "uniform_logsnr": `uniform_boundaries` for the same number of stages. Each boundary set is given as "t",
    "lambda" (half log-SNR) and "sigma" (EDM sigma = exp(-lambda)), with the `partition_score` of the stages it
    induces on the grid ("score"). Also "grid", "similarity" [G, G] and the settings.
    """
    grid_size = count("grid_size", grid_size, 3)
    count("num_stages", num_stages, maximum=grid_size)
    if not _is_real(alpha) or not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    integer("seed", seed)
    data = jnp.asarray(data)
    ns = noise.vp_linear()
    grid = np.linspace(ns.default_t_end, ns.t_max, int(grid_size))
    t0 = time.perf_counter()
    sim = similarity_matrix(
        EmpiricalDenoiser(data),
        ns,
        data,
        grid,
        jax.random.PRNGKey(seed),
        num_samples=num_samples,
        eta=eta,
        prediction=prediction,
        batch_size=batch_size,
    )
    seconds = time.perf_counter() - t0
    try:
        threshold, threshold_error = _levels(ns, boundaries(sim, grid, alpha), grid, sim), None
    except ValueError as e:
        threshold, threshold_error = None, str(e)
    part = partition(sim, int(num_stages), grid)
    return {
        "schedule": noise.to_dict(ns),
        "num_data": int(data.shape[0]),
        "dtype": str(data.dtype),
        "grid": grid.tolist(),
        "num_samples": int(num_samples),
        "eta": float(eta),
        "prediction": prediction,
        "alpha": float(alpha),
        "num_stages": int(num_stages),
        "seed": int(seed),
        "threshold": threshold,
        "threshold_error": threshold_error,
        "partition": dict(_levels(ns, part.times, grid, sim), starts=part.starts.tolist()),
        "uniform_t": _levels(ns, uniform_boundaries(ns, int(num_stages), "time_uniform"), grid, sim),
        "uniform_logsnr": _levels(ns, uniform_boundaries(ns, int(num_stages), "logSNR"), grid, sim),
        "similarity": sim.tolist(),
        "seconds": seconds,
    }


def stage_of(bounds, t) -> jax.Array:
    """int32 stage index of each time: #{b in bounds : t > b} (a boundary belongs to the lower stage)."""
    t = jnp.asarray(t)
    b = jnp.asarray(bounds, t.dtype)
    if b.size == 0:
        return jnp.zeros(t.shape, jnp.int32)
    return jnp.sum(t[..., None] > b, axis=-1, dtype=jnp.int32)
