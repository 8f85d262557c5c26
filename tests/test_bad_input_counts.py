"""Bad input, class 3 of issue 29: booleans and non-integers where counts are expected. Every public entry point
that takes a count (nfe, steps, n, sample and batch sizes, seeds, model indices, levels) refuses a bool, a float,
a string and None (where None means nothing else) with a one-line `ValueError` naming the argument, as does a
count below its minimum. Before, `time_steps(ns, True)`, `noise(True, True, ...)`, `generate(..., n=True)` and
`Evaluator(noise_seed=True)` were accepted, and `generate(..., n=0)` failed inside numpy. Every check runs on the
host before anything is traced, so the test compiles nothing."""

import re

import jax
import numpy as np
import pytest

import omsjax
from omsjax import metrics, nets, optim, oracles, presets, sampler, spacing, timesteps, zoo
from omsjax.metrics.conditional import balanced_labels
from omsjax.search.evaluate import Evaluator
from omsjax.search.find import find_schedule
from omsjax.search.plan import FindOptions, Seeds
from omsjax.search.space import SearchSpace
from omsjax.stages import clustering
from omsjax.train.losses import clamp_cap
from omsjax.workflows import search_job, timesteps_run

NS = omsjax.noise.vp_linear()
ZERO = omsjax.Model(lambda p, x, t: 0.0 * x, None, name="zero", sample_shape=(4,))
SCHED = presets.ddim(NS, 2)
KEY = jax.random.PRNGKey(0)
DATA = np.zeros((4, 4))
GRID = np.linspace(float(NS.lam(1.0)), float(NS.lam(1e-3)), 8)
TS = spacing.time_steps(NS, 3)
GMM = oracles.GaussianMixture.create(np.zeros((2, 4)), np.ones(2), np.full(2, 0.5))


def _metric(samples, x_T):
    return 0.0


def _evaluator():
    return Evaluator(ZERO, NS, num_samples=4, metric=_metric)


