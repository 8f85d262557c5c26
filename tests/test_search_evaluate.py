"""The search's evaluator with a user's own model and metric: any sample shape, any score, any noise schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from search_cases import one, tiny_zoo

import omsjax
from omsjax import metrics, noise, oracles, presets
from omsjax.search import encoding as E
from omsjax.search import evaluate as EV
from omsjax.search.archive import Archive, genome_from_dict, schedule_key
from omsjax.search.space import SearchSpace

NS = noise.vp_linear()
N = 16  # samples per evaluation


def _gmm_model(ns, dim=4, seed=0, sample_shape=(4,)):
    """The exact model of a float64 Gaussian mixture, on the evaluator's float32 samples."""
    rng = np.random.RandomState(seed)
    gmm = oracles.GaussianMixture.create(rng.randn(3, dim), 0.2 + 0.3 * rng.rand(3), np.full(3, 1.0 / 3))

    def apply_fn(params, x, t):
        return params.eps(ns, x.astype(jnp.float64), t.astype(jnp.float64)).astype(x.dtype)

    return omsjax.Model(apply_fn, gmm, name="gmm", sample_shape=sample_shape)


MODEL = _gmm_model(NS)  # one model (one apply_fn) for the module: its sampler programs compile once


def _mse_to(reference):
    def mse(samples, x_T):
        assert isinstance(samples, np.ndarray) and isinstance(x_T, np.ndarray) and samples.shape == x_T.shape
        return float(np.mean((samples - reference) ** 2))

    return mse


def _x_T():
    return EV.Evaluator(MODEL, NS, num_samples=N, metric=lambda x, x_T: 0.0).x_T


def test_a_custom_metric_on_a_vector_model_ranks_few_steps_worse(tmp_path):
    x_T = _x_T()
    assert x_T.shape == (N, 4)
    reference = np.asarray(omsjax.sample(MODEL, NS, presets.unipc(NS, 100, 3), x_T))
    metric = _mse_to(reference)
    ev = EV.Evaluator(MODEL, NS, num_samples=N, metric=metric, archive=tmp_path / "a.jsonl")
    assert ev.sample_shape == (4,) and ev.eval_key == f"seed0-n{N}-{metric.__qualname__}"
    coarse, fine = ev.evaluate_schedules([presets.ddim(NS, 2), presets.unipc(NS, 8, 2)])
    assert 0 < fine.score < coarse.score and coarse.score == coarse.score
    assert fine.score == pytest.approx(metric(ev.samples(presets.unipc(NS, 8, 2)), np.asarray(x_T)), rel=1e-12)
    again = Archive(tmp_path / "a.jsonl").get(fine.key, ev.eval_key)
    assert again.score == fine.score and '"fd"' in fine.to_json()  # the archive keeps the field's name
    # A metric that fails names the schedule; the schedule's samples are the same program as above.
    bad = EV.Evaluator(MODEL, NS, num_samples=N, metric=lambda x, x_T: "bad")
    with pytest.raises(ValueError, match=f"returned 'bad' on schedule {coarse.key}"):
        bad.evaluate_schedules([presets.ddim(NS, 2)])


def test_with_noise_is_the_same_evaluator_on_other_noise(tmp_path):
    metric = _mse_to(np.zeros((N, 4)))
    ev = EV.Evaluator(MODEL, NS, num_samples=N, metric=metric, metric_name="mse0", archive=tmp_path / "a.jsonl")
    other = ev.with_noise(7)
    fresh = EV.Evaluator(MODEL, NS, num_samples=N, noise_seed=7, metric=metric, metric_name="mse0")
    assert other.eval_key == fresh.eval_key == f"seed7-n{N}-mse0" and ev.eval_key == f"seed0-n{N}-mse0"
    assert np.array_equal(other.x_T, fresh.x_T) and not np.array_equal(other.x_T, ev.x_T)
    s = presets.ddim(NS, 2)
    (r,) = other.evaluate_schedules([s])
    assert r.score == fresh.evaluate_schedules([s])[0].score and (other.evaluated, ev.evaluated) == (1, 0)
    assert other.archive is ev.archive and ev.archive.get(r.key, other.eval_key) == r  # one archive, its own key
    assert ev.with_noise(7, 2 * N).x_T.shape == (2 * N, 4) and ev.x_T.shape == (N, 4)
    with pytest.raises(ValueError, match="with_noise: num_samples must be an int >= 2, got 1"):
        ev.with_noise(1, 1)
    one = ev.with_noise(7, chunk=1)
    assert (one.chunk, other.chunk, ev.chunk) == (1, 8, 8) and one.eval_key == other.eval_key
    s3 = presets.ddim(NS, 3)  # not in the archive: sampled one candidate per call, the same score as at chunk 8
    assert one.evaluate_schedules([s3])[0].score == fresh.evaluate_schedules([s3])[0].score and one.evaluated == 1
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="chunk must be an int >= 1"):
            ev.with_noise(7, chunk=bad)


