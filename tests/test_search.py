"""Schedule search: genome decoding, the GA, the predictor's loss and tau, evaluation with an archive, the loop."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import omsjax
from omsjax import noise, presets, spacing
from omsjax.schedule import check_schedule
from omsjax.search import candidates as CAND
from omsjax.search import encoding as E
from omsjax.search import evaluate as EV
from omsjax.search import ga, loop, predictor, seeding
from omsjax.search.archive import genome_from_dict, schedule_key
from omsjax.search.candidates import sample_candidates
from omsjax.search.space import SearchSpace

NS = noise.vp_linear()
REPO = Path(__file__).resolve().parent.parent
LAT = (1.0, 3.0, 9.0)


def _one(pop, i):
    return jax.tree.map(lambda a: a[i], pop)


SPACES = {
    "solver": SearchSpace.for_nfe(5, LAT, model=2, mean_afs=True, max_order=4),
    "model": SearchSpace(num_positions=10, latencies=LAT, mode="model"),
    "model_dpmpp": SearchSpace(num_positions=10, latencies=LAT, mode="model", base_solver="dpm_solver_pp"),
    "joint": SearchSpace(num_positions=10, latencies=LAT, mode="joint", mean_afs=True),
    "joint_karras": SearchSpace(num_positions=10, latencies=LAT, mode="joint", spacing="karras"),
    "model_quadratic": SearchSpace(num_positions=10, latencies=LAT, mode="model", spacing="time_quadratic"),
}


# ------------------------------------------------------------------------------------------------ encoding


@pytest.mark.parametrize("name", list(SPACES))
def test_every_random_genome_decodes_to_a_valid_schedule(name):
    space = SPACES[name]
    pop = E.random_genomes(space, jax.random.PRNGKey(1), 120)
    # Wild continuous genes and out-of-range categorical genes are repaired, never rejected.
    pop = pop._replace(u=pop.u * 40.0, order=pop.order + 3 * (jnp.arange(120, dtype=jnp.int32)[:, None] % 2))
    scheds, lengths = jax.vmap(lambda g: E.decode(space, NS, g))(pop)
    costs = jax.vmap(lambda g: E.cost(space, g))(pop)
    nfes = jax.vmap(lambda g: E.nfe(space, g))(pop)
    for i in range(120):
        g = _one(pop, i)
        s = E.to_schedule(space, NS, g)  # runs check_schedule
        check_schedule(s, space.num_models, NS)
        assert s.num_steps == int(lengths[i])
        np.testing.assert_array_equal(np.asarray(s.order), np.asarray(scheds.order[i][: s.num_steps]))
        assert float(s.ts[0]) == space.t_start and float(s.ts[-1]) == pytest.approx(space.t_end, rel=1e-12)
        assert float(s.cost(LAT)) == pytest.approx(float(costs[i]), rel=1e-12)
        assert int(s.nfe()) == int(nfes[i])
        if space.mode == "solver":
            assert int(s.nfe()) == space.nfe and np.all(np.asarray(s.model) == space.model)


def test_all_skip_genome_keeps_one_step_of_the_smallest_model():
    space = SPACES["model"]
    g = _one(E.random_genomes(space, jax.random.PRNGKey(0), 1), 0)
    g = g._replace(model=jnp.full_like(g.model, space.skip))
    s = E.to_schedule(space, NS, g)
    assert s.num_steps == 1 and int(s.model[0]) == 0 and float(E.cost(space, g)) == LAT[0]


@pytest.mark.parametrize("mode", ["solver", "model", "joint"])
def test_presets_encode_and_decode_back_exactly(mode):
    space = SPACES[mode]
    seeds = seeding.preset_seeds(space, NS, budget=40.0)
    assert spacing.U_BOUND > 0 and int(seeds.order.shape[0]) >= (40 if mode == "solver" else 8)
    # Spot-check against the presets themselves.
    if mode == "solver":
        want = presets.unipc(NS, 5, 3, variant="bh1", skip="karras", model=2, afs="zero_x0")
    else:
        want = presets.unipc(NS, 4, 2, model=1) if mode == "model" else presets.unipc(NS, 4, 2, model=1)
    got = E.to_schedule(space, NS, seeding.encode(space, NS, want))
    for name, a, b in zip(want._fields, want, got, strict=True):
        np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-12, atol=1e-14, err_msg=name)


def test_encode_rejects_what_does_not_fit():
    space = SPACES["solver"]
    with pytest.raises(ValueError, match="NFE 6, the space 5"):
        seeding.encode(space, NS, presets.ddim(NS, 6, model=2))
    with pytest.raises(ValueError, match="multistep only"):
        seeding.encode(space, NS, presets.dpm_solver(NS, 5, 2, model=2))
    with pytest.raises(ValueError, match="runs model 2"):
        seeding.encode(space, NS, presets.ddim(NS, 5, model=0))
    with pytest.raises(ValueError, match="mode must be one of"):
        SearchSpace(num_positions=3, latencies=LAT, mode="both")
    with pytest.raises(ValueError, match="num_positions must be nfe \\+ 1"):
        SearchSpace(num_positions=3, latencies=LAT, mode="solver", nfe=5)
    with pytest.raises(ValueError, match="budget instead"):
        SearchSpace(num_positions=3, latencies=LAT, mode="model", nfe=2)
    with pytest.raises(ValueError, match="spacing must be one of"):
        SearchSpace(num_positions=3, latencies=LAT, mode="model", spacing="cosine")


def test_log_snr_parameterisation():
    space = SPACES["solver"]
    g = _one(E.random_genomes(space, jax.random.PRNGKey(3), 1), 0)
    g = g._replace(u=jnp.zeros_like(g.u), afs=jnp.asarray(0, jnp.int32))
    s = E.to_schedule(space, NS, g)
    np.testing.assert_allclose(np.asarray(s.ts), spacing.time_steps(NS, 5, "logSNR"), rtol=1e-12)


@pytest.mark.parametrize("base", spacing.SPACINGS)
def test_base_spacing_at_every_length_and_presets_round_trip(base):
    """u = 0 is the base spacing itself at whatever length the skips leave (model mode follows it exactly), and a
    preset in another spacing still encodes and decodes back."""
    space = SearchSpace(num_positions=8, latencies=LAT, mode="model", spacing=base)
    g = _one(E.random_genomes(space, jax.random.PRNGKey(5), 1), 0)
    for n in (1, 3, 8):
        keep = jnp.arange(8, dtype=jnp.int32) < n
        s = E.to_schedule(space, NS, g._replace(model=jnp.where(keep, 1, space.skip).astype(jnp.int32)))
        np.testing.assert_allclose(np.asarray(s.ts), spacing.time_steps(NS, n, base), rtol=1e-10)
    joint = SearchSpace(num_positions=8, latencies=LAT, mode="joint", spacing=base)
    other = spacing.SPACINGS[(spacing.SPACINGS.index(base) + 1) % len(spacing.SPACINGS)]
    want = presets.dpm_solver_pp(NS, 6, 3, skip=other, model=1)
    got = E.to_schedule(joint, NS, seeding.encode(joint, NS, want))
    np.testing.assert_allclose(np.asarray(got.ts), np.asarray(want.ts), rtol=1e-10)
    seeds = seeding.preset_seeds(space, NS, budget=9.0)  # model-mode seeds are single-model presets in the base spacing
    s = E.to_schedule(space, NS, _one(seeds, int(seeds.order.shape[0]) - 1))
    np.testing.assert_allclose(np.asarray(s.ts), spacing.time_steps(NS, s.num_steps, base), rtol=1e-10)


# ------------------------------------------------------------------------------------------------------- GA


def _synthetic_fitness(pop):
    return jnp.sum((pop.u - jnp.linspace(-1.0, 1.0, pop.u.shape[-1])) ** 2, -1) + jnp.sum(
        (pop.order.astype(pop.u.dtype) - 2.0) ** 2, -1
    )


def test_ga_improves_a_synthetic_objective_in_one_compiled_scan():
    space = SearchSpace.for_nfe(4, LAT, model=0)
    cfg = ga.GAConfig(pop_size=32, num_children=32)
    state = ga.init(space, cfg, _synthetic_fitness, jax.random.PRNGKey(0))
    run = jax.jit(lambda s: ga.run(space, cfg, _synthetic_fitness, s, 150))
    final, curve = run(state)
    assert float(curve[-1]) < 0.01 * float(state.fitness[0]) and float(curve[-1]) < 0.05
    assert np.all(np.diff(np.asarray(curve)) <= 0)  # (mu + lambda) never loses its best
    assert np.all(np.asarray(final.population.order[0]) == 2)
    assert int(final.generation) == 150
    run(final)  # a second call with another state does not recompile
    assert run._cache_size() == 1


def test_ga_respects_the_budget_and_nan_is_worst():
    space = SPACES["model"]
    cfg = ga.GAConfig(pop_size=24, num_children=24)

    def fitness(pop):  # prefer expensive models early; NaN for schedules of exactly 3 steps
        m, n = jax.vmap(lambda g: E.decode_models(space, g))(pop)
        w = jnp.where(jnp.arange(10, dtype=jnp.int32) < n[:, None], jnp.asarray(LAT)[m], 0.0)
        f = -jnp.sum(w * jnp.linspace(1.0, 0.0, 10), -1)
        return jnp.where(n == 3, jnp.nan, f)

    run = jax.jit(lambda s, b: ga.run(space, cfg, fitness, s, 60, b))
    for budget in (12.0, 30.0):
        state = ga.init(space, cfg, fitness, jax.random.PRNGKey(1), budget=budget)
        final, _ = run(state, budget)
        costs = np.asarray(jax.vmap(lambda g: E.cost(space, g))(final.population))
        fit = np.asarray(final.fitness)
        assert np.all(costs[np.isfinite(fit)] <= budget + 1e-9)
        assert np.mean(costs >= 0.9 * budget - 1e-9) > 0.8  # repaired toward [0.9 budget, budget]
        n = np.asarray(jax.vmap(lambda g: E.decode_models(space, g)[1])(final.population))
        assert not np.any((n == 3) & np.isfinite(fit))
    assert run._cache_size() == 1  # the budget is traced


def test_repair_moves_cost_into_the_band():
    space = SPACES["joint"]
    cfg = ga.GAConfig(repair_iters=64)
    pop = E.random_genomes(space, jax.random.PRNGKey(2), 64)
    rep = jax.vmap(lambda g, k: ga.repair(space, cfg, g, k, 20.0))(pop, jax.random.split(jax.random.PRNGKey(3), 64))
    c = np.asarray(jax.vmap(lambda g: E.cost(space, g))(rep))
    assert np.all(c <= 20.0 + 1e-9) and np.all(c >= 18.0 - 1e-9)
    cfg_n = ga.GAConfig(budget_kind="nfe", repair_iters=64)
    rep = jax.vmap(lambda g, k: ga.repair(space, cfg_n, g, k, 6.0))(pop, jax.random.split(jax.random.PRNGKey(4), 64))
    n = np.asarray(jax.vmap(lambda g: E.nfe(space, g))(rep))
    assert np.all((n >= 5) & (n <= 6))


def test_ga_and_loop_config_errors():
    with pytest.raises(ValueError, match="p_mutate must be a probability"):
        ga.GAConfig(p_mutate=1.5)
    with pytest.raises(ValueError, match="budget_kind"):
        ga.GAConfig(budget_kind="seconds")
    with pytest.raises(ValueError, match="GAConfig.pop_size must be a positive int, got 0"):
        ga.GAConfig(pop_size=0)
    with pytest.raises(ValueError, match="LoopConfig.per_stage must be a positive int, got True"):
        loop.LoopConfig(per_stage=True)
    with pytest.raises(ValueError, match="explore_fraction must be in"):
        loop.LoopConfig(explore_fraction=1.2)


# ------------------------------------------------------------------------------------------------ predictor


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
    y = _synthetic_fitness(pop) + 2.0 * pop.afs.astype(pop.u.dtype)
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


@pytest.mark.parametrize("name", ["vp_linear", "vp_cosine", "vp_discrete", "edm", "flow"])
def test_presets_encode_on_every_noise_schedule_with_float32_times(name):
    """Every noise schedule with its default arguments, and random valid time ranges: the presets seed the search,
    also from float32 times (a float32 session's presets; flow()'s t_start 0.999 is 0.99900001 in float32, which a
    float64 tolerance once rejected: "no preset fits this search space")."""
    ns = {"vp_linear": noise.vp_linear(), "vp_cosine": noise.vp_cosine(), "edm": noise.edm(),
          "vp_discrete": noise.vp_discrete(np.linspace(1e-4, 0.02, 1000)),
          "flow": noise.flow()}[name]  # fmt: skip
    rng = np.random.RandomState(3)
    lo, hi = float(ns.default_t_end), float(ns.t_max)
    ranges = [{}] + [dict(zip(("t_end", "t_start"), np.sort(rng.uniform(lo, hi, 2)).tolist(), strict=True))
                     for _ in range(4)]  # fmt: skip
    for kw in ranges:
        space = SearchSpace.for_nfe(4, LAT, noise_schedule=ns, **kw)
        assert jax.tree.leaves(seeding.preset_seeds(space, ns))[0].shape[0] > 0, kw
        s = presets.unipc(ns, 4, 2, t_start=space.t_start, t_end=space.t_end)
        g = seeding.encode(space, ns, s._replace(ts=jnp.asarray(s.ts, jnp.float32)))
        back = E.to_schedule(space, ns, g)
        np.testing.assert_allclose(np.asarray(back.ts), np.asarray(s.ts), rtol=1e-5)  # float32 rounding


@pytest.mark.parametrize("loss", ["hinge", "mse"])
def test_predictor_padding_changes_nothing(loss):
    """Up to `batch` schedules train full-batch, padded to a bucket of rows left out of the loss: the same losses,
    parameters and taus as the unpadded run (batch = n), up to float rounding."""
    space = SearchSpace.for_nfe(4, LAT, model=0)
    pop = E.random_genomes(space, jax.random.PRNGKey(7), 36)
    y = _synthetic_fitness(pop)
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


# ------------------------------------------------------------------------------------------------ evaluation


def _affine_eps(params, x, t):
    """A cheap noise prediction for the evaluator and sampling-logic tests: eps = tanh(w x + b t); compiles in a
    fraction of a U-Net's time (the U-Net zoo members themselves are tested in test_sampler and the slow tier)."""
    w, b = params["w"].astype(x.dtype), params["b"].astype(x.dtype)  # float32 or float64, as x
    return jnp.tanh(w * x + b * t.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype))