# (id, call with the bad value, the name the message gives, the minimum, whether None is a legal value)
CASES = [
    ("ddim nfe", lambda v: presets.ddim(NS, v), "nfe", 1, False),
    ("dpm_solver_pp nfe", lambda v: presets.dpm_solver_pp(NS, v), "nfe", 1, False),
    ("ddim model", lambda v: presets.ddim(NS, 2, model=v), "model (a zoo index)", 0, False),
    ("time_steps n", lambda v: spacing.time_steps(NS, v), "time_steps: n", 1, False),
    ("karras_sigmas n", lambda v: spacing.karras_sigmas(v, 0.002, 80.0), "karras_sigmas: n", 2, False),
    ("noise seed", lambda v: sampler.noise(v, 2, (3,)), "noise: seed", 0, False),
    ("noise n", lambda v: sampler.noise(0, v, (3,)), "noise: n", 1, False),
    ("noise offset", lambda v: sampler.noise(0, 2, (3,), offset=v), "noise: offset", 0, False),
    ("prior n", lambda v: omsjax.prior(NS, KEY, v, (3,)), "prior: n", 1, False),
    ("generate n", lambda v: omsjax.generate(ZERO, NS, SCHED, v, (4,)), "generate: n", 1, False),
    (
        "generate batch_size",
        lambda v: omsjax.generate(ZERO, NS, SCHED, 2, (4,), batch_size=v),
        "generate: batch_size",
        1,
        False,
    ),
    ("Evaluator num_samples", lambda v: Evaluator(ZERO, NS, num_samples=v), "Evaluator: num_samples", 2, False),
    ("Evaluator noise_seed", lambda v: Evaluator(ZERO, NS, noise_seed=v), "Evaluator: noise_seed", 0, False),
    ("with_noise noise_seed", lambda v: _evaluator().with_noise(v), "with_noise: noise_seed", 0, False),
    ("with_noise num_samples", lambda v: _evaluator().with_noise(1, v), "with_noise: num_samples", 2, True),
    ("with_noise chunk", lambda v: _evaluator().with_noise(1, chunk=v), "chunk", 1, True),
    ("FindOptions num_samples", lambda v: FindOptions(num_samples=v), "FindOptions.num_samples", 2, False),
    ("FindOptions heldout", lambda v: FindOptions(heldout_samples=v), "FindOptions.heldout_samples", 2, False),
    ("FindOptions max_steps", lambda v: FindOptions(max_steps=v), "FindOptions.max_steps", 2, False),
    ("FindOptions model", lambda v: FindOptions(model=v), "FindOptions.model", 0, True),
    ("Seeds seed", lambda v: Seeds.of(v), "seed", 0, False),
    ("find_schedule nfe", lambda v: find_schedule(ZERO, NS, metric=_metric, key=0, nfe=v), "nfe", 1, True),
    ("SearchSpace num_positions", lambda v: SearchSpace(v, (1.0,)), "SearchSpace.num_positions", 1, False),
    ("SearchSpace model", lambda v: SearchSpace(3, (1.0,), model=v, nfe=2), "SearchSpace.model", 0, False),
    ("SearchSpace nfe", lambda v: SearchSpace(3, (1.0,), nfe=v), "SearchSpace.nfe (solver mode)", 1, False),
    ("SearchSpace max_order", lambda v: SearchSpace(3, (1.0,), nfe=2, max_order=v), "SearchSpace.max_order", 1, False),
    (
        "sliced_wasserstein num_projections",
        lambda v: metrics.sliced_wasserstein(DATA, DATA, num_projections=v),
        "sliced_wasserstein: num_projections",
        1,
        False,
    ),
    (
        "sliced_wasserstein seed",
        lambda v: metrics.sliced_wasserstein(DATA, DATA, seed=v),
        "sliced_wasserstein: seed",
        0,
        False,
    ),
    ("balanced_labels n", lambda v: balanced_labels(v, 10), "n", 1, False),
    (
        "ays_table num_samples",
        lambda v: timesteps.ays_table(ZERO, NS, DATA, GRID, KEY, v),
        "ays_table: num_samples",
        1,
        False,
    ),
    (
        "ays_schedule nfe",
        lambda v: timesteps.ays_schedule(NS, v, GRID, None, t_start=1.0, t_end=1e-3),
        "ays_schedule: nfe",
        1,
        False,
    ),
    (
        "ays_schedule sweeps",
        lambda v: timesteps.ays_schedule(NS, 3, GRID, None, t_start=1.0, t_end=1e-3, sweeps=v),
        "ays_schedule: sweeps",
        0,
        False,
    ),
    (
        "estimate_g num_samples",
        lambda v: timesteps.estimate_g(ZERO, NS, DATA, GRID, KEY, num_samples=v),
        "estimate_g: num_samples",
        2,
        False,
    ),
    (
        "estimate_g batch",
        lambda v: timesteps.estimate_g(ZERO, NS, DATA, GRID, KEY, batch=v),
        "estimate_g: batch",
        1,
        False,
    ),
    ("bound nodes", lambda v: timesteps.bound(NS, TS, GRID, np.ones(8), nodes=v), "bound: nodes", 1, False),
    (
        "bound_mc num_samples",
        lambda v: timesteps.bound_mc(ZERO, NS, TS, DATA, KEY, num_samples=v),
        "bound_mc: num_samples",
        2,
        False,
    ),
    ("optimize_bound steps", lambda v: timesteps.optimize_bound(NS, TS, GRID, np.ones(8), steps=v), "steps", 1, False),
    (
        "optimize_trajectory batch",
        lambda v: timesteps.optimize_trajectory(ZERO, NS, SCHED, (np.zeros((4, 4)), np.zeros((4, 4))), batch=v),
        "optimize_trajectory: batch",
        1,
        True,
    ),
    (
        "optimize_fd batch",
        lambda v: timesteps.optimize_fd(ZERO, NS, SCHED, None, None, image_shape=(4,), batch=v),
        "optimize_fd: batch",
        2,
        False,
    ),
    ("UNetConfig channels", lambda v: nets.UNetConfig(channels=v), "channels", 1, False),
    ("UNetConfig channel_mults", lambda v: nets.UNetConfig(channel_mults=(1, v)), "channel_mults[1]", 1, False),
    ("UNetConfig num_res_blocks", lambda v: nets.UNetConfig(num_res_blocks=v), "num_res_blocks", 1, False),
    ("UNetConfig attention_levels", lambda v: nets.UNetConfig(attention_levels=(v,)), "attention_levels[0]", 0, False),
    ("UNetConfig out_channels", lambda v: nets.UNetConfig(out_channels=v), "out_channels", 1, True),
    ("UNetConfig time_embed_dim", lambda v: nets.UNetConfig(time_embed_dim=v), "time_embed_dim", 1, True),
    ("UNetConfig groups", lambda v: nets.UNetConfig(groups=v), "groups", 1, False),
    ("UNetConfig num_classes", lambda v: nets.UNetConfig(num_classes=v), "num_classes", 0, False),
    (
        "remeasure_latency batch",
        lambda v: zoo.remeasure_latency("no-zoo", batch=v),
        "remeasure_latency: batch",
        1,
        True,
    ),
    (
        "remeasure_latency repeats",
        lambda v: zoo.remeasure_latency("no-zoo", repeats=v),
        "remeasure_latency: repeats",
        1,
        False,
    ),
    ("cache_presets nfes", lambda v: search_job.cache_presets("no-zoo", [2, v]), "cache_presets: nfes[1]", 1, False),
    ("StepsConfig nfe", lambda v: timesteps_run.StepsConfig(nfe=v), "StepsConfig.nfe", 1, False),
    ("StepsConfig rounds", lambda v: timesteps_run.StepsConfig(rounds=v), "StepsConfig.rounds", 0, False),
    ("StepsConfig seed", lambda v: timesteps_run.StepsConfig(seed=v), "StepsConfig.seed", 0, False),
    ("StepsConfig model", lambda v: timesteps_run.StepsConfig(model=v), "StepsConfig.model", 0, True),
    ("StepsConfig fd_samples", lambda v: timesteps_run.StepsConfig(fd_samples=v), "StepsConfig.fd_samples", 2, False),
    ("finetune model", lambda v: timesteps_run.finetune("no-zoo", v, (0.5,), "no-out"), "finetune: model", 0, False),
    (
        "finetune steps",
        lambda v: timesteps_run.finetune("no-zoo", 0, (0.5,), "no-out", steps=v),
        "finetune: steps",
        1,
        False,
    ),
    (
        "minimize length",
        lambda v: optim.minimize(lambda p: p, None, 0.0, length=v),
        "minimize: length (without per-step inputs xs)",
        0,
        False,
    ),
    ("GaussianMixture.sample n", lambda v: GMM.sample(KEY, v), "GaussianMixture.sample: n", 1, False),
    (
        "ConditionalGaussianMixture num_classes",
        lambda v: oracles.ConditionalGaussianMixture.create(np.zeros((2, 4)), np.ones(2), np.full(2, 0.5), [0, 0], v),
        "ConditionalGaussianMixture: num_classes",
        1,
        True,
    ),
    ("partition num_stages", lambda v: clustering.partition(np.eye(4), v), "num_stages", 1, False),
    (
        "uniform_boundaries num_stages",
        lambda v: clustering.uniform_boundaries(NS, v),
        "num_stages",
        1,
        False,
    ),
    ("clustering_report grid_size", lambda v: clustering.clustering_report(DATA, grid_size=v), "grid_size", 3, False),
    ("clamp_cap warmup", lambda v: clamp_cap(0, v), "weight_clamp_warmup", 0, False),
]


