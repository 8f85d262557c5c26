"""The `omsjax` command.

omsjax compare [--zoo DIR] [--model K] [--nfe 5 10] [--json]
    FD of the preset solvers at several NFEs on one model of a zoo (default: the shipped digits zoo).
omsjax evaluate --zoo DIR (--model K --solver NAME --nfe N | --schedule FILE.json) [--json]
    FD, NFE, cost and seconds of one schedule, and its trajectory error against the diffrax ODE endpoint.
omsjax sample ... --out grid.png
    A PNG grid of samples.
omsjax train --config NAME|FILE.json --out DIR [--steps N] [--precond P] [--fdm-m M] [--weight-clamp-warmup W]
        [--ema-warmup] [--resume] [--add-to-zoo DIR]
    Train a digits U-Net with resumable orbax checkpoints (FILE.json: a TrainConfig.to_dict(), e.g. a run's
    config.json, so that `omsjax train --config DIR/config.json` reproduces that run), or a multi-stage network
    when FILE.json holds a StageTrainConfig (from `omsjax stages config`, or a multi-stage run's config.json).
omsjax stages cluster [--grid G] [--samples S] [--alpha A] [--prediction eps|x0] [--partition K] [--seed N]
        [--json] [--out FILE.json]
    Timestep clustering of the digits train split with its empirical optimal denoiser (continuous linear VP): the
    threshold-rule boundaries (t1, t2) at alpha, the DP partition into K stages and the uniform-in-t and
    uniform-in-logSNR boundaries, as t, lambda and EDM sigma.
omsjax stages config --boundaries T1 T2 [--decoders 48 32 8] [--encoder 32] [--steps N] [--ema-warmup]
        [--out FILE.json]
    A multi-stage training config (StageTrainConfig JSON) for `omsjax train --config FILE.json`.
omsjax search --zoo DIR (--nfe N | --budget SECONDS) [--mode solver|model|joint] --out DIR
    Search a per-step schedule with the S3 loop (GA, true evaluation, predictor) and report the baselines.
omsjax optimize-steps --zoo DIR [--model K] --solver NAME --nfe N [--method trajectory|bound|ays|fd] [--finetune]
        --out DIR
    Learn the timesteps of a solver (error bound, trajectory fit through the sampler, AYS-style search, or the FD),
    optionally alternated with fine-tuning on the chosen steps; compare with the standard spacings.
omsjax zoo [--zoo DIR] [--remeasure-latency]
    List a zoo's models; measure their latencies again on this machine.
omsjax gmm [--nfe 4 5 6 8 10] [--skip logSNR] [--json]
    Sample an exact Gaussian-mixture model with every preset and EDM's Heun sampler (even NFE) and print the error
    against the diffrax reference endpoint (one compiled program per schedule length serves every preset).
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


# The solvers of `omsjax gmm` and `omsjax compare` (names of `omsjax.presets.NAMED`).
SOLVERS = (
    "DDIM",
    "DPM-Solver-2",
    "DPM-Solver-3",
    "DPM-Solver++(2M)",
    "DPM-Solver++(3M)",
    "UniPC-2 (bh1)",
    "UniPC-2 (bh2)",
    "UniPC-3 (bh2)",
)

HEUN = "EDM Heun"  # omsjax.sample_heun, outside the USF presets


def _solver_schedule(name, ns, nfe, skip, model=0):
    """The named solver (a key of presets.NAMED) as a schedule, or None where it has no schedule at this NFE."""
    from omsjax import presets

    kind, kw = presets.NAMED[name]
    try:
        return presets.preset(kind, ns, nfe, skip=skip, model=model, **kw)
    except ValueError:
        return None


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
    for name in SOLVERS:
        row = {}
        for n in args.nfe:
            sched = _solver_schedule(name, ns, n, args.skip)
            if sched is None:
                row[n] = None
                continue
            out = run(sched, x_T)
            row[n] = float(jnp.sqrt(jnp.mean((out - ref) ** 2)))
        table[name] = row
    compiles = run._cache_size()
    # EDM's Heun sampler (2 model calls per step: even NFE only) on the same spacing.
    table[HEUN] = {n: None if n % 2 else float(jnp.sqrt(jnp.mean((omsjax.sample_heun(
        model, ns, schedules.time_steps(ns, n // 2, args.skip), x_T) - ref) ** 2))) for n in args.nfe}  # fmt: skip
    seconds = time.perf_counter() - t0
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
    print(f"{len(table) * len(args.nfe)} runs, {compiles} compilations of the USF sampler (one per schedule length), "
          f"{seconds:.1f} s")  # fmt: skip
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


def _load_zoo(path):
    import jax.numpy as jnp
    import numpy as np

    from omsjax import zoo

    models, ns, manifest = zoo.load_zoo(path)
    mean = manifest.get("data_mean")
    mean = None if mean is None else jnp.asarray(np.asarray(mean, np.float32))
    return models, ns, manifest, mean


def _zoo_samples(args):
    from omsjax import sampler

    models, ns, manifest, mean = _load_zoo(args.zoo)
    sched, label = _schedule_from_args(args, ns, len(models))
    shape = tuple(manifest["image_shape"])
    t0 = time.perf_counter()
    x = sampler.generate(models, ns, sched, args.num_samples, shape, seed=args.seed, batch_size=args.batch_size,
                         data_mean=mean)  # fmt: skip
    seconds = time.perf_counter() - t0
    return x, sched, label, seconds, models, ns


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
    return metrics.trajectory_error(x[:k], ref), k, ref_model


# The `--precond` choices (omsjax.train.PRECONDS; kept here so that building the parser does not import orbax).
_PRECONDS = ("vp", "edm", "ve", "fdm_edm", "fdm_vp", "fdm_ve")


def _is_multistage(d) -> bool:
    """Whether a config dict is a `stages.StageTrainConfig.to_dict()` (its "stage_probs" field, or a net with
    "decoder_channels") rather than a `train.TrainConfig.to_dict()`."""
    return isinstance(d, dict) and (
        "stage_probs" in d or (isinstance(d.get("net"), dict) and "decoder_channels" in d["net"])
    )


def train_config(args) -> tuple:
    """(config, member name) of `omsjax train`: the named config or JSON file `--config`, with the fields given on
    the command line (--steps, --precond, --fdm-m, --weight-clamp-warmup, --ema-warmup) replaced; ValueError names
    the bad field.

    The config is a `train.TrainConfig`, or a `stages.StageTrainConfig` for a JSON file holding one (e.g. from
    `omsjax stages config`, or a multi-stage run's config.json, whose {"omsjax_multistage", "config"} wrapper is
    unwrapped); a multi-stage config takes --steps and --ema-warmup only.
    """
    from omsjax import stages, train, zoo

    src = args.config
    if src in zoo.CONFIGS:
        cfg, name = zoo.named_config(src), src
    else:
        path = Path(src)
        if not path.is_file():
            raise ValueError(f"--config {src!r} is neither a named config ({', '.join(sorted(zoo.CONFIGS))}) "
                             f"nor a JSON file")  # fmt: skip
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"--config {src}: not valid JSON: {e}") from None
        if isinstance(d, dict) and "omsjax_multistage" in d:  # a multi-stage run's config.json
            d = d.get("config")
        kind = stages.StageTrainConfig if _is_multistage(d) else train.TrainConfig
        try:
            cfg = kind.from_dict(d)
        except TypeError as e:
            raise ValueError(f"--config {src}: {e}") from None
        name = path.stem if path.name != "config.json" else path.resolve().parent.name
    given = {"steps": args.steps, "precond": args.precond, "fdm_m": args.fdm_m,
             "weight_clamp_warmup": args.weight_clamp_warmup, "ema_warmup": args.ema_warmup}  # fmt: skip
    given = {k: v for k, v in given.items() if v is not None}
    if isinstance(cfg, stages.StageTrainConfig):
        bad = [f"--{k.replace('_', '-')}" for k in given if k not in ("steps", "ema_warmup")]
        if bad:
            verb = "does" if len(bad) == 1 else "do"
            raise ValueError(f"{', '.join(bad)} {verb} not apply to the multi-stage config {src} (continuous linear "
                             f"VP, noise prediction); only --steps and --ema-warmup do")  # fmt: skip
    if given:
        cfg = type(cfg).from_dict({**cfg.to_dict(), **given})
    return cfg, name


# `omsjax train` on a multi-stage config saves the full training state every this many steps.
STAGES_CHECKPOINT_EVERY = 1000


def _train_stages(args, cfg, images):
    """Train a multi-stage network into --out (resumable): OUT/config.json and OUT/params (`stages.save_checkpoint`
    of the EMA parameters, rewritten at every checkpoint), OUT/state (the full `TrainState`), OUT/log.jsonl."""
    from omsjax import stages

    out = Path(args.out)
    state_dir, log_path, meta_path = out / "state", out / "log.jsonl", out / "config.json"
    if state_dir.exists() and not args.resume:
        raise ValueError(f"{state_dir} exists: pass --resume to continue that run, or choose another --out")
    state = None
    if args.resume and state_dir.exists():
        if meta_path.exists():
            old = json.loads(meta_path.read_text()).get("config", {})
            new = cfg.to_dict()
            diff = sorted(k for k in new if k != "steps" and old.get(k) != new[k])
            if diff:
                raise ValueError(f"--resume: {out} was trained with a different config (fields {diff} differ)")
        state = stages.restore_state(state_dir, cfg)
    start = 0 if state is None else int(state.step)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for r in _read_jsonl(log_path) if r["step"] <= start]
    log_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stops = [s for s in range(STAGES_CHECKPOINT_EVERY, cfg.steps, STAGES_CHECKPOINT_EVERY) if s > start]
    for stop in [*stops, cfg.steps]:
        state, log = stages.train(cfg, images, state=state, stop_at=stop, progress=not args.quiet)
        stages.save_state(state_dir, state)
        stages.save_checkpoint(out, cfg, state.ema_params)
        with open(log_path, "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in log))
    return state


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def cmd_train(args) -> int:
    from omsjax import data, stages, train, zoo

    cfg, name = train_config(args)
    images = data.load_digits("train")
    if isinstance(cfg, stages.StageTrainConfig):
        state = _train_stages(args, cfg, images)
    else:
        state = train.train(cfg, images, args.out, resume=args.resume, progress=not args.quiet)
        train.save_params(Path(args.out) / "params", state.ema_params)
        (Path(args.out) / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    if args.add_to_zoo:
        entry = zoo.add_member(args.add_to_zoo, name, cfg, state.ema_params, train_steps=int(state.step),
                               data_mean=data.data_mean(images))  # fmt: skip
        print(json.dumps({"added": entry["name"], "zoo": str(args.add_to_zoo), "latency_ms": entry["latency_ms"]}))
    return 0


def cmd_stages_cluster(args) -> int:
    import jax

    jax.config.update("jax_enable_x64", True)  # the similarity in float64 (a few seconds on a CPU)
    import numpy as np

    from omsjax import data, stages

    images = data.load_digits("train", dtype=np.float64)
    report = stages.clustering_report(images, grid_size=args.grid, num_samples=args.samples, alpha=args.alpha,
                                      num_stages=args.partition, prediction=args.prediction, eta=args.eta,
                                      seed=args.seed)  # fmt: skip
    report["data"] = "digits train split"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    short = {k: v for k, v in report.items() if k != "similarity"}
    if args.json:
        print(json.dumps(short))
        return 0
    k = report["num_stages"]
    print(f"Timestep clustering of the digits train split ({report['num_data']} images) with its empirical optimal "
          f"denoiser,\ncontinuous linear VP, {args.grid} times in [{report['grid'][0]:g}, 1], {args.samples} "
          f"Monte-Carlo samples, eta = {report['eta']:.4g}, {args.prediction} prediction, seed {args.seed} "
          f"({report['seconds']:.1f} s).\nscore: mean similarity of each grid time to the others of its stage "
          f"(stages.partition_score).\n")  # fmt: skip
    rows = [(f"threshold rule (alpha {args.alpha:g})", report["threshold"]),
            (f"DP partition ({k} stages)", report["partition"]), (f"uniform in t ({k})", report["uniform_t"]),
            (f"uniform in logSNR ({k})", report["uniform_logsnr"])]  # fmt: skip

    def cells(v):
        return ", ".join(f"{x:.4g}" for x in v) or "-"

    print(f"{'boundaries':<28}{'t':<22}{'lambda':<22}{'EDM sigma':<22}{'score':>6}")
    for label, r in rows:
        if r is None:
            print(f"{label:<28}none: {report['threshold_error']}")
            continue
        score = "-" if r["score"] is None else f"{r['score']:.3f}"
        print(f"{label:<28}{cells(r['t']):<22}{cells(r['lambda']):<22}{cells(r['sigma']):<22}{score:>6}")
    if args.out:
        print(f"\nwrote {args.out} (with the similarity matrix)")
    return 0


def cmd_stages_config(args) -> int:
    from omsjax import stages

    net = stages.MultiStageConfig(boundaries=tuple(args.boundaries), decoder_channels=tuple(args.decoders),
                                  encoder_channels=args.encoder, channel_mults=tuple(args.channel_mults))  # fmt: skip
    cfg = stages.StageTrainConfig(net=net, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                  warmup=args.warmup, seed=args.seed, ema_warmup=args.ema_warmup)  # fmt: skip
    text = json.dumps(cfg.to_dict(), indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


def cmd_evaluate(args) -> int:
    from omsjax import metrics

    x, sched, label, seconds, models, ns = _zoo_samples(args)
    result = {
        "fd": float(metrics.fd(x)),
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

    x, _, label, seconds, _, _ = _zoo_samples(args)
    path = plots.save_grid(x, args.out)
    print(f"wrote {path} ({args.num_samples} samples, {label}, {seconds:.1f} s)")
    return 0


def cmd_compare(args) -> int:
    import numpy as np

    from omsjax import metrics, sampler

    models, ns, manifest, mean = _load_zoo(args.zoo)
    k = len(models) - 1 if args.model is None else args.model
    if not 0 <= k < len(models):
        raise ValueError(f"--model {k} is not in the zoo of {len(models)} models (0..{len(models) - 1})")
    unknown = [n for n in args.solvers if n not in SOLVERS]
    if unknown:
        raise ValueError(f"unknown solvers {unknown}; expected some of {list(SOLVERS)}")
    shape = tuple(manifest["image_shape"])
    table, t0 = {}, time.perf_counter()
    for name in args.solvers:
        row = {}
        for n in args.nfe:
            sched = _solver_schedule(name, ns, n, args.skip, model=k)
            if sched is None:
                row[n] = None
                continue
            x = sampler.generate(models, ns, sched, args.num_samples, shape, seed=args.seed,
                                 batch_size=args.batch_size, data_mean=mean)  # fmt: skip
            row[n] = float(metrics.fd(x))
        table[name] = row
    seconds = time.perf_counter() - t0
    floor = metrics.fd_floor(n=args.num_samples, repeats=5) if args.num_samples <= 1497 else None
    m = manifest["models"][k]
    if args.json:
        print(json.dumps({"model": k, "name": m["name"], "fd": table, "floor": floor, "seconds": seconds}))
        return 0
    print(f"Digits zoo {args.zoo}: model {k} ({m['name']}, {m['param_count']:,} params, "
          f"{m['latency_ms']:.1f} ms per batch of {m['latency_batch']}), {args.skip} spacing.")  # fmt: skip
    print(f"FD of {args.num_samples} samples (seed {args.seed}) in the classifier's features; lower is better.\n")
    head = f"{'solver':<18}" + "".join(f"{'NFE ' + str(n):>10}" for n in args.nfe)
    print(head)
    print("-" * len(head))
    for name, row in table.items():
        print(f"{name:<18}" + "".join(f"{'-':>10}" if v is None else f"{v:>10.2f}" for v in row.values()))
    if floor is not None:
        print(f"\nreal data at the same N: {args.num_samples} train images resampled "
              f"{floor['train_resample_mean']:.2f} +- {floor['train_resample_std']:.2f}; "
              f"the {floor['heldout_n']} held-out images {floor['heldout']:.2f}")  # fmt: skip
    best = {n: min(((r[n], s) for s, r in table.items() if r[n] is not None), default=(np.nan, "-")) for n in args.nfe}
    print("best per NFE: " + ", ".join(f"{n}: {s} ({v:.2f})" for n, (v, s) in best.items()))
    print(f"{sum(v is not None for r in table.values() for v in r.values())} evaluations in {seconds:.1f} s")
    return 0


def cmd_zoo(args) -> int:
    from omsjax import zoo

    manifest = zoo.remeasure_latency(args.zoo) if args.remeasure_latency else zoo.load_zoo(args.zoo)[2]
    if args.json:
        print(json.dumps(manifest["models"]))
        return 0
    print(f"zoo {args.zoo}: {manifest.get('dataset', '?')}, images {manifest['image_shape']}, "
          f"noise schedule {manifest['noise_schedule'].get('kind', '?')}")  # fmt: skip
    print(f"{'index':>5}  {'name':<12}{'params':>12}{'steps':>8}{'latency (ms)':>14}  machine")
    for i, m in enumerate(manifest["models"]):
        print(f"{i:>5}  {m['name']:<12}{m['param_count']:>12,}{m['train_steps']:>8}"
              f"{m['latency_ms']:>14.2f}  batch {m['latency_batch']}, {m['latency_machine']}")  # fmt: skip
    return 0


def cmd_optimize_steps(args) -> int:
    from omsjax import timesteps

    if args.rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {args.rounds}")
    report = timesteps.run(args.zoo, args.out, model=args.model, solver=args.solver, nfe=args.nfe,
                           method=args.method, rounds=args.rounds if args.finetune else 0,
                           train_samples=args.train_samples, heldout_samples=args.heldout_samples,
                           fd_samples=args.num_samples, seed=args.seed, traj_steps=args.steps,
                           finetune_steps=args.finetune_steps, distance=args.distance,
                           progress=not args.quiet)  # fmt: skip
    if args.json:
        print(json.dumps(report))
        return 0
    o, b = report["optimized"], report["spacings"][report["best_spacing"]]
    print(f"{args.solver}, NFE {args.nfe}, {o['label']}: FD {o['fd']:.3f}, trajectory RMSE {o['traj_rmse']:.4f}")
    for sp, r in report["spacings"].items():
        print(f"  {sp:15s} FD {r['fd']:.3f}, trajectory RMSE {r['traj_rmse']:.4f}")
    print(f"ratio to the best spacing ({report['best_spacing']}, FD {b['fd']:.3f}): "
          f"{report['fd_ratio_to_best_spacing']:.3f}")  # fmt: skip
    print(f"wrote {args.out}/schedule.json, report.json, timesteps.png")
    return 0


def cmd_search(args) -> int:
    import dataclasses

    from omsjax.search import ga, job, loop

    if args.nfe is None and args.budget is None:
        raise ValueError("give --nfe N or --budget SECONDS")
    if args.nfe is not None and args.budget is not None:
        raise ValueError("give either --nfe or --budget, not both")
    cfg = loop.LoopConfig(stages=args.stages, initial_random=args.initial_random, per_stage=args.per_stage,
                          explore_fraction=args.explore_fraction, generations=args.generations,
                          predictor_epochs=args.predictor_epochs,
                          ga=ga.GAConfig(pop_size=args.population, num_children=args.population))  # fmt: skip
    if args.quick:
        cfg = dataclasses.replace(cfg, stages=1, initial_random=8, per_stage=8, generations=20, predictor_epochs=20)
    report = job.run(args.zoo, args.out, mode=args.mode, nfe=args.nfe, budget_seconds=args.budget, model=args.model,
                     config=cfg, num_samples=args.num_samples, final_samples=args.final_samples, seed=args.seed,
                     spacing=args.spacing, progress=not args.quiet)  # fmt: skip
    if args.json:
        print(json.dumps(report))
        return 0
    s, b = report["searched"], report["best_baseline"]
    print(f"searched ({args.mode} mode): FD {s['fd']:.3f} at NFE {s['nfe']}, cost {s['cost']:.1f} ms "
          f"(held-out noise, {report['heldout_samples']} samples)")  # fmt: skip
    if b is not None:
        print(f"best baseline: {b['name']}: FD {b['fd']:.3f} at NFE {b['nfe']}, cost {b['cost']:.1f} ms; "
              f"ratio {report['fd_ratio_to_best_baseline']:.3f}")  # fmt: skip
    print(f"{report['evaluated']} schedules evaluated ({report['new_evaluations']} new) in "
          f"{report['search_seconds']:.0f} s; predictor Kendall tau on held-out schedules "
          f"{report['predictor_heldout_tau']:.2f}; wrote {args.out}/schedule.json, report.json, pareto.png, "
          f"samples.png")  # fmt: skip
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

    t = sub.add_parser("train", help="train a digits U-Net or multi-stage network (resumable checkpoints)")
    t.add_argument("--config", required=True,
                   help="a named config (omsjax.zoo.CONFIGS, e.g. digits-m), or a TrainConfig or StageTrainConfig "
                   "JSON file")  # fmt: skip
    t.add_argument("--out", required=True, help="run folder (checkpoints, log, final EMA params)")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--precond", choices=_PRECONDS, default=None, help="replace the config's preconditioning")
    t.add_argument("--fdm-m", type=float, default=None, help="FDM damping m (fdm_* preconds; default 2)")
    t.add_argument("--weight-clamp-warmup", type=int, default=None,
                   help="loss-weight cap 5*100^(step/W) for the first W steps (0: off)")  # fmt: skip
    t.add_argument("--ema-warmup", action="store_const", const=True, default=None,
                   help="ramp the EMA decay up: min(ema_decay, (1+n)/(10+n)) at update n")  # fmt: skip
    t.add_argument("--resume", action="store_true")
    t.add_argument("--add-to-zoo", default=None, help="zoo folder to add the trained model to")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    st = sub.add_parser("stages", help="multi-stage networks: timestep clustering, training configs")
    st_sub = st.add_subparsers(dest="stages_command", required=True)
    sc = st_sub.add_parser("cluster", help="timestep clustering of the digits train split (optimal denoiser)")
    sc.add_argument("--grid", type=int, default=100, help="number of times, linspace(1e-3, 1, G)")
    sc.add_argument("--samples", type=int, default=1000, help="Monte-Carlo samples (x0, eps)")
    sc.add_argument("--alpha", type=float, default=0.6, help="threshold of the boundary rule")
    sc.add_argument("--eta", type=float, default=2 / 255, help="agreement tolerance per pixel")
    sc.add_argument("--prediction", default="eps", choices=["eps", "x0"], help="compare noise or data predictions")
    sc.add_argument("--partition", type=int, default=3, help="stages of the DP partition and the uniform baselines")
    sc.add_argument("--seed", type=int, default=0)
    sc.add_argument("--json", action="store_true", help="print one JSON object (without the matrix)")
    sc.add_argument("--out", default=None, help="write the full report (with the similarity matrix) to FILE.json")
    sc.set_defaults(func=cmd_stages_cluster)
    sg = st_sub.add_parser("config", help="print a StageTrainConfig JSON for `omsjax train --config FILE`")
    sg.add_argument("--boundaries", type=float, nargs="*", required=True,
                    help="K-1 increasing VP times in (0, 1), e.g. from `omsjax stages cluster`")  # fmt: skip
    sg.add_argument("--decoders", type=int, nargs="+", default=[48, 32, 8], help="K decoder widths, near data first")
    sg.add_argument("--encoder", type=int, default=32, help="encoder width")
    sg.add_argument("--channel-mults", type=int, nargs="+", default=[1, 2])
    sg.add_argument("--steps", type=int, default=6000)
    sg.add_argument("--batch-size", type=int, default=128)
    sg.add_argument("--lr", type=float, default=2e-3)
    sg.add_argument("--warmup", type=int, default=200)
    sg.add_argument("--seed", type=int, default=0)
    sg.add_argument("--ema-warmup", action="store_true", help="ramp the EMA decay up (StageTrainConfig.ema_warmup)")
    sg.add_argument("--out", default=None, help="write to FILE.json instead of printing")
    sg.set_defaults(func=cmd_stages_config)

    e = sub.add_parser("evaluate", help="FD, NFE and cost of a schedule on a zoo")
    _add_schedule_args(e, 1000)
    e.add_argument(
        "--ref-samples",
        type=int,
        default=64,
        help="trajectory error (traj_rmse) of this many samples vs. the diffrax ODE endpoint (0: off)",
    )
    e.add_argument(
        "--ref-model",
        type=int,
        default=None,
        help="zoo model whose ODE is the reference (default: the preset's model; for a schedule file, the largest)",
    )
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("compare", help="FD of every preset solver at several NFEs on one zoo model (the main job)")
    c.add_argument("--zoo", default=None, help="zoo folder with manifest.json (default: the shipped digits zoo)")
    c.add_argument("--model", type=int, default=None, help="zoo index (default: the largest model)")
    c.add_argument("--nfe", type=int, nargs="+", default=[5, 10])
    c.add_argument(
        "--solvers",
        nargs="+",
        default=["DDIM", "DPM-Solver-3", "DPM-Solver++(2M)", "DPM-Solver++(3M)", "UniPC-2 (bh2)", "UniPC-3 (bh2)"],
    )
    c.add_argument("--skip", default="logSNR", choices=["logSNR", "time_uniform", "time_quadratic", "karras"])
    c.add_argument("--num-samples", type=int, default=1000)
    c.add_argument("--batch-size", type=int, default=500)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_compare)

    r = sub.add_parser("search", help="search a schedule (solver, model or joint) under an NFE or a time budget")
    r.add_argument("--zoo", default=None, help="zoo folder with manifest.json (default: the shipped digits zoo)")
    r.add_argument("--nfe", type=int, default=None, help="model calls (solver mode: exactly; else at most)")
    r.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds to sample one batch by the zoo's measured latencies (the sum over the calls)",
    )
    r.add_argument("--mode", default="solver", choices=["solver", "model", "joint"])
    r.add_argument("--model", type=int, default=None, help="solver mode: the zoo model (default: the largest)")
    r.add_argument("--out", required=True, help="output folder (schedule.json, report.json, pareto.png, ...)")
    r.add_argument(
        "--spacing",
        default=None,
        choices=["logSNR", "time_uniform", "time_quadratic", "karras"],
        help="base step spacing the time genes vary around (model mode follows it); default: logSNR in solver "
        "mode, time_quadratic in model and joint modes",
    )
    r.add_argument("--stages", type=int, default=4)
    r.add_argument("--initial-random", type=int, default=40)
    r.add_argument("--per-stage", type=int, default=40, help="schedules evaluated per stage")
    r.add_argument("--generations", type=int, default=30, help="GA generations per stage (on the predictor)")
    r.add_argument(
        "--explore-fraction",
        type=float,
        default=0.5,
        help="share of each stage's evaluations given to children of the best evaluated schedules",
    )
    r.add_argument("--population", type=int, default=64)
    r.add_argument("--predictor-epochs", type=int, default=300)
    r.add_argument("--num-samples", type=int, default=500, help="samples per evaluation during the search")
    r.add_argument("--final-samples", type=int, default=1000, help="samples of the held-out re-evaluation")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--quick", action="store_true", help="a tiny search (smoke test)")
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_search)

    z = sub.add_parser("zoo", help="list a zoo's models (parameters, training steps, latency)")
    z.add_argument("--zoo", default=None, help="zoo folder with manifest.json (default: the shipped digits zoo)")
    z.add_argument(
        "--remeasure-latency",
        action="store_true",
        help="measure every model's latency on this machine and rewrite manifest.json",
    )
    z.add_argument("--json", action="store_true")
    z.set_defaults(func=cmd_zoo)

    o = sub.add_parser("optimize-steps", help="learn a solver's timesteps (and fine-tune on them)")
    o.add_argument("--zoo", default=None, help="zoo folder with manifest.json (default: the shipped digits zoo)")
    o.add_argument("--model", type=int, default=None, help="zoo index (default: the largest)")
    o.add_argument("--solver", default="DDIM", choices=list(SOLVERS))
    o.add_argument("--nfe", type=int, required=True)
    o.add_argument("--method", default="trajectory", choices=["trajectory", "bound", "ays", "fd"],
                   help="bound: the error bound; trajectory: fit to the ODE endpoint; ays: AYS-style search; "
                   "fd: the FD itself through the sampler")  # fmt: skip
    o.add_argument("--distance", default="features", choices=["features", "pixels"],
                   help="trajectory fit: distance between the sampler's output and the ODE endpoint")  # fmt: skip
    o.add_argument("--finetune", action="store_true", help="alternate with fine-tuning (phase 2), --rounds times")
    o.add_argument("--rounds", type=int, default=1, help="rounds of phase 1 + phase 2 with --finetune")
    o.add_argument("--finetune-steps", type=int, default=600)
    o.add_argument("--steps", type=int, default=300, help="optimiser steps of the trajectory or FD fit")
    o.add_argument("--train-samples", type=int, default=256, help="x_T whose ODE endpoints the fit matches")
    o.add_argument("--heldout-samples", type=int, default=128, help="held-out x_T for the trajectory error")
    o.add_argument("--num-samples", type=int, default=1000, help="samples of the held-out FD")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--out", required=True)
    o.add_argument("--quiet", action="store_true")
    o.add_argument("--json", action="store_true")
    o.set_defaults(func=cmd_optimize_steps)

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
    if getattr(args, "ref_samples", 0) < 0:
        print("omsjax: error: --ref-samples must be >= 0", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"omsjax: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
