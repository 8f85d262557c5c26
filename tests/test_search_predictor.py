"""`search.predictor`: the ranking losses on hand-made cases, Kendall's tau against scipy, learning a synthetic
ranking, padding that changes nothing."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from search_cases import LAT, NS, synthetic_fitness

from omsjax.search import encoding as E
from omsjax.search import predictor
from omsjax.search.space import SearchSpace

REPO = Path(__file__).resolve().parent.parent


def test_hinge_loss_on_hand_made_cases():
    s = jnp.asarray([0.0, 2.0, 0.5])
    t = jnp.asarray([1.0, 3.0, 1.1])
    # Pairs with t_j - t_i > 0.25: (0, 1) and (2, 1). Losses: max(0, 1 - 2) = 0, max(0, 1 - 1.5) = 0.
    assert float(predictor.hinge_loss(s, t, threshold=0.25)) == 0.0
    # Threshold 0: pair (0, 2) too, with loss max(0, 1 - 0.5) = 0.5; mean over 3 pairs.
    assert float(predictor.hinge_loss(s, t, threshold=0.0)) == pytest.approx(0.5 / 3)
    # Reversed scores: (0, 1): 1 + 2 = 3, (2, 1): 1 + 1.5 = 2.5.
    assert float(predictor.hinge_loss(-s, t, threshold=0.25)) == pytest.approx((3.0 + 2.5) / 2)
    # inf targets rank last; inf - inf pairs are left out.
    t_inf = jnp.asarray([1.0, jnp.inf, jnp.inf])
    assert float(predictor.hinge_loss(jnp.asarray([0.0, 0.0, 0.0]), t_inf)) == pytest.approx(1.0)
    assert float(predictor.hinge_loss(s, jnp.asarray([1.0, 1.0, 1.0]))) == 0.0  # no pair


def test_kendall_tau_matches_scipy_with_ties():
    assert predictor.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert predictor.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # One discordant pair of 6: tau = (5 - 1) / 6.
    assert predictor.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.integers(0, 5, 30).astype(float), rng.integers(0, 4, 30).astype(float)
        assert predictor.kendall_tau(x, y) == pytest.approx(scipy.stats.kendalltau(x, y).statistic, rel=1e-12)
    assert predictor.kendall_tau([1.0, np.inf, 2.0], [1.0, 3.0, 2.0]) == pytest.approx(1.0)
    assert np.isnan(predictor.kendall_tau([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="one length"):
        predictor.kendall_tau([1, 2], [1, 2, 3])


def test_mse_loss():
    s, t = jnp.asarray([0.0, 1.0]), jnp.asarray([0.0, jnp.inf])
    assert float(predictor.mse_loss(s, t, cap=10.0)) == pytest.approx(0.5 * (1.0 - np.log1p(10.0)) ** 2)


def test_predictor_learns_a_synthetic_ranking():
    space = SearchSpace.for_nfe(4, LAT, model=0)
    pop = E.random_genomes(space, jax.random.PRNGKey(5), 160)
    y = synthetic_fitness(pop) + 2.0 * pop.afs.astype(pop.u.dtype)
    tr, ho = jax.tree.map(lambda a: a[:100], pop), jax.tree.map(lambda a: a[100:], pop)
    cfg = predictor.PredictorConfig(hidden=32, mlp=(64, 64))
    res = predictor.fit(space, NS, tr, y[:100], jax.random.PRNGKey(6),
                        training=predictor.Training(epochs=150, batch=50, threshold=0.1), heldout=(ho, y[100:]),
                        config=cfg)  # fmt: skip
    assert res.losses[-1] < 0.3 * res.losses[0]
    assert res.train_tau > 0.8 and res.heldout_tau > 0.4
    s = predictor.score(space, NS, res.params, ho, cfg)
    assert res.heldout_tau == pytest.approx(scipy.stats.kendalltau(np.asarray(s), np.asarray(y[100:])).statistic)
    with pytest.raises(ValueError, match="loss must be one of"):
        predictor.Training(loss="l1")


@pytest.mark.parametrize("loss", ["hinge", "mse"])
def test_predictor_padding_changes_nothing(loss):
    """Up to `batch` schedules train full-batch, padded to a bucket of rows left out of the loss: the same losses,
    parameters and taus as the unpadded run (batch = n), up to float rounding."""
    space = SearchSpace.for_nfe(4, LAT, model=0)
    pop = E.random_genomes(space, jax.random.PRNGKey(7), 36)
    y = synthetic_fitness(pop)
    y = y.at[3].set(jnp.inf)  # a diverged schedule
    tr, ho = jax.tree.map(lambda a: a[:24], pop), jax.tree.map(lambda a: a[24:], pop)
    cfg = predictor.PredictorConfig(hidden=8, mlp=(16,))
    kw = dict(heldout=(ho, y[24:]), config=cfg)
    training = predictor.Training(epochs=15, loss=loss, batch=64)  # 24 rows -> 64
    padded = predictor.fit(space, NS, tr, y[:24], jax.random.PRNGKey(8), training=training, **kw)
    plain_training = dataclasses.replace(training, batch=24)
    plain = predictor.fit(space, NS, tr, y[:24], jax.random.PRNGKey(8), training=plain_training, **kw)
    np.testing.assert_allclose(padded.losses, plain.losses, rtol=1e-4)
    assert padded.losses[-1] < padded.losses[0]
    for a, b in zip(jax.tree.leaves(padded.params), jax.tree.leaves(plain.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    assert padded.train_tau == pytest.approx(plain.train_tau, abs=0.02)
    assert padded.heldout_tau == pytest.approx(plain.heldout_tau, abs=0.02)


def test_mse_loss_leaves_out_invalid_rows():
    s, t = jnp.asarray([0.0, 1.0, 5.0]), jnp.asarray([0.0, 0.0, jnp.nan])
    assert float(predictor.mse_loss(s, t, valid=jnp.asarray([True, True, False]))) == pytest.approx(0.5)
