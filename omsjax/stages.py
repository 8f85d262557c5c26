r"""Multi-stage diffusion (Zhang et al., CVPR 2024): timestep clustering and multi-decoder U-Nets.

Timestep clustering (REFERENCE.md section 7)
--------------------------------------------
With the optimal denoiser x0*(x, t) of the training set (`oracles.EmpiricalDenoiser`) and the same pairs
(x0, eps), x_t = alpha_t x0 + sigma_t eps, the optimal noise prediction is

    eps*_t = (x_t - alpha_t x0*(x_t, t)) / sigma_t = eps + (alpha_t / sigma_t) (x0 - x0*(x_t, t)),

and the similarity of the noise levels a, b is the fraction of pixels where the two predictions agree,

    S(a, b) = E_{x0, eps} (1/D) sum_p 1{ |eps*_a - eps*_b|_p <= eta }          (eta = 2/255 by default).

`similarity` / `similarity_matrix` estimate S by Monte Carlo, computing eps*_a - eps*_b as the difference of the
deviations (alpha/sigma)(x0 - x0*) (no cancellation at small t, where x0* = x0 to the last bit). With
`prediction="x0"` the data predictions x0* are compared instead. `boundaries` applies the paper's threshold rule,
`partition` the contiguous-partition alternative (dynamic programming), `uniform_boundaries` the ablation baselines.
`clustering_report` runs all of them on a data set (`omsjax stages cluster`).

Multi-decoder U-Net
-------------------
One shared encoder (time embedding, input conv, the down path and the middle block of `nets.UNet`) and one decoder
per stage (the up path and the output head), each with its own width. Stage k covers the times
b_{k-1} < t <= b_k (b_0 = 0, b_K = T: a boundary time belongs to the lower stage), i.e. stage(t) = #{b : t > b}.
The parameter tree is {"encoder": ..., "decoder_0": ..., ..., "decoder_{K-1}": ...}.

Training
--------
Each step trains one stage (one micro-batch = one stage): draw the stage k (by default with probability
proportional to its interval length, so that t is marginally U(T_EPS, 1) as in `train.loss_fn`), then
t ~ U(edge_k, edge_{k+1}), x = alpha_t x0 + sigma_t eps, and the loss of `train.loss_fn`'s "vp" branch,
mean (eps_hat - eps)^2 (continuous linear VP, noise prediction). The decoders absent from a step do not move: each
parameter group (the encoder, each decoder) has its own Adam state (moments as one flat vector per group, and its
own step count for the bias correction), and a decoder's parameters, Adam state and EMA are all left bit-identical
unless it is the step's stage, as PyTorch's Adam skips parameters without gradients (plain optax would keep moving
them on stale momentum, and its EMA would keep drifting toward them). So a decoder's EMA averages over its own
updates: with decay d and stage probability p_k it spans ~1/((1 - d) p_k) steps. The gradient is clipped to the
global norm over all groups and the learning rate `train.lr_schedule` follows the global step. The step is compiled
once per stage and the stages of a run are drawn first: XLA's CPU backend runs a backward pass inside a conditional
(`lax.switch` on a traced stage) 10-30x slower than the same convolutions outside one.
`train(..., stop_at=s)` with `save_state` / `restore_state` makes a run resumable (legs give the uninterrupted
run bit for bit).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import numbers
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from omsjax import nets, schedules
from omsjax import train as _train
from omsjax.models import Model
from omsjax.oracles import EmpiricalDenoiser
from omsjax.schedules import NoiseSchedule

__all__ = [
    "PREDICTIONS",
    "similarity",
    "similarity_matrix",
    "boundaries",
    "Partition",
    "partition",
    "partition_score",
    "uniform_boundaries",
    "stage_of",
    "MultiStageConfig",
    "StageTrainConfig",
    "init_params",
    "encode",
    "decode",
    "stage_apply_fn",
    "apply_fn",
    "active_params",
    "mean_active_params",
    "forward_flops",
    "init_state",
    "loss_fn",
    "train_step",
    "train",
    "to_model",
    "save_checkpoint",
    "load_checkpoint",
    "save_state",
    "restore_state",
    "clustering_report",
]

PREDICTIONS = ("eps", "x0")
DEFAULT_ETA = 2.0 / 255.0

_DTYPE = jnp.float32  # training dtype, as in omsjax.train


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


# ----------------------------------------------------------------------------------------------------------------
# Timestep clustering
# ----------------------------------------------------------------------------------------------------------------


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
    for name, v in (("num_samples", num_samples), ("batch_size", batch_size)):
        if not _is_int(v) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
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
    denoiser: EmpiricalDenoiser,
    noise_schedule: NoiseSchedule,
    data,
    grid,
    key: jax.Array,
    *,
    num_samples: int,
    eta: float = DEFAULT_ETA,
    prediction: str = "eps",
    batch_size: int = 256,
) -> np.ndarray:
    """The symmetric similarity matrix S(grid_i, grid_j), float64 [G, G] (see `similarity`); the predictions at
    each grid time are computed once per batch of samples. Its diagonal is 1."""
    return similarity(
        denoiser,
        noise_schedule,
        data,
        grid,
        None,
        key,
        num_samples=num_samples,
        eta=eta,
        prediction=prediction,
        batch_size=batch_size,
    )


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
    block sums from a 2-D prefix sum: best[k][j] = max_i best[k-1][i] + block(i, j) / (j - i).
    """
    s = _check_sim(sim)
    n = s.shape[0]
    if not _is_int(num_stages) or not 1 <= num_stages <= n:
        raise ValueError(f"num_stages must be an int in [1, G = {n}], got {num_stages!r}")
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
    """Ablation baselines: the K - 1 interior points of `schedules.time_steps(ns, K, spacing)` in increasing order,
    i.e. stages of equal length in t ("time_uniform") or in log-SNR ("logSNR") between t_end (default: the
    schedule's default end time) and t_start (default T)."""
    if not _is_int(num_stages) or num_stages < 1:
        raise ValueError(f"num_stages must be a positive int, got {num_stages!r}")
    ts = schedules.time_steps(noise_schedule, int(num_stages), spacing, t_start=t_start, t_end=t_end)
    return tuple(float(t) for t in ts[1:-1][::-1])


