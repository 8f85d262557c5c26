"""Your own Flax model: train a small noise-prediction MLP on 2-D data, then sample it with the classic solvers,
one compiled program for every schedule of a length, and many schedules at once with `sample_many`.

    python examples/flax_model.py [--small]
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import args, mixture

import omsjax
from omsjax import noise, presets, spacing


class MLP(nn.Module):
    """eps_theta(x, t): x [B, 2], t [B] -> [B, 2]."""

    @nn.compact
    def __call__(self, x, t):
        h = jnp.concatenate([x, jnp.sin(t[:, None] * jnp.arange(1, 5)), jnp.cos(t[:, None] * jnp.arange(1, 5))], -1)
        for _ in range(3):
            h = nn.silu(nn.Dense(128)(h))
        return nn.Dense(x.shape[-1])(h)


def main():
    a = args(__doc__.splitlines()[0])
    steps, n = (30, 64) if a.small else (2000, 1000)
    ns = noise.vp_linear()
    data = mixture()
    net = MLP()
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
    tx = optax.adam(2e-3)

    @jax.jit
    def step(params, opt, key):  # the DDPM loss: || eps_theta(alpha x0 + sigma eps, t) - eps ||^2
        k1, k2, k3 = jax.random.split(key, 3)
        x0 = data.sample(k1, 256).astype(jnp.float32)
        t = jax.random.uniform(k2, (256,), minval=1e-3, maxval=1.0)
        eps = jax.random.normal(k3, x0.shape)
        x = jnp.exp(ns.log_alpha(t))[:, None] * x0 + ns.sigma(t)[:, None] * eps
        loss, g = jax.value_and_grad(lambda p: jnp.mean((net.apply(p, x, t) - eps) ** 2))(params)
        updates, opt = tx.update(g, opt)
        return optax.apply_updates(params, updates), opt, loss

    opt = tx.init(params)
    for key in jax.random.split(jax.random.PRNGKey(1), steps):
        params, opt, loss = step(params, opt, key)
    print(f"trained {steps} steps, last loss {float(loss):.3f}")

    # net.apply is the same function object every call: one compiled program per schedule length.
    model = omsjax.Model(net.apply, params, parameterization="noise", sample_shape=(2,))
    x_T = omsjax.prior(ns, jax.random.PRNGKey(2), n, (2,))
    want = np.asarray(data.sample(jax.random.PRNGKey(3), n))
    for s in (presets.ddim(ns, 10), presets.dpm_solver_pp(ns, 10, 2), presets.unipc(ns, 10, 2)):
        x = np.asarray(omsjax.sample(model, ns, s, x_T))
        print(f"NFE 10: sample mean {x.mean(0).round(2)}, std {x.std(0).round(2)} (data: {want.std(0).round(2)})")
    many = omsjax.stack([presets.unipc(ns, 8, 2, skip=k) for k in spacing.SPACINGS])
    xs = omsjax.sample_many(model, ns, many, x_T, method="vmap")  # 4 spacings in one vectorised program
    print("sample_many over the spacings:", xs.shape)


if __name__ == "__main__":
    main()
