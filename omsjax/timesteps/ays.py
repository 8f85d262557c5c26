r"""An Align-Your-Steps-style schedule: coordinate search of a KL-type bound over a grid of log-SNRs.

Align-Your-Steps-style schedule
-------------------------------
`ays_schedule`: AYS minimises a KL upper bound of the discretised SDE by coordinate-wise search. Ours: with
y = x / alpha = x0 + nu eps (nu = e^-lambda, EDM's noise level) on Brownian paths of the forward process, the
bound is sum_i \int_{nu_i}^{nu_{i-1}} E ||D(y_nu) - D(y_{nu_{i-1}})||^2 nu^-3 dnu; the model's outputs along the
paths are tabulated on a fine lambda grid, and each interior step in turn moves to the grid point that minimises
the bound between its neighbours, until no step moves.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from omsjax.fields import count
from omsjax.models import Model
from omsjax.noise import NoiseSchedule
from omsjax.timesteps.bound import check_data, data_prediction

__all__ = ["ays_table", "ays_bound", "ays_schedule"]


def ays_table(model: Model, ns: NoiseSchedule, data, lam_grid, key, num_samples: int = 256):
    """The model's data predictions along `num_samples` Brownian paths of the forward process at every point of
    `lam_grid` (ascending): [G, num_samples, ...]. y = x0 + nu eps on each path (nu = e^-lambda), coupled by
    independent increments from the smallest nu up."""
    check_data(data)
    num_samples = count("ays_table: num_samples", num_samples)
    data = jnp.asarray(data)
    lam_grid = jnp.asarray(lam_grid, data.dtype)
    if not bool(jnp.all(jnp.diff(lam_grid) > 0)):
        raise ValueError("lam_grid must be strictly increasing")
    k1, k2 = jax.random.split(key)
    x0 = data[jax.random.randint(k1, (num_samples,), 0, data.shape[0], dtype=jnp.int32)]
    nu = jnp.exp(-lam_grid)[::-1]  # ascending noise level
    var = jnp.concatenate([nu[:1] ** 2, jnp.diff(nu**2)])
    incr = jax.random.normal(k2, (nu.shape[0],) + x0.shape, x0.dtype) * jnp.sqrt(var).reshape((-1,) + (1,) * x0.ndim)
    y = x0[None] + jnp.cumsum(incr, axis=0)  # [G, S, ...] at ascending nu
    y = y[::-1]  # back to ascending lambda

    @jax.jit
    def one(yy, lam):
        t = ns.t_of_lambda(lam)
        return data_prediction(model, ns, jnp.exp(ns.log_alpha(t)) * yy, lam)

    return jnp.stack([one(y[j], lam_grid[j]) for j in range(lam_grid.shape[0])])


def _ays_cum(lam_grid, table) -> np.ndarray:
    """cum[a, b] = sum_{j <= b} w_j E ||D_j - D_a||^2 (RMS^2 per pixel), w_j = e^{2 lambda_j} dlambda_j: the bound
    of an interval from grid point a to b is cum[a, b] - cum[a, a]."""
    lam_grid = np.asarray(lam_grid, np.float64)
    G = len(lam_grid)
    tab = jnp.asarray(table)
    if tab.shape[0] != G:
        raise ValueError(f"the table has {tab.shape[0]} rows, the grid {G} points")
    flat = tab.reshape(G, tab.shape[1], -1)
    sq = jnp.mean(jnp.sum(flat**2, -1), -1)
    cross = jnp.einsum("asd,bsd->ab", flat, flat) / flat.shape[1]
    diff2 = np.maximum(np.asarray((sq[:, None] + sq[None, :] - 2 * cross) / flat.shape[-1], np.float64), 0.0)
    w = np.exp(2 * lam_grid) * np.gradient(lam_grid)  # nu^-3 dnu = e^{2 lambda} dlambda
    return np.cumsum(w[None, :] * diff2, axis=1)


def _grid_index(ns, ts, lam_grid):
    lam = np.asarray(ns.lam(np.asarray(ts, np.float64)), np.float64)
    idx = np.abs(lam[:, None] - np.asarray(lam_grid, np.float64)[None]).argmin(-1)
    return idx


def ays_bound(ns: NoiseSchedule, ts, lam_grid, table) -> float:
    """The AYS-style bound of the times `ts` (each snapped to its nearest grid point)."""
    cum = _ays_cum(lam_grid, table)
    idx = _grid_index(ns, ts, lam_grid)
    return float(sum(cum[a, b] - cum[a, a] for a, b in zip(idx[:-1], idx[1:], strict=True)))


def ays_schedule(
    ns: NoiseSchedule,
    nfe: int,
    lam_grid,
    table,
    *,
    t_start: float,
    t_end: float,
    init_ts=None,
    sweeps: int = 20,
) -> np.ndarray:
    """Coordinate search of the AYS-style bound (module docstring) over the points of `lam_grid` (ascending, from
    lambda(t_start) to lambda(t_end)): each interior step in turn moves to the grid point between its neighbours
    that minimises the bound, until a sweep moves nothing. Starts from `init_ts` (default: uniform in lambda).
    Returns the N + 1 times (float64, decreasing, the end points exact)."""
    lam_grid = np.asarray(lam_grid, np.float64)
    G = len(lam_grid)
    nfe, sweeps = count("ays_schedule: nfe", nfe), count("ays_schedule: sweeps", sweeps, 0)
    if nfe >= G:
        raise ValueError(f"nfe must be an int in 1..{G - 1} (the grid has {G} points), got {nfe!r}")
    ends = np.asarray(ns.lam(np.asarray([t_start, t_end], np.float64)), np.float64)
    if not np.allclose(ends, lam_grid[[0, -1]], rtol=1e-6, atol=1e-9):
        raise ValueError(f"lam_grid must run from lambda(t_start) = {ends[0]} to lambda(t_end) = {ends[1]}")
    cum = _ays_cum(lam_grid, table)

    def seg(a, b):
        return cum[a, b] - cum[a, a]

    if init_ts is None:
        idx = np.round(np.linspace(0, G - 1, nfe + 1)).astype(int)
    else:
        idx = _grid_index(ns, init_ts, lam_grid)
        idx[0], idx[-1] = 0, G - 1
    if len(idx) != nfe + 1 or len(np.unique(idx)) != nfe + 1:
        raise ValueError("the initial schedule needs nfe + 1 distinct grid points: use a finer lam_grid")
    for _ in range(sweeps):
        moved = False
        for i in range(1, nfe):
            lo, hi = idx[i - 1], idx[i + 1]
            cands = np.arange(lo + 1, hi)
            best = int(cands[int(np.argmin([seg(lo, c) + seg(c, hi) for c in cands]))])
            if best != idx[i]:
                idx[i], moved = best, True
        if not moved:
            break
    ts = np.asarray(ns.t_of_lambda(lam_grid[idx]), np.float64)
    ts[0], ts[-1] = t_start, t_end
    return ts
