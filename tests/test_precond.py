"""Tests of the Fast Diffusion Model preconditionings (fdm_edm, fdm_vp, fdm_ve), EDM's VE baseline, the loss-weight
clamp warm-up, and their path to the samplers, the zoo and the `omsjax train` command (REFERENCE.md section 6)."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import omsjax
from omsjax import cli, nets, noise, presets, train, zoo
from omsjax.cli import train_cmd
from omsjax.cli.train_cmd import train_config
from omsjax.models import to_eps_x0

NET = nets.UNetConfig(channels=8, channel_mults=(1,))
FDM = ("fdm_edm", "fdm_vp", "fdm_ve")
BASE = {"fdm_edm": "edm", "fdm_vp": "vp", "fdm_ve": "ve"}
SD = 0.5


def cfg(precond, **kw):
    """The tiny run of these tests: 4 steps, clamp warm-up over the first 3."""
    kw = {"steps": 4, "batch_size": 8, "lr": 2e-3, "warmup": 2, "checkpoint_every": 2, "weight_clamp_warmup": 3, **kw}
    return train.TrainConfig(net=NET, precond=precond, **kw)


def random_data(n=32, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 8, 8, 1)).astype(np.float32)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def noisy_params(seed):
    """Initial parameters plus noise: the fresh U-Net's zero output layer would hide c_in and c_noise."""
    params = nets.init_unet(NET, jax.random.PRNGKey(seed), (8, 8, 1), jnp.float32)
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: p + jnp.asarray(0.1 * rng.standard_normal(p.shape), p.dtype), params)


# --------------------------------------------------------------------- naive float64 transcriptions (the oracle)


def sigma_vp(t):
    """EDM's VP sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), beta_d = 19.9, beta_min = 0.1."""
    return math.sqrt(math.exp(0.5 * 19.9 * t * t + 0.1 * t) - 1.0)


RANGES = {"edm": (0.002, 80.0), "vp": (sigma_vp(1e-5), sigma_vp(1.0)), "ve": (0.02, 100.0)}


def s_ref(sigma, base, m=2.0):
    lo, hi = RANGES[base]
    tp = (sigma - lo) / (hi - lo)
    b = 0.1 * tp + 0.5 * 19.9 * tp**2
    return math.exp(-m * b) * (1.0 + m * b)


def c_in_ref(precond, level, m=2.0):
    """c_in on the base's noised input: FDM's s(sigma) on x0 + sigma eps (VP: x = alpha (x0 + sigma eps))."""
    base = BASE.get(precond, precond)
    sigma = sigma_vp(level) if base == "vp" else level
    if precond == "vp":
        return 1.0
    if precond == "edm":
        return 1.0 / math.sqrt(sigma**2 + SD**2)
    if precond == "ve":
        return 1.0
    scale = s_ref(sigma, base, m)
    return scale * math.sqrt(1.0 + sigma**2) if base == "vp" else scale  # 1/alpha = sqrt(1 + sigma^2)


def unet(params, x, c_noise):
    """The raw network on float32 inputs (the dtype of training), as float64 numpy."""
    x = jnp.asarray(x, jnp.float32)
    c_noise = jnp.broadcast_to(jnp.asarray(c_noise, jnp.float32), x.shape[:1])
    return np.asarray(nets.unet_apply_fn(NET)(params, x, c_noise), np.float64)


# ---------------------------------------------------------------------------------------------- s(sigma)


def test_fdm_sigma_ranges():
    for base, (lo, hi) in RANGES.items():
        assert train.FDM_SIGMA_RANGES[base] == pytest.approx((lo, hi), rel=1e-12)
    lo, hi = train.FDM_SIGMA_RANGES["vp"]
    assert lo == pytest.approx(0.0010005, rel=1e-4) and hi == pytest.approx(152.167, rel=1e-5)


