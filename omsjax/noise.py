"""Noise schedules: the forward processes q(x_t | x_0) that samplers and training share.

A noise schedule describes the forward process q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I) through
log alpha_t, sigma_t and the half log-SNR lambda_t = log alpha_t - log sigma_t (decreasing in t), together with
the inverse t(lambda). Every schedule is a pytree (its numbers are leaves, so they can be traced) and every
method works on numpy input (host side, float64) as well as on jax arrays (inside jit).

Where the steps go is `omsjax.spacing`'s. This module was `omsjax.schedules` before 0.2.0 (that path forwards
here, with a DeprecationWarning). The constructors check their parameters on the host, naming each.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from omsjax.fields import real

__all__ = [
    "NoiseSchedule",
    "VPLinear",
    "VPCosine",
    "VPDiscrete",
    "EDM",
    "Flow",
    "vp_linear",
    "vp_cosine",
    "vp_discrete",
    "edm",
    "flow",
    "to_dict",
    "from_dict",
    "time_range",
    "array_module",
]


def array_module(*args):
    """numpy for host values, jax.numpy as soon as one argument is a jax array or tracer (numpy in, numpy out)."""
    return jnp if any(isinstance(a, jax.Array) for a in args) else np


class NoiseSchedule:
    """Interface shared by all noise schedules. Subclasses define `log_alpha(t)`, `lam(t)`, `t_of_lambda(lam)` and
    the attributes `t_max` (the start T), `t_min` (the smallest admissible time) and `default_t_end`.
    `default_spacing` names the step spacing that `time_steps` and the presets use when no `skip` is given: the
    convention of each family's literature, 'logSNR' for VP (DPM-Solver), 'karras' for EDM (Karras et al.),
    'time_uniform' for flow (rectified flow / flow matching practice).
    """

    kind: str = "abstract"
    default_spacing = "logSNR"  # a class constant, not a pytree field

    def log_alpha(self, t):
        raise NotImplementedError

    def lam(self, t):
        """Half log-SNR lambda_t = log alpha_t - log sigma_t."""
        raise NotImplementedError

    def prior_std(self, t):
        """Standard deviation of the starting noise x_T ~ N(0, prior_std(t)^2 I) of a sampler started at t: 1 for VP
        (the marginal as alpha_t -> 0), sigma_t = t for EDM (Karras et al.: x_0 ~ N(0, sigma_max^2 I))."""
        return 1.0 + 0.0 * t

    def t_of_lambda(self, lam):
        """Inverse of `lam`."""
        raise NotImplementedError

    def alpha(self, t):
        return array_module(t).exp(self.log_alpha(t))

    def log_sigma(self, t):
        # VP: sigma^2 = 1 - alpha^2, computed as -expm1(2 log alpha) (no cancellation near t = 0).
        xp = array_module(t)
        return 0.5 * xp.log(-xp.expm1(2.0 * self.log_alpha(t)))

    def sigma(self, t):
        return array_module(t).exp(self.log_sigma(t))

    def edm_sigma(self, t):
        """The equivalent variance-exploding noise level sigma_t / alpha_t = exp(-lambda_t)."""
        return array_module(t).exp(-self.lam(t))

    def t_of_edm_sigma(self, s):
        return self.t_of_lambda(-array_module(s).log(s))


def _vp_lambda_from_log_alpha(xp, log_alpha):
    # lambda = log alpha - 0.5 log(1 - alpha^2)
    return log_alpha - 0.5 * xp.log(-xp.expm1(2.0 * log_alpha))


def _log_alpha_from_lambda(xp, lam):
    # alpha^2 = sigmoid(2 lambda)  =>  log alpha = -0.5 log(1 + exp(-2 lambda))
    return -0.5 * xp.logaddexp(0.0, -2.0 * lam)


@struct.dataclass
class VPLinear(NoiseSchedule):
    """Continuous VP with linear beta(t) = beta_min + t (beta_max - beta_min), T = 1.

    log alpha_t = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    kind: str = struct.field(pytree_node=False, default="vp_linear")
    t_max: float = struct.field(pytree_node=False, default=1.0)
    t_min: float = struct.field(pytree_node=False, default=1e-5)
    default_t_end: float = struct.field(pytree_node=False, default=1e-3)

    def log_alpha(self, t):
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def lam(self, t):
        return _vp_lambda_from_log_alpha(array_module(t, self.beta_min), self.log_alpha(t))

    def t_of_lambda(self, lam):
        # u = 2 (b1 - b0) logaddexp(-2 lambda, 0), Delta = b0^2 + u, t = u / ((sqrt(Delta) + b0)(b1 - b0)).
        xp = array_module(lam, self.beta_min)
        db = self.beta_max - self.beta_min
        u = 2.0 * db * xp.logaddexp(-2.0 * lam, 0.0)
        delta = self.beta_min**2 + u
        return u / ((xp.sqrt(delta) + self.beta_min) * db)


