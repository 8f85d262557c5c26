"""Shared cases of the search's tests (tests/test_search_*.py): a noise schedule, latencies, search spaces of every
mode, a synthetic fitness and a tiny zoo of affine noise predictions that compiles in a fraction of a U-Net's time."""

import jax
import jax.numpy as jnp
import numpy as np

import omsjax
from omsjax import noise
from omsjax.search.space import SearchSpace

NS = noise.vp_linear()
LAT = (1.0, 3.0, 9.0)

SPACES = {
    "solver": SearchSpace.for_nfe(5, LAT, model=2, mean_afs=True, max_order=4),
    "model": SearchSpace(num_positions=10, latencies=LAT, mode="model"),
    "model_dpmpp": SearchSpace(num_positions=10, latencies=LAT, mode="model", base_solver="dpm_solver_pp"),
    "joint": SearchSpace(num_positions=10, latencies=LAT, mode="joint", mean_afs=True),
    "joint_karras": SearchSpace(num_positions=10, latencies=LAT, mode="joint", spacing="karras"),
    "model_quadratic": SearchSpace(num_positions=10, latencies=LAT, mode="model", spacing="time_quadratic"),
}


def one(pop, i):
    """Genome i of a population."""
    return jax.tree.map(lambda a: a[i], pop)


def synthetic_fitness(pop):
    return jnp.sum((pop.u - jnp.linspace(-1.0, 1.0, pop.u.shape[-1])) ** 2, -1) + jnp.sum(
        (pop.order.astype(pop.u.dtype) - 2.0) ** 2, -1
    )


def affine_eps(params, x, t):
    """A cheap noise prediction for the evaluator and sampling-logic tests: eps = tanh(w x + b t); compiles in a
    fraction of a U-Net's time (the U-Net zoo members themselves are tested in test_sampler and the slow tier)."""
    w, b = params["w"].astype(x.dtype), params["b"].astype(x.dtype)  # float32 or float64, as x
    return jnp.tanh(w * x + b * t.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype))


def tiny_zoo():
    """Two members of different weights and latencies, for images of shape (8, 8, 1)."""
    rng = np.random.default_rng(10)
    return tuple(
        omsjax.Model(
            affine_eps,
            {"w": jnp.asarray(0.3 + 0.4 * k), "b": jnp.asarray(rng.standard_normal((8, 8, 1)))},
            latency=float(1 + 3 * k),
            name=f"affine{k}",
        )  # fmt: skip
        for k in range(2)
    )
