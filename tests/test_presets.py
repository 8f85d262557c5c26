"""Presets against independent, naive numpy float64 transcriptions of the published update formulas.

Each transcription below is a plain Python loop written from the algorithm boxes / reference code of
  * DDIM / DPM-Solver-1 and singlestep DPM-Solver-2, -3 ('dpmsolver' form, noise prediction; Lu et al. 2022),
  * multistep DPM-Solver++(1M, 2M, 3M) (data prediction; Lu et al. 2022b),
  * UniPC-p with B(h) = h (bh1) and e^h - 1 (bh2) (data prediction; Zhao et al. 2023),
with its own noise-schedule formulas (continuous linear VP), its own time grids and its own exact
Gaussian-mixture noise prediction. Nothing here goes through omsjax's USF machinery, so agreement to ~1e-12
checks the library's general step (stencils, relaxation factors, start points, correctors) against the
closed forms.

Also: `omsjax.usf.phi` against high-precision references (decimal series, float64 series, closed forms).
"""

import decimal
import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import omsjax
from omsjax import noise, oracles, presets, spacing, usf

# --------------------------------------------------------------------------------------------------
# Noise schedule: continuous linear VP, beta in [0.1, 20] (DPM-Solver's NoiseScheduleVP('linear')), in numpy.
# --------------------------------------------------------------------------------------------------
B0, B1 = 0.1, 20.0
T_START, T_END = 1.0, 1e-3


def log_alpha(t):
    return -0.25 * t**2 * (B1 - B0) - 0.5 * t * B0


def alpha(t):
    return np.exp(log_alpha(t))


def sigma(t):
    return np.sqrt(1.0 - np.exp(2.0 * log_alpha(t)))


def lam(t):
    la = log_alpha(t)
    return la - 0.5 * np.log(1.0 - np.exp(2.0 * la))


def t_of_lambda(lamb):
    tmp = 2.0 * (B1 - B0) * np.logaddexp(-2.0 * lamb, 0.0)
    delta = B0**2 + tmp
    return tmp / (np.sqrt(delta) + B0) / (B1 - B0)


def time_grid(skip, t_T, t_0, n):
    """DPM-Solver's `get_time_steps`: n + 1 times from t_T down to t_0."""
    if skip == "logSNR":
        return t_of_lambda(np.linspace(lam(t_T), lam(t_0), n + 1))
    if skip == "time_uniform":
        return np.linspace(t_T, t_0, n + 1)
    if skip == "time_quadratic":
        return np.linspace(t_T**0.5, t_0**0.5, n + 1) ** 2
    raise ValueError(skip)


# --------------------------------------------------------------------------------------------------
# Exact Gaussian-mixture noise prediction in numpy:
#   eps = sigma_t sum_k gamma_k (x - a mu_k) / (a^2 s_k^2 + sigma^2).
# --------------------------------------------------------------------------------------------------
class NumpyGMM:
    def __init__(self, means, stds, weights):
        self.means, self.stds, self.weights = means, stds, weights

    def eps(self, x, t):
        a, s = alpha(t), sigma(t)
        var = a**2 * self.stds**2 + s**2  # [K]
        diff = x[:, None, :] - a * self.means[None]  # [B, K, D]
        d = x.shape[1]
        logp = np.log(self.weights)[None] - 0.5 * np.sum(diff**2, -1) / var - 0.5 * d * np.log(var)
        logp -= logp.max(axis=1, keepdims=True)
        gamma = np.exp(logp)
        gamma /= gamma.sum(axis=1, keepdims=True)
        return s * np.sum(gamma[..., None] * diff / var[None, :, None], axis=1)

    def x0(self, x, t):
        return (x - sigma(t) * self.eps(x, t)) / alpha(t)


# --------------------------------------------------------------------------------------------------
# DDIM = DPM-Solver-1 and singlestep DPM-Solver-2 / -3 (noise prediction, solver_type='dpmsolver').
# --------------------------------------------------------------------------------------------------
def dpm1_update(f, x, s, t, model_s=None):
    h = lam(t) - lam(s)
    if model_s is None:
        model_s = f.eps(x, s)
    return np.exp(log_alpha(t) - log_alpha(s)) * x - sigma(t) * np.expm1(h) * model_s