@struct.dataclass
class VPCosine(NoiseSchedule):
    """Continuous VP cosine schedule (Nichol & Dhariwal), DPM-Solver's continuous version with T = 0.9946.

    log alpha_t = log cos((t + s)/(1 + s) * pi/2) - log cos(s/(1 + s) * pi/2).
    """

    s: float = 0.008
    kind: str = struct.field(pytree_node=False, default="vp_cosine")
    t_max: float = struct.field(pytree_node=False, default=0.9946)
    t_min: float = struct.field(pytree_node=False, default=1e-5)
    default_t_end: float = struct.field(pytree_node=False, default=1e-3)

    def log_alpha(self, t):
        # cos(theta0 + d)/cos(theta0) = 1 - 2 sin(d/2)^2 - tan(theta0) sin(d), with d = t/(1 + s) pi/2: no
        # cancellation for small t, where log alpha is tiny.
        xp = array_module(t, self.s)
        theta0 = self.s / (1.0 + self.s) * (math.pi / 2)
        d = t / (1.0 + self.s) * (math.pi / 2)
        return xp.log1p(-2.0 * xp.sin(0.5 * d) ** 2 - xp.tan(theta0) * xp.sin(d))

    def lam(self, t):
        return _vp_lambda_from_log_alpha(array_module(t, self.s), self.log_alpha(t))

    def t_of_lambda(self, lam):
        # cos(theta) = alpha c0 and sin(theta)^2 = sin(theta0)^2 + c0^2 sigma^2, with alpha^2 = sigmoid(2 lambda),
        # sigma^2 = sigmoid(-2 lambda); atan2 is well conditioned everywhere (arccos is not near 1).
        xp = array_module(lam, self.s)
        theta0 = self.s / (1.0 + self.s) * (math.pi / 2)
        c0 = math.cos(theta0) if xp is np else xp.cos(theta0)
        s0 = math.sin(theta0) if xp is np else xp.sin(theta0)
        alpha = xp.exp(_log_alpha_from_lambda(xp, lam))
        sigma2 = xp.exp(-xp.logaddexp(0.0, 2.0 * lam))
        theta = xp.arctan2(xp.sqrt(s0**2 + c0**2 * sigma2), c0 * alpha)
        return theta * (2.0 / math.pi) * (1.0 + self.s) - self.s


