"""Timestep optimisation: the parameterisation, the error bound against a closed form on Gaussian data, the
gradient through `omsjax.sample` against finite differences, and the optimisers."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.special

import omsjax
from omsjax import noise, oracles, presets, spacing
from omsjax import timesteps as T
from omsjax.workflows import timesteps_run

VP = noise.vp_linear()
EDM = noise.edm()
D, M, S = 4, 0.3, 0.5  # Gaussian data N(M, S^2 I) in D dimensions


def _gaussian():
    return oracles.GaussianMixture.create(np.full((1, D), M), [S], [1.0])


# ------------------------------------------------------------------------------------------ parameterisation


@pytest.mark.parametrize("ns", [VP, EDM], ids=["vp", "edm"])
@pytest.mark.parametrize("base", T.SPACINGS)
def test_times_strictly_decrease_with_fixed_end_points(ns, base):
    t0, t1 = (1.0, 1e-3) if ns is VP else (80.0, 0.002)
    u = 30.0 * jax.random.normal(jax.random.PRNGKey(0), (50, 7), jnp.float64)  # wild logits
    ts = np.asarray(jax.vmap(lambda v: T.times(ns, v, t0, t1, base))(u))
    assert ts.shape == (50, 8)
    assert np.all(ts[:, 0] == t0) and np.all(ts[:, -1] == t1)
    assert np.all(np.diff(ts, axis=1) < 0)
    # u = 0 is the base spacing; logits invert times.
    np.testing.assert_allclose(np.asarray(T.times(ns, jnp.zeros(5), t0, t1, base)),
                               spacing.time_steps(ns, 5, base, t_start=t0, t_end=t1), rtol=1e-10)  # fmt: skip
    want = spacing.time_steps(ns, 6, "karras" if base != "karras" else "logSNR", t_start=t0, t_end=t1)
    back = np.asarray(T.times(ns, jnp.asarray(T.logits(ns, want, base)), t0, t1, base))
    np.testing.assert_allclose(back, want, rtol=1e-10)


def test_valid_mask_and_errors():
    ts = np.asarray(T.times(VP, jnp.zeros(6), 1.0, 1e-3, valid=jnp.arange(6, dtype=jnp.int32) < 3))
    np.testing.assert_allclose(ts[:4], spacing.time_steps(VP, 3, "logSNR"), rtol=1e-12)
    assert np.all(ts[4:] == 1e-3)
    with pytest.raises(ValueError, match="spacing must be one of"):
        T.times(VP, jnp.zeros(3), 1.0, 1e-3, "cosine")
    with pytest.raises(ValueError, match="strictly decreasing"):
        T.logits(VP, [1.0, 0.5, 0.5, 1e-3])
    with pytest.raises(ValueError, match="not representable"):
        T.logits(VP, [1.0, 1.0 - 1e-12, 1e-3])


# ---------------------------------------------------------------------------------- the bound, closed form


def _g_closed(lam):
    """E ||dD/dlambda||_RMS on the ODE for N(M, S^2 I) data under the linear VP schedule (float64)."""
    a = 1.0 / (1.0 + np.exp(-2.0 * lam))  # alpha^2
    f = S**2 * np.sqrt(a) / np.sqrt(a * S**2 + 1.0 - a)  # D = M + f(lambda) z along the ODE
    df = f * (1.0 - a) / (1.0 + a * (S**2 - 1.0))
    e_rms = math.sqrt(2.0 / D) * math.exp(scipy.special.gammaln((D + 1) / 2) - scipy.special.gammaln(D / 2))
    return e_rms * np.abs(df)


def _bound_closed(ts):
    lam = np.asarray(VP.lam(np.asarray(ts, np.float64)))
    tot = 0.0
    for lo, hi in zip(lam[:-1], lam[1:], strict=True):
        tot += scipy.integrate.quad(lambda mu, hi=hi: _g_closed(mu) * (np.exp(hi) - np.exp(mu)), lo, hi,
                                    epsabs=0, epsrel=1e-11, limit=200)[0]  # fmt: skip
    return float(VP.sigma(np.float64(ts[-1]))) * tot


def test_bound_estimators_are_unbiased_on_gaussian_data():
    gm = _gaussian()
    model = gm.model(VP)
    data = gm.sample(jax.random.PRNGKey(0), 100_000)
    ts = spacing.time_steps(VP, 5, "time_uniform")
    want = _bound_closed(ts)
    mean, se = T.bound_mc(model, VP, ts, data, jax.random.PRNGKey(1), num_samples=4000)
    assert abs(float(mean) - want) < 4 * float(se) and float(se) < 0.05 * want
    # The tabulated g: unbiased at every grid point, and `bound` of the exact table is the closed form.
    grid = np.linspace(float(VP.lam(1.0)), float(VP.lam(1e-3)), 7)
    g, g_se = T.estimate_g(model, VP, data, grid, jax.random.PRNGKey(2), num_samples=2000)
    assert np.all(np.abs(np.asarray(g) - _g_closed(grid)) < 4 * np.asarray(g_se))
    fine = np.linspace(grid[0], grid[-1], 20_001)
    got = float(T.bound(VP, jnp.asarray(ts), fine, _g_closed(fine), nodes=32))
    assert got == pytest.approx(want, rel=1e-6)


def test_bound_dominates_the_on_trajectory_error():
    """Along the exact ODE of Gaussian data D = M + f(lambda) z, so DDIM's combination evaluated on the trajectory
    errs by sigma_N z sum_i int e^lambda (f(lambda) - f(lambda_{i-1})) dlambda. f is monotone here, so the
    triangle inequality behind B is an equality: the bound is tight for Gaussian data."""
    ts = spacing.time_steps(VP, 4, "logSNR")
    lam = np.asarray(VP.lam(ts))

    def f(x):
        a = 1.0 / (1.0 + np.exp(-2.0 * x))
        return S**2 * np.sqrt(a) / np.sqrt(a * S**2 + 1.0 - a)

    local = sum(scipy.integrate.quad(lambda x, lo=lo: np.exp(x) * (f(x) - f(lo)), lo, hi)[0]
                for lo, hi in zip(lam[:-1], lam[1:], strict=True))  # fmt: skip
    e_rms = math.sqrt(2.0 / D) * math.exp(scipy.special.gammaln((D + 1) / 2) - scipy.special.gammaln(D / 2))
    err = float(VP.sigma(np.float64(ts[-1]))) * abs(local) * e_rms
    assert err > 0 and err == pytest.approx(_bound_closed(ts), rel=1e-8)


def test_optimize_bound_lowers_the_bound():
    fine = np.linspace(float(VP.lam(1.0)), float(VP.lam(1e-3)), 4001)
    g = _g_closed(fine)
    init = spacing.time_steps(VP, 5, "time_uniform")
    res = T.optimize_bound(VP, init, fine, g, steps=300, lr=0.05)
    assert res.ts[0] == 1.0 and res.ts[-1] == 1e-3 and np.all(np.diff(res.ts) < 0)
    assert res.history[-1] < 0.7 * res.history[0]
    assert res.history[-1] == pytest.approx(_bound_closed(res.ts), rel=1e-4)
    # The minimiser is a stationary point: no spacing of the same length does better.
    for name in T.SPACINGS:
        assert _bound_closed(res.ts) <= _bound_closed(spacing.time_steps(VP, 5, name)) * (1 + 1e-6)


# ---------------------------------------------------------------------------- the trajectory objective


def _gmm():
    return oracles.GaussianMixture.create([[1.0, -0.5], [-1.0, 0.5]], [0.3, 0.2], [0.4, 0.6])


@pytest.mark.parametrize("name", ["ddim", "dpm_solver_pp", "unipc"])
def test_gradient_through_sample_matches_finite_differences(name):
    model = _gmm().model(VP)
    sched = presets.preset(name, VP, 4)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (8, 2), jnp.float64)
    x_ref = jax.random.normal(jax.random.PRNGKey(1), (8, 2), jnp.float64)
    u0 = jnp.asarray(T.logits(VP, np.asarray(sched.ts)))

    def loss(u):
        return T.trajectory_loss(model, VP, sched._replace(ts=T.times(VP, u, 1.0, 1e-3)), x_T, x_ref)

    grad = np.asarray(jax.grad(loss)(u0))
    h = 1e-6
    fd = [(float(loss(u0.at[i].add(h))) - float(loss(u0.at[i].add(-h)))) / (2 * h) for i in range(u0.shape[0])]
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-9)
    assert np.max(np.abs(grad)) > 1e-4


@pytest.mark.slow  # a reproduction: an optimisation whose gain holds on held-out noise (about 10 s)
def test_optimize_trajectory_generalises_to_held_out_noise():
    gm = _gmm()
    model = gm.model(VP)
    sched = presets.dpm_solver_pp(VP, 3, 2)
    eps_fn = lambda x, t: gm.eps(VP, x, t)  # noqa: E731

    def ref(key, n):
        x = jax.random.normal(key, (n, 2), jnp.float64)
        return x, oracles.reference_solution(eps_fn, VP, x, 1.0, 1e-3, rtol=1e-9, atol=1e-9)

    x_T, x_ref = ref(jax.random.PRNGKey(0), 64)
    held = ref(jax.random.PRNGKey(1), 64)
    res = T.optimize_trajectory(model, VP, sched, (x_T, x_ref), heldout=held, steps=150, lr=0.05, batch=32)
    assert res.ts[0] == 1.0 and res.ts[-1] == 1e-3 and np.all(np.diff(res.ts) < 0)
    assert res.history[-1] < 0.5 * res.history[0]
    assert res.heldout["after"] < 0.5 * res.heldout["before"]
    with pytest.raises(ValueError, match="same shape"):
        T.optimize_trajectory(model, VP, sched, (x_T, x_ref[:3]))
    with pytest.raises(ValueError, match="steps must be"):
        T.optimize_trajectory(model, VP, sched, (x_T, x_ref), steps=0)


def test_frechet_loss_matches_the_scipy_frechet_distance_and_its_gradient():
    from omsjax import metrics

    rng = np.random.default_rng(0)
    a = rng.normal(size=(64, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5)) + 0.3
    mu_b, cov_b = np.mean(b, 0), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(cov_b)
    sqrt_b = jnp.asarray((v * np.sqrt(w)) @ v.T)

    def loss(x):
        return T.frechet_loss(x, jnp.asarray(mu_b), sqrt_b, jnp.asarray(np.trace(cov_b)))

    expected = metrics.frechet_distance(np.mean(a, 0), np.cov(a, rowvar=False), mu_b, cov_b)
    assert float(loss(jnp.asarray(a))) == pytest.approx(expected, rel=1e-6)
    grad = np.asarray(jax.grad(loss)(jnp.asarray(a)))
    h = 1e-6
    for i, j in [(0, 0), (5, 3), (63, 4)]:
        e = np.zeros_like(a)
        e[i, j] = h
        fd = (float(loss(jnp.asarray(a + e))) - float(loss(jnp.asarray(a - e)))) / (2 * h)
        assert grad[i, j] == pytest.approx(fd, rel=1e-4, abs=1e-8)


@pytest.mark.slow  # a reproduction: an FD optimisation on U-Net samples (about 10 s)
def test_optimize_fd_lowers_the_frechet_distance_on_held_out_noise():
    gm = _gmm()
    model = gm.model(VP)
    sched = presets.ddim(VP, 3)
    x_data = np.asarray(gm.sample(jax.random.PRNGKey(5), 20000))
    ref = (np.mean(x_data, 0), np.cov(x_data, rowvar=False))
    embed = lambda x: x  # noqa: E731
    res = T.optimize_fd(model, VP, sched, embed, ref, image_shape=(2,), batch=512, steps=60, lr=0.05,
                        key=jax.random.PRNGKey(6))  # fmt: skip
    assert res.ts[0] == 1.0 and res.ts[-1] == pytest.approx(float(sched.ts[-1])) and np.all(np.diff(res.ts) < 0)

    def held_fd(ts):
        x_T = jax.random.normal(jax.random.PRNGKey(7), (20000, 2), jnp.float64)
        out = np.asarray(omsjax.sample(model, VP, sched._replace(ts=jnp.asarray(ts)), x_T))
        return metrics_fd(out, ref)

    before, after = held_fd(np.asarray(sched.ts)), held_fd(res.ts)
    assert after < 0.5 * before
    with pytest.raises(ValueError, match="batch must be"):
        T.optimize_fd(model, VP, sched, embed, ref, image_shape=(2,), batch=1)


def metrics_fd(x, ref):
    from omsjax import metrics

    return metrics.frechet_distance(np.mean(x, 0), np.cov(x, rowvar=False), *ref)


# ----------------------------------------------------------------------------------------------- AYS-style


def test_ays_schedule_lowers_its_bound():
    gm = _gmm()
    model = gm.model(VP)
    data = gm.sample(jax.random.PRNGKey(0), 5000)
    grid = np.linspace(float(VP.lam(1.0)), float(VP.lam(1e-3)), 96)
    table = T.ays_table(model, VP, data, grid, jax.random.PRNGKey(1), num_samples=128)
    assert table.shape == (96, 128, 2)
    ts = T.ays_schedule(VP, 5, grid, table, t_start=1.0, t_end=1e-3)
    assert ts[0] == 1.0 and ts[-1] == 1e-3 and np.all(np.diff(ts) < 0) and len(ts) == 6
    start = spacing.time_steps(VP, 5, "logSNR")
    assert T.ays_bound(VP, ts, grid, table) < T.ays_bound(VP, start, grid, table)
    with pytest.raises(ValueError, match="nfe must be"):
        T.ays_schedule(VP, 96, grid, table, t_start=1.0, t_end=1e-3)


# ------------------------------------------------------------------------------------ phase 2 and the command


def _tree_files(path):
    import hashlib

    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}  # fmt: skip


def test_focus_loss_matches_the_vp_formula_at_the_focus_level():
    from omsjax import data, nets, train, zoo

    cfg = dataclasses.replace(zoo.named_config("tiny", steps=1), focus_times=(0.37,), focus_prob=1.0)
    params = nets.init_unet(cfg.net, jax.random.PRNGKey(0), cfg.image_shape, jnp.float32)
    batch = jnp.asarray(data.load_digits("train")[:16])
    key = jax.random.PRNGKey(3)
    got = float(train.loss_fn(cfg, params, batch, key))
    _, k_eps = jax.random.split(key)
    eps = jax.random.normal(k_eps, batch.shape, jnp.float32)
    t = np.float64(0.37)
    a, s = float(np.exp(VP.log_alpha(t))), float(VP.sigma(t))
    x = a * batch + s * eps
    f = nets.unet_apply_fn(cfg.net)(params, x, jnp.full((16,), 0.37, jnp.float32))
    assert got == pytest.approx(float(jnp.mean(jnp.square(f - eps))), rel=1e-5)
    # focus_prob 0 leaves the loss of the base config unchanged (same random stream).
    base = zoo.named_config("tiny", steps=1)
    off = dataclasses.replace(base, focus_times=(0.37,), focus_prob=0.0)
    assert float(train.loss_fn(off, params, batch, key)) == float(train.loss_fn(base, params, batch, key))
    with pytest.raises(ValueError, match="focus_prob"):
        dataclasses.replace(base, focus_prob=0.5)
    with pytest.raises(ValueError, match="times in"):
        dataclasses.replace(base, focus_times=(2.0,), focus_prob=0.5)


def test_finetune_touches_only_its_own_checkpoint(tiny_zoo, tmp_path):
    from omsjax import zoo

    path, _ = tiny_zoo
    before = _tree_files(path)
    models, ns, _ = zoo.load_zoo(path)
    ts = spacing.time_steps(ns, 3, "time_quadratic")
    ft, ft_dir = timesteps_run.finetune(path, 1, ts[:-1], tmp_path / "ft", steps=3, progress=False)
    assert _tree_files(path) == before  # the source zoo: bit-identical
    ft_models, _, manifest = zoo.load_zoo(ft_dir)
    assert len(ft_models) == 1 and manifest["models"][0]["name"] == "b-ft"
    assert manifest["models"][0]["config"]["focus_times"] == pytest.approx(list(ts[:-1]))
    changed = [not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(ft.params), jax.tree.leaves(models[1].params), strict=True)]  # fmt: skip
    assert any(changed)
    with pytest.raises(ValueError, match="not in the zoo"):
        timesteps_run.finetune(path, 5, ts[:-1], tmp_path / "bad", steps=1, progress=False)


def _optimize_steps_argv(path, out):
    return ["optimize-steps", "--zoo", str(path), "--solver", "DPM-Solver++(2M)", "--nfe", "3", "--method",
            "trajectory", "--distance", "pixels", "--steps", "4", "--train-samples", "8", "--heldout-samples", "4",
            "--num-samples", "24", "--out", str(out), "--quiet", "--json"]  # fmt: skip


@pytest.mark.slow(seconds=40)  # a whole optimize-steps run and an evaluate: about 40-90 s on 2 cores
def test_cli_optimize_steps(tiny_zoo, tmp_path, capsys):
    from omsjax import cli
    from omsjax.schedule import Schedule

    path, _ = tiny_zoo
    before = _tree_files(path)
    out = tmp_path / "opt"
    argv = _optimize_steps_argv(path, out)
    assert cli.main(argv) == 0
    rep = json.loads(capsys.readouterr().out)
    assert {p.name for p in out.iterdir()} >= {"schedule.json", "report.json", "timesteps.png"}
    sched = Schedule.from_json((out / "schedule.json").read_text(), num_models=2)
    assert np.all(np.diff(np.asarray(sched.ts)) < 0) and int(sched.nfe()) == 3
    np.testing.assert_allclose(np.asarray(sched.ts), rep["optimized"]["ts"], rtol=1e-12)
    assert set(rep["spacings"]) == set(T.SPACINGS) and rep["best_spacing"] in T.SPACINGS
    assert rep["phase1"][0]["train_mse_after"] <= rep["phase1"][0]["train_mse_before"]
    # `omsjax evaluate --schedule` reproduces the reported held-out FD.
    assert cli.main(["evaluate", "--zoo", str(path), "--schedule", str(out / "schedule.json"), "--num-samples",
                     "24", "--seed", "1000", "--ref-samples", "0", "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["fd"] == pytest.approx(rep["optimized"]["fd"], rel=1e-4)
    assert _tree_files(path) == before
    assert cli.main(argv[:-4] + ["--out", str(tmp_path / "ft"), "--rounds", "0", "--finetune"]) == 2


@pytest.mark.slow(seconds=170)
def test_cli_optimize_steps_bound_ays_and_finetune(tiny_zoo, tmp_path, capsys):
    """The bound and AYS methods, and one round of fine-tuning: the schedule then runs the fine-tuned model. Long CLI
    runs (three more optimisations, one with training; minutes on 2 cores), so they run with `-m slow`."""
    from omsjax import cli, zoo

    path, _ = tiny_zoo
    before = _tree_files(path)
    argv = _optimize_steps_argv(path, tmp_path / "opt")
    for method in ("bound", "ays"):
        assert cli.main(argv[:7] + ["--method", method, "--num-samples", "24", "--heldout-samples", "4", "--out",
                                    str(tmp_path / method), "--quiet", "--json"]) == 0  # fmt: skip
        r = json.loads(capsys.readouterr().out)
        assert r["method"] == method and np.all(np.diff(r["optimized"]["ts"]) < 0)
    ft_out = tmp_path / "ft"
    assert cli.main(argv[:-4] + ["--out", str(ft_out), "--finetune", "--finetune-steps", "2", "--quiet",
                                 "--json"]) == 0  # fmt: skip
    r = json.loads(capsys.readouterr().out)
    assert r["rounds"] == 1 and len(r["phase1"]) == 2 and r["finetuned_zoo"] == str(ft_out / "finetune0" / "zoo")
    assert len(zoo.load_zoo(r["finetuned_zoo"])[0]) == 1
    assert _tree_files(path) == before
    assert cli.main(argv[:-4] + ["--out", str(ft_out), "--rounds", "0", "--finetune"]) == 2
