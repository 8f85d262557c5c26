"""Unguided verdicts with the reference metrics (issue 26, item 4).

For digits-m at NFE 3..10: every preset of a solver-mode search's baseline list (DDIM, DPM-Solver++(2M, 3M),
UniPC-2/3 bh1/bh2 over the four spacings, each also with an analytical first step: 56 settings) and the shipped
searched schedules (and with `--old DIR` the previous ones, e.g. `git show 9e0f870:checkpoints/...`), each on the
same 3 held-out draws (seeds 1000, 1001, 1002; 1,000 samples each), scored three ways on the same samples:

- FD to data (the digits classifier's features, against the train split),
- reference FD (the same features, against digits-m's own DPM-Solver++(3M) 100-step samples from the same noise),
- reference RMSE (per sample, to the same reference).

Each searched schedule is compared, paired over the three draws, with the best preset its search chose (on the
selection noise: its report's `best_baseline`, never on these draws), and the best preset in hindsight (the
lowest mean on these draws) is shown beside it. Then the S3 claim "searched NFE 5 ~ best preset NFE 10" is checked
with the reference FD. Evaluations are archived (`--work`), so a rerun resumes. Writes the `reference` section of
RESULTS.md and `benchmarks/reference.json`.

Run: `python benchmarks/bench_reference.py [--old DIR] [--work runs/bench-reference] [--nfes 3 5 10]`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from common import machine, save_json, write_section

from omsjax import metrics, verdict, zoo
from omsjax.schedule import Schedule
from omsjax.search import baselines, cache
from omsjax.search.archive import Archive
from omsjax.search.evaluate import Evaluator
from omsjax.search.space import SearchSpace
from omsjax.workflows.search_job import REFERENCES

SEEDS = (1000, 1001, 1002)
N = 1000
NFES = tuple(range(3, 11))
METRICS = ("reference_fd", "reference_rmse", "fd")
LABEL = {"reference_fd": "reference FD", "reference_rmse": "reference RMSE", "fd": "FD to data"}


def _evaluators(work: Path, nfe: int):
    models, ns, manifest = zoo.load_zoo()
    k = len(models) - 1
    space = SearchSpace.for_nfe(nfe, [m.latency for m in models], model=k, noise_schedule=ns)
    zoo_dir = zoo.DEFAULT_ZOO
    store = metrics.ReferenceStore(work / REFERENCES, cache.fingerprint(zoo_dir), shipped=Path(zoo_dir) / REFERENCES)
    ref = metrics.Reference(models[k], ns, t_start=space.t_start, t_end=space.t_end, store=store)
    archive = Archive(work / "archive.jsonl")
    base = Evaluator(models, ns, space, num_samples=N, metric=metrics.ReferenceFD(ref), archive=archive,
                     data_mean=zoo.data_mean(manifest), chunk=1)  # fmt: skip
    also = {"reference_rmse": metrics.ReferenceRMSE(ref), "fd": metrics.digits_fd}
    return ns, space, [base.with_noise(s, N, chunk=1, also=also) for s in SEEDS]


def _scores(evs, schedules: dict) -> dict:
    """{name: {metric: [score per draw]}}."""
    names = list(schedules)
    recs = [e.evaluate_schedules([schedules[n] for n in names]) for e in evs]
    out = {}
    for i, n in enumerate(names):
        rows = [r[i] for r in recs]
        out[n] = {"reference_fd": [r.score for r in rows], **{m: [r.extras[m] for r in rows] for m in METRICS[1:]}}
    return out


def _ms(v) -> str:
    m, se = verdict.mean_se(v)
    return f"{m:.3g} +- {se:.2g}"


def _cell(a, b) -> str:
    p = verdict.paired(a, b)
    return f"{p.mean:+.3g} +- {p.se:.2g} ({p.verdict})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("runs/bench-reference"))
    ap.add_argument("--shipped", type=Path, default=zoo.DEFAULT_ZOO / "schedules")
    ap.add_argument("--old", type=Path, default=None, help="a folder of earlier solver-nfe{N}.json to compare too")
    ap.add_argument("--nfes", type=int, nargs="+", default=list(NFES), help="the NFEs to score (default 3..10)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data, results = {}, {}
    for nfe in args.nfes:
        ns, space, evs = _evaluators(args.work, nfe)
        sched = {f"preset: {n}": s for n, s in baselines.for_space(ns, space).items()}
        report = json.loads((args.shipped / f"solver-nfe{nfe}.report.json").read_text())
        sched["searched"] = Schedule.load(args.shipped / f"solver-nfe{nfe}.json")
        if args.old is not None and (args.old / f"solver-nfe{nfe}.json").exists():
            sched["previous"] = Schedule.load(args.old / f"solver-nfe{nfe}.json")
        scores = _scores(evs, sched)
        data[nfe] = scores
        chosen = f"preset: {report['best_baseline']['name']}"
        hindsight = min((n for n in scores if n.startswith("preset")), key=lambda n: np.mean(scores[n]["reference_fd"]))
        results[nfe] = {"chosen": chosen, "hindsight": hindsight, "returned": report["returned"],
                        "verdict": report["verdict"]}  # fmt: skip
        print(nfe, results[nfe], {m: _ms(scores["searched"][m]) for m in METRICS}, flush=True)
    save_json(Path(__file__).parent / "reference.json", {"seeds": SEEDS, "samples": N, "scores": data,
                                                         "results": results})  # fmt: skip
    write_section(_table(data, results, args.old is not None), "reference")


def _table(data, results, old: bool) -> str:
    L = ["## Unguided verdicts with the reference metrics (`benchmarks/bench_reference.py`)", "",
         f"Machine: {machine()}. digits-m; every number is the mean +- standard error over 3 held-out draws "
         f"(seeds {', '.join(map(str, SEEDS))}; {N} samples each; none was used by a search), and every comparison "
         "is paired over them (difference of the searched schedule minus the preset, mean +- SE, and the verdict: "
         "beats / tie / loses at 2 SE). Reference: digits-m's own DPM-Solver++(3M), 100 time-quadratic steps, "
         "from the same noise. The preset compared with is the one the search chose on its selection noise; the "
         "best preset in hindsight (the lowest reference FD on these draws, favoured by the draws it is picked on) "
         "is shown beside it. Presets: the 28 solver settings and their 28 +AFS variants.", ""]  # fmt: skip
    for m in METRICS:
        L += [f"### {LABEL[m]}", "",
              "| NFE | searched (returned) | its search's best preset | preset's score | searched's score | "
              "searched - preset | best preset in hindsight | its score |" + (" previous schedule - preset |" if old
                                                                              else ""),
              "|---|---|---|---|---|---|---|---|" + ("---|" if old else "")]  # fmt: skip
        for nfe, sc in data.items():
            r = results[nfe]
            c, h = r["chosen"], r["hindsight"]
            row = (f"| {nfe} | {r['returned']} | {c[8:]} | {_ms(sc[c][m])} | {_ms(sc['searched'][m])} | "
                   f"{_cell(sc['searched'][m], sc[c][m])} | {h[8:]} | {_ms(sc[h][m])} |")  # fmt: skip
            if old:
                row += f" {_cell(sc['previous'][m], sc[c][m]) if 'previous' in sc else '-'} |"
            L.append(row)
        L.append("")
    if not {5, 10} <= set(data):
        return "\n".join(L)
    five, ten = data[5], data[10]
    best10 = min((n for n in ten if n.startswith("preset")), key=lambda n: np.mean(ten[n]["reference_fd"]))
    L += ["### Searched NFE 5 against the best preset at NFE 10 (the S3 claim)", "",
          f"Reference FD: searched NFE 5 {_ms(five['searched']['reference_fd'])}, best preset at NFE 10 "
          f"({best10[8:]}, in hindsight) {_ms(ten[best10]['reference_fd'])}; paired difference "
          f"{_cell(five['searched']['reference_fd'], ten[best10]['reference_fd'])}. FD to data: "
          f"{_ms(five['searched']['fd'])} vs {_ms(ten[best10]['fd'])}.", ""]  # fmt: skip
    return "\n".join(L)


if __name__ == "__main__":
    main()
