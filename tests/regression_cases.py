"""Golden-output cases that pin omsjax's behaviour across refactors (issue 13: "pin behaviour first").

Each case is a function of a scratch folder returning a dict of numpy arrays. `tests/make_regression.py` ran them
on the code before the package restructuring and stored the results in `tests/data/regression.npz`;
`tests/test_regression.py` runs them on today's code and compares. Only public API is used, so the cases run on
both sides of a move. Every case runs with float64 enabled and strict dtype promotion, as the test suite does.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

# rtol per case (and atol relative to the largest recorded value): float32 training and sampling, float64 fits.
# Adam's first updates are lr * g / |g| element by element, so a parameter whose gradient is at float32 noise level
# moves by a noise-signed fraction of lr: another CPU (or XLA's codegen flags) changes such elements by up to
# ~3e-5 in the multi-stage run (lr 5e-3). Its tolerance is 1e-4 = 2% of one peak-lr step, still far below what
# a changed loss, optimiser or parameter grouping moves. The float32 samples of a 10-step preset through a U-Net
# differ by up to 1.0e-5 of their peak on an AVX-512 CPU under the test suite's fast-compile flags (seen
# 2026-12-07: one element of 512 at 1.01e-5); 5e-5 leaves room for other CPUs, and a changed step or model moves
# samples by 1e-3 and more.
TOLERANCES = {
    "preset_samples": 5e-5,
    "train_plain": 1e-5,
    "train_multistage": 1e-4,
    "timestep_bound_fit": 1e-9,
    "timestep_trajectory_fit": 1e-9,
    "ga_run": 1e-9,
    "predictor_fit": 1e-5,
}


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.asarray(x, np.float64).reshape(-1) for x in jax.tree.leaves(tree)])


def preset_samples(tmp: Path) -> dict:
    """DPM-Solver++(3M) and UniPC-2 at NFE 5 on the smallest member of the shipped digits zoo, 8 samples."""
    import omsjax
    from omsjax import presets, sampler, zoo

    models, ns, manifest = zoo.load_zoo()
    mean = jnp.asarray(np.asarray(manifest["data_mean"], np.float32))
    x_T = sampler.noise(0, 8, tuple(manifest["image_shape"]))
    out = {}
    for name, sched in (("dpmpp3m", presets.dpm_solver_pp(ns, 5, 3)), ("unipc2", presets.unipc(ns, 5, 2))):
        out[name] = np.asarray(omsjax.sample(models[0], ns, sched, x_T, data_mean=mean))
    return out


def _digits(n: int) -> np.ndarray:
    from omsjax import data

    return data.load_digits("train")[:n]


def train_plain(tmp: Path) -> dict:
    """Six steps of the "tiny" U-Net recipe on 64 digits: the logged losses, parameters and EMA."""
    from omsjax import train, zoo

    cfg = zoo.named_config("tiny", steps=6)
    state = train.train(cfg, _digits(64), tmp / "plain", progress=False, log_every=1)
    losses = np.asarray([loss for _, loss in train.read_log(tmp / "plain")])
    return {"losses": losses, "params": _flat(state.params), "ema": _flat(state.ema_params)}


def train_multistage(tmp: Path) -> dict:
    """Eight steps of a small three-stage multi-decoder U-Net on 4x4 images: the log, parameters and EMA.

    Two GroupNorm groups, so that no layer has one channel per group: there a bias before the norm has an exactly
    zero gradient and Adam turns float noise into lr-sized steps of it (re-recorded in stop 22 on the pre-
    restructuring code with `python tests/make_regression.py train_multistage`; the current code reproduces it
    bit for bit on the recording machine)."""
    from omsjax import stages

    net = stages.MultiStageConfig(
        boundaries=(0.3, 0.6), decoder_channels=(8, 6, 4), encoder_channels=8, channel_mults=(1,), groups=2
    )
    cfg = stages.StageTrainConfig(net=net, steps=8, batch_size=8, warmup=2, lr=5e-3, image_shape=(4, 4, 1))
    data = np.random.default_rng(0).uniform(-1, 1, (32, 4, 4, 1)).astype(np.float32)
    state, log = stages.train(cfg, data, progress=False, log_every=1)
    losses = np.asarray([row["loss"] for row in log], np.float64)
    return {"losses": losses, "params": _flat(state.params), "ema": _flat(state.ema_params)}


def timestep_bound_fit(tmp: Path) -> dict:
    """`timesteps.optimize_bound` on a fixed g table, 60 Adam steps from the time-uniform spacing."""
    from omsjax import noise, spacing
    from omsjax import timesteps as T

    ns = noise.vp_linear()
    grid = np.linspace(float(ns.lam(1.0)), float(ns.lam(1e-3)), 401)
    g = 0.3 + np.exp(-0.1 * (grid - 1.0) ** 2)
    res = T.optimize_bound(ns, spacing.time_steps(ns, 5, "time_uniform"), grid, g, steps=60, lr=0.05)
    return {"ts": np.asarray(res.ts), "history": np.asarray(res.history)}


def timestep_trajectory_fit(tmp: Path) -> dict:
    """`timesteps.optimize_trajectory` of DPM-Solver++(2M) NFE 3 on a 2-d Gaussian mixture, 25 steps."""
    from omsjax import noise, oracles, presets
    from omsjax import timesteps as T

    ns = noise.vp_linear()
    gm = oracles.GaussianMixture.create([[1.0, -0.5], [-1.0, 0.5]], [0.3, 0.2], [0.4, 0.6])
    x_T = jax.random.normal(jax.random.PRNGKey(0), (32, 2), jnp.float64)
    x_ref = jax.random.normal(jax.random.PRNGKey(1), (32, 2), jnp.float64) * 0.5
    res = T.optimize_trajectory(gm.model(ns), ns, presets.dpm_solver_pp(ns, 3, 2), (x_T, x_ref), steps=25, lr=0.05,
                                batch=16, key=jax.random.PRNGKey(2))  # fmt: skip
    return {"ts": np.asarray(res.ts), "history": np.asarray(res.history)}


def _ga_fitness(pop):
    target = jnp.linspace(-1.0, 1.0, pop.u.shape[-1])
    return jnp.sum((pop.u - target) ** 2, -1) + jnp.sum((pop.order.astype(pop.u.dtype) - 2.0) ** 2, -1)


def ga_run(tmp: Path) -> dict:
    """40 generations of the GA on a synthetic objective in solver mode at NFE 4, fixed key."""
    from omsjax.search import ga
    from omsjax.search.space import SearchSpace

    space = SearchSpace.for_nfe(4, (1.0, 2.0), model=0)
    cfg = ga.GAConfig(pop_size=16, num_children=16)
    state = ga.init(space, cfg, _ga_fitness, jax.random.PRNGKey(3))
    final, curve = ga.run(space, cfg, _ga_fitness, state, 40)
    return {
        "curve": np.asarray(curve),
        "fitness": np.asarray(final.fitness),
        **{
            f"population_{k}": np.asarray(v, np.float64) for k, v in final.population._asdict().items() if v is not None
        },  # a gene the space does not search (guidance) is None
    }


def predictor_fit(tmp: Path) -> dict:
    """`search.predictor.fit` on 64 random model-mode genomes with synthetic targets, 20 epochs."""
    from omsjax import noise
    from omsjax.search import encoding as E
    from omsjax.search import predictor
    from omsjax.search.space import SearchSpace

    ns = noise.vp_linear()
    space = SearchSpace(num_positions=6, latencies=(1.0, 2.0), mode="model")
    g = E.random_genomes(space, jax.random.PRNGKey(4), 64)
    y = np.asarray(jnp.sum(g.u**2, -1) + jnp.sum(g.model.astype(g.u.dtype), -1), np.float64)
    res = predictor.fit(space, ns, g, y, jax.random.PRNGKey(5), training=predictor.Training(epochs=20, batch=32))
    scores = predictor.score(space, ns, res.params, g)
    return {"losses": np.asarray(res.losses), "params": _flat(res.params), "scores": np.asarray(scores),
            "train_tau": np.asarray(res.train_tau)}  # fmt: skip


CASES = {
    "preset_samples": preset_samples,
    "train_plain": train_plain,
    "train_multistage": train_multistage,
    "timestep_bound_fit": timestep_bound_fit,
    "timestep_trajectory_fit": timestep_trajectory_fit,
    "ga_run": ga_run,
    "predictor_fit": predictor_fit,
}
