"""`omsjax search`: a per-step schedule searched with the S3 loop, against the baselines."""

from __future__ import annotations

import dataclasses
import json

from omsjax.cli.common import add_zoo_arg, check_out

# The search's sizes: the default (a first result in a few minutes on a 2-core CPU), `--thorough` (the S3 loop at
# full size) and `--quick` (a smoke test). Any of these flags given on the command line overrides its preset value.
# Only --thorough also measures the predictor's Kendall tau on held-out schedules (one more predictor to train).
DEFAULT = dict(
    stages=2, initial_random=16, per_stage=20, generations=30, predictor_epochs=300, num_samples=500, final_top=3
)
THOROUGH = dict(
    stages=4, initial_random=40, per_stage=40, generations=30, predictor_epochs=300, num_samples=500, final_top=5
)
QUICK = dict(stages=1, initial_random=8, per_stage=8, generations=20, predictor_epochs=20, num_samples=500, final_top=5)


def cmd_search(args) -> int:
    from omsjax.search import ga, loop
    from omsjax.workflows import search_job as job

    check_out(args.out)  # before anything loads or compiles

    if args.nfe is None and args.budget is None:
        raise ValueError("give --nfe N or --budget SECONDS")
    if args.nfe is not None and args.budget is not None:
        raise ValueError("give either --nfe or --budget, not both")
    if args.quick and args.thorough:
        raise ValueError("give either --quick or --thorough, not both")
    preset = QUICK if args.quick else THOROUGH if args.thorough else DEFAULT
    given = {f: getattr(args, f, None) for f in (*preset, "explore_fraction", "population")}
    given = {f: v for f, v in given.items() if v is not None}  # flags given on the command line win over the preset
    v = {"explore_fraction": 0.5, "population": 64, **preset, **given}
    pop = v["population"]
    fields = (
        "stages",
        "initial_random",
        "per_stage",
        "explore_fraction",
        "generations",
        "predictor_epochs",
        "final_top",
    )
    cfg = loop.LoopConfig(
        **{f: v[f] for f in fields},
        heldout_tau=preset is THOROUGH,
        ga=ga.GAConfig(pop_size=pop, num_children=pop),
    )
    choices = None if args.search_guidance is None else tuple(args.search_guidance)
    objective = job.Objective(
        metric=args.metric, guidance=args.guidance, accuracy_weight=args.accuracy_weight, guidance_choices=choices
    )
    options = dataclasses.replace(
        job.DEFAULTS,
        model=args.model,
        config=cfg,
        num_samples=v["num_samples"],
        heldout_samples=args.final_samples,
        spacing=args.spacing or job.DEFAULTS.spacing,
        progress=not args.quiet,
    )
    report = job.run(
        args.zoo,
        args.out,
        mode=args.mode,
        nfe=args.nfe,
        budget_seconds=args.budget,
        seed=args.seed,
        options=options,
        objective=objective,
        use_cache=not args.recompute_baselines,
    )
    if args.json:
        print(json.dumps(report))
        return 0
    for line in verdict_lines(report):
        print(line)
    tau = report["predictor_heldout_tau"]
    tau = "" if tau is None else f"; predictor Kendall tau on held-out schedules {tau:.2f}"
    # The presets are judged on the search noise too: where the zoo's cache has none, they add to the runs.
    print(
        f"{report['evaluated']} schedules searched, {len(report['baselines'])} presets compared; "
        f"{report['new_evaluations']} evaluations run on the search noise, {report['cached_evaluations']} on "
        f"every noise read from the zoo's cache, in {report['search_seconds']:.0f} s{tau}; wrote "
        f"{args.out}/schedule.json, report.json, pareto.png, samples.png"
    )
    return 0


def _mean_se(scores) -> str:
    v = [x for x in scores if x is not None]
    if len(v) < len(scores):
        return "inf (diverged)"
    m = sum(v) / len(v)
    se = (sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v)) ** 0.5
    return f"{m:.4g} +- {se:.2g}"


