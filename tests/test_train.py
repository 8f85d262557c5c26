"""Tests of omsjax.train: loss decrease, checkpoints, resume (also after a real SIGKILL), data parallelism."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omsjax import Model, nets, train

REPO = Path(__file__).resolve().parent.parent
NET = nets.UNetConfig(channels=8, channel_mults=(1,))
# One config for the resume / kill / data-parallel tests, so that they share one compilation in this process.
CFG = train.TrainConfig(net=NET, steps=40, batch_size=16, lr=2e-3, warmup=5, checkpoint_every=5)

# Subprocesses run with the same numerics settings as this test process (tests/conftest.py).
PRELUDE = """
import jax
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
import numpy as np
from omsjax import nets, train
"""


def random_data(n=64, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 8, 8, 1)).astype(np.float32)


def pattern_data(n=64, seed=0):
    """A few fixed +-1 patterns plus small noise: easy to learn."""
    rng = np.random.default_rng(seed)
    patterns = np.sign(rng.standard_normal((4, 8, 8, 1))).astype(np.float32)
    x = patterns[np.arange(n) % 4] + 0.05 * rng.standard_normal((n, 8, 8, 1)).astype(np.float32)
    return np.clip(x, -1, 1).astype(np.float32)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def assert_trees_close(a, b, atol):
    la, lb = leaves(a), leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype
        np.testing.assert_allclose(x, y, rtol=0, atol=atol)


def assert_trees_equal(a, b):
    la, lb = leaves(a), leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def run_script(script, env=None, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "data.npy"
    np.save(path, random_data())
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run of CFG (final state)."""
    out = tmp_path_factory.mktemp("reference")
    return train.train(CFG, random_data(), out, progress=False, log_every=10)


# ---------------------------------------------------------------------------------------------- config


def test_config_validation():
    with pytest.raises(ValueError, match="precond"):
        train.TrainConfig(net=NET, steps=10, precond="ddpm")
    with pytest.raises(ValueError, match="steps"):
        train.TrainConfig(net=NET, steps=0)
    with pytest.raises(ValueError, match="batch_size"):
        train.TrainConfig(net=NET, steps=10, batch_size=2.5)
    with pytest.raises(ValueError, match="lr"):
        train.TrainConfig(net=NET, steps=10, lr=-1.0)
    with pytest.raises(ValueError, match="warmup"):
        train.TrainConfig(net=NET, steps=10, warmup=-1)
    with pytest.raises(ValueError, match="grad_clip"):
        train.TrainConfig(net=NET, steps=10, grad_clip=0.0)
    with pytest.raises(ValueError, match="weight_decay"):
        train.TrainConfig(net=NET, steps=10, weight_decay=-0.1)
    with pytest.raises(ValueError, match="ema_decay"):
        train.TrainConfig(net=NET, steps=10, ema_decay=1.0)
    with pytest.raises(ValueError, match="checkpoint_every"):
        train.TrainConfig(net=NET, steps=10, checkpoint_every=0)
    with pytest.raises(ValueError, match="image_shape"):
        train.TrainConfig(net=NET, steps=10, image_shape=(8, 8))
    with pytest.raises(ValueError, match="divisible"):
        train.TrainConfig(net=nets.UNetConfig(channels=8, channel_mults=(1, 2)), steps=10, image_shape=(7, 8, 1))
    with pytest.raises(ValueError, match="UNetConfig"):
        train.TrainConfig(net={"channels": 8}, steps=10)


def test_config_dict_roundtrip():
    cfg = train.TrainConfig(net=nets.UNetConfig(channels=8, channel_mults=(1, 2)), steps=7, precond="edm")
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["net"]["channel_mults"] == [1, 2] and d["image_shape"] == [8, 8, 1]
    back = train.TrainConfig.from_dict(d)
    assert back == cfg and hash(back) == hash(cfg)
    with pytest.raises(ValueError, match="unknown"):
        train.TrainConfig.from_dict({**d, "bogus": 1})


