"""Exact test models and the reference ODE solution.

* `GaussianMixture`: isotropic mixture p_0 = sum_k w_k N(mu_k, s_k^2 I). Under any noise schedule
  p_t = sum_k w_k N(alpha_t mu_k, (alpha_t^2 s_k^2 + sigma_t^2) I), so the exact noise prediction is
  eps(x, t) = -sigma_t grad log p_t(x) = sigma_t sum_k gamma_k(x) (x - alpha_t mu_k) / (alpha_t^2 s_k^2 + sigma_t^2)
  with responsibilities gamma_k computed by log-sum-exp.
* `ConditionalGaussianMixture`: the same mixture with a class label per component, for classifier-free guidance:
  p_0(x | c) = sum_{k: label_k = c} w_k N(mu_k, s_k^2 I) / W_c; the null label C gives the unconditional p_0, as a
  model trained with label dropout learns it. Its eps(x, t, c) is the formula above over the components of class c
  (the other responsibilities are zero), and the guided prediction is eps_null + w (eps_c - eps_null).
* `EmpiricalDenoiser`: the optimal denoiser of a finite data set {y_i} (the mixture of deltas),
  x0*(x, t) = sum_i softmax_i(-|x - alpha_t y_i|^2 / (2 sigma_t^2)) y_i.
* `reference_solution`: the probability-flow ODE solved by diffrax (Dopri8, tight tolerances), written in the
  EDM variables y = x / alpha, s = sigma / alpha = exp(-lambda):  dy/ds = eps(alpha y, t(s)).
"""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from omsjax.fields import count
from omsjax.models import Model
from omsjax.noise import NoiseSchedule

__all__ = ["GaussianMixture", "ConditionalGaussianMixture", "EmpiricalDenoiser", "reference_solution"]


def _flat(x):
    return x.reshape(x.shape[0], -1)


@struct.dataclass
class GaussianMixture:
    """Isotropic Gaussian mixture over vectors of shape `event_shape` (means [K, D] flattened)."""

    means: jax.Array  # [K, D]
    stds: jax.Array  # [K]
    weights: jax.Array  # [K], sums to 1

    @staticmethod
    def create(means, stds, weights) -> GaussianMixture:
        means = np.asarray(means, np.float64)
        stds = np.asarray(stds, np.float64)
        weights = np.asarray(weights, np.float64)
        if means.ndim != 2:
            raise ValueError(f"GaussianMixture means must be [K, D], got shape {means.shape}")
        k = means.shape[0]
        if stds.shape != (k,) or weights.shape != (k,):
            raise ValueError(f"GaussianMixture stds and weights must be [{k}], got {stds.shape}, {weights.shape}")
        if np.any(stds < 0) or np.any(weights < 0) or not np.isclose(weights.sum(), 1.0):
            raise ValueError("GaussianMixture needs stds >= 0 and non-negative weights summing to 1")
        return GaussianMixture(jnp.asarray(means), jnp.asarray(stds), jnp.asarray(weights))

    def eps(self, noise_schedule: NoiseSchedule, x, t):
        """Exact noise prediction; x [B, D] (or [B, ...] with prod = D), t scalar or [B]."""
        return self._eps(noise_schedule, x, t, jnp.log(self.weights)[None])

    def _eps(self, noise_schedule: NoiseSchedule, x, t, log_weights):
        """The noise prediction of the mixture with (unnormalised) log-weights [B or 1, K] per sample."""
        shape = x.shape
        xf = _flat(x)
        t = jnp.broadcast_to(jnp.asarray(t, xf.dtype), (xf.shape[0],))
        a = jnp.exp(noise_schedule.log_alpha(t))[:, None]  # [B, 1]
        s = noise_schedule.sigma(t)[:, None]
        var = a**2 * self.stds[None, :] ** 2 + s**2  # [B, K]
        diff = xf[:, None, :] - a[:, :, None] * self.means[None]  # [B, K, D]
        d = xf.shape[1]
        logp = log_weights - 0.5 * jnp.sum(diff**2, -1) / var - 0.5 * d * jnp.log(var)
        gamma = jax.nn.softmax(logp, axis=-1)  # [B, K]
        eps = s * jnp.sum(gamma[..., None] * diff / var[..., None], axis=1)
        return eps.reshape(shape).astype(x.dtype)

    def sample(self, key, n: int):
        n = count("GaussianMixture.sample: n", n)
        k1, k2 = jax.random.split(key)
        comp = jax.random.choice(k1, self.weights.shape[0], (n,), p=self.weights)
        z = jax.random.normal(k2, (n, self.means.shape[1]), self.means.dtype)
        return self.means[comp] + self.stds[comp][:, None] * z

    def model(self, noise_schedule: NoiseSchedule, latency: float = 1.0) -> Model:
        """The mixture as an `omsjax.Model` (noise parameterisation); its parameters are this mixture."""
        ns = noise_schedule

        def apply_fn(params, x, t):
            return params.eps(ns, x, t)

        return Model(apply_fn=apply_fn, params=self, parameterization="noise", latency=latency, name="gmm")


