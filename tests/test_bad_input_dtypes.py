"""Bad input, class 5: float dtypes that do not match. A model whose output is of another float dtype than its
input (a bfloat16 or float16 network, a float64 one) used to stop `lax.switch` / `lax.scan` with "branches must
have equal output types"; its output is now cast to the sampler state's dtype (x_T's), as `Model` documents.
x_T itself must be float32 or float64: another dtype is refused up front, naming both supported ones."""

import jax.numpy as jnp
import numpy as np
import pytest

import omsjax
from omsjax import noise, presets, spacing

NS = noise.vp_linear()
SCHEDULE = presets.dpm_solver_pp(NS, 3, 2)


def _model(out_dtype, name="m"):
    # eps = 0.1 x, computed in float32 and returned as `out_dtype` (the network's own precision)
    return omsjax.Model(lambda p, x, t: (0.1 * x.astype(jnp.float32)).astype(out_dtype), None, name=name)


def _x_T(dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(0).standard_normal((4, 3)), dtype)


@pytest.mark.parametrize("out_dtype", [jnp.bfloat16, jnp.float16, jnp.float64], ids=lambda d: jnp.dtype(d).name)
def test_a_model_of_another_float_dtype_is_cast_to_the_state(out_dtype):
    want = omsjax.sample(_model(jnp.float32), NS, SCHEDULE, _x_T())
    got = omsjax.sample(_model(out_dtype), NS, SCHEDULE, _x_T())
    assert got.dtype == jnp.float32
    # the model's output rounded to its dtype, then cast: bfloat16 keeps 8 bits of mantissa
    tol = {jnp.bfloat16: 3e-2, jnp.float16: 3e-3, jnp.float64: 1e-6}[out_dtype]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=tol, atol=tol)


def test_a_zoo_of_mixed_dtypes_samples_in_one_program():
    """`lax.switch` over members of different output dtypes: every branch returns the state's dtype."""
    zoo = (_model(jnp.bfloat16, "half"), _model(jnp.float32, "single"))
    sched = SCHEDULE._replace(model=jnp.asarray([0, 1, 0], jnp.int32))
    x = omsjax.sample(zoo, NS, sched, _x_T())
    assert x.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(x)))


def test_sample_heun_casts_too():
    ts = spacing.time_steps(NS, 3)
    x = omsjax.sample_heun(_model(jnp.float16), NS, ts, _x_T())
    assert x.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(x)))


@pytest.mark.parametrize(
    "dtype", [jnp.float16, jnp.bfloat16, jnp.int32, jnp.complex64], ids=lambda d: jnp.dtype(d).name
)
def test_an_x_T_of_another_dtype_is_refused_naming_the_supported_ones(dtype):
    x_T = jnp.zeros((4, 3), dtype)
    with pytest.raises(ValueError, match=rf"^x_T must be float32 or float64 .*, got {jnp.dtype(dtype).name}$"):
        omsjax.sample(_model(jnp.float32), NS, SCHEDULE, x_T)
    with pytest.raises(ValueError, match=r"^x_T must be float32 or float64"):
        omsjax.sample_heun(_model(jnp.float32), NS, spacing.time_steps(NS, 3), x_T)


def test_a_model_of_an_integer_output_names_the_member():
    with pytest.raises(ValueError, match=r"'ints' returned \[4, 3\] int32 for x \[4, 3\] float32: expected a floating"):
        omsjax.sample(_model(jnp.int32, "ints"), NS, SCHEDULE, _x_T())
