"""The class-conditional Gaussian mixture (the exact model for classifier-free guidance tests) against an
independent float64 transcription of its density: eps(x, t, c) = -sigma_t grad_x log p_t(x | c)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp

from omsjax import noise, oracles

NS = noise.vp_linear()
RNG = np.random.RandomState(3)
MEANS = 4.0 * RNG.randn(5, 3)
STDS = 0.2 + 0.3 * RNG.rand(5)
WEIGHTS = np.array([0.1, 0.3, 0.2, 0.25, 0.15])
LABELS = [0, 1, 1, 2, 0]
CG = oracles.ConditionalGaussianMixture.create(MEANS, STDS, WEIGHTS, LABELS)


def log_p_t(x, t, c):
    """log p_t(x | c) for one x [D]: log sum over the components k of class c (all for c None) of
    w_k N(x; alpha_t mu_k, (alpha_t^2 s_k^2 + sigma_t^2) I), unnormalised over the class (the score ignores it)."""
    a, s = jnp.exp(NS.log_alpha(t)), NS.sigma(t)
    terms = []
    for k in range(len(LABELS)):
        if c is None or LABELS[k] == c:
            var = a**2 * STDS[k] ** 2 + s**2
            terms.append(np.log(WEIGHTS[k]) - 0.5 * jnp.sum((x - a * MEANS[k]) ** 2) / var
                         - 0.5 * x.shape[0] * jnp.log(2 * np.pi * var))  # fmt: skip
    return logsumexp(jnp.stack(terms))


@pytest.mark.parametrize("t", [0.05, 0.5, 0.95])
def test_eps_is_minus_sigma_times_the_score_of_each_class(t):
    x = jnp.asarray(3.0 * RNG.randn(4, 3))
    score = jax.vmap(jax.grad(log_p_t), in_axes=(0, None, None))
    for c in (0, 1, 2, None):
        want = -NS.sigma(t) * score(x, t, c)
        label = CG.null_label if c is None else c
        np.testing.assert_allclose(CG.eps(NS, x, t, label), want, rtol=1e-10, atol=1e-12)
    # Per-sample labels and times.
    labels, ts = jnp.asarray([0, 1, 2, 3]), jnp.asarray([0.2, 0.4, 0.6, 0.8])
    got = CG.eps(NS, x, ts, labels)
    for i, c in enumerate([0, 1, 2, None]):
        want = -NS.sigma(ts[i]) * jax.grad(log_p_t)(x[i], ts[i], c)
        np.testing.assert_allclose(got[i], want, rtol=1e-10, atol=1e-12)


def test_the_null_label_is_the_unconditional_mixture_and_guidance_is_linear_in_w():
    x, t = jnp.asarray(RNG.randn(6, 3)), 0.3
    plain = oracles.GaussianMixture.create(MEANS, STDS, WEIGHTS)
    e_u = CG.eps(NS, x, t, CG.null_label)
    np.testing.assert_allclose(e_u, plain.eps(NS, x, t), rtol=1e-12)
    c = jnp.asarray([0, 1, 2, 0, 1, 2])
    e_c = CG.eps(NS, x, t, c)
    np.testing.assert_allclose(CG.guided_eps(NS, x, t, c, 1.0), e_c, rtol=1e-12)
    np.testing.assert_allclose(CG.guided_eps(NS, x, t, c, 0.0), e_u, rtol=1e-12)
    w = jnp.asarray([0.0, 1.0, 3.0, 7.5, -1.0, 2.0])
    np.testing.assert_allclose(CG.guided_eps(NS, x, t, c, w), e_u + w[:, None] * (e_c - e_u), rtol=1e-12)
    # A label outside 0..C selects nothing: NaN, never a clamped class.
    bad = CG.eps(NS, x[:2], t, jnp.asarray([4, -1]))
    assert np.all(np.isnan(bad))


def test_samples_of_a_class_come_from_its_components():
    c = jnp.asarray(np.repeat([0, 1, 2], 200))
    x = np.asarray(CG.sample(jax.random.PRNGKey(0), c))
    # The components are far apart (means 4 randn, stds <= 0.5): the nearest mean tells the component.
    nearest = np.argmin(((x[:, None, :] - MEANS[None]) ** 2).sum(-1), axis=1)
    assert np.mean(np.asarray(LABELS)[nearest] == np.asarray(c)) > 0.99
    # Within class 1, the components are drawn in proportion to their weights (0.3 : 0.2).
    share = np.mean(nearest[200:400] == 1)
    assert abs(share - 0.6) < 0.1


def test_create_names_what_is_wrong():
    with pytest.raises(ValueError, match="labels must be \\[5\\] integers"):
        oracles.ConditionalGaussianMixture.create(MEANS, STDS, WEIGHTS, [0.0, 1, 1, 2, 0])
    with pytest.raises(ValueError, match="labels must lie in 0..num_classes-1"):
        oracles.ConditionalGaussianMixture.create(MEANS, STDS, WEIGHTS, LABELS, num_classes=2)
    with pytest.raises(ValueError, match="classes \\[3\\] have no component"):
        oracles.ConditionalGaussianMixture.create(MEANS, STDS, WEIGHTS, LABELS, num_classes=4)
