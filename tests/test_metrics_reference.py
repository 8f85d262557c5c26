"""`omsjax.metrics.reference`: the reference metrics against closed forms and the diffrax ODE endpoint of an exact
Gaussian mixture, their cache and store, and the conditioning and guidance they keep."""

import logging

import jax.numpy as jnp
import numpy as np
import pytest

import omsjax
from omsjax import metrics, noise, oracles, presets
from omsjax.metrics import reference as R

NS = noise.vp_linear()
RNG = np.random.RandomState(3)
D = 3
GMM = oracles.GaussianMixture.create(1.5 * RNG.randn(3, D), 0.3 + 0.3 * RNG.rand(3), np.full(3, 1 / 3))
LABELS = np.array([0, 1, 2])
CG = oracles.ConditionalGaussianMixture.create(1.5 * RNG.randn(3, D), np.full(3, 0.4), np.full(3, 1 / 3), LABELS)
X_T = jnp.asarray(RNG.randn(12, D))


def _eps(params, x, t):
    return params.eps(NS, x, t)


def _eps_cond(params, x, t, cond):
    return params.eps(NS, x, t, cond)


MODEL = omsjax.Model(_eps, GMM, name="gmm", sample_shape=(D,))
COND_MODEL = omsjax.Model(_eps_cond, CG, name="cgmm", sample_shape=(D,))
FAST = R.ReferenceSampler(steps=40, batch_size=5)  # a short reference: the tests check plumbing, not accuracy


def test_the_default_reference_sampler_is_converged():
    """DPM-Solver++(3M), 100 time-quadratic steps, against the diffrax Dopri8 endpoint (rtol 1e-10) of the exact
    mixture's ODE from the same noise: the reference is 100x closer to the ODE than a 10-step sampler."""
    ref = R.Reference(MODEL, NS).samples(X_T)
    ode = np.asarray(metrics.ode_reference(MODEL, NS, X_T, 1.0, NS.default_t_end, rtol=1e-10, atol=1e-10))
    ten = np.asarray(omsjax.sample(MODEL, NS, presets.dpm_solver_pp(NS, 10, 2), X_T))
    assert metrics.reference_rmse(ref, ode) < 1e-2 * metrics.reference_rmse(ten, ode)
    assert metrics.reference_rmse(ref, ode) < 2e-4


def test_reference_samples_are_the_reference_schedule_cached_per_noise(monkeypatch):
    ref = R.Reference(MODEL, NS, sampler=FAST)
    want = np.asarray(omsjax.sample(MODEL, NS, FAST.schedule(NS, t_start=1.0, t_end=NS.default_t_end), X_T))
    got = ref.samples(X_T)  # batches of 5 rows, the last padded
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(R.Reference, "_sample", lambda self, x: pytest.fail("sampled twice"))
    assert ref.samples(X_T) is got
    monkeypatch.undo()  # another noise is another key: sampled
    np.testing.assert_allclose(ref.samples(X_T[:4]), want[:4], rtol=1e-12, atol=1e-12)
    assert ref.key(X_T) != ref.key(X_T[:4]) and ref.key(X_T) == R.Reference(MODEL, NS, sampler=FAST).key(X_T)
    assert ref.key(X_T) != R.Reference(MODEL, NS, sampler=R.ReferenceSampler(steps=41)).key(X_T)
    assert ref.key(X_T) != R.Reference(MODEL, NS, sampler=FAST, t_end=2e-3).key(X_T)


def test_metric_formulas_and_zero_at_the_reference():
    x, r = RNG.randn(50, D), RNG.randn(50, D)
    assert metrics.reference_rmse(x, r) == pytest.approx(float(np.sqrt(np.mean((x - r) ** 2))), rel=1e-12)
    ident = lambda a: np.asarray(a).reshape(len(a), -1)  # noqa: E731
    want = metrics.frechet_distance(*metrics.feature_stats(x), *metrics.feature_stats(r))
    assert metrics.reference_fd(x, r, features=ident) == pytest.approx(want, rel=1e-12)
    assert metrics.reference_fd(r, r, features=ident) == pytest.approx(0.0, abs=1e-8)
    assert metrics.reference_rmse(r, r) == 0.0
    bad = x.copy()
    bad[3, 1] = np.inf
    assert metrics.reference_rmse(bad, r) == np.inf and metrics.reference_fd(bad, r, features=ident) == np.inf
    with pytest.raises(ValueError, match="same shape"):
        metrics.reference_rmse(x[:3], r)
    with pytest.raises(ValueError, match="reference has non-finite"):
        metrics.reference_rmse(x, bad)
    with pytest.raises(ValueError, match=r"images \[N, 8, 8, 1\].*features="):
        metrics.reference_fd(x, r)