def test_precondition_edm_matches_reference_formulas():
    s = jnp.asarray([0.002, 0.5, 80.0], jnp.float32)
    c_skip, c_out, c_in, c_noise = train.precondition("edm", s)
    sd = 0.5
    s64 = np.asarray(s, np.float64)
    np.testing.assert_allclose(c_skip, sd**2 / (s64**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_out, s64 * sd / np.sqrt(s64**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_in, 1 / np.sqrt(s64**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_noise, np.log(s64) / 4, rtol=1e-6)
    c_skip, c_out, c_in, c_noise = train.precondition("vp", s)
    np.testing.assert_array_equal(c_skip, 0.0)
    np.testing.assert_array_equal(c_out, 1.0)
    np.testing.assert_array_equal(c_in, 1.0)
    np.testing.assert_array_equal(c_noise, s)


# ---------------------------------------------------------------------------------------------- training


# EDM's preconditioning in the slow tier (its training steps run in test_precond's fdm_edm too): about 8 s.
@pytest.mark.parametrize("precond", ["vp", pytest.param("edm", marks=pytest.mark.slow)])
def test_loss_decreases(tmp_path, precond):
    cfg = train.TrainConfig(net=NET, steps=150, precond=precond, batch_size=16, lr=3e-3, warmup=10)
    state = train.train(cfg, pattern_data(), tmp_path, progress=False, log_every=1)
    losses = np.array([loss for _, loss in train.read_log(tmp_path)])
    assert len(losses) == 150 and np.all(np.isfinite(losses))
    first, last = losses[:20].mean(), losses[-20:].mean()
    # Measured: vp 0.81 -> 0.27, edm 1.90 -> 1.31 (EDM's weighted loss is noisier and has a higher floor).
    assert last < {"vp": 0.5, "edm": 0.8}[precond] * first, (first, last)
    assert int(state.step) == 150
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    # EMA lags the parameters but has moved away from the initialisation.
    init = train.init_state(cfg)
    assert not np.allclose(leaves(state.ema_params)[0], leaves(init.params)[0])
    model = train.model_from_params(cfg, state.ema_params, latency=2.0, name="tiny")
    assert isinstance(model, Model)
    assert model.parameterization == {"vp": "noise", "edm": "edm_raw"}[precond]
    assert model.latency == 2.0 and model.name == "tiny" and model.sigma_data == 0.5
    x = jnp.zeros((2, 8, 8, 1), jnp.float32)
    assert model.apply_fn(model.params, x, jnp.full((2,), 0.5, jnp.float32)).shape == x.shape


def test_train_step_is_pure_and_keyed_by_step():
    # Placed as `train` places them, so that this shares its compilation with the other tests.
    rep = train.replicated_sharding()
    state, data, key = jax.device_put((train.init_state(CFG), random_data(), jax.random.PRNGKey(3)), rep)
    s1, m1 = train.train_step(CFG, state, data, key)
    s2, m2 = train.train_step(CFG, state, data, key)
    assert_trees_equal(s1, s2)
    assert float(m1["loss"]) == float(m2["loss"]) and int(s1.step) == 1
    # The next step draws other batches and noise (fold_in of the step number).
    _, m3 = train.train_step(CFG, s1, data, key)
    assert float(m3["loss"]) != float(m1["loss"])


def test_ema_warmup_follows_its_closed_form():
    n = np.arange(5)
    np.testing.assert_allclose(train.ema_decay_at(0.999, True, n), np.minimum(0.999, (1 + n) / (10 + n)), rtol=1e-6)
    assert train.ema_decay_at(0.999, False, n) == 0.999  # a Python float: unchanged runs without the option
    assert float(train.ema_decay_at(0.9, True, 1000)) == np.float32(0.9)  # capped by ema_decay
    with pytest.raises(ValueError, match="ema_warmup"):
        train.TrainConfig(net=NET, steps=10, ema_warmup="yes")
    # Three steps: the EMA is the float64 recurrence e_n = d_n e_(n-1) + (1 - d_n) p_n over the parameters.
    cfg = train.TrainConfig(net=NET, steps=3, batch_size=8, warmup=0, ema_warmup=True)
    assert train.TrainConfig.from_dict(cfg.to_dict()) == cfg
    state, data, key = train.init_state(cfg), random_data(16), jax.random.PRNGKey(0)
    ema = [np.asarray(x, np.float64) for x in leaves(state.params)]
    for step in range(3):
        state, _ = train.train_step(cfg, state, data, key)
        d = min(0.999, (1 + step) / (10 + step))
        ema = [d * e + (1 - d) * np.asarray(p, np.float64) for e, p in zip(ema, leaves(state.params), strict=True)]
    for got, want in zip(leaves(state.ema_params), ema, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # Without the option the decay stays 0.999 from the first update (ema_decay_at gives the Python float, so the
    # compiled update is the one the shipped zoo trained with). CFG, placed as `train` places it: the program of
    # test_train_step_is_pure_and_keyed_by_step.
    assert not CFG.ema_warmup
    start, data = jax.device_put((train.init_state(CFG), random_data()), train.replicated_sharding())
    one, _ = train.train_step(CFG, start, data, jax.device_put(key, train.replicated_sharding()))
    for e, e0, p in zip(leaves(one.ema_params), leaves(start.ema_params), leaves(one.params), strict=True):
        np.testing.assert_allclose(e, 0.999 * np.float64(e0) + 0.001 * np.float64(p), rtol=1e-6, atol=1e-7)


def test_train_rejects_bad_data(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        train.train(CFG, np.zeros((4, 8, 8, 3), np.float32), tmp_path, progress=False)


# ---------------------------------------------------------------------------------------------- checkpoints


def test_save_load_params_bit_exact(tmp_path, reference):
    params = reference.ema_params
    train.save_params(tmp_path / "p", params)
    like = jax.eval_shape(lambda: nets.init_unet(NET, jax.random.PRNGKey(0), (8, 8, 1)))
    assert_trees_equal(train.load_params(tmp_path / "p", like), params)
    assert_trees_equal(train.load_params(tmp_path / "p", params), params)  # concrete `like` too
    # Overwriting an existing directory works.
    zeros = jax.tree.map(jnp.zeros_like, params)
    train.save_params(tmp_path / "p", zeros)
    assert_trees_equal(train.load_params(tmp_path / "p", params), zeros)
    with pytest.raises(FileNotFoundError):
        train.load_params(tmp_path / "missing", params)


def test_checkpoint_manager_roundtrip_and_no_overwrite(tmp_path, reference):
    state = train.train(CFG, random_data(), tmp_path, progress=False, stop_at=10)
    assert int(state.step) == 10
    assert sorted(int(p.name) for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == [5, 10]
    assert_trees_equal(train.restore_state(tmp_path, CFG), state)
    assert int(train.restore_state(tmp_path, CFG, step=5).step) == 5
    assert [s for s, _ in train.read_log(tmp_path)] == [10]
    with pytest.raises(ValueError, match="resume"):
        train.train(CFG, random_data(), tmp_path, progress=False)
    other = train.TrainConfig.from_dict({**CFG.to_dict(), "seed": 1})
    with pytest.raises(ValueError, match="different config"):
        train.train(other, random_data(), tmp_path, resume=True, progress=False)
    # Resuming reaches the uninterrupted run; only the last two checkpoints are kept.
    final = train.train(CFG, random_data(), tmp_path, resume=True, progress=False, log_every=10)
    assert_trees_close(final, reference, atol=1e-6)
    assert sorted(int(p.name) for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == [35, 40]
    assert [s for s, _ in train.read_log(tmp_path)] == [10, 20, 30, 40]


@pytest.mark.slow  # a training subprocess killed mid-run, then resumed: two processes compile training (about 18 s)
def test_resume_after_sigkill(tmp_path, data_file, reference):
    out = tmp_path / "run"
    script = f"""
    import time
    orig = train.train_step
    def slow_step(*args):
        time.sleep(0.05)  # make sure the run is still going when it gets killed
        return orig(*args)
    train.train_step = slow_step
    cfg = train.TrainConfig.from_dict({CFG.to_dict()!r})
    train.train(cfg, np.load({str(data_file)!r}), {str(out)!r}, progress=False, log_every=1)
    print("FINISHED")
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    ckpt = out / "ckpt"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if ckpt.exists() and any(p.name.isdigit() for p in ckpt.iterdir()):
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it was killed: {proc.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = max(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    assert 5 <= done < CFG.steps
    final = train.train(CFG, np.load(data_file), out, resume=True, progress=False, log_every=1)
    assert int(final.step) == CFG.steps
    assert_trees_close(final, reference, atol=1e-6)
    steps = [s for s, _ in train.read_log(out)]
    assert steps == list(range(1, CFG.steps + 1))  # lines past the restored checkpoint were dropped


# ---------------------------------------------------------------------------------------------- data parallel


@pytest.mark.slow  # a subprocess with four host devices compiles training again (about 19 s on 2 cores)
def test_data_parallel_matches_single_device(tmp_path, data_file):
    out = tmp_path / "dp"
    script = f"""
    import jax.numpy as jnp
    assert len(jax.devices()) == 4, jax.devices()
    cfg = train.TrainConfig.from_dict({CFG.to_dict()!r})
    data = np.load({str(data_file)!r})
    sharding = train.data_sharding()
    assert len(sharding.device_set) == 4
    shards = jax.device_put(jnp.zeros((16, 8, 8, 1), jnp.float32), sharding).addressable_shards
    assert len(shards) == 4 and all(s.data.shape == (4, 8, 8, 1) for s in shards)
    state = train.train(cfg, data, {str(out)!r}, progress=False, stop_at=5)
    # Compiled program of those steps (cached): gradients are summed over the data shards.
    args = jax.device_put((state, data, jax.random.PRNGKey(0)), train.replicated_sharding())
    assert "all-reduce" in train.train_step.lower(cfg, *args).compile().as_text()
    assert len(state.params["conv_in"]["kernel"].sharding.device_set) == 4
    np.savez({str(tmp_path / "dp.npz")!r}, *[np.asarray(x) for x in jax.tree.leaves(state.params)])
    bad = train.TrainConfig.from_dict({{**cfg.to_dict(), "batch_size": 6}})
    try:
        train.train(bad, data, {str(tmp_path / "bad")!r}, progress=False)
    except ValueError as e:
        assert "divisible" in str(e), e
    else:
        raise AssertionError("batch_size 6 on 4 devices was accepted")
    print("OK")
    """
    res = run_script(
        script, env={"XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"}
    )
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-4000:]
    single = train.train(CFG, np.load(data_file), tmp_path / "single", progress=False, stop_at=5)
    with np.load(tmp_path / "dp.npz") as f:
        dp = [f[f"arr_{i}"] for i in range(len(f.files))]
    ref = leaves(single.params)
    assert len(dp) == len(ref)
    for x, y in zip(dp, ref, strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)
