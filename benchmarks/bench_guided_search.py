"""Searched guided schedules against the presets on the class-conditional zoo, on held-out noise (issue 16, §3).

The schedules of `benchmarks/search_guided.sh` (`checkpoints/digits-cond/schedules/solver-w4-nfe{N}.json`: solver
searches of digits-cond-xs at guidance 4 with the per-step guidance gene) and every preset of
`bench_guidance.SOLVERS` over the logSNR and time-quadratic spacings at guidance 4 and 4..10 steps, on the same
noise and labels. The best preset of each step count is picked by FD on selection noise (seed 21) and then scored,
with the searched schedule, on three report seeds (31, 32, 33) that neither the search nor the pick saw: the
mean, the paired difference and its spread. The target: the searched 5-step schedule against the best preset at
10 steps (S3's 2x claim), FD no higher with accuracy no lower.

With `--fixed-run DIR` (an `omsjax search --model 1 --guidance 4 --nfe 5` folder: every step at guidance 4, no
guidance gene) and `--accuracy-run DIR` (the gene search at 5 steps with `--accuracy-weight 20`), the same target
for those searches.

With `--model-run DIR` (an `omsjax search --mode model --guidance 4 --budget B` folder), also the model schedule
against every member alone (the model-mode baselines, every step guided) at 1.5x its budget: the searched schedule
costs at least 1.5x less at equal quality when it has an FD no higher and an accuracy no lower than the best of
them (picked on the selection seed).

Writes `benchmarks/guided_search.json` and the `guided-search` section of benchmarks/RESULTS.md.
Run: `python benchmarks/bench_guided_search.py [--fixed-run DIR] [--model-run DIR] [--quick]` (one process at a
time on the machine).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from bench_guidance import SOLVERS, scored
from common import FIGURES, machine, save_json, write_section

from omsjax import presets, zoo
from omsjax.schedule import Schedule
from omsjax.search import baselines

W = 4.0
MODEL = 1  # digits-cond-xs
SPACINGS = ("logSNR", "time_quadratic")
SEARCHED = (4, 5, 6, 8)
STEPS = (4, 5, 6, 8, 10)
SELECT, REPORT = (21,), (31, 32, 33)


def _paired(a, b) -> str:
    d = np.asarray(a) - np.asarray(b)
    return f"{d.mean():+.2f} ± {d.std():.2f}"


def _acc(r) -> np.ndarray:
    """Accuracy in percent per report seed."""
    return 100 * np.asarray(r["accuracy"][0])


def _versus(r, b) -> tuple[str, bool]:
    """("FD d ± s, accuracy d ± s points", whether `r` has a mean FD no higher and accuracy no lower than `b`),
    paired per report seed."""
    d_fd, d_acc = np.asarray(r["fd"][0]) - np.asarray(b["fd"][0]), _acc(r) - _acc(b)
    text = f"FD {_paired(r['fd'][0], b['fd'][0])}, accuracy {_paired(_acc(r), _acc(b))} points"
    return text, bool(d_fd.mean() <= 0 and d_acc.mean() >= 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke test: 40 samples, one report seed, two solvers")
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--fixed-run", default=None, help="an omsjax search --guidance 4 --nfe 5 folder (no gene)")
    ap.add_argument(
        "--accuracy-run",
        default=None,
        help="an omsjax search --guidance 4 --search-guidance --nfe 5 --accuracy-weight 20 folder",
    )
    ap.add_argument("--model-run", default=None, help="an omsjax search --mode model folder on the conditional zoo")
    a = ap.parse_args()
    models, ns, manifest = zoo.load_zoo(zoo.COND_ZOO)
    k, mean = zoo.num_classes(manifest), zoo.data_mean(manifest)
    n, report_seeds, solvers = a.samples, REPORT, SOLVERS
    if a.quick:
        n, report_seeds, solvers = 40, REPORT[:1], SOLVERS[2:4]
    folder = zoo.COND_ZOO / "schedules"
    t0 = time.perf_counter()
    searched = {}
    for s in SEARCHED:
        sched = Schedule.load(folder / f"solver-w4-nfe{s}.json", num_models=len(models))
        rep = json.loads((folder / f"solver-w4-nfe{s}.report.json").read_text())
        searched[s] = {"guidance": np.asarray(sched.guidance).tolist(), "nfe": int(sched.nfe()),
                       "search_noise_seed": rep["search_noise_seed"], "heldout_noise_seed": rep["heldout_noise_seed"],
                       **scored(models, ns, [sched], k, n, report_seeds, mean)}  # fmt: skip
    best = {s: _best_preset(models, ns, solvers, s, W, k, n, report_seeds, mean) for s in STEPS}
    plain = {s: _best_preset(models, ns, solvers, s, 1.0, k, n, report_seeds, mean) for s in (5, 10)}
    runs5 = {}  # other 5-step searches against the best preset at 10 steps
    for what, run in (("fixed scale: every step at guidance 4, no guidance gene", a.fixed_run),
                      ("guidance gene, accuracy weight 20", a.accuracy_run)):  # fmt: skip
        if run is not None:
            sched = Schedule.load(Path(run) / "schedule.json", num_models=len(models))
            runs5[what] = {"run": f"runs/{Path(run).name}", "nfe": int(sched.nfe()),
                           "guidance": np.asarray(sched.guidance).tolist(),
                           **scored(models, ns, [sched], k, n, report_seeds, mean)}  # fmt: skip
    model_cmp = None if a.model_run is None else _model_schedule(a.model_run, models, ns, k, n, report_seeds, mean)
    seconds = time.perf_counter() - t0
    out = {"model": manifest["models"][MODEL]["name"], "guidance": W, "samples": n, "seconds": seconds,
           "other_5_step_searches": runs5, "model_schedule": model_cmp, "selection_seeds": list(SELECT),
           "report_seeds": list(report_seeds), "searched": searched, "best_preset": best,
           "best_unguided_preset": plain}  # fmt: skip
    if a.quick:
        print(json.dumps(out)[:2000])
        return
    save_json(FIGURES.parent / "guided_search.json", out)

    def cell(r) -> str:
        fd, acc = np.asarray(r["fd"][0]), np.asarray(r["accuracy"][0])
        return f"{fd.mean():.2f} ± {fd.std():.2f} / {100 * acc.mean():.1f}%"

    lines = [
        "## Searched guided schedules (`benchmarks/search_guided.sh`, `benchmarks/bench_guided_search.py`)",
        "",
        f"Machine: {machine()}. Model: {out['model']} at guidance {W:g}. Searched: `omsjax search --model 1 "
        "--guidance 4 --search-guidance --nfe N` (solver mode, per-step scales among 1, 2, 4, 6; shipped as "
        "`checkpoints/digits-cond/schedules/solver-w4-nfe{N}.json`). Best preset: the lowest FD on selection seed "
        f"{SELECT[0]} among {len(solvers)} solvers x {len(SPACINGS)} spacings ({', '.join(SPACINGS)}), every step "
        f"at guidance {W:g}. Every cell: mean ± std over report seeds {list(report_seeds)} of {n} class-balanced "
        "samples (the same noise and labels for every schedule; none seen by a search or a pick), FD / accuracy; "
        f"differences are paired per seed. Steps, not model calls: a step at guidance 1 calls the model once, "
        f"any other twice. {seconds / 60:.1f} minutes.",
        "",
        "| steps | searched (FD / accuracy) | its model calls | its scale per step | best preset at the same steps "
        "| FD difference | accuracy difference (points) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in SEARCHED:
        r, b = searched[s], best[s]
        lines.append(f"| {s} | {cell(r)} | {r['nfe']} | {' '.join(f'{w:g}' for w in r['guidance'])} | {b['name']}: "
                     f"{cell(b)} | {_paired(r['fd'][0], b['fd'][0])} | {_paired(_acc(r), _acc(b))} |")  # fmt: skip
    r, b = searched[5], best[10]
    text, met = _versus(r, b)
    lines += [
        "",
        f"Best presets at 10 steps: {b['name']}: {cell(b)}. **Target (searched 5 steps vs the best preset at 10 "
        f"steps): {text}: {'met' if met else 'not met'}.**",
    ]  # fmt: skip
    lines += ["", "Unguided (every step at guidance 1, the plain conditional model; one call a step), best preset: "
              + "; ".join(f"{s} steps: {plain[s]['name']}: {cell(plain[s])}" for s in plain) + "."]  # fmt: skip
    for what, r5 in runs5.items():
        text, met = _versus(r5, b)
        lines += [
            "",
            f"**5 steps, {what}** (`{r5['run']}`; scales {' '.join(f'{w:g}' for w in r5['guidance'])}; "
            f"{r5['nfe']} model calls): {cell(r5)}. Against the best preset at 10 steps: {text}: "
            f"**{'met' if met else 'not met'}**.",
        ]
    if model_cmp is not None:
        m, b = model_cmp["searched"], model_cmp["best_single"]
        text, met = _versus(m, b)
        lines += [
            "",
            f"**Model schedule** (`{model_cmp['run']}`: `omsjax search --mode model --guidance 4 --budget "
            f"{model_cmp['budget_ms'] / 1000:g}`): models per step {model_cmp['models']}, cost "
            f"{model_cmp['cost_ms']:.0f} ms: {cell(m)}. Best member alone at 1.5x the budget "
            f"({1.5 * model_cmp['budget_ms']:.0f} ms): {b['name']} ({b['cost_ms']:.0f} ms): {cell(b)}. Paired: {text}. "
            f"**Target (1.5x cheaper at equal FD and accuracy): {'met' if met else 'not met'}.**",
        ]  # fmt: skip
    write_section("\n".join(lines), "guided-search")
    print("\n".join(lines))


def _best_preset(models, ns, solvers, steps, w, k, n, report_seeds, mean) -> dict:
    """The preset of `solvers` x SPACINGS at `steps` and guidance `w` with the lowest FD on the selection seed,
    scored on the report seeds."""
    names = [(v, sp) for v in solvers for sp in SPACINGS]
    scheds = [presets.named(v, ns, steps, skip=sp, model=MODEL, guidance=w) for v, sp in names]
    pick = scored(models, ns, scheds, k, n, SELECT, mean)
    i = int(np.argmin(np.asarray(pick["fd"])[:, 0]))
    return {"name": f"{names[i][0]}, {names[i][1]}", "selection_fd": pick["fd"][i][0],
            **scored(models, ns, [scheds[i]], k, n, report_seeds, mean)}  # fmt: skip


def _model_schedule(run, models, ns, k, n, report_seeds, mean) -> dict:
    """The model-mode search of `run` against each member alone at 1.5x its budget (see the module docstring)."""
    run = Path(run)
    rep = json.loads((run / "report.json").read_text())
    sched = Schedule.load(run / "schedule.json", num_models=len(models))
    lat = [m.latency for m in models]
    budget = 1.5 * rep["budget_ms"]
    cands = {}
    for i, m in enumerate(models):
        steps = baselines.baseline_nfe(m.latency, "cost", budget, 40, 2)
        grid = baselines.baselines(ns, steps, i, solvers=baselines.MODEL_MODE_BASELINES,
                                   spacings=baselines.MODEL_MODE_SPACINGS, guidance=W)  # fmt: skip
        cands.update({f"{name}, {m.name}, {steps} steps": s for name, s in grid.items()})
    names = list(cands)
    picks = [scored(models, ns, [cands[c]], k, n, SELECT, mean)["fd"][0][0] for c in names]
    best = names[int(np.argmin(picks))]
    return {"run": f"runs/{run.name}", "budget_ms": rep["budget_ms"], "cost_ms": float(sched.cost(lat)),
            "models": " ".join(str(int(v)) for v in np.asarray(sched.model)),
            "searched": scored(models, ns, [sched], k, n, report_seeds, mean),
            "best_single": {"name": best, "cost_ms": float(cands[best].cost(lat)),
                            **scored(models, ns, [cands[best]], k, n, report_seeds, mean)}}  # fmt: skip


if __name__ == "__main__":
    main()