def dpm2_update(f, x, s, t, r1=0.5):
    lam_s, lam_t = lam(s), lam(t)
    h = lam_t - lam_s
    s1 = t_of_lambda(lam_s + r1 * h)
    phi_11, phi_1 = np.expm1(r1 * h), np.expm1(h)
    model_s = f.eps(x, s)
    x_s1 = np.exp(log_alpha(s1) - log_alpha(s)) * x - sigma(s1) * phi_11 * model_s
    model_s1 = f.eps(x_s1, s1)
    return (
        np.exp(log_alpha(t) - log_alpha(s)) * x
        - sigma(t) * phi_1 * model_s
        - (0.5 / r1) * sigma(t) * phi_1 * (model_s1 - model_s)
    )


def dpm3_update(f, x, s, t, r1=1.0 / 3.0, r2=2.0 / 3.0):
    lam_s, lam_t = lam(s), lam(t)
    h = lam_t - lam_s
    s1, s2 = t_of_lambda(lam_s + r1 * h), t_of_lambda(lam_s + r2 * h)
    phi_11, phi_12, phi_1 = np.expm1(r1 * h), np.expm1(r2 * h), np.expm1(h)
    phi_22 = np.expm1(r2 * h) / (r2 * h) - 1.0
    phi_2 = phi_1 / h - 1.0
    model_s = f.eps(x, s)
    x_s1 = np.exp(log_alpha(s1) - log_alpha(s)) * x - sigma(s1) * phi_11 * model_s
    model_s1 = f.eps(x_s1, s1)
    x_s2 = (
        np.exp(log_alpha(s2) - log_alpha(s)) * x
        - sigma(s2) * phi_12 * model_s
        - r2 / r1 * sigma(s2) * phi_22 * (model_s1 - model_s)
    )
    model_s2 = f.eps(x_s2, s2)
    return (
        np.exp(log_alpha(t) - log_alpha(s)) * x
        - sigma(t) * phi_1 * model_s
        - (1.0 / r2) * sigma(t) * phi_2 * (model_s2 - model_s)
    )


def ddim_np(f, x, nfe, skip):
    ts = time_grid(skip, T_START, T_END, nfe)
    for s, t in zip(ts[:-1], ts[1:], strict=True):
        x = dpm1_update(f, x, s, t)
    return x


def singlestep_outer(nfe, order, skip):
    """DPM-Solver-fast: outer orders, and outer times (K + 1 logSNR-uniform points for 'logSNR'; otherwise the
    NFE-point grid read at the cumulative orders)."""
    if order == 3:
        k = nfe // 3 + 1
        orders = {0: [3] * (k - 2) + [2, 1], 1: [3] * (k - 1) + [1], 2: [3] * (k - 1) + [2]}[nfe % 3]
    elif order == 2:
        k = nfe // 2 if nfe % 2 == 0 else nfe // 2 + 1
        orders = [2] * k if nfe % 2 == 0 else [2] * (k - 1) + [1]
    else:
        k, orders = nfe, [1] * nfe
    if skip == "logSNR":
        outer = time_grid(skip, T_START, T_END, k)
    else:
        outer = time_grid(skip, T_START, T_END, nfe)[np.cumsum([0] + orders)]
    return orders, outer


def dpm_solver_np(f, x, nfe, order, skip):
    orders, outer = singlestep_outer(nfe, order, skip)
    for o, s, t in zip(orders, outer[:-1], outer[1:], strict=True):
        inner = time_grid(skip, s, t, o)
        lam_inner = lam(inner)
        h = lam_inner[-1] - lam_inner[0]
        if o == 1:
            x = dpm1_update(f, x, s, t)
        elif o == 2:
            x = dpm2_update(f, x, s, t, r1=(lam_inner[1] - lam_inner[0]) / h)
        else:
            r1, r2 = (lam_inner[1] - lam_inner[0]) / h, (lam_inner[2] - lam_inner[0]) / h
            x = dpm3_update(f, x, s, t, r1=r1, r2=r2)
    return x