def test_the_metric_must_return_a_real_number_finite_or_inf():
    x = np.zeros((N, 4))

    def ev(metric, **kw):
        return EV.Evaluator(MODEL, NS, num_samples=N, metric=metric, **kw)

    assert ev(lambda s, t: np.inf).fd_of_samples(x) == np.inf
    assert ev(lambda s, t: np.float32(2.5)).fd_of_samples(x) == 2.5 and ev(lambda s, t: 3).fd_of_samples(x) == 3.0
    for bad in (float("nan"), -np.inf, "1.0", None, True, np.ones(2), 1j):
        with pytest.raises(ValueError, match=r"metric .* returned .* on schedule k0: it must return a real number"):
            ev(lambda s, t, b=bad: b).fd_of_samples(x, "k0")

    def boom(samples, x_T):
        raise RuntimeError("out of memory")

    with pytest.raises(ValueError, match="metric .*boom raised on schedule k1: RuntimeError: out of memory"):
        ev(boom).fd_of_samples(x, "k1")
    # Diverged samples score inf without calling the metric.
    assert ev(boom).fd_of_samples(np.full((N, 4), np.nan)) == np.inf


def test_eval_keys_keep_metrics_apart():
    def a(x, x_T):
        return 0.0

    def b(x, x_T):
        return 0.0

    keys = {
        EV.Evaluator(MODEL, NS, num_samples=N, metric=a).eval_key,
        EV.Evaluator(MODEL, NS, num_samples=N, metric=b).eval_key,
        EV.Evaluator(MODEL, NS, num_samples=N, metric=a, metric_name="mse-v2").eval_key,
    }
    assert len(keys) == 3 and f"seed0-n{N}-mse-v2" in keys
    digits = MODEL.replace(sample_shape=(8, 8, 1))
    # The default digits FD, given or not, keeps the keys existing archives have.
    assert EV.Evaluator(digits, NS, num_samples=N).eval_key == f"seed0-n{N}"
    assert EV.Evaluator(digits, NS, num_samples=N, metric=metrics.digits_fd).eval_key == f"seed0-n{N}"
    with pytest.raises(ValueError, match="metric_name names a custom metric"):
        EV.Evaluator(digits, NS, num_samples=N, metric_name="x")


def test_sample_shape_errors():
    undeclared = MODEL.replace(sample_shape=None)
    with pytest.raises(ValueError, match="declare no sample_shape .*pass sample_shape="):
        EV.Evaluator(undeclared, NS, metric=lambda x, x_T: 0.0)
    assert EV.Evaluator(undeclared, NS, metric=lambda x, x_T: 0.0, sample_shape=(4,)).sample_shape == (4,)
    with pytest.raises(ValueError, match=r"sample_shape \(3,\), but zoo member 0 'gmm' declares sample_shape \(4,\)"):
        EV.Evaluator(MODEL, NS, metric=lambda x, x_T: 0.0, sample_shape=(3,))
    with pytest.raises(ValueError, match=r"sample_shape \(8, 8, 1\), but zoo member 0"):
        EV.Evaluator(MODEL, NS, sample_shape=(8, 8, 1))
    with pytest.raises(ValueError, match=r"member 0 'gmm' declares sample_shape \(4,\), but zoo member 1 'gmm'"):
        EV.Evaluator([MODEL, MODEL.replace(sample_shape=(2, 2))], NS)
    with pytest.raises(ValueError, match="sample_shape must be a tuple of positive ints"):
        EV.Evaluator(undeclared, NS, sample_shape=(4, 0))
    # The default metric scores only digits: anything else must bring its own.
    with pytest.raises(
        ValueError, match=r"the digits FD, scores samples of shape \(8, 8, 1\), not \(4,\): pass metric="
    ):
        EV.Evaluator(MODEL, NS, num_samples=N).fd_of_samples(np.zeros((N, 4)))
    with pytest.raises(ValueError, match="sampling must be an omsjax.SampleOptions"):
        EV.Evaluator(MODEL, NS, metric=lambda x, x_T: 0.0, sampling={"cond": None})


