"""A k-diffusion / EDM denoiser D(x; sigma): `Model.from_denoiser`, Karras sigmas as custom times, and the solvers
against EDM's Heun sampler and a diffrax reference.

    python examples/edm_denoiser.py [--small]
"""

import jax
import jax.numpy as jnp
import numpy as np
from _common import args, mixture

import omsjax
from omsjax import noise, oracles, presets, spacing

jax.config.update("jax_enable_x64", True)  # exact comparisons against the reference


def main():
    a = args(__doc__.splitlines()[0])
    n = 16 if a.small else 256
    ns = noise.edm()  # alpha = 1, sigma = t in [0.002, 80]
    gmm = mixture()

    def denoiser(params, x, sigma):  # the exact D(x; sigma) = x - sigma eps(x, sigma) of the mixture
        return x - sigma[:, None] * params.eps(ns, x, sigma)

    model = omsjax.Model.from_denoiser(denoiser, gmm, sample_shape=(2,))
    x_T = omsjax.prior(ns, jax.random.PRNGKey(0), n, (2,), dtype=jnp.float64)  # sigma_max = 80 times N(0, I)
    ref = oracles.reference_solution(lambda x, t: gmm.eps(ns, x, t), ns, x_T, ns.t_max, ns.t_min)
    for nfe in (6, 10, 20):
        ts = spacing.times_from_sigmas(ns, spacing.karras_sigmas(nfe + 1, 0.002, 80.0, rho=7.0))
        rows = {
            "DPM-Solver++(2M), Karras sigmas": omsjax.Schedule.from_times(ts, like=presets.dpm_solver_pp(ns, nfe, 2)),
            "UniPC-2, Karras sigmas": omsjax.Schedule.from_times(ts, like=presets.unipc(ns, nfe, 2)),
        }
        for name, s in rows.items():
            err = float(jnp.sqrt(jnp.mean((omsjax.sample(model, ns, s, x_T) - ref) ** 2)))
            print(f"NFE {nfe:2d} {name:34s} RMS error {err:.2e}")
        heun_ts = spacing.times_from_sigmas(ns, spacing.karras_sigmas(nfe // 2 + 1, 0.002, 80.0))
        err = float(jnp.sqrt(jnp.mean((omsjax.sample_heun(model, ns, jnp.asarray(heun_ts), x_T) - ref) ** 2)))
        print(f"NFE {nfe:2d} {'EDM Heun (2 calls per step)':34s} RMS error {err:.2e}")
    print("reference spread:", np.asarray(ref).std(0))


if __name__ == "__main__":
    main()