# --------------------------------------------------------------------------------------------------
# Multistep DPM-Solver++ (data prediction), `DPM_Solver.sample(method='multistep', lower_order_final=True)`.
# --------------------------------------------------------------------------------------------------
def pp_update(x, m_prev, t_prev, t, order):
    lam_t, sigma_t, alpha_t = lam(t), sigma(t), alpha(t)
    t0, m0 = t_prev[-1], m_prev[-1]
    h = lam_t - lam(t0)
    phi_1 = np.expm1(-h)
    if order == 1:
        return sigma_t / sigma(t0) * x - alpha_t * phi_1 * m0
    if order == 2:
        m1, t1 = m_prev[-2], t_prev[-2]
        r0 = (lam(t0) - lam(t1)) / h
        d1_0 = (1.0 / r0) * (m0 - m1)
        return sigma_t / sigma(t0) * x - alpha_t * phi_1 * m0 - 0.5 * alpha_t * phi_1 * d1_0
    m1, m2 = m_prev[-2], m_prev[-3]
    t1, t2 = t_prev[-2], t_prev[-3]
    h_0, h_1 = lam(t0) - lam(t1), lam(t1) - lam(t2)
    r0, r1 = h_0 / h, h_1 / h
    d1_0 = (1.0 / r0) * (m0 - m1)
    d1_1 = (1.0 / r1) * (m1 - m2)
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
    phi_2 = phi_1 / h + 1.0
    phi_3 = phi_2 / h - 0.5
    return sigma_t / sigma(t0) * x - alpha_t * phi_1 * m0 + alpha_t * phi_2 * d1 - alpha_t * phi_3 * d2


def dpm_solver_pp_np(f, x, nfe, order, skip):
    steps = nfe
    ts = time_grid(skip, T_START, T_END, steps)
    t_prev, m_prev = [ts[0]], [f.x0(x, ts[0])]
    for step in range(1, order):  # warm-up: orders 1..order-1
        x = pp_update(x, m_prev, t_prev, ts[step], step)
        t_prev.append(ts[step])
        m_prev.append(f.x0(x, ts[step]))
    for step in range(order, steps + 1):
        t = ts[step]
        step_order = min(order, steps + 1 - step) if steps < 10 else order  # lower order final only if NFE < 10
        x = pp_update(x, m_prev, t_prev, t, step_order)
        for i in range(order - 1):
            t_prev[i], m_prev[i] = t_prev[i + 1], m_prev[i + 1]
        t_prev[-1] = t
        if step < steps:
            m_prev[-1] = f.x0(x, t)
    return x


# --------------------------------------------------------------------------------------------------
# UniPC (UniP-p + UniC, B(h) variants, data prediction),
# `UniPC.sample(method='multistep', lower_order_final=True)`.
# --------------------------------------------------------------------------------------------------
def unipc_update(f, x, m_prev, t_prev, t, order, variant, use_corrector):
    t0, m0 = t_prev[-1], m_prev[-1]
    lam0, lam_t = lam(t0), lam(t)
    sigma0, sigma_t, alpha_t = sigma(t0), sigma(t), alpha(t)
    h = lam_t - lam0
    rks, d1s = [], []
    for i in range(1, order):
        rk = (lam(t_prev[-(i + 1)]) - lam0) / h
        rks.append(rk)
        d1s.append((m_prev[-(i + 1)] - m0) / rk)
    rks.append(1.0)
    rks = np.asarray(rks)
    hh = -h  # data prediction
    h_phi_1 = np.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    factorial_i = 1
    b_h = hh if variant == "bh1" else np.expm1(hh)
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append(rks ** (i - 1))
        b.append(h_phi_k * factorial_i / b_h)
        factorial_i *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial_i
    r_mat, b = np.stack(rows), np.asarray(b)
    rhos_p = None
    if d1s:
        rhos_p = np.array([0.5]) if order == 2 else np.linalg.solve(r_mat[:-1, :-1], b[:-1])
    x_t_ = sigma_t / sigma0 * x - alpha_t * h_phi_1 * m0
    pred_res = sum(r * d for r, d in zip(rhos_p, d1s, strict=True)) if d1s else 0.0
    x_t = x_t_ - alpha_t * b_h * pred_res
    model_t = None
    if use_corrector:
        rhos_c = np.array([0.5]) if order == 1 else np.linalg.solve(r_mat, b)
        model_t = f.x0(x_t, t)
        corr_res = sum(r * d for r, d in zip(rhos_c[:-1], d1s, strict=True)) if d1s else 0.0
        x_t = x_t_ - alpha_t * b_h * (corr_res + rhos_c[-1] * (model_t - m0))
    return x_t, model_t


