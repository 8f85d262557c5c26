"""Differentiate the sampler with respect to its times: a few Adam steps on the 6 times of DPM-Solver++(2M) at NFE 5
to bring its samples closer to a 100-step run, checked on held-out noise. `remat=True` keeps the memory of the
gradient to one step's activations.

    python examples/grad_times.py [--small]
"""

import jax
import jax.numpy as jnp
import optax
from _common import args, mixture

import omsjax
from omsjax import noise, presets


def main():
    a = args(__doc__.splitlines()[0])
    steps, n = (3, 32) if a.small else (150, 512)
    ns = noise.vp_linear()
    gmm = mixture()
    model = omsjax.Model(lambda p, x, t: p.eps(ns, x, t), gmm, sample_shape=(2,))
    like = presets.dpm_solver_pp(ns, 5, 2)
    fine = presets.unipc(ns, 100, 3)
    x_train, x_held = (omsjax.prior(ns, jax.random.PRNGKey(k), n, (2,)) for k in (0, 1))
    ref_train, ref_held = (omsjax.sample(model, ns, fine, x) for x in (x_train, x_held))

    # Times as a monotone function of free logits: ts = end points + softmax-spaced interior.
    t0, t1 = float(like.ts[0]), float(like.ts[-1])

    def times(u):
        inc = jax.nn.softmax(u)
        return t0 + (t1 - t0) * jnp.concatenate([jnp.zeros(1), jnp.cumsum(inc)])

    def loss(u, x_T, ref):
        s = omsjax.Schedule.from_times(times(u), like=like)
        return jnp.mean((omsjax.sample(model, ns, s, x_T, remat=True) - ref) ** 2)

    u = jnp.log(jnp.diff(like.ts) / (t1 - t0))  # start from the preset's own times
    tx = optax.adam(0.05)
    opt = tx.init(u)
    grad = jax.jit(jax.value_and_grad(loss))
    before = float(loss(u, x_held, ref_held))
    for _ in range(steps):
        _, g = grad(u, x_train, ref_train)
        updates, opt = tx.update(g, opt)
        u = optax.apply_updates(u, updates)
    after = float(loss(u, x_held, ref_held))
    print(f"held-out MSE to the 100-step run: {before:.4f} at the preset's times, {after:.4f} after {steps} Adam steps")
    print("times:", jnp.round(times(u), 4))


if __name__ == "__main__":
    main()
