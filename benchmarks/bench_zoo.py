"""The shipped digits zoo (issue: model zoo on real data).

1. Per model: parameters, latency, FD (1,000 samples) at NFE 50 with DPM-Solver++(3M) and at NFE 5 / 10 with DDIM,
   DPM-Solver++(2M) and UniPC-2 (bh2), logSNR spacing, and the trajectory error (RMSE vs. the model's own diffrax
   ODE endpoint, 64 samples) at NFE 10 with DPM-Solver++(2M).
2. The FD floor at the same sample counts (held-out split; train resamples), and the best model at NFE 50 against it
   (3 seeds).
3. Does a small model beat a large one at some steps? A fixed DPM-Solver++(2M) NFE-10 schedule of the largest model,
   with the model of one segment of steps swapped for a smaller one: FD (3 seeds) and cost.
4. Sample grids (PNG) of every model, and of real digits, under benchmarks/figures/.

Writes the `zoo` section of benchmarks/RESULTS.md. Run: `python benchmarks/bench_zoo.py [--quick]`.
"""

from __future__ import annotations

import argparse
import time

import jax.numpy as jnp
import numpy as np
from common import FIGURES, machine, write_section

from omsjax import data, metrics, plots, presets, sampler, zoo

SHAPE = (8, 8, 1)


