"""`search.final`: what a search returns and the verdict on it: never worse than the best preset it knows (a
candidate must beat it beyond the selection noise), the paired held-out verdict, and the noise check of
`loop.check_noise`."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import omsjax
from omsjax import noise, oracles
from omsjax.search import baselines, encoding, final, loop, seeding
from omsjax.search.archive import Record, same_schedule, schedule_key
from omsjax.search.evaluate import Evaluator
from omsjax.search.space import SearchSpace

NS = noise.vp_linear()
RNG = np.random.RandomState(0)
GMM = oracles.GaussianMixture.create(RNG.randn(3, 4), 0.2 + 0.3 * RNG.rand(3), np.full(3, 1.0 / 3))


def _eps(params, x, t):
    return params.eps(NS, x.astype(jnp.float64), t.astype(jnp.float64)).astype(x.dtype)


MODEL = omsjax.Model(_eps, GMM, name="gmm", sample_shape=(4,))
SPACE = SearchSpace.for_nfe(3, [1.0], model=0, noise_schedule=NS)
TARGET_NAME = "UniPC-2 (bh2), time_uniform"
TARGET = baselines.for_space(NS, SPACE)[TARGET_NAME]
_run = jax.jit(lambda s, x: omsjax.sample(MODEL, NS, s, x))


def distance_to_target(samples, x_T):
    """A metric that only the target preset's own samples minimise (0 there, > 0 for anything else)."""
    return float(np.mean(np.abs(samples - np.asarray(_run(TARGET, jnp.asarray(x_T))))))


def _pool(ev):
    """A search's pool: random genomes and the target preset decoded from its genome (the same schedule up to
    float rounding of its times)."""
    g = encoding.random_genomes(SPACE, jax.random.PRNGKey(1), 6)
    twin = encoding.to_schedule(SPACE, NS, seeding.encode(SPACE, NS, TARGET))
    assert same_schedule(twin, TARGET) and not same_schedule(twin, baselines.for_space(NS, SPACE)["DDIM, logSNR"])
    return ev.evaluate(g) + ev.evaluate_schedules([twin])


def test_same_schedule_ignores_float_rounding_and_unused_coefficients():
    from omsjax import usf

    rt = np.asarray(TARGET.relax_type)
    unused = TARGET._replace(relax=jnp.asarray(np.where(rt != usf.RELAX_LINEAR, 0.03, 0.0)))  # read only if linear
    assert same_schedule(unused, TARGET)
    linear = TARGET._replace(relax_type=jnp.asarray(np.full_like(rt, usf.RELAX_LINEAR)), relax=unused.relax)
    assert not same_schedule(linear, TARGET) and not same_schedule(TARGET._replace(ts=TARGET.ts * 0.999), TARGET)


def test_a_search_that_cannot_beat_a_preset_returns_the_preset():
    ev = Evaluator([MODEL], NS, SPACE, num_samples=16, metric=distance_to_target)
    cfg = final.FinalConfig(samples=16, draws=3, candidates=3)
    fin = final.finish(ev, _pool(ev), baselines.for_space(NS, SPACE), cfg)
    assert fin.verdict == final.NO_BETTER and fin.name == TARGET_NAME == fin.best_baseline
    assert fin.schedule.to_json() == TARGET.to_json() and fin.score == 0.0
    rep = fin.report(ev.metric_name)
    assert rep["returned"] == f"baseline: {TARGET_NAME}" and rep["paired_difference"] is None
    assert rep["searched"]["scores"] == [0.0, 0.0, 0.0] == rep["best_baseline"]["scores"]
    # The preset's twin decoded from a genome is not a candidate; the others lost on the selection noise.
    assert len(rep["selection"]["candidates"]) == 3 and min(rep["selection"]["candidates"]) > 0
    assert rep["selection"]["paired"]["verdict"] == "loses"
    # Every baseline of the space (+AFS), with its schedule and search-noise score.
    assert set(rep["baselines"]) == set(baselines.for_space(NS, SPACE)) and len(rep["baselines"]) > 28
    assert all(omsjax.Schedule.from_json(r["schedule"]).to_json() == baselines.for_space(NS, SPACE)[n].to_json()
               for n, r in rep["baselines"].items())  # fmt: skip


