"""Bad input, class 1 (and 6 for noise schedules): every noise-schedule constructor checks each parameter on the
host and names it: non-finite, out-of-domain, strings, bools, lists. Before, `vp_cosine(s=inf)` was accepted and
failed later as a non-finite `Schedule.ts`, and strings failed with a bare `TypeError`."""

import math
import re

import jax.numpy as jnp
import numpy as np
import pytest

from omsjax import noise

INF, NAN = math.inf, math.nan
BAD_NUMBERS = [INF, -INF, NAN, "0.1", True, [0.1], None]

# (constructor, parameter, its good default, the bad values beyond BAD_NUMBERS that its domain excludes)
PARAMETERS = [
    (noise.vp_linear, "beta_min", 0.1, [-0.1]),
    (noise.vp_linear, "beta_max", 20.0, [0.1, 0.05]),
    (noise.vp_cosine, "s", 0.008, [0.0, -1.0]),
    (noise.vp_cosine, "t_max", 0.9946, [0.0, 1.0, 1.5]),
    (noise.edm, "sigma_min", 0.002, [0.0, -1.0]),
    (noise.edm, "sigma_max", 80.0, [0.002, 0.001]),
    (noise.flow, "t_min", 1e-3, [0.0, 1.0, -0.5]),
    (noise.flow, "t_max", 0.999, [1.0, 1e-3, 1e-4]),
    (noise.vp_discrete, "clip_lambda", -5.1, []),
]


@pytest.mark.parametrize(
    ("make", "name", "bad"),
    [(make, name, bad) for make, name, _, extra in PARAMETERS for bad in BAD_NUMBERS + extra],
    ids=lambda v: v.__name__ if callable(v) else repr(v),
)
def test_each_parameter_is_checked_and_named(make, name, bad):
    with pytest.raises(ValueError, match=rf"^{make.__name__}: {name}\b.* must be .*got {re.escape(repr(bad))}$"):
        make(**{name: bad})


@pytest.mark.parametrize(("make", "name", "good", "_"), PARAMETERS, ids=lambda v: getattr(v, "__name__", v))
def test_numpy_and_jax_scalars_are_numbers(make, name, good, _):
    """0-d numpy and jax arrays and numpy scalars are numbers like any other: the schedule equals the float one."""
    want = make(**{name: good})
    for v in (np.float64(good), np.array(good), jnp.asarray(good, jnp.float64)):
        got = make(**{name: v})
        assert noise.to_dict(got) == noise.to_dict(want) if name != "clip_lambda" else got.t_max == want.t_max


def test_finite_parameters_that_break_the_log_snr_are_refused():
    """Each parameter in its domain, and still no usable schedule: a flat or non-finite log-SNR."""
    with pytest.raises(ValueError, match=r"VPCosine.*log-SNR must be finite, decrease and invert from t_min to t_max"):
        noise.vp_cosine(s=1e20)
    with pytest.raises(ValueError, match=r"VPLinear.*log-SNR must be finite, decrease and invert"):
        noise.vp_linear(beta_min=0.0, beta_max=1e-300)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"betas": ["a", "b"]}, r"vp_discrete: betas must be an array of numbers"),
        ({"betas": [0.1, NAN]}, r"every value of betas in \(0, 1\), got betas\[1\] = nan"),
        ({"betas": [0.1, 1.0]}, r"every value of betas in \(0, 1\), got betas\[1\] = 1.0"),
        ({"betas": [[0.1, 0.2]]}, r"1-D array of at least 2 betas, got shape \(1, 2\)"),
        ({"alphas_cumprod": [0.9, INF]}, r"every value of alphas_cumprod in \(0, 1\), got alphas_cumprod\[1\] = inf"),
        ({"alphas_cumprod": {"a": 1}}, r"vp_discrete: alphas_cumprod must be an array of numbers"),
        ({"betas": [0.1, 0.2], "alphas_cumprod": [0.9, 0.8]}, "betas or alphas_cumprod, not both"),
    ],
)
def test_vp_discrete_arrays_are_checked_and_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        noise.vp_discrete(**kwargs)


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"kind": "vp_cosine", "s": INF}, r"vp_cosine: s must be a finite number > 0, got inf"),
        ({"kind": "edm", "sigma_min": "0.002"}, r"edm: sigma_min must be a finite number > 0, got '0.002'"),
        ({"kind": "flow", "t_max": None}, r"flow: t_max .* must be in \(0.001, 1\), got None"),
    ],
)
def test_a_stored_description_is_checked_as_the_constructor_checks(d, match):
    with pytest.raises(ValueError, match=match):
        noise.from_dict(d)