def _tiny_zoo():
    """Two members of different weights and latencies, for images of shape (8, 8, 1)."""
    rng = np.random.default_rng(10)
    return tuple(
        omsjax.Model(
            _affine_eps,
            {"w": jnp.asarray(0.3 + 0.4 * k), "b": jnp.asarray(rng.standard_normal((8, 8, 1)))},
            latency=float(1 + 3 * k),
            name=f"affine{k}",
        )  # fmt: skip
        for k in range(2)
    )


@pytest.fixture(scope="module")
def tiny():
    return _tiny_zoo()


def test_sample_candidates_matches_sample(tiny):
    x_T = omsjax.sampler.noise(0, 6, (8, 8, 1), jnp.float64)
    scheds = [presets.ddim(NS, 3, model=1), presets.unipc(NS, 3, 2, model=1, skip="time_uniform"),
              presets.dpm_solver_pp(NS, 2, 2, model=1, afs="zero_x0")]  # fmt: skip
    mixed = [s._replace(model=jnp.asarray([0, 1, 0], jnp.int32)) for s in scheds]
    for group, method in ((scheds, "vmap"), (mixed, "map")):
        out = sample_candidates(tiny, NS, group, x_T, method=method, chunk=2)
        for s, x in zip(group, out, strict=True):
            np.testing.assert_allclose(x, np.asarray(omsjax.sample(tiny, NS, s, x_T)), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="candidate 1: Schedule.model"):
        sample_candidates(tiny, NS, [scheds[0], scheds[0]._replace(model=jnp.asarray([0, 5, 0]))], x_T)