def unipc_np(f, x, nfe, order, variant, skip):
    steps = nfe
    ts = time_grid(skip, T_START, T_END, steps)
    t_prev, m_prev = [ts[0]], [f.x0(x, ts[0])]
    for init_order in range(1, order):
        t = ts[init_order]
        x, model_x = unipc_update(f, x, m_prev, t_prev, t, init_order, variant, True)
        m_prev.append(model_x)
        t_prev.append(t)
    for step in range(order, steps + 1):
        t = ts[step]
        step_order = min(order, steps + 1 - step)
        x, model_x = unipc_update(f, x, m_prev, t_prev, t, step_order, variant, step != steps)
        for i in range(order - 1):
            t_prev[i], m_prev[i] = t_prev[i + 1], m_prev[i + 1]
        t_prev[-1] = t
        if step < steps:
            m_prev[-1] = model_x
    return x


# --------------------------------------------------------------------------------------------------
# Fixtures and helpers.
# --------------------------------------------------------------------------------------------------
def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def env():
    rng = np.random.RandomState(20240607)
    # Our own mixture, with the shapes of the authors' reference data (4 components in 12-D, 8 samples;
    # test_presets_authors.py): `omsjax.sample` compiles one program per schedule length and shapes, and the session's
    # compilation cache (conftest.py) serves those of the lengths both files run.
    k, d = 4, 12
    means = 1.5 * rng.randn(k, d)
    stds = 0.2 + 0.4 * rng.rand(k)
    weights = rng.rand(k) + 0.5
    weights /= weights.sum()
    x_T = rng.randn(8, d)
    ns = noise.vp_linear()
    gmm = oracles.GaussianMixture.create(means, stds, weights)
    model = gmm.model(ns)
    f = NumpyGMM(means, stds, weights)

    def run(schedule):
        omsjax.check_schedule(schedule, 1, ns)
        return np.asarray(omsjax.sample(model, ns, schedule, jnp.asarray(x_T)))  # one compilation per length

    return dict(ns=ns, gmm=gmm, f=f, x_T=x_T, run=run)


MAX_REL = {}  # preset -> largest relative error seen (printed at the end with -s)
# 4, 7, 10 = 1 mod 3, 5 = 2 mod 3, 12 = 0 mod 3 (every singlestep order pattern); odd and even; 12 >= 10
# has no lower-order final steps in DPM-Solver++. Few distinct lengths: one compilation each.
NFES = (4, 5, 7, 10)
SKIPS = ("logSNR", "time_uniform", "time_quadratic")


def _record(name, rel):
    MAX_REL[name] = max(MAX_REL.get(name, 0.0), rel)


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if MAX_REL:
        print("\nmax relative error per preset vs transcription:")
        for name, rel in sorted(MAX_REL.items()):
            print(f"  {name:28s} {rel:.2e}")


# --------------------------------------------------------------------------------------------------
# Sanity checks of the transcription's ingredients.
# --------------------------------------------------------------------------------------------------
def test_numpy_schedule_matches_library(env):
    ns = env["ns"]
    t = np.linspace(1e-3, 1.0, 101)
    assert _rel(log_alpha(t), ns.log_alpha(t)) < 1e-14
    assert _rel(sigma(t), ns.sigma(t)) < 1e-11  # naive sqrt(1 - alpha^2) loses ~1e-12 near t = 1e-3
    assert _rel(lam(t), ns.lam(t)) < 1e-12
    assert _rel(t_of_lambda(lam(t)), t) < 1e-12
    for skip in SKIPS:
        for n in (3, 10):
            assert _rel(time_grid(skip, T_START, T_END, n), spacing.time_steps(ns, n, skip)) < 1e-13


