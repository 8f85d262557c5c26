"""Search a schedule for your own model and your own metric: `find_schedule` on an exact 16-d Gaussian mixture,
the metric being the MSE to a 100-step run from the same noise (how far few steps land from the ODE's endpoint).

    python examples/search_your_model.py [--small]
"""

import jax
import jax.numpy as jnp
import numpy as np
from _common import args, mixture

import omsjax
from omsjax import noise, presets
from omsjax.search import FindOptions, find_schedule, ga, loop


def main():
    a = args(__doc__.splitlines()[0])
    ns = noise.vp_linear()
    gmm = mixture(dim=16)
    model = omsjax.Model(lambda p, x, t: p.eps(ns, x, t), gmm, sample_shape=(16,))
    reference = jax.jit(lambda x: omsjax.sample(model, ns, presets.unipc(ns, 100, 3), x))

    def mse(samples, x_T):  # lower is better; numpy arrays [n, 16]
        return float(np.mean((samples - np.asarray(reference(jnp.asarray(x_T)))) ** 2))

    tiny = loop.LoopConfig(stages=1, initial_random=4, per_stage=4, generations=3, predictor_epochs=5, final_top=2,
                           heldout_tau=False, ga=ga.GAConfig(pop_size=8, num_children=8))  # fmt: skip
    # `quick=True`: a first look (2 stages of 16 evaluations on 1,024 samples; 3 held-out draws of 1,024).
    kw = dict(options=FindOptions(config=tiny, num_samples=8, heldout_samples=8)) if a.small else dict(quick=True)
    res = find_schedule(model, ns, nfe=4, metric=mse, key=jax.random.PRNGKey(0), **kw)
    r = res.report
    best, p = r["best_baseline"], r["paired_difference"]
    print(f"returned: {r['returned']}: MSE {res.score:.4f} (mean of {len(r['heldout_noise_seeds'])} held-out draws)")
    print(f"best classic solver (of {len(r['baselines'])}, +AFS included): {best['name']}: MSE {best['score']:.4f}")
    diff = "" if p is None else f", paired difference {p['mean']:+.4f} +- {p['se']:.4f}"
    print(f"verdict: {r['verdict']}{diff}; noise check {'passed' if r['noise_check']['ok'] else 'FAILED'}")
    print(res.schedule.to_json())


if __name__ == "__main__":
    main()
