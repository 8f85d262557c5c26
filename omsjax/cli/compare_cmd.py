"""`omsjax compare`: the FD of every preset solver at several NFEs on one zoo model (the main job's baseline)."""

from __future__ import annotations

import json
import time

from omsjax.cli.common import SOLVERS, add_zoo_arg, solver_schedule, zoo_from_arg


def cmd_compare(args) -> int:
    import numpy as np

    from omsjax import metrics, sampler, zoo

    models, ns, manifest, mean = zoo_from_arg(args.zoo)
    if zoo.num_classes(manifest):
        raise ValueError(
            f"--zoo {args.zoo}: compare samples without labels; for a class-conditional zoo use "
            f"`omsjax evaluate --zoo {args.zoo} --guidance W` (FD and accuracy per schedule)"
        )
    k = len(models) - 1 if args.model is None else args.model
    if not 0 <= k < len(models):
        raise ValueError(f"--model {k} is not in the zoo of {len(models)} models (0..{len(models) - 1})")
    unknown = [n for n in args.solvers if n not in SOLVERS]
    if unknown:
        raise ValueError(f"unknown solvers {unknown}; expected some of {list(SOLVERS)}")
    shape = tuple(manifest["image_shape"])
    args.skip = args.skip or ns.default_spacing
    table, t0 = {}, time.perf_counter()
    for name in args.solvers:
        row = {}
        for n in args.nfe:
            sched = solver_schedule(name, ns, n, args.skip, model=k)
            if sched is None:
                row[n] = None
                continue
            x = sampler.generate(
                models, ns, sched, args.num_samples, shape, key=args.seed, batch_size=args.batch_size, data_mean=mean
            )
            row[n] = float(metrics.fd(x))
        table[name] = row
    seconds = time.perf_counter() - t0
    floor = metrics.fd_floor(n=args.num_samples, repeats=5) if args.num_samples <= 1497 else None
    m = manifest["models"][k]
    if args.json:
        print(json.dumps({"model": k, "name": m["name"], "fd": table, "floor": floor, "seconds": seconds}))
        return 0
    print(
        f"Digits zoo {args.zoo}: model {k} ({m['name']}, {m['param_count']:,} params, "
        f"{m['latency_ms']:.1f} ms per batch of {m['latency_batch']}), {args.skip} spacing."
    )
    print(f"FD of {args.num_samples} samples (seed {args.seed}) in the classifier's features; lower is better.\n")
    head = f"{'solver':<18}" + "".join(f"{'NFE ' + str(n):>10}" for n in args.nfe)
    print(head)
    print("-" * len(head))
    for name, row in table.items():
        print(f"{name:<18}" + "".join(f"{'-':>10}" if v is None else f"{v:>10.2f}" for v in row.values()))
    if floor is not None:
        print(
            f"\nreal data at the same N: {args.num_samples} train images resampled "
            f"{floor['train_resample_mean']:.2f} +- {floor['train_resample_std']:.2f}; "
            f"the {floor['heldout_n']} held-out images {floor['heldout']:.2f}"
        )
    best = {n: min(((r[n], s) for s, r in table.items() if r[n] is not None), default=(np.nan, "-")) for n in args.nfe}
    print("best per NFE: " + ", ".join(f"{n}: {s} ({v:.2f})" for n, (v, s) in best.items()))
    print(f"{sum(v is not None for r in table.values() for v in r.values())} evaluations in {seconds:.1f} s")
    return 0


def add_compare(sub) -> None:
    """The `omsjax compare` parser."""
    from omsjax.spacing import SPACINGS

    c = sub.add_parser("compare", help="FD of every preset solver at several NFEs on one zoo model (the main job)")
    add_zoo_arg(c, model="zoo index (default: the largest model)")
    c.add_argument("--nfe", type=int, nargs="+", default=[5, 10])
    c.add_argument(
        "--solvers",
        nargs="+",
        default=["DDIM", "DPM-Solver-3", "DPM-Solver++(2M)", "DPM-Solver++(3M)", "UniPC-2 (bh2)", "UniPC-3 (bh2)"],
    )
    c.add_argument(
        "--skip",
        default=None,
        choices=list(SPACINGS),
        help="step spacing (default: the zoo noise schedule's default_spacing, logSNR for VP)",
    )
    c.add_argument("--num-samples", type=int, default=1000)
    c.add_argument("--batch-size", type=int, default=500)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_compare)