@pytest.mark.parametrize("base", ["edm", "vp", "ve"])
@pytest.mark.parametrize("m", [2.0, 1.0])
def test_fdm_scale_matches_closed_form(base, m):
    lo, hi = RANGES[base]
    sig = np.concatenate([[lo], np.geomspace(lo * 1.5, hi, 40)])
    got = np.asarray(train.fdm_scale(jnp.asarray(sig), m=m, sigma_min=lo, sigma_max=hi))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, [s_ref(s, base, m) for s in sig], rtol=1e-13, atol=0)
    assert got[0] == 1.0 and np.all(np.diff(got) < 0)
    assert got[-1] == pytest.approx(math.exp(-10.05 * m) * (1 + 10.05 * m), rel=1e-12)  # B(1) = 10.05
    # float32 in, float32 out (training).
    assert train.fdm_scale(jnp.asarray(sig, jnp.float32), m=m, sigma_min=lo, sigma_max=hi).dtype == jnp.float32


@pytest.mark.parametrize("base", ["edm", "vp", "ve"])
def test_fdm_scale_is_one_at_small_sigma(base):
    """Up to sigma ~ 2 the network sees its input unscaled (s within 2e-4 of 1; 1e-5 up to sigma = 1); at sigma = 5
    s is still within 0.4% of 1 (measured: edm 3.8e-3, ve 1.7e-3, vp 3.9e-4)."""
    lo, hi = RANGES[base]

    def one_minus_s(sig):
        return 1.0 - np.asarray(train.fdm_scale(jnp.asarray(sig, jnp.float64), m=2.0, sigma_min=lo, sigma_max=hi))

    small = one_minus_s(np.geomspace(lo, 1.0, 20))
    assert np.all(small >= 0) and small.max() < 1.6e-5
    assert 0 < one_minus_s(2.0) < 2e-4
    assert 3e-4 < one_minus_s(5.0) < 4e-3
    assert one_minus_s(0.5 * hi) > 0.5  # and far from 1 at large sigma


# ---------------------------------------------------------------------------------------------- preconditionings


@pytest.mark.parametrize("precond", FDM)
def test_fdm_changes_only_c_in(precond):
    base = BASE[precond]
    level = jnp.asarray([1e-5, 0.01, 0.3, 0.999] if base == "vp" else [0.002, 0.02, 0.7, 5.0, 80.0, 100.0])
    for dtype in (jnp.float64, jnp.float32):
        lv = level.astype(dtype)
        fdm, ref = train.precondition(precond, lv), train.precondition(base, lv)
        for i in (0, 1, 3):  # c_skip, c_out, c_noise
            assert fdm[i].dtype == ref[i].dtype
            np.testing.assert_array_equal(fdm[i], ref[i])
        np.testing.assert_array_equal(train.loss_weight(precond, lv), train.loss_weight(base, lv))
    c_in = np.asarray(train.precondition(precond, level)[2])
    np.testing.assert_allclose(c_in, [c_in_ref(precond, float(v)) for v in level], rtol=1e-12)
    c_in_m1 = np.asarray(train.precondition(precond, level, fdm_m=1.0)[2])
    np.testing.assert_allclose(c_in_m1, [c_in_ref(precond, float(v), m=1.0) for v in level], rtol=1e-12)
    assert not np.allclose(c_in, np.asarray(train.precondition(base, level)[2]))


def test_ve_and_edm_coefficients_match_table_1():
    sig = np.array([0.02, 0.3, 7.0, 100.0])
    c_skip, c_out, c_in, c_noise = train.precondition("ve", jnp.asarray(sig))
    np.testing.assert_array_equal(c_skip, 1.0)
    np.testing.assert_array_equal(c_out, sig)
    np.testing.assert_array_equal(c_in, 1.0)
    np.testing.assert_allclose(c_noise, np.log(0.5 * sig), rtol=1e-14)
    np.testing.assert_allclose(train.loss_weight("ve", jnp.asarray(sig)), 1 / sig**2, rtol=1e-14)
    np.testing.assert_allclose(
        train.loss_weight("edm", jnp.asarray(sig)), (sig**2 + SD**2) / (sig * SD) ** 2, rtol=1e-14
    )
    np.testing.assert_array_equal(train.loss_weight("vp", jnp.asarray(sig)), 1.0)


# ---------------------------------------------------------------------------------------------- clamp warm-up


