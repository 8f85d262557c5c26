"""Your own equinox model: the module itself is the parameters (`models.from_equinox`), so new weights of the same
structure reuse the compiled program, and `jax.grad` reaches the weights.

    python examples/equinox_model.py [--small]
"""

import time

import equinox as eqx
import jax
import jax.numpy as jnp
from _common import args

import omsjax
from omsjax import noise, presets
from omsjax.models import from_equinox


class Denoiser(eqx.Module):
    """eps(x, t) for one sample: x [2], t a scalar (from_equinox vmaps it over the batch). Untrained here: the
    point is the wiring (train it as any equinox module)."""

    mlp: eqx.nn.MLP

    def __init__(self, key):
        self.mlp = eqx.nn.MLP(in_size=3, out_size=2, width_size=64, depth=2, activation=jax.nn.silu, key=key)

    def __call__(self, x, t):
        return self.mlp(jnp.concatenate([x, t[None]]))


def main():
    a = args(__doc__.splitlines()[0])
    n = 64 if a.small else 4096
    ns = noise.vp_linear()
    s = presets.dpm_solver_pp(ns, 8, 2)
    x_T = omsjax.prior(ns, jax.random.PRNGKey(0), n, (2,))
    for seed in (0, 1):  # two modules of one structure: the second call compiles nothing
        model = from_equinox(Denoiser(jax.random.PRNGKey(seed)), sample_shape=(2,))
        t0 = time.perf_counter()
        x = jax.block_until_ready(omsjax.sample(model, ns, s, x_T))
        print(f"module {seed}: {time.perf_counter() - t0:.2f} s (the first includes compiling), mean {x.mean(0)}")

    # Gradients reach the weights: the module is a pytree argument, not a constant in the program.
    def loss(params):
        return jnp.mean(omsjax.sample(model.replace(params=params), ns, s, x_T) ** 2)

    g = jax.grad(loss)(model.params)
    print("gradient norm w.r.t. the weights:", float(jnp.sqrt(sum(jnp.sum(v**2) for v in jax.tree.leaves(g)))))


if __name__ == "__main__":
    main()