@struct.dataclass
class VPDiscrete(NoiseSchedule):
    """DDPM-style discrete VP schedule made continuous: log alpha is piecewise linear in t between the knots
    t_n = (n + 1)/N, n = 0..N-1, with log alpha(t_n) = 0.5 sum_{i<=n} log(1 - beta_i).

    As in DPM-Solver, trailing knots whose lambda falls below `clip_lambda` are dropped (cosine-type betas).
    A network trained on the discrete index sees `model_time(t) = N (t - 1/N)`.
    """

    t_knots: jax.Array
    log_alpha_knots: jax.Array
    num_train_steps: int = struct.field(pytree_node=False, default=1000)
    kind: str = struct.field(pytree_node=False, default="vp_discrete")
    t_max: float = struct.field(pytree_node=False, default=1.0)
    t_min: float = struct.field(pytree_node=False, default=1e-3)
    default_t_end: float = struct.field(pytree_node=False, default=1e-3)

    def log_alpha(self, t):
        return array_module(t, self.t_knots).interp(t, self.t_knots, self.log_alpha_knots)

    def lam(self, t):
        return _vp_lambda_from_log_alpha(array_module(t, self.t_knots), self.log_alpha(t))

    def t_of_lambda(self, lam):
        xp = array_module(lam, self.t_knots)
        log_alpha = _log_alpha_from_lambda(xp, lam)
        return xp.interp(log_alpha, self.log_alpha_knots[::-1], self.t_knots[::-1])

    def model_time(self, t):
        """The discrete training index that a DDPM network expects: N (t - 1/N)."""
        return self.num_train_steps * (t - 1.0 / self.num_train_steps)


@struct.dataclass
class EDM(NoiseSchedule):
    """Karras et al. (EDM): alpha = 1, sigma = t, lambda = -log t, t in [sigma_min, sigma_max]. Default spacing:
    Karras's rho = 7 noise levels."""

    default_spacing = "karras"

    kind: str = struct.field(pytree_node=False, default="edm")
    t_max: float = struct.field(pytree_node=False, default=80.0)
    t_min: float = struct.field(pytree_node=False, default=0.002)
    default_t_end: float = struct.field(pytree_node=False, default=0.002)

    def log_alpha(self, t):
        return 0.0 * t

    def log_sigma(self, t):
        return array_module(t).log(t)

    def lam(self, t):
        return -array_module(t).log(t)

    def prior_std(self, t):
        return t

    def t_of_lambda(self, lam):
        return array_module(lam).exp(-lam)


@struct.dataclass
class Flow(NoiseSchedule):
    """Rectified flow / flow matching (Liu et al. 2023, Lipman et al. 2023): x_t = (1 - t) x_0 + t eps;
    alpha_t = 1 - t, sigma_t = t, lambda_t = log(1 - t) - log t, t(lambda) = 1/(1 + e^lambda), for
    0 < t_min <= t <= t_max < 1 (t = 1 has alpha = 0, lambda = -inf). The prior is N(0, I) (`prior_std` = 1), the
    flow convention at t -> 1. Every method acts elementwise on t (or lambda) of any shape, numpy or jax. Default
    spacing: uniform in t, as rectified-flow and flow-matching samplers step.
    """

    default_spacing = "time_uniform"

    kind: str = struct.field(pytree_node=False, default="flow")
    t_max: float = struct.field(pytree_node=False, default=0.999)
    t_min: float = struct.field(pytree_node=False, default=1e-3)
    default_t_end: float = struct.field(pytree_node=False, default=1e-3)

    def log_alpha(self, t):
        return array_module(t).log1p(-t)

    def alpha(self, t):
        return 1.0 - t

    def log_sigma(self, t):
        return array_module(t).log(t)

    def sigma(self, t):
        return 1.0 * t

    def lam(self, t):
        xp = array_module(t)
        return xp.log1p(-t) - xp.log(t)

    def t_of_lambda(self, lam):
        # 1/(1 + e^lambda) = exp(-log(1 + e^lambda)): no overflow for large |lambda|.
        xp = array_module(lam)
        return xp.exp(-xp.logaddexp(0.0, lam))


def vp_linear(beta_min: float = 0.1, beta_max: float = 20.0) -> VPLinear:
    """Continuous linear VP schedule (score SDE / DPM-Solver defaults beta in [0.1, 20], T = 1)."""
    beta_min = real("vp_linear: beta_min", beta_min, ge=0)
    return _checked(VPLinear(beta_min=beta_min, beta_max=real("vp_linear: beta_max", beta_max, gt=beta_min)))


