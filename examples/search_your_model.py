"""Search a schedule for your own model and your own metric: `find_schedule` on an exact 16-d Gaussian mixture,
the metric being the MSE to a 100-step run from the same noise (how far few steps land from the ODE's endpoint).

    python examples/search_your_model.py [--small]
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from _common import args, mixture

import omsjax
from omsjax import presets, schedules
from omsjax.search import find_schedule, ga, loop
from omsjax.search.find import QUICK


def main():
    a = args(__doc__.splitlines()[0])
    ns = schedules.vp_linear()
    gmm = mixture(dim=16)
    model = omsjax.Model(lambda p, x, t: p.eps(ns, x, t), gmm, sample_shape=(16,))
    reference = jax.jit(lambda x: omsjax.sample(model, ns, presets.unipc(ns, 100, 3), x))

    def mse(samples, x_T):  # lower is better; numpy arrays [n, 16]
        return float(np.mean((samples - np.asarray(reference(jnp.asarray(x_T)))) ** 2))

    tiny = loop.LoopConfig(stages=1, initial_random=4, per_stage=4, generations=3, predictor_epochs=5, final_top=2,
                           heldout_tau=False, ga=ga.GAConfig(pop_size=8, num_children=8))  # fmt: skip
    # `quick=True` is the small configuration for a first look (2 stages); this runs one stage of it. Search and
    # held-out noise have one size, so each schedule length compiles one sampling program: compiling, not
    # sampling, is most of the time here.
    first_look = dataclasses.replace(QUICK, stages=1)
    n = 8 if a.small else 32
    kw = dict(config=tiny if a.small else first_look, num_samples=n, heldout_samples=n)
    res = find_schedule(model, ns, nfe=4, metric=mse, key=jax.random.PRNGKey(0), **kw)
    best = res.report["best_baseline"]
    print(f"searched NFE-4 schedule: MSE {res.score:.4f} on held-out noise")
    print(f"best classic solver:     MSE {best['score']:.4f} ({best['name']})")
    print(res.schedule.to_json())


if __name__ == "__main__":
    main()
