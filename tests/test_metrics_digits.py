"""Tests of omsjax.metrics: the Fréchet distance against closed forms and the shipped digits classifier metric."""

import jax
import numpy as np
import pytest

from omsjax import metrics

try:
    from omsjax.data import load_digits as _load_digits
except ImportError:  # omsjax.data not there yet: the same fixed split

    def _load_digits(split="train", *, return_labels=False):
        from sklearn.datasets import load_digits

        d = load_digits()
        x = (d.images.astype(np.float32) / 8.0 - 1.0)[..., None]
        perm = np.random.RandomState(0).permutation(len(x))
        idx = {"heldout": perm[:300], "train": perm[300:], "all": np.arange(len(x))}[split]
        return (x[idx], d.target[idx]) if return_labels else x[idx]


def _spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _fd_eigh(mu1, c1, mu2, c2):
    """Float64 reference: tr sqrt(c1 c2) = tr sqrt(c1^(1/2) c2 c1^(1/2)), via symmetric eigendecompositions."""
    w, v = np.linalg.eigh(c1)
    s1 = (v * np.sqrt(w)) @ v.T
    tr = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(s1 @ c2 @ s1), 0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * tr)


# ------------------------------------------------------------------------------------------ closed forms


def test_fd_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    mu, c = rng.standard_normal(16), _spd(rng, 16)
    assert abs(metrics.frechet_distance(mu, c, mu, c)) < 1e-9


def test_fd_diagonal_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    s1, s2 = rng.uniform(0.1, 3, 8), rng.uniform(0.1, 3, 8)
    want = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_fd_random_spd_pair_matches_eigh_formula():
    rng = np.random.default_rng(2)
    mu1, mu2, c1, c2 = rng.standard_normal(12), rng.standard_normal(12), _spd(rng, 12), _spd(rng, 12)
    got = metrics.frechet_distance(mu1, c1, mu2, c2)
    assert got == pytest.approx(_fd_eigh(mu1, c1, mu2, c2), rel=1e-9)
    assert got == pytest.approx(metrics.frechet_distance(mu2, c2, mu1, c1), rel=1e-9)  # symmetric


def test_fd_singular_covariances_use_eps():
    rng = np.random.default_rng(3)
    f1, f2 = rng.standard_normal((50, 6)), rng.standard_normal((60, 6)) + 0.5
    f1[:, 0] = f2[:, 0] = 0.0  # a dead feature in both sets: singular covariances
    got = metrics.fd_from_features(f1, f2)
    want = metrics.fd_from_features(f1[:, 1:], f2[:, 1:])
    assert np.isfinite(got) and got == pytest.approx(want, abs=1e-4)


def test_feature_stats_and_fd_from_features():
    rng = np.random.default_rng(4)
    f1, f2 = rng.standard_normal((40, 5)), rng.standard_normal((30, 5))
    mu, cov = metrics.feature_stats(f1)
    np.testing.assert_allclose(mu, f1.mean(0))
    np.testing.assert_allclose(cov, np.cov(f1.T))
    want = _fd_eigh(*metrics.feature_stats(f1), *metrics.feature_stats(f2))
    assert metrics.fd_from_features(f1, f2) == pytest.approx(want, rel=1e-8)