def test_numpy_gmm_matches_library(env):
    ns, gmm, f = env["ns"], env["gmm"], env["f"]
    x = np.random.RandomState(3).randn(6, 12)
    for t in (1.0, 0.5, 0.1, 1e-2, 1e-3):
        ref = np.asarray(gmm.eps(ns, jnp.asarray(x), jnp.asarray(t)))
        assert _rel(f.eps(x, t), ref) < 1e-10, t


REF_FILE = Path(__file__).parent / "data" / "solver_references.npz"


@pytest.mark.skipif(not REF_FILE.exists(), reason="no authors' reference outputs")
def test_transcriptions_match_authors_outputs():
    """The transcriptions themselves against the authors' PyTorch outputs (so that a shared misreading of the
    papers by the library and by this file would not go unnoticed)."""
    data = np.load(REF_FILE)
    f = NumpyGMM(data["gmm_means"], data["gmm_stds"], data["gmm_weights"])
    x_T = data["x_T"]
    worst = 0.0
    for key in (k for k in data.files if "/" in k):
        parts = key.split("/")
        family, order, skip, nfe = parts[0], int(parts[1][1:]), parts[-2], int(parts[-1][1:])
        if family == "dpm_solver":
            out = dpm_solver_np(f, x_T, nfe, order, skip)
        elif family == "dpm_solver_pp":
            out = dpm_solver_pp_np(f, x_T, nfe, order, skip)
        else:
            out = unipc_np(f, x_T, nfe, order, parts[2], skip)
        rel = _rel(out, data[key])
        worst = max(worst, rel)
        assert rel < 1e-10, f"{key}: {rel:.2e}"
    print(f"\ntranscriptions vs authors' outputs: max relative error {worst:.2e}")


# --------------------------------------------------------------------------------------------------
# Presets against the transcriptions.
# --------------------------------------------------------------------------------------------------
# One row per preset family, order and variant: (label, the library's preset, its numpy transcription, the NFEs).
TRANSCRIBED = [
    ("ddim", lambda ns, n, sk: presets.ddim(ns, n, skip=sk), ddim_np, NFES),
    *[
        (
            f"dpm_solver o{o}",
            lambda ns, n, sk, o=o: presets.dpm_solver(ns, n, o, skip=sk),
            lambda f, x, n, sk, o=o: dpm_solver_np(f, x, n, o, sk),
            NFES + (12,),
        )
        for o in (1, 2, 3)
    ],
    *[
        (
            f"dpm_solver_pp o{o}",
            lambda ns, n, sk, o=o: presets.dpm_solver_pp(ns, n, o, skip=sk),
            lambda f, x, n, sk, o=o: dpm_solver_pp_np(f, x, n, o, sk),
            NFES + (12,),
        )
        for o in (1, 2, 3)
    ],
    *[
        (
            f"unipc o{o} {v}",
            lambda ns, n, sk, o=o, v=v: presets.unipc(ns, n, o, variant=v, skip=sk),
            lambda f, x, n, sk, o=o, v=v: unipc_np(f, x, n, o, v, sk),
            NFES + (12,),
        )
        for o in (1, 2, 3)
        for v in ("bh1", "bh2")
    ],
]
CASES = [
    (label, build, numpy, nfe, skip) for label, build, numpy, nfes in TRANSCRIBED for nfe in nfes for skip in SKIPS
]


@pytest.mark.parametrize("label,build,numpy,nfe,skip", CASES, ids=[f"{c[0]}-nfe{c[3]}-{c[4]}" for c in CASES])
def test_preset_matches_its_transcription(env, label, build, numpy, nfe, skip):
    out = env["run"](build(env["ns"], nfe, skip))
    rel = _rel(out, numpy(env["f"], env["x_T"], nfe, skip))
    _record(label, rel)
    assert rel <= 1e-10


@pytest.mark.parametrize("skip", SKIPS + ("karras",))
@pytest.mark.parametrize("nfe", (4, 7, 12))
def test_dpm_solver_pp_order1_is_ddim(env, nfe, skip):
    ns, run = env["ns"], env["run"]
    a = run(presets.dpm_solver_pp(ns, nfe, 1, skip=skip))
    b = run(presets.ddim(ns, nfe, skip=skip))
    rel = _rel(a, b)
    _record("dpm_solver_pp o1 vs ddim", rel)
    assert rel <= 1e-12


