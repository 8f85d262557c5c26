"""`omsjax.sample_heun`: EDM's Heun sampler (Karras et al. 2022, Algorithm 1 without churn) against a float64
numpy transcription of the algorithm, across noise schedules, and its order of convergence against diffrax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import omsjax
from omsjax import noise, oracles, spacing

RNG = np.random.RandomState(3)
GMM = oracles.GaussianMixture.create(RNG.randn(4, 6), 0.1 + 0.3 * RNG.rand(4), np.array([0.1, 0.2, 0.3, 0.4]))


def denoiser_np(x, sigma):
    """D(x; sigma) of the mixture under EDM (x = x0 + sigma n), transcribed in numpy float64."""
    means, stds, w = (np.asarray(v, np.float64) for v in (GMM.means, GMM.stds, GMM.weights))
    var = stds**2 + sigma**2  # [K]
    diff = x[:, None, :] - means[None]  # [B, K, D]
    logp = np.log(w)[None] - 0.5 * np.sum(diff**2, -1) / var - 0.5 * x.shape[1] * np.log(var)
    g = np.exp(logp - logp.max(1, keepdims=True))
    g /= g.sum(1, keepdims=True)
    # E[x0 | x] = sum_k g_k (mu_k + s_k^2 / var_k (x - mu_k))
    return np.sum(g[..., None] * (means[None] + (stds**2 / var)[None, :, None] * diff), axis=1)


def heun_np(x, sigmas):
    """Karras et al. 2022, Algorithm 1 (S_churn = 0), every step with the second-order correction."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        d = (x - denoiser_np(x, s)) / s
        x_euler = x + (s_next - s) * d
        d_next = (x_euler - denoiser_np(x_euler, s_next)) / s_next
        x = x + (s_next - s) * 0.5 * (d + d_next)
    return x


def test_matches_the_transcription_of_edm_algorithm_1():
    ns = noise.edm()
    ts = spacing.time_steps(ns, 7, "karras")
    x_T = 80.0 * np.random.RandomState(0).randn(16, 6)
    got = omsjax.sample_heun(GMM.model(ns), ns, ts, jnp.asarray(x_T))
    np.testing.assert_allclose(got, heun_np(x_T, ts), rtol=1e-10, atol=1e-10)


def test_vp_schedule_runs_the_same_ode_in_edm_coordinates():
    # On the VP schedule the sampler steps y = x / alpha over s = sigma / alpha: the EDM sampler on those sigmas.
    vp = noise.vp_linear()
    ts = spacing.time_steps(vp, 6, "karras")
    sig = vp.edm_sigma(ts)
    x_T = np.random.RandomState(1).randn(16, 6)
    got = omsjax.sample_heun(GMM.model(vp), vp, ts, jnp.asarray(x_T))
    want = heun_np(x_T / np.exp(vp.log_alpha(ts[0])), sig) * np.exp(vp.log_alpha(ts[-1]))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_second_order_convergence_to_the_ode_solution():
    vp = noise.vp_linear()
    model = GMM.model(vp)
    x_T = jax.random.normal(jax.random.PRNGKey(2), (64, 6), jnp.float64)
    t_end = 0.05  # away from the data, where the mixture's sharp posterior makes the ODE stiff
    ref = oracles.reference_solution(lambda x, t: GMM.eps(vp, x, t), vp, x_T, vp.t_max, t_end)
    errs = []
    for n in (8, 16, 32):
        ts = spacing.time_steps(vp, n, "karras", t_end=t_end)
        errs.append(float(jnp.sqrt(jnp.mean((omsjax.sample_heun(model, vp, ts, x_T) - ref) ** 2))))
    ratios = np.array(errs[:-1]) / np.array(errs[1:])
    assert np.all(ratios > 3.0), (errs, ratios)  # second order: 4x per halving of the step


def test_rejects_bad_input():
    vp = noise.vp_linear()
    model = GMM.model(vp)
    x = jnp.zeros((2, 6))
    with pytest.raises(ValueError, match="decreasing"):
        omsjax.sample_heun(model, vp, np.array([0.5, 0.7]), x)
    with pytest.raises(ValueError, match="t_min"):
        omsjax.sample_heun(model, vp, np.array([1.5, 0.5]), x)
    with pytest.raises(ValueError, match="1-D"):
        omsjax.sample_heun(model, vp, np.array([1.0]), x)
    with pytest.raises(ValueError, match="Model"):
        omsjax.sample_heun([model], vp, np.array([1.0, 0.5]), x)
    with pytest.raises(ValueError, match="x_T must be float32 or float64"):
        omsjax.sample_heun(model, vp, np.array([1.0, 0.5]), jnp.zeros((2, 6), jnp.int32))


def test_gmm_command_has_a_heun_row(capsys):
    import json

    from omsjax import cli
    from omsjax.cli.gmm_cmd import HEUN

    assert cli.main(["gmm", "--nfe", "5", "10", "--batch", "8", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)["table"]
    heun = table[HEUN]
    assert heun["5"] is None  # two model calls per step: even NFE only
    assert np.isfinite(heun["10"]) and 0 < heun["10"] < 10 * table["DDIM"]["10"]
