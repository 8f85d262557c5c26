"""Conditioning and classifier-free guidance: guided presets against the float64 transcriptions of
test_presets.py driven by an independent numpy guided eps, guidance as schedule data (JSON, checks, cost,
vmap, grad), and the sampler's conditioning arguments."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_presets import NumpyGMM, alpha, ddim_np, dpm_solver_pp_np, sigma, unipc_np

import omsjax
from omsjax import noise, oracles, presets
from omsjax.schedule import Schedule
from omsjax.search import seeding
from omsjax.search.space import SearchSpace

NS = noise.vp_linear()
RNG = np.random.RandomState(11)
K, D, B = 6, 4, 6
MEANS = 1.5 * RNG.randn(K, D)
STDS = 0.2 + 0.4 * RNG.rand(K)
WEIGHTS = (RNG.rand(K) + 0.5) / np.sum(RNG.rand(K) + 0.5)
WEIGHTS = WEIGHTS / WEIGHTS.sum()
LABELS = np.array([0, 1, 2, 0, 1, 2])
CG = oracles.ConditionalGaussianMixture.create(MEANS, STDS, WEIGHTS, LABELS)
X_T = RNG.randn(B, D)
COND = jnp.asarray([0, 1, 2, 2, 1, 0], jnp.int32)
UNCOND = jnp.full((B,), CG.null_label, jnp.int32)


def _eps_fn(params, x, t, cond):
    return params.eps(NS, x, t, cond)


def _x0_fn(params, x, t, cond):
    eps = params.eps(NS, x, t, cond)
    a, s = jnp.exp(NS.log_alpha(t))[:, None], NS.sigma(t)[:, None]
    return (x - s * eps) / a


NOISE_MODEL = omsjax.Model(_eps_fn, CG, parameterization="noise", name="cgmm")
DATA_MODEL = omsjax.Model(_x0_fn, CG, parameterization="data", name="cgmm-x0")


class NumpyGuidedGMM:
    """numpy float64: eps = eps_null + w (eps_c - eps_null), each the exact mixture eps of its components."""

    def __init__(self, labels, w):
        self.labels, self.w = np.asarray(labels), w
        self.uncond = NumpyGMM(MEANS, STDS, WEIGHTS)
        self.by_class = {c: NumpyGMM(MEANS[LABELS == c], STDS[LABELS == c], WEIGHTS[LABELS == c]) for c in range(3)}

    def eps(self, x, t):
        e_u = self.uncond.eps(x, t)
        e_c = np.stack([self.by_class[int(c)].eps(x[i : i + 1], t)[0] for i, c in enumerate(self.labels)])
        return e_u + self.w * (e_c - e_u)

    def x0(self, x, t):
        return (x - sigma(t) * self.eps(x, t)) / alpha(t)


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


CASES = {
    "ddim": (lambda w: presets.ddim(NS, 5, guidance=w), lambda f: ddim_np(f, X_T, 5, "logSNR")),
    "dpm_solver_pp 2M": (lambda w: presets.dpm_solver_pp(NS, 6, 2, guidance=w),
                         lambda f: dpm_solver_pp_np(f, X_T, 6, 2, "logSNR")),
    "dpm_solver_pp 3M": (lambda w: presets.dpm_solver_pp(NS, 6, 3, guidance=w),
                         lambda f: dpm_solver_pp_np(f, X_T, 6, 3, "logSNR")),
    "unipc-2 bh2": (lambda w: presets.unipc(NS, 6, 2, guidance=w), lambda f: unipc_np(f, X_T, 6, 2, "bh2", "logSNR")),
    "unipc-3 bh1": (lambda w: presets.unipc(NS, 6, 3, variant="bh1", guidance=w),
                    lambda f: unipc_np(f, X_T, 6, 3, "bh1", "logSNR")),
}  # fmt: skip


@pytest.mark.parametrize("w", [1.0, 3.0, 7.5])
@pytest.mark.parametrize("name", list(CASES))
def test_guided_presets_match_the_transcriptions(name, w):
    make, transcribe = CASES[name]
    want = transcribe(NumpyGuidedGMM(COND, w))
    s = make(w)
    assert np.all(np.asarray(s.guidance) == w)
    got = omsjax.sample(NOISE_MODEL, NS, s, jnp.asarray(X_T), cond=COND, uncond=UNCOND)
    assert _rel(got, want) <= 1e-10, _rel(got, want)
    # Guidance acts on the model's own output: a data-prediction model of the same mixture gives the same samples.
    got_x0 = omsjax.sample(DATA_MODEL, NS, s, jnp.asarray(X_T), cond=COND, uncond=UNCOND)
    assert _rel(got_x0, want) <= 1e-9, _rel(got_x0, want)


def test_cond_alone_is_the_conditional_model_and_w1_never_calls_uncond():
    want = dpm_solver_pp_np(NumpyGuidedGMM(COND, 1.0), X_T, 6, 2, "logSNR")
    s = presets.dpm_solver_pp(NS, 6, 2)
    got = omsjax.sample(NOISE_MODEL, NS, s, jnp.asarray(X_T), cond=COND)
    assert _rel(got, want) <= 1e-10
    # An uncond label outside the classes makes the oracle return NaN: at w = 1 it is never evaluated ...
    bad = jnp.full((B,), 7, jnp.int32)
    same = omsjax.sample(NOISE_MODEL, NS, s, jnp.asarray(X_T), cond=COND, uncond=bad)
    np.testing.assert_array_equal(same, got)
    # ... and one guided step evaluates it.
    g = np.ones(6)
    g[3] = 2.0
    out = omsjax.sample(NOISE_MODEL, NS, presets.dpm_solver_pp(NS, 6, 2, guidance=g), jnp.asarray(X_T), cond=COND,
                        uncond=bad)  # fmt: skip
    assert np.all(np.isnan(out))


def test_guidance_needs_uncond_and_bad_conditioning_names_the_argument():
    s = presets.ddim(NS, 5, guidance=[1, 1, 4.0, 1, 1])
    x = jnp.asarray(X_T)
    with pytest.raises(ValueError, match=r"Schedule.guidance at step 2: scale 4.0 needs classifier-free guidance"):
        omsjax.sample(NOISE_MODEL, NS, s, x, cond=COND)
    # Under jit the schedule is traced: the output is NaN, never the unguided result.
    out = jax.jit(lambda s: omsjax.sample(NOISE_MODEL, NS, s, x, cond=COND))(s)
    assert np.all(np.isnan(out))
    with pytest.raises(ValueError, match="uncond .* needs cond"):
        omsjax.sample(NOISE_MODEL, NS, s, x, uncond=UNCOND)
    with pytest.raises(ValueError, match=r"cond must be an array with the batch \(6\) as leading axis"):
        omsjax.sample(NOISE_MODEL, NS, s, x, cond=COND[:4])
    with pytest.raises(ValueError, match=r"uncond\['y'\] is \(6,\) float32, but cond\['y'\] is \(6,\) int32"):
        omsjax.sample(NOISE_MODEL, NS, s, x, cond={"y": COND}, uncond={"y": UNCOND.astype(jnp.float32)})
    with pytest.raises(ValueError, match="uncond must have cond's structure"):
        omsjax.sample(NOISE_MODEL, NS, s, x, cond={"y": COND}, uncond=UNCOND)
    for bad in (float("nan"), "3", [1.0, 2.0]):
        with pytest.raises(ValueError, match="guidance"):
            presets.ddim(NS, 5, guidance=bad)
    # A model without a cond argument, given cond: the error names the member and the signature expected.
    plain = oracles.GaussianMixture.create(MEANS, STDS, WEIGHTS).model(NS)
    expected = (
        r"'gmm' failed when called with x .* cond \[6\] int32 \(expected apply_fn\(params, x \[B, \.\.\.\], t \[B\], "
    )
    expected += r"cond\)"
    with pytest.raises(ValueError, match=expected):
        omsjax.sample(plain, NS, presets.ddim(NS, 5), x, cond=COND)


def test_guidance_is_schedule_data_json_cost_and_checks(tmp_path):
    s = presets.unipc(NS, 4, 2, guidance=[3.0, 3.0, 1.0, 2.0])
    assert int(s.nfe()) == 7 and float(s.cost([2.0])) == 14.0
    assert int(presets.ddim(NS, 4, afs="zero_x0", guidance=5.0).nfe()) == 8  # 5 steps, the first without a call
    back = Schedule.from_json(s.to_json())
    np.testing.assert_array_equal(back.guidance, s.guidance)
    # Unguided schedules keep their JSON: no guidance field, and a file without one reads as 1 at every step.
    plain = presets.unipc(NS, 4, 2)
    assert '"guidance"' not in plain.to_json() and '"guidance"' in s.to_json()
    np.testing.assert_array_equal(Schedule.from_json(plain.to_json()).guidance, np.ones(4))
    with pytest.raises(ValueError, match=r"Schedule.guidance at step 1: non-finite value inf"):
        omsjax.check_schedule(s._replace(guidance=s.guidance.at[1].set(jnp.inf)))
    with pytest.raises(ValueError, match=r"field 'guidance', step 0: expected float"):
        Schedule.from_json(s.to_json().replace('"guidance": [\n    3.0', '"guidance": [\n    "a"'))


def test_sample_many_shares_a_field_given_once():
    """A field given unstacked is shared: the same samples, and under jit a shared guidance array keeps the w == 1
    shortcut (a `cond` in the program) where a batched one turns it into a `select` that runs both halves."""
    x = jnp.asarray(X_T)
    ws = np.array([1.0, 3.0, 1.0, 7.5, 3.0, 1.0])
    many = omsjax.stack([presets.dpm_solver_pp(NS, 6, 2, guidance=ws), presets.ddim(NS, 6, guidance=ws)])
    kw = dict(method="vmap", cond=COND, uncond=UNCOND)
    ref = omsjax.sample_many(NOISE_MODEL, NS, many, x, **kw)
    once = many._replace(guidance=jnp.asarray(ws))
    for method in ("vmap", "map"):
        out = omsjax.sample_many(NOISE_MODEL, NS, once, x, **{**kw, "method": method})
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-12, atol=1e-12)

    def program(s):
        return str(jax.make_jaxpr(lambda s: omsjax.sample_many(NOISE_MODEL, NS, s, x, **kw))(s))

    # Batched, the guidance `cond` becomes a `select` (both halves run); the program's other conds are unchanged.
    assert program(once).count(" cond[") > program(many).count(" cond[")
    with pytest.raises(ValueError, match=r"field 'guidance' has shape \(5,\): need \(2, 6\)"):
        omsjax.sample_many(NOISE_MODEL, NS, many._replace(guidance=jnp.ones(5)), x, **kw)


def test_vmap_over_guidance_grad_and_generate():
    x = jnp.asarray(X_T)
    ws = (1.0, 3.0, 7.5)
    many = omsjax.stack([presets.dpm_solver_pp(NS, 6, 2, guidance=w) for w in ws])
    out = omsjax.sample_many(NOISE_MODEL, NS, many, x, method="vmap", cond=COND, uncond=UNCOND)
    for i, w in enumerate(ws):
        want = dpm_solver_pp_np(NumpyGuidedGMM(COND, w), X_T, 6, 2, "logSNR")
        assert _rel(out[i], want) <= 1e-10
    # The samples are differentiable in the guidance scale (linear in w at every model call).
    base = presets.dpm_solver_pp(NS, 6, 2)

    def mean_x(w):
        return jnp.mean(omsjax.sample(NOISE_MODEL, NS, base._replace(guidance=jnp.full(6, w)), x, cond=COND,
                                      uncond=UNCOND))  # fmt: skip

    g = jax.grad(mean_x)(3.0)
    fd = (mean_x(3.0 + 1e-5) - mean_x(3.0 - 1e-5)) / 2e-5
    assert np.isfinite(g) and abs(g - fd) <= 1e-6 * max(1.0, abs(fd))
    # generate takes one label per sample and hands each batch its rows.
    labels = jnp.asarray(np.arange(10) % 3, jnp.int32)
    s = presets.ddim(NS, 5, guidance=3.0)
    kw = dict(key=jax.random.PRNGKey(1), cond=labels, uncond=jnp.full((10,), 3, jnp.int32), dtype=jnp.float64)
    a = omsjax.generate(NOISE_MODEL, NS, s, 10, (D,), batch_size=4, **kw)
    b = omsjax.generate(NOISE_MODEL, NS, s, 10, (D,), batch_size=10, **kw)
    np.testing.assert_allclose(a, b, rtol=1e-12)
    with pytest.raises(ValueError, match=r"cond must be an array with the batch \(10\)"):
        omsjax.generate(NOISE_MODEL, NS, s, 10, (D,), key=kw["key"], cond=labels[:3])


class NumpyThresholded(NumpyGuidedGMM):
    """The guided prediction with x0 dynamically thresholded per sample, eps recomputed from it."""

    def __init__(self, labels, w, ratio, max_val):
        super().__init__(labels, w)
        self.ratio, self.max_val = ratio, max_val

    def x0(self, x, t):
        x0 = (x - sigma(t) * super().eps(x, t)) / alpha(t)
        s = np.maximum(np.quantile(np.abs(x0), self.ratio, axis=1), self.max_val)[:, None]
        return np.clip(x0, -s, s) / s

    def eps(self, x, t):
        return (x - alpha(t) * self.x0(x, t)) / sigma(t)


def test_dynamic_thresholding_matches_its_transcription():
    x = jnp.asarray(X_T)
    f = NumpyThresholded(COND, 3.0, 0.9, 1.0)
    s = presets.dpm_solver_pp(NS, 6, 2, guidance=3.0)
    got = omsjax.sample(NOISE_MODEL, NS, s, x, cond=COND, uncond=UNCOND, thresholding=(0.9, 1.0))
    assert _rel(got, dpm_solver_pp_np(f, X_T, 6, 2, "logSNR")) <= 1e-10
    # Noise-prediction steps see the same thresholded prediction (eps recomputed from x0).
    d = presets.ddim(NS, 5, guidance=3.0)
    got = omsjax.sample(NOISE_MODEL, NS, d, x, cond=COND, uncond=UNCOND, thresholding=(0.9, 1.0))
    assert _rel(got, ddim_np(f, X_T, 5, "logSNR")) <= 1e-10
    # It changes the result here (the mixture's x0 lies outside [-1, 1]); True is DPM-Solver's (0.995, 1.0).
    plain = omsjax.sample(NOISE_MODEL, NS, s, x, cond=COND, uncond=UNCOND)
    assert _rel(got, np.asarray(plain)) > 1e-3
    default = omsjax.sample(NOISE_MODEL, NS, s, x, cond=COND, uncond=UNCOND, thresholding=True)
    assert _rel(default, dpm_solver_pp_np(NumpyThresholded(COND, 3.0, 0.995, 1.0), X_T, 6, 2, "logSNR")) <= 1e-10
    for bad in ((0.0, 1.0), (0.9, -1.0), (0.9,), "yes", (True, 1.0)):
        with pytest.raises(ValueError, match="thresholding must be None, True, or"):
            omsjax.sample(NOISE_MODEL, NS, s, x, cond=COND, uncond=UNCOND, thresholding=bad)


def _eps32_fn(params, x, t, cond):
    """The mixture's eps on the evaluator's float32 samples (computed in float64)."""
    return params.eps(NS, x.astype(jnp.float64), t.astype(jnp.float64), cond).astype(x.dtype)


EV_MODEL = omsjax.Model(_eps32_fn, CG, parameterization="noise", name="cgmm32", sample_shape=(D,))


def _mean_square(samples, x_T):
    return float(np.mean(samples**2))


def test_the_evaluator_samples_guided_candidates_and_keys_them_apart():
    from omsjax.search import encoding
    from omsjax.search import evaluate as EV

    n, rows = 8, 12
    labels, null = jnp.asarray(np.arange(rows) % 3, jnp.int32), jnp.full((rows,), CG.null_label, jnp.int32)
    space = SearchSpace.for_nfe(5, [1.0], noise_schedule=NS, guidance=3.0)
    kw = dict(num_samples=n, metric=_mean_square, metric_name="ms")
    ev = EV.Evaluator(EV_MODEL, NS, space, sampling=omsjax.SampleOptions(cond=labels, uncond=null), **kw)
    s = presets.ddim(NS, 5, guidance=3.0)
    (r,) = ev.evaluate_schedules([s])
    want = omsjax.sample(EV_MODEL, NS, s, ev.x_T, cond=labels[:n], uncond=null[:n])
    assert r.score == pytest.approx(_mean_square(np.asarray(want), None), rel=1e-6) and r.nfe == 10
    # The conditioning is part of the archive's key; the same noise without it is another evaluation.
    plain = EV.Evaluator(EV_MODEL, NS, num_samples=n, metric=_mean_square, metric_name="ms")
    assert ev.eval_key.startswith("seed0-n8-ms-c") and plain.eval_key == "seed0-n8-ms"
    other = EV.Evaluator(EV_MODEL, NS, space, sampling=omsjax.SampleOptions(cond=labels[::-1], uncond=null), **kw)
    assert other.eval_key != ev.eval_key
    # Decoded genomes carry the space's guidance.
    seeds = seeding.preset_seeds(space, NS)
    first = encoding.to_schedule(space, NS, jax.tree.map(lambda a: a[0], seeds))
    assert np.all(np.asarray(first.guidance) == 3.0)
    # Other noises take the first rows of the conditioning, up to the rows given.
    assert ev.with_noise(5, rows).cond.shape == (rows,)
    with pytest.raises(ValueError, match="at least num_samples = 16 rows"):
        ev.with_noise(5, 16)
    unguided = "candidate 0: Schedule.guidance at step 0: scale 3.0 needs classifier-free guidance"
    with pytest.raises(ValueError, match=unguided):
        EV.Evaluator(EV_MODEL, NS, sampling=omsjax.SampleOptions(cond=labels), **kw).evaluate_schedules([s])


def test_a_cond_aware_metric_gets_the_rows_sampled():
    from omsjax.search import evaluate as EV

    n, rows = 8, 12
    labels, null = jnp.asarray(np.arange(rows) % 3, jnp.int32), jnp.full((rows,), CG.null_label, jnp.int32)
    seen = []

    def third(samples, x_T, cond):  # the conditioning as a third positional argument
        seen.append(cond)
        return float(np.mean(samples**2))

    def keyword(samples, x_T, *, cond=None):  # or as the keyword cond
        seen.append(cond)
        return float(np.mean(samples**2))

    space = SearchSpace.for_nfe(5, [1.0], noise_schedule=NS, guidance=3.0)
    s = presets.ddim(NS, 5, guidance=3.0)
    for fn in (third, keyword):
        sampling = omsjax.SampleOptions(cond=labels, uncond=null)
        ev = EV.Evaluator(EV_MODEL, NS, space, sampling=sampling, num_samples=n, metric=fn, metric_name=fn.__name__)
        (r,) = ev.evaluate_schedules([s])
        assert isinstance(seen[-1], np.ndarray) and seen[-1].tolist() == (np.arange(n) % 3).tolist()
        assert r.score == pytest.approx(float(np.mean(ev.samples(s) ** 2)), rel=1e-6)
        ev.with_noise(5, rows).evaluate_schedules([s])  # other noise: its own rows of the labels
        assert seen[-1].tolist() == (np.arange(rows) % 3).tolist()


def test_guided_genomes_count_two_calls_per_step_in_every_mode():
    from omsjax.search import baselines, encoding

    for mode in ("model", "joint"):
        plain = SearchSpace(num_positions=6, latencies=[1.0, 2.5], mode=mode)
        guided = dataclasses.replace(plain, guidance=2.0)
        assert (plain.calls_per_step, guided.calls_per_step) == (1, 2)
        pop = encoding.random_genomes(plain, jax.random.PRNGKey(3), 5)
        for i in range(5):
            g = jax.tree.map(lambda a, i=i: a[i], pop)
            assert float(encoding.cost(guided, g)) == 2 * float(encoding.cost(plain, g))
            assert int(encoding.nfe(guided, g)) == 2 * int(encoding.nfe(plain, g))
            s = encoding.to_schedule(guided, NS, g)  # the decoded schedule's own cost model agrees
            assert s.cost([1.0, 2.5]) == pytest.approx(float(encoding.cost(guided, g)))
            assert s.nfe() == int(encoding.nfe(guided, g))
    assert baselines.baseline_nfe(2.0, "nfe", 10, 20, 2) == 5 and baselines.baseline_nfe(2.0, "cost", 10, 20, 2) == 2
    with pytest.raises(ValueError, match="guidance must be finite"):
        SearchSpace(num_positions=6, latencies=[1.0], mode="model", guidance=float("inf"))


@pytest.mark.slow  # a whole (quick) search: about a minute on 2 cores
def test_find_schedule_under_guidance():
    from omsjax.search import FindOptions, find_schedule

    n = 64
    labels, null = jnp.asarray(np.arange(n) % 3, jnp.int32), jnp.full((n,), CG.null_label, jnp.int32)
    ref_schedule = presets.unipc(NS, 100, 3, guidance=3.0)

    def mse_to_reference(samples, x_T):
        ref = omsjax.sample(EV_MODEL, NS, ref_schedule, jnp.asarray(x_T), cond=labels[: len(x_T)],
                            uncond=null[: len(x_T)])  # fmt: skip
        return float(np.mean((samples - np.asarray(ref)) ** 2))

    kw = dict(
        options=FindOptions(num_samples=32, heldout_samples=64, guidance=3.0),
        sampling=omsjax.SampleOptions(cond=labels, uncond=null),
    )
    res = find_schedule(EV_MODEL, NS, nfe=4, metric=mse_to_reference, key=jax.random.PRNGKey(0), quick=True, **kw)
    rep = res.report
    assert np.all(np.asarray(res.schedule.guidance) == 3.0)
    assert rep["searched"]["nfe"] == 8 and all(row["nfe"] == 8 for row in rep["baselines"].values())
    assert np.isfinite(res.score) and res.score == rep["searched"]["score"]
    assert rep["verdict"] in ("beats", "tie", "loses", "no better schedule found")
    # The built-in reference metric samples the same guided target: the distance of the guided reference to itself
    # is 0, and the result's is what mse_to_reference says up to the reference sampler's own error.
    res = find_schedule(EV_MODEL, NS, nfe=4, metric="reference-rmse", key=jax.random.PRNGKey(0), quick=True, **kw)
    assert res.report["metric"].startswith("reference_rmse[cgmm32, w 3, DPM-Solver++(3M)")


def test_find_schedule_budgets_pay_for_guided_steps():
    from omsjax.search import FindOptions, find_schedule

    model = omsjax.Model(EV_MODEL.apply_fn, EV_MODEL.params, latency=1.0, sample_shape=EV_MODEL.sample_shape)
    with pytest.raises(ValueError, match=r"budget must pay for at least one step of the cheapest model \(2.0\)"):
        find_schedule(model, NS, mode="model", budget=1.5, options=FindOptions(guidance=2.0), metric=lambda x, x_T: 0.0,
                      key=jax.random.PRNGKey(0))  # fmt: skip
