"""The unified exponential-integrator step (USF, Liu et al. ICLR 2024).

From x_s at time s to time t < s, with h = lambda_t - lambda_s > 0 and the prediction F (noise eps or data x0)
expanded in lambda around the start point s:

  noise: x_t = (alpha_t/alpha_s) x_s - sigma_t sum_{n=0}^{k-1} h^{n+1} phi_{n+1}(h)  F^{(n)}_s
  data:  x_t = (sigma_t/sigma_s) x_s + alpha_t sum_{n=0}^{k-1} h^{n+1} phi_{n+1}(-h) F^{(n)}_s

with phi_1(z) = (e^z - 1)/z and phi_{k+1}(z) = (phi_k(z) - 1/k!)/z. The derivatives F^{(n)} are estimated from a
stencil A of earlier evaluations j (dl_j = lambda_j - lambda_s, dF_j = F_j - F_s) by solving M a = e_n with
M_{r,j} = dl_j^r / r!, r = 1..|A|; then D_n = sum_j a_j dF_j.

Conventions of this implementation (one definition serves every preset):
  * the history holds up to `MAX_ORDER + 1` evaluated points, index 0 = newest;
  * `start` q picks the expansion point q points back (0 = newest: multistep; q > 0: singlestep sub-steps);
  * the stencil of an order-k step is the k - 1 newest history points other than the start point; D_1 may use
    only the `d1_points` newest of them (USF's low-order estimation; 0 = all k - 1);
  * D_1 is multiplied by a relaxation factor rho: RELAX_LINEAR 1 + c h (c = `relax`, h not sign-flipped),
    RELAX_DPM2 0.5 phi_1(hh)/phi_2(hh) (DPM-Solver-2, = UniPC-bh2), RELAX_BH1 0.5/phi_2(hh) (UniPC-bh1), with
    hh = h for noise and -h for data prediction; the D_2 term is scaled by `d2_scale` (1 = Taylor; 1/2 is the
    published DPM-Solver(++) 3M update, whose D_2 = (D1_0 - D1_1)/(r_0 + r_1) is half the second difference);
  * the pseudo-corrector recomputes the step after the next model call with order k + 1, the start point and
    every stencil extended by the new point, without relaxation -- except after an order-1 predictor, whose
    relaxation decision (it has no D_1 of its own) applies to the corrector's D_1 (this is UniC-1's rho = 1/2).

All coefficients are scalars computed first; a step is then one weighted sum over the history.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "MAX_ORDER",
    "HISTORY",
    "RELAX_LINEAR",
    "RELAX_DPM2",
    "RELAX_BH1",
    "NOISE",
    "DATA",
    "phi",
    "relaxation_factor",
    "History",
    "init_history",
    "push",
    "StepDecisions",
    "step_weights",
    "apply_weights",
]

MAX_ORDER = 4
HISTORY = MAX_ORDER + 1  # an order-4 step plus its corrector's new point
NOISE, DATA = 0, 1
RELAX_LINEAR, RELAX_DPM2, RELAX_BH1 = 0, 1, 2

_SERIES_RADIUS = 2.0
_SERIES_TERMS = 30


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def phi(z, kmax: int):
    """[phi_1(z), ..., phi_kmax(z)] stacked on a new leading axis.

    phi_n(z) = sum_{j>=0} z^j / (j + n)!  (series, used for |z| < 2: no cancellation), and for larger |z| the
    recursion phi_1 = expm1(z)/z, phi_{n+1} = (phi_n - 1/n!)/z, which is well conditioned there. The series is
    one Horner recursion over the vector of all n at once.

    Derivative (a custom JVP, exact for either branch): phi_n'(z) = phi_n(z) - n phi_{n+1}(z), from the series,
    since (i + 1)/(i + n + 1)! = 1/(i + n)! - n/(i + n + 1)!. Differentiating the 31-term Horner recursion
    instead made a gradient through the sampler three times larger to compile.
    """
    z = jnp.asarray(z)
    small = jnp.abs(z) < _SERIES_RADIUS
    shape = (kmax,) + (1,) * z.ndim
    series = jnp.zeros(shape, z.dtype)
    for j in range(_SERIES_TERMS, -1, -1):
        coeff = np.asarray([1.0 / math.factorial(j + n) for n in range(1, kmax + 1)]).reshape(shape)
        series = series * z + jnp.asarray(coeff, z.dtype)
    zs = jnp.where(small, _SERIES_RADIUS, z)
    rec = [jnp.expm1(zs) / zs]
    for n in range(1, kmax):
        rec.append((rec[-1] - 1.0 / math.factorial(n)) / zs)
    return jnp.where(small, series, jnp.stack(rec))


@phi.defjvp
def _phi_jvp(kmax, primals, tangents):
    (z,), (dz,) = primals, tangents
    z = jnp.asarray(z)
    p = phi(z, kmax + 1)
    n = np.arange(1, kmax + 1, dtype=np.float64).reshape((kmax,) + (1,) * z.ndim)
    return p[:kmax], (p[:kmax] - jnp.asarray(n, p.dtype) * p[1:]) * dz


def relaxation_factor(relax_type, c, h, prediction):
    """The factor rho multiplying D_1 (see the module docstring)."""
    hh = jnp.where(prediction == DATA, -h, h)
    return _relaxation(relax_type, c, h, phi(hh, 2))


def _relaxation(relax_type, c, h, p):
    """rho from p = [phi_1(hh), phi_2(hh), ...] (hh = h for noise, -h for data prediction)."""
    return jnp.select(
        [relax_type == RELAX_DPM2, relax_type == RELAX_BH1],
        [0.5 * p[0] / p[1], 0.5 / p[1]],
        1.0 + c * h,
    )


class History(NamedTuple):
    """Fixed-size buffer of evaluated points, index 0 = newest (shifted, never grown).

    x: [H, *x_shape] states; eps, x0: [H, *x_shape] model outputs as noise and data predictions;
    t, lam: [H] time and half log-SNR of each point; count: number of valid entries (<= H).
    Unused entries hold a valid time (the first one), so no coefficient computed from them is inf or NaN.
    """

    x: jax.Array
    eps: jax.Array
    x0: jax.Array
    t: jax.Array
    lam: jax.Array
    count: jax.Array


def init_history(x, t0, lam0) -> History:
    """An empty `History` for a state shaped like `x` [batch, ...] at time t0 (half log-SNR lam0): zero buffers, every
    slot at t0, and no stored model output (`count` 0)."""
    z = jnp.zeros((HISTORY,) + x.shape, x.dtype)
    ones = jnp.ones((HISTORY,), jnp.result_type(t0, lam0))
    return History(z, z, z, ones * t0, ones * lam0, jnp.zeros((), jnp.int32))


def push(hist: History, x, eps, x0, t, lam) -> History:
    """`hist` with the newest point (state x, the model's eps and x0, all [batch, ...], at time t and half log-SNR lam)
    in slot 0 and the older ones shifted back by one (the oldest dropped)."""

    def shift(buf, new):
        return jnp.concatenate([jnp.asarray(new, buf.dtype)[None], buf[:-1]], axis=0)

    return History(
        shift(hist.x, x),
        shift(hist.eps, eps),
        shift(hist.x0, x0),
        shift(hist.t, t),
        shift(hist.lam, lam),
        jnp.minimum(hist.count + 1, HISTORY),
    )


def _stencil_inverse(dl, size):
    """Inverse of the Taylor matrix M_{r,m} = dl_m^r / r! restricted to the first `size` points (identity
    elsewhere), transposed: row n-1 holds the weights a of D_n (M a = e_n), shape [P, P]."""
    p = dl.shape[0]
    r = jnp.arange(1, p + 1, dtype=jnp.int32)
    m = jnp.stack([dl**i / math.factorial(i) for i in range(1, p + 1)])
    active = (r[:, None] <= size) & (r[None, :] <= size)
    eye = jnp.eye(p, dtype=dl.dtype)
    m = jnp.where(active, m, eye)
    return jnp.linalg.solve(m, eye).T


class StepDecisions(NamedTuple):
    """The decisions of one USF update (scalars, traced): the order k, the prediction (NOISE or DATA), the start
    point q (a history index), the D_1 stencil size (0: the full stencil), the relaxation (its type and value) and
    the scale of the D_2 term."""

    order: jax.Array
    prediction: jax.Array
    start: jax.Array
    d1_points: jax.Array
    relax_type: jax.Array
    relax: jax.Array
    d2_scale: jax.Array | float = 1.0


def step_weights(lam, count, target, source, decisions: StepDecisions):
    """Scalar coefficients of one USF update from the history's start point to the target time.

    `lam` [H], `count`: the history's half log-SNRs and its number of points; `target` = (lambda_t, log alpha_t,
    sigma_t) of the new point; `source` = (log alpha_s, sigma_s) of the start point `decisions.start`.
    Returns (cx, wF, ok): x_t = cx * x_hist[start] + sum_j wF[j] * F_hist[j] with F the chosen prediction, and a
    boolean `ok` that is False when the decisions are invalid for this history (the caller turns the output into
    NaN rather than clamping).
    """
    lam_t, log_alpha_t, sigma_t = target
    log_alpha_s, sigma_s = source
    order, prediction, start, d1_points, relax_type, relax, d2_scale = decisions
    dtype = lam.dtype
    hsize = lam.shape[0]
    p = hsize - 1
    q = start
    k = order
    s = k - 1  # stencil size of the full-order estimate
    d1 = jnp.where(d1_points == 0, s, d1_points)
    # Orders up to H are computable (a corrector after an order-MAX_ORDER step); the sampler restricts the
    # predictor to MAX_ORDER.
    ok = (
        (k >= 1)
        & (k <= hsize)
        & (q >= 0)
        & (q < count)
        & (k <= count)
        & (d1_points >= 0)
        & (d1_points <= s)
        & ((prediction == NOISE) | (prediction == DATA))
        & (relax_type >= RELAX_LINEAR)
        & (relax_type <= RELAX_BH1)
    )
    onehot_q = (jnp.arange(hsize, dtype=jnp.int32) == q).astype(dtype)
    lam_s = jnp.sum(onehot_q * lam)
    h = lam_t - lam_s
    # Other points: m -> history index m + (m >= q), newest first.
    m_idx = jnp.arange(p, dtype=jnp.int32)
    idx = m_idx + (m_idx >= q).astype(jnp.int32)
    sel = (jnp.arange(hsize, dtype=jnp.int32)[None, :] == idx[:, None]).astype(dtype)  # [P, H]
    dl = sel @ lam - lam_s
    inv_full = _stencil_inverse(dl, s)
    inv_d1 = _stencil_inverse(dl, d1)
    hh = jnp.where(prediction == DATA, -h, h)
    phis = phi(hh, hsize)  # [H]: a corrector raises the order up to H = MAX_ORDER + 1
    n = jnp.arange(hsize, dtype=jnp.int32)
    # g_n: coefficient of D_n, n = 0..H-1.
    scale = jnp.where(prediction == DATA, jnp.exp(log_alpha_t), -sigma_t)
    g = scale * jnp.stack([h ** (i + 1) for i in range(hsize)]) * phis
    g = jnp.where(n < k, g, 0.0)
    rho = _relaxation(relax_type, relax, h, phis)  # phi_1, phi_2 of the same hh
    # Weights on dF_m (m = 0..P-1): D_1 from the d1-stencil, D_n (n >= 2) from the full stencil.
    g = g.at[2].multiply(d2_scale)
    u = g[1] * rho * inv_d1[0] + jnp.sum(g[2:, None] * inv_full[1:], axis=0)
    wF = (g[0] - jnp.sum(u)) * onehot_q + u @ sel
    cx = jnp.where(prediction == DATA, sigma_t / sigma_s, jnp.exp(log_alpha_t - log_alpha_s))
    return cx, wF, ok


def apply_weights(hist: History, cx, wF, start, prediction):
    """x_t = cx x_hist[start] + sum_j wF_j F_j, F = eps or x0 by `prediction`."""
    dtype = hist.x.dtype
    hsize = hist.lam.shape[0]
    wx = jnp.where(jnp.arange(hsize, dtype=jnp.int32) == start, cx, 0.0).astype(dtype)
    w_eps = jnp.where(prediction == DATA, 0.0, wF).astype(dtype)
    w_x0 = jnp.where(prediction == DATA, wF, 0.0).astype(dtype)
    return (
        jnp.tensordot(wx, hist.x, axes=1)
        + jnp.tensordot(w_eps, hist.eps, axes=1)
        + jnp.tensordot(w_x0, hist.x0, axes=1)
    )