def test_fd_input_errors():
    c = np.eye(3)
    with pytest.raises(ValueError, match="equal length"):
        metrics.frechet_distance(np.zeros(3), c, np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="covariances"):
        metrics.frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), c)
    with pytest.raises(ValueError, match="non-finite"):
        metrics.frechet_distance(np.array([0.0, np.nan, 0.0]), c, np.zeros(3), c)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.feature_stats(np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        metrics.feature_stats(np.zeros(3))


# ---------------------------------------------------------------------------------------- shipped metric


@pytest.fixture(scope="module")
def params():
    return metrics.load_classifier()


@pytest.fixture(scope="module")
def heldout():
    x, y = _load_digits("heldout", return_labels=True)
    return np.asarray(x, np.float32), np.asarray(y)


def test_shipped_classifier_accuracy(params, heldout):
    x, y = heldout
    assert x.shape == (300, 8, 8, 1)
    assert metrics.accuracy(params, x, y) >= 0.97
    f = metrics.features(params, x, batch=128)  # batch not dividing N: the last chunk is padded
    assert f.shape == (300, metrics.FEATURE_DIM) and f.dtype == np.float32
    np.testing.assert_allclose(f, metrics.features(params, x), rtol=1e-5, atol=1e-5)


def test_reference_stats_match_train_split(params):
    ref = metrics.reference_stats()
    assert ref.mu.shape == (128,) and ref.cov.shape == (128, 128) and ref.n == 1497
    np.testing.assert_allclose(ref.cov, ref.cov.T)
    mu, cov = metrics.feature_stats(metrics.features(params, _load_digits("train")))  # same split, same classifier
    np.testing.assert_allclose(mu, ref.mu, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cov, ref.cov, rtol=1e-3, atol=1e-4)


def test_fd_heldout_small_noise_large_and_deterministic(params, heldout):
    x, _ = heldout
    fd_real = metrics.fd(x)
    assert fd_real == metrics.fd(x)  # deterministic
    assert metrics.fd(x, classifier=params, ref=metrics.reference_stats()) == pytest.approx(fd_real, rel=1e-12)
    white = np.clip(np.random.default_rng(0).standard_normal(x.shape), -1, 1).astype(np.float32)
    fd_noise = metrics.fd(white)
    assert 0 < fd_real < 50
    assert fd_noise > 10 * fd_real


def test_fd_clips_samples(heldout):
    x, _ = heldout
    over = np.where(x > 0, 5.0, -7.0).astype(np.float32)  # clipped to +-1 before the classifier
    assert metrics.fd(over) == metrics.fd(np.where(x > 0, 1.0, -1.0).astype(np.float32))


def test_fd_sample_errors(heldout):
    x, _ = heldout
    with pytest.raises(ValueError, match="shape"):
        metrics.fd(x[..., 0])
    with pytest.raises(ValueError, match="shape"):
        metrics.fd(np.zeros((4, 28, 28, 1), np.float32))
    with pytest.raises(ValueError, match="at least 2"):
        metrics.fd(x[:1])
    bad = x[:10].copy()
    bad[3, 2, 2, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        metrics.fd(bad)
    with pytest.raises(ValueError, match="floating"):
        metrics.fd(np.zeros((4, 8, 8, 1), np.int32))


def test_missing_classifier_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no digits classifier"):
        metrics.load_classifier(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no classifier parameters"):
        metrics.load_classifier(tmp_path)


def test_train_classifier_deterministic_roundtrip(tmp_path, heldout):
    x, y = heldout
    p1 = metrics.train_classifier(x[:64], y[:64], steps=3, batch=16, seed=1)
    p2 = metrics.train_classifier(x[:64], y[:64], steps=3, batch=16, seed=1)
    leaves1, leaves2 = [np.asarray(v) for v in jax.tree.leaves(p1)], [np.asarray(v) for v in jax.tree.leaves(p2)]
    assert all(a.dtype == np.float32 and np.array_equal(a, b) for a, b in zip(leaves1, leaves2, strict=True))
    metrics.save_classifier(p1, tmp_path)
    restored = metrics.load_classifier(tmp_path)
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(leaves1, jax.tree.leaves(restored), strict=True))


# ---------------------------------------------------------------------------------- trajectory error


def test_ode_reference_and_trajectory_error_on_exact_gmm():
    import jax.numpy as jnp

    import omsjax
    from omsjax import noise, oracles, presets

    rng = np.random.RandomState(0)
    gmm = oracles.GaussianMixture.create(rng.randn(3, 6), 0.1 + 0.2 * rng.rand(3), np.array([0.2, 0.3, 0.5]))
    ns = noise.vp_linear()
    model = gmm.model(ns)
    x_T = jnp.asarray(rng.randn(5, 6))
    t_end = ns.default_t_end
    ref = metrics.ode_reference(model, ns, x_T, 1.0, t_end, rtol=1e-10, atol=1e-10)
    direct = oracles.reference_solution(lambda x, t: gmm.eps(ns, x, t), ns, x_T, 1.0, t_end)
    np.testing.assert_allclose(np.asarray(ref), np.asarray(direct), rtol=1e-8, atol=1e-8)
    errs = [metrics.reference_rmse(omsjax.sample(model, ns, presets.ddim(ns, n), x_T), ref) for n in (5, 10, 20, 40)]
    assert all(b < a for a, b in zip(errs, errs[1:], strict=False))  # first order: halving h about halves it
    assert 1.6 < errs[2] / errs[3] < 2.4
    x = np.asarray(omsjax.sample(model, ns, presets.ddim(ns, 5), x_T))
    assert metrics.reference_rmse(x, ref) == pytest.approx(float(np.sqrt(np.mean((x - np.asarray(ref)) ** 2))))


def test_trajectory_error_errors():
    with pytest.raises(ValueError, match="same shape"):
        metrics.reference_rmse(np.zeros((2, 3)), np.zeros((3, 2)))
    bad = np.zeros((2, 3))
    bad[0, 0] = np.nan
    assert metrics.reference_rmse(bad, np.zeros((2, 3))) == float("inf")
    with pytest.raises(ValueError, match="reference has non-finite"):
        metrics.reference_rmse(np.zeros((2, 3)), bad)
    with pytest.raises(ValueError, match="one omsjax.Model"):
        metrics.ode_reference(lambda x, t: x, None, np.zeros((1, 2)), 1.0, 0.01)


# ---- distances between sample sets of any shape (metrics.distribution) ----


def test_sliced_wasserstein_in_1d_is_scipys_exact_wasserstein_distance_for_unequal_sizes():
    import scipy.stats

    r = np.random.default_rng(1)
    x, y = r.normal(size=37), r.normal(1.0, 2.0, size=53)
    got = metrics.sliced_wasserstein(x[:, None], y[:, None], p=1, num_projections=3)
    assert got == pytest.approx(scipy.stats.wasserstein_distance(x, y), rel=1e-12)


def test_sliced_w2_of_a_translated_set_is_the_shift_over_root_d():
    # Every projection of y = x + mu is the projection of x shifted by <theta, mu>: SW_2^2 = E <theta, mu>^2 =
    # |mu|^2 / d for theta uniform on the sphere (Monte Carlo over 8192 directions: ~1% error).
    x = np.random.default_rng(2).normal(size=(300, 3))
    mu = np.array([1.0, -2.0, 0.5])
    got = metrics.sliced_wasserstein(x, x + mu, num_projections=8192)
    assert got == pytest.approx(np.linalg.norm(mu) / np.sqrt(3), rel=0.03)
    assert metrics.sliced_wasserstein(x, x) == 0.0


def test_energy_distance_matches_a_double_loop_transcription_and_scipy_in_1d():
    import scipy.stats

    r = np.random.default_rng(3)
    x, y = r.normal(size=(11, 2, 2)), r.normal(0.5, 1.0, size=(7, 2, 2))
    fx, fy = x.reshape(11, -1), y.reshape(7, -1)

    def mean_dist(a, b):
        return sum(np.sqrt(np.sum((u - v) ** 2)) for u in a for v in b) / (len(a) * len(b))

    want = np.sqrt(2 * mean_dist(fx, fy) - mean_dist(fx, fx) - mean_dist(fy, fy))
    assert metrics.energy_distance(x, y) == pytest.approx(want, rel=1e-12)
    a, b = r.normal(size=20), r.normal(1.0, 1.0, size=31)
    assert metrics.energy_distance(a, b) == pytest.approx(scipy.stats.energy_distance(a, b), rel=1e-9)


def test_distance_metrics_score_samples_against_data_and_name_bad_input():
    r = np.random.default_rng(4)
    data = r.normal(size=(64, 2))
    sw, ed = metrics.SlicedWasserstein(data, num_projections=16), metrics.EnergyDistance(data)
    near, far = data + 0.01, data + 3.0
    assert sw(near, None) < sw(far, None) and ed(near, None) < ed(far, None)
    assert "sliced_wasserstein" in sw.name and "energy_distance" in ed.name
    with pytest.raises(ValueError, match="samples and data must hold samples of the same size"):
        sw(r.normal(size=(8, 3)), None)
    with pytest.raises(ValueError, match="samples has 1 sample"):
        ed(np.array([[0.0, np.nan]]), None)
    with pytest.raises(ValueError, match="num_projections"):
        metrics.SlicedWasserstein(data, num_projections=0)
