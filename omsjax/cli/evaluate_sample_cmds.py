"""`omsjax evaluate` and `omsjax sample`: one schedule on a zoo, its FD (and trajectory error, accuracy) or a grid of
its samples."""

from __future__ import annotations

import json
import time

from omsjax.cli.common import IMAGE_SUFFIXES, add_zoo_arg, check_out, zoo_from_arg


def _schedule_from_args(args, ns, num_models):
    from omsjax import presets
    from omsjax.schedule import Schedule

    if args.schedule is not None:
        if any(v is not None for v in (args.solver, args.nfe)):
            raise ValueError("give either --schedule or --solver/--nfe, not both")
        return Schedule.load(args.schedule, num_models=num_models), "schedule:" + str(args.schedule)
    if args.solver is None or args.nfe is None:
        raise ValueError("give --schedule FILE, or --solver NAME and --nfe N")
    if not 0 <= args.model < num_models:
        raise ValueError(f"--model {args.model} is not in the zoo of {num_models} models (0..{num_models - 1})")
    args.skip = args.skip or ns.default_spacing
    kw = dict(skip=args.skip, model=args.model)
    if args.solver != "ddim":
        kw["order"] = args.order if args.order is not None else (3 if args.solver == "dpm_solver" else 2)
    elif args.order not in (None, 1):
        raise ValueError("ddim is order 1; drop --order")
    if args.solver == "unipc":
        kw["variant"] = args.variant
    sched = presets.preset(args.solver, ns, args.nfe, **kw)
    label = f"{args.solver}" + (f"-{kw['order']}" if "order" in kw else "") + f" {args.skip} nfe={args.nfe}"
    return sched, label


def _conditioning(args, manifest, sched):
    """(schedule, cond, uncond, labels) of a class-conditional zoo: --labels cycled over the samples (default every
    class), the null label as uncond, --guidance at every step; (schedule, None, None, None) on an unconditional
    zoo, which refuses both flags."""
    import numpy as np

    from omsjax import presets, zoo
    from omsjax.metrics import conditional

    k = zoo.num_classes(manifest)
    if k == 0:
        given = [f for f, v in (("--guidance", args.guidance), ("--labels", args.labels)) if v is not None]
        if given:
            where = args.zoo or zoo.DEFAULT_ZOO
            raise ValueError(
                f"{' and '.join(given)}: the zoo {where} is unconditional (its members take no "
                f"labels); use a class-conditional zoo such as {zoo.COND_ZOO}"
            )
        guided = np.flatnonzero(np.asarray(sched.guidance) != 1.0)
        if guided.size:
            raise ValueError(
                f"--schedule {args.schedule}: step {int(guided[0])} is guided (scale "
                f"{float(np.asarray(sched.guidance)[guided[0]])}), but the zoo {args.zoo or zoo.DEFAULT_ZOO} is "
                f"unconditional (its members take no labels); use a class-conditional zoo such as {zoo.COND_ZOO}"
            )
        return sched, None, None, None
    if getattr(args, "ref_samples", 0) > 0:
        raise ValueError(
            "--ref-samples: the trajectory error's ODE reference is unconditional, so it is not "
            "available on a class-conditional zoo"
        )
    if args.guidance is not None:
        if args.schedule is not None and np.any(np.asarray(sched.guidance) != 1.0):
            raise ValueError(
                f"--guidance {args.guidance}: the schedule file {args.schedule} sets its own guidance "
                f"per step; drop one of them"
            )
        sched = presets.with_guidance(sched, args.guidance)
    labels = conditional.balanced_labels(args.num_samples, k, args.labels)
    cond, uncond = conditional.conditioning(labels, k)
    return sched, cond, uncond, labels


def _zoo_samples(args):
    from omsjax import sampler

    models, ns, manifest, mean = zoo_from_arg(args.zoo)
    sched, label = _schedule_from_args(args, ns, len(models))
    sched, cond, uncond, labels = _conditioning(args, manifest, sched)
    shape = tuple(manifest["image_shape"])
    t0 = time.perf_counter()
    x = sampler.generate(
        models,
        ns,
        sched,
        args.num_samples,
        shape,
        key=args.seed,
        batch_size=args.batch_size,
        data_mean=mean,
        cond=cond,
        uncond=uncond,
    )
    seconds = time.perf_counter() - t0
    return x, sched, label, seconds, models, ns, labels