def test_clamp_cap_is_a_function_of_the_step():
    w = 10
    steps = [0, 5, 9, 10, 11, 1000]
    cap = np.asarray(train.clamp_cap(jnp.asarray(steps), w))
    assert cap.dtype == np.float32
    np.testing.assert_allclose(cap[:3], [5.0, 50.0, 5.0 * 100**0.9], rtol=1e-6)
    assert np.all(np.isposinf(cap[3:]))
    assert float(train.clamp_cap(0, w)) == 5.0
    # Traced step (as in train_step), same values.
    assert float(jax.jit(lambda s: train.clamp_cap(s, w))(jnp.int32(5))) == pytest.approx(50.0, rel=1e-6)
    # Off.
    assert np.all(np.isposinf(np.asarray(train.clamp_cap(jnp.asarray(steps), 0))))
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="weight_clamp_warmup"):
            train.clamp_cap(0, bad)


def _manual_loss(config, params, batch, key, cap):
    """The VE / EDM family loss written out: sigma draw, x = x0 + sigma eps, D, min(weight, cap)."""
    b = batch.shape[0]
    k_level, k_eps = jax.random.split(key)
    eps = np.asarray(jax.random.normal(k_eps, batch.shape, jnp.float32), np.float64)
    if BASE[config.precond] == "ve":
        u = np.asarray(jax.random.uniform(k_level, (b,), jnp.float32), np.float64)
        sig = np.exp(np.log(0.02) + u * (np.log(100.0) - np.log(0.02)))
        c_skip, c_out, c_noise, weight = np.ones(b), sig, np.log(0.5 * sig), 1 / sig**2
    else:
        sig = np.exp(-1.2 + 1.2 * np.asarray(jax.random.normal(k_level, (b,), jnp.float32), np.float64))
        c_skip, c_out = SD**2 / (sig**2 + SD**2), sig * SD / np.sqrt(sig**2 + SD**2)
        c_noise, weight = np.log(sig) / 4, (sig**2 + SD**2) / (sig * SD) ** 2
    x0 = np.asarray(batch, np.float64)
    x = x0 + sig[:, None, None, None] * eps
    c_in = np.array([c_in_ref(config.precond, float(s)) for s in sig])
    f = unet(params, c_in[:, None, None, None] * x, c_noise)
    d = c_skip[:, None, None, None] * x + c_out[:, None, None, None] * f
    per = np.mean((d - x0) ** 2, axis=(1, 2, 3))
    clamped = np.minimum(weight, cap)
    return float(np.mean(clamped * per)), int(np.sum(weight > cap))


@pytest.mark.parametrize("precond", ["fdm_ve", "fdm_edm"])
def test_loss_with_clamp_matches_manual_formula(precond):
    w = 10
    config = cfg(precond, weight_clamp_warmup=w, batch_size=16)
    params = noisy_params(0)
    batch = jnp.asarray(random_data(16))
    key = jax.random.PRNGKey(5)
    n_clamped = []
    for step in (0, 5, 9):
        got = float(train.loss_fn(config, params, batch, key, step))
        want, n = _manual_loss(config, params, batch, key, 5.0 * 100.0 ** (step / w))
        assert got == pytest.approx(want, rel=2e-5)
        n_clamped.append(n)
    assert n_clamped[0] > 0  # the cap of step 0 really clamps some weights of this batch
    # From step W on there is no cap: the loss of the config without warm-up.
    off = cfg(precond, weight_clamp_warmup=0, batch_size=16)
    unclamped = float(train.loss_fn(off, params, batch, key))
    assert float(train.loss_fn(config, params, batch, key, w)) == unclamped
    assert float(train.loss_fn(config, params, batch, key, jnp.int32(10 * w))) == unclamped
    assert unclamped == pytest.approx(_manual_loss(config, params, batch, key, math.inf)[0], rel=2e-5)
    assert float(train.loss_fn(config, params, batch, key, 0)) < unclamped
    with pytest.raises(ValueError, match="step"):
        train.loss_fn(config, params, batch, key)