@struct.dataclass
class ConditionalGaussianMixture:
    """A class-conditional `GaussianMixture`: component k belongs to class `labels[k]` in 0..C-1 (module docstring).

    `eps(ns, x, t, c)` takes labels c int [B] (or a scalar): 0..C-1 a class, `null_label` (= C) the unconditional
    mixture. A label outside 0..C selects no component, and its prediction is NaN (never clamped to a class).
    `guided_eps(ns, x, t, c, w)`: classifier-free guidance eps(null) + w (eps(c) - eps(null)), w scalar or [B];
    w = 1 is the conditional prediction, w = 0 the unconditional one.
    """

    mixture: GaussianMixture
    labels: jax.Array  # int32 [K]
    num_classes: int = struct.field(pytree_node=False)

    @staticmethod
    def create(means, stds, weights, labels, num_classes: int | None = None) -> ConditionalGaussianMixture:
        """`means` [K, D], `stds` [K], `weights` [K] (summing to 1), `labels` [K] ints; every class in
        0..num_classes-1 (default max(labels) + 1) must own at least one component."""
        mixture = GaussianMixture.create(means, stds, weights)
        lab = np.asarray(labels)
        k = mixture.weights.shape[0]
        if lab.shape != (k,) or lab.dtype.kind not in "iu":
            raise ValueError(f"ConditionalGaussianMixture labels must be [{k}] integers, got {lab.dtype} {lab.shape}")
        c = int(lab.max()) + 1 if num_classes is None else count("ConditionalGaussianMixture: num_classes", num_classes)
        if lab.min() < 0 or lab.max() >= c:
            raise ValueError(
                f"ConditionalGaussianMixture labels must lie in 0..num_classes-1, got {lab.tolist()} "
                f"with num_classes {c!r}"
            )
        empty = sorted(set(range(c)) - set(lab.tolist()))
        if empty:
            raise ValueError(f"ConditionalGaussianMixture: classes {empty} have no component")
        return ConditionalGaussianMixture(mixture, jnp.asarray(lab, jnp.int32), c)

    @property
    def null_label(self) -> int:
        """The label of the unconditional mixture (num_classes)."""
        return self.num_classes

    def _log_weights(self, c):
        """[B, K]: log w_k for the components of class c[b] (every component for the null label), -inf elsewhere."""
        own = (self.labels[None, :] == c[:, None]) | (c[:, None] == self.num_classes)
        return jnp.where(own, jnp.log(self.mixture.weights)[None], -jnp.inf)

    def eps(self, noise_schedule: NoiseSchedule, x, t, c):
        """Exact noise prediction of p_t(x | c); x [B, D] (or [B, ...]), t scalar or [B], c int scalar or [B]."""
        c = jnp.broadcast_to(jnp.asarray(c, jnp.int32), (x.shape[0],))
        return self.mixture._eps(noise_schedule, x, t, self._log_weights(c))

    def guided_eps(self, noise_schedule: NoiseSchedule, x, t, c, w):
        """Classifier-free guidance: eps(null) + w (eps(c) - eps(null)); w scalar or [B]."""
        e_c = self.eps(noise_schedule, x, t, c)
        e_u = self.eps(noise_schedule, x, t, self.null_label)
        w = jnp.asarray(w, x.dtype)
        w = w.reshape(w.shape + (1,) * (x.ndim - w.ndim))
        return e_u + w * (e_c - e_u)

    def sample(self, key, c):
        """One draw of p_0(x | c[i]) per label of c int [n] (0..C-1; the null label draws the whole mixture)."""
        c = jnp.asarray(c, jnp.int32)
        k1, k2 = jax.random.split(key)
        comp = jax.random.categorical(k1, self._log_weights(c), axis=-1)
        m = self.mixture
        z = jax.random.normal(k2, (c.shape[0], m.means.shape[1]), m.means.dtype)
        return m.means[comp] + m.stds[comp][:, None] * z