def _levels(ns: NoiseSchedule, times, grid: np.ndarray, sim: np.ndarray) -> dict:
    """Boundary times as t, half log-SNR lambda and EDM sigma = exp(-lambda), with the `partition_score` on `sim`
    of the partition they induce on `grid` (a boundary belongs to the lower stage)."""
    t = np.asarray(times, np.float64)
    starts = np.searchsorted(grid, t, side="right")
    ok = starts.size == 0 or (np.all(np.diff(starts) > 0) and starts[0] > 0 and starts[-1] < grid.size)
    return {"t": t.tolist(), "lambda": np.asarray(ns.lam(t), np.float64).tolist(),
            "sigma": np.asarray(ns.edm_sigma(t), np.float64).tolist(),
            "score": partition_score(sim, starts) if ok else None}  # fmt: skip


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
    (`schedules.vp_linear()`), as a JSON-friendly dict.

    The similarity matrix (`similarity_matrix`, x0 uniform over `data`, key PRNGKey(seed), in data's dtype) over the
    grid of `grid_size` times linspace(1e-3, 1, G) (grid[0], the samplers' end time, stands for t ~ 0), then:
    "threshold": the paper's (t1, t2) at `alpha` (`boundaries`; None with "threshold_error" when there is no middle
    stage), "partition": the best contiguous partition into `num_stages` stages (`partition`), "uniform_t" and
    "uniform_logsnr": `uniform_boundaries` for the same number of stages. Each boundary set is given as "t",
    "lambda" (half log-SNR) and "sigma" (EDM sigma = exp(-lambda)), with the `partition_score` of the stages it
    induces on the grid ("score"). Also "grid", "similarity" [G][G] and the settings.
    """
    if not _is_int(grid_size) or grid_size < 3:
        raise ValueError(f"grid_size must be an int >= 3, got {grid_size!r}")
    if not _is_int(num_stages) or not 1 <= num_stages <= grid_size:
        raise ValueError(f"num_stages must be an int in [1, grid_size = {grid_size}], got {num_stages!r}")
    if not _is_real(alpha) or not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    if not _is_int(seed):
        raise ValueError(f"seed must be an int, got {seed!r}")
    data = jnp.asarray(data)
    ns = schedules.vp_linear()
    grid = np.linspace(ns.default_t_end, ns.t_max, int(grid_size))
    t0 = time.perf_counter()
    sim = similarity_matrix(EmpiricalDenoiser(data), ns, data, grid, jax.random.PRNGKey(seed),
                            num_samples=num_samples, eta=eta, prediction=prediction,
                            batch_size=batch_size)  # fmt: skip
    seconds = time.perf_counter() - t0
    try:
        threshold, threshold_error = _levels(ns, boundaries(sim, grid, alpha), grid, sim), None
    except ValueError as e:
        threshold, threshold_error = None, str(e)
    part = partition(sim, int(num_stages), grid)
    return {
        "schedule": schedules.to_dict(ns),
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


# ----------------------------------------------------------------------------------------------------------------
# Multi-decoder U-Net
# ----------------------------------------------------------------------------------------------------------------


def _positive_ints(name: str, values, *, allow_empty: bool = False) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or (not values and not allow_empty):
        raise ValueError(f"{name} must be a {'' if allow_empty else 'non-empty '}sequence of positive ints, got "
                         f"{values!r}")  # fmt: skip
    for v in values:
        if not _is_int(v) or v <= 0:
            raise ValueError(f"{name} entries must be positive ints, got {values!r}")
    return tuple(int(v) for v in values)


@dataclasses.dataclass(frozen=True)
class MultiStageConfig:
    """Hyperparameters of a multi-decoder U-Net (hashable: a static argument of jitted functions).

    Attributes:
      boundaries: K - 1 strictly increasing VP times in (0, 1) splitting (0, 1] into K stages (stage k:
        b_{k-1} < t <= b_k). Empty: one stage (a plain U-Net with a shared/own split).
      decoder_channels: K base widths, one decoder per stage, stage 0 (near data) first; decoder k's level i has
        width decoder_channels[k] * channel_mults[i].
      encoder_channels: base width of the shared encoder (level i: encoder_channels * channel_mults[i]).
      channel_mults, num_res_blocks, attention_levels, out_channels, time_embed_dim, time_scale, groups: as in
        `nets.UNetConfig` (shared by the encoder and every decoder; time_embed_dim None: 4 * encoder_channels).
    """

    boundaries: tuple[float, ...]
    decoder_channels: tuple[int, ...]
    encoder_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = ()
    out_channels: int | None = None
    time_embed_dim: int | None = None
    time_scale: float = 1000.0
    groups: int = 8

    def __post_init__(self):
        b = self.boundaries
        if not isinstance(b, (tuple, list)) or not all(_is_real(v) for v in b):
            raise ValueError(f"boundaries must be a sequence of finite times, got {b!r}")
        b = tuple(float(v) for v in b)
        if any(not 0 < v < 1 for v in b) or any(x >= y for x, y in itertools.pairwise(b)):
            raise ValueError(f"boundaries must be strictly increasing times in (0, 1), got {b}")
        object.__setattr__(self, "boundaries", b)
        dec = _positive_ints("decoder_channels", self.decoder_channels)
        if len(dec) != len(b) + 1:
            raise ValueError(
                f"decoder_channels needs one width per stage: {len(b) + 1} stages for {len(b)} boundaries, got "
                f"{len(dec)} widths"
            )
        object.__setattr__(self, "decoder_channels", dec)
        if not _is_int(self.encoder_channels) or self.encoder_channels <= 0:
            raise ValueError(f"encoder_channels must be a positive int, got {self.encoder_channels!r}")
        object.__setattr__(self, "channel_mults", _positive_ints("channel_mults", self.channel_mults))
        attn = self.attention_levels
        if not isinstance(attn, (tuple, list)):
            raise ValueError(f"attention_levels must be a sequence of level indices, got {attn!r}")
        object.__setattr__(self, "attention_levels", tuple(attn))
        if not _is_real(self.time_scale):
            raise ValueError(f"time_scale must be a finite number, got {self.time_scale!r}")
        object.__setattr__(self, "time_scale", float(self.time_scale))
        self.unet_config()  # validates the remaining fields with nets.UNetConfig's checks

    @property
    def num_stages(self) -> int:
        return len(self.decoder_channels)

    def unet_config(self, width: int | None = None) -> nets.UNetConfig:
        """The `nets.UNetConfig` with base width `width` (None: the encoder's) and this config's other fields."""
        return nets.UNetConfig(
            channels=self.encoder_channels if width is None else width,
            channel_mults=self.channel_mults,
            num_res_blocks=self.num_res_blocks,
            attention_levels=self.attention_levels,
            out_channels=self.out_channels,
            time_embed_dim=self.time_embed_dim or 4 * self.encoder_channels,
            time_scale=self.time_scale,
            groups=self.groups,
        )

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> MultiStageConfig:
        if not isinstance(d, dict):
            raise ValueError(f"MultiStageConfig.from_dict expects a dict, got {type(d).__name__}")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown MultiStageConfig fields {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class _Encoder(nn.Module):
    """Time embedding, input conv, down path and middle block of `nets.UNet`:
    (x [B, H, W, C], t [B]) -> (h, skips, emb)."""

    config: MultiStageConfig
    param_dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array):
        cfg = self.config.unet_config()
        dtype = x.dtype
        kw = dict(dtype=dtype, param_dtype=self.param_dtype or dtype)
        emb = nets.sinusoidal_embedding(t.astype(dtype) * cfg.time_scale, cfg.channels)
        emb = nn.Dense(cfg.time_embed_dim, name="time_dense_0", **kw)(emb)
        emb = nn.Dense(cfg.time_embed_dim, name="time_dense_1", **kw)(nn.silu(emb))
        h = nn.Conv(cfg.channels, (3, 3), name="conv_in", **kw)(x)
        skips = [h]
        last = cfg.num_levels - 1
        for level, mult in enumerate(cfg.channel_mults):
            for i in range(cfg.num_res_blocks):
                h = nets.ResBlock(cfg.channels * mult, cfg.groups, name=f"down_{level}_res_{i}", **kw)(h, emb)
                if level in cfg.attention_levels:
                    h = nets.AttentionBlock(cfg.groups, name=f"down_{level}_attn_{i}", **kw)(h)
                skips.append(h)
            if level != last:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), name=f"down_{level}_downsample", **kw)(h)
                skips.append(h)
        h = nets.ResBlock(h.shape[-1], cfg.groups, name="mid_res_0", **kw)(h, emb)
        if last in cfg.attention_levels:
            h = nets.AttentionBlock(cfg.groups, name="mid_attn", **kw)(h)
        h = nets.ResBlock(h.shape[-1], cfg.groups, name="mid_res_1", **kw)(h, emb)
        return h, tuple(skips), emb


class _Decoder(nn.Module):
    """Up path and zero-initialised output head of `nets.UNet` at base width `width`:
    (h, skips, emb) -> [B, H, W, out_channels]."""

    config: MultiStageConfig
    width: int
    out_channels: int
    param_dtype: Any = None

    @nn.compact
    def __call__(self, h: jax.Array, skips: tuple, emb: jax.Array) -> jax.Array:
        cfg = self.config.unet_config(self.width)
        dtype = h.dtype
        kw = dict(dtype=dtype, param_dtype=self.param_dtype or dtype)
        skips = list(skips)
        for level in reversed(range(cfg.num_levels)):
            for i in range(cfg.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = nets.ResBlock(cfg.channels * cfg.channel_mults[level], cfg.groups, name=f"up_{level}_res_{i}",
                                  **kw)(h, emb)  # fmt: skip
                if level in cfg.attention_levels:
                    h = nets.AttentionBlock(cfg.groups, name=f"up_{level}_attn_{i}", **kw)(h)
            if level != 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
                h = nn.Conv(h.shape[-1], (3, 3), name=f"up_{level}_upsample", **kw)(h)
        assert not skips
        h = nn.silu(nets.GroupNorm(cfg.groups, name="norm_out", **kw)(h))
        zeros = nn.initializers.zeros
        return nn.Conv(self.out_channels, (3, 3), kernel_init=zeros, bias_init=zeros, name="conv_out", **kw)(h)


def _check_input(config: MultiStageConfig, x, t):
    x = jnp.asarray(x)
    if x.ndim != 4 or not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a floating-point array [B, H, W, C] (NHWC), got {x.shape} {x.dtype}")
    d = config.unet_config().spatial_divisor
    if x.shape[1] % d or x.shape[2] % d:
        raise ValueError(f"spatial size {x.shape[1]}x{x.shape[2]} must be divisible by {d} for "
                         f"channel_mults={config.channel_mults}")  # fmt: skip
    t = jnp.asarray(t)
    if t.ndim == 0:
        t = jnp.broadcast_to(t, x.shape[:1])
    if t.shape != x.shape[:1]:
        raise ValueError(f"t must have shape [B] = ({x.shape[0]},) or be a scalar, got shape {t.shape}")
    return x, t.astype(x.dtype)


def _cast(params: Any, dtype) -> Any:
    def cast(p):
        return p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) and p.dtype != dtype else p

    return jax.tree.map(cast, params)


def _decoder_names(config: MultiStageConfig) -> tuple[str, ...]:
    return tuple(f"decoder_{k}" for k in range(config.num_stages))


def encode(config: MultiStageConfig, params: Any, x: jax.Array, t: jax.Array):
    """The shared encoder: (h, skips, emb) for x [B, H, W, C] and t [B] (or scalar), in x's dtype."""
    x, t = _check_input(config, x, t)
    return _Encoder(config).apply({"params": _cast(params["encoder"], x.dtype)}, x, t)


def decode(config: MultiStageConfig, params: Any, stage: int, h: jax.Array, skips: tuple, emb: jax.Array,
           out_channels: int) -> jax.Array:  # fmt: skip
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
        x, t = _check_input(config, x, t)
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
        x, t = _check_input(config, x, t)
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


# Standard deviation of a standard normal truncated to [-2, 2] (flax's variance_scaling), as in nets.init_unet.
_TRUNCATED_NORMAL_STD = nets._TRUNCATED_NORMAL_STD


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
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(_param_shapes(config, image_shape, dtype))

    def kind(path: tuple) -> str:
        names = [getattr(p, "key", None) for p in path]
        if names[-1] == "kernel":
            return "zeros" if "conv_out" in names else "lecun_normal"
        if names[-1] == "bias":
            return "zeros"
        if names[-1] == "scale":
            return "ones"
        raise NotImplementedError(f"no initialisation rule for parameter {jax.tree_util.keystr(path)}")

    kinds = [kind(path) for path, _ in path_leaves]
    total = sum(leaf.size for (_, leaf), k in zip(path_leaves, kinds, strict=True) if k == "lecun_normal")
    noise = jax.random.truncated_normal(key, -2.0, 2.0, (total,), dtype) * (1.0 / _TRUNCATED_NORMAL_STD)
    leaves, offset = [], 0
    for (_, leaf), k in zip(path_leaves, kinds, strict=True):
        if k == "lecun_normal":
            fan_in = math.prod(leaf.shape[:-1])
            leaves.append(noise[offset : offset + leaf.size].reshape(leaf.shape) * (1.0 / math.sqrt(fan_in)))
            offset += leaf.size
        else:
            leaves.append((jnp.ones if k == "ones" else jnp.zeros)(leaf.shape, dtype))
    return jax.tree_util.tree_unflatten(treedef, leaves)


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
        if not _is_int(stage) or not 0 <= stage < config.num_stages:
            raise ValueError(f"stage must be an int in [0, {config.num_stages}), got {stage!r}")

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


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StageTrainConfig:
    """Hyperparameters of a multi-stage training run (hashable; the static argument of `train_step`).

    Continuous linear VP, noise prediction, float32 (as `train.TrainConfig` with precond "vp").

    Attributes:
      net: the `MultiStageConfig`.
      steps, batch_size, lr, warmup, grad_clip, weight_decay, ema_decay, ema_warmup, seed, image_shape: as in
        `train.TrainConfig` (same learning-rate schedule `train.lr_schedule`, as a function of the global step;
        the EMA warm-up counts each group's own updates, the encoder's every step, a decoder's its stage's).
      stage_probs: probability of training each stage in a step; empty: proportional to the length of its time
        interval within (train.T_EPS, 1], so that t is marginally U(T_EPS, 1) as for a unified network.
    """

    net: MultiStageConfig
    steps: int
    batch_size: int = 128
    lr: float = 2e-3
    warmup: int = 200
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    ema_warmup: bool = False
    seed: int = 0
    image_shape: tuple = (8, 8, 1)
    stage_probs: tuple = ()

    def __post_init__(self):
        if not isinstance(self.net, MultiStageConfig):
            raise ValueError(f"net must be a MultiStageConfig, got {type(self.net).__name__}")
        if self.net.boundaries and self.net.boundaries[0] <= _train.T_EPS:
            raise ValueError(f"net.boundaries must exceed the smallest training time {_train.T_EPS}, got "
                             f"{self.net.boundaries}")  # fmt: skip
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not _is_int(self.warmup) or self.warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {self.warmup!r}")
        if not _is_int(self.seed):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        for name, lo in (("lr", 0.0), ("grad_clip", 0.0)):
            v = getattr(self, name)
            if not _is_real(v) or v <= lo:
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        if not _is_real(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not _is_real(self.ema_decay) or not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if not isinstance(self.ema_warmup, (bool, np.bool_)):
            raise ValueError(f"ema_warmup must be a bool, got {self.ema_warmup!r}")
        object.__setattr__(self, "ema_warmup", bool(self.ema_warmup))
        shape = self.image_shape
        if not isinstance(shape, (tuple, list)) or len(shape) != 3 or not all(_is_int(s) and s > 0 for s in shape):
            raise ValueError(f"image_shape must be (H, W, C) with positive ints, got {shape!r}")
        object.__setattr__(self, "image_shape", tuple(int(s) for s in shape))
        d = self.net.unet_config().spatial_divisor
        if shape[0] % d or shape[1] % d:
            raise ValueError(f"image_shape {tuple(shape)}: H and W must be divisible by {d}")
        p = self.stage_probs
        if not isinstance(p, (tuple, list)) or not all(_is_real(v) and v >= 0 for v in p):
            raise ValueError(f"stage_probs must be a sequence of numbers >= 0, got {p!r}")
        if p and (len(p) != self.net.num_stages or not math.isclose(sum(p), 1.0, abs_tol=1e-9)):
            raise ValueError(f"stage_probs must have {self.net.num_stages} entries summing to 1, got {p!r}")
        object.__setattr__(self, "stage_probs", tuple(float(v) for v in p))
        for name in ("lr", "grad_clip", "weight_decay", "ema_decay"):
            object.__setattr__(self, name, float(getattr(self, name)))
        for name in ("steps", "batch_size", "warmup", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))

    @property
    def edges(self) -> tuple[float, ...]:
        """The K + 1 edges (T_EPS, b_1, ..., b_{K-1}, 1) of the stages' training intervals."""
        return (_train.T_EPS, *self.net.boundaries, 1.0)

    @property
    def probs(self) -> tuple[float, ...]:
        """The probability of each stage per step (`stage_probs`, or proportional to the interval lengths)."""
        if self.stage_probs:
            return self.stage_probs
        e = self.edges
        return tuple((b - a) / (e[-1] - e[0]) for a, b in itertools.pairwise(e))

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["net"] = self.net.to_dict()
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: dict) -> StageTrainConfig:
        if not isinstance(d, dict) or not isinstance(d.get("net"), dict):
            raise ValueError("StageTrainConfig.from_dict expects a dict with a 'net' dict")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown StageTrainConfig fields {sorted(unknown)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**dict(kw, net=MultiStageConfig.from_dict(d["net"])))


def _keys(config: StageTrainConfig) -> tuple[jax.Array, jax.Array]:
    """(init key, base key of the per-step randomness), as in `train`."""
    k_init, k_train = jax.random.split(jax.random.PRNGKey(config.seed))
    return k_init, k_train


def mean_active_params(config: StageTrainConfig, params: Any) -> float:
    """Expected `active_params` per training step, sum_k p_k (|encoder| + |decoder_k|): the per-step cost to set
    against a unified U-Net's parameter count for an equal-compute comparison."""
    return float(sum(p * active_params(params, k) for k, p in enumerate(config.probs)))


def _group_tx(config: StageTrainConfig) -> optax.GradientTransformation:
    """Adam's direction (AdamW's with weight decay) for one parameter group; the learning rate is applied after."""
    if config.weight_decay > 0:
        return optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(config.weight_decay))
    return optax.scale_by_adam()


