"""Searched guided schedules of the class-conditional zoo against the presets (issue 26, items 2-3).

Reads what `benchmarks/search_guided.sh` made (the searches sample 3 held-out draws that neither the search nor
its choice of the best preset saw, and compare paired over them; nothing is re-sampled here):

(a) the fixed-scale searches (`checkpoints/digits-cond/schedules/solver-w4-nfe{N}.json`: every step at guidance 4,
    the reference FD to digits-cond-xs's own samples at guidance 4): the returned schedule against the best preset
    at the same steps and guidance (+AFS variants included) by reference FD, FD to data and the error rate of the
    requested class, each paired, and whether the accuracy is within 0.5 points;
(b) the gene searches (`RUNS/guided-w4-gene-nfe{N}`, per-step guidance among 1, 2, 4, 6): the returned schedule
    on (FD to data, error rate) against presets at guidance 1, 1.25, 1.5, 2, 3 and 4 with no more model calls, the
    best of them at each scale, and which dominate it (shipped only when none does).

Writes the `guided-search` section of benchmarks/RESULTS.md and `benchmarks/guided_search.json`.
Run: `python benchmarks/bench_guided_search.py [--runs runs]`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import machine, mean_se_cell, paired_cell, save_json, write_section

from omsjax import zoo

STEPS = (4, 5, 6, 8)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("runs"), help="the folder of search_guided.sh's searches")
    a = ap.parse_args()
    folder = zoo.COND_ZOO / "schedules"
    fixed = {n: json.loads((folder / f"solver-w4-nfe{n}.report.json").read_text()) for n in STEPS}
    gene = {n: json.loads((a.runs / f"guided-w4-gene-nfe{n}" / "report.json").read_text()) for n in STEPS
            if (a.runs / f"guided-w4-gene-nfe{n}" / "report.json").exists()}  # fmt: skip
    save_json(Path(__file__).parent / "guided_search.json", {"fixed": fixed, "gene": gene})
    r0 = fixed[STEPS[0]]
    L = ["## Searched guided schedules (`benchmarks/search_guided.sh`, `benchmarks/bench_guided_search.py`)", "",
         f"Machine: {r0['machine']}; tabulated on {machine()}. digits-cond-xs at classifier-free guidance 4, "
         f"class-balanced labels. Each search: `omsjax search --zoo checkpoints/digits-cond --model 1 --guidance 4 "
         f"--nfe N` (N steps, 2N model calls), the default search size, the default metric: {r0['metric']}. Every "
         f"number below is the mean ± standard error over the search's 3 held-out draws (seeds "
         f"{', '.join(map(str, r0['heldout_noise_seeds']))}; {r0['heldout_samples']} samples each), which neither the "
         "search nor its choice of the best preset saw; every difference is paired over them (returned minus "
         "preset; beats / tie / loses at 2 standard errors). Error: 100 - accuracy, the share (%) of samples "
         "the digits classifier does not label as their requested class.", "",
         "### (a) Every step at guidance 4: the returned schedule against the best preset at guidance 4", "",
         "| steps (calls) | returned | best preset at w 4 (chosen on selection noise) | reference FD: returned "
         "| preset | difference | FD to data: difference | error (%): returned | preset | accuracy within 0.5 "
         "points |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for n, r in fixed.items():
        e = r["also"]["error_pct"]
        within = abs(sum(e["searched"]) - sum(e["best_baseline"])) / len(e["searched"]) <= 0.5
        L.append(f"| {n} ({r['searched']['nfe']}) | {r['returned']} | {r['best_baseline']['name']} | "
                 f"{mean_se_cell(r['searched']['scores'])} | {mean_se_cell(r['best_baseline']['scores'])} | "
                 f"{paired_cell(r['paired_difference'])} | {paired_cell(r['also']['fd']['paired'])} | "
                 f"{mean_se_cell(e['searched'])} | {mean_se_cell(e['best_baseline'])} | "
                 f"{'yes' if within else 'no'} |")  # fmt: skip
    L += ["", "### (b) Per-step guidance searched: the trade-off against presets at every scale", "",
          "`--search-guidance` (each step's scale among 1, 2, 4, 6; the same metric at guidance 4). Its point on "
          "(FD to data, error) against the presets (DPM-Solver++(2M), UniPC-2/3 (bh2) over logSNR and "
          "time-quadratic steps, with and without AFS) at each guidance scale with no more model calls: the "
          "preset of lowest FD to data at each scale, and how many presets dominate the schedule (no worse on "
          "either, better on one). Shipped (`solver-w4-gene-nfe{N}.json`) only when none does.", "",
          "| steps | calls | returned | its scales | FD to data / error (%) | lowest-FD preset per scale (FD / error) "
          "| dominated by | shipped |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for n, r in gene.items():
        t = r["guidance_tradeoff"]
        best = {}
        for name, p in t["presets"].items():
            if p["guidance"] not in best or p["fd"] < best[p["guidance"]][1]["fd"]:
                best[p["guidance"]] = (name, p)
        per_w = "; ".join(f"w {w:g}: {p['fd']:.3g} / {p['error_pct']:.2g}" for w, (_, p) in sorted(best.items()))
        s = t["searched"]
        L.append(f"| {n} | {t['calls']} | {r['returned']} | {' '.join(f'{w:g}' for w in r['searched_guidance'])} | "
                 f"{s['fd']:.3g} / {s['error_pct']:.2g} | {per_w} | {len(t['dominated_by'])} of "
                 f"{len(t['presets'])} | {'no' if t['dominated_by'] else 'yes'} |")  # fmt: skip
    write_section("\n".join(L), "guided-search")


if __name__ == "__main__":
    main()