@struct.dataclass
class EmpiricalDenoiser:
    """Optimal denoiser of a finite data set `data` [n, ...] (the training set's mixture of deltas)."""

    data: jax.Array

    def x0(self, noise_schedule: NoiseSchedule, x, t):
        xf = _flat(x)
        y = _flat(self.data).astype(xf.dtype)
        t = jnp.broadcast_to(jnp.asarray(t, xf.dtype), (xf.shape[0],))
        a = jnp.exp(noise_schedule.log_alpha(t))[:, None]
        s = noise_schedule.sigma(t)[:, None]
        # |x - a y|^2 = |x|^2 - 2 a x.y + a^2 |y|^2; the |x|^2 term cancels in the softmax.
        logits = (2 * a * (xf @ y.T) - a**2 * jnp.sum(y**2, -1)[None]) / (2 * s**2)
        w = jax.nn.softmax(logits, axis=-1)
        return (w @ y).reshape(x.shape)

    def model(self, noise_schedule: NoiseSchedule, latency: float = 1.0) -> Model:
        ns = noise_schedule

        def apply_fn(params, x, t):
            return params.x0(ns, x, t)

        return Model(apply_fn=apply_fn, params=self, parameterization="data", latency=latency, name="empirical")


def reference_solution(
    eps_fn,
    noise_schedule: NoiseSchedule,
    x_T,
    t_start: float,
    t_end: float,
    *,
    rtol: float = 1e-10,
    atol: float = 1e-10,
    max_steps: int = 100_000,
):
    """High-accuracy endpoint of the probability-flow ODE from x_T at t_start to t_end.

    `eps_fn(x, t)` is the noise prediction (t a scalar). Integrated with diffrax's Dopri8 and a PID step-size
    controller in y = x/alpha over s = exp(-lambda) (dy/ds = eps(alpha y, t(s))); use float64 for tight
    tolerances.
    """
    ns = noise_schedule
    s0 = ns.edm_sigma(jnp.asarray(t_start, x_T.dtype))
    s1 = ns.edm_sigma(jnp.asarray(t_end, x_T.dtype))

    def vf(s, y, args):
        t = ns.t_of_edm_sigma(s)
        a = jnp.exp(ns.log_alpha(t))
        return eps_fn(a * y, t)

    y0 = x_T / jnp.exp(ns.log_alpha(jnp.asarray(t_start, x_T.dtype)))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vf),
        diffrax.Dopri8(),
        t0=s0,
        t1=s1,
        dt0=(s1 - s0) / 100,
        y0=y0,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
    )
    y1 = sol.ys[-1]
    return y1 * jnp.exp(ns.log_alpha(jnp.asarray(t_end, x_T.dtype)))