def init_state(config: StageTrainConfig) -> _train.TrainState:
    """Step 0: fresh float32 parameters, EMA = parameters, and one Adam state per group ("encoder", "decoder_k"),
    its moments flat vectors of the group's `ravel_pytree` order."""
    if not isinstance(config, StageTrainConfig):
        raise ValueError(f"config must be a StageTrainConfig, got {type(config).__name__}")
    k_init, _ = _keys(config)
    params = init_params(config.net, k_init, config.image_shape, _DTYPE)
    tx = _group_tx(config)
    return _train.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state={name: tx.init(ravel_pytree(p)[0]) for name, p in params.items()},
    )


def _stage_forward(net: MultiStageConfig, stage: int) -> Callable:
    """`f(params, x, t)`: the encoder, then decoder `stage` (a Python int) called directly; `params` needs only
    "encoder" and "decoder_{stage}"."""

    def f(params, x, t):
        x, t = _check_input(net, x, t)
        h, skips, emb = encode(net, params, x, t)
        return decode(net, params, stage, h, skips, emb, net.out_channels or x.shape[-1])

    return f


def loss_fn(config: StageTrainConfig, params: Any, batch: jax.Array, key: jax.Array, stage: int | jax.Array
            ) -> jax.Array:  # fmt: skip
    """Mean noise-prediction loss of stage `stage` on `batch` [B, H, W, C]:
    t ~ U(edges[stage], edges[stage + 1]), x = alpha_t x0 + sigma_t eps, mean (eps_hat(x, t) - eps)^2.

    A Python int `stage` calls its decoder directly (`params` needs only "encoder" and "decoder_{stage}"); an int32
    array (possibly traced) goes through `stage_apply_fn`'s `lax.switch`."""
    batch = jnp.asarray(batch, _DTYPE)
    b = batch.shape[0]
    k_t, k_eps = jax.random.split(key)
    edges = jnp.asarray(config.edges, _DTYPE)
    t = jax.random.uniform(k_t, (b,), _DTYPE, minval=edges[stage], maxval=edges[stage + 1])
    eps = jax.random.normal(k_eps, batch.shape, _DTYPE)
    ns = schedules.vp_linear()
    shape = (b,) + (1,) * (batch.ndim - 1)
    x = jnp.exp(ns.log_alpha(t)).reshape(shape) * batch + ns.sigma(t).reshape(shape) * eps
    if _is_int(stage):
        pred = _stage_forward(config.net, int(stage))(params, x, t)
    else:
        pred = stage_apply_fn(config.net)(params, x, t, stage)
    return jnp.mean(jnp.square(pred - eps))


