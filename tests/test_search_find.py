"""`search.find_schedule`: the search in one call for a user's model and metric (argument checks; a whole small run,
resumed from its archive, in the slow tier)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import omsjax
from omsjax import noise, oracles, presets, spacing
from omsjax.search import FindOptions, baselines, find_schedule, ga, loop
from omsjax.search.space import SearchSpace

NS = noise.vp_linear()
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
        (dict(), "solver mode needs exactly one of nfe="),
        (dict(nfe=3, budget=2.0), "solver mode needs exactly one of nfe="),
        (dict(nfe=0), "nfe must be an int >= 1"),
        (dict(budget=0.5), r"budget must pay for at least one step of model 0 \(1.0\)"),
        (dict(nfe=3, key=-1), r"seed must be an int in 0\.\.2147483647, got -1"),
        (dict(nfe=3, options=FindOptions(model=3)), "model 3 is not in the zoo of 1 models"),
        (dict(mode="model"), "exactly one of nfe="),
        (dict(mode="joint", nfe=3, budget=3.0), "exactly one of nfe="),
        (dict(mode="model", budget=0.5), "at least one step of the cheapest model"),
        (dict(mode="model", nfe=3, options=FindOptions(model=0)), "options.model picks solver mode's model"),
        (dict(nfe=3, metric="mse"), "metric must be callable .* or one of"),
        (
            dict(nfe=3, options=FindOptions(t_start=0.5, t_end=0.5)),
            r"need t_min = 1e-05 <= t_end < t_start <= t_max = 1 \(VPLinear\)",
        ),
        (dict(nfe=3, options=FindOptions(t_start=1.5)), "got t_start = 1.5"),
        (dict(nfe=3, options=FindOptions(t_end=1e-6)), "got t_start = 1, t_end = 1e-06"),
        (dict(nfe=3, options={"t_start": 1.0}), "options must be a FindOptions"),
    ],
)
def test_bad_arguments_name_what_is_wrong(kw, match):
    """Each bad argument is a one-line error naming it, before any work."""
    args = dict(metric=lambda x, x_T: 0.0, key=KEY)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        find_schedule(MODEL, NS, **args)


@pytest.mark.parametrize("kw", [dict(t_start="1"), dict(t_end=float("nan")), dict(t_start=True)])
def test_find_options_refuse_times_that_are_not_finite_numbers(kw):
    (name,) = kw
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        FindOptions(**kw)


@pytest.mark.slow  # a whole (tiny) search, and again from its archive: about a minute on 2 cores
def test_a_small_search_reports_a_paired_verdict_and_resumes(tmp_path):
    cfg = loop.LoopConfig(stages=1, initial_random=4, per_stage=4, generations=3, predictor_epochs=5, final_top=2,
                          heldout_tau=False, ga=ga.GAConfig(pop_size=8, num_children=8))  # fmt: skip
    metric = _mse_to_reference(MODEL)
    options = FindOptions(num_samples=8, heldout_samples=12, config=cfg)
    kw = dict(nfe=3, metric=metric, key=KEY, options=options, out=tmp_path)
    res = find_schedule(MODEL, NS, **kw)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep == res.report and rep["mode"] == "solver" and rep["nfe"] == 3 and rep["search_samples"] == 8
    assert rep["searched"]["score"] == res.score and int(res.schedule.nfe()) == 3
    assert rep["metric"] == "_mse_to_reference.<locals>.mse" and "best_fd" not in json.dumps(rep)
    # Every baseline of the space, +AFS variants included, with its schedule.
    space = SearchSpace.for_nfe(3, [1.0], model=0, noise_schedule=NS)
    assert set(rep["baselines"]) == set(baselines.for_space(NS, space)) and any("+AFS" in n for n in rep["baselines"])
    # Search, selection and held-out noise differ; 3 draws each of the last two.
    seeds = [rep["search_noise_seed"], *rep["selection_noise_seeds"], *rep["heldout_noise_seeds"]]
    assert len(set(seeds)) == 7
    # The score is the mean of the metric over the held-out draws, and the saved schedule is the result.
    saved = omsjax.Schedule.load(tmp_path / "schedule.json")
    assert saved.to_json() == res.schedule.to_json()
    scores = []
    for seed in rep["heldout_noise_seeds"]:
        x_T = omsjax.sampler.noise(seed, 12, (4,))
        scores.append(metric(np.asarray(omsjax.sample(MODEL, NS, res.schedule, x_T)), np.asarray(x_T)))
    assert rep["searched"]["scores"] == pytest.approx(scores, rel=1e-6) and res.score == pytest.approx(np.mean(scores))
    if rep["returned"] == "searched":  # a paired difference over the held-out draws, with its verdict
        d = np.asarray(rep["searched"]["scores"]) - np.asarray(rep["best_baseline"]["scores"])
        assert rep["paired_difference"]["mean"] == pytest.approx(float(d.mean()), rel=1e-9)
    else:  # the best baseline itself
        assert rep["verdict"] == "no better schedule found"
        assert res.schedule.to_json() == omsjax.Schedule.from_json(rep["best_baseline"]["schedule"]).to_json()
    # A rerun finds everything in the archive.
    lines = (tmp_path / "archive.jsonl").read_text().count("\n")
    again = find_schedule(MODEL, NS, **kw)
    assert again.score == res.score and (tmp_path / "archive.jsonl").read_text().count("\n") == lines


@pytest.mark.slow  # a whole (tiny) search: about a minute on 2 cores
def test_a_search_that_cannot_beat_a_preset_returns_it():
    """A metric that only one preset's own samples minimise: no candidate can beat it, and the search says so."""
    target = presets.named("UniPC-2 (bh2)", NS, 3, skip="time_uniform")
    run = jax.jit(lambda x: omsjax.sample(MODEL, NS, target, x))

    def distance(samples, x_T):
        return float(np.mean(np.abs(samples - np.asarray(run(jnp.asarray(x_T))))))

    cfg = loop.LoopConfig(stages=1, initial_random=4, per_stage=4, generations=3, predictor_epochs=5, final_top=2,
                          heldout_tau=False, ga=ga.GAConfig(pop_size=8, num_children=8))  # fmt: skip
    options = FindOptions(num_samples=8, heldout_samples=8, config=cfg)
    res = find_schedule(MODEL, NS, nfe=3, metric=distance, key=KEY, options=options)
    # The preset comes back; its own distance is zero up to float32 rounding of the two jitted programs.
    assert res.report["verdict"] == "no better schedule found" and res.score == pytest.approx(0.0, abs=1e-5)
    assert res.report["returned"] == "baseline: UniPC-2 (bh2), time_uniform"
    assert res.schedule.to_json() == target.to_json()
    assert res.baseline().to_json() == target.to_json()  # rebuilt from the report's JSON
    other = res.baseline("DDIM, logSNR")
    assert other.to_json() == presets.named("DDIM", NS, 3, skip="logSNR").to_json()
    with pytest.raises(ValueError, match="no baseline 'DDIM' in this report"):
        res.baseline("DDIM")


