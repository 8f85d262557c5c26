"""Which step spacing suits which noise schedule: the presets at every spacing on an exact 2-D Gaussian mixture.

For each noise schedule constructor at its defaults, the RMS error of the final samples against the diffrax
reference (the exact probability-flow ODE endpoint from the same 256 noise draws, float64), for the seven
multistep solvers of `presets.BASELINES` at NFE 4, 6 and 10; a cell is the geometric mean over the solvers. The
column the noise schedule names as its `default_spacing` (what the presets use without `skip`) is marked.
Writes the section between the `spacing` markers of benchmarks/RESULTS.md.  Run: `python benchmarks/bench_spacing.py`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from common import machine, write_section

import omsjax
from omsjax import noise, oracles, presets, spacing

jax.config.update("jax_enable_x64", True)

NFES, N = (4, 6, 10), 256


def eps_fn(params, x, t):
    gmm, ns = params
    return gmm.eps(ns, x, t)


def table(ns, gmm) -> list[str]:
    model = omsjax.Model(eps_fn, (gmm, ns), sample_shape=(2,))
    x_T = omsjax.prior(ns, jax.random.PRNGKey(0), N, (2,), dtype=jnp.float64)
    ref = oracles.reference_solution(lambda x, t: gmm.eps(ns, x, t), ns, x_T, ns.t_max, ns.default_t_end)
    run = jax.jit(lambda s: omsjax.sample(model, ns, s, x_T))
    rows = []
    for nfe in NFES:
        cells = {}
        for skip in spacing.SPACINGS:
            errs = [float(jnp.sqrt(jnp.mean((run(presets.named(name, ns, nfe, skip=skip)) - ref) ** 2)))
                    for name in presets.BASELINES]  # fmt: skip
            cells[skip] = float(np.exp(np.mean(np.log(errs))))
        best = min(cells, key=cells.get)
        text = [("**{:.3g}**" if k == best else "{:.3g}").format(v) + (" (default)" if k == ns.default_spacing else "")
                for k, v in cells.items()]  # fmt: skip
        rows.append(f"| {ns.kind} | {nfe} | " + " | ".join(text) + " |")
        print(rows[-1], flush=True)
    return rows


def main():
    rng = np.random.RandomState(0)
    gmm = oracles.GaussianMixture.create(2.0 * rng.randn(4, 2), np.full(4, 0.3), np.full(4, 0.25))
    text = [
        "## Default step spacings (`benchmarks/bench_spacing.py`)",
        "",
        f"Machine: {machine()}.",
        "",
        "A 2-D mixture of four Gaussians (std 0.3), its exact model on each noise schedule at its defaults; RMS error "
        f"of {N} final samples against the diffrax reference from the same noise, geometric mean over the 7 solvers "
        "of `presets.BASELINES`; lowest in bold, the schedule's `default_spacing` marked.",
        "",
        "| noise schedule | NFE | " + " | ".join(spacing.SPACINGS) + " |",
        "|---|---|" + "---|" * len(spacing.SPACINGS),
    ]
    for make in (noise.vp_linear, noise.vp_cosine, noise.vp_discrete, noise.edm, noise.flow):
        text += table(make(), gmm)
    write_section("\n".join(text), "spacing")


if __name__ == "__main__":
    main()
