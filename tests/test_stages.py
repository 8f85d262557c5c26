"""Tests of omsjax.stages: timestep clustering, the multi-decoder U-Net, masked multi-stage training, models."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import omsjax
from omsjax import nets, noise, oracles, presets, stages
from omsjax import train as train_mod
from omsjax.stages import clustering, training

NS = noise.vp_linear()
KEY = jax.random.PRNGKey(0)

# One small network for every network test, so that they share compiled programs.
NET = stages.MultiStageConfig(
    boundaries=(0.3, 0.6), decoder_channels=(8, 6, 4), encoder_channels=8, channel_mults=(1,), groups=4
)
IMAGE = (4, 4, 1)
CFG = stages.StageTrainConfig(net=NET, steps=20, batch_size=8, warmup=0, lr=1e-2, image_shape=IMAGE)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def trees_equal(a, b):
    la, lb = leaves(a), leaves(b)
    assert len(la) == len(lb)
    return all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(la, lb, strict=True))


@pytest.fixture(scope="module")
def params():
    """Float64 parameters with every leaf perturbed, so that no output conv is zero and the decoders differ."""
    rng = np.random.default_rng(1)
    p = stages.init_params(NET, KEY, IMAGE)  # the program of stages.init_state(CFG)
    return jax.tree.map(lambda w: jnp.asarray(np.asarray(w, np.float64) + 0.2 * rng.standard_normal(w.shape)), p)


# ----------------------------------------------------------------------------------------------------------------
# Clustering
# ----------------------------------------------------------------------------------------------------------------


def two_clusters(n=200, dim=64, m=1.0, s=0.1, seed=0):
    """Points m * (+-1, ..., +-1) + s N(0, I): two tight clusters far apart."""
    rng = np.random.default_rng(seed)
    signs = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)[:, None]
    return signs * m + s * rng.standard_normal((n, dim))


def t_at_snr(r):
    """The VP time where alpha_t / sigma_t = r."""
    return float(NS.t_of_lambda(np.log(r)))


def test_similarity_matches_naive_transcription():
    data = two_clusters(n=60, dim=16)
    den = oracles.EmpiricalDenoiser(jnp.asarray(data))
    grid = np.array([0.02, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0])
    num, eta = 50, 2 / 255  # the default eta
    sim = stages.similarity_matrix(den, NS, data, grid, KEY, num_samples=num, batch_size=16)
    # Naive: eps* = (x - alpha x0*) / sigma straight from the denoiser, sample by sample, in float64.
    sim_x0 = stages.similarity_matrix(den, NS, data, grid, KEY, num_samples=num, batch_size=16, prediction="x0")
    agree = np.zeros((2, 7, 7))
    for i in range(num):
        x0, eps = clustering._draw(jnp.asarray(data), KEY, jnp.asarray(i))
        eps_hat, x0_hat = [], []
        for t in grid:
            a, s = float(np.exp(NS.log_alpha(t))), float(NS.sigma(t))
            x = a * x0 + s * eps
            x0_hat.append(np.asarray(den.x0(NS, x[None], t))[0])
            eps_hat.append((np.asarray(x) - a * x0_hat[-1]) / s)
        for ia, ib in itertools.product(range(7), range(7)):
            agree[0, ia, ib] += np.mean(np.abs(eps_hat[ia] - eps_hat[ib]) <= eta)
            agree[1, ia, ib] += np.mean(np.abs(x0_hat[ia] - x0_hat[ib]) <= eta)
    np.testing.assert_allclose(sim, agree[0] / num, rtol=0, atol=1.5 / (num * 16))
    np.testing.assert_allclose(sim_x0, agree[1] / num, rtol=0, atol=1.5 / (num * 16))
    assert np.sum((sim > 0.01) & (sim < 0.99)) >= 10 and not np.array_equal(sim, sim_x0)  # not trivial

    # Batching does not change the result (per-sample keys, integer counts): exact.
    np.testing.assert_array_equal(sim, stages.similarity_matrix(den, NS, data, grid, KEY, num_samples=num))
    np.testing.assert_array_equal(sim, sim.T)
    np.testing.assert_array_equal(np.diag(sim), 1.0)
    block = stages.similarity(den, NS, data, grid[:3], grid[4:], KEY, num_samples=num, batch_size=16)
    np.testing.assert_array_equal(block, sim[:3, 4:])
    with pytest.raises(ValueError, match="prediction"):
        stages.similarity_matrix(den, NS, data, grid, KEY, num_samples=5, prediction="v")
    with pytest.raises(ValueError, match="times_a"):
        stages.similarity_matrix(den, NS, data, np.array([0.0, 0.5]), KEY, num_samples=5)
    with pytest.raises(ValueError, match="eta"):
        stages.similarity_matrix(den, NS, data, grid, KEY, num_samples=5, eta=-1.0)


def test_clustering_two_separated_clusters():
    """The two boundaries land where the geometry of the data says the optimal denoiser changes regime.

    With x_t = alpha x0 + sigma eps and r = alpha / sigma, eps*_t - eps = r (x0 - x0*(x_t)); the posterior log-odds
    of the true point against another at distance d are r^2 d^2 / 2 + r d z, z ~ N(0, 1). So:
    - while r d_min >= 12 the posterior sits on the true point to ~e^-12 for every pair (memorisation): eps*_t =
      eps to far below eta, the similarity to the t ~ 0 denoiser is 1, and t1 cannot come earlier;
    - once r d_nn <= 1 the posterior spreads over the cluster: eps*_t - eps ~ r s per pixel >> eta, the similarity
      collapses, and the running mean drops below alpha before then: t1 <= t(r d_nn = 1);
    - the cluster is decided where r |mu_1 - mu_2| ~ 1: the denoiser jumps between the cluster means there, so
      that noise level belongs to the middle stage: t1 < t_dec < t2; above it x0* tends to the data mean and
      eps*_t to eps + r (x0 - mean), the t = 1 denoiser (r(1) m < eta).
    """
    data = two_clusters()
    den = oracles.EmpiricalDenoiser(jnp.asarray(data))
    grid = np.linspace(0.01, 1.0, 100)
    sim = stages.similarity_matrix(den, NS, data, grid, KEY, num_samples=256)
    t1, t2 = stages.boundaries(sim, grid, alpha=0.8)
    assert 0 < t1 < t2 < 1

    dist = np.linalg.norm(data[:, None] - data[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    d_min, d_nn = dist.min(), np.median(dist.min(axis=1))
    mu = [data[::2].mean(0), data[1::2].mean(0)]
    t_memorised = t_at_snr(12.0 / d_min)
    t_spread = t_at_snr(1.0 / d_nn)
    t_decision = t_at_snr(1.0 / np.linalg.norm(mu[0] - mu[1]))
    assert grid[0] < t_memorised < t_spread < t_decision < 1.0  # the regimes exist on this grid, in this order
    assert t_memorised <= t1 <= t_spread
    assert t1 < t_decision < t2
    # The middle stage is unlike both ends; the first is like the t ~ 0 denoiser, the last like the t = 1 one.
    stage = np.asarray(stages.stage_of((t1, t2), grid))
    assert sim[stage == 0, 0].mean() >= 0.8 > sim[stage == 1, 0].mean()
    assert sim[stage == 2, -1].mean() >= 0.8 > sim[stage == 1, -1].mean()


def naive_boundaries(sim, alpha):
    """The rule of `stages.boundaries`, transcribed with loops."""
    n = len(sim)
    k1 = -1
    for j in range(n):
        if np.mean(sim[: j + 1, 0]) < alpha:
            break
        k1 = j
    k2 = n - 2
    for j in range(n - 2, -1, -1):
        if np.mean(sim[j + 1 :, -1]) < alpha:
            break
        k2 = j
    return k1, k2


def test_boundaries_rule():
    grid = np.linspace(0.05, 1.0, 12)
    block = np.zeros((12, 12))
    for a, b in ((0, 3), (3, 8), (8, 12)):
        block[a:b, a:b] = 1.0
    # alpha = 1: stage 0 is the first block exactly, stage 2 the last.
    assert stages.boundaries(block, grid, 1.0) == (grid[2], grid[7])
    assert tuple(stages.partition(block, 3, grid).times) == (grid[2], grid[7])
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(40):
        a = rng.uniform(0, 1, (10, 10))
        sim = (a + a.T) / 2
        np.fill_diagonal(sim, 1.0)
        alpha = rng.uniform(0.5, 0.9)
        k1, k2 = naive_boundaries(sim, alpha)
        g = np.sort(rng.uniform(0, 1, 10))
        if k1 < k2:
            assert stages.boundaries(sim, g, alpha) == (g[k1], g[k2])
            checked += 1
        else:
            with pytest.raises(ValueError, match="no middle stage"):
                stages.boundaries(sim, g, alpha)
    assert checked >= 5
    with pytest.raises(ValueError, match="no middle stage"):
        stages.boundaries(np.ones((6, 6)), grid[:6], 0.9)
    with pytest.raises(ValueError, match="alpha"):
        stages.boundaries(block, grid, 1.5)
    with pytest.raises(ValueError, match="grid"):
        stages.boundaries(block, grid[::-1], 0.9)


def test_partition_equals_brute_force():
    rng = np.random.default_rng(0)
    for n, k in [(5, 1), (5, 2), (6, 3), (7, 3), (8, 4), (8, 8), (7, 2)]:
        for _ in range(3):
            a = rng.uniform(0, 1, (n, n))
            sim = (a + a.T) / 2
            best = max((stages.partition_score(sim, cuts), cuts) for cuts in itertools.combinations(range(1, n), k - 1))
            part = stages.partition(sim, k)
            assert part.score == pytest.approx(best[0], abs=1e-12)
            assert tuple(part.starts) == best[1]
            assert stages.partition_score(sim, part.starts) == pytest.approx(part.score, abs=1e-12)
    with pytest.raises(ValueError, match="num_stages"):
        stages.partition(np.eye(4), 5)


def test_uniform_boundaries():
    tu = np.array(stages.uniform_boundaries(NS, 4, "time_uniform"))
    lu = np.array(stages.uniform_boundaries(NS, 4, "logSNR"))
    for b in (tu, lu):
        assert b.shape == (3,) and np.all(np.diff(b) > 0) and 0 < b[0] and b[-1] < 1
    edges_t = np.concatenate([[NS.default_t_end], tu, [NS.t_max]])
    np.testing.assert_allclose(np.diff(edges_t), np.diff(edges_t)[0], rtol=1e-12)
    edges_l = NS.lam(np.concatenate([[NS.default_t_end], lu, [NS.t_max]]))
    np.testing.assert_allclose(np.diff(edges_l), np.diff(edges_l)[0], rtol=1e-9)
    assert stages.uniform_boundaries(NS, 1) == ()


# ----------------------------------------------------------------------------------------------------------------
# Network, model, checkpoints
# ----------------------------------------------------------------------------------------------------------------


@jax.jit
def direct(params, x, t):
    """The output of every stage's decoder, each called directly (no switch)."""
    h, skips, emb = stages.encode(NET, params, x, t)
    return [stages.decode(NET, params, k, h, skips, emb, x.shape[-1]) for k in range(NET.num_stages)]