def vp_cosine(s: float = 0.008, t_max: float = 0.9946) -> VPCosine:
    """Continuous cosine VP schedule with offset `s`; `t_max` < 1 keeps log alpha finite."""
    return _checked(VPCosine(s=real("vp_cosine: s", s, gt=0), t_max=real("vp_cosine: t_max", t_max, gt=0, lt=1)))


def vp_discrete(betas=None, *, alphas_cumprod=None, clip_lambda: float = -5.1) -> VPDiscrete:
    """Discrete DDPM schedule from `betas` [N] or `alphas_cumprod` [N] (not both; default: DDPM's betas
    linspace(1e-4, 0.02, 1000)). log alpha_n = 0.5 sum_{i<=n} log(1 - beta_i) = 0.5 log(alphas_cumprod_n),
    alphas_cumprod being the cumulative product of diffusers / DDPM (strictly decreasing, in (0, 1))."""
    if betas is not None and alphas_cumprod is not None:
        raise ValueError("vp_discrete takes betas or alphas_cumprod, not both")
    clip_lambda = real("vp_discrete: clip_lambda", clip_lambda)
    if alphas_cumprod is not None:
        ac = _floats("alphas_cumprod", alphas_cumprod)
        if np.any(np.diff(ac) >= 0):
            i = int(np.argmax(np.diff(ac) >= 0)) + 1
            raise ValueError(
                f"vp_discrete needs strictly decreasing alphas_cumprod, but alphas_cumprod[{i}] = "
                f"{float(ac[i])!r} >= alphas_cumprod[{i - 1}] = {float(ac[i - 1])!r}"
            )
        log_alphas = 0.5 * np.log(ac)
    else:
        default = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
        log_alphas = 0.5 * np.cumsum(np.log1p(-_floats("betas", default if betas is None else betas)))
    n = log_alphas.size
    lams = _vp_lambda_from_log_alpha(np, log_alphas)
    if np.any(np.diff(lams) >= 0):
        raise ValueError("vp_discrete: log-SNR must decrease strictly; check the betas")
    keep = int(np.sum(lams >= clip_lambda))
    if keep < 2:
        raise ValueError(f"vp_discrete: fewer than 2 knots have lambda >= clip_lambda={clip_lambda}")
    t_knots = np.linspace(0.0, 1.0, n + 1)[1:][:keep]
    return VPDiscrete(
        t_knots=t_knots,
        log_alpha_knots=log_alphas[:keep],
        num_train_steps=n,
        t_max=float(t_knots[-1]),
        t_min=float(t_knots[0]),
        default_t_end=float(t_knots[0]),
    )


def edm(sigma_min: float = 0.002, sigma_max: float = 80.0) -> EDM:
    """EDM / variance-exploding schedule with sigma = t in [sigma_min, sigma_max]."""
    sigma_min = real("edm: sigma_min", sigma_min, gt=0)
    sigma_max = real("edm: sigma_max", sigma_max, gt=sigma_min)
    return _checked(EDM(t_max=sigma_max, t_min=sigma_min, default_t_end=sigma_min))


def flow(t_min: float = 1e-3, t_max: float = 0.999) -> Flow:
    """Rectified-flow schedule alpha_t = 1 - t, sigma_t = t on [t_min, t_max], 0 < t_min < t_max < 1.

    t_max < 1: at t = 1, alpha = 0 and lambda = -inf, which an exponential integrator cannot start from.
    """
    t_min = real("flow: t_min", t_min, gt=0, lt=1)
    t_max = real("flow: t_max (at t = 1 alpha = 0 and lambda = -inf)", t_max, gt=t_min, lt=1)
    return _checked(Flow(t_max=t_max, t_min=t_min, default_t_end=t_min))


