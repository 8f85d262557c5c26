"""Step spacings: the four standard spacings of a sampler's times, and the monotone parameterisation of times by
unconstrained logits that the learned timesteps and the search genomes share. Core: imports only `omsjax.schedule`.

Spacings (`time_steps`) follow DPM-Solver's definitions: 'logSNR' (uniform in lambda), 'time_uniform' (uniform in
t), 'time_quadratic' (uniform in sqrt(t), DDIM), plus Karras et al.'s 'karras': uniform in sigma^(1/rho) with
sigma = e^-lambda, EDM's equivalent noise level (rho = 7). `karras_sigmas` and `times_from_sigmas` run EDM /
k-diffusion noise levels on any noise schedule.

Parameterisation
----------------
`times(ns, u, t_start, t_end, spacing)` maps N unconstrained logits u to N + 1 times. A base spacing gives a time
coordinate c(t), monotone in t: lambda (logSNR), t (time-uniform), sqrt(t) (time-quadratic) or sigma^(1/7) with
sigma = e^-lambda (Karras). The N steps split [c(t_start), c(t_end)] in fractions w_i / sum(w), w_i =
exp(B tanh(u_i / B)), B = 8. Every u gives strictly decreasing times with the end points fixed exactly, no
fraction underflows (they differ by at most e^(2B)), and u = 0 is the base spacing. `logits` inverts `times`.
"""

from __future__ import annotations

import math
import warnings

import jax.numpy as jnp
import numpy as np

from omsjax.fields import count
from omsjax.noise import NoiseSchedule, array_module, time_range
from omsjax.schedule import time_bounds

__all__ = [
    "SPACINGS",
    "U_BOUND",
    "KARRAS_RHO",
    "time_steps",
    "karras_sigmas",
    "times_from_sigmas",
    "coordinate",
    "time_of_coordinate",
    "times",
    "logits",
]

SPACINGS = ("logSNR", "time_uniform", "time_quadratic", "karras")
U_BOUND = 8.0
KARRAS_RHO = 7.0


