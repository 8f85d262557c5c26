"""`omsjax optimize-steps`: a solver's learned timesteps (optionally with fine-tuning) against the standard
spacings."""

from __future__ import annotations

import json

from omsjax.cli.common import SOLVERS, add_zoo_arg, check_out, flags


def cmd_optimize_steps(args) -> int:
    from omsjax.workflows import timesteps_run as timesteps

    check_out(args.out)  # before anything loads or compiles

    if args.rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {args.rounds}")
    names = "model solver nfe method train_samples heldout_samples seed finetune_steps distance"
    config = timesteps.StepsConfig(
        rounds=args.rounds if args.finetune else 0, **flags(args, names, fd_samples="num_samples", traj_steps="steps")
    )
    report = timesteps.run(args.zoo, args.out, config, progress=not args.quiet)
    if args.json:
        print(json.dumps(report))
        return 0
    o, b = report["optimized"], report["spacings"][report["best_spacing"]]
    print(f"{args.solver}, NFE {args.nfe}, {o['label']}: FD {o['fd']:.3f}, trajectory RMSE {o['traj_rmse']:.4f}")
    for sp, r in report["spacings"].items():
        print(f"  {sp:15s} FD {r['fd']:.3f}, trajectory RMSE {r['traj_rmse']:.4f}")
    print(
        f"ratio to the best spacing ({report['best_spacing']}, FD {b['fd']:.3f}): "
        f"{report['fd_ratio_to_best_spacing']:.3f}"
    )
    print(f"wrote {args.out}/schedule.json, report.json, timesteps.png")
    return 0


def add_optimize_steps(sub) -> None:
    """The `omsjax optimize-steps` parser."""
    o = sub.add_parser("optimize-steps", help="learn a solver's timesteps (and fine-tune on them)")
    add_zoo_arg(o, model="zoo index (default: the largest)")
    o.add_argument("--solver", default="DDIM", choices=list(SOLVERS))
    o.add_argument("--nfe", type=int, required=True)
    o.add_argument(
        "--method",
        default="trajectory",
        choices=["trajectory", "bound", "ays", "fd"],
        help="bound: the error bound; trajectory: fit to the ODE endpoint; ays: AYS-style search; "
        "fd: the FD itself through the sampler",
    )
    o.add_argument(
        "--distance",
        default="features",
        choices=["features", "pixels"],
        help="trajectory fit: distance between the sampler's output and the ODE endpoint",
    )
    o.add_argument("--finetune", action="store_true", help="alternate with fine-tuning (phase 2), --rounds times")
    o.add_argument("--rounds", type=int, default=1, help="rounds of phase 1 + phase 2 with --finetune")
    o.add_argument("--finetune-steps", type=int, default=600)
    o.add_argument("--steps", type=int, default=300, help="optimiser steps of the trajectory or FD fit")
    o.add_argument("--train-samples", type=int, default=256, help="x_T whose ODE endpoints the fit matches")
    o.add_argument("--heldout-samples", type=int, default=128, help="held-out x_T for the trajectory error")
    o.add_argument("--num-samples", type=int, default=1000, help="samples of the held-out FD")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument(
        "--out",
        required=True,
        help="output folder (schedule.json, report.json, timesteps.png); "
        "locked while the run lasts, so a second one on it is refused",
    )
    o.add_argument("--quiet", action="store_true")
    o.add_argument("--json", action="store_true")
    o.set_defaults(func=cmd_optimize_steps)