def _floats(name: str, values) -> np.ndarray:
    """vp_discrete's `betas` or `alphas_cumprod`: a 1-D float64 array of at least 2 values, each in (0, 1)."""
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"vp_discrete: {name} must be an array of numbers ({e})") from None
    if a.ndim != 1 or a.size < 2:
        raise ValueError(f"vp_discrete needs a 1-D array of at least 2 {name}, got shape {a.shape}")
    if not np.all((a > 0) & (a < 1)):
        i = int(np.argmax(~((a > 0) & (a < 1))))
        raise ValueError(f"vp_discrete needs every value of {name} in (0, 1), got {name}[{i}] = {float(a[i])!r}")
    return a


def _checked(ns: NoiseSchedule) -> NoiseSchedule:
    """`ns` if its log-SNR is finite, decreases and inverts from t_min to t_max (finite parameters can still break
    it, e.g. vp_cosine's s = 1e20 leaves alpha = 1 in float64)."""
    with np.errstate(all="ignore"):  # the check itself says what is wrong
        lam, back = ns.lam(ts := np.array([ns.t_min, ns.t_max], np.float64)), ns.t_of_lambda(ns.lam(ts))
    if not (np.all(np.isfinite(lam)) and lam[0] > lam[1] and np.allclose(back, ts, rtol=1e-6)):
        raise ValueError(f"{ns}: its log-SNR must be finite, decrease and invert from t_min to t_max, got {lam}")
    return ns


def time_range(noise_schedule: NoiseSchedule, t_start=None, t_end=None, *, who: str, hint: str = ""):
    """(t_start, t_end) as floats, None read as the noise schedule's t_max and default_t_end, checked against it:
    t_min <= t_end < t_start <= t_max (t_max with a relative 1e-12 of float rounding). The one check of a time
    range, for `spacing.time_steps`, `find_schedule` and `SearchSpace`; the ValueError starts with `who`, names
    the schedule's bounds and both times, and ends with `hint`."""
    ns = noise_schedule
    hi = float(ns.t_max if t_start is None else t_start)
    lo = float(ns.default_t_end if t_end is None else t_end)
    if not float(ns.t_min) <= lo < hi <= float(ns.t_max) * (1 + 1e-12):
        raise ValueError(
            f"{who}: need t_min = {float(ns.t_min):g} <= t_end < t_start <= t_max = {float(ns.t_max):g} "
            f"({type(ns).__name__}), got t_start = {hi:g}, t_end = {lo:g}{hint}"
        )
    return hi, lo


def to_dict(noise_schedule: NoiseSchedule) -> dict:
    """A JSON-friendly description of a noise schedule (inverse: `from_dict`)."""
    ns = noise_schedule
    if isinstance(ns, VPLinear):
        return {"kind": "vp_linear", "beta_min": float(ns.beta_min), "beta_max": float(ns.beta_max)}
    if isinstance(ns, VPCosine):
        return {"kind": "vp_cosine", "s": float(ns.s), "t_max": ns.t_max}
    if isinstance(ns, EDM):
        return {"kind": "edm", "sigma_min": ns.t_min, "sigma_max": ns.t_max}
    if isinstance(ns, Flow):
        return {"kind": "flow", "t_min": ns.t_min, "t_max": ns.t_max}
    if isinstance(ns, VPDiscrete):
        raise ValueError("vp_discrete schedules are stored with their betas; save the betas array instead")
    raise ValueError(f"cannot describe noise schedule {type(ns).__name__}")


def from_dict(d: dict) -> NoiseSchedule:
    """Rebuild a noise schedule from `to_dict`'s description, with a clear error for unknown kinds."""
    if not isinstance(d, dict) or "kind" not in d:
        raise ValueError(f"a noise schedule description needs a 'kind', got {d!r}")
    kind, args = d["kind"], {k: v for k, v in d.items() if k != "kind"}
    makers = {"vp_linear": vp_linear, "vp_cosine": vp_cosine, "edm": edm, "flow": flow}
    if kind not in makers:
        raise ValueError(f"unknown noise schedule kind {kind!r}; expected one of {sorted(makers)}")
    try:
        return makers[kind](**args)
    except TypeError as e:
        raise ValueError(f"bad arguments for noise schedule {kind!r}: {e}") from None