def _stage_key(key: jax.Array, step: jax.Array) -> jax.Array:
    """The key of step `step`'s stage draw (the first of the three keys of `fold_in(key, step)`)."""
    return jax.random.split(jax.random.fold_in(key, step), 3)[0]


@functools.partial(jax.jit, static_argnums=0)
def _draw_stages(config: StageTrainConfig, key: jax.Array, steps: jax.Array) -> jax.Array:
    """int32 [S]: the stage drawn from `config.probs` at each optimiser step of `steps` [S]."""
    logp = jnp.log(jnp.asarray(config.probs, _DTYPE))
    return jax.vmap(lambda s: jax.random.categorical(_stage_key(key, s), logp))(steps).astype(jnp.int32)


# The stage is static: one compiled program per stage. On the CPU, XLA runs the backward pass of a conditional
# (`lax.switch` on a traced stage, or `value_and_grad` inside its branches) 10-30x slower than the same
# convolutions outside one, so the step never differentiates through a switch; the stage sequence is drawn first.
@functools.partial(jax.jit, static_argnums=(0, 4))
def _train_step(config: StageTrainConfig, state: _train.TrainState, data: jax.Array, key: jax.Array,
                stage: int) -> tuple[_train.TrainState, dict]:  # fmt: skip
    step_key = jax.random.fold_in(key, state.step)
    _, k_idx, k_loss = jax.random.split(step_key, 3)  # the first key draws the stage (`_draw_stages`)
    idx = jax.random.randint(k_idx, (config.batch_size,), 0, data.shape[0], dtype=jnp.int32)
    batch = jnp.asarray(data, _DTYPE)[idx]
    active = ("encoder", f"decoder_{stage}")
    loss, grads = jax.value_and_grad(loss_fn, argnums=1)(
        config, {name: state.params[name] for name in active}, batch, k_loss, stage
    )
    tx = _group_tx(config)
    # One flat vector per parameter group: a few large element-wise ops instead of a few per leaf (the step
    # compiles much faster). Clipping to the global norm of the gradient (absent decoders have none).
    flat_grads = {name: ravel_pytree(g)[0] for name, g in grads.items()}
    grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in flat_grads.values()))
    clip = jnp.where(grad_norm < config.grad_clip, 1.0, config.grad_clip / grad_norm)
    # A decoder absent from this step keeps its parameters, Adam state and EMA: the same arrays.
    params, ema, opt_state = dict(state.params), dict(state.ema_params), dict(state.opt_state)
    # optax mixes Python floats with int32 counts (strict promotion rejects that); the results are float32.
    with jax.numpy_dtype_promotion("standard"):
        lr = _train.lr_schedule(config)(state.step)
        for name in active:
            p, unravel = ravel_pytree(state.params[name])
            e = ravel_pytree(state.ema_params[name])[0]
            count = optax.tree_utils.tree_get(state.opt_state[name], "count")  # this group's updates so far
            d = _train.ema_decay_at(config.ema_decay, config.ema_warmup, count)
            updates, opt_state[name] = tx.update(clip * flat_grads[name], state.opt_state[name], p)
            new_p = p - lr * updates
            params[name], ema[name] = unravel(new_p), unravel(d * e + (1.0 - d) * new_p)
    new = _train.TrainState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
    return new, {"loss": loss, "grad_norm": grad_norm, "lr": lr, "stage": jnp.int32(stage)}


