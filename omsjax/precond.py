"""Preconditionings: the VP / EDM / VE / FDM formulas, in one place for `omsjax.Model` and the training losses.

Every method is written pred = c_skip x + c_out F(c_in x; c_noise) (Karras et al. 2022, Table 1; REFERENCE.md
sections 2 and 6), with its per-sample loss weight lambda and the noise schedule a model trained with it is
sampled on:
- "vp": continuous linear VP, noise prediction: (0, 1, 1, t), lambda = 1 (on eps).
- "edm": c_skip = sd^2/(s^2+sd^2), c_out = s sd/sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2), c_noise = ln(s)/4,
  lambda = (s^2 + sd^2) / (s sd)^2 (on x0).
- "ve": (1, s, 1, ln(s/2)), lambda = 1 / s^2 (on x0).
- "fdm_<base>" (Fast Diffusion Model): the base's coefficients with c_in = s(sigma) = `fdm_scale`.
A core module: it imports only jax, numpy and `omsjax.noise`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from omsjax import noise

__all__ = [
    "PRECONDS",
    "FDM_SIGMA_RANGES",
    "T_EPS",
    "SIGMA_DATA",
    "VE_SIGMA_MIN",
    "VE_SIGMA_MAX",
    "base_of",
    "check",
    "edm",
    "fdm_scale",
    "precondition",
    "loss_weight",
    "noise_schedule",
]

PRECONDS = ("vp", "edm", "ve", "fdm_edm", "fdm_vp", "fdm_ve")

# Continuous VP: t in [T_EPS, 1]. EDM: sigma_data = SIGMA_DATA. VE: sigma in [VE_SIGMA_MIN, VE_SIGMA_MAX] (EDM's VE
# column, its training and sampling range).
T_EPS = 1e-5
SIGMA_DATA = 0.5
VE_SIGMA_MIN = 0.02
VE_SIGMA_MAX = 100.0

# FDM: the sigma range normalising t' in `fdm_scale`, per base method (REFERENCE.md section 6). For VP it is the
# EDM sigma (sigma/alpha) of the continuous linear VP schedule at t = T_EPS and t = 1 (about 0.001 and 152.17).
_VP = noise.vp_linear()
FDM_SIGMA_RANGES = {
    "edm": (0.002, 80.0),
    "vp": (float(_VP.edm_sigma(np.float64(T_EPS))), float(_VP.edm_sigma(np.float64(1.0)))),
    "ve": (VE_SIGMA_MIN, VE_SIGMA_MAX),
}


def base_of(precond: str) -> str:
    """The base method of a preconditioning: "fdm_vp" -> "vp"; "vp", "edm", "ve" are their own."""
    return precond[4:] if precond.startswith("fdm_") else precond


def check(precond: str) -> None:
    """Raise a ValueError naming `precond` unless it is one of `PRECONDS`."""
    if precond not in PRECONDS:
        raise ValueError(f"precond must be one of {PRECONDS}, got {precond!r}")


def edm(sigma, sigma_data: float = SIGMA_DATA):
    """EDM's (c_skip, c_out, c_in, c_noise) at noise level `sigma` (Karras et al. 2022, Table 1):

    c_skip = sd^2/(sigma^2+sd^2),  c_out = sigma sd/sqrt(sigma^2+sd^2),  c_in = 1/sqrt(sigma^2+sd^2),
    c_noise = ln(sigma)/4.
    """
    sd2 = sigma_data**2
    s2 = sigma * sigma
    c_skip = sd2 / (s2 + sd2)
    c_out = sigma * sigma_data * jax.lax.rsqrt(s2 + sd2)
    c_in = jax.lax.rsqrt(s2 + sd2)
    c_noise = 0.25 * jnp.log(sigma)
    return c_skip, c_out, c_in, c_noise


def fdm_scale(sigma, *, m, sigma_min, sigma_max):
    """FDM's critically damped mean scale, the c_in of the fdm_* preconditionings (REFERENCE.md section 6):

        t' = (sigma - sigma_min) / (sigma_max - sigma_min),   B(t') = 0.1 t' + 0.5 * 19.9 t'^2,
        s(sigma) = exp(-m B(t')) (1 + m B(t')).

    s(sigma_min) = 1, s decreases to exp(-10.05 m)(1 + 10.05 m) at sigma_max; no clipping outside the range.
    Elementwise in the dtype of `sigma`.
    """
    sigma = jnp.asarray(sigma)
    tp = (sigma - sigma_min) / (sigma_max - sigma_min)
    mb = m * (0.1 * tp + 0.5 * 19.9 * tp * tp)
    return jnp.exp(-mb) * (1.0 + mb)


def precondition(precond: str, sigma, sigma_data: float = SIGMA_DATA, *, fdm_m: float = 2.0):
    """(c_skip, c_out, c_in, c_noise) with pred = c_skip x + c_out F(c_in x; c_noise), x the base's noised input.

    "edm": `sigma` is EDM's noise level; `edm`'s coefficients; pred is the denoised x0.
    "ve": `sigma` is the noise level; (1, sigma, 1, ln(sigma/2)) (Karras et al. 2022, Table 1); pred is x0.
    "vp": `sigma` is the VP time t; the network is a plain noise predictor: (0, 1, 1, t), pred is eps.
    "fdm_<base>": the base's coefficients with c_in = s(sigma) = `fdm_scale` (m = fdm_m, sigma range
      FDM_SIGMA_RANGES[base]) acting on the EDM-scaled input x0 + sigma eps; for "fdm_vp" sigma = sigma_VP(t) =
      sigma_t / alpha_t and, since the VP x is alpha_t (x0 + sigma eps), c_in = s(sigma) / alpha_t.
    """
    check(precond)
    base = base_of(precond)
    level = jnp.asarray(sigma)
    if base == "edm":
        c_skip, c_out, c_in, c_noise = edm(level, sigma_data)
    elif base == "ve":
        c_skip, c_out, c_in, c_noise = jnp.ones_like(level), level, jnp.ones_like(level), jnp.log(0.5 * level)
    else:  # vp
        c_skip, c_out, c_in, c_noise = jnp.zeros_like(level), jnp.ones_like(level), jnp.ones_like(level), level
    if precond != base:
        lo, hi = FDM_SIGMA_RANGES[base]
        if base == "vp":
            c_in = fdm_scale(_VP.edm_sigma(level), m=fdm_m, sigma_min=lo, sigma_max=hi) * jnp.exp(-_VP.log_alpha(level))
        else:
            c_in = fdm_scale(level, m=fdm_m, sigma_min=lo, sigma_max=hi)
    return c_skip, c_out, c_in, c_noise


def loss_weight(precond: str, sigma, sigma_data: float = SIGMA_DATA):
    """Per-sample loss weight lambda of the base method (before a warm-up cap): vp 1 (on eps), edm
    (sigma^2 + sd^2) / (sigma sd)^2, ve 1 / sigma^2 (on x0); the fdm_* variants use their base's."""
    check(precond)
    base = base_of(precond)
    level = jnp.asarray(sigma)
    if base == "edm":
        return (level**2 + sigma_data**2) / (level * sigma_data) ** 2
    if base == "ve":
        return 1.0 / (level * level)
    return jnp.ones_like(level)


def noise_schedule(precond: str) -> noise.NoiseSchedule:
    """The noise schedule a model trained with `precond` is sampled on (the times its model expects): vp, fdm_vp
    `vp_linear()`; edm, fdm_edm `edm()` (sigma in [0.002, 80]); ve, fdm_ve `edm(0.02, 100)`."""
    check(precond)
    base = base_of(precond)
    if base == "vp":
        return noise.vp_linear()
    if base == "ve":
        return noise.edm(VE_SIGMA_MIN, VE_SIGMA_MAX)
    return noise.edm()