def test_sample_candidates_one_program_per_length_whatever_the_count(tiny):
    """1, 3 and 5 candidates at chunk 4 run one compiled program (short chunks are padded), and padding changes
    no candidate's samples."""
    x_T = omsjax.sampler.noise(3, 7, (8, 8, 1), jnp.float64)  # a batch no other test uses: a fresh cache entry
    scheds = [presets.ddim(NS, 3, model=1), presets.unipc(NS, 3, 2, model=1, skip="time_uniform"),
              presets.dpm_solver_pp(NS, 3, 2, model=1), presets.ddim(NS, 3, model=1, skip="logSNR"),
              presets.dpm_solver_pp(NS, 3, 3, model=1)]  # fmt: skip
    before = CAND.sample_jit._cache_size()
    outs = [sample_candidates(tiny, NS, scheds[:n], x_T, chunk=4) for n in (1, 3, 5)]
    assert CAND.sample_jit._cache_size() == before + 1
    for out in outs:
        np.testing.assert_array_equal(out, outs[-1][: len(out)])


def test_evaluator_archive_resume_reevaluates_nothing(tiny, tmp_path):
    space = SearchSpace(num_positions=4, latencies=[m.latency for m in tiny], mode="joint")
    pop = E.random_genomes(space, jax.random.PRNGKey(7), 6)
    path = tmp_path / "archive.jsonl"
    ev = EV.Evaluator(tiny, NS, space, num_samples=12, archive=path, chunk=4, sample_shape=(8, 8, 1))
    recs = ev.evaluate(pop)
    n_unique = len({r.key for r in recs})
    assert ev.evaluated == n_unique and len(path.read_text().splitlines()) == n_unique
    for i, r in enumerate(recs):
        s = E.to_schedule(space, NS, _one(pop, i))
        assert r.key == schedule_key(s) and r.nfe == int(s.nfe())
        assert r.cost == pytest.approx(float(s.cost(space.latencies)))
        g = genome_from_dict(r.genome)
        assert schedule_key(E.to_schedule(space, NS, g)) == r.key
    # Interrupted mid-write: a partial last line is ignored; a new evaluator on the same file evaluates nothing.
    with open(path, "a") as fh:
        fh.write('{"key": "abc", "eval_')
    with pytest.warns(UserWarning, match="line 7 skipped, not a valid record"):
        ev2 = EV.Evaluator(tiny, NS, space, num_samples=12, archive=path, chunk=4, sample_shape=(8, 8, 1))
    recs2 = ev2.evaluate(pop)
    assert ev2.evaluated == 0 and [r.score for r in recs2] == [r.score for r in recs]
    # Other noise is another evaluation.
    with pytest.warns(UserWarning, match="skipped"):
        ev3 = EV.Evaluator(tiny, NS, space, num_samples=12, noise_seed=1, archive=path, chunk=4,
                           sample_shape=(8, 8, 1))  # fmt: skip
    ev3.evaluate(jax.tree.map(lambda a: a[:1], pop))
    assert ev3.evaluated == 1
    # A recorded FD equals metrics.fd of the evaluator's samples.
    s0 = recs[0].to_schedule()
    x = ev.samples(s0)
    assert recs[0].score == pytest.approx(omsjax.metrics.fd(x), rel=1e-9) or not np.all(np.isfinite(x))


