"""`omsjax stages cluster` and `omsjax stages config`: timestep clustering and multi-stage training configs (a
JSON `--out` is checked before anything is computed and written atomically)."""

from __future__ import annotations

import json
from pathlib import Path

from omsjax.cli.common import check_out, flags


def cmd_stages_cluster(args) -> int:
    if args.out:
        check_out(args.out, suffixes=(".json",))
    import jax

    jax.config.update("jax_enable_x64", True)  # the similarity in float64 (a few seconds on a CPU)
    import numpy as np

    from omsjax import data, files, stages

    images = data.load_digits("train", dtype=np.float64)
    named = flags(args, "alpha prediction eta seed", grid_size="grid", num_samples="samples", num_stages="partition")
    report = stages.clustering_report(images, **named)
    report["data"] = "digits train split"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        files.write_json(args.out, report, indent=1)
    short = {k: v for k, v in report.items() if k != "similarity"}
    if args.json:
        print(json.dumps(short))
        return 0
    k = report["num_stages"]
    print(
        f"Timestep clustering of the digits train split ({report['num_data']} images) with its empirical optimal "
        f"denoiser,\ncontinuous linear VP, {args.grid} times in [{report['grid'][0]:g}, 1], {args.samples} "
        f"Monte-Carlo samples, eta = {report['eta']:.4g}, {args.prediction} prediction, seed {args.seed} "
        f"({report['seconds']:.1f} s).\nscore: mean similarity of each grid time to the others of its stage "
        f"(stages.partition_score).\n"
    )
    rows = [
        (f"threshold rule (alpha {args.alpha:g})", report["threshold"]),
        (f"DP partition ({k} stages)", report["partition"]),
        (f"uniform in t ({k})", report["uniform_t"]),
        (f"uniform in logSNR ({k})", report["uniform_logsnr"]),
    ]

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
    from omsjax import files, stages

    if args.out:
        check_out(args.out, suffixes=(".json",))
    net = flags(args, "boundaries channel_mults", decoder_channels="decoders", encoder_channels="encoder")
    net = stages.MultiStageConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in net.items()})
    cfg = stages.StageTrainConfig(net=net, **flags(args, "steps batch_size lr warmup seed ema_warmup"))
    text = json.dumps(cfg.to_dict(), indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        files.write_text(args.out, text + "\n")
    else:
        print(text)
    return 0


def add_stages(sub) -> None:
    """The `omsjax stages` parser and its `cluster` and `config` subcommands."""
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
    sg.add_argument(
        "--boundaries",
        type=float,
        nargs="*",
        required=True,
        help="K-1 increasing VP times in (0, 1), e.g. from `omsjax stages cluster`",
    )
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