def test_search_metrics_rank_samplers_by_their_distance_to_the_reference():
    rmse = metrics.ReferenceRMSE(R.Reference(MODEL, NS, sampler=FAST))
    ident = lambda a: np.asarray(a)  # noqa: E731
    fd = metrics.ReferenceFD(R.Reference(MODEL, NS, sampler=FAST), features=ident)
    x_T = np.asarray(X_T)
    errs = [rmse(np.asarray(omsjax.sample(MODEL, NS, presets.ddim(NS, n), X_T)), x_T) for n in (3, 6, 12, 24)]
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False))
    fds = [fd(np.asarray(omsjax.sample(MODEL, NS, presets.ddim(NS, n), X_T)), x_T) for n in (3, 24)]
    assert fds[0] > fds[1] >= -1e-9
    assert rmse.name == "reference_rmse[gmm, DPM-Solver++(3M), time_quadratic, 40 steps]"
    assert fd.name.startswith("reference_fd[gmm, ")


def test_conditioning_and_guidance_are_the_references():
    cond = jnp.asarray(np.arange(12) % 3, jnp.int32)
    uncond = jnp.full((12,), CG.null_label, jnp.int32)
    ref = R.Reference(COND_MODEL, NS, sampler=FAST, guidance=3.0, cond=cond, uncond=uncond)
    sched = FAST.schedule(NS, t_start=1.0, t_end=NS.default_t_end, guidance=3.0)
    want = np.asarray(omsjax.sample(COND_MODEL, NS, sched, X_T, cond=cond, uncond=uncond))
    np.testing.assert_allclose(ref.samples(X_T), want, rtol=1e-12, atol=1e-12)
    # A noise of 6 rows takes the first 6 labels.
    np.testing.assert_allclose(ref.samples(X_T[:6]), want[:6], rtol=1e-12, atol=1e-12)
    other = R.Reference(COND_MODEL, NS, sampler=FAST, guidance=1.0, cond=cond, uncond=uncond)
    assert other.key(X_T) != ref.key(X_T) and "w 3" in ref.name and "w " not in other.name
    relabelled = R.Reference(COND_MODEL, NS, sampler=FAST, guidance=3.0, cond=(cond + 1) % 3, uncond=uncond)
    assert relabelled.key(X_T) != ref.key(X_T)


def test_store_keeps_samples_per_fingerprint(tmp_path, monkeypatch, caplog):
    path = tmp_path / "refs.npz"
    first = R.Reference(MODEL, NS, sampler=FAST, store=R.ReferenceStore(path, "zoo-a"))
    got = first.samples(X_T)
    assert path.exists()
    monkeypatch.setattr(R.Reference, "_sample", lambda self, x: pytest.fail("not read from the store"))
    again = R.Reference(MODEL, NS, sampler=FAST, store=R.ReferenceStore(path, "zoo-a"))
    np.testing.assert_array_equal(again.samples(X_T), got)
    # A run's own store reads a shipped one and never writes it.
    run = R.ReferenceStore(tmp_path / "run.npz", "zoo-a", shipped=path)
    np.testing.assert_array_equal(R.Reference(MODEL, NS, sampler=FAST, store=run).samples(X_T), got)
    assert not (tmp_path / "run.npz").exists()
    # Another fingerprint: ignored, with a log line naming the file.
    with caplog.at_level(logging.WARNING):
        stale = R.ReferenceStore(path, "zoo-b")
    assert stale.get(first.key(X_T)) is None and str(path) in caplog.text
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz: not a reference store"):
        R.ReferenceStore(tmp_path / "bad.npz", "zoo-a")


def test_bad_configuration_is_named():
    with pytest.raises(ValueError, match="ReferenceSampler.solver"):
        R.ReferenceSampler(solver="Euler")
    with pytest.raises(ValueError, match="ReferenceSampler.steps"):
        R.ReferenceSampler(steps=0)
    with pytest.raises(ValueError, match="ReferenceSampler.spacing"):
        R.ReferenceSampler(spacing="cosine")
    with pytest.raises(ValueError, match="one omsjax.Model"):
        R.Reference([MODEL], NS)
    with pytest.raises(ValueError, match="needs an omsjax.metrics.Reference"):
        metrics.ReferenceRMSE(MODEL)
