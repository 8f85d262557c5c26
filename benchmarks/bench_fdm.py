"""The Fast Diffusion Model (issue 5): EDM vs. EDM-FDM and VP vs. VP-FDM on the digits train split.

Same network (the digits-xs U-Net of `omsjax.zoo`, 160k parameters), batch (128), learning-rate schedule, data
and training seeds (0, 1, 2) for the four methods: precond "edm", "fdm_edm", "vp", "fdm_vp" (FDM: m = 2 and the
loss-weight clamp warm-up over --clamp-warmup steps; the VP weight is 1, below every cap, so there it changes
nothing). Each run is trained in legs (`train.train(..., resume=True, stop_at=s)`, which gives the uninterrupted
run bit for bit) and its EMA parameters are evaluated at 12.5/25/50/75/100% of the step budget:

- FD vs. steps: `omsjax.metrics.fd` of 1,000 samples (noise seed 0, the same for every model) with
  DPM-Solver++(3M), NFE 50, logSNR spacing (the model's quality with little solver error);
- the fraction of the budget FDM needs to reach its base method's final FD (means over the seeds);
- FD vs. NFE at the final checkpoint with DPM-Solver++(2M) (logSNR) and with a Heun-like sampler: omsjax has no
  EDM Heun sampler, so we use singlestep DPM-Solver-2 (noise prediction) on Karras (rho = 7) steps. On the EDM
  schedule (alpha = 1) DPM-Solver-1 with noise prediction is exactly Euler in sigma, and DPM-Solver-2 adds an
  intermediate evaluation: an explicit second-order Runge-Kutta step in sigma (the midpoint rule in log sigma,
  where EDM's Heun uses the trapezoidal rule), with the same NFE accounting (2 per step).

Runs live in OUT/runs/METHOD-seedK/ (orbax checkpoints, log.jsonl, config.json, results.json); finished
checkpoints are skipped, so the script resumes where it stopped. Each run's TrainConfig JSON goes to
OUT/configs/ and, with the results, to benchmarks/configs/fdm/ (`omsjax train --config FILE --out DIR` reproduces
the run). Writes the `fdm` section of benchmarks/RESULTS.md and benchmarks/figures/fdm-fd-vs-steps.png.

Run: `python benchmarks/bench_fdm.py --out runs/bench-fdm [--steps 6000] [--seeds 0 1 2] [--vp-seeds 0]`.
The RESULTS section comes from `--steps 3000 --nfes 4 6 10 20 --vp-seeds 0`: 8 runs, 58 min of training and ~80 min
in all on the 2-core CPU shared with bench_stages.
Cost at the defaults (4 methods x 3 seeds x 6,000 steps of digits-xs at batch 128, 72k steps): measured here
(2-core CPU shared with another benchmark) 85-135 ms per digits-xs step (vp and fdm_edm alike) against 234 ms for
digits-m, which trains at ~800 img/s (160 ms/step) on the idle machine, so ~60 ms/step idle: ~70 min of training,
plus ~20 min of sampling (4 models x 13 schedule lengths to compile; 60 FDs at NFE 50 and 144 at NFE 4-20, 1,000
samples each): about 1.5 h on the idle 2-core CPU, roughly twice that while another job shares it. The smoke run
(`--steps 24 --seeds 0 --fd-samples 200 --nfes 4 6`) took 4.5 min on the loaded machine, mostly compilation.
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from pathlib import Path

import numpy as np
from common import (
    FIGURES,
    checkpoint_steps,
    errorbar_panels,
    fd_at,
    fd_heun_at,
    load_json,
    machine,
    mean_std,
    run_checkpoints,
    save_json,
    unet_params_at,
    write_section,
)

from omsjax import data, nets, presets, train, zoo

METHODS = {  # name: (precond, uses FDM's loss-weight clamp warm-up)
    "edm": ("edm", False),
    "edm-fdm": ("fdm_edm", True),
    "vp": ("vp", False),
    "vp-fdm": ("fdm_vp", True),
}
PAIRS = (("edm", "edm-fdm"), ("vp", "vp-fdm"))
FRACTIONS = (0.125, 0.25, 0.5, 0.75, 1.0)
CURVE = ("DPM-Solver++(3M)", 50)  # the FD-vs-steps sampler: (name in presets.NAMED, NFE), logSNR
NFE_SAMPLERS = {  # FD vs. NFE at the final checkpoint: label -> (preset kind, kwargs), None: omsjax.sample_heun
    "EDM Heun, Karras": None,
    "DPM-Solver++(2M), logSNR": ("dpm_solver_pp", {"order": 2, "skip": "logSNR"}),
    "DPM-Solver-2, Karras": ("dpm_solver", {"order": 2, "skip": "karras"}),
}
NFES = (4, 6, 8, 10, 14, 20)
CONFIG_DIR = Path(__file__).parent / "configs" / "fdm"


def run_config(args, method: str, seed: int) -> train.TrainConfig:
    precond, clamp = METHODS[method]
    base = zoo.named_config(args.net, steps=args.steps).to_dict()
    return train.TrainConfig.from_dict({**base, "precond": precond, "seed": seed, "fdm_m": args.fdm_m,
                                        "ema_warmup": True,
                                        "weight_clamp_warmup": args.clamp_warmup if clamp else 0,
                                        "checkpoint_every": max(1, args.steps // 8)})  # fmt: skip


def evaluator(cfg: train.TrainConfig, n: int, final_step: int, nfes):
    ns = train.noise_schedule(cfg.precond)
    kind, kw = presets.NAMED[CURVE[0]]
    curve = presets.preset(kind, ns, CURVE[1], **kw)

    def evaluate(params, step):
        model = train.model_from_params(cfg, params, name="m")
        out = {"fd": fd_at(model, ns, curve, n)}
        if step == final_step:
            out["fd_nfe"] = {label: {str(k): fd_heun_at(model, ns, k, n) if spec is None else
                                     fd_at(model, ns, presets.preset(spec[0], ns, k, **spec[1]), n) for k in nfes}
                             for label, spec in NFE_SAMPLERS.items()}  # fmt: skip
        return out

    return evaluate


def steps_to_reach(steps, fds, target) -> tuple[float | None, str]:
    """The first step where the FD curve reaches `target`, with FD interpolated linearly in log(step) between the
    two checkpoints that bracket it; (None, "<= s0") if the first checkpoint is already there, (None, "> S") if
    no checkpoint is."""
    steps, fds = np.asarray(steps, np.float64), np.asarray(fds, np.float64)
    hit = np.nonzero(fds <= target)[0]
    if hit.size == 0:
        return None, f"> {int(steps[-1])}"
    i = int(hit[0])
    if i == 0:
        return None, f"<= {int(steps[0])}"
    w = (target - fds[i - 1]) / (fds[i] - fds[i - 1])
    s = math.exp(math.log(steps[i - 1]) + w * (math.log(steps[i]) - math.log(steps[i - 1])))
    return s, f"{s:.0f}"


def plot(path: Path, steps, curves: dict, title: str) -> None:
    pairs = [[m for m in pair if m in curves] for pair in PAIRS]
    panels = [("FD (lower is better)", {m: (steps, *curves[m]) for m in pair}) for pair in pairs if pair]
    errorbar_panels(path, panels, "training steps", title)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder of the runs (resumable)")
    ap.add_argument("--steps", type=int, default=6000, help="step budget of every run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    ap.add_argument("--vp-seeds", type=int, nargs="+", default=None,
                    help="training seeds of the vp / vp-fdm runs (default: --seeds)")  # fmt: skip
    ap.add_argument("--net", default="digits-xs", help="named U-Net config of omsjax.zoo")
    ap.add_argument("--fdm-m", type=float, default=2.0)
    ap.add_argument("--clamp-warmup", type=int, default=400, help="FDM loss-weight clamp warm-up W (steps)")
    ap.add_argument("--fd-samples", type=int, default=1000)
    ap.add_argument("--nfes", type=int, nargs="+", default=list(NFES))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--no-results", action="store_true", help="do not touch RESULTS.md, figures/ and configs/")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args()
    if args.vp_seeds is None:
        args.vp_seeds = list(args.seeds)
    if any(k < 2 or k % 2 for k in args.nfes):
        ap.error(f"--nfes must be even (EDM's Heun sampler makes 2 model calls per step), got {args.nfes}")
    images = data.load_digits("train")
    ckpts = checkpoint_steps(args.steps, FRACTIONS)
    t_start = time.perf_counter()
    results = {}
    for method in args.methods:
        for seed in method_seeds(args, method):
            name = f"{method}-seed{seed}"
            cfg = run_config(args, method, seed)
            save_json(args.out / "configs" / f"{name}.json", cfg.to_dict())
            evaluate = evaluator(cfg, args.fd_samples, ckpts[-1], args.nfes)
            run_dir = args.out / "runs" / name
            params_at = unet_params_at(cfg, images, run_dir, not args.quiet)
            results[name] = run_checkpoints(run_dir, ckpts, params_at, evaluate)
    start_fds = late_start(args, images, ckpts[-1])
    seconds = time.perf_counter() - t_start
    text = report(args, ckpts, results, seconds, start_fds)
    print(text)
    if not args.no_results:
        CONFIG_DIR.mkdir(parents=True, exist_ok=True)
        for f in sorted((args.out / "configs").glob("*.json")):
            shutil.copy(f, CONFIG_DIR / f.name)
        shutil.copy(args.out / "fdm-fd-vs-steps.png", FIGURES / "fdm-fd-vs-steps.png")
        write_section(text, "fdm")


T_STARTS = (1.0, 0.95, 0.9, 0.8)  # VP start times of the late-start check


def late_start(args, images, final: int) -> dict:
    """{method: {t_start: [FD per seed]}}: the final vp / vp-fdm models sampled with DPM-Solver++(2M) NFE 20
    (logSNR) started at t_start < 1, which skips the highest noise levels, where FDM's c_in = s(sigma) hides the
    input from the network (s(152) ~ 4e-8). Cached in OUT/late-start.json."""
    path = args.out / "late-start.json"
    out = load_json(path, {})
    for method in ("vp", "vp-fdm"):
        if method not in args.methods:
            continue
        for seed in method_seeds(args, method):
            key = f"{method}-seed{seed}"
            if key in out:
                continue
            cfg = run_config(args, method, seed)
            params = unet_params_at(cfg, images, args.out / "runs" / key, False)(final)
            model, ns = train.model_from_params(cfg, params, name="m"), train.noise_schedule(cfg.precond)
            out[key] = {str(t): fd_at(model, ns, presets.preset("dpm_solver_pp", ns, 20, order=2, t_start=t),
                                      args.fd_samples) for t in T_STARTS}  # fmt: skip
            save_json(path, out)
    return out


def method_seeds(args, method: str) -> list[int]:
    """The training seeds of a method's runs (the VP pair may have fewer)."""
    return list(args.vp_seeds if method in ("vp", "vp-fdm") else args.seeds)