def test_switch_picks_the_stage_decoder(params):
    x = jax.random.normal(jax.random.PRNGKey(2), (3, *IMAGE), jnp.float64)
    switched = jax.jit(stages.stage_apply_fn(NET))
    model_fn = jax.jit(stages.apply_fn(NET))
    outs = []
    for k, t in enumerate([0.15, 0.45, 0.8]):
        tb = jnp.full((3,), t, jnp.float64)
        want = direct(params, x, tb)[k]
        np.testing.assert_allclose(switched(params, x, tb, jnp.int32(k)), want, rtol=0, atol=1e-12)
        np.testing.assert_allclose(model_fn(params, x, tb), want, rtol=0, atol=1e-12)
        outs.append(np.asarray(want))
    assert all(np.abs(a - b).max() > 1e-3 for a, b in itertools.combinations(outs, 2))  # the decoders differ
    # A mixed batch: every sample through its own stage's decoder (a boundary belongs to the lower stage).
    t_mixed = jnp.array([0.6, 0.05, 0.3 + 1e-9], jnp.float64)
    got, each = model_fn(params, x, t_mixed), direct(params, x, t_mixed)
    for i, k in enumerate([1, 0, 1]):
        np.testing.assert_allclose(got[i], each[k][i], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(stages.stage_of(NET.boundaries, t_mixed), [1, 0, 1])


def test_stage_with_encoder_width_is_the_plain_unet(params):
    """Encoder + a decoder as wide as the encoder is `nets.UNet` with the same layers: same function, same size."""
    unet = nets.UNetConfig(channels=8, channel_mults=(1,), groups=4)
    assert NET.decoder_channels[0] == unet.channels
    merged = {**params["encoder"], **params["decoder_0"]}
    like = jax.eval_shape(lambda: nets.init_unet(unet, KEY, IMAGE))
    assert jax.tree.structure(merged) == jax.tree.structure(like)
    assert stages.active_params(params, 0) == nets.param_count(like)
    x = jax.random.normal(jax.random.PRNGKey(5), (2, *IMAGE), jnp.float64)
    t = jnp.array([0.1, 0.2], jnp.float64)
    want = jax.jit(nets.unet_apply_fn(unet))(merged, x, t)
    np.testing.assert_allclose(direct(params, x, t)[0], want, rtol=0, atol=1e-12)


@pytest.mark.slow
def test_model_is_differentiable(params):
    """Reverse mode through the scan + switch (e.g. timestep optimisation through the sampler); ~10 s to compile."""
    x = jax.random.normal(jax.random.PRNGKey(2), (3, *IMAGE), jnp.float64)
    t = jnp.array([0.6, 0.05, 0.9], jnp.float64)

    def f(x):
        return jnp.sum(stages.apply_fn(NET)(params, x, t) ** 2)

    g = jax.grad(f)(x)
    assert g.shape == x.shape and bool(jnp.all(jnp.isfinite(g)))
    v = jax.random.normal(jax.random.PRNGKey(3), x.shape, jnp.float64)
    fd = (f(x + 1e-6 * v) - f(x - 1e-6 * v)) / 2e-6
    np.testing.assert_allclose(jnp.vdot(g, v), fd, rtol=1e-6)


def test_model_samples_with_ddim(params):
    model = stages.to_model(NET, params, latency=2.5, name="ms")
    assert isinstance(model, omsjax.Model) and model.parameterization == "noise" and model.latency == 2.5
    x_T = jax.random.normal(jax.random.PRNGKey(3), (5, *IMAGE), jnp.float64)
    out = omsjax.sample(model, NS, presets.ddim(NS, 4), x_T)
    assert out.shape == x_T.shape and out.dtype == jnp.float64
    assert bool(jnp.all(jnp.isfinite(out)))
    assert float(jnp.abs(out - x_T).max()) > 1e-3


def test_param_counts_and_flops(params):
    enc = nets.param_count(params["encoder"])
    counts = [stages.active_params(params, k) for k in range(3)]
    assert counts == [enc + nets.param_count(params[f"decoder_{k}"]) for k in range(3)]
    assert counts[0] > counts[1] > counts[2]  # decoder widths 8 > 6 > 4
    probs = CFG.probs
    np.testing.assert_allclose(sum(probs), 1.0)
    np.testing.assert_allclose(probs, np.diff(CFG.edges) / (1 - train_mod.T_EPS))
    assert stages.mean_active_params(CFG, params) == pytest.approx(float(np.dot(probs, counts)))
    f0 = stages.forward_flops(NET, params, IMAGE, stage=0)
    f2 = stages.forward_flops(NET, params, IMAGE, stage=2)
    assert f0 > f2 > 0
    with pytest.raises(ValueError, match="stage"):
        stages.active_params(params, 3)


def test_checkpoint_round_trip(tmp_path, params):
    p32 = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    stages.save_checkpoint(tmp_path / "ms", CFG, p32)
    cfg, loaded = stages.load_checkpoint(tmp_path / "ms")
    assert cfg == CFG
    assert trees_equal(loaded, p32)
    meta = json.loads((tmp_path / "ms" / "config.json").read_text())
    assert meta["param_count"] == nets.param_count(p32)
    with pytest.raises(FileNotFoundError):
        stages.load_checkpoint(tmp_path / "nothing")


def test_configs_round_trip_and_validate():
    assert stages.MultiStageConfig.from_dict(json.loads(json.dumps(NET.to_dict()))) == NET
    cfg = stages.StageTrainConfig(net=NET, steps=3, stage_probs=(0.5, 0.25, 0.25))
    again = stages.StageTrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and hash(again) == hash(cfg)
    base = NET.to_dict()
    bad_net = {
        "boundaries": [0.6, 0.3],
        "decoder_channels": [8, 4],
        "encoder_channels": 0,
        "groups": 0,
        "channel_mults": [],
    }
    for field, value in bad_net.items():
        with pytest.raises(ValueError, match=field):
            stages.MultiStageConfig.from_dict(dict(base, **{field: value}))
    with pytest.raises(ValueError, match="boundaries"):
        stages.MultiStageConfig(boundaries=(0.5, 1.0), decoder_channels=(4, 4, 4))
    with pytest.raises(ValueError, match="unknown"):
        stages.MultiStageConfig.from_dict(dict(base, width=3))
    good = {"net": NET, "steps": 3}
    bad_train = {"steps": 0, "stage_probs": (0.5, 0.5), "image_shape": (3, 4), "ema_decay": 1.0, "lr": -1.0}
    for field, value in bad_train.items():
        with pytest.raises(ValueError, match=field):
            stages.StageTrainConfig(**dict(good, **{field: value}))
    low = stages.MultiStageConfig(boundaries=(1e-6,), decoder_channels=(4, 4))
    with pytest.raises(ValueError, match="boundaries"):
        stages.StageTrainConfig(net=low, steps=3)


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def test_train_step_moves_only_the_active_decoder():
    rng = np.random.default_rng(0)
    data = jnp.asarray(rng.uniform(-1, 1, (32, *IMAGE)), jnp.float32)
    key = jax.random.PRNGKey(4)
    state = stages.init_state(CFG)
    for k in (0, 1, 2, 0):  # every decoder gets non-zero weights and Adam moments first
        state, _ = stages.train_step(CFG, state, data, key, k)
    for k in (1, None):
        before = state
        state, metrics = stages.train_step(CFG, state, data, key, k)
        k = int(metrics["stage"]) if k is None else k
        assert int(metrics["stage"]) == k and bool(jnp.isfinite(metrics["loss"]))
        for name in before.params:
            parts = [(before.params, state.params), (before.opt_state, state.opt_state)]
            parts.append((before.ema_params, state.ema_params))
            moved = [not trees_equal(a[name], b[name]) for a, b in parts]
            if name in ("encoder", f"decoder_{k}"):
                assert all(moved), (name, moved)
            else:
                assert not any(moved), (name, moved)
    counts = [int(state.opt_state[f"decoder_{k}"].count) for k in range(3)]
    assert sum(counts) == int(state.step) and int(state.opt_state["encoder"].count) == int(state.step)
    assert training._train_step._cache_size() == 3  # one program per stage, drawn or forced
    with pytest.raises(ValueError, match="stage"):
        stages.train_step(CFG, state, data, key, 3)


def test_ema_warmup_counts_each_groups_own_updates():
    cfg = stages.StageTrainConfig(net=NET, steps=3, batch_size=8, warmup=0, image_shape=IMAGE, ema_warmup=True)
    assert stages.StageTrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="ema_warmup"):
        stages.StageTrainConfig(net=NET, steps=3, ema_warmup=1)
    data = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (16, *IMAGE)), jnp.float32)
    state, key = stages.init_state(cfg), jax.random.PRNGKey(5)
    ema = {name: [np.asarray(x, np.float64) for x in leaves(p)] for name, p in state.params.items()}
    updates = {name: 0 for name in state.params}
    for k in (0, 1, 0):
        state, _ = stages.train_step(cfg, state, data, key, k)
        for name in ("encoder", f"decoder_{k}"):
            d = min(0.999, (1 + updates[name]) / (10 + updates[name]))  # the group's own update count
            new = [np.asarray(x, np.float64) for x in leaves(state.params[name])]
            ema[name] = [d * e + (1 - d) * p for e, p in zip(ema[name], new, strict=True)]
            updates[name] += 1
    assert updates == {"encoder": 3, "decoder_0": 2, "decoder_1": 1, "decoder_2": 0}
    for name, want in ema.items():
        for got, w in zip(leaves(state.ema_params[name]), want, strict=True):
            np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-7)


def test_train_loop_reduces_loss():
    rng = np.random.default_rng(1)
    patterns = np.sign(rng.standard_normal((2, *IMAGE)))
    data = (patterns[np.arange(32) % 2] + 0.05 * rng.standard_normal((32, *IMAGE))).astype(np.float32)
    state, log = stages.train(CFG, data, progress=False, log_every=10)
    assert int(state.step) == CFG.steps and [r["step"] for r in log] == [10, 20]
    assert sum(log[-1]["steps_per_stage"]) == 10
    # An untrained network outputs 0 (loss E eps^2 = 1); the loss falls from the first window to the second.
    assert np.isfinite(log[-1]["loss"]) and log[-1]["loss"] < log[0]["loss"] < 1.0