# --------------------------------------------------------------------------------------------------
# phi_k(z) = sum_j z^j / (j + k)!  against high-precision references.
# --------------------------------------------------------------------------------------------------
def phi_decimal(z: float, k: int, prec: int = 90) -> float:
    """phi_k(z) by its power series in exact-input decimal arithmetic with `prec` digits (|z| <= 30 needs ~13
    digits of headroom for the cancellation at z = -30)."""
    with decimal.localcontext() as ctx:
        ctx.prec = prec
        zd = decimal.Decimal(z)  # exact binary value of the float
        term = decimal.Decimal(1) / math.factorial(k)
        total = term
        tiny = decimal.Decimal(10) ** (-prec + 5)
        j = 0
        while True:
            j += 1
            term = term * zd / (j + k)
            total += term
            if j > 2 * abs(z) + 10 and abs(term) <= tiny * abs(total):
                return float(total)


def phi_series64(z: float, k: int, terms: int = 60) -> float:
    """The same series in float64 (accurate for |z| < 1: no cancellation, terms decay fast)."""
    return math.fsum(z**j / math.factorial(j + k) for j in range(terms))


def phi_closed(z: float, k: int) -> float:
    """(e^z - sum_{j<k} z^j/j!) / z^k with math.expm1 (accurate for |z| large)."""
    num = math.expm1(z) - math.fsum(z**j / math.factorial(j) for j in range(1, k))
    return num / z**k


_Z = sorted(
    {0.0, 1e-300, -1e-300, 1e-15, -1e-15, 1e-8, -1e-8, 1e-4, -1e-4, 0.1, -0.1, 0.5, -0.5, 0.999, -0.999}
    | {1.9999999, -1.9999999, 2.0, -2.0, 2.0000001, -2.0000001, 3.0, -3.0, 5.5, -5.5, 10.0, -10.0}
    | {15.0, -15.0, 20.0, -20.0, 29.99, -29.99, 30.0, -30.0}
    | set(np.linspace(-30.0, 30.0, 121).tolist())
    | set((np.random.RandomState(0).uniform(-1, 1, 40) * 10.0 ** np.random.RandomState(1).randint(-9, 2, 40)).tolist())
)


def test_phi_references_agree():
    """The three references agree where each is accurate (guards the references themselves)."""
    for k in (1, 2, 3, 4):
        for z in _Z:
            ref = phi_decimal(z, k)
            if abs(z) < 1:
                assert abs(phi_series64(z, k) - ref) <= 2e-16 * abs(ref), (k, z)
            if abs(z) >= 10:
                assert abs(phi_closed(z, k) - ref) <= 1e-14 * abs(ref), (k, z)
            if z == 0.0:
                assert ref == 1.0 / math.factorial(k)


@pytest.mark.parametrize("kmax", (1, 2, 3, 4))
def test_phi_accuracy(kmax):
    z = np.asarray(_Z, np.float64)
    got = np.asarray(usf.phi(jnp.asarray(z), kmax))
    assert got.shape == (kmax, z.size) and got.dtype == np.float64
    worst = 0.0
    for k in range(1, kmax + 1):
        for i, zi in enumerate(z):
            ref = phi_decimal(float(zi), k)
            rel = abs(got[k - 1, i] - ref) / abs(ref)
            worst = max(worst, rel)
            assert rel < 1e-13, f"phi_{k}({zi!r}) = {got[k - 1, i]!r}, reference {ref!r}, rel {rel:.2e}"
    _record(f"usf.phi kmax={kmax}", worst)


def test_phi_scalar_and_batched_shapes():
    """A 0-d input gives [kmax]; a [2, 3] input gives [kmax, 2, 3]; phi_k(0) = 1/k! exactly."""
    p0 = np.asarray(usf.phi(jnp.asarray(0.0), 4))
    np.testing.assert_array_equal(p0, [1.0, 0.5, 1.0 / 6.0, 1.0 / 24.0])
    zz = jnp.asarray(np.array([[-30.0, -1e-8, 0.0], [1e-8, 2.0, 30.0]]))
    assert usf.phi(zz, 3).shape == (3, 2, 3)