def report(args, ckpts, results, seconds, start_fds) -> str:
    seeds, methods = args.seeds, args.methods

    def pm(mu, sd, method):  # mean +- std, or the value of a method that ran one seed
        return f"{mu:.2f}" if len(method_seeds(args, method)) == 1 else f"{mu:.2f} +- {sd:.2f}"

    final = ckpts[-1]
    curves = {m: [mean_std([results[f"{m}-seed{k}"][s]["fd"] for k in method_seeds(args, m)]) for s in ckpts]
              for m in methods}  # fmt: skip
    curves = {m: (np.array([c[0] for c in v]), np.array([c[1] for c in v])) for m, v in curves.items()}
    title = f"digits, {args.net}: FD ({CURVE[0]}, NFE {CURVE[1]}) vs. steps, mean +- std over the seeds"
    plot(args.out / "fdm-fd-vs-steps.png", ckpts, curves, title)
    batch = run_config(args, methods[0], seeds[0]).batch_size
    train_s = sum(r[s]["train_seconds"] for r in results.values() for s in r)
    train_cpu = sum(r[s].get("train_cpu_seconds", np.nan) for r in results.values() for s in r)
    images = len(results) * args.steps * batch
    L = ["## Fast Diffusion Model (`benchmarks/bench_fdm.py`)", "",
         f"Machine: {machine()}. {seconds:.0f} s in this invocation; training in all: {train_s:.0f} s wall-clock "
         f"({images / max(train_s, 1e-9):.0f} img/s), {train_cpu:.0f} s of process CPU time (compilation "
         f"included).", "",
         f"{args.net} U-Net ({nets.param_count(_abstract_params(args)):,} parameters), digits train split, batch "
         f"{batch}, lr 2e-3 with 200 warm-up steps and cosine decay, EMA 0.999 with "
         f"warm-up (decay min(0.999, (1 + n) / (10 + n)) at update n), {args.steps} steps, training seeds "
         f"{seeds}" + ("" if args.vp_seeds == seeds else f" (vp and vp-fdm: {args.vp_seeds})")
         + f". FDM: m = {args.fdm_m}, loss-weight clamp warm-up W = {args.clamp_warmup} (a no-op for VP, whose "
         f"weight is 1). FD: {args.fd_samples} samples, noise seed 0 for every model, {CURVE[0]} NFE {CURVE[1]} "
         f"logSNR; mean +- std over the training seeds (a single value: one seed).", "",
         "| method | " + " | ".join(f"{s} steps" for s in ckpts) + " |", "|---|" + "---|" * len(ckpts)]  # fmt: skip
    for m in methods:
        mu, sd = curves[m]
        L.append(f"| {m} | " + " | ".join(pm(a, b, m) for a, b in zip(mu, sd, strict=True)) + " |")
    L += ["", "Steps FDM needs to reach its base method's final FD (FD interpolated linearly in log(steps) between "
          "the two checkpoints that bracket the target; '<=' / '>' when the first checkpoint already reaches it / "
          "no checkpoint does). 'Mean curves' compares the seed means; 'per seed' pairs the runs of equal seed.", "",
          "| pair | target (base, final) | FDM steps (mean curves) | fraction | per seed |",
          "|---|---|---|---|---|"]  # fmt: skip
    for base, fdm in PAIRS:
        if base not in methods or fdm not in methods:
            continue
        target = curves[base][0][-1]
        s, label = steps_to_reach(ckpts, curves[fdm][0], target)
        frac = "-" if s is None else f"{s / final:.0%}"
        per = []
        for k in method_seeds(args, base):
            fk = [results[f"{fdm}-seed{k}"][c]["fd"] for c in ckpts]
            sk, lk = steps_to_reach(ckpts, fk, results[f"{base}-seed{k}"][final]["fd"])
            per.append(lk if sk is None else f"{sk / final:.0%}")
        L.append(f"| {fdm} vs. {base} | {target:.2f} | {label} | {frac} | {', '.join(per)} |")
    L += ["", f"FD vs. NFE at {final} steps (mean +- std over the seeds). EDM Heun: `omsjax.sample_heun` "
          "(Karras et al.'s Algorithm 1 without churn, NFE / 2 second-order steps on the Karras grid, rho = 7, no "
          "final Euler step since the grid ends at sigma_min); DPM-Solver-2: singlestep, noise prediction, the same "
          "grid.", "",
          "| method | sampler | " + " | ".join(f"NFE {k}" for k in args.nfes) + " |",
          "|---|---|" + "---|" * len(args.nfes)]  # fmt: skip
    for m in methods:
        for label in NFE_SAMPLERS:
            cells = []
            for k in args.nfes:
                runs = [results[f"{m}-seed{s}"] for s in method_seeds(args, m)]
                mu, sd = mean_std([r[final]["fd_nfe"][label][str(k)] for r in runs])
                cells.append(pm(mu, sd, m))
            L.append(f"| {m} | {label} | " + " | ".join(cells) + " |")
    if all(f"{m}-seed{k}" in start_fds for m in ("vp", "vp-fdm") for k in method_seeds(args, m)):
        L += [
            "",
            "Where VP-FDM fails: the final VP models sampled with DPM-Solver++(2M) NFE 20 (logSNR) started at "
            "t_start < 1 instead of T = 1, skipping the highest noise levels, where c_in = s(sigma) all but hides "
            "the input from the noise-predicting network (s(sigma_VP(1) = 152) ~ 4e-8).",
            "",
            "| method | " + " | ".join(f"t_start {t}" for t in T_STARTS) + " |",
            "|---|" + "---|" * len(T_STARTS),
        ]
        for m in ("vp", "vp-fdm"):
            runs = [start_fds[f"{m}-seed{k}"] for k in method_seeds(args, m)]
            L.append(f"| {m} | " + " | ".join(pm(*mean_std([r[str(t)] for r in runs]), m) for t in T_STARTS) + " |")
    L += ["", "![FD vs. steps](figures/fdm-fd-vs-steps.png)", "",
          "Reproduce a run: `omsjax train --config benchmarks/configs/fdm/METHOD-seedK.json --out DIR` (the FDs come "
          "from `python benchmarks/bench_fdm.py --out DIR`, which resumes finished runs)."]  # fmt: skip
    save_json(args.out / "summary.json", {"checkpoints": ckpts, "curves": {m: [c.tolist() for c in v]
                                          for m, v in curves.items()}})  # fmt: skip
    return "\n".join(L)


def _abstract_params(args):
    import jax

    cfg = zoo.named_config(args.net)
    return jax.eval_shape(lambda: nets.init_unet(cfg.net, jax.random.PRNGKey(0), cfg.image_shape))


if __name__ == "__main__":
    main()
