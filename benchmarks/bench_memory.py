"""Memory of gradients through the sampler: `sample(..., remat=True)` against the default.

The gradient of a loss on the samples with respect to the times `ts` (what `omsjax.timesteps` optimises), at
NFE 50 with UniPC-2 on a member of the shipped digits zoo, batch 64, float32. Peak memory is XLA's own figure for
the compiled program (`memory_analysis().temp_size_in_bytes`: the buffers alive at once, not counting arguments
and outputs); the time is the median of repeated runs after compiling. Writes the section between the `memory`
markers of benchmarks/RESULTS.md.  Run: `python benchmarks/bench_memory.py [--quick]`.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import machine, median_time, write_section

import omsjax
from omsjax import presets, zoo


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="NFE 10, batch 8, one repeat (a smoke test)")
    ap.add_argument("--member", type=int, default=1, help="zoo member index (default 1)")
    args = ap.parse_args()
    nfe, batch, repeats = (10, 8, 1) if args.quick else (50, 64, 3)
    models, ns, manifest = zoo.load_zoo()
    model = models[args.member]
    s = presets.unipc(ns, nfe, 2)
    x_T = omsjax.prior(ns, jax.random.PRNGKey(0), batch, tuple(manifest["image_shape"]))

    def loss(ts, params, remat):
        m = model.replace(params=params)
        out = omsjax.sample(m, ns, s._replace(ts=ts.astype(jnp.float32)), x_T, remat=remat)
        return jnp.mean(out**2)

    rows, grads = [], {}
    for remat in (False, True):
        t0 = time.perf_counter()
        fn = jax.jit(jax.grad(loss), static_argnums=2).lower(s.ts, model.params, remat).compile()
        compile_s = time.perf_counter() - t0
        mem = fn.memory_analysis()
        grads[remat] = np.asarray(fn(s.ts, model.params))
        run_s = median_time(fn, s.ts, model.params, repeats=repeats)
        rows.append((remat, mem.temp_size_in_bytes / 2**20, compile_s, run_s))
    same = float(np.max(np.abs(grads[True] - grads[False])) / np.max(np.abs(grads[False])))
    (_, m0, _, r0), (_, m1, _, r1) = rows
    text = [
        "## Memory of gradients through the sampler (`benchmarks/bench_memory.py`)",
        "",
        f"Machine: {machine()}.",
        "",
        f"Gradient of mean(x_N^2) w.r.t. the {nfe + 1} times, UniPC-2 at NFE {nfe}, zoo member "
        f"{model.name!r} ({manifest['models'][args.member]['param_count']} params), batch {batch}, float32.",
        "",
        "| `remat` | peak temporary memory (MiB) | compile (s) | gradient, median (s) |",
        "|---|---|---|---|",
        *[f"| {r} | {m:.1f} | {c:.1f} | {t:.3f} |" for r, m, c, t in rows],
        "",
        f"remat keeps {m0 / m1:.1f}x less memory for {r1 / r0:.2f}x the time; the two gradients agree to "
        f"{same:.1e} (relative to the largest entry).",
    ]
    if not args.quick:
        write_section("\n".join(text), "memory")
    print("\n".join(text))


if __name__ == "__main__":
    main()
