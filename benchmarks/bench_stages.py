"""The multi-stage framework (issue 5) on digits: timestep clustering, multi-stage vs. unified at equal training
FLOPs, and the clustering ablation.

1. Clustering: `omsjax stages cluster` (the digits train split, its empirical optimal denoiser, continuous linear
   VP, 100 times, 1,000 Monte-Carlo samples, eta = 2/255, float64) run as a subprocess; the threshold-rule
   boundaries at --alpha, the DP partition and the uniform baselines, as t, lambda and EDM sigma.
2. A unified U-Net (the digits-xs `TrainConfig` of `omsjax.zoo`, precond "vp") against multi-stage networks with
   the same encoder width (16) and decoders (24, 16, 8) near data -> near noise (the paper's 192/128/16 around an
   encoder of 128, with the narrowest decoder kept at 8 = GroupNorm's groups). Three boundary sets, same decoders:
   ours (the threshold rule), uniform in t, uniform in logSNR (`stages.uniform_boundaries`). Every network trains
   with the same batch, learning-rate schedule, EMA and seeds (0, 1, 2), the unified one for --steps steps and each
   multi-stage one for round(steps * F_unified / F_multi) steps, F the XLA FLOPs of a forward pass
   (`stages.forward_flops`; a multi-stage step costs sum_k p_k F_k with p_k its stage probabilities), so that the
   total training FLOPs match. `stages.mean_active_params` is reported too.
3. Every run is evaluated at 12.5/25/50/75/100% of its budget (equal-FLOPs points): FD (`metrics.fd`, 1,000
   samples, noise seed 0) with DPM-Solver++(2M) NFE 10 and UniPC-2 (bh2) NFE 5, logSNR; at the end also
   DPM-Solver++(3M) NFE 50.

Runs live in OUT/runs/NAME-seedK/ (U-Net: orbax checkpoints; multi-stage: the full state after every leg, the EMA
checkpoint of `stages.save_checkpoint`; results.json per run); finished checkpoints are skipped, so the script
resumes. Configs go to OUT/configs/ and, with the results, to benchmarks/configs/stages/ (`omsjax train --config
FILE --out DIR` reproduces a run). Writes the `stages` section of benchmarks/RESULTS.md and
benchmarks/figures/stages-fd-vs-flops.png.

Run: `python benchmarks/bench_stages.py --out runs/bench-stages [--steps 6000] [--seeds 0 1 2] [--alpha 0.6]
[--ablation-seeds 0]`. The RESULTS section comes from `--steps 3000 --ablation-seeds 0`: 8 runs, 66 min in all on the
2-core CPU shared with bench_fdm.
Cost at the defaults: 3 seeds x (the unified digits-xs for 6,000 steps + 3 multi-stage networks of the same total
FLOPs: about 5,300 / 5,500 / 6,900 steps for the clustered / uniform-t / uniform-logSNR boundaries). Measured here
(2-core CPU shared with another benchmark): 85 ms per digits-xs step, 103 ms per multi-stage step (encoder 16,
decoders 24/16/8), 234 ms per digits-m step; digits-m trains at ~800 img/s (160 ms/step) on the idle machine, so
~60 and ~70 ms/step idle: ~18 min for the unified runs and ~60 min for the multi-stage ones, plus ~15 min of
clustering, compilation and sampling: about 1.5 h on the idle 2-core CPU, roughly twice that while another job
shares it. The smoke run (`--steps 40 --seeds 0 --fd-samples 200 --grid 20 --cluster-samples 64`) took 4 min on the
loaded machine, mostly compilation.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
from common import (
    FIGURES,
    checkpoint_steps,
    errorbar_panels,
    fd_at,
    load_json,
    machine,
    mean_std,
    run_checkpoints,
    save_json,
    stages_params_at,
    unet_params_at,
    write_section,
)

from omsjax import data, nets, noise, presets, stages, train, zoo

FRACTIONS = (0.125, 0.25, 0.5, 0.75, 1.0)
CURVES = {  # label: (preset name in presets.NAMED, NFE), logSNR spacing; the first is plotted
    "DPM-Solver++(2M) NFE 10": ("DPM-Solver++(2M)", 10),
    "UniPC-2 (bh2) NFE 5": ("UniPC-2 (bh2)", 5),
}
FINAL = {"DPM-Solver++(3M) NFE 50": ("DPM-Solver++(3M)", 50)}
VARIANTS = ("clustered", "uniform-t", "uniform-logsnr")
CONFIG_DIR = Path(__file__).parent / "configs" / "stages"
SHAPE = (8, 8, 1)


def clustering(args) -> dict:
    """The `omsjax stages cluster` report (cached in OUT/clustering.json)."""
    path = args.out / "clustering.json"
    if not path.exists():
        cmd = [sys.executable, "-m", "omsjax", "stages", "cluster", "--alpha", str(args.alpha),
               "--samples", str(args.cluster_samples), "--grid", str(args.grid), "--out", str(path)]  # fmt: skip
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return load_json(path, None)


def variant_boundaries(report: dict) -> dict[str, tuple[float, ...]]:
    ours = report["threshold"] or report["partition"]  # the DP partition where the rule finds no middle stage
    return {"clustered": tuple(ours["t"]), "uniform-t": tuple(report["uniform_t"]["t"]),
            "uniform-logsnr": tuple(report["uniform_logsnr"]["t"])}  # fmt: skip


def unified_config(args, seed: int) -> train.TrainConfig:
    base = zoo.named_config(args.unified, steps=args.steps).to_dict()
    return train.TrainConfig.from_dict({**base, "precond": "vp", "seed": seed, "ema_warmup": True,
                                        "checkpoint_every": max(1, args.steps // 8)})  # fmt: skip


def stage_config(args, bounds, steps: int, seed: int) -> stages.StageTrainConfig:
    u = zoo.named_config(args.unified)
    net = stages.MultiStageConfig(boundaries=tuple(bounds), decoder_channels=tuple(args.decoders),
                                  encoder_channels=args.encoder, channel_mults=u.net.channel_mults,
                                  num_res_blocks=u.net.num_res_blocks, groups=u.net.groups)  # fmt: skip
    return stages.StageTrainConfig(net=net, steps=steps, batch_size=u.batch_size, lr=u.lr, warmup=u.warmup,
                                   grad_clip=u.grad_clip, weight_decay=u.weight_decay, ema_decay=u.ema_decay,
                                   ema_warmup=True, seed=seed, image_shape=u.image_shape)  # fmt: skip


def costs(args, bounds: dict) -> dict:
    """Forward FLOPs per image and parameters: of the unified U-Net, and per variant the stage FLOPs, their
    probability-weighted mean and the matching step budget."""
    u = unified_config(args, 0)
    pu = jax.eval_shape(lambda: nets.init_unet(u.net, jax.random.PRNGKey(0), u.image_shape))
    f_u = stages.forward_flops(u.net, pu, SHAPE)
    out = {"unified": {"flops": f_u, "params": nets.param_count(pu), "steps": args.steps}}
    for v, b in bounds.items():
        cfg = stage_config(args, b, args.steps, 0)
        p = jax.eval_shape(lambda cfg=cfg: stages.init_params(cfg.net, jax.random.PRNGKey(0), SHAPE))
        per = [stages.forward_flops(cfg.net, p, SHAPE, stage=k) for k in range(cfg.net.num_stages)]
        mean = float(np.dot(cfg.probs, per))
        out[v] = {"flops": mean, "flops_per_stage": per, "probs": list(cfg.probs), "params": nets.param_count(p),
                  "active_params": [stages.active_params(p, k) for k in range(cfg.net.num_stages)],
                  "mean_active_params": stages.mean_active_params(cfg, p),
                  "steps": max(1, round(args.steps * f_u / mean))}  # fmt: skip
    return out


def evaluator(n: int, final_step: int):
    ns = noise.vp_linear()
    scheds = {label: presets.preset(presets.NAMED[s][0], ns, k, **presets.NAMED[s][1])
              for label, (s, k) in {**CURVES, **FINAL}.items()}  # fmt: skip

    def evaluate(model, step):
        labels = list(CURVES) + (list(FINAL) if step == final_step else [])
        return {label: fd_at(model, ns, scheds[label], n) for label in labels}

    return evaluate


def plot(path: Path, flops_axis: dict, curves: dict, title: str) -> None:
    panels = [(f"FD, {label}", {name: (flops_axis[name], *c[label]) for name, c in curves.items()}) for label in CURVES]
    errorbar_panels(path, panels, "training compute (TFLOP, 3 x forward x batch x steps)", title)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder of the runs (resumable)")
    ap.add_argument("--steps", type=int, default=6000, help="step budget of the unified U-Net")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    ap.add_argument("--unified", default="digits-xs", help="named U-Net config of omsjax.zoo (the baseline)")
    ap.add_argument("--encoder", type=int, default=16)
    ap.add_argument("--decoders", type=int, nargs="+", default=[24, 16, 8])
    ap.add_argument("--alpha", type=float, default=0.6, help="threshold of the clustering rule")
    ap.add_argument("--grid", type=int, default=100)
    ap.add_argument("--cluster-samples", type=int, default=1000)
    ap.add_argument("--fd-samples", type=int, default=1000)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--ablation-seeds", type=int, nargs="+", default=None,
                    help="seeds of the uniform-t / uniform-logSNR ablation runs (default: --seeds)")  # fmt: skip
    ap.add_argument("--no-results", action="store_true", help="do not touch RESULTS.md, figures/ and configs/")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args()
    if args.ablation_seeds is None:
        args.ablation_seeds = list(args.seeds)
    if not set(args.ablation_seeds) <= set(args.seeds):
        ap.error(f"--ablation-seeds {args.ablation_seeds} must be among --seeds {args.seeds}")
    if len(args.decoders) != 3:
        ap.error("--decoders needs 3 widths (3 stages)")
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    report = clustering(args)
    bounds = {v: b for v, b in variant_boundaries(report).items() if v in args.variants}
    cost = costs(args, bounds)
    save_json(args.out / "costs.json", cost)
    images = data.load_digits("train")
    results = {}
    for seed in args.seeds:
        runs = [("unified", unified_config(args, seed))]
        runs += [(v, stage_config(args, b, cost[v]["steps"], seed)) for v, b in bounds.items()
                 if seed in run_seeds(args, v)]  # fmt: skip
        for name, cfg in runs:
            run = f"{name}-seed{seed}"
            save_json(args.out / "configs" / f"{run}.json", cfg.to_dict())
            run_dir = args.out / "runs" / run
            ckpts = checkpoint_steps(cfg.steps, FRACTIONS)
            ev = evaluator(args.fd_samples, ckpts[-1])
            if name == "unified":
                params_at = unet_params_at(cfg, images, run_dir, not args.quiet)

                def evaluate(p, s, cfg=cfg, ev=ev):
                    return ev(train.model_from_params(cfg, p, name="m"), s)
            else:
                params_at = stages_params_at(cfg, images, run_dir, not args.quiet)

                def evaluate(p, s, cfg=cfg, ev=ev):
                    return ev(stages.to_model(cfg, p, name="m"), s)

            results[run] = run_checkpoints(run_dir, ckpts, params_at, evaluate)
    seconds = time.perf_counter() - t_start
    text = write_report(args, report, bounds, cost, results, seconds)
    print(text)
    if not args.no_results:
        CONFIG_DIR.mkdir(parents=True, exist_ok=True)
        for f in sorted((args.out / "configs").glob("*.json")):
            shutil.copy(f, CONFIG_DIR / f.name)
        shutil.copy(args.out / "stages-fd-vs-flops.png", FIGURES / "stages-fd-vs-flops.png")
        write_section(text, "stages")


def run_seeds(args, name: str) -> list[int]:
    """The training seeds of the unified or a multi-stage variant's runs (the ablation may have fewer)."""
    return list(args.ablation_seeds if name in ("uniform-t", "uniform-logsnr") else args.seeds)


