"""Classifier-free guidance on the class-conditional digits zoo (`checkpoints/digits-cond`): quality and its limits.

(a) The FD-accuracy trade-off over the guidance scale w = 0..8 at 50 steps of DPM-Solver++(2M) (logSNR spacing;
    a guided step calls the model twice, so 100 model calls), for `--model` (default 1, digits-cond-xs, the
    member of the shipped guided searches; 3x faster than digits-cond-m on a CPU): the digits analogue of
    Stable Diffusion's FID-CLIP curves. FD: the digits FD of class-balanced samples (`conditional.scores`);
    accuracy: the share that the shipped classifier labels as the requested class.
(b) Every preset of `SOLVERS` at 4..10 steps and w = 3 and 6 (logSNR spacing), on the same noise and labels:
    where guided few-step sampling breaks down.

Every cell is the mean over three noise seeds of `--samples` class-balanced samples (the seeds' spread is given);
all schedules of a cell's row share those seeds (paired). Schedules of one length and guidance run in one
compiled program (`sample_candidates`). Writes `benchmarks/figures/guidance-fd-accuracy.png`,
`benchmarks/guidance.json` and the section between the `guidance` markers of benchmarks/RESULTS.md.
Run: `python benchmarks/bench_guidance.py [--quick]` (one process at a time on the machine).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import FIGURES, machine, save_json, write_section

import omsjax
from omsjax import plots, presets, sampler, zoo
from omsjax.metrics import conditional
from omsjax.search.candidates import sample_candidates

SCALES = (0.0, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
SOLVERS = ("DDIM", "DPM-Solver-3", "DPM-Solver++(2M)", "DPM-Solver++(3M)", "UniPC-2 (bh2)", "UniPC-3 (bh2)")
STEPS = (4, 5, 6, 7, 8, 9, 10)
SEEDS = (11, 12, 13)
SKIP = "logSNR"


def scored(models, ns, scheds, k, n, seeds, mean):
    """{"fd": [S, seeds], "accuracy": [S, seeds]} of schedules `scheds` (one length) on `n` balanced samples per
    seed. Schedules whose guidance differs run one per call: batched under vmap, a guidance array makes every step
    run both halves of the guided call and the unguided one (`sample_candidates`)."""
    labels = conditional.balanced_labels(n, k)
    cond, uncond = conditional.conditioning(labels, k)
    fd, acc = np.zeros((len(scheds), len(seeds))), np.zeros((len(scheds), len(seeds)))
    for j, seed in enumerate(seeds):
        x_T = float(ns.prior_std(float(scheds[0].ts[0]))) * sampler.noise(seed, n, (8, 8, 1))
        same = all(np.array_equal(s.guidance, scheds[0].guidance) for s in scheds)
        sampling = omsjax.SampleOptions(cond=cond, uncond=uncond, data_mean=mean)
        xs = sample_candidates(models, ns, scheds, x_T, sampling=sampling, chunk=len(scheds) if same else 1)
        for i, x in enumerate(xs):
            s = conditional.scores(x, labels)
            fd[i, j], acc[i, j] = s["fd"], s["accuracy"]
    return {"fd": fd.tolist(), "accuracy": acc.tolist()}


def cell(fd, acc) -> str:
    fd, acc = np.asarray(fd), np.asarray(acc)
    return f"{fd.mean():.2f} ± {fd.std():.2f} / {100 * acc.mean():.1f}%"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke test): 2 scales, 2 solvers, 1 seed")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--zoo", default=str(zoo.COND_ZOO))
    ap.add_argument("--model", type=int, default=1, help="the zoo member (default 1: digits-cond-xs)")
    a = ap.parse_args()
    models, ns, manifest = zoo.load_zoo(a.zoo)
    k, mean, m = zoo.num_classes(manifest), zoo.data_mean(manifest), a.model
    name = manifest["models"][m]["name"]
    scales, solvers, steps, seeds, n = SCALES, SOLVERS, STEPS, SEEDS, a.samples
    if a.quick:
        scales, solvers, steps, seeds, n = (1.0, 3.0), SOLVERS[2:4], (4,), SEEDS[:1], 40
    t0 = time.perf_counter()

    # (a) the trade-off at 50 steps
    base = presets.named("DPM-Solver++(2M)", ns, 50, skip=SKIP, model=m)
    curve = scored(models, ns, [presets.with_guidance(base, w) for w in scales], k, n, seeds, mean)
    # (b) the presets at few steps, w = 3 and 6
    grid = {}
    for w in (3.0, 6.0):
        for s in steps:
            scheds = [presets.named(v, ns, s, skip=SKIP, model=m, guidance=w) for v in solvers]
            grid[f"{w:g}/{s}"] = scored(models, ns, scheds, k, n, seeds, mean)
    seconds = time.perf_counter() - t0
    out = {"model": name, "samples": n, "seeds": list(seeds), "spacing": SKIP, "scales": list(scales), "curve": curve,
           "solvers": list(solvers), "steps": list(steps), "grid": grid, "seconds": seconds}  # fmt: skip
    if a.quick:
        print(out)
        return
    save_json(FIGURES.parent / "guidance.json", out)

    fd, acc = np.mean(curve["fd"], 1), np.mean(curve["accuracy"], 1)
    fig_path = FIGURES / "guidance-fd-accuracy.png"
    plots.fd_accuracy(fd, acc, scales, fig_path, title=f"{name}, DPM-Solver++(2M), 50 steps")
    lines = [
        "## Classifier-free guidance on the class-conditional zoo (`benchmarks/bench_guidance.py`)",
        "",
        f"Machine: {machine()}. Model: {name} (member {m} of `checkpoints/digits-cond`). Every cell: the "
        f"mean ± spread (std) over noise seeds {list(seeds)} of {n} class-balanced samples each, the same noise "
        f"and labels for every schedule; FD in the shipped classifier's features (lower is better) / accuracy (the "
        f"share classified as the requested class). {seconds / 60:.1f} minutes in all.",
        "",
        f"### FD and accuracy over the guidance scale: DPM-Solver++(2M), 50 steps, {SKIP} spacing",
        "",
        f"![FD against accuracy](figures/{fig_path.name})",
        "",
        "| guidance w | model calls | FD | accuracy |",
        "|---|---|---|---|",
    ]
    for i, w in enumerate(scales):
        f, c = np.asarray(curve["fd"][i]), np.asarray(curve["accuracy"][i])
        lines.append(f"| {w:g} | {50 if w == 1 else 100} | {f.mean():.2f} ± {f.std():.2f} | "
                     f"{100 * c.mean():.1f}% ± {100 * c.std():.1f} |")  # fmt: skip
    for w in (3.0, 6.0):
        lines += ["", f"### Presets at few steps, guidance {w:g} ({SKIP} spacing; FD / accuracy; a step is two "
                  "model calls)", "", "| solver | " + " | ".join(f"{s} steps" for s in steps) + " |",
                  "|---|" + "---|" * len(steps)]  # fmt: skip
        for i, v in enumerate(solvers):
            row = [cell(grid[f"{w:g}/{s}"]["fd"][i], grid[f"{w:g}/{s}"]["accuracy"][i]) for s in steps]
            lines.append(f"| {v} | " + " | ".join(row) + " |")
        best = [min(range(len(solvers)), key=lambda i, s=s: np.mean(grid[f"{w:g}/{s}"]["fd"][i])) for s in steps]
        lines.append("| best FD | " + " | ".join(solvers[b] for b in best) + " |")
    write_section("\n".join(lines), "guidance")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