@pytest.mark.slow  # a subprocess with four host devices: it compiles everything again (about 40 s on 2 cores)
def test_evaluation_splits_samples_over_devices(tmp_path):
    script = f"""
    import jax, numpy as np, jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    import sys; sys.path.insert(0, {str(REPO / "tests")!r})
    from test_search import _tiny_zoo, NS
    import omsjax
    from omsjax import presets
    from omsjax.search import candidates as CAND
    assert len(jax.devices()) == 4
    zoo = _tiny_zoo()
    x_T = omsjax.sampler.noise(0, 5, (8, 8, 1), jnp.float64)  # 5 samples: padded to 8, two per device
    scheds = [presets.ddim(NS, 3, model=1), presets.unipc(NS, 3, 2, model=1), presets.dpm_solver_pp(NS, 3, 2, model=1)]
    x8 = jnp.concatenate([x_T, x_T[:3]])
    hlo = CAND.sample_jit.lower(zoo, NS, omsjax.stack(scheds), x8, None, "vmap").compile().as_text()
    out = CAND.sample_candidates(zoo, NS, scheds, x_T, chunk=2)  # chunks of 2 and 1 (padded to 2)
    mixed = [s._replace(model=jnp.asarray([0, 1, 1], jnp.int32)) for s in scheds]
    out_m = CAND.sample_candidates(zoo, NS, mixed, x_T, method="map", chunk=3)
    assert out.shape == out_m.shape == (3, 5, 8, 8, 1)
    for s, x in zip(scheds + mixed, list(out) + list(out_m)):
        np.testing.assert_allclose(x, np.asarray(omsjax.sample(zoo, NS, s, x_T)), rtol=1e-10, atol=1e-10)
    # Conditioning is split with the samples: 6 guided samples, padded to 8.
    import test_guidance as G
    guided = [presets.ddim(G.NS, 4, guidance=3.0), presets.unipc(G.NS, 4, 2, guidance=2.0)]
    out_g = CAND.sample_candidates(G.NOISE_MODEL, G.NS, guided, G.X_T, sampling=omsjax.SampleOptions(G.COND, G.UNCOND))
    for s, x in zip(guided, out_g):
        want = omsjax.sample(G.NOISE_MODEL, G.NS, s, G.X_T, cond=G.COND, uncond=G.UNCOND)
        np.testing.assert_allclose(x, np.asarray(want), rtol=1e-10, atol=1e-10)
    assert "sharding" in hlo
    print("OK")
    """
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4",
    }
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True,
                         timeout=300, cwd=REPO)  # fmt: skip
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-4000:]