def train_step(config: StageTrainConfig, state: _train.TrainState, data: jax.Array, key: jax.Array,
               stage: int | jax.Array | None = None) -> tuple[_train.TrainState, dict]:  # fmt: skip
    """One optimiser step of one stage on a batch drawn from `data` [N, H, W, C] (pure; one compiled program per
    config and stage).

    The step's randomness (stage, batch indices, times, noise) comes from `fold_in(key, state.step)`. `stage`
    None draws the stage from `config.probs` (`_draw_stages`: a host round trip; `train` draws a whole run's stages
    at once); an int (or a concrete int array) trains that stage. Only the encoder and the step's decoder change:
    every other decoder's parameters, Adam state (moments and count) and EMA stay bit-identical. The learning
    rate follows the global step. Returns the new state and {"loss", "grad_norm", "lr", "stage"}.
    """
    if stage is None:
        stage = _draw_stages(config, key, jnp.reshape(state.step, (1,)))[0]
    if isinstance(stage, (jax.Array, np.ndarray, np.integer)) and jnp.issubdtype(jnp.result_type(stage), jnp.integer):
        try:
            stage = int(stage)
        except (jax.errors.ConcretizationTypeError, TypeError):
            raise ValueError(f"stage must be a concrete int (the step is compiled per stage), got {stage!r}") from None
    if not _is_int(stage) or not 0 <= stage < config.net.num_stages:
        raise ValueError(f"stage must be an int in [0, {config.net.num_stages}), got {stage!r}")
    return _train_step(config, state, data, key, int(stage))


