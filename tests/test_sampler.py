"""The sampler: one compilation per schedule length, vmap/map/loop agreement, zoo dispatch, AFS, NaN on invalid."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import omsjax
from omsjax import noise, oracles, presets, spacing
from omsjax.schedule import stack


def _gmm(dim=6, k=3, seed=0):
    rng = np.random.RandomState(seed)
    return oracles.GaussianMixture.create(rng.randn(k, dim), 0.2 + 0.3 * rng.rand(k), np.full(k, 1.0 / k))


@pytest.fixture(scope="module")
def env():
    ns = noise.vp_linear()
    gmm = _gmm()
    x_T = jnp.asarray(np.random.RandomState(1).randn(5, 6))
    return ns, gmm, x_T


def _counting_model(gmm, ns, counter):
    def apply_fn(params, x, t):
        counter.append(1)  # runs once per trace
        return params.eps(ns, x, t)

    return omsjax.Model(apply_fn=apply_fn, params=gmm)


def test_three_presets_one_compilation(env):
    ns, gmm, x_T = env
    traces = []
    model = _counting_model(gmm, ns, traces)
    run = jax.jit(lambda s, x: omsjax.sample(model, ns, s, x))
    scheds = [
        presets.ddim(ns, 6),
        presets.dpm_solver_pp(ns, 6, 3, skip="time_uniform"),
        presets.unipc(ns, 6, 2, variant="bh1", skip="karras"),
        presets.dpm_solver(ns, 6, 3, skip="time_quadratic"),
    ]
    outs = [run(scheds[0], x_T)]
    # The model appears twice in the program: the first call (peeled out of the scan) and the scan body.
    per_compile = len(traces)
    assert per_compile == 2
    outs += [run(s, x_T) for s in scheds[1:]]
    assert len(traces) == per_compile, f"the model was traced {len(traces)} times"
    assert run._cache_size() == 1
    # The outputs really differ (the schedule is data, not ignored).
    for a in range(len(outs)):
        for b in range(a + 1, len(outs)):
            assert float(jnp.max(jnp.abs(outs[a] - outs[b]))) > 1e-4
    # A second call with any of them neither retraces nor recompiles.
    run(scheds[0], x_T)
    assert len(traces) == per_compile and run._cache_size() == 1
    # Same structure and dtypes for every family.
    structs = {jax.tree_util.tree_structure(s) for s in scheds}
    dtypes = {tuple(leaf.dtype for leaf in jax.tree_util.tree_leaves(s)) for s in scheds}
    assert len(structs) == 1 and len(dtypes) == 1


def test_vmap_map_loop_and_jit_agree(env):
    ns, gmm, x_T = env
    model = gmm.model(ns)
    scheds = [
        presets.ddim(ns, 5),
        presets.dpm_solver_pp(ns, 5, 2),
        presets.unipc(ns, 5, 3, variant="bh2"),
        presets.dpm_solver(ns, 5, 2, skip="time_uniform"),
    ]
    loop = np.stack([np.asarray(omsjax.sample(model, ns, s, x_T)) for s in scheds])
    stacked = stack(scheds)
    vm = jax.vmap(lambda s: omsjax.sample(model, ns, s, x_T))(stacked)
    np.testing.assert_allclose(np.asarray(vm), loop, rtol=1e-12, atol=1e-12)
    for method in ("vmap", "map"):
        out = omsjax.sample_many(model, ns, stacked, x_T, method=method)
        np.testing.assert_allclose(np.asarray(out), loop, rtol=1e-12, atol=1e-12)
    jitted = jax.jit(lambda s, x: omsjax.sample(model, ns, s, x))
    for s, ref in zip(scheds, loop, strict=True):
        np.testing.assert_allclose(np.asarray(jitted(s, x_T)), ref, rtol=1e-12, atol=1e-12)


class _MLP(nn.Module):
    width: int
    depth: int

    @nn.compact
    def __call__(self, x, t):
        h = jnp.concatenate([x, t[:, None]], axis=-1)
        for _ in range(self.depth):
            h = nn.tanh(nn.Dense(self.width, param_dtype=jnp.float64)(h))
        return nn.Dense(x.shape[-1], param_dtype=jnp.float64)(h)


def test_zoo_of_two_flax_models_dispatches_per_step(env):
    ns, _, x_T = env
    small, big = _MLP(8, 1), _MLP(32, 3)
    t0 = jnp.ones((x_T.shape[0],), jnp.float64)
    p_small = small.init(jax.random.PRNGKey(0), x_T, t0)["params"]
    p_big = big.init(jax.random.PRNGKey(1), x_T, t0)["params"]
    n_small = sum(a.size for a in jax.tree_util.tree_leaves(p_small))
    n_big = sum(a.size for a in jax.tree_util.tree_leaves(p_big))
    assert n_big > 4 * n_small
    fns = [lambda p, x, t: small.apply({"params": p}, x, t), lambda p, x, t: big.apply({"params": p}, x, t)]
    zoo = (omsjax.Model(fns[0], p_small, name="small"), omsjax.Model(fns[1], p_big, name="big"))
    params = (p_small, p_big)
    pattern = [0, 1, 1, 0, 1]
    sched = presets.ddim(ns, 5)._replace(model=jnp.asarray(pattern, jnp.int32))
    out = np.asarray(jax.jit(lambda z, s, x: omsjax.sample(z, ns, s, x))(zoo, sched, x_T))

    # Independent DDIM loop calling the scheduled model by hand.
    ts = np.asarray(sched.ts)
    x = np.asarray(x_T)
    for i, m in enumerate(pattern):
        eps = np.asarray(fns[m](params[m], jnp.asarray(x), jnp.full((x.shape[0],), ts[i])))
        la_s, la_t = ns.log_alpha(ts[i]), ns.log_alpha(ts[i + 1])
        h = ns.lam(ts[i + 1]) - ns.lam(ts[i])
        x = np.exp(la_t - la_s) * x - ns.sigma(ts[i + 1]) * np.expm1(h) * eps
    np.testing.assert_allclose(out, x, rtol=1e-12, atol=1e-12)
    for only in (0, 1):
        other = omsjax.sample(zoo, ns, sched._replace(model=jnp.full((5,), only, jnp.int32)), x_T)
        assert float(jnp.max(jnp.abs(other - out))) > 1e-6


def test_a_concrete_schedule_compiles_only_the_members_it_calls(env):
    ns, gmm, x_T = env
    traces = [[], [], []]
    zoo = tuple(_counting_model(_gmm(seed=k), ns, traces[k]) for k in range(3))
    s = presets.dpm_solver_pp(ns, 4, 2)
    for k in range(3):  # each member alone, at index k of the zoo: only member k is traced
        before = [len(t) for t in traces]
        out = omsjax.sample(zoo, ns, s._replace(model=jnp.full((4,), k, jnp.int32)), x_T)
        assert [len(t) - b for t, b in zip(traces, before, strict=True)] == [2 * (j == k) for j in range(3)]
        np.testing.assert_allclose(out, omsjax.sample(zoo[k], ns, s, x_T), rtol=1e-13, atol=1e-13)
    # Members 2 and 0 (remapped to 1 and 0), and AFS: step 0 calls nothing, so member 1 is not compiled.
    mixed = presets.dpm_solver_pp(ns, 4, 2, afs="zero_x0")._replace(model=jnp.asarray([1, 2, 0, 2, 0], jnp.int32))
    before = [len(t) for t in traces]
    out = omsjax.sample(zoo, ns, mixed, x_T)
    assert [len(t) - b for t, b in zip(traces, before, strict=True)] == [2, 0, 2]
    # Under jit the model indices are traced: the whole zoo is in the program, and the results agree.
    full = jax.jit(lambda s, x: omsjax.sample(zoo, ns, s, x))(mixed, x_T)
    assert [len(t) - b for t, b in zip(traces, before, strict=True)] == [4, 2, 4]
    np.testing.assert_allclose(out, full, rtol=1e-13, atol=1e-13)
    # The restriction itself: an index outside the zoo stays invalid, step 0 under AFS maps to a kept member.
    sub, model, members = omsjax.integrate.used_members(zoo, np.asarray([[2, 0, 9], [1, 2, 2]]), np.asarray([0, 1]))
    assert members == (0, 2) and sub == (zoo[0], zoo[2])
    np.testing.assert_array_equal(model, [[1, 0, -1], [0, 1, 1]])
    assert omsjax.integrate.used_members(zoo, jnp.asarray([0, 1, 2]))[2] == (0, 1, 2)


def test_sample_candidates_compiles_one_member_for_one_member_chunks(env):
    from omsjax.search.candidates import sample_candidates

    ns, gmm, x_T = env
    traces = [[], [], []]
    zoo = tuple(_counting_model(_gmm(seed=k), ns, traces[k]) for k in range(3))
    base = presets.dpm_solver_pp(ns, 4, 2)
    solo = [base._replace(model=jnp.full((4,), 2, jnp.int32), relax=base.relax + c) for c in (0.0, 0.1)]
    out = sample_candidates(zoo, ns, solo, x_T, method="map", chunk=2)
    assert [len(t) > 0 for t in traces] == [False, False, True]  # one chunk, one member: only member 2 compiled
    np.testing.assert_allclose(out[0], omsjax.sample(zoo[2], ns, base, x_T), rtol=1e-12, atol=1e-12)
    mixed = [s._replace(model=jnp.asarray([0, 2, 0, 2], jnp.int32)) for s in solo]  # two members: the whole zoo
    out = sample_candidates(zoo, ns, mixed, x_T, method="map", chunk=2)
    assert all(len(t) > 0 for t in traces)
    np.testing.assert_allclose(out[1], omsjax.sample(zoo, ns, mixed[1], x_T), rtol=1e-12, atol=1e-12)


def test_params_are_arguments_not_constants(env):
    ns, gmm, x_T = env
    traces = []
    model = _counting_model(gmm, ns, traces)
    run = jax.jit(lambda m, s, x: omsjax.sample(m, ns, s, x))
    s = presets.ddim(ns, 4)
    a = run(model, s, x_T)
    moved = model.replace(params=gmm.replace(means=gmm.means + 1.0))
    b = run(moved, s, x_T)
    assert len(traces) == 2 and float(jnp.max(jnp.abs(a - b))) > 1e-3
    np.testing.assert_allclose(np.asarray(b), np.asarray(omsjax.sample(moved, ns, s, x_T)), rtol=1e-12)


@pytest.mark.parametrize("afs", [1, 2])
def test_analytical_first_step_equals_guess_model(env, afs):
    ns, gmm, x_T = env
    mean = jnp.asarray(np.random.RandomState(3).randn(6) * 0.1)
    x0_guess = jnp.zeros(6) if afs == 1 else mean

    def guess_fn(params, x, t):
        return (x - jnp.exp(ns.log_alpha(t))[:, None] * x0_guess) / ns.sigma(t)[:, None]

    zoo = (gmm.model(ns), omsjax.Model(guess_fn, None))
    base = presets.unipc(ns, 5, 2)
    with_afs = base._replace(afs=jnp.asarray(afs, jnp.int32))
    manual = base._replace(model=base.model.at[0].set(1))
    a = omsjax.sample(zoo, ns, with_afs, x_T, data_mean=mean)
    b = omsjax.sample(zoo, ns, manual, x_T, data_mean=mean)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)
    assert int(with_afs.nfe()) == 4 and int(base.nfe()) == 5
    assert float(with_afs.cost([2.0, 1.0])) == 8.0


def test_afs_preset_adds_a_step_for_the_same_nfe(env):
    ns, gmm, x_T = env
    s = presets.dpm_solver_pp(ns, 5, 2, afs="zero_x0")
    assert s.num_steps == 6 and int(s.nfe()) == 5
    out = omsjax.sample(gmm.model(ns), ns, s, x_T)
    assert bool(jnp.all(jnp.isfinite(out)))


def _mixed_schedule(ns, n):
    """A valid schedule that mixes every decision: orders 1-4, start points 0-2, low-order D_1, both
    predictions, all relaxation types, correctors."""
    order, start, d1, pred, rtype, relax, corr = [], [], [], [], [], [], []
    for i in range(n):
        avail = min(i + 1, 5)
        k = min(1 + i % 4, avail)
        q = min((0, 1, 0, 2)[i % 4], avail - 1)
        order.append(k)
        start.append(q)
        d1.append(i % k if k > 1 else 0)
        pred.append(i % 2)
        rtype.append(i % 3)
        relax.append(0.05 * (i % 5 - 2))
        corr.append(i % 2 == 0 and i < n - 1)
    return omsjax.schedule.make(
        ts=spacing.time_steps(ns, n, "logSNR"), model=[0] * n, order=order, prediction=pred, start=start,
        d1_points=d1, relax=relax, relax_type=rtype, corrector=corr, afs=0,
    )  # fmt: skip


def test_mixed_decisions_converge_to_the_reference(env):
    ns, gmm, x_T = env
    ref = oracles.reference_solution(lambda x, t: gmm.eps(ns, x, t), ns, x_T, ns.t_max, ns.default_t_end)
    errs = []
    for n in (48, 96):
        s = _mixed_schedule(ns, n)
        omsjax.check_schedule(s, 1, ns)
        errs.append(float(jnp.max(jnp.abs(omsjax.sample(gmm.model(ns), ns, s, x_T) - ref))))
    assert errs[0] < 1e-2 and errs[1] < errs[0] / 4, errs


# --- invalid decisions under tracing become NaN, never a clamped answer -------------------------------------


@pytest.mark.parametrize(
    "field,value",
    [
        ("model", 2),  # zoo has 1 model: lax.switch would clamp
        ("model", -1),
        ("order", 3),  # at step 1 only 2 points exist
        ("order", 0),
        ("start", 2),
        ("d1_points", 2),
        ("prediction", 2),
        ("relax_type", 5),
    ],
)
def test_invalid_decision_under_jit_gives_nan(env, field, value):
    ns, gmm, x_T = env
    s = presets.dpm_solver_pp(ns, 4, 2)
    bad = s._replace(**{field: getattr(s, field).at[1].set(value)})
    run = jax.jit(lambda s, x: omsjax.sample(gmm.model(ns), ns, s, x))
    assert bool(jnp.all(jnp.isfinite(run(s, x_T))))
    assert bool(jnp.all(jnp.isnan(run(bad, x_T))))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s._replace(ts=s.ts.at[2].set(s.ts[1] + 0.01)),
        lambda s: s._replace(ts=s.ts.at[2].set(jnp.nan)),
        lambda s: s._replace(corrector=s.corrector.at[-1].set(True)),
        lambda s: s._replace(afs=jnp.asarray(3, jnp.int32)),
        lambda s: s._replace(afs=jnp.asarray(2, jnp.int32)),  # no data_mean given
        lambda s: s._replace(relax=s.relax.at[0].set(jnp.inf)),
    ],
)
def test_invalid_schedule_under_jit_gives_nan(env, mutate):
    ns, gmm, x_T = env
    s = mutate(presets.dpm_solver_pp(ns, 4, 2))
    out = jax.jit(lambda s, x: omsjax.sample(gmm.model(ns), ns, s, x))(s, x_T)
    assert bool(jnp.all(jnp.isnan(out)))


def test_float32_sampling(env):
    ns, gmm, x_T = env
    s = presets.dpm_solver_pp(ns, 8, 2)
    s32 = s._replace(ts=s.ts.astype(jnp.float32), relax=s.relax.astype(jnp.float32),
                     d2_scale=s.d2_scale.astype(jnp.float32))  # fmt: skip
    gmm32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), gmm)
    out32 = omsjax.sample(gmm32.model(ns), ns, s32, x_T.astype(jnp.float32))
    out64 = omsjax.sample(gmm.model(ns), ns, s, x_T)
    assert out32.dtype == jnp.float32 and out64.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(out32), np.asarray(out64), atol=1e-4)


def test_noise_is_independent_of_batching():
    a = omsjax.sampler.noise(3, 10, (2, 2))
    b = jnp.concatenate([omsjax.sampler.noise(3, 4, (2, 2)), omsjax.sampler.noise(3, 6, (2, 2), offset=4)])
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(omsjax.sampler.noise(4, 10, (2, 2))))


def test_generate_batches_agree(env):
    ns, gmm, _ = env
    s = presets.dpm_solver_pp(ns, 5, 2)
    m = gmm.model(ns)
    a = omsjax.sampler.generate(m, ns, s, 7, (6,), key=1, batch_size=7, dtype=jnp.float64)
    b = omsjax.sampler.generate(m, ns, s, 7, (6,), key=1, batch_size=3, dtype=jnp.float64)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert a.shape == (7, 6)


def test_generate_draws_the_prior_of_the_schedule():
    # VP: x_T ~ N(0, I); EDM: x_T ~ N(0, sigma_max^2 I). Unscaled noise at sigma_max = 80 would collapse every
    # sample onto the data mean.
    gmm = _gmm()
    for ns, std in ((noise.vp_linear(), 1.0), (noise.edm(), 80.0)):
        assert float(ns.prior_std(ns.t_max)) == std
        model = gmm.model(ns)
        sched = presets.preset("dpm_solver_pp", ns, 20, order=2)
        got = omsjax.generate(model, ns, sched, 600, (6,), key=3, batch_size=300, dtype=jnp.float64)
        want = omsjax.sample(model, ns, sched, std * omsjax.sampler.noise(3, 600, (6,), jnp.float64))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        # The samples spread like the mixture: its per-coordinate variance.
        data = np.asarray(gmm.sample(jax.random.PRNGKey(0), 20000))
        np.testing.assert_allclose(got.var(0).mean(), data.var(0).mean(), rtol=0.15)


def test_prior_and_generate_with_a_key():
    key = jax.random.PRNGKey(7)
    for ns, std in ((noise.vp_linear(), 1.0), (noise.edm(), 80.0)):
        x = omsjax.prior(ns, key, 5, (3,), dtype=jnp.float64)
        want = std * jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (3,), jnp.float64))(
            jnp.arange(5, dtype=jnp.int32)
        )
        np.testing.assert_allclose(np.asarray(x), np.asarray(want), rtol=1e-15)
    assert float(omsjax.prior(noise.edm(), key, 1, (1,), t=2.0, dtype=jnp.float64)[0, 0]) == pytest.approx(
        2.0 * float(omsjax.prior(noise.vp_linear(), key, 1, (1,), dtype=jnp.float64)[0, 0])
    )
    gmm, ns = _gmm(), noise.edm()
    s = presets.ddim(ns, 4)
    got = omsjax.generate(gmm.model(ns), ns, s, 5, (6,), key=key, batch_size=2, dtype=jnp.float64)
    want = omsjax.sample(gmm.model(ns), ns, s, omsjax.prior(ns, key, 5, (6,), dtype=jnp.float64))
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="prior: n must be an int >= 1, got 0"):
        omsjax.prior(ns, key, 0, (6,))


def test_trajectory_holds_every_state_and_data_prediction(env):
    ns, gmm, x_T = env
    model = gmm.model(ns)
    s = presets.ddim(ns, 4)
    out, traj = omsjax.sample(model, ns, s, x_T, return_trajectory=True)
    assert traj.x.shape == (5, *x_T.shape) and traj.x0.shape == (4, *x_T.shape)
    np.testing.assert_array_equal(np.asarray(traj.t), np.asarray(s.ts))
    # DDIM by hand: x_(i+1) = alpha_(i+1) x0_i + sigma_(i+1) eps_i.
    ts, x = np.asarray(s.ts), np.asarray(x_T)
    for i in range(4):
        np.testing.assert_allclose(np.asarray(traj.x[i]), x, rtol=1e-12, atol=1e-12)
        eps = np.asarray(gmm.eps(ns, jnp.asarray(x), jnp.full((x.shape[0],), ts[i])))
        x0 = (x - ns.sigma(ts[i]) * eps) / ns.alpha(ts[i])
        np.testing.assert_allclose(np.asarray(traj.x0[i]), x0, rtol=1e-10, atol=1e-10)
        x = ns.alpha(ts[i + 1]) * x0 + ns.sigma(ts[i + 1]) * eps
    np.testing.assert_allclose(np.asarray(traj.x[4]), x, rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(traj.x[4]))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(omsjax.sample(model, ns, s, x_T)))
    # With correctors (UniPC) and under jit: the last state is the output, the first the noise.
    u = presets.unipc(ns, 4, 2)
    out, traj = jax.jit(lambda s, x: omsjax.sample(model, ns, s, x, return_trajectory=True))(u, x_T)
    np.testing.assert_array_equal(np.asarray(traj.x[0]), np.asarray(x_T))
    np.testing.assert_array_equal(np.asarray(traj.x[-1]), np.asarray(out))


def test_gradient_wrt_times_is_finite_and_remat_gives_the_same(env):
    ns, gmm, x_T = env
    s = presets.unipc(ns, 5, 2)

    def loss(ts, remat):
        return jnp.sum(omsjax.sample(gmm.model(ns), ns, s._replace(ts=ts), x_T, remat=remat) ** 2)

    g = jax.grad(loss)(s.ts, False)
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.max(jnp.abs(g[1:-1]))) > 0
    np.testing.assert_allclose(np.asarray(jax.grad(loss)(s.ts, True)), np.asarray(g), rtol=1e-12, atol=1e-14)
