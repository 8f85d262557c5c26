"""Tests for omsjax.nets (tiny configs on 8x8x1 images; pass with and without jax_enable_x64)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omsjax.nets import UNet, UNetConfig, init_unet, param_count, unet_apply_fn

SHAPE = (8, 8, 1)
TINY = UNetConfig(channels=8, channel_mults=(1, 2))
ONE_LEVEL = UNetConfig(channels=8, channel_mults=(1,))  # cheapest to compile and to run op by op


def _inputs(batch=3, shape=SHAPE, dtype=jnp.float32, seed=1):
    # numpy randomness: every new shape of a jax.random call costs about a second of compilation on CPU.
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, *shape)), dtype)
    t = jnp.asarray(rng.uniform(0.05, 0.95, (batch,)), dtype)
    return x, t


def _randomise_last_layer(params, seed=2):
    """Re-initialise the zero-initialised output conv with random values."""
    rng = np.random.default_rng(seed)
    new_conv = {n: jnp.asarray(0.1 * rng.standard_normal(p.shape), p.dtype) for n, p in params["conv_out"].items()}
    return {**params, "conv_out": new_conv}


def _abstract_params(cfg, shape=SHAPE, dtype=jnp.float32):
    """Parameter shapes and dtypes of UNet(cfg), without running (or compiling) anything."""
    x = jnp.zeros((1, *shape), dtype)
    t = jnp.zeros((1,), dtype)
    return jax.eval_shape(UNet(cfg).init, jax.random.key(0), x, t)["params"]


def _random_params(cfg, shape=SHAPE, seed=3):
    """Random float32 parameters of UNet(cfg) (all leaves, output conv included) drawn with numpy."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda p: jnp.asarray(0.2 * rng.standard_normal(p.shape), p.dtype), _abstract_params(cfg, shape)
    )


@functools.cache
def _jit_apply(cfg):
    return jax.jit(unet_apply_fn(cfg))


@pytest.fixture(scope="module")
def tiny_params():
    return init_unet(TINY, jax.random.key(0), SHAPE)


def test_shape_and_zero_init(tiny_params):
    x, t = _inputs()
    apply_fn = _jit_apply(TINY)
    out = apply_fn(tiny_params, x, t)
    assert out.shape == x.shape
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), 0.0)

    out = apply_fn(_randomise_last_layer(tiny_params), x, t)
    assert out.shape == x.shape
    assert np.all(np.isfinite(np.asarray(out)))
    assert float(jnp.max(jnp.abs(out))) > 1e-3


def test_out_channels_and_colour_input():
    cfg = UNetConfig(channels=8, channel_mults=(1, 2), out_channels=2)
    x, t = _inputs(batch=2, shape=(8, 8, 3))
    out = jax.eval_shape(unet_apply_fn(cfg), _abstract_params(cfg, (8, 8, 3)), x, t)
    assert out.shape == (2, 8, 8, 2)


def test_params_are_float32_by_default(tiny_params):
    assert {p.dtype for p in jax.tree_util.tree_leaves(tiny_params)} == {jnp.dtype(jnp.float32)}


def test_time_embedding_matters(tiny_params):
    params = _randomise_last_layer(tiny_params)
    x, _ = _inputs()
    apply_fn = _jit_apply(TINY)
    out_early = apply_fn(params, x, jnp.full((3,), 0.1, jnp.float32))
    out_late = apply_fn(params, x, jnp.full((3,), 0.9, jnp.float32))
    assert float(jnp.max(jnp.abs(out_early - out_late))) > 1e-4


def test_scalar_time_is_broadcast(tiny_params):
    params = _randomise_last_layer(tiny_params)
    x, _ = _inputs()
    apply_fn = _jit_apply(TINY)
    out_scalar = apply_fn(params, x, jnp.asarray(0.1, jnp.float32))
    out_vector = apply_fn(params, x, jnp.full((3,), 0.1, jnp.float32))
    np.testing.assert_allclose(np.asarray(out_scalar), np.asarray(out_vector), rtol=1e-6, atol=1e-6)