def train(
    config: StageTrainConfig,
    data,
    *,
    state: _train.TrainState | None = None,
    progress: bool = True,
    log_every: int = 50,
    out_dir=None,
    stop_at: int | None = None,
) -> tuple[_train.TrainState, list[dict]]:
    """Train to `config.steps` from `state` (default: `init_state(config)`); returns the final state and a log, one
    row {"step", "loss", "loss_per_stage", "steps_per_stage", "images_per_s"} per `log_every` steps (means over
    the window). `stop_at` stops after that step, as if interrupted there (the learning rate still follows
    `config.steps`): continuing from the returned state gives the uninterrupted run, bit for bit. With `out_dir`,
    the EMA parameters are saved there at the end (`save_checkpoint`)."""
    if not isinstance(config, StageTrainConfig):
        raise ValueError(f"config must be a StageTrainConfig, got {type(config).__name__}")
    if not _is_int(log_every) or log_every < 1:
        raise ValueError(f"log_every must be a positive int, got {log_every!r}")
    if stop_at is not None and (not _is_int(stop_at) or stop_at < 0):
        raise ValueError(f"stop_at must be an int >= 0 or None, got {stop_at!r}")
    end = config.steps if stop_at is None else min(int(stop_at), config.steps)
    data = np.asarray(data, np.float32)
    if data.ndim != 4 or tuple(data.shape[1:]) != config.image_shape or data.shape[0] < 1:
        raise ValueError(f"data must have shape [N, *image_shape] = [N, {config.image_shape}], got {data.shape}")
    from tqdm.auto import tqdm

    state = init_state(config) if state is None else state
    data_dev = jnp.asarray(data)
    key = _keys(config)[1]
    start = int(state.step)
    log, window, t0 = [], [], time.perf_counter()
    drawn = np.asarray(_draw_stages(config, key, jnp.arange(start, max(end, start), dtype=jnp.int32)))
    for step in tqdm(range(start + 1, end + 1), disable=not progress, desc="train stages", unit="step"):
        state, metrics = _train_step(config, state, data_dev, key, int(drawn[step - 1 - start]))
        window.append((metrics["loss"], metrics["stage"]))
        if step % log_every == 0 or step == end:
            losses, stage_ids = (np.asarray(v) for v in zip(*jax.device_get(window), strict=True))
            per = [losses[stage_ids == k] for k in range(config.net.num_stages)]
            log.append({
                "step": step,
                "loss": float(losses.mean()),
                "loss_per_stage": [float(v.mean()) if v.size else None for v in per],
                "steps_per_stage": [int(v.size) for v in per],
                "images_per_s": len(window) * config.batch_size / max(time.perf_counter() - t0, 1e-9),
            })  # fmt: skip
            window, t0 = [], time.perf_counter()
    if out_dir is not None:
        save_checkpoint(out_dir, config, state.ema_params)
    return state, log