def time_steps(
    noise_schedule: NoiseSchedule,
    n: int,
    skip: str | None = None,
    *,
    t_start: float | None = None,
    t_end: float | None = None,
    rho: float = KARRAS_RHO,
) -> np.ndarray:
    """The n + 1 times t_0 = t_start > ... > t_n = t_end of a spacing, in float64 on the host.

    `skip` None: the noise schedule's `default_spacing` (logSNR for VP, karras for EDM, time_uniform for flow).
    logSNR: uniform in lambda; time_uniform: uniform in t; time_quadratic: uniform in sqrt(t) (DDIM);
    karras: sigma_i = (sigma_max^(1/rho) + i/n (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho in the equivalent
    EDM noise level sigma = exp(-lambda).
    """
    n = count("time_steps: n", n)
    if skip is None:
        skip = noise_schedule.default_spacing
    t_start, t_end = time_range(noise_schedule, t_start, t_end, who="time_steps")
    if skip == "logSNR":
        lam = np.linspace(noise_schedule.lam(t_start), noise_schedule.lam(t_end), n + 1)
        ts = np.asarray(noise_schedule.t_of_lambda(lam), dtype=np.float64)
    elif skip == "time_uniform":
        ts = np.linspace(t_start, t_end, n + 1)
    elif skip == "time_quadratic":
        ts = np.linspace(np.sqrt(t_start), np.sqrt(t_end), n + 1) ** 2
    elif skip == "karras":
        if not rho > 0:
            raise ValueError(f"karras spacing needs rho > 0, got {rho}")
        s_max = noise_schedule.edm_sigma(t_start)
        s_min = noise_schedule.edm_sigma(t_end)
        i = np.arange(n + 1) / n
        sig = (s_max ** (1 / rho) + i * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        ts = np.asarray(noise_schedule.t_of_edm_sigma(sig), dtype=np.float64)
    else:
        raise ValueError(f"unknown skip {skip!r}; expected one of {SPACINGS}")
    # Pin the end points exactly (the inverse maps round-trip to ~1e-15).
    ts[0], ts[-1] = t_start, t_end
    return ts


def _check_spacing(spacing: str) -> None:
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")


def _karras(ns: NoiseSchedule, t):
    lam = ns.lam(t)
    return array_module(lam).exp(-lam / KARRAS_RHO)


def _karras_inverse(ns: NoiseSchedule, c):
    return ns.t_of_lambda(-KARRAS_RHO * array_module(c).log(c))


# Each spacing's coordinate of a time and its inverse: (t -> c, c -> t), both monotone.
_COORDINATES = {
    "logSNR": (lambda ns, t: ns.lam(t), lambda ns, c: ns.t_of_lambda(c)),
    "time_uniform": (lambda ns, t: t, lambda ns, c: c),
    "time_quadratic": (lambda ns, t: t**0.5, lambda ns, c: c**2),
    "karras": (_karras, _karras_inverse),
}


def coordinate(ns: NoiseSchedule, t, spacing: str = "logSNR"):
    """The base spacing's coordinate of time t (monotone in t). numpy in, numpy out; jax in, jax out."""
    _check_spacing(spacing)
    return _COORDINATES[spacing][0](ns, t)


def time_of_coordinate(ns: NoiseSchedule, c, spacing: str = "logSNR"):
    """The inverse of `coordinate`."""
    _check_spacing(spacing)
    return _COORDINATES[spacing][1](ns, c)


def times(ns: NoiseSchedule, u, t_start: float, t_end: float, spacing: str = "logSNR", *, valid=None):
    """N + 1 strictly decreasing times from N logits `u` (module docstring); pure JAX, differentiable in u.

    `valid` (bool[N], optional) keeps only the first `sum(valid)` steps (the rest repeat t_end): the search's
    variable-length genomes."""
    u = jnp.asarray(u)
    f = u.dtype if jnp.issubdtype(u.dtype, jnp.floating) else jnp.result_type(float)
    u = u.astype(f)
    n = u.shape[-1]
    w = jnp.exp(U_BOUND * jnp.tanh(u / U_BOUND))
    if valid is not None:
        w = jnp.where(valid, w, 0.0)
    frac = jnp.cumsum(w) / jnp.sum(w)
    c0 = coordinate(ns, jnp.asarray(t_start, f), spacing)
    c1 = coordinate(ns, jnp.asarray(t_end, f), spacing)
    ts = time_of_coordinate(ns, jnp.concatenate([c0[None], c0 + frac * (c1 - c0)]), spacing)
    ts = ts.at[0].set(t_start)
    if valid is None:
        return ts.at[n].set(t_end)
    length = jnp.sum(valid).astype(jnp.int32)
    pos = jnp.arange(n + 1, dtype=jnp.int32)
    return jnp.where((pos >= length) & (pos > 0), jnp.asarray(t_end, f), ts)


def logits(ns: NoiseSchedule, ts, spacing: str = "logSNR") -> np.ndarray:
    """The logits u (float64, mean zero) with `times(ns, u, ts[0], ts[-1], spacing) == ts`; raises ValueError for
    times that are not strictly decreasing or whose increments differ by more than e^(2 U_BOUND)."""
    ts = np.asarray(ts, np.float64)
    if ts.ndim != 1 or len(ts) < 2 or not np.all(np.diff(ts) < 0):
        raise ValueError(f"need at least two strictly decreasing times, got {ts}")
    dc = np.diff(np.asarray(coordinate(ns, ts, spacing), np.float64))
    logf = np.log(dc / dc.sum())
    v = logf - logf.mean()
    if np.any(np.abs(v) >= U_BOUND * (1 - 1e-9)):
        raise ValueError(f"the {spacing} increments differ by more than e^(2 * {U_BOUND}): not representable")
    return U_BOUND * np.arctanh(v / U_BOUND)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """EDM / k-diffusion noise levels sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) -
    sigma_max^(1/rho)))^rho, i = 0..n-1: float64 [n], from sigma_max down to sigma_min (end points exact).

    Unlike k-diffusion's `get_sigmas_karras`, no final 0 is appended. Map to times with `times_from_sigmas`.
    """
    n = count("karras_sigmas: n", n, 2)
    sigma_min, sigma_max, rho = float(sigma_min), float(sigma_max), float(rho)
    if not (0 < sigma_min < sigma_max) or not math.isfinite(sigma_max):
        raise ValueError(f"karras_sigmas needs 0 < sigma_min < sigma_max < inf, got {sigma_min=}, {sigma_max=}")
    if not (0 < rho < math.inf):
        raise ValueError(f"karras_sigmas needs 0 < rho < inf, got {rho=}")
    ramp = np.linspace(0.0, 1.0, n)
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    sigmas[0], sigmas[-1] = sigma_max, sigma_min
    return sigmas


def times_from_sigmas(noise_schedule: NoiseSchedule, sigmas) -> np.ndarray:
    """Times t_i with edm_sigma(t_i) = sigma_t_i / alpha_t_i = exp(-lambda_t_i) = sigma_i: float64 [n] on the host.

    `sigmas` [n] must be finite, positive, strictly decreasing, and every time inside the schedule's [t_min, t_max]
    (with `omsjax.schedule`'s rounding tolerance); the error names the first sigma that is not.
    """
    ns = noise_schedule
    s = np.asarray(sigmas, dtype=np.float64)
    if s.ndim != 1 or s.size < 1:
        raise ValueError(f"times_from_sigmas needs a 1-D array of sigmas, got shape {s.shape}")
    bad = ~(np.isfinite(s) & (s > 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"times_from_sigmas needs finite positive sigmas, got sigmas[{i}] = {float(s[i])!r}")
    if np.any(np.diff(s) >= 0):
        i = int(np.argmax(np.diff(s) >= 0)) + 1
        raise ValueError(
            f"times_from_sigmas needs strictly decreasing sigmas, got sigmas[{i}] = {float(s[i])!r} >= "
            f"sigmas[{i - 1}] = {float(s[i - 1])!r}"
        )
    ts = np.asarray(ns.t_of_edm_sigma(s), dtype=np.float64)
    lo, hi = time_bounds(ns)
    # The round trip catches inverses that clamp outside the range (vp_discrete's interpolation).
    back = np.asarray(ns.edm_sigma(ts), dtype=np.float64)
    bad = ~((ts >= lo) & (ts <= hi) & (np.abs(back - s) <= 1e-8 * s))
    if bad.any():
        i = int(np.argmax(bad))
        s_lo, s_hi = float(ns.edm_sigma(np.float64(ns.t_min))), float(ns.edm_sigma(np.float64(ns.t_max)))
        raise ValueError(
            f"times_from_sigmas: sigmas[{i}] = {float(s[i])!r} is outside the {ns.kind} noise schedule's "
            f"range: t in [t_min, t_max] = [{ns.t_min:.6g}, {ns.t_max:.6g}] has sigma in "
            f"[{s_lo:.6g}, {s_hi:.6g}]"
        )
    if np.any(np.diff(ts) >= 0):
        i = int(np.argmax(np.diff(ts) >= 0)) + 1
        raise ValueError(f"times_from_sigmas: sigmas[{i - 1}] and sigmas[{i}] map to the same time {float(ts[i])!r}")
    return ts


def __getattr__(name):
    if name == "SKIP_TYPES":  # deprecated (CHANGELOG 0.2.0)
        msg = "omsjax.spacing.SKIP_TYPES is deprecated: use omsjax.spacing.SPACINGS"
        warnings.warn(msg, DeprecationWarning, stacklevel=2)
        return SPACINGS
    raise AttributeError(f"module 'omsjax.spacing' has no attribute {name!r}")
