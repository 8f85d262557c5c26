"""The verdicts of the shipped digits searches, as their reports state them (issue 26, items 3-5).

Reads `checkpoints/digits/schedules/{solver-nfe*, model-*, joint-*}.report.json` (made by
`benchmarks/search_digits.sh` and `omsjax search --budget B --mode {model,joint}`; nothing is sampled here) and
tabulates, for each: what was returned (a searched schedule, or the best preset when the search found nothing that
beat it on its selection noise), the best preset (chosen on the selection noise, +AFS variants included), both
scores by the search's metric over the 3 held-out draws, the paired difference with its verdict, and the FD to data
of the same samples, paired. Writes the `searches` section of benchmarks/RESULTS.md.

Run: `python benchmarks/tabulate_searches.py`.
"""

from __future__ import annotations

import json
import re

from common import machine, mean_se_cell, paired_cell, write_section

from omsjax import zoo


def _order(path) -> tuple:
    mode, size = re.match(r"(solver|model|joint)-(?:nfe)?([\d.]+)", path.name).groups()
    return ("solver", "model", "joint").index(mode), float(size.rstrip("."))


def main():
    folder = zoo.DEFAULT_ZOO / "schedules"
    reports = sorted(folder.glob("*-*.report.json"), key=_order)
    first = json.loads(reports[0].read_text())
    L = ["## Shipped digits searches: verdicts as reported (`benchmarks/tabulate_searches.py`)", "",
         f"Searched on: {first['machine']}; tabulated on {machine()}. Each row is a shipped schedule's report: "
         "`omsjax search --nfe N` (solver mode, digits-m) or `--budget B --mode {model,joint}` (the zoo's four "
         "models; the budget is the time to sample a batch of 256), the default search and metric (the reference "
         "FD to digits-m's own DPM-Solver++(3M) 100-step samples from the same noise). The best preset was chosen "
         "on 3 draws of selection noise (seeds 3000-3002); every number is the mean ± standard error over the 3 "
         "held-out draws (seeds 1000-1002, 1,000 samples each) that neither choice saw, and every difference is "
         "paired over them (returned minus preset; beats / tie / loses at 2 standard errors). When the search "
         "found nothing that beat the preset on the selection noise it returns that preset (`baseline: ...`).", "",
         "| search | NFE / cost (ms) | returned | best preset | reference FD: returned | preset | difference "
         "| FD to data: returned | preset | difference |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for path in reports:
        r = json.loads(path.read_text())
        s, b, fd = r["searched"], r["best_baseline"], r["also"]["fd"]
        same = r["returned"] != "searched"
        L.append(f"| {path.name.removesuffix('.report.json')} | {s['nfe']} / {s['cost']:.0f} | "
                 f"{'the preset' if same else 'searched'} | {b['name']} | {mean_se_cell(s['scores'])} | "
                 f"{'(the same)' if same else mean_se_cell(b['scores'])} | {paired_cell(r['paired_difference'])} | "
                 f"{mean_se_cell(fd['searched'])} | {'(the same)' if same else mean_se_cell(fd['best_baseline'])} | "
                 f"{'-' if same else paired_cell(fd['paired'])} |")  # fmt: skip
    write_section("\n".join(L), "searches")


if __name__ == "__main__":
    main()
