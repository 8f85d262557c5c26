"""Draw the figures of the docs site: `python docs/make_figures.py` rewrites docs/img/schedule_fields.png.

The figure shows the decision fields of three schedules of the shipped digits zoo, step by step: the classic
preset DPM-Solver++(3M) at NFE 6 and the searched solver schedules at NFE 6 and NFE 3. Each column is a step i
(from ts[i] to ts[i+1]), each row a field of `omsjax.Schedule`; the top strip places the steps' times on the
log-SNR axis of the noise schedule.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from omsjax import load_zoo, plots, presets  # noqa: E402
from omsjax.paths import checkpoints_dir  # noqa: E402
from omsjax.schedule import AFS_NAMES, Schedule  # noqa: E402

OUT = Path(__file__).resolve().parent / "img" / "schedule_fields.png"
RELAX = ("linear", "dpm2", "bh1")


def _rows(s: Schedule, names: list[str]) -> list[tuple[str, list[str], list[float]]]:
    """(field, cell texts, cell shades in [0, 1]) per row of the table."""
    a = {f: np.asarray(getattr(s, f)) for f in s._fields}
    n = s.num_steps
    rows = [
        ("model", [names[m] for m in a["model"]], a["model"] / max(1, len(names) - 1)),
        ("order", [str(o) for o in a["order"]], (a["order"] - 1) / 3),
        ("prediction", ["data" if p else "noise" for p in a["prediction"]], a["prediction"].astype(float)),
        ("start", [str(v) for v in a["start"]], np.minimum(a["start"], 3) / 3),
        ("d1_points", [str(v) for v in a["d1_points"]], np.minimum(a["d1_points"], 3) / 3),
        ("relax_type", [RELAX[v] for v in a["relax_type"]], a["relax_type"] / 2),
        ("relax", [f"{v:+.3f}" if v else "0" for v in a["relax"]], np.clip(0.5 + 5 * a["relax"], 0, 1)),
        ("d2_scale", [f"{v:g}" for v in a["d2_scale"]], 1 - a["d2_scale"]),
        ("corrector", ["yes" if c else "-" for c in a["corrector"]], a["corrector"].astype(float)),
        ("guidance", [f"{v:g}" for v in a["guidance"]], np.clip((a["guidance"] - 1) / 7, 0, 1)),
    ]
    afs = int(a["afs"])
    if afs:  # the analytical first step replaces step 0's model call
        rows[0][1][0] = "(no call)"
    rows.append(("afs", [AFS_NAMES[afs] if i == 0 else "" for i in range(n)], [afs / 2] + [0.0] * (n - 1)))
    return rows


def draw(out: Path = OUT) -> Path:
    models, ns, _ = load_zoo()
    names = [m.name for m in models]
    folder = checkpoints_dir() / "digits" / "schedules"
    cases = [
        ("DPM-Solver++(3M), NFE 6 (preset)", presets.dpm_solver_pp(ns, 6, 3, model=len(models) - 1)),
        ("searched solver schedule, NFE 6", Schedule.load(folder / "solver-nfe6.json", len(models))),
        ("searched solver schedule, NFE 3", Schedule.load(folder / "solver-nfe3.json", len(models))),
    ]
    width = max(s.num_steps for _, s in cases)
    fig, axes = plt.subplots(2 * len(cases), 1, figsize=(1.0 * width + 2.5, 4.6 * len(cases)),
                             gridspec_kw={"height_ratios": [1, 7] * len(cases)})  # fmt: skip
    lam = lambda t: np.asarray(ns.lam(np.asarray(t, np.float64)))  # noqa: E731
    lo, hi = float(lam(ns.t_max)), float(lam(1e-3))
    for k, (title, s) in enumerate(cases):
        strip, table = axes[2 * k], axes[2 * k + 1]
        ts = np.asarray(s.ts, np.float64)
        strip.plot(lam(ts), np.zeros_like(ts), "o-", color="k", ms=4)
        for i, x in enumerate(lam(ts)):
            strip.annotate(f"t{i}", (x, 0), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
        strip.set_xlim(lo - 0.5, hi + 0.5)
        strip.set_yticks([])
        strip.set_xlabel("log-SNR  lambda(t)", fontsize=8)
        strip.set_title(title, fontsize=11, loc="left")
        for side in ("left", "right", "top"):
            strip.spines[side].set_visible(False)
        rows = _rows(s, names)
        shade = np.full((len(rows), width), np.nan)
        for r, (_, _, v) in enumerate(rows):
            shade[r, : s.num_steps] = v
        cmap = plt.get_cmap("Blues").copy()
        cmap.set_bad("white")  # no step there
        table.imshow(np.ma.masked_invalid(shade), cmap=cmap, vmin=-0.3, vmax=1.6, aspect="auto")
        for r, (_, texts, _) in enumerate(rows):
            for i, text in enumerate(texts):
                table.text(i, r, text, ha="center", va="center", fontsize=8)
        table.set_yticks(range(len(rows)), [f for f, _, _ in rows], fontsize=9)
        table.set_xticks(range(width), [f"step {i}" if i < s.num_steps else "" for i in range(width)], fontsize=8)
        table.tick_params(length=0)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    plots.save(fig, out, dpi=90)  # atomic
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(draw(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