def test_fdm_vp_loss_matches_manual_formula():
    """VP draws t and noises x = alpha x0 + sigma eps as "vp" does; F sees s(sigma_VP(t)) (x0 + sigma_VP(t) eps)."""
    config = cfg("fdm_vp", weight_clamp_warmup=10, batch_size=16)
    params = noisy_params(1)
    batch = jnp.asarray(random_data(16))
    key = jax.random.PRNGKey(8)
    k_level, k_eps = jax.random.split(key)
    eps = np.asarray(jax.random.normal(k_eps, batch.shape, jnp.float32), np.float64)
    t = np.asarray(jax.random.uniform(k_level, (16,), jnp.float32, minval=1e-5, maxval=1.0), np.float64)
    alpha = np.exp(-0.25 * 19.9 * t**2 - 0.05 * t)
    sigma = np.sqrt(1.0 - alpha**2)
    x = alpha[:, None, None, None] * np.asarray(batch, np.float64) + sigma[:, None, None, None] * eps
    c_in = np.array([c_in_ref("fdm_vp", float(v)) for v in t])
    assert c_in.max() > 2  # s(sigma) / alpha: the network sees the un-normalised x0 + sigma eps
    eps_hat = unet(params, c_in[:, None, None, None] * x, t)
    want = float(np.mean((eps_hat - eps) ** 2))
    got = float(train.loss_fn(config, params, batch, key, 0))
    assert got == pytest.approx(want, rel=2e-5)
    # The base "vp" loss sees the same t and noise but x itself: a different number.
    base = float(train.loss_fn(cfg("vp", weight_clamp_warmup=0, batch_size=16), params, batch, key))
    assert base == pytest.approx(float(np.mean((unet(params, x, t) - eps) ** 2)), rel=2e-5)
    assert abs(base - got) > 1e-3


# ---------------------------------------------------------------------------------------------- training


# fdm_edm shares its compilation with the resume test; the other two cost a compilation each (~10 s on 2 cores).
@pytest.mark.parametrize("precond", ["fdm_edm", *(pytest.param(p, marks=pytest.mark.slow) for p in FDM[1:])])
def test_train_steps_run(precond):
    config = cfg(precond)
    rep = train.replicated_sharding()  # placed as `train` places them: shares the compilation with the resume test
    state, data, key = jax.device_put((train.init_state(config), random_data(), jax.random.PRNGKey(1)), rep)
    s1, m1 = train.train_step(config, state, data, key)
    s2, m2 = train.train_step(config, s1, data, key)
    assert int(s2.step) == 2
    assert np.isfinite(float(m1["loss"])) and np.isfinite(float(m2["loss"])) and float(m1["loss"]) > 0
    assert all(np.all(np.isfinite(x)) for x in leaves(s2.params))
    assert any(not np.array_equal(a, b) for a, b in zip(leaves(s2.params), leaves(state.params), strict=True))