def _gmm_eps(params, x, t):
    """The exact noise prediction of the mixture `params[0]` on the noise schedule `params[1]` (one function for
    every schedule: their searches share compiled programs where the schedule's class allows)."""
    gmm, ns = params
    return gmm.eps(ns, x.astype(jnp.float64), t.astype(jnp.float64)).astype(x.dtype)


def _range(rng, ns):
    """A random valid [t_end, t_start] of `ns`: two distinct times log-uniform in [t_min, t_max]."""
    lo, hi = np.log(float(ns.t_min)), np.log(float(ns.t_max))
    a, b = np.sort(np.exp(rng.uniform(lo, hi, 2)))
    return float(max(b, np.nextafter(a, np.inf) * (1 + 1e-3))), float(a)


@pytest.mark.slow(seconds=60)  # 5 quick searches: the first compiles the search (~45 s), then ~4 s a range
# On some ranges the presets' sliced-Wasserstein scores lie within the noise of 1,024 samples: the search says so
# (its warning is filtered in pyproject.toml).
@pytest.mark.parametrize("make", [noise.vp_linear, noise.vp_cosine, noise.vp_discrete, noise.edm,
                                  noise.flow], ids=lambda f: f.__name__)  # fmt: skip
def test_quick_search_runs_on_a_noise_schedule_at_its_defaults_and_on_random_time_ranges(make):
    """Issue 27's done-when, with its four siblings: `find_schedule(quick=True)` returns a schedule
    `check_schedule` accepts on each of the five noise schedule constructors with their defaults and on 20 random
    valid time ranges (4 per schedule), every candidate and baseline running from the requested t_start to t_end."""
    from omsjax import metrics
    from omsjax.schedule import check_schedule

    rng = np.random.default_rng(0)
    gmm = oracles.GaussianMixture.create(2.0 * rng.standard_normal((4, 2)), np.full(4, 0.3), np.full(4, 0.25))
    metric = metrics.SlicedWasserstein(np.asarray(gmm.sample(jax.random.PRNGKey(1), 1000)), num_projections=32)
    ns = make()
    model = omsjax.Model(_gmm_eps, (gmm, ns), sample_shape=(2,))
    ranges = [(None, None)] + [_range(np.random.default_rng(len(ns.kind) + i), ns) for i in range(4)]
    for i, (t_start, t_end) in enumerate(ranges):
        res = find_schedule(model, ns, nfe=2, metric=metric, key=jax.random.PRNGKey(i), quick=True,
                            options=FindOptions(t_start=t_start, t_end=t_end))  # fmt: skip
        where = f"{ns.kind} [{t_end}, {t_start}]"
        check_schedule(res.schedule, 1, ns)
        want = (ns.t_max if t_start is None else t_start, ns.default_t_end if t_end is None else t_end)
        got = (res.schedule.ts[0], res.schedule.ts[-1])
        assert np.allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=1e-6), where
        assert res.report["verdict"] in ("beats", "tie", "no better schedule found"), where
        assert np.isfinite(res.score), where
        # The baselines span every spacing, with and without an analytical first step, at the requested range.
        names = res.report["baselines"]
        assert {n.split(", ")[-1] for n in names} == set(spacing.SPACINGS) and any("+AFS" in n for n in names)
        assert np.isclose(float(res.baseline().ts[-1]), want[1], rtol=1e-6), where
