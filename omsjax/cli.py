"""The `omsjax` command.

omsjax gmm [--nfe 4 5 6 8 10] [--skip logSNR] [--json]
    Sample an exact Gaussian-mixture model with every preset and print the error against the diffrax
    reference endpoint (one compiled program per schedule length serves every solver).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _default_gmm(dim: int = 16, components: int = 8, seed: int = 0):
    import numpy as np

    from omsjax import oracles

    rng = np.random.RandomState(seed)
    weights = rng.dirichlet(np.full(components, 2.0))
    return oracles.GaussianMixture.create(rng.randn(components, dim), 0.05 + 0.3 * rng.rand(components), weights)


def _solver_table():
    from omsjax import presets

    return {
        "DDIM": lambda ns, n, skip: presets.ddim(ns, n, skip=skip),
        "DPM-Solver-2": lambda ns, n, skip: presets.dpm_solver(ns, n, 2, skip=skip),
        "DPM-Solver-3": lambda ns, n, skip: presets.dpm_solver(ns, n, 3, skip=skip),
        "DPM-Solver++(2M)": lambda ns, n, skip: presets.dpm_solver_pp(ns, n, 2, skip=skip),
        "DPM-Solver++(3M)": lambda ns, n, skip: presets.dpm_solver_pp(ns, n, 3, skip=skip),
        "UniPC-2 (bh1)": lambda ns, n, skip: presets.unipc(ns, n, 2, variant="bh1", skip=skip),
        "UniPC-2 (bh2)": lambda ns, n, skip: presets.unipc(ns, n, 2, variant="bh2", skip=skip),
        "UniPC-3 (bh2)": lambda ns, n, skip: presets.unipc(ns, n, 3, variant="bh2", skip=skip),
    }


def cmd_gmm(args) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    import omsjax
    from omsjax import oracles, schedules

    ns = schedules.vp_linear()
    gmm = _default_gmm()
    model = gmm.model(ns)
    x_T = jax.random.normal(jax.random.PRNGKey(args.seed), (args.batch, gmm.means.shape[1]), jnp.float64)
    t0 = time.perf_counter()
    ref = oracles.reference_solution(lambda x, t: gmm.eps(ns, x, t), ns, x_T, ns.t_max, ns.default_t_end)
    ref_seconds = time.perf_counter() - t0
    run = jax.jit(lambda s, x: omsjax.sample(model, ns, s, x))
    table = {}
    t0 = time.perf_counter()
    for name, make in _solver_table().items():
        row = {}
        for n in args.nfe:
            try:
                sched = make(ns, n, args.skip)
            except ValueError:
                row[n] = None
                continue
            out = run(sched, x_T)
            row[n] = float(jnp.sqrt(jnp.mean((out - ref) ** 2)))
        table[name] = row
    seconds = time.perf_counter() - t0
    compiles = run._cache_size()
    if args.json:
        print(json.dumps({"metric": "rmse_vs_reference", "skip": args.skip, "table": table, "compiles": compiles}))
        return 0
    print(f"Exact Gaussian mixture ({gmm.means.shape[0]} components, {gmm.means.shape[1]}-D), continuous linear VP,")
    print(f"{args.batch} samples, {args.skip} spacing. RMSE of the final sample against the diffrax reference")
    print(f"(Dopri8, rtol=atol=1e-10, {ref_seconds:.1f} s). Lower is better; NFE = model calls.\n")
    head = f"{'solver':<18}" + "".join(f"{'NFE ' + str(n):>11}" for n in args.nfe)
    print(head)
    print("-" * len(head))
    for name, row in table.items():
        cells = "".join(f"{'-':>11}" if v is None else f"{v:>11.2e}" for v in row.values())
        print(f"{name:<18}{cells}")
    best = {n: min((r[n], k) for k, r in table.items() if r[n] is not None) for n in args.nfe}
    print("\nbest per NFE: " + ", ".join(f"{n}: {k}" for n, (_, k) in best.items()))
    print(f"{len(table) * len(args.nfe)} runs, {compiles} compilations (one per schedule length), {seconds:.1f} s")
    return 0 if all(np.isfinite(v) for r in table.values() for v in r.values() if v is not None) else 1


def _schedule_from_args(args, ns, num_models):
    from omsjax import presets
    from omsjax.schedule import Schedule

    if args.schedule is not None:
        if any(v is not None for v in (args.solver, args.nfe)):
            raise ValueError("give either --schedule or --solver/--nfe, not both")
        try:
            text = open(args.schedule).read()
        except OSError as e:
            raise ValueError(f"cannot read --schedule {args.schedule}: {e}") from None
        return Schedule.from_json(text, num_models=num_models), "schedule:" + str(args.schedule)
    if args.solver is None or args.nfe is None:
        raise ValueError("give --schedule FILE, or --solver NAME and --nfe N")
    if not 0 <= args.model < num_models:
        raise ValueError(f"--model {args.model} is not in the zoo of {num_models} models (0..{num_models - 1})")
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


def _zoo_samples(args):
    import jax.numpy as jnp
    import numpy as np

    from omsjax import sampler, zoo

    models, ns, manifest = zoo.load_zoo(args.zoo)
    sched, label = _schedule_from_args(args, ns, len(models))
    mean = manifest.get("data_mean")
    mean = None if mean is None else jnp.asarray(np.asarray(mean, np.float32))
    shape = tuple(manifest["image_shape"])
    t0 = time.perf_counter()
    x = sampler.generate(models, ns, sched, args.num_samples, shape, seed=args.seed, batch_size=args.batch_size,
                         data_mean=mean)  # fmt: skip
    seconds = time.perf_counter() - t0
    lat = [m.latency for m in models]
    return x, sched, label, seconds, lat


def cmd_train(args) -> int:
    from omsjax import data, train, zoo

    cfg = zoo.named_config(args.config, args.steps)
    images = data.load_digits("train")
    state = train.train(cfg, images, args.out, resume=args.resume, progress=not args.quiet)
    train.save_params(Path(args.out) / "params", state.ema_params)
    (Path(args.out) / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    if args.add_to_zoo:
        entry = zoo.add_member(args.add_to_zoo, args.config, cfg, state.ema_params, train_steps=int(state.step),
                               data_mean=data.data_mean(images))  # fmt: skip
        print(json.dumps({"added": entry["name"], "zoo": str(args.add_to_zoo), "latency_ms": entry["latency_ms"]}))
    return 0


def cmd_evaluate(args) -> int:
    from omsjax import metrics

    x, sched, label, seconds, lat = _zoo_samples(args)
    result = {
        "fd": float(metrics.fd(x)),
        "nfe": int(sched.nfe()),
        "cost": float(sched.cost(lat)),
        "seconds": seconds,
        "schedule": label,
        "num_samples": args.num_samples,
        "seed": args.seed,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>12}: {v}")
    return 0


def cmd_sample(args) -> int:
    from omsjax import plots

    x, _, label, seconds, _ = _zoo_samples(args)
    path = plots.save_grid(x, args.out)
    print(f"wrote {path} ({args.num_samples} samples, {label}, {seconds:.1f} s)")
    return 0


def _add_schedule_args(p, num_samples):
    from omsjax.schedules import SKIP_TYPES

    p.add_argument("--zoo", default=None, help="zoo folder with manifest.json (default: the shipped digits zoo)")
    p.add_argument("--model", type=int, default=0, help="zoo index used at every step of a preset")
    p.add_argument("--solver", choices=["ddim", "dpm_solver", "dpm_solver_pp", "unipc"])
    p.add_argument("--order", type=int, default=None)
    p.add_argument("--variant", default="bh2", choices=["bh1", "bh2"], help="UniPC variant")
    p.add_argument("--skip", default="logSNR", choices=list(SKIP_TYPES))
    p.add_argument("--nfe", type=int, default=None)
    p.add_argument("--schedule", default=None, help="a schedule JSON file (Schedule.to_json)")
    p.add_argument("--num-samples", type=int, default=num_samples)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="omsjax", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gmm", help="every preset on an exact Gaussian mixture vs. the diffrax reference")
    g.add_argument("--nfe", type=int, nargs="+", default=[4, 5, 6, 8, 10, 20])
    g.add_argument("--skip", default="logSNR", choices=["logSNR", "time_uniform", "time_quadratic", "karras"])
    g.add_argument("--batch", type=int, default=256)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    g.set_defaults(func=cmd_gmm)

    t = sub.add_parser("train", help="train a digits U-Net (resumable orbax checkpoints)")
    t.add_argument("--config", required=True, help="a named config, e.g. digits-m (omsjax.zoo.CONFIGS)")
    t.add_argument("--out", required=True, help="run folder (checkpoints, log, final EMA params)")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--resume", action="store_true")
    t.add_argument("--add-to-zoo", default=None, help="zoo folder to add the trained model to")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="FD, NFE and cost of a schedule on a zoo")
    _add_schedule_args(e, 1000)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("sample", help="write a PNG grid of samples")
    _add_schedule_args(s, 64)
    s.add_argument("--out", required=True, help="PNG path")
    s.set_defaults(func=cmd_sample)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "zoo") and args.zoo is None:
        from omsjax.zoo import DEFAULT_ZOO

        args.zoo = DEFAULT_ZOO
    nfe = getattr(args, "nfe", None)
    if nfe is not None and any(n < 1 for n in (nfe if isinstance(nfe, list) else [nfe])):
        print("omsjax: error: --nfe values must be >= 1", file=sys.stderr)
        return 2
    if getattr(args, "num_samples", 2) < 2:
        print("omsjax: error: --num-samples must be >= 2", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"omsjax: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