def write_report(args, report, bounds, cost, results, seconds) -> str:
    names = ["unified", *bounds]
    batch = unified_config(args, 0).batch_size
    curves, axis, final = {}, {}, {}
    for name in names:
        seeds = run_seeds(args, name)
        steps = sorted(results[f"{name}-seed{seeds[0]}"])
        axis[name] = [3 * cost[name]["flops"] * batch * s / 1e12 for s in steps]
        curves[name] = {}
        for label in CURVES:
            ms = [mean_std([results[f"{name}-seed{k}"][s][label] for k in seeds]) for s in steps]
            curves[name][label] = (np.array([m for m, _ in ms]), np.array([sd for _, sd in ms]))
        final[name] = {label: mean_std([results[f"{name}-seed{k}"][steps[-1]][label] for k in seeds])
                       for label in [*CURVES, *FINAL]}  # fmt: skip
    plot(args.out / "stages-fd-vs-flops.png", axis, curves,
         f"digits: unified {args.unified} vs. multi-stage at equal training FLOPs, seeds {args.seeds}")  # fmt: skip

    def total(n, field):
        return sum(r[s].get(field, np.nan) for k in run_seeds(args, n) for r in [results[f"{n}-seed{k}"]] for s in r)

    train_s = {n: (total(n, "train_seconds"), total(n, "train_cpu_seconds")) for n in names}

    def fmt(r):
        if r is None:
            return f"none ({report['threshold_error']})"
        return ", ".join(f"{t:.3f} / {lam:.2f} / {s:.2f}" for t, lam, s in zip(r["t"], r["lambda"], r["sigma"],
                                                                               strict=True))  # fmt: skip

    L = ["## Multi-stage framework (`benchmarks/bench_stages.py`)", "",
         f"Machine: {machine()}. {seconds:.0f} s in this invocation.", "",
         "### Timestep clustering of the digits train split", "",
         f"`omsjax stages cluster --alpha {args.alpha} --grid {args.grid} --samples {args.cluster_samples}`: the "
         f"empirical optimal denoiser of the {report['num_data']} train images, continuous linear VP, "
         f"{len(report['grid'])} times in [{report['grid'][0]:g}, 1], {report['num_samples']} Monte-Carlo samples, "
         f"eta = 2/255, noise prediction ({report['seconds']:.0f} s). Boundaries as t / lambda / EDM sigma; score: "
         "the mean similarity of each grid time to the others of its stage. The paper reports t = 0.442 / 0.631 "
         "(VP), sigma = 2.51 / 7.66 (EDM) on CIFAR-10.", "",
         "| boundaries | t / lambda / sigma | score |", "|---|---|---|",
         f"| threshold rule, alpha {args.alpha} | {fmt(report['threshold'])} | "
         f"{'-' if report['threshold'] is None else format(report['threshold']['score'], '.3f')} |"]  # fmt: skip
    for key, label in (("partition", "DP partition, 3 stages"), ("uniform_t", "uniform in t"),
                       ("uniform_logsnr", "uniform in logSNR")):  # fmt: skip
        L.append(f"| {label} | {fmt(report[key])} | {report[key]['score']:.3f} |")
    u = cost["unified"]
    L += ["", "### Multi-stage vs. unified at equal training FLOPs", "",
          f"Unified: {args.unified} U-Net ({u['params']:,} parameters, {u['flops'] / 1e6:.2f} MFLOP per image "
          f"forward), {args.steps} steps. Multi-stage: encoder {args.encoder}, decoders {tuple(args.decoders)} "
          f"(near data first), stage k trained with probability p_k = its interval length; steps set so that steps x "
          f"sum_k p_k F_k = {args.steps} x F_unified (F: XLA forward FLOPs). Batch {batch}, same learning-rate "
          f"schedule, EMA (0.999 with warm-up: decay min(0.999, (1 + n) / (10 + n)) at a parameter group's n-th "
          f"update) and seeds {args.seeds}"
          + ("" if args.ablation_seeds == args.seeds else f" (the uniform-t / uniform-logSNR ablation rows: seeds "
             f"{args.ablation_seeds})") + f". FD of {args.fd_samples} samples (noise seed 0), logSNR spacing, at the "
          "end of each run; mean +- std over the seeds.", "",
          "| network | boundaries t | params (active per stage; mean) | MFLOP / image (mean) | steps | train s "
          "(CPU s) | "
          + " | ".join(list(CURVES) + list(FINAL)) + " |",
          "|---|---|---|---|---|---|" + "---|" * (len(CURVES) + len(FINAL))]  # fmt: skip
    for n in names:
        c = cost[n]
        one = len(run_seeds(args, n)) == 1
        fds = " | ".join(f"{final[n][k][0]:.2f}" + ("" if one else f" +- {final[n][k][1]:.2f}")
                         for k in [*CURVES, *FINAL])  # fmt: skip
        if n == "unified":
            L.append(f"| unified {args.unified} | - | {c['params']:,} | {c['flops'] / 1e6:.2f} | {c['steps']} | "
                     f"{train_s[n][0]:.0f} ({train_s[n][1]:.0f}) | {fds} |")  # fmt: skip
        else:
            b = ", ".join(f"{t:.3f}" for t in bounds[n])
            act = ", ".join(f"{a:,}" for a in c["active_params"])
            L.append(f"| multi-stage, {n} | {b} | {c['params']:,} ({act}; {c['mean_active_params']:,.0f}) | "
                     f"{c['flops'] / 1e6:.2f} | {c['steps']} | {train_s[n][0]:.0f} ({train_s[n][1]:.0f}) | "
                     f"{fds} |")  # fmt: skip
    L += ["", "'train s (CPU s)': wall-clock (and process CPU) seconds of training summed over the seeds, "
          "compilation included (this machine, possibly shared: the comparison is at equal FLOPs). The ablation "
          "is the three multi-stage rows (same decoders, other boundaries); a row without +- ran one seed.", "",
          "FD during training (first sampler, mean over seeds) at 12.5/25/50/75/100% of each budget (equal-FLOPs "
          "points):", "", "| network | " + " | ".join(f"{f:.1%}" for f in FRACTIONS) + " |",
          "|---|" + "---|" * len(FRACTIONS)]  # fmt: skip
    first = next(iter(CURVES))
    for n in names:
        L.append(f"| {n} | " + " | ".join(f"{v:.2f}" for v in curves[n][first][0]) + " |")
    common = sorted(set.intersection(*(set(run_seeds(args, n)) for n in names)))
    if common != sorted(args.seeds):
        L += [
            "",
            f"Final FD on the seeds every network ran ({common}), mean over them:",
            "",
            "| network | " + " | ".join([*CURVES, *FINAL]) + " |",
            "|---|" + "---|" * (len(CURVES) + len(FINAL)),
        ]
        for n in names:
            last = max(results[f"{n}-seed{common[0]}"])
            L.append(f"| {n} | " + " | ".join(
                f"{np.mean([results[f'{n}-seed{k}'][last][label] for k in common]):.2f}"
                for label in [*CURVES, *FINAL]) + " |")  # fmt: skip
    L += ["", "![FD vs. training FLOPs](figures/stages-fd-vs-flops.png)", "",
          "Reproduce a run: `omsjax train --config benchmarks/configs/stages/NAME-seedK.json --out DIR` (a "
          "StageTrainConfig or TrainConfig JSON; the FDs come from `python benchmarks/bench_stages.py --out DIR`, "
          "which resumes finished runs)."]  # fmt: skip
    return "\n".join(L)


if __name__ == "__main__":
    main()
