"""Schedule search (issue: predictor and vectorised genetic search).

1. GA speed: generations of a population of 64 (64 children each) scored by the predictor under `vmap`, all in one
   jitted `lax.scan`: compile time, then the median of 3 runs.
2. Predictor ranking quality: Kendall tau on held-out evaluated schedules (train on a random half of a search's
   archive, test on the other half), hinge vs. MSE loss.

The verdicts of searched schedules against the baselines are in every search's report (paired over 3 held-out
draws, `search.final`) and in `bench_reference.py` (digits-m, every preset with and without AFS, three metrics).

Writes the `search` section of benchmarks/RESULTS.md.
Run: `python benchmarks/bench_search.py --runs DIR [DIR ...]` (each DIR an `omsjax search --out` folder).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from common import machine, write_section

from omsjax import noise, zoo
from omsjax.search import ga, predictor, seeding
from omsjax.search.archive import Archive, genome_from_dict
from omsjax.search.space import SearchSpace


def bench_ga(generations: int, lat):
    ns = noise.vp_linear()
    space = SearchSpace.for_nfe(5, lat, model=len(lat) - 1, mean_afs=True)
    params = predictor.init_params(space, ns, jax.random.PRNGKey(0))
    cfg = ga.GAConfig(pop_size=64, num_children=64)

    seeds = seeding.preset_seeds(space, ns)  # host code: the presets as genomes

    @jax.jit
    def go(params, seeds, key):
        fit = lambda pop: predictor.score(space, ns, params, pop)  # noqa: E731
        state = ga.init(space, cfg, fit, key, seeds)
        return ga.run(space, cfg, fit, state, generations)

    t0 = time.perf_counter()
    jax.block_until_ready(go(params, seeds, jax.random.PRNGKey(1)))
    compile_s = time.perf_counter() - t0
    runs = []
    for r in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(go(params, seeds, jax.random.PRNGKey(2 + r)))
        runs.append(time.perf_counter() - t0)
    return compile_s, statistics.median(runs), go._cache_size()


def bench_tau(run_dir: Path):
    report = json.loads((run_dir / "report.json").read_text())
    arch = Archive(run_dir / "archive.jsonl")
    key = f"seed{report['search_noise_seed']}-n{report['search_samples']}"  # the search noise, whatever the metric
    recs = [r for r in arch.records if r.genome and (r.eval_key == key or r.eval_key.startswith(key + "-"))]
    models, ns, _ = zoo.load_zoo(report["zoo"])
    lat = [m.latency for m in models]
    t_end = float(ns.default_t_end)
    if report["mode"] == "solver":
        space = SearchSpace.for_nfe(report["searched"]["nfe"], lat, model=report["model"], mean_afs=True,
                                             t_start=float(ns.t_max), t_end=t_end)  # fmt: skip
    else:
        n = len(recs[0].genome["order"])
        space = SearchSpace(num_positions=n, latencies=lat, mode=report["mode"], mean_afs=True,
                                     t_start=float(ns.t_max), t_end=t_end)  # fmt: skip
    g = jax.tree.map(lambda *xs: jnp.stack(xs), *[genome_from_dict(r.genome) for r in recs])
    fd = np.asarray([r.score for r in recs])
    out = {}
    for loss in ("hinge", "mse"):
        taus = []
        for seed in range(3):
            perm = np.random.RandomState(seed).permutation(len(fd))
            tr, ho = perm[: len(fd) // 2], perm[len(fd) // 2 :]
            take = lambda idx: jax.tree.map(lambda a: a[idx], g)  # noqa: E731
            training = predictor.Training(epochs=300, loss=loss)
            res = predictor.fit(space, ns, take(tr), fd[tr], jax.random.PRNGKey(seed), training=training,
                                heldout=(take(ho), fd[ho]))  # fmt: skip
            taus.append(res.heldout_tau)
        out[loss] = (float(np.mean(taus)), float(np.std(taus)))
    return len(fd), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="*", default=[], help="omsjax search output folders")
    ap.add_argument(
        "--tau-runs",
        nargs="*",
        default=None,
        help="the folders whose archives train predictors for the tau table (default: all of --runs)",
    )
    ap.add_argument("--generations", type=int, default=1000)
    args = ap.parse_args()
    models, _, _ = zoo.load_zoo()
    lat = [m.latency for m in models]
    L = ["## Schedule search (`benchmarks/bench_search.py`)", "", f"Machine: {machine()}.", ""]
    c, r, cache = bench_ga(args.generations, lat)
    L += ["### Genetic search speed", "",
          f"{args.generations} generations, population 64 + 64 children, every child decoded and scored by the LSTM "
          f"predictor under `vmap`, one jitted `lax.scan` (solver space, NFE 5): compile {c:.1f} s, run "
          f"{r:.2f} s (median of 3; {cache} compiled program), {r / args.generations * 1e3:.2f} ms per generation. "
          f"Target: <= 10 s.", ""]  # fmt: skip
    print("\n".join(L[-3:]), flush=True)
    runs = [Path(d) for d in args.runs]
    if runs:
        L += ["### Predictor ranking quality", "",
              "Kendall tau on held-out evaluated schedules: predictor trained on a random half of a search's archive "
              "(search noise), tested on the other half; mean +- std over 3 splits.", "",
              "| search | schedules | tau, hinge loss | tau, MSE loss |", "|---|---|---|---|"]  # fmt: skip
        for d in runs if args.tau_runs is None else [Path(t) for t in args.tau_runs]:
            n, taus = bench_tau(d)
            L.append(f"| {d.name} | {n} | {taus['hinge'][0]:.2f} +- {taus['hinge'][1]:.2f} | "
                     f"{taus['mse'][0]:.2f} +- {taus['mse'][1]:.2f} |")  # fmt: skip
            print(L[-1], flush=True)
    write_section("\n".join(L), "search")


if __name__ == "__main__":
    main()