def test_param_count(tiny_params):
    count = param_count(tiny_params)
    assert isinstance(count, int)
    assert count == sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(tiny_params))
    # Also works on abstract (eval_shape) parameters; wider and deeper configs are larger.
    counts = [
        param_count(_abstract_params(UNetConfig(channels=c, channel_mults=m)))
        for c, m in [(8, (1, 2)), (16, (1, 2)), (16, (1, 2, 2))]
    ]
    assert counts[0] == count
    assert counts[0] < counts[1] < counts[2]
    wide = _random_params(UNetConfig(channels=16, channel_mults=(1, 2)))
    assert param_count(wide) == counts[1] == sum(p.size for p in jax.tree_util.tree_leaves(wide))


def test_init_matches_flax_init_structure(tiny_params):
    """init_unet gives UNet.init's tree (shapes, dtypes) with flax's default initialisation statistics."""
    ref = _abstract_params(TINY)
    assert jax.tree_util.tree_structure(ref) == jax.tree_util.tree_structure(tiny_params)
    for a, b in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(tiny_params), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
    kernel = np.asarray(tiny_params["down_1_res_0"]["Conv_1"]["kernel"])  # 3x3 conv, 16 -> 16 channels
    np.testing.assert_allclose(kernel.std(), 1.0 / np.sqrt(3 * 3 * 16), rtol=0.1)
    assert np.abs(kernel).max() <= 2.0 / 0.8796 / np.sqrt(3 * 3 * 16) + 1e-6  # truncated at 2 sigma
    np.testing.assert_array_equal(np.asarray(tiny_params["norm_out"]["scale"]), 1.0)
    np.testing.assert_array_equal(np.asarray(tiny_params["down_1_res_0"]["Conv_1"]["bias"]), 0.0)
    np.testing.assert_array_equal(np.asarray(tiny_params["conv_out"]["kernel"]), 0.0)
    # Deterministic in the key, different across keys.
    again = init_unet(TINY, jax.random.key(0), SHAPE)
    other = init_unet(TINY, jax.random.key(1), SHAPE)
    np.testing.assert_array_equal(np.asarray(again["conv_in"]["kernel"]), np.asarray(tiny_params["conv_in"]["kernel"]))
    assert not np.array_equal(np.asarray(other["conv_in"]["kernel"]), np.asarray(tiny_params["conv_in"]["kernel"]))


def test_apply_fn_cached_and_jit_matches(tiny_params):
    cfg_a = UNetConfig(channels=8, channel_mults=(1, 2))
    cfg_b = UNetConfig(channels=8, channel_mults=[1, 2])  # lists are normalised to tuples
    assert cfg_a == cfg_b and hash(cfg_a) == hash(cfg_b)
    assert unet_apply_fn(cfg_a) is unet_apply_fn(cfg_b)
    assert unet_apply_fn(cfg_a) is not unet_apply_fn(UNetConfig(channels=16))

    # Op-by-op execution compiles every distinct op: use a one-level net to keep this fast.
    cfg = ONE_LEVEL
    apply_fn = unet_apply_fn(cfg)
    params = _random_params(cfg)
    x, t = _inputs()
    expected = apply_fn(params, x, t)  # un-jitted
    got = _jit_apply(cfg)(params, x, t)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)
    # Same result as applying the module directly (reusing the ops compiled above).
    direct = UNet(cfg).apply({"params": params}, x, t)
    np.testing.assert_allclose(np.asarray(direct), np.asarray(expected), rtol=1e-6, atol=1e-7)


def test_apply_fn_as_static_switch_branch(tiny_params):
    params = _randomise_last_layer(tiny_params)
    x, t = _inputs()
    apply_fn = unet_apply_fn(TINY)
    branches = [apply_fn, lambda p, x, t: jnp.zeros_like(x)]
    switched = jax.jit(lambda i, p, x, t: jax.lax.switch(i, branches, p, x, t))
    expected = _jit_apply(TINY)(params, x, t)
    np.testing.assert_allclose(np.asarray(switched(0, params, x, t)), np.asarray(expected), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(switched(1, params, x, t)), 0.0)