def test_resume_mid_warmup_is_bit_identical(tmp_path):
    config = cfg("fdm_edm")  # 4 steps, clamp over the first 3, checkpoints at 2 and 4
    data = random_data()
    ref = train.train(config, data, tmp_path / "ref", progress=False, log_every=1)
    half = train.train(config, data, tmp_path / "run", progress=False, log_every=1, stop_at=2)
    assert int(half.step) == 2 < config.weight_clamp_warmup
    final = train.train(config, data, tmp_path / "run", resume=True, progress=False, log_every=1)
    assert int(final.step) == 4
    la, lb = leaves(final), leaves(ref)
    assert len(la) == len(lb)
    for a, b in zip(la, lb, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert train.read_log(tmp_path / "run") == train.read_log(tmp_path / "ref")


# ---------------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("precond", train.PRECONDS)
def test_model_from_params_is_the_training_denoiser(precond):
    config = cfg(precond, weight_clamp_warmup=0)
    params = noisy_params(2)
    model = train.model_from_params(config, params, latency=3.0, name="m")
    assert model.latency == 3.0 and model.name == "m"
    assert train.model_from_params(config, params).apply_fn is model.apply_fn  # cached: samplers do not recompile
    ns = train.noise_schedule(precond)
    base = BASE.get(precond, precond)
    kind = {"vp": ("vp_linear", 1.0, 1e-5), "edm": ("edm", 80.0, 0.002), "ve": ("edm", 100.0, 0.02)}[base]
    assert (ns.kind, ns.t_max, ns.t_min) == kind
    x64 = np.random.default_rng(1).standard_normal((2, 8, 8, 1))
    x = jnp.asarray(x64, jnp.float32)
    t = 0.3 if base == "vp" else 1.7
    t32 = jnp.float32(t)
    eps, x0 = to_eps_x0(model, model.params, x, t32, ns.log_alpha(t32), ns.sigma(t32))
    c_in = c_in_ref(precond, t)
    if base == "vp":  # the noise prediction F(c_in x; t)
        assert model.parameterization == "noise"
        np.testing.assert_allclose(eps, unet(params, c_in * x64, t), rtol=1e-5, atol=1e-5)
    else:  # the denoised x0 = c_skip x + c_out F(c_in x; c_noise), sigma = t
        assert model.parameterization == ("edm_raw" if precond == "edm" else "data")
        if base == "edm":
            c_skip, c_out, c_noise = SD**2 / (t**2 + SD**2), t * SD / math.sqrt(t**2 + SD**2), math.log(t) / 4
        else:
            c_skip, c_out, c_noise = 1.0, t, math.log(0.5 * t)
        f = unet(params, c_in * x64, c_noise)
        assert np.abs(c_out * f).max() > 0.1  # the network term matters: the check sees c_in and c_noise
        np.testing.assert_allclose(x0, c_skip * x64 + c_out * f, rtol=1e-5, atol=1e-5)


def test_fdm_zoo_member_samples_with_a_preset(tmp_path):
    config = cfg("fdm_edm", fdm_m=1.0)
    params = noisy_params(6)
    zoo.add_member(tmp_path / "z", "f", config, params, train_steps=0, latency_batch=4)
    models, ns, manifest = zoo.load_zoo(tmp_path / "z")
    assert manifest["noise_schedule"] == {"kind": "edm", "sigma_min": 0.002, "sigma_max": 80.0}
    assert noise.to_dict(ns) == manifest["noise_schedule"]
    assert manifest["models"][0]["config"]["fdm_m"] == 1.0 and manifest["models"][0]["config"]["precond"] == "fdm_edm"
    direct = train.model_from_params(config, params, latency=models[0].latency, name="f")  # same static fields
    assert models[0].apply_fn is direct.apply_fn and models[0].parameterization == "data"
    x_T = 80.0 * jax.random.normal(jax.random.PRNGKey(4), (4, 8, 8, 1), jnp.float64)
    run = jax.jit(lambda m, s, x: omsjax.sample(m, ns, s, x))
    sched = presets.ddim(ns, 3)
    out = np.asarray(run(models, sched, x_T))
    assert out.shape == x_T.shape and np.all(np.isfinite(out))
    assert np.abs(out).max() < 20.0  # from sigma 80 down to 0.002
    np.testing.assert_array_equal(out, run((direct,), sched, x_T))  # the loaded member is the trained denoiser
    # A member sampled on another schedule does not join this zoo.
    with pytest.raises(ValueError, match="noise schedule"):
        zoo.add_member(tmp_path / "z", "v", cfg("fdm_vp"), params, train_steps=0, latency_batch=4)


# ---------------------------------------------------------------------------------------------- config and CLI


def test_config_round_trip_and_old_manifests():
    config = cfg("fdm_vp", fdm_m=1, weight_clamp_warmup=400)
    assert config.fdm_m == 1.0 and isinstance(config.fdm_m, float)
    d = json.loads(json.dumps(config.to_dict()))
    assert d["precond"] == "fdm_vp" and d["fdm_m"] == 1.0 and d["weight_clamp_warmup"] == 400
    back = train.TrainConfig.from_dict(d)
    assert back == config and hash(back) == hash(config)
    old = {k: v for k, v in d.items() if k not in ("fdm_m", "weight_clamp_warmup")}
    legacy = train.TrainConfig.from_dict(old)
    assert legacy.fdm_m == 2.0 and legacy.weight_clamp_warmup == 0
    assert legacy == cfg("fdm_vp", weight_clamp_warmup=0)


def test_resume_accepts_a_run_recorded_without_the_new_fields(tmp_path):
    config = cfg("vp", weight_clamp_warmup=0)
    d = config.to_dict()
    (tmp_path / "config.json").write_text(
        json.dumps({k: v for k, v in d.items() if k not in ("fdm_m", "weight_clamp_warmup")})
    )
    train.train(config, random_data(), tmp_path, resume=True, progress=False, stop_at=0)
    (tmp_path / "config.json").write_text(json.dumps({**d, "fdm_m": 1.0}))
    with pytest.raises(ValueError, match="fdm_m"):
        train.train(config, random_data(), tmp_path, resume=True, progress=False, stop_at=0)


def test_bad_inputs_raise():
    for bad in ("ddpm", "fdm", "fdm_ddpm", "FDM_EDM"):
        with pytest.raises(ValueError, match="precond"):
            cfg(bad)
    for bad in (0.0, -1.0, math.nan, math.inf, True, "2"):
        with pytest.raises(ValueError, match="fdm_m"):
            cfg("fdm_edm", fdm_m=bad)
    for bad in (-1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="weight_clamp_warmup"):
            cfg("fdm_edm", weight_clamp_warmup=bad)
    with pytest.raises(ValueError, match="times in"):
        cfg("fdm_vp", focus_times=(2.0,), focus_prob=0.5)
    cfg("fdm_ve", focus_times=(2.0,), focus_prob=0.5)  # sigmas for the EDM / VE families
    for f in (train.precondition, train.loss_weight):
        with pytest.raises(ValueError, match="precond"):
            f("fdm_x", jnp.ones(2))
    with pytest.raises(ValueError, match="precond"):
        train.noise_schedule("x")


def _args(*argv):
    return cli.build_parser().parse_args(["train", "--out", "unused", *argv])


def test_cli_train_config(tmp_path, capsys):
    assert train_cmd.PRECOND_CHOICES == train.PRECONDS
    config, name = train_config(_args("--config", "tiny"))
    assert config == zoo.named_config("tiny") and name == "tiny"
    config, name = train_config(
        _args("--config", "tiny", "--precond", "fdm_vp", "--fdm-m", "1", "--weight-clamp-warmup", "300", "--steps", "7")
    )
    assert (config.precond, config.fdm_m, config.weight_clamp_warmup, config.steps) == ("fdm_vp", 1.0, 300, 7)
    # A run's config.json reproduces it; fields given on the command line replace the file's.
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    assert train_config(_args("--config", str(run / "config.json"))) == (config, "run")
    again, _ = train_config(_args("--config", str(run / "config.json"), "--precond", "fdm_ve"))
    assert again.precond == "fdm_ve" and again.fdm_m == 1.0 and not again.ema_warmup
    warm, _ = train_config(_args("--config", str(run / "config.json"), "--ema-warmup"))
    assert warm.ema_warmup and warm.precond == "fdm_vp"
    for argv, field in [
        (("--config", "tiny", "--fdm-m", "-1"), "fdm_m"),
        (("--config", "tiny", "--weight-clamp-warmup", "-2"), "weight_clamp_warmup"),
        (("--config", str(tmp_path / "missing.json")), "neither a named config"),
    ]:
        with pytest.raises(ValueError, match=field):
            train_config(_args(*argv))
    (tmp_path / "bad.json").write_text(json.dumps({**config.to_dict(), "fdm_m": 0}))
    with pytest.raises(ValueError, match="fdm_m"):
        train_config(_args("--config", str(tmp_path / "bad.json")))
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        train_config(_args("--config", str(tmp_path / "junk.json")))
    # The command reports the field and exits with 2 before loading any data; argparse refuses unknown preconds.
    assert cli.main(["train", "--config", "tiny", "--out", str(tmp_path / "o"), "--fdm-m", "0"]) == 2
    assert "fdm_m" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _args("--config", "tiny", "--precond", "fdm_bogus")