def verdict_lines(report: dict) -> list[str]:
    """The lines `omsjax search` prints of a report: what it returned, the best baseline, the verdict (paired
    over the held-out draws), the other metrics of the same samples, the noise check."""
    s, b, p = report["searched"], report["best_baseline"], report["paired_difference"]
    m = report["metric"].split("[")[0]
    draws = f"{len(s['scores'])} held-out draws x {report['heldout_samples']} samples"
    lines = [
        f"metric: {report['metric']}"
        + (
            f" (reference: {report['reference']})"
            if report.get("reference") and report["reference"] not in report["metric"]
            else ""
        )
    ]
    if report["returned"] == "searched":
        lines.append(
            f"searched ({report['mode']} mode): {m} {_mean_se(s['scores'])} at NFE {s['nfe']}, cost "
            f"{s['cost']:.1f} ms ({draws})"
        )
    else:
        lines.append(
            f"no better schedule found: the search returns the best baseline, {report['returned'][10:]} "
            f"(no candidate beat it beyond the noise of the selection draws)"
        )
    lines.append(
        f"best baseline (of {len(report['baselines'])}, presets and +AFS): {b['name']}: {m} "
        f"{_mean_se(b['scores'])} at NFE {b['nfe']}"
    )
    if p is not None:
        diff = f"{p['mean']:+.4g} +- {p['se']:.2g}" if p["mean"] is not None and p["se"] is not None else "inf"
        noise = report["metric_noise"]
        lines.append(
            f"verdict: {report['verdict']} (paired difference {diff} over {len(p['diffs'])} held-out "
            f"draws; the best baseline's own std over the draws: {noise:.2g})"
        )
    else:
        lines.append(f"verdict: {report['verdict']}")
    names = {"fd": "FD to data", "error_pct": "error rate of the requested class (%)"}
    for name, v in report["also"].items():
        q = v["paired"]
        diff = f"{q['mean']:+.4g} +- {q['se']:.2g}" if q["mean"] is not None and q["se"] is not None else "inf"
        lines.append(
            f"  {names.get(name, name)}: {_mean_se(v['searched'])} vs {_mean_se(v['best_baseline'])}: "
            f"{diff}, {q['verdict']}"
        )
    if "guidance" in report:
        unguided = " (it samples the unguided conditional model)" if report["guided_calls"] == 0 else ""
        lines.append(
            f"guidance {report['guidance']:g}; model calls at a guided scale: {report['guided_calls']}{unguided}"
        )
        if "searched_guidance" in report:
            lines.append("searched guidance per step: " + " ".join(f"{w:g}" for w in report["searched_guidance"]))
            t = report["guidance_tradeoff"]
            point = f"FD to data {t['searched']['fd']:.3g}, error {t['searched']['error_pct']:.3g}%"
            if t["dominated_by"]:
                lines.append(
                    f"  dominated ({point}) by {len(t['dominated_by'])} preset(s) with at most {t['calls']} "
                    f"calls, e.g. {t['dominated_by'][0]}"
                )
            else:
                scales = sorted({p["guidance"] for p in t["presets"].values()})
                lines.append(
                    f"  on the Pareto front ({point}): no preset at w in {scales} with at most {t['calls']} "
                    "calls does better on both"
                )
    c = report.get("noise_check") or {}
    if c.get("ok") is False:
        lines.append(
            f"warning: the search noise cannot rank candidates (a gap of {c['spread']:.3g} between the best "
            f"and the fifth best preset changes by {c['noise']:.3g} on a second draw): raise "
            "--num-samples"
        )
    return lines


def add_search(sub) -> None:
    """The `omsjax search` parser."""
    from omsjax.spacing import SPACINGS

    r = sub.add_parser("search", help="search a schedule (solver, model or joint) under an NFE or a time budget")
    add_zoo_arg(r)
    r.add_argument(
        "--nfe",
        type=int,
        default=None,
        help="model calls (solver mode: exactly; else at most); under --guidance, steps",
    )
    r.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds to sample one batch by the zoo's measured latencies (the sum over the calls)",
    )
    r.add_argument("--mode", default="solver", choices=["solver", "model", "joint"])
    r.add_argument(
        "--guidance",
        type=float,
        default=None,
        metavar="W",
        help="class-conditional zoo: classifier-free guidance scale at every step (default 1: the "
        "conditional model); --nfe then counts steps, each two model calls",
    )
    r.add_argument(
        "--search-guidance",
        type=float,
        nargs="*",
        default=None,
        metavar="S",
        help="with --guidance W: also search the guidance scale of every step among the scales S (W among "
        "them; none given: 1, W/2, W, 3W/2); a step at 1 calls the model once",
    )
    r.add_argument(
        "--metric",
        default="reference-fd",
        choices=["reference-fd", "reference-rmse", "fd"],
        help="what the search minimises: reference-fd (default), the FD in the digits classifier's features "
        "to the target model's own converged samples from the same noise, labels and guidance; "
        "reference-rmse, the per-sample RMSE to them; fd, the FD to the data",
    )
    r.add_argument(
        "--accuracy-weight",
        type=float,
        default=1.0,
        metavar="A",
        help="--metric fd on a class-conditional zoo: the objective is FD + A x (100 - accuracy %%), "
        "accuracy being the share of samples classified as their requested class (default 1; 0: FD "
        "alone)",
    )
    r.add_argument("--model", type=int, default=None, help="solver mode: the zoo model (default: the largest)")
    r.add_argument(
        "--out",
        required=True,
        help="output folder (schedule.json, report.json, pareto.png, ...); "
        "locked while the search runs, so a second one on it is refused",
    )
    r.add_argument(
        "--spacing",
        default=None,
        choices=list(SPACINGS),
        help="base step spacing the time genes vary around (model mode follows it); default: time_quadratic",
    )
    sizes = ", ".join(f"{k} {DEFAULT[k]} / {THOROUGH[k]}" for k in DEFAULT)
    r.add_argument(
        "--thorough",
        action="store_true",
        help=f"the full-size search (default / --thorough: {sizes}); about 3x the new evaluations",
    )
    # The loop's sizes: each replaces the preset's (--quick, default, --thorough) when given.
    sizes = {
        "--stages": "predictor-guided stages after the first evaluations",
        "--initial-random": "random schedules evaluated with the presets",
        "--per-stage": "schedules evaluated per stage",
        "--generations": "GA generations per stage (on the predictor)",
        "--population": "GA population and children (default 64)",
        "--predictor-epochs": "predictor training epochs per stage",
        "--num-samples": "samples per evaluation during the search (500)",
        "--final-top": "best schedules re-evaluated on the held-out noise at the end",
    }
    for flag, text in sizes.items():
        r.add_argument(flag, type=int, default=None, help=text)
    r.add_argument(
        "--explore-fraction",
        type=float,
        default=None,
        help="share of each stage's evaluations given to children of the best evaluated schedules (default 0.5)",
    )
    r.add_argument("--final-samples", type=int, default=1000, help="samples of the held-out re-evaluation")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--quick", action="store_true", help="a tiny search (smoke test)")
    r.add_argument(
        "--recompute-baselines",
        action="store_true",
        help="evaluate the presets again instead of reading the zoo's shipped evaluations "
        "(evaluations.json, when it matches the zoo's files)",
    )
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_search)