def fd_of(models, ns, sched, n, seed, mean):
    x = sampler.generate(models, ns, sched, n, SHAPE, key=seed, data_mean=mean)
    return metrics.fd(x), x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer samples and seeds (smoke run)")
    args = ap.parse_args()
    n = 200 if args.quick else 1000
    seeds = (0,) if args.quick else (0, 1, 2)
    models, ns, manifest = zoo.load_zoo()
    mean = jnp.asarray(np.asarray(manifest["data_mean"], np.float32))
    names = [m["name"] for m in manifest["models"]]
    big = len(models) - 1
    t_start = time.perf_counter()
    FIGURES.mkdir(exist_ok=True)

    # 1. Per-model table.
    cols = [("DPM-Solver++(3M)", "dpm_solver_pp", {"order": 3}, 50)]
    for nfe in (5, 10):
        cols += [("DDIM", "ddim", {}, nfe), ("DPM-Solver++(2M)", "dpm_solver_pp", {"order": 2}, nfe),
                 ("UniPC-2 (bh2)", "unipc", {"order": 2}, nfe)]  # fmt: skip
    rows = []
    for k, entry in enumerate(manifest["models"]):
        fds = []
        for _label, kind, kw, nfe in cols:
            fd, x = fd_of(models, ns, presets.preset(kind, ns, nfe, model=k, **kw), n, 0, mean)
            fds.append(fd)
            if nfe == 50:
                plots.save_grid(x[:100], FIGURES / f"{entry['name']}-dpmpp3m-nfe50.png")
        sched = presets.dpm_solver_pp(ns, 10, 2, model=k)
        x_T = sampler.noise(0, 64, SHAPE)
        x = sampler.sample(models, ns, sched, x_T, data_mean=mean)
        ref = metrics.ode_reference(models[k], ns, x_T, float(sched.ts[0]), float(sched.ts[-1]))
        rows.append((entry, fds, metrics.reference_rmse(x, ref)))
        print(entry["name"], [f"{v:.2f}" for v in fds], f"traj {rows[-1][2]:.4f}", flush=True)
    plots.save_grid(data.load_digits("heldout")[:100], FIGURES / "real-heldout.png")

    # 2. Floors and the best model at NFE 50 with 3 seeds, at N = 1000 and N = 300.
    floor = {k: metrics.fd_floor(n=k, repeats=10) for k in (300, n)}
    best = int(np.argmin([r[1][0] for r in rows]))
    s50 = presets.dpm_solver_pp(ns, 50, 3, model=best)
    best_n = [fd_of(models, ns, s50, n, s, mean)[0] for s in seeds]
    best_300 = [fd_of(models, ns, s50, 300, s, mean)[0] for s in seeds]

    # 3. Model swap in one segment of a fixed schedule.
    base = presets.dpm_solver_pp(ns, 10, 2, model=big)
    lat = [m.latency for m in models]
    segments = {"steps 0-2 (high noise)": slice(0, 3), "steps 3-6 (middle)": slice(3, 7),
                "steps 7-9 (low noise)": slice(7, 10)}  # fmt: skip
    variants = [(f"{names[big]} at every step", base)]
    for small in range(big):
        for label, seg in segments.items():
            m = np.full(10, big)
            m[seg] = small
            variants.append((f"{names[small]} at {label}", base._replace(model=jnp.asarray(m, jnp.int32))))
        variants.append((f"{names[small]} at every step", base._replace(model=jnp.full(10, small, jnp.int32))))
    swap = []
    for label, s in variants:
        vals = np.asarray([fd_of(models, ns, s, n, seed, mean)[0] for seed in seeds])
        delta = vals - swap[0][4] if swap else np.zeros_like(vals)  # paired: same noise seeds as the base
        swap.append((label, float(np.mean(vals)), float(np.std(vals)), float(s.cost(lat)), vals, delta))
        print(label, f"{swap[-1][1]:.2f} +- {swap[-1][2]:.2f}, delta {np.mean(delta):+.2f}", flush=True)
    seconds = time.perf_counter() - t_start

    # ---- RESULTS.md
    L = ["## Digits zoo (`benchmarks/bench_zoo.py`)", "", f"Machine: {machine()}. {seconds:.0f} s in all.", ""]
    L += [f"FD: Fréchet distance in the shipped digits classifier's features against the train split, {n} samples "
          f"(seed 0), logSNR spacing; lower is better. Trajectory error: RMSE of 64 samples of DPM-Solver++(2M) "
          f"NFE 10 against the same model's diffrax ODE endpoint (Dopri8, rtol = atol = 1e-5).", ""]  # fmt: skip
    head = "| model | params | latency (ms / 256) | 3M NFE 50 | " + " | ".join(
        f"{c[0]} NFE {c[3]}" for c in cols[1:]
    ) + " | traj. RMSE |"  # fmt: skip
    L += [head, "|" + "---|" * (len(cols) + 4)]
    for entry, fds, traj in rows:
        L.append(f"| {entry['name']} | {entry['param_count']:,} | {entry['latency_ms']:.1f} | "
                 + " | ".join(f"{v:.2f}" for v in fds) + f" | {traj:.4f} |")  # fmt: skip
    f300, fn = floor[300], floor[n]
    ratio_300 = np.mean(best_300) / f300["heldout"]
    L += ["", "### The floor", "",
          f"- held-out split ({f300['heldout_n']} real images never used in training): FD {f300['heldout']:.2f}",
          f"- {n} train images resampled (10 draws; optimistic: they are part of the reference): "
          f"{fn['train_resample_mean']:.2f} +- {fn['train_resample_std']:.2f}",
          f"- 300 train images resampled: {f300['train_resample_mean']:.2f} +- {f300['train_resample_std']:.2f}",
          f"- best model ({names[best]}) at NFE 50, DPM-Solver++(3M), seeds {list(seeds)}: "
          f"{np.mean(best_n):.2f} +- {np.std(best_n):.2f} with {n} samples; {np.mean(best_300):.2f} +- "
          f"{np.std(best_300):.2f} with 300 samples = **{ratio_300:.2f}x the held-out floor at the same N** "
          f"(target: within 2x)", ""]  # fmt: skip
    L += ["### Does a small model beat a large one at some steps?", "",
          f"DPM-Solver++(2M), NFE 10, logSNR; {names[big]} at every step except one segment; FD mean +- std over "
          f"seeds {list(seeds)}, {n} samples; the change is paired (same noise seeds as the all-{names[big]} "
          f"schedule), mean +- std; cost = sum of the scheduled models' latencies.", "",
          f"| schedule | FD | change vs. all {names[big]} (paired) | cost (ms) |", "|---|---|---|---|"]  # fmt: skip
    for label, mu, sd, c, _, d in swap:
        L.append(f"| {label} | {mu:.2f} +- {sd:.2f} | {np.mean(d):+.2f} +- {np.std(d):.2f} | {c:.0f} |")
    better = [s for s in swap[1:] if np.mean(s[5]) < 0 and "every step" not in s[0]]
    clear = [s for s in better if np.mean(s[5]) + np.std(s[5]) < 0]
    L += ["", (f"{len(better)} segment swaps to a smaller model lower the mean FD at a lower cost: "
               + ", ".join(f"{s[0]} ({np.mean(s[5]):+.2f} +- {np.std(s[5]):.2f}, {s[3]:.0f} ms)" for s in better)
               + f"; {len(clear)} of them by more than one paired std.") if better else
          f"No segment swap lowers the mean FD of the all-{names[big]} schedule at this NFE.", ""]  # fmt: skip
    L += ["Sample grids (DPM-Solver++(3M), NFE 50, 100 samples): "
          + ", ".join(f"[{e['name']}](figures/{e['name']}-dpmpp3m-nfe50.png)" for e in manifest["models"])
          + "; real held-out digits: [real](figures/real-heldout.png)."]  # fmt: skip
    text = "\n".join(L)
    print(text)
    if not args.quick:
        write_section(text, "zoo")


if __name__ == "__main__":
    main()
