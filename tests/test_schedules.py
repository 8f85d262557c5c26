"""Noise schedules (float64 round trips against closed forms) and step spacings."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from omsjax import schedules

ALL = [schedules.vp_linear(), schedules.vp_cosine(), schedules.vp_discrete(), schedules.edm()]


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
    ns = schedules.vp_linear(0.1, 20.0)
    t = np.linspace(1e-3, 1, 50)
    la = -0.25 * t**2 * 19.9 - 0.5 * t * 0.1
    np.testing.assert_allclose(ns.log_alpha(t), la, rtol=1e-15)
    np.testing.assert_allclose(ns.sigma(t), np.sqrt(1 - np.exp(2 * la)), rtol=1e-12)
    np.testing.assert_allclose(ns.alpha(t) ** 2 + ns.sigma(t) ** 2, 1.0, rtol=1e-14)


def test_vp_cosine_closed_form():
    ns = schedules.vp_cosine()
    t = np.linspace(0.05, 0.99, 50)  # where the naive formula is accurate
    s = 0.008
    la = np.log(np.cos((t + s) / (1 + s) * math.pi / 2)) - np.log(np.cos(s / (1 + s) * math.pi / 2))
    np.testing.assert_allclose(ns.log_alpha(t), la, rtol=1e-12)


def test_vp_discrete_matches_ddpm_betas():
    betas = np.linspace(1e-4, 0.02, 1000)
    ns = schedules.vp_discrete(betas)
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
    ns_cos = schedules.vp_discrete(cos_betas)
    assert ns_cos.t_max < 1.0 and ns_cos.lam(ns_cos.t_max) >= -5.1


def test_edm():
    ns = schedules.edm()
    t = np.geomspace(0.002, 80, 20)
    np.testing.assert_allclose(ns.sigma(t), t, rtol=1e-15)
    np.testing.assert_allclose(ns.alpha(t), 1.0)
    np.testing.assert_allclose(ns.lam(t), -np.log(t))


@pytest.mark.parametrize("ns", ALL, ids=lambda ns: ns.kind)
@pytest.mark.parametrize("skip", schedules.SKIP_TYPES)
def test_spacings(ns, skip):
    ts = schedules.time_steps(ns, 7, skip)
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
    ns = schedules.edm()
    n = 18
    i = np.arange(n + 1)
    ref = (80 ** (1 / 7) + i / n * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(schedules.time_steps(ns, n, "karras"), ref, rtol=1e-13)


def test_bad_arguments():
    with pytest.raises(ValueError, match="beta_min < beta_max"):
        schedules.vp_linear(1.0, 0.5)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        schedules.edm(1.0, 0.5)
    with pytest.raises(ValueError, match="every beta in"):
        schedules.vp_discrete(np.array([0.1, 1.5]))
    with pytest.raises(ValueError, match="integer number of steps"):
        schedules.time_steps(schedules.vp_linear(), 0)
    with pytest.raises(ValueError, match="t_end < t_start"):
        schedules.time_steps(schedules.vp_linear(), 4, t_end=0.5, t_start=0.2)
    with pytest.raises(ValueError, match="unknown skip"):
        schedules.time_steps(schedules.vp_linear(), 4, "uniform")


@pytest.mark.parametrize("ns", [schedules.vp_linear(0.2, 10.0), schedules.vp_cosine(), schedules.edm(0.01, 50.0)])
def test_dict_round_trip(ns):
    back = schedules.from_dict(schedules.to_dict(ns))
    assert type(back) is type(ns) and schedules.to_dict(back) == schedules.to_dict(ns)
    t = np.linspace(ns.default_t_end, ns.t_max, 7)
    np.testing.assert_array_equal(back.lam(t), ns.lam(t))


def test_dict_errors():
    with pytest.raises(ValueError, match="unknown noise schedule kind"):
        schedules.from_dict({"kind": "ve"})
    with pytest.raises(ValueError, match="needs a 'kind'"):
        schedules.from_dict({"beta_min": 0.1})
    with pytest.raises(ValueError, match="bad arguments"):
        schedules.from_dict({"kind": "vp_linear", "beta": 3})
    with pytest.raises(ValueError, match="betas"):
        schedules.to_dict(schedules.vp_discrete())