# ----------------------------------------------------------------------------------------------------------------
# Models and checkpoints
# ----------------------------------------------------------------------------------------------------------------


def to_model(config: MultiStageConfig | StageTrainConfig, params: Any, latency: float = 1.0, name: str = "") -> Model:
    """An ordinary `omsjax.Model` (noise parameterisation, continuous linear VP time) for a multi-stage network:
    it joins a zoo and goes through `omsjax.sample` like any other; `latency` is its cost model entry."""
    net = config.net if isinstance(config, StageTrainConfig) else config
    if not isinstance(net, MultiStageConfig):
        raise ValueError(f"config must be a MultiStageConfig or StageTrainConfig, got {type(config).__name__}")
    return Model(apply_fn=apply_fn(net), params=params, parameterization="noise", latency=latency,
                 name=name or f"multistage-{net.num_stages}")  # fmt: skip


_CHECKPOINT_VERSION = 1


def save_checkpoint(path, config: StageTrainConfig, params: Any) -> Path:
    """Write `path/config.json` ({"omsjax_multistage": 1, "config": ..., "param_count": ...}) and the parameters
    to `path/params` (orbax, `train.save_params`); returns `path`."""
    if not isinstance(config, StageTrainConfig):
        raise ValueError(f"config must be a StageTrainConfig, got {type(config).__name__}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _train.save_params(path / "params", params)
    meta = {"omsjax_multistage": _CHECKPOINT_VERSION, "config": config.to_dict(),
            "param_count": nets.param_count(params)}  # fmt: skip
    (path / "config.json").write_text(json.dumps(meta, indent=2))
    return path


def load_checkpoint(path) -> tuple[StageTrainConfig, Any]:
    """(config, params) saved by `save_checkpoint`, bit-exact (float32 parameters)."""
    path = Path(path)
    meta_path = path / "config.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"no multi-stage checkpoint at {path} (missing config.json)")
    meta = json.loads(meta_path.read_text())
    if meta.get("omsjax_multistage") != _CHECKPOINT_VERSION:
        raise ValueError(f"{meta_path}: not an omsjax multi-stage checkpoint of version {_CHECKPOINT_VERSION}")
    config = StageTrainConfig.from_dict(meta["config"])
    like = jax.eval_shape(lambda: init_params(config.net, jax.random.PRNGKey(0), config.image_shape, _DTYPE))
    return config, _train.load_params(path / "params", like)


def save_state(path, state: _train.TrainState) -> Path:
    """Save the full training state (step, parameters, EMA, every group's Adam state) to the directory `path`
    (orbax, replaced if it exists), to continue later with `restore_state` and `train(..., state=...)`."""
    path = Path(path)
    _train.save_params(path, state)
    return path


def restore_state(path, config: StageTrainConfig) -> _train.TrainState:
    """The `TrainState` of `config` saved by `save_state`, bit-exact."""
    if not isinstance(config, StageTrainConfig):
        raise ValueError(f"config must be a StageTrainConfig, got {type(config).__name__}")
    return _train.load_params(path, jax.eval_shape(functools.partial(init_state, config)))
