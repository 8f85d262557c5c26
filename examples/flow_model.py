"""A flow-matching (rectified-flow) velocity model, v = eps - x0 on x_t = (1 - t) x0 + t eps: the `flow` noise
schedule and the `"flow"` parameterisation, sampled by the same presets, against a diffrax reference. The presets
step at the flow schedule's default spacing (`ns.default_spacing`, uniform in t); logSNR steps are shown beside.

    python examples/flow_model.py [--small]
"""

import jax
import jax.numpy as jnp
from _common import args, mixture

import omsjax
from omsjax import noise, oracles, presets

jax.config.update("jax_enable_x64", True)


def main():
    a = args(__doc__.splitlines()[0])
    n = 16 if a.small else 256
    ns = noise.flow()  # t in [1e-3, 0.999]
    gmm = mixture()

    def velocity(params, x, t):  # the exact v = eps - x0 of the mixture on this schedule
        eps = params.eps(ns, x, t)
        return eps - (x - t[:, None] * eps) / (1.0 - t[:, None])

    model = omsjax.Model(velocity, gmm, parameterization="flow", sample_shape=(2,))
    x_T = omsjax.prior(ns, jax.random.PRNGKey(0), n, (2,), dtype=jnp.float64)
    ref = oracles.reference_solution(lambda x, t: gmm.eps(ns, x, t), ns, x_T, ns.t_max, ns.default_t_end)
    print(f"RMS error to the reference; presets at {ns.default_spacing} (the default) and at logSNR")
    for nfe in (4, 8, 16):
        for name, preset in (("DDIM (Euler)", presets.ddim), ("DPM-Solver++(2M)", presets.dpm_solver_pp),
                             ("UniPC-2", presets.unipc)):  # fmt: skip
            kw = {} if preset is presets.ddim else {"order": 2}
            runs = [omsjax.sample(model, ns, preset(ns, nfe, skip=skip, **kw), x_T) for skip in (None, "logSNR")]
            err = [float(jnp.sqrt(jnp.mean((x - ref) ** 2))) for x in runs]
            print(f"NFE {nfe}: {name:18s} {err[0]:.2e}   logSNR {err[1]:.2e}")


if __name__ == "__main__":
    main()