def _trajectory_error(args, x, sched, models, ns):
    """RMSE of the first --ref-samples samples against the diffrax ODE endpoint of --ref-model from the same noise."""
    import numpy as np

    from omsjax import metrics, sampler

    k = min(args.ref_samples, x.shape[0])
    ref_model = args.ref_model
    if ref_model is None:  # a preset: its own model; a schedule file: the largest model of the zoo
        ref_model = args.model if args.schedule is None else len(models) - 1
    if not 0 <= ref_model < len(models):
        raise ValueError(f"--ref-model {ref_model} is not in the zoo of {len(models)} models (0..{len(models) - 1})")
    ts = np.asarray(sched.ts, np.float64)
    x_T = float(ns.prior_std(ts[0])) * sampler.noise(args.seed, k, x.shape[1:])  # the noise of `generate`
    ref = metrics.ode_reference(models[ref_model], ns, x_T, ts[0], ts[-1])
    return metrics.reference_rmse(x[:k], ref), k, ref_model


def cmd_evaluate(args) -> int:
    import numpy as np

    from omsjax import metrics

    x, sched, label, seconds, models, ns, labels = _zoo_samples(args)
    if labels is None:
        result = {"fd": float(metrics.fd(x))}
    else:  # a class-conditional zoo: the conditional FD and the accuracy of the requested classes
        from omsjax.metrics import conditional

        g = np.asarray(sched.guidance, np.float64)
        result = {
            **conditional.scores(x, labels),
            "guidance": float(g[0]) if np.all(g == g[0]) else g.tolist(),
            "labels": "balanced" if args.labels is None else [int(c) for c in args.labels],
        }
    result |= {
        "nfe": int(sched.nfe()),
        "cost": float(sched.cost([m.latency for m in models])),
        "seconds": seconds,
        "schedule": label,
        "num_samples": args.num_samples,
        "seed": args.seed,
    }
    if args.ref_samples > 0:
        err, k, ref_model = _trajectory_error(args, x, sched, models, ns)
        result.update(traj_rmse=err, traj_samples=k, traj_ref_model=ref_model)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>12}: {v}")
    return 0


def cmd_sample(args) -> int:
    from omsjax import plots

    check_out(args.out, suffixes=IMAGE_SUFFIXES)  # before the zoo is loaded or anything sampled
    x, _, label, seconds, _, _, _ = _zoo_samples(args)
    path = plots.save_grid(x, args.out)
    print(f"wrote {path} ({args.num_samples} samples, {label}, {seconds:.1f} s)")
    return 0


def _add_schedule_args(p, num_samples):
    from omsjax.spacing import SPACINGS

    add_zoo_arg(p)
    p.add_argument("--model", type=int, default=0, help="zoo index used at every step of a preset")
    p.add_argument("--solver", choices=["ddim", "dpm_solver", "dpm_solver_pp", "unipc"])
    p.add_argument("--order", type=int, default=None)
    p.add_argument("--variant", default="bh2", choices=["bh1", "bh2"], help="UniPC variant")
    p.add_argument(
        "--skip",
        default=None,
        choices=list(SPACINGS),
        help="step spacing of --solver (default: the zoo noise schedule's default_spacing)",
    )
    p.add_argument("--nfe", type=int, default=None)
    p.add_argument("--schedule", default=None, help="a schedule JSON file (Schedule.to_json)")
    p.add_argument("--num-samples", type=int, default=num_samples)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        metavar="W",
        help="class-conditional zoo: classifier-free guidance scale at every step (1: the conditional "
        "model, the default; 0: unconditional; a guided step costs two model calls)",
    )
    p.add_argument(
        "--labels",
        type=int,
        nargs="+",
        default=None,
        metavar="L",
        help="class-conditional zoo: the classes to sample, cycled over the samples (default every class, balanced)",
    )


def add_evaluate(sub) -> None:
    """The `omsjax evaluate` parser."""
    e = sub.add_parser("evaluate", help="FD, NFE and cost of a schedule on a zoo")
    _add_schedule_args(e, 1000)
    e.add_argument(
        "--ref-samples",
        type=int,
        default=0,
        help="also the trajectory error (traj_rmse) of this many samples against the diffrax ODE endpoint of the "
        "model's probability-flow ODE (default 0: off; 64 samples of digits-m cost about a minute on 2 CPU cores, "
        "3-4x the rest of the command)",
    )
    e.add_argument(
        "--ref-model",
        type=int,
        default=None,
        help="zoo model whose ODE is the reference (default: the preset's model; for a schedule file, the largest)",
    )
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate)


def add_sample(sub) -> None:
    """The `omsjax sample` parser."""
    s = sub.add_parser("sample", help="write a PNG grid of samples")
    _add_schedule_args(s, 64)
    s.add_argument("--out", required=True, help=f"image path ({', '.join(IMAGE_SUFFIXES)}; PNG for a grid to view)")
    s.set_defaults(func=cmd_sample)
