"""Noise schedules (float64 round trips against closed forms) and step spacings."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import omsjax
from omsjax import noise, oracles, presets, spacing

ALL = [noise.vp_linear(), noise.vp_cosine(), noise.vp_discrete(), noise.edm(), noise.flow()]


@pytest.mark.parametrize("ns", ALL, ids=lambda ns: ns.kind)
def test_lambda_round_trip(ns):
    t = np.geomspace(max(ns.t_min, 1e-5), ns.t_max, 2001)
    for tt in (t, jnp.asarray(t)):
        back = np.asarray(ns.t_of_lambda(ns.lam(tt)))
        assert np.max(np.abs(back - t) / t) < 1e-12
    lam = ns.lam(t)
    assert np.all(np.diff(lam) < 0), "lambda must decrease in t"
    # lambda = log alpha - log sigma.
    np.testing.assert_allclose(lam, ns.log_alpha(t) - ns.log_sigma(t), rtol=1e-13, atol=1e-13)


def test_vp_linear_closed_form():
    ns = noise.vp_linear(0.1, 20.0)
    t = np.linspace(1e-3, 1, 50)
    la = -0.25 * t**2 * 19.9 - 0.5 * t * 0.1
    np.testing.assert_allclose(ns.log_alpha(t), la, rtol=1e-15)
    np.testing.assert_allclose(ns.sigma(t), np.sqrt(1 - np.exp(2 * la)), rtol=1e-12)
    np.testing.assert_allclose(ns.alpha(t) ** 2 + ns.sigma(t) ** 2, 1.0, rtol=1e-14)


def test_vp_cosine_closed_form():
    ns = noise.vp_cosine()
    t = np.linspace(0.05, 0.99, 50)  # where the naive formula is accurate
    s = 0.008
    la = np.log(np.cos((t + s) / (1 + s) * math.pi / 2)) - np.log(np.cos(s / (1 + s) * math.pi / 2))
    np.testing.assert_allclose(ns.log_alpha(t), la, rtol=1e-12)


def test_vp_discrete_matches_ddpm_betas():
    betas = np.linspace(1e-4, 0.02, 1000)
    ns = noise.vp_discrete(betas)
    la = 0.5 * np.cumsum(np.log1p(-betas))
    n = np.arange(1000)
    np.testing.assert_allclose(ns.log_alpha((n + 1) / 1000), la, rtol=1e-13)
    # piecewise linear between knots
    mid = (n[:-1] + 1.5) / 1000
    np.testing.assert_allclose(ns.log_alpha(mid), 0.5 * (la[:-1] + la[1:]), rtol=1e-12)
    np.testing.assert_allclose(ns.model_time(np.array([1e-3, 1.0])), [0.0, 999.0], atol=1e-9)
    # cosine-type betas get the trailing knots clipped at lambda = -5.1, like DPM-Solver
    ts = np.arange(1001) / 1000
    ab = np.cos((ts + 0.008) / 1.008 * math.pi / 2) ** 2
    cos_betas = np.clip(1 - ab[1:] / ab[:-1], 0, 0.999)
    ns_cos = noise.vp_discrete(cos_betas)
    assert ns_cos.t_max < 1.0 and ns_cos.lam(ns_cos.t_max) >= -5.1


def test_edm():
    ns = noise.edm()
    t = np.geomspace(0.002, 80, 20)
    np.testing.assert_allclose(ns.sigma(t), t, rtol=1e-15)
    np.testing.assert_allclose(ns.alpha(t), 1.0)
    np.testing.assert_allclose(ns.lam(t), -np.log(t))


@pytest.mark.parametrize("ns", ALL, ids=lambda ns: ns.kind)
@pytest.mark.parametrize("skip", spacing.SPACINGS)
def test_spacings(ns, skip):
    ts = spacing.time_steps(ns, 7, skip)
    assert ts.shape == (8,) and ts.dtype == np.float64
    assert ts[0] == ns.t_max and ts[-1] == ns.default_t_end
    assert np.all(np.diff(ts) < 0)
    if skip == "logSNR":
        np.testing.assert_allclose(np.diff(ns.lam(ts)), np.diff(ns.lam(ts))[0], rtol=1e-9)
    elif skip == "time_uniform":
        np.testing.assert_allclose(np.diff(ts), np.diff(ts)[0], rtol=1e-9)
    elif skip == "time_quadratic":
        np.testing.assert_allclose(np.diff(np.sqrt(ts)), np.diff(np.sqrt(ts))[0], rtol=1e-9)
    else:
        sig = ns.edm_sigma(ts) ** (1 / 7)
        np.testing.assert_allclose(np.diff(sig), np.diff(sig)[0], rtol=1e-9)


def test_karras_on_edm_is_the_published_formula():
    ns = noise.edm()
    n = 18
    i = np.arange(n + 1)
    ref = (80 ** (1 / 7) + i / n * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(spacing.time_steps(ns, n, "karras"), ref, rtol=1e-13)


def test_bad_arguments():
    with pytest.raises(ValueError, match="vp_linear: beta_max must be a finite number > 1, got 0.5"):
        noise.vp_linear(1.0, 0.5)
    with pytest.raises(ValueError, match="edm: sigma_max must be a finite number > 1, got 0.5"):
        noise.edm(1.0, 0.5)
    with pytest.raises(ValueError, match=r"every value of betas in \(0, 1\)"):
        noise.vp_discrete(np.array([0.1, 1.5]))
    with pytest.raises(ValueError, match="time_steps: n must be an int >= 1, got 0"):
        spacing.time_steps(noise.vp_linear(), 0)
    with pytest.raises(ValueError, match="t_end < t_start"):
        spacing.time_steps(noise.vp_linear(), 4, t_end=0.5, t_start=0.2)
    with pytest.raises(ValueError, match="unknown skip"):
        spacing.time_steps(noise.vp_linear(), 4, "uniform")


@pytest.mark.parametrize(
    "ns",
    [noise.vp_linear(0.2, 10.0), noise.vp_cosine(), noise.edm(0.01, 50.0), noise.flow(0.01, 0.99)],
    ids=lambda ns: ns.kind,
)
def test_dict_round_trip(ns):
    back = noise.from_dict(noise.to_dict(ns))
    assert type(back) is type(ns) and noise.to_dict(back) == noise.to_dict(ns)
    t = np.linspace(ns.default_t_end, ns.t_max, 7)
    np.testing.assert_array_equal(back.lam(t), ns.lam(t))


def test_dict_errors():
    with pytest.raises(ValueError, match="unknown noise schedule kind"):
        noise.from_dict({"kind": "ve"})
    with pytest.raises(ValueError, match="needs a 'kind'"):
        noise.from_dict({"beta_min": 0.1})
    with pytest.raises(ValueError, match="bad arguments"):
        noise.from_dict({"kind": "vp_linear", "beta": 3})
    with pytest.raises(ValueError, match="betas"):
        noise.to_dict(noise.vp_discrete())


# --- rectified flow ----------------------------------------------------------------------------------------------


def test_flow_closed_form():
    ns = noise.flow()
    assert (ns.kind, ns.t_min, ns.t_max, ns.default_t_end) == ("flow", 1e-3, 0.999, 1e-3)
    t = np.concatenate([np.geomspace(1e-3, 0.5, 40), 1 - np.geomspace(0.5, 1e-3, 40)[1:]])
    for tt in (t, jnp.asarray(t)):
        np.testing.assert_allclose(ns.alpha(tt), 1 - t, rtol=1e-15)
        np.testing.assert_allclose(ns.sigma(tt), t, rtol=1e-15)
        np.testing.assert_allclose(ns.log_alpha(tt), np.log(1 - t), rtol=1e-12)  # naive log(1 - t) rounds 1 - t
        np.testing.assert_allclose(ns.log_sigma(tt), np.log(t), rtol=1e-14)
        np.testing.assert_allclose(ns.lam(tt), np.log((1 - t) / t), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(ns.edm_sigma(tt), t / (1 - t), rtol=1e-13)
        np.testing.assert_allclose(ns.prior_std(tt), 1.0)
    s = t / (1 - t)
    np.testing.assert_allclose(ns.t_of_edm_sigma(s), s / (1 + s), rtol=1e-14)
    assert isinstance(ns.lam(t), np.ndarray) and ns.lam(t).dtype == np.float64
    assert isinstance(ns.lam(jnp.asarray(t)), jax.Array)


def test_flow_t_of_lambda_is_stable_and_jits():
    ns = noise.flow()
    lam = np.array([-1000.0, -40.0, 0.0, 40.0, 1000.0])
    np.testing.assert_allclose(ns.t_of_lambda(lam[1:-1]), 1 / (1 + np.exp(lam[1:-1])), rtol=1e-15, atol=0)
    assert ns.t_of_lambda(lam)[-1] == 0.0 and ns.t_of_lambda(lam)[0] == 1.0  # no overflow to NaN
    t = np.geomspace(1e-3, 0.999, 101)
    round_trip = jax.jit(lambda ns, t: ns.t_of_lambda(ns.lam(t)))
    for tt in (jnp.asarray(t), np.asarray(t)):
        back = round_trip(ns, tt)
        assert back.dtype == jnp.float64
        np.testing.assert_allclose(back, t, rtol=1e-13)
    np.testing.assert_allclose(jax.jit(ns.lam)(t), np.log((1 - t) / t), rtol=1e-12, atol=1e-15)


def test_flow_bad_arguments():
    with pytest.raises(ValueError, match=r"flow: t_min must be in \(0, 1\), got 0.0"):
        noise.flow(0.0, 0.5)
    with pytest.raises(ValueError, match=r"flow: t_min must be in \(0, 1\), got nan"):
        noise.flow(float("nan"), 0.5)
    with pytest.raises(
        ValueError, match=r"flow: t_max \(at t = 1 alpha = 0 and lambda = -inf\) must be in \(0.001, 1\)"
    ):
        noise.flow(1e-3, 1.0)
    with pytest.raises(ValueError, match=r"flow: t_max .* must be in \(0.5, 1\), got 0.1"):
        noise.flow(0.5, 0.1)
    with pytest.raises(ValueError, match="t_max"):
        noise.from_dict({"kind": "flow", "t_min": 1e-3, "t_max": 1.0})
    with pytest.raises(ValueError, match="bad arguments for noise schedule 'flow'"):
        noise.from_dict({"kind": "flow", "sigma_max": 3.0})
    d = noise.to_dict(noise.flow(0.01, 0.9))
    assert d == {"kind": "flow", "t_min": 0.01, "t_max": 0.9}
    back = noise.from_dict(d)
    assert isinstance(back, noise.Flow) and back.default_t_end == 0.01


def test_samplers_converge_on_flow():
    """The USF sampler runs the flow schedule unchanged: DPM-Solver++(2M) and UniPC-2 converge at order >= 2 and
    DDIM at order 1 against the Dopri8 solution of the probability-flow ODE of an exact Gaussian mixture."""
    rng = np.random.RandomState(0)
    gmm = oracles.GaussianMixture.create(rng.randn(3, 3), 0.2 + 0.3 * rng.rand(3), np.full(3, 1.0 / 3))
    ns = noise.flow()
    x_T = jnp.asarray(rng.randn(4, 3))
    ref = oracles.reference_solution(
        lambda x, t: gmm.eps(ns, x, t), ns, x_T, ns.t_max, ns.default_t_end, rtol=1e-10, atol=1e-10
    )
    model = gmm.model(ns)
    makers = {"dpm_solver_pp 2M": lambda n: presets.dpm_solver_pp(ns, n, 2),
              "unipc 2": lambda n: presets.unipc(ns, n, 2), "ddim": lambda n: presets.ddim(ns, n)}  # fmt: skip
    errs = {name: [] for name in makers}
    for nfe in (10, 40):  # one compilation per length, shared by the three presets
        for name, make in makers.items():
            out = omsjax.sample(model, ns, make(nfe), x_T)
            errs[name].append(float(jnp.max(jnp.abs(out - ref))))
    ratio = {name: e[0] / e[1] for name, e in errs.items()}
    assert errs["dpm_solver_pp 2M"][1] < 2e-2 and errs["unipc 2"][1] < 1e-2, errs
    assert ratio["dpm_solver_pp 2M"] > 4**1.8 and ratio["unipc 2"] > 4**1.8, (ratio, errs)
    assert 4**0.8 < ratio["ddim"] < 4**1.3, (ratio, errs)


# --- vp_discrete from alphas_cumprod -----------------------------------------------------------------------------


def _cosine_betas():
    ts = np.arange(1001) / 1000
    ab = np.cos((ts + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.clip(1 - ab[1:] / ab[:-1], 0, 0.999)


@pytest.mark.parametrize("betas", [np.linspace(1e-4, 0.02, 1000), _cosine_betas()], ids=["linear", "cosine"])
def test_vp_discrete_alphas_cumprod_equals_betas(betas):
    from_betas = noise.vp_discrete(betas)
    from_ac = noise.vp_discrete(alphas_cumprod=np.cumprod(1 - betas))
    assert (from_ac.num_train_steps, from_ac.t_min, from_ac.t_max, from_ac.default_t_end) == (
        from_betas.num_train_steps, from_betas.t_min, from_betas.t_max, from_betas.default_t_end)  # fmt: skip
    np.testing.assert_array_equal(from_ac.t_knots, from_betas.t_knots)
    np.testing.assert_allclose(from_ac.log_alpha_knots, 0.5 * np.log(np.cumprod(1 - betas))[: from_ac.t_knots.size])
    np.testing.assert_allclose(from_ac.log_alpha_knots, from_betas.log_alpha_knots, rtol=1e-12, atol=1e-15)
    t = np.linspace(from_betas.t_min, from_betas.t_max, 301)
    np.testing.assert_allclose(from_ac.lam(t), from_betas.lam(t), rtol=1e-12, atol=1e-12)


def test_vp_discrete_alphas_cumprod_errors():
    ac = np.cumprod(1 - np.linspace(1e-4, 0.02, 10))
    with pytest.raises(ValueError, match="betas or alphas_cumprod, not both"):
        noise.vp_discrete(np.linspace(1e-4, 0.02, 10), alphas_cumprod=ac)
    with pytest.raises(ValueError, match="1-D array of at least 2 alphas_cumprod"):
        noise.vp_discrete(alphas_cumprod=ac[None])
    with pytest.raises(ValueError, match=r"every value of alphas_cumprod in \(0, 1\)"):
        noise.vp_discrete(alphas_cumprod=np.array([1.0, 0.5]))
    with pytest.raises(ValueError, match=r"alphas_cumprod\[3\] = 0.5 >= alphas_cumprod\[2\] = 0.5"):
        noise.vp_discrete(alphas_cumprod=np.array([0.9, 0.7, 0.5, 0.5, 0.1]))


# --- EDM / Karras sigmas on any noise schedule -------------------------------------------------------------------


def test_karras_sigmas():
    n, s_min, s_max, rho = 19, 0.002, 80.0, 7.0
    sig = spacing.karras_sigmas(n, s_min, s_max, rho)
    assert sig.shape == (n,) and sig.dtype == np.float64 and np.all(np.diff(sig) < 0)
    assert sig[0] == s_max and sig[-1] == s_min  # end points exact; no trailing 0
    i = np.arange(n)
    closed = (s_max ** (1 / rho) + i / (n - 1) * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    np.testing.assert_allclose(sig, closed, rtol=1e-13)
    # k-diffusion's get_sigmas_karras without its appended_zero, transcribed.
    ramp = np.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = s_min ** (1 / rho), s_max ** (1 / rho)
    kd = np.append((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho, 0.0)
    np.testing.assert_allclose(sig, kd[:-1], rtol=1e-13)
    np.testing.assert_allclose(sig[[0, -1]], kd[[0, -2]], rtol=1e-13)
    # the same levels as the karras spacing of time_steps on edm (n - 1 steps)
    np.testing.assert_allclose(spacing.time_steps(noise.edm(s_min, s_max), n - 1, "karras"), sig, rtol=1e-14)
    np.testing.assert_allclose(spacing.karras_sigmas(2, 0.1, 10.0, rho=1.0), [10.0, 0.1])


def test_karras_sigmas_bad_arguments():
    for n in (1, 2.5, True):
        with pytest.raises(ValueError, match="karras_sigmas: n must be an int >= 2"):
            spacing.karras_sigmas(n, 0.002, 80.0)
    for s_min, s_max in ((0.0, 80.0), (1.0, 0.5), (0.1, math.inf)):
        with pytest.raises(ValueError, match="0 < sigma_min < sigma_max"):
            spacing.karras_sigmas(5, s_min, s_max)
    with pytest.raises(ValueError, match="rho"):
        spacing.karras_sigmas(5, 0.002, 80.0, rho=0.0)


def _vp_linear_edm_sigma(t, b0=0.1, b1=20.0):
    log_alpha = -0.25 * t**2 * (b1 - b0) - 0.5 * t * b0
    return np.sqrt(np.exp(-2 * log_alpha) - 1)


# noise schedule -> its edm_sigma(t) = sigma_t / alpha_t written out independently
EDM_SIGMA = {
    "edm": (noise.edm(), lambda t: t),
    "vp_linear": (noise.vp_linear(), _vp_linear_edm_sigma),
    "flow": (noise.flow(), lambda t: t / (1 - t)),
    "vp_discrete": (noise.vp_discrete(), None),
}


@pytest.mark.parametrize("kind", list(EDM_SIGMA))
def test_times_from_sigmas(kind):
    ns, edm_sigma = EDM_SIGMA[kind]
    s_min, s_max = float(ns.edm_sigma(ns.default_t_end)), float(ns.edm_sigma(ns.t_max))
    sig = spacing.karras_sigmas(12, s_min, s_max)
    ts = spacing.times_from_sigmas(ns, sig)
    assert isinstance(ts, np.ndarray) and ts.shape == (12,) and ts.dtype == np.float64
    assert np.all(np.diff(ts) < 0)
    np.testing.assert_allclose(ts[[0, -1]], [ns.t_max, ns.default_t_end], rtol=1e-12)
    np.testing.assert_allclose(ns.edm_sigma(ts), sig, rtol=1e-10)
    if edm_sigma is not None:
        np.testing.assert_allclose(edm_sigma(ts), sig, rtol=1e-10)
    if kind == "edm":
        np.testing.assert_allclose(ts, sig, rtol=1e-15)  # the identity
    # a list and a jax array are accepted as well
    np.testing.assert_array_equal(spacing.times_from_sigmas(ns, list(sig)), ts)
    np.testing.assert_array_equal(spacing.times_from_sigmas(ns, jnp.asarray(sig)), ts)


def test_times_from_sigmas_errors():
    edm, vp, fl = noise.edm(), noise.vp_linear(), noise.flow()
    with pytest.raises(ValueError, match=r"sigmas\[4\] = 0.001 is outside the edm noise schedule's range"):
        spacing.times_from_sigmas(edm, spacing.karras_sigmas(5, 0.001, 80.0))
    with pytest.raises(ValueError, match=r"sigmas\[0\] = 1000.0 is outside the vp_linear noise schedule's range"):
        spacing.times_from_sigmas(vp, spacing.karras_sigmas(5, 0.1, 1000.0))
    with pytest.raises(ValueError, match=r"sigmas\[0\] = 1000.0 is outside the flow"):
        spacing.times_from_sigmas(fl, [1000.0, 1.0])
    # vp_discrete's inverse clamps outside its knots; the error still names the sigma (its sigma_min is ~0.01)
    with pytest.raises(ValueError, match=r"sigmas\[2\] = 0.002 is outside the vp_discrete"):
        spacing.times_from_sigmas(noise.vp_discrete(), [80.0, 1.0, 0.002])
    with pytest.raises(ValueError, match=r"finite positive sigmas, got sigmas\[1\] = nan"):
        spacing.times_from_sigmas(edm, [5.0, math.nan, 1.0])
    with pytest.raises(ValueError, match=r"finite positive sigmas, got sigmas\[2\] = -1.0"):
        spacing.times_from_sigmas(edm, [5.0, 1.0, -1.0])
    with pytest.raises(ValueError, match=r"strictly decreasing sigmas, got sigmas\[2\] = 3.0 >= sigmas\[1\] = 1.0"):
        spacing.times_from_sigmas(edm, [5.0, 1.0, 3.0])
    with pytest.raises(ValueError, match="1-D array of sigmas"):
        spacing.times_from_sigmas(edm, np.ones((2, 2)))
    # within the rounding tolerance of the Schedule checks: accepted
    ts = spacing.times_from_sigmas(edm, [80.0 * (1 + 1e-7), 1.0])
    assert ts[0] > edm.t_max


@pytest.mark.parametrize(
    "make,default",
    [(noise.vp_linear, "logSNR"), (noise.vp_cosine, "logSNR"), (noise.vp_discrete, "logSNR"),
     (noise.edm, "karras"), (noise.flow, "time_uniform")],
)  # fmt: skip
def test_presets_without_skip_step_at_the_noise_schedules_default_spacing(make, default):
    from omsjax import presets
    from omsjax.search import baselines
    from omsjax.search.space import SearchSpace

    ns = make()
    assert ns.default_spacing == default
    if ns.kind != "vp_discrete":  # stored with its betas, not as a dict
        assert noise.from_dict(noise.to_dict(ns)).default_spacing == default
    for name in presets.NAMED:
        assert presets.named(name, ns, 6).to_json() == presets.named(name, ns, 6, skip=default).to_json(), name
    assert SearchSpace.for_noise_schedule(ns, num_positions=5, latencies=(1.0,), nfe=4).spacing == default
    model_mode = SearchSpace.for_noise_schedule(ns, num_positions=5, latencies=(1.0,), mode="model")
    assert any(n.endswith(f"{default}, model 0, NFE 4") for n in baselines.for_space(ns, model_mode, "nfe", 4.0))
    # Closed forms of the defaults: Karras's sigmas on EDM (t = sigma), uniform t on flow.
    want = {"karras": spacing.karras_sigmas(6, 0.002, 80.0), "time_uniform": np.linspace(ns.t_max, 1e-3, 6)}
    if default in want:
        np.testing.assert_allclose(spacing.time_steps(ns, 5), want[default], rtol=1e-12)
    else:  # VP: uniform in lambda, as before
        lam = np.asarray(ns.lam(spacing.time_steps(ns, 5)))
        np.testing.assert_allclose(np.diff(lam), np.full(5, (lam[-1] - lam[0]) / 5), rtol=1e-9)
