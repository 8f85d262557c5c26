"""Model parameterisations and adapters against closed forms: every parameterisation of an exact Gaussian mixture
gives the same (eps, x0) and the same samples; "edm" is a deprecated alias of "edm_raw"; `from_equinox` matches
the module called by hand (jit, grad w.r.t. the model's time input, channels-first) and compiles once per module
structure."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_models_guidance as G
from test_presets import dpm_solver_pp_np

import omsjax
from omsjax import noise, oracles, presets
from omsjax.models import PARAMETERIZATIONS, Model, from_equinox, to_eps_x0
from omsjax.precond import edm as edm_precond

VP, EDM = noise.vp_linear(), noise.edm()
SCHEDULES = {"vp_linear": (VP, (0.05, 0.5, 0.95)), "edm": (EDM, (0.01, 1.0, 50.0))}
GMM = oracles.GaussianMixture.create(
    np.random.RandomState(0).randn(3, 3), np.array([0.2, 0.4, 0.3]), np.array([0.5, 0.3, 0.2])
)


def _exact(ns, parameterization: str) -> Model:
    """The mixture as a Model returning, in closed form, what `parameterization` asks for on `ns`."""

    def eps_x0(gmm, x, t):
        a, s = jnp.exp(ns.log_alpha(t))[:, None], ns.sigma(t)[:, None]
        eps = gmm.eps(ns, x, t)
        return eps, (x - s * eps) / a, a, s

    def edm_denoiser(gmm, y, sig):  # D(y; sigma) = y - sigma eps_EDM(y, sigma): the same on every schedule
        return y - sig[:, None] * gmm.eps(EDM, y, sig)

    def apply_fn(gmm, x, t):
        if parameterization == "denoiser":
            return edm_denoiser(gmm, x, t)
        if parameterization == "edm_raw":  # x = c_in y, t = c_noise = ln(s)/4: F = (D - c_skip y) / c_out
            sig = jnp.exp(4.0 * t)
            c_skip, c_out, c_in, _ = edm_precond(sig[:, None], 0.5)
            y = x / c_in
            return (edm_denoiser(gmm, y, sig) - c_skip * y) / c_out
        eps, x0, a, s = eps_x0(gmm, x, t)
        return {"noise": eps, "data": x0, "v": a * eps - s * x0, "score": -eps / s, "flow": eps - x0}[parameterization]

    if parameterization == "denoiser":
        return Model.from_denoiser(apply_fn, GMM, name="denoiser")
    return Model(apply_fn, GMM, parameterization=parameterization, name=parameterization)


@pytest.mark.parametrize("ns_name", sorted(SCHEDULES))
def test_every_parameterisation_gives_the_same_eps_and_x0(ns_name):
    ns, times = SCHEDULES[ns_name]
    x = jnp.asarray(np.random.RandomState(1).randn(4, 3)) * ns.prior_std(times[1])
    for t in times:
        t = jnp.float64(t)
        la, sig = ns.log_alpha(t), ns.sigma(t)
        eps_ref = GMM.eps(ns, x, t)
        x0_ref = (x - sig * eps_ref) / jnp.exp(la)
        for p in PARAMETERIZATIONS:
            eps, x0 = to_eps_x0(_exact(ns, p), GMM, x, t, la, sig)
            assert eps.shape == x0.shape == x.shape and eps.dtype == x0.dtype == jnp.float64
            scale = 1.0 + float(jnp.max(jnp.abs(x)))
            np.testing.assert_allclose(eps, eps_ref, rtol=1e-12, atol=1e-12 * scale, err_msg=f"{p} eps at t={t}")
            np.testing.assert_allclose(x0, x0_ref, rtol=1e-12, atol=1e-12 * scale, err_msg=f"{p} x0 at t={t}")


@pytest.mark.parametrize("ns_name", sorted(SCHEDULES))
def test_every_parameterisation_gives_the_same_samples(ns_name):
    ns, _ = SCHEDULES[ns_name]
    zoo = tuple(_exact(ns, p) for p in PARAMETERIZATIONS)
    s = presets.dpm_solver_pp(ns, 5, 2)
    x_T = jnp.asarray(np.random.RandomState(2).randn(8, 3)) * ns.prior_std(s.ts[0])
    run = jax.jit(lambda s, x: omsjax.sample(zoo, ns, s, x))  # traced model indices: one program, every member
    out = [run(s._replace(model=jnp.full_like(s.model, k)), x_T) for k in range(len(zoo))]
    assert np.all(np.isfinite(out[0])) and float(jnp.std(out[0])) > 0.1
    for p, o in zip(PARAMETERIZATIONS, out, strict=True):
        np.testing.assert_allclose(o, out[0], rtol=1e-10, atol=1e-10, err_msg=p)


def test_edm_is_a_deprecated_alias_of_edm_raw():
    raw = _exact(EDM, "edm_raw")
    with pytest.warns(DeprecationWarning, match=r'"edm" is deprecated: use "edm_raw" .* Model\.from_denoiser') as w:
        old = Model(raw.apply_fn, GMM, parameterization="edm", sigma_data=0.5, name="old")
    assert w[0].filename == __file__  # points at the caller
    assert old.parameterization == "edm_raw"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stored as "edm_raw": no warning on replace or a pytree round trip
        old = old.replace(name="renamed")
        old = jax.tree.unflatten(jax.tree.structure(old), jax.tree.leaves(old))
        raw = Model(raw.apply_fn, GMM, parameterization="edm_raw")
    assert jax.tree.structure(old) == jax.tree.structure(raw.replace(name="renamed"))
    x, t = jnp.asarray(np.random.RandomState(3).randn(4, 3)), jnp.float64(2.0)
    for a, b in zip(to_eps_x0(old, GMM, x, t, EDM.log_alpha(t), EDM.sigma(t)),
                    to_eps_x0(raw, GMM, x, t, EDM.log_alpha(t), EDM.sigma(t)), strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"parameterization must be one of .*'edm_raw'"):
        Model(raw.apply_fn, GMM, parameterization="eps")


def test_from_denoiser_fields():
    d = _exact(EDM, "denoiser")
    m = Model.from_denoiser(d.apply_fn, GMM, name="k", latency=2.5, sample_shape=[3])
    assert (m.parameterization, m.name, m.latency, m.sample_shape) == ("denoiser", "k", 2.5, (3,))
    assert m.apply_fn is d.apply_fn and m.params is GMM and Model.from_denoiser(d.apply_fn).params is None


# ---- equinox ----------------------------------------------------------------------------------------------------

TRACES: list[int] = []


class _TimeMLP(eqx.Module):
    """One sample: x [D], t scalar -> [D]; counts its traces."""

    mlp: eqx.nn.MLP

    def __call__(self, x, t):
        TRACES.append(1)
        return self.mlp(jnp.concatenate([x, t[None]]))


class _Conv(eqx.Module):
    """Channels-first: x [C, H, W] (or [B, C, H, W] with `batched`), t scalar (or [B])."""

    conv: eqx.nn.Conv2d
    batched: bool = eqx.field(static=True, default=False)

    def __call__(self, x, t):
        if self.batched:
            return jax.vmap(self.conv)(x) * (1.0 + t)[:, None, None, None]
        return self.conv(x) * (1.0 + t)


def _mlp(seed, width=8):
    return _TimeMLP(eqx.nn.MLP(3 + 1, 3, width, 2, activation=jnp.tanh, key=jax.random.PRNGKey(seed)))


def _by_hand(module, channels_first=False, batched=False):
    """The module called by hand, closed over (weights baked in): (params, x [B, ...], t [B]) -> [B, ...]."""

    def apply_fn(params, x, t):
        if channels_first:
            x = jnp.transpose(x, (0, 3, 1, 2))
        out = module(x, t) if batched else jax.vmap(module)(x, t)
        return jnp.transpose(out, (0, 2, 3, 1)) if channels_first else out

    return Model(apply_fn, None)


def _jit_apply(model, x, t):
    return jax.jit(lambda m, x, t: m.apply_fn(m.params, x, t))(model, x, t)


def _grad_t(model, x, t):
    """d sum(apply_fn(params, x, t)) / dt [B] under jit."""
    return jax.jit(jax.grad(lambda t, m: jnp.sum(m.apply_fn(m.params, x, t))))(t, model)


def test_from_equinox_mlp_matches_the_module_by_hand():
    module = _mlp(0)
    model = from_equinox(module, name="mlp", latency=3.0, sample_shape=(3,))
    assert (model.parameterization, model.name, model.latency, model.sample_shape) == ("noise", "mlp", 3.0, (3,))
    assert all(isinstance(p, jax.Array) for p in jax.tree.leaves(model.params))  # weights only: activations static
    x, t = jnp.asarray(np.random.RandomState(4).randn(5, 3)), jnp.linspace(0.1, 0.9, 5)
    hand = _by_hand(module)
    np.testing.assert_allclose(_jit_apply(model, x, t), jax.vmap(module)(x, t), rtol=1e-14)
    np.testing.assert_allclose(_grad_t(model, x, t), _grad_t(hand, x, t), rtol=1e-14)
    # In the sampler: the same samples as the module by hand (gradients w.r.t. the times through the sampler are
    # the sampler's own: tests/test_timesteps.py checks them against finite differences).
    s = presets.dpm_solver_pp(VP, 4, 2)
    x_T = jnp.asarray(np.random.RandomState(5).randn(4, 3))
    out = omsjax.sample(model, VP, s, x_T)
    np.testing.assert_allclose(out, omsjax.sample(hand, VP, s, x_T), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batched", [False, True])
def test_from_equinox_channels_first_conv(batched):
    module = _Conv(eqx.nn.Conv2d(2, 2, 3, padding=1, key=jax.random.PRNGKey(1)), batched=batched)
    model = from_equinox(module, batched=batched, channels_first=True)
    x = jnp.asarray(np.random.RandomState(6).randn(3, 4, 5, 2))  # NHWC, H != W
    t = jnp.asarray([0.2, 0.5, 0.8])
    nchw = jnp.transpose(x, (0, 3, 1, 2))
    manual = jnp.transpose(jax.vmap(lambda a, b: module.conv(a) * (1.0 + b))(nchw, t), (0, 2, 3, 1))
    hand = _by_hand(module, channels_first=True, batched=batched)
    np.testing.assert_allclose(hand.apply_fn(None, x, t), manual, rtol=1e-14)
    np.testing.assert_allclose(_jit_apply(model, x, t), manual, rtol=1e-14)
    np.testing.assert_allclose(_grad_t(model, x, t), _grad_t(hand, x, t), rtol=1e-13)
    s = presets.dpm_solver_pp(EDM, 3, 2)
    out = omsjax.sample(model, EDM, s, 80.0 * x)
    np.testing.assert_allclose(out, omsjax.sample(hand, EDM, s, 80.0 * x), rtol=1e-12, atol=1e-10)


def test_from_equinox_compiles_once_per_structure():
    s = presets.dpm_solver_pp(VP, 4, 2)
    x_T = jnp.asarray(np.random.RandomState(7).randn(4, 3))
    a, b = from_equinox(_mlp(0), name="once"), from_equinox(_mlp(1), name="once")
    assert a.apply_fn == b.apply_fn and hash(a.apply_fn) == hash(b.apply_fn)
    assert a.apply_fn != from_equinox(_mlp(0, width=6)).apply_fn  # another structure
    assert a.apply_fn != from_equinox(_mlp(0), channels_first=True).apply_fn
    TRACES.clear()
    out_a = omsjax.sample(a, VP, s, x_T)
    traced = len(TRACES)
    assert traced > 0
    out_b = omsjax.sample(b, VP, s, x_T)  # new weights, same structure: the compiled program is reused
    assert len(TRACES) == traced
    assert float(jnp.max(jnp.abs(out_a - out_b))) > 1e-3
    np.testing.assert_allclose(out_b, jax.jit(lambda s, x: omsjax.sample(_by_hand(_mlp(1)), VP, s, x))(s, x_T),
                               rtol=1e-12, atol=1e-12)  # fmt: skip
    TRACES.clear()
    for seed in (2, 3):  # what the helper avoids: a fresh closure as apply_fn is a new program every call
        m = _mlp(seed)
        omsjax.sample(Model(lambda p, x, t, m=m: jax.vmap(m)(x, t), None), VP, s, x_T)
    assert len(TRACES) == 2 * traced


class _CondEps(eqx.Module):
    """test_models_guidance's conditional mixture, its exact eps as a conditional equinox module: `(x, t, cond)` for the
    batch (x [B, D], t [B], labels [B]) or for one sample."""

    cg: object
    batched: bool = eqx.field(static=True)

    def __call__(self, x, t, cond):
        if self.batched:
            return self.cg.eps(G.NS, x, t, cond)
        return self.cg.eps(G.NS, x[None], t[None], cond[None])[0]


@pytest.mark.parametrize("batched", [False, True])
def test_from_equinox_passes_cond_and_samples_with_guidance(batched):
    model = from_equinox(_CondEps(G.CG, batched), batched=batched, sample_shape=(G.D,))
    s = presets.dpm_solver_pp(G.NS, 6, 2, guidance=3.0)
    out = omsjax.sample(model, G.NS, s, jnp.asarray(G.X_T), cond=G.COND, uncond=G.UNCOND)
    want = dpm_solver_pp_np(G.NumpyGuidedGMM(G.COND, 3.0), G.X_T, 6, 2, "logSNR")  # float64 numpy transcription
    assert float(np.max(np.abs(np.asarray(out) - want)) / np.max(np.abs(want))) <= 1e-10  # max-norm relative
    with pytest.raises(ValueError, match="cond"):  # a conditional module needs its conditioning
        omsjax.sample(model, G.NS, presets.ddim(G.NS, 3), jnp.asarray(G.X_T))
