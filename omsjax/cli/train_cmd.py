"""`omsjax train`: a digits U-Net or a multi-stage network from a named or JSON config, resumable.

`--out` and `--add-to-zoo` (a folder, and an existing zoo's manifest) are checked before any training starts."""

from __future__ import annotations

import json
from pathlib import Path

from omsjax.cli.common import check_out

# The `--precond` choices (omsjax.train.PRECONDS; kept here so that building the parser does not import orbax).
PRECOND_CHOICES = ("vp", "edm", "ve", "fdm_edm", "fdm_vp", "fdm_ve")


def train_config(args) -> tuple:
    """(config, member name) of `omsjax train`: the named config or JSON file `--config`, with the fields given on
    the command line (--steps, --precond, --fdm-m, --weight-clamp-warmup, --ema-warmup) replaced; ValueError names
    the bad field.

    The config is a `train.TrainConfig`, or a `stages.StageTrainConfig` for a JSON file holding one (e.g. from
    `omsjax stages config`, or a multi-stage run's config.json, whose {"omsjax_multistage", "config"} wrapper is
    unwrapped); a multi-stage config takes --steps and --ema-warmup only.
    """
    from omsjax import files, zoo

    src = args.config
    if src in zoo.CONFIGS:
        cfg, name = zoo.named_config(src), src
    else:
        path = Path(src)
        if not path.is_file():
            raise ValueError(
                f"--config {src!r} is neither a named config ({', '.join(sorted(zoo.CONFIGS))}) nor a JSON file"
            )
        d = files.read_json(path, "the training config of --config")
        if isinstance(d, dict) and "omsjax_multistage" in d:  # a multi-stage run's config.json
            d = d.get("config")
        try:
            cfg = zoo.recipe(zoo.kind_of_dict(d)).config_class.from_dict(d)
        except TypeError as e:
            raise ValueError(f"--config {src}: {e}") from None
        name = path.stem if path.name != "config.json" else path.resolve().parent.name
    given = {
        "steps": args.steps,
        "precond": args.precond,
        "fdm_m": args.fdm_m,
        "weight_clamp_warmup": args.weight_clamp_warmup,
        "ema_warmup": args.ema_warmup,
    }
    given = {k: v for k, v in given.items() if v is not None}
    recipe = zoo.recipe(zoo.kind_of(cfg))
    allowed = recipe.cli_fields
    if allowed is not None:
        bad = [f"--{k.replace('_', '-')}" for k in given if k not in allowed]
        if bad:
            verb = "does" if len(bad) == 1 else "do"
            flags = ", ".join("--" + f.replace("_", "-") for f in allowed)
            raise ValueError(
                f"{', '.join(bad)} {verb} not apply to the config {src} ({recipe.describe(cfg)}); only {flags} do"
            )
    if given:
        cfg = type(cfg).from_dict({**cfg.to_dict(), **given})
    return cfg, name


def cmd_train(args) -> int:
    from omsjax import data, zoo

    check_out(args.out)
    if args.latency_batch is not None:
        if not args.add_to_zoo:
            raise ValueError("--latency-batch sets the batch of the latency measured for --add-to-zoo: give both")
    if args.add_to_zoo:
        check_out(args.add_to_zoo, flag="--add-to-zoo")
    cfg, name = train_config(args)
    if args.add_to_zoo:  # a zoo that cannot take the model fails now, not after the training
        zoo.check_member(args.add_to_zoo, name, cfg)
    images, labels = data.load_digits("train", return_labels=True)
    run = zoo.recipe(zoo.kind_of(cfg)).run_training  # a class-conditional net learns from the digits' labels
    state = run(cfg, images, args.out, resume=args.resume, progress=not args.quiet, labels=labels)
    if args.add_to_zoo:
        entry = zoo.add_member(
            args.add_to_zoo,
            name,
            cfg,
            state.ema_params,
            train_steps=int(state.step),
            data_mean=data.data_mean(images),
            latency_batch=args.latency_batch or 256,
        )
        print(json.dumps({"added": entry["name"], "zoo": str(args.add_to_zoo), "latency_ms": entry["latency_ms"]}))
    return 0


def add_train(sub) -> None:
    """The `omsjax train` parser."""
    t = sub.add_parser("train", help="train a digits U-Net or multi-stage network (resumable checkpoints)")
    t.add_argument(
        "--config",
        required=True,
        help="a named config (omsjax.zoo.CONFIGS, e.g. digits-m), or a TrainConfig or StageTrainConfig JSON file",
    )
    t.add_argument("--out", required=True, help="run folder (checkpoints, log, final EMA params)")
    t.add_argument("--steps", type=int, default=None, help="replace the config's number of optimiser steps")
    t.add_argument("--precond", choices=PRECOND_CHOICES, default=None, help="replace the config's preconditioning")
    t.add_argument("--fdm-m", type=float, default=None, help="FDM damping m (fdm_* preconds; default 2)")
    t.add_argument(
        "--weight-clamp-warmup",
        type=int,
        default=None,
        help="loss-weight cap 5*100^(step/W) for the first W steps (0: off)",
    )
    t.add_argument(
        "--ema-warmup",
        action="store_const",
        const=True,
        default=None,
        help="ramp the EMA decay up: min(ema_decay, (1+n)/(10+n)) at update n",
    )
    t.add_argument("--resume", action="store_true")
    t.add_argument("--add-to-zoo", default=None, help="zoo folder to add the trained model to")
    t.add_argument(
        "--latency-batch",
        type=int,
        default=None,
        metavar="N",
        help="with --add-to-zoo: measure the model's latency (the search's cost model) per batch of N "
        "(default 256, the shipped zoo's)",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)
