"""The per-step guidance gene (`SearchSpace.guidance_choices`): decoding, the cost model against the decoded
schedule's own, encoding round trips, the GA and predictor with and without the gene, and archives."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import omsjax
from omsjax import noise, presets
from omsjax.search import encoding, ga, predictor, seeding
from omsjax.search.archive import genome_from_dict, genome_to_dict
from omsjax.search.space import SearchSpace, default_guidance_choices

NS = noise.vp_linear()
LAT = [1.0, 2.5]
CHOICES = (1.0, 2.0, 4.0, 6.0)


def _one(pop, i):
    return jax.tree.map(lambda a: a[i], pop)


def test_default_choices_and_space_checks():
    assert default_guidance_choices(4.0) == CHOICES
    assert default_guidance_choices(2.0) == (1.0, 2.0, 3.0)  # w/2 = 1 is not repeated
    with pytest.raises(ValueError, match="guidance w != 1, got 1"):
        default_guidance_choices(1.0)
    base = dict(num_positions=5, latencies=LAT, mode="joint", guidance=4.0)
    with pytest.raises(ValueError, match=r"must include the space's guidance 3"):
        SearchSpace(**{**base, "guidance": 3.0}, guidance_choices=CHOICES)
    with pytest.raises(ValueError, match="at least two distinct finite scales"):
        SearchSpace(**base, guidance_choices=(4.0, 4.0))
    with pytest.raises(ValueError, match="guidance_choices must be real numbers"):
        SearchSpace(**base, guidance_choices=(1.0, "4"))
    space = SearchSpace(**base, guidance_choices=[1, 4])
    assert space.guidance_choices == (1.0, 4.0) and space.searches_guidance and space.calls_per_step == 2
    assert not SearchSpace(**base).searches_guidance


@pytest.mark.parametrize("mode", ["solver", "model", "joint"])
def test_decoded_guidance_and_the_cost_model_agree_with_the_schedule(mode):
    kw = dict(num_positions=7, nfe=6) if mode == "solver" else dict(num_positions=7)
    space = SearchSpace(latencies=LAT, mode=mode, guidance=4.0, guidance_choices=CHOICES, **kw)
    pop = encoding.random_genomes(space, jax.random.PRNGKey(5), 12)
    assert pop.guidance.shape == (12, 7)
    steps_at_1 = 0
    for i in range(12):
        g = _one(pop, i)
        s = encoding.to_schedule(space, NS, g)
        w = np.asarray(s.guidance)
        assert set(w.tolist()) <= set(CHOICES)
        # The genes of the active positions, in order, are the scales (the decoder compacts skipped positions).
        active = np.asarray(encoding.active_mask(space, g))
        np.testing.assert_array_equal(w, np.asarray(CHOICES)[np.asarray(g.guidance)[active]])
        # Schedule.nfe / cost count one call at a step at scale 1 and two elsewhere: an independent path.
        assert int(encoding.nfe(space, g)) == s.nfe()
        assert float(encoding.cost(space, g)) == pytest.approx(s.cost(LAT))
        calls = np.asarray(encoding.step_calls(space, g))[: s.num_steps]
        want = np.where(w == 1, 1, 2) * np.where((np.arange(s.num_steps) == 0) & (int(s.afs) != 0), 0, 1)
        np.testing.assert_array_equal(calls, want)
        steps_at_1 += int(np.sum(w == 1))
    assert steps_at_1 > 0  # the draw did reach the unguided choice


def test_encode_round_trip_and_errors():
    space = SearchSpace.for_nfe(5, LAT, noise_schedule=NS, guidance=4.0, guidance_choices=CHOICES)
    w = np.array([6.0, 4.0, 1.0, 2.0, 1.0])
    s = presets.with_guidance(presets.dpm_solver_pp(NS, 5, 2), w)
    g = seeding.encode(space, NS, s)
    np.testing.assert_array_equal(np.asarray(g.guidance)[:5], [3, 2, 0, 1, 0])
    np.testing.assert_array_equal(encoding.to_schedule(space, NS, g).guidance, w)
    with pytest.raises(ValueError, match=r"guidance at step 3 is 3; the space guides every step at the choices"):
        seeding.encode(space, NS, presets.with_guidance(s, [6.0, 4.0, 1.0, 3.0, 1.0]))
    fixed = dataclasses.replace(space, guidance_choices=())
    assert seeding.encode(fixed, NS, presets.with_guidance(s, 4.0)).guidance is None
    with pytest.raises(ValueError, match=r"guidance at step 0 is 6; the space guides every step at 4"):
        seeding.encode(fixed, NS, s)
    # The seeds are the presets guided at the space's scale, whichever choices the gene has.
    seeds = seeding.preset_seeds(space, NS)
    assert np.all(np.asarray(seeds.guidance)[:, :5] == CHOICES.index(4.0))


@pytest.mark.slow  # the opt-in guidance gene in a GA run (about 12 s of compiling)
def test_ga_mutates_the_gene_and_an_unguided_search_is_unchanged():
    space = SearchSpace(num_positions=6, latencies=LAT, mode="joint", guidance=4.0, guidance_choices=CHOICES)
    cfg = ga.GAConfig(pop_size=16, num_children=16)
    solver = SearchSpace.for_nfe(6, LAT, guidance=4.0, guidance_choices=CHOICES)

    def guided_steps(pop):  # fewest guided steps wins: the GA must drive the gene to the scale-1 choice
        return jax.vmap(lambda g: jnp.sum(encoding.step_calls(solver, g) == 2).astype(float))(pop)

    fit = jax.jit(guided_steps)
    start = ga.init(solver, cfg, fit, jax.random.PRNGKey(0))
    state, _ = jax.jit(lambda s: ga.run(solver, cfg, fit, s, 20))(start)
    assert float(state.fitness[0]) == 0.0 < float(start.fitness[0])
    # Without the gene: no guidance leaf, so mutation, crossover and draws are those of an unguided space.
    plain = dataclasses.replace(space, guidance_choices=())
    a = encoding.random_genomes(plain, jax.random.PRNGKey(2), 4)
    b = encoding.random_genomes(space, jax.random.PRNGKey(2), 4)
    assert a.guidance is None and "guidance" not in encoding.gene_cardinalities(plain)
    for name in encoding.Genome._fields[:-1]:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    m_a = ga.mutate(plain, cfg, _one(a, 0), jax.random.PRNGKey(3))
    m_b = ga.mutate(space, cfg, _one(b, 0), jax.random.PRNGKey(3))
    for name in ("u", "relax"):  # continuous genes draw from the same keys
        np.testing.assert_array_equal(getattr(m_a, name), getattr(m_b, name))


@pytest.mark.slow  # the opt-in guidance gene's predictor, two variants (about 13 s of compiling)
def test_predictor_and_archive_carry_the_gene_only_where_searched():
    space = SearchSpace(num_positions=5, latencies=LAT, mode="model", guidance=4.0, guidance_choices=CHOICES)
    plain = dataclasses.replace(space, guidance_choices=())
    key = jax.random.PRNGKey(0)
    small = predictor.PredictorConfig(model_dim=4, order_dim=4, small_dim=4, time_dim=4, step_dim=8, hidden=8, mlp=(8,))
    p_gene, p_plain = predictor.init_params(space, NS, key, small), predictor.init_params(plain, NS, key, small)
    assert "guidance" in p_gene["params"] and "guidance" not in p_plain["params"]
    pop = encoding.random_genomes(space, key, 6)
    other = pop._replace(guidance=(pop.guidance + 1) % len(CHOICES))
    score = lambda p: predictor.score(space, NS, p_gene, p, small)  # noqa: E731
    assert not np.allclose(score(pop), score(other))
    g = _one(pop, 0)
    d = genome_to_dict(g)
    back = genome_from_dict(d)
    np.testing.assert_array_equal(back.guidance, g.guidance)
    d_plain = genome_to_dict(_one(encoding.random_genomes(plain, key, 1), 0))
    assert "guidance" not in d_plain and genome_from_dict(d_plain).guidance is None


def _eps32(params, x, t, cond):
    """The conditional mixture's eps on the evaluator's float32 samples (computed in float64)."""
    return params.eps(NS, x.astype(jnp.float64), t.astype(jnp.float64), cond).astype(x.dtype)


def test_tradeoff_places_a_schedule_among_presets_with_no_more_calls(monkeypatch):
    """`search.guided.tradeoff`: every preset at the scales with no more model calls than the schedule (a guided
    step two), scored on the held-out draws' `also` metrics, and the dominance rule on their means."""
    from omsjax import oracles
    from omsjax.search import guided
    from omsjax.search.evaluate import Evaluator

    rng = np.random.RandomState(0)
    cg = oracles.ConditionalGaussianMixture.create(rng.randn(3, 2), np.full(3, 0.3), np.full(3, 1 / 3), [0, 1, 2])
    model = omsjax.Model(_eps32, cg, name="cgmm", sample_shape=(2,))
    n = 8
    cond, uncond = jnp.asarray(np.arange(n) % 3, jnp.int32), jnp.full((n,), cg.null_label, jnp.int32)
    ev = Evaluator([model], NS, None, num_samples=n, metric=lambda x, x_T: 0.0, metric_name="zero",
                   sampling=omsjax.SampleOptions(cond=cond, uncond=uncond))  # fmt: skip
    also = {"fd": lambda x, x_T: float(np.mean(np.abs(x))), "error_pct": lambda x, x_T: float(np.mean(x[:, 0] > 0))}
    held = [ev.with_noise(s, n, chunk=1, also=also) for s in (1, 2)]
    monkeypatch.setattr(guided, "SCALES", (1.0,))  # the presets at w = 1 and at the schedule's W = 2
    sched = presets.with_guidance(presets.unipc(NS, 3, 2), 2.0)  # 3 guided steps: 6 calls
    t = guided.tradeoff(held, sched, NS, model=0, guidance=2.0)
    assert t["calls"] == 6 and t["draws"] == 2
    assert {p["guidance"] for p in t["presets"].values()} == {1.0, 2.0}
    assert all(p["nfe"] <= 6 for p in t["presets"].values())
    assert max(p["nfe"] for p in t["presets"].values() if p["guidance"] == 1.0) == 6  # 6 unguided steps
    assert len(t["presets"]) == 2 * 3 * 2 * 2  # scales x solvers x spacings x (AFS or not)
    want = [k for k, p in t["presets"].items() if guided.dominates(p, t["searched"], "fd", "error_pct")]
    assert t["dominated_by"] == want
    assert guided.dominates({"fd": 1, "error_pct": 2}, {"fd": 1, "error_pct": 3}, "fd", "error_pct")
    assert not guided.dominates({"fd": 1, "error_pct": 2}, {"fd": 1, "error_pct": 2}, "fd", "error_pct")