# ------------------------------------------------------------------------------------------------------ loop


@pytest.mark.slow  # the whole S3 loop on two U-Nets, run twice: about 90 s on 2 cores
def test_search_loop_end_to_end_and_resume(tiny, tmp_path):
    space = SearchSpace(num_positions=4, latencies=[m.latency for m in tiny], mode="joint")
    path = tmp_path / "a.jsonl"
    cfg = loop.LoopConfig(stages=1, initial_random=6, per_stage=4, generations=5, predictor_epochs=5, final_top=2,
                          ga=ga.GAConfig(pop_size=8, num_children=8), heldout_tau=False)  # fmt: skip

    def go():
        # The batch shapes of test_evaluator_archive_resume_reevaluates_nothing (12 samples, chunks of 4), for both
        # evaluators: the programs compiled there and here are the same (one per schedule length and method).
        ev = EV.Evaluator(tiny, NS, space, num_samples=12, archive=path, chunk=4, sample_shape=(8, 8, 1))
        fev = EV.Evaluator(tiny, NS, space, num_samples=12, noise_seed=9, archive=path, chunk=4, sample_shape=(8, 8, 1))
        return ev, fev, loop.search(ev, space, key=jax.random.PRNGKey(0), config=cfg, budget=8.0,
                                    final_evaluator=fev, progress=False)  # fmt: skip

    ev, fev, res = go()
    check_schedule(res.schedule, 2, NS)
    assert float(res.schedule.cost(space.latencies)) <= 8.0
    assert res.final[0].score == min(r.score for r in res.final) and res.final[0].eval_key == "seed9-n12"
    assert [s["stage"] for s in res.stages] == [0, 1] and ev.evaluated == len(res.records)
    assert all(r.cost <= 8.0 for r in res.records)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == ev.evaluated + fev.evaluated
    ev2, fev2, res2 = go()  # the same search again: everything comes from the archive
    assert ev2.evaluated == 0 and fev2.evaluated == 0
    assert res2.schedule.to_json() == res.schedule.to_json()
    with pytest.raises(ValueError, match="needs a finite budget"):
        loop.search(ev, space, key=jax.random.PRNGKey(0), config=cfg, progress=False)
