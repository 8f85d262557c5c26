"""`omsjax zoo`: list a zoo, remeasure its latencies, cache its preset evaluations."""

from __future__ import annotations

import json

from omsjax.cli.common import add_zoo_arg


def cmd_zoo(args) -> int:
    from omsjax import zoo

    if args.cache_presets:
        from omsjax.workflows import search_job

        if args.remeasure_latency:
            raise ValueError("--remeasure-latency changes the zoo (and so voids its cache): run it first, alone")
        path = search_job.cache_presets(args.zoo, args.cache_presets, progress=not args.json)
        print(json.dumps({"cache": str(path)}) if args.json else f"wrote {path}")
        return 0

    manifest = zoo.remeasure_latency(args.zoo) if args.remeasure_latency else zoo.load_zoo(args.zoo)[2]
    if args.json:
        print(json.dumps(manifest["models"]))
        return 0
    print(
        f"zoo {args.zoo}: {manifest.get('dataset', '?')}, images {manifest['image_shape']}, "
        f"noise schedule {manifest['noise_schedule'].get('kind', '?')}"
    )
    print(f"{'index':>5}  {'name':<12}{'params':>12}{'steps':>8}{'latency (ms)':>14}  machine")
    for i, m in enumerate(manifest["models"]):  # optional fields: "?" when an older manifest lacks them
        count = "?" if m.get("param_count") is None else f"{m['param_count']:,}"
        batch, machine = m.get("latency_batch", "?"), m.get("latency_machine", "?")
        print(
            f"{i:>5}  {m['name']:<12}{count:>12}{m.get('train_steps', '?'):>8}"
            f"{m['latency_ms']:>14.2f}  batch {batch}, {machine}"
        )
    return 0


def add_zoo(sub) -> None:
    """The `omsjax zoo` parser."""
    z = sub.add_parser("zoo", help="list a zoo's models (parameters, training steps, latency)")
    add_zoo_arg(z)
    z.add_argument(
        "--remeasure-latency",
        action="store_true",
        help="measure every model's latency on this machine and rewrite manifest.json",
    )
    z.add_argument(
        "--cache-presets",
        type=int,
        nargs="+",
        metavar="NFE",
        default=None,
        help="evaluate the presets of `omsjax search --nfe NFE` (solver mode, largest model, default sizes, seed and "
        "metric) once and store them in the zoo (evaluations.json), with the reference samples of its noise "
        "(references.npz), so that such a search does not evaluate or sample them again",
    )
    z.add_argument("--json", action="store_true")
    z.set_defaults(func=cmd_zoo)