def test_undeclared_models_need_a_sample_shape_whatever_the_metric():
    for metric in (None, lambda x, x_T: 0.0):
        with pytest.raises(ValueError, match=r"declare no sample_shape .* pass sample_shape="):
            EV.Evaluator(MODEL.replace(sample_shape=None), NS, num_samples=N, metric=metric)
    ev = EV.Evaluator(MODEL.replace(sample_shape=None), NS, num_samples=N, sample_shape=(8, 8, 1))
    assert ev.x_T.shape == (N, 8, 8, 1)
    assert EV.Evaluator(MODEL, NS, num_samples=N, metric=lambda x, x_T: 0.0).x_T.shape == (N, 4)


def test_digits_fd_is_the_shipped_fd():
    """The search metric reduces on the device (float32 sums, `metrics.device`), `fd` on the host in float64:
    they agree to 1e-6 on 500 samples; on 8 (a singular covariance, regularised) to 1e-5."""
    for n, rtol in [(500, 1e-6), (8, 1e-5)]:
        x = np.random.default_rng(0).uniform(-1, 1, (n, 8, 8, 1))
        assert metrics.digits_fd(x, None) == metrics.digits_fd(x)
        np.testing.assert_allclose(metrics.digits_fd(x), metrics.fd(x), rtol=rtol)


def test_search_space_from_a_noise_schedule_and_the_evaluators_check():
    edm = noise.edm()
    space = SearchSpace.for_noise_schedule(edm, num_positions=5, latencies=(1.0,), mode="joint")
    assert (space.t_start, space.t_end) == (80.0, 0.002)
    s2 = SearchSpace.for_nfe(4, (1.0,), noise_schedule=edm)
    assert (s2.t_start, s2.t_end, s2.nfe) == (80.0, 0.002, 4)
    assert (
        SearchSpace.for_noise_schedule(edm, num_positions=5, latencies=(1.0,), mode="joint", t_end=0.01).t_end == 0.01
    )
    model = _gmm_model(edm)
    EV.Evaluator(model, edm, space, metric=lambda x, x_T: 0.0)
    default = SearchSpace.for_nfe(4, (1.0,))
    assert (default.t_start, default.t_end) == (1.0, 1e-3)
    EV.Evaluator(MODEL, NS, default, metric=lambda x, x_T: 0.0)  # VP: the defaults fit
    edm_msg = (
        r"SearchSpace: need t_min = 0.002 <= t_end < t_start <= t_max = 80 \(EDM\), got t_start = 1, t_end = 0.001"
    )
    with pytest.raises(ValueError, match=edm_msg + "; build it with SearchSpace.for_noise_schedule"):
        EV.Evaluator(model, edm, default, metric=lambda x, x_T: 0.0)
    with pytest.raises(ValueError, match=r"t_max = 0.9946 \(VPCosine\), got t_start = 1, t_end = 0.001"):
        EV.Evaluator(MODEL, noise.vp_cosine(), default, metric=lambda x, x_T: 0.0)


@pytest.fixture(scope="module")
def tiny():
    return tiny_zoo()


def test_evaluator_archive_resume_reevaluates_nothing(tiny, tmp_path):
    space = SearchSpace(num_positions=4, latencies=[m.latency for m in tiny], mode="joint")
    pop = E.random_genomes(space, jax.random.PRNGKey(7), 6)
    path = tmp_path / "archive.jsonl"
    ev = EV.Evaluator(tiny, NS, space, num_samples=12, archive=path, chunk=4, sample_shape=(8, 8, 1))
    recs = ev.evaluate(pop)
    n_unique = len({r.key for r in recs})
    assert ev.evaluated == n_unique and len(path.read_text().splitlines()) == n_unique
    for i, r in enumerate(recs):
        s = E.to_schedule(space, NS, one(pop, i))
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
    # A recorded FD equals metrics.digits_fd of the evaluator's samples (and metrics.fd's float64 FD to 1e-5: 12
    # samples, a singular covariance).
    s0 = recs[0].to_schedule()
    x = ev.samples(s0)
    assert recs[0].score == pytest.approx(omsjax.metrics.digits_fd(x), rel=1e-6) or not np.all(np.isfinite(x))
    assert recs[0].score == pytest.approx(omsjax.metrics.fd(x), rel=1e-5) or not np.all(np.isfinite(x))
