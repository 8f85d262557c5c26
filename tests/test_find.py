"""`search.find_schedule`: the search in one call for a user's model and metric (argument checks; a whole small run,
resumed from its archive, in the slow tier)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import omsjax
from omsjax import oracles, presets, schedules
from omsjax.search import find_schedule, ga, loop

NS = schedules.vp_linear()
KEY = jax.random.PRNGKey(0)


def _model(dim=4, seed=0):
    """The exact model of a Gaussian mixture, on float32 samples."""
    rng = np.random.RandomState(seed)
    gmm = oracles.GaussianMixture.create(rng.randn(3, dim), 0.2 + 0.3 * rng.rand(3), np.full(3, 1.0 / 3))

    def apply_fn(params, x, t):
        return params.eps(NS, x.astype(jnp.float64), t.astype(jnp.float64)).astype(x.dtype)

    return omsjax.Model(apply_fn, gmm, name="gmm", sample_shape=(dim,))


MODEL = _model()


def _mse_to_reference(model):
    """MSE to a 40-step UniPC-3 run from the same noise: the metric of a user who wants the ODE's endpoint."""
    run = jax.jit(lambda x: omsjax.sample(model, NS, presets.unipc(NS, 40, 3), x))

    def mse(samples, x_T):
        return float(np.mean((samples - np.asarray(run(jnp.asarray(x_T)))) ** 2))

    return mse


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(mode="free", nfe=3), "mode must be one of"),
        (dict(), "solver mode needs nfe="),
        (dict(nfe=3, budget=2.0), "solver mode needs nfe="),
        (dict(nfe=0), "solver mode needs nfe="),
        (dict(mode="model"), "exactly one of nfe="),
        (dict(mode="joint", nfe=3, budget=3.0), "exactly one of nfe="),
        (dict(mode="model", budget=0.5), "at least one step of the cheapest model"),
        (dict(mode="model", nfe=3, model=0), "model= picks solver mode's model"),
        (dict(nfe=3, metric="mse"), "metric must be callable"),
    ],
)
def test_bad_arguments_name_what_is_wrong(kw, match):
    args = dict(metric=lambda x, x_T: 0.0, key=KEY)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        find_schedule(MODEL, NS, **args)


@pytest.mark.slow  # a whole (tiny) search, and again from its archive: about a minute on 2 cores
def test_a_small_search_reports_held_out_scores_and_resumes(tmp_path):
    cfg = loop.LoopConfig(stages=1, initial_random=4, per_stage=4, generations=3, predictor_epochs=5, final_top=2,
                          heldout_tau=False, ga=ga.GAConfig(pop_size=8, num_children=8))  # fmt: skip
    metric = _mse_to_reference(MODEL)
    kw = dict(nfe=3, metric=metric, key=KEY, num_samples=8, heldout_samples=12, config=cfg, out=tmp_path)
    res = find_schedule(MODEL, NS, **kw)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep == res.report and rep["mode"] == "solver" and rep["nfe"] == 3 and rep["search_samples"] == 8
    assert rep["searched"]["score"] == res.score and int(res.schedule.nfe()) == 3
    # Three noises: the search's, the finalists' (selection) and the held-out one that the score is reported on.
    assert len({rep["search_noise_seed"], rep["selection_noise_seed"], rep["heldout_noise_seed"]}) == 3
    best = rep["best_baseline"]
    assert best["score"] == min(r["score"] for r in rep["baselines"].values())
    assert rep["beats_best_baseline"] == (res.score < best["score"])
    # The score is the metric on the held-out noise, and the saved schedule is the result.
    saved = omsjax.Schedule.load(tmp_path / "schedule.json")
    assert saved.to_json() == res.schedule.to_json()
    x_T = omsjax.sampler.noise(rep["heldout_noise_seed"], 12, (4,))
    samples = np.asarray(omsjax.sample(MODEL, NS, res.schedule, x_T))
    assert res.score == pytest.approx(metric(samples, np.asarray(x_T)), rel=1e-6)
    # A rerun finds everything in the archive.
    lines = (tmp_path / "archive.jsonl").read_text().count("\n")
    again = find_schedule(MODEL, NS, **kw)
    assert again.score == res.score and (tmp_path / "archive.jsonl").read_text().count("\n") == lines