def test_a_better_candidate_is_returned_with_a_paired_held_out_verdict():
    """The metric rewards the target; the pool holds the target itself (as a candidate, since the baselines here
    leave it out): it beats the best remaining baseline on every draw."""
    ev = Evaluator([MODEL], NS, SPACE, num_samples=16, metric=distance_to_target)
    base = {n: s for n, s in baselines.for_space(NS, SPACE).items() if "time_uniform" not in n}
    cfg = final.FinalConfig(samples=16, draws=3, candidates=2, selection_seed=50, heldout_seed=70)
    also = {"mean_square": lambda x, x_T: float(np.mean(x**2))}
    fin = final.finish(ev, _pool(ev), base, cfg, also=also)
    assert fin.name is None and fin.verdict == "beats" and fin.score == pytest.approx(0.0, abs=1e-5)
    h = fin.heldout
    assert h["seeds"] == [70, 71, 72] and len(h["searched"]) == len(h["best_baseline"]) == 3
    want = np.asarray(h["searched"]) - np.asarray(h["best_baseline"])
    assert h["paired"].mean == pytest.approx(float(want.mean()), rel=1e-12) and h["paired"].verdict == "beats"
    # The held-out scores are the metric on the held-out draws' samples (and `also` on the same samples).
    for k, seed in enumerate(h["seeds"]):
        x_T = omsjax.sampler.noise(seed, 16, (4,))
        x = np.asarray(_run(fin.baseline_schedule, x_T))
        assert h["best_baseline"][k] == pytest.approx(distance_to_target(x, np.asarray(x_T)), rel=1e-6)
        assert h["also"]["mean_square"]["best_baseline"][k] == pytest.approx(float(np.mean(x**2)), rel=1e-6)
    rep = fin.report(ev.metric_name)
    assert rep["verdict"] == "beats" and rep["returned"] == "searched" and rep["metric_noise"] >= 0
    assert rep["also"]["mean_square"]["paired"]["verdict"] in ("beats", "tie", "loses")
    # Archived with their extras: a second call evaluates nothing.
    n = ev.archive.__len__()
    final.finish(ev, _pool(ev), base, cfg, also=also)
    assert len(ev.archive) == n


def test_final_config_is_checked():
    with pytest.raises(ValueError, match="draws must be >= 2"):
        final.FinalConfig(draws=1)
    with pytest.raises(ValueError, match="overlap"):
        final.FinalConfig(selection_seed=10, heldout_seed=12)
    with pytest.raises(ValueError, match="FinalConfig.samples"):
        final.FinalConfig(samples=0)
    with pytest.raises(ValueError, match="at least one baseline"):
        final.finish(Evaluator([MODEL], NS, SPACE, num_samples=4, metric=distance_to_target), [], {})


class _Noise:
    """A stand-in for the second draw's evaluator: fixed scores per schedule key."""

    num_samples = 16

    def __init__(self, scores):
        self.scores = scores

    def evaluate_schedules(self, schedules, stage=0):
        return [Record(schedule_key(s), "x", self.scores[schedule_key(s)], 1.0, 3, {}) for s in schedules]


def _records(scores):
    scheds = list(baselines.for_space(NS, SPACE).values())[: len(scores)]
    return [Record(schedule_key(s), "x", v, 1.0, 3, json.loads(s.to_json())) for s, v in
            zip(scheds, scores, strict=True)]  # fmt: skip


def test_noise_check_compares_the_gap_with_its_change_between_draws():
    recs = _records([1.0, 1.2, 1.4, 1.6, 2.0, 3.0])
    same = _Noise({recs[0].key: 1.5, recs[4].key: 2.4})  # level moves by 0.5, the gap of 1.0 by 0.1: fine
    c = loop.check_noise(_Noise({}), same, recs)
    assert c["ok"] and c["spread"] == pytest.approx(1.0) and c["noise"] == pytest.approx(0.1)
    assert c["presets"] == [recs[0].key, recs[4].key]
    flipped = _Noise({recs[0].key: 2.5, recs[4].key: 1.0})  # the fifth best beats the best on the other draw
    with pytest.warns(UserWarning, match="num_samples = 16"):
        c = loop.check_noise(_Noise({}), flipped, recs)
    assert c["ok"] is False and c["noise"] == pytest.approx(2.5)