def _bad_values(minimum: int, none_ok: bool) -> list:
    below = sorted({minimum - 1, -1})  # the count just below the minimum, and -1
    return [True, False, 1.5, "3", *([] if none_ok else [None]), *below]


@pytest.mark.parametrize(
    ("call", "name", "bad"),
    [
        pytest.param(call, name, bad, id=f"{case}-{bad!r}")
        for case, call, name, minimum, none_ok in CASES
        for bad in _bad_values(minimum, none_ok)
    ],
)
def test_each_count_refuses_bools_non_integers_and_too_small_values(call, name, bad):
    with pytest.raises(ValueError, match=rf"^{re.escape(name)} must be an int (>=|in) .*got {re.escape(repr(bad))}$"):
        call(bad)


def test_numpy_ints_are_counts():
    """A numpy int is a count like any other, stored as a Python int (so configs hash and round-trip in JSON)."""
    assert np.array_equal(spacing.time_steps(NS, np.int64(3)), TS)
    assert nets.UNetConfig(channels=np.int32(8), channel_mults=(np.int64(1), 2)).channel_mults == (1, 2)
    assert type(FindOptions(num_samples=np.int64(8)).num_samples) is int
    assert Evaluator(ZERO, NS, num_samples=np.int64(4), noise_seed=np.int32(3), metric=_metric).eval_key.startswith(
        "seed3-n4"
    )