def test_attention_level():
    cfg = UNetConfig(channels=8, channel_mults=(1, 2), attention_levels=(1,))
    params = _random_params(cfg)
    assert {"down_1_attn_0", "mid_attn", "up_1_attn_0", "up_1_attn_1"} <= set(params)
    assert not any("attn" in name for name in _abstract_params(TINY))
    assert param_count(params) > param_count(_abstract_params(TINY))
    x, t = _inputs()
    out = _jit_apply(cfg)(params, x, t)
    assert out.shape == x.shape
    assert np.all(np.isfinite(np.asarray(out)))
    # The attention blocks change the output.
    no_attn = {name: p for name, p in params.items() if "attn" not in name}
    out_no_attn = _jit_apply(TINY)(no_attn, x, t)
    assert float(jnp.max(jnp.abs(out - out_no_attn))) > 1e-4


def test_three_levels_and_two_res_blocks():
    cfg = UNetConfig(channels=8, channel_mults=(1, 2, 2), num_res_blocks=2, attention_levels=(0, 2), groups=4)
    x, t = _inputs()
    out = jax.eval_shape(unet_apply_fn(cfg), _abstract_params(cfg), x, t)
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert {"down_2_res_1", "up_2_res_2", "down_0_attn_1", "mid_attn"} <= set(_abstract_params(cfg))


def test_float64():
    with jax.enable_x64(True):
        params64 = jax.eval_shape(lambda k: init_unet(TINY, k, SHAPE, dtype=jnp.float64), jax.random.key(0))
        assert {p.dtype for p in jax.tree_util.tree_leaves(params64)} == {jnp.dtype(jnp.float64)}
        x, t = _inputs(dtype=jnp.float64)
        assert jax.eval_shape(UNet(TINY).apply, {"params": params64}, x, t).dtype == jnp.float64

        # float32 parameters on float64 inputs: computation follows the input dtype.
        params = _random_params(ONE_LEVEL)
        out64 = jax.jit(unet_apply_fn(ONE_LEVEL))(params, x, t)
        assert out64.dtype == jnp.float64
        assert not np.all(np.asarray(out64) == 0.0)

    # The float32 network gives nearly the same result.
    out32 = _jit_apply(ONE_LEVEL)(params, x.astype(jnp.float32), t.astype(jnp.float32))
    assert out32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out32), np.asarray(out64), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"channels": 0}, "channels"),
        ({"channels": -8}, "channels"),
        ({"channel_mults": ()}, "channel_mults"),
        ({"channel_mults": (1, 0)}, "channel_mults"),
        ({"num_res_blocks": 0}, "num_res_blocks"),
        ({"attention_levels": (2,)}, "attention_levels"),
        ({"attention_levels": (-1,)}, "attention_levels"),
        ({"out_channels": 0}, "out_channels"),
        ({"time_embed_dim": 0}, "time_embed_dim"),
        ({"groups": 0}, "groups"),
        ({"time_scale": float("nan")}, "time_scale"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig(**kwargs)


def test_bad_spatial_size():
    cfg = UNetConfig(channels=8, channel_mults=(1, 2, 2))  # needs H, W divisible by 4
    with pytest.raises(ValueError, match="divisible"):
        init_unet(cfg, jax.random.key(0), (6, 8, 1))
    params = _abstract_params(cfg)
    x, t = _inputs(shape=(8, 10, 1))
    with pytest.raises(ValueError, match="spatial size 8x10"):
        jax.eval_shape(unet_apply_fn(cfg), params, x, t)


def test_bad_input_shapes(tiny_params):
    apply_fn = _jit_apply(TINY)
    x, t = _inputs()
    with pytest.raises(ValueError, match="NHWC"):
        apply_fn(tiny_params, x[0], t)
    with pytest.raises(ValueError, match="t must have shape"):
        apply_fn(tiny_params, x, t[:2])
    with pytest.raises(ValueError, match="image_shape"):
        init_unet(TINY, jax.random.key(0), (8, 8))
