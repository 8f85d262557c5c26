"""Few-step timestep optimisation (issue: learned timesteps and phase-2 fine-tuning) on digits-m.

For DDIM and DPM-Solver++(2M) at every NFE of --nfes (default 3-10):
- the four standard spacings (logSNR, time-uniform, time-quadratic, Karras rho = 7);
- phase 1a, `bound`: the first-order error bound (Monte-Carlo table of g, Adam on the logits; from logSNR);
- `ays`: the Align-Your-Steps-style coordinate search;
- phase 1b, `trajectory`: Adam through `jax.grad` of the sampler toward the diffrax endpoint of the model's own ODE
  (128 training trajectories, distance in the FD classifier's features; 64 held-out trajectories report the
  generalisation), from the standard spacing with the lowest training loss;
- `fd` (with --fd-nfes): the Frechet distance itself, differentiated through the sampler on fresh noise each step;
- phase 1+2, `+finetune`: the phase-1 schedule with the lowest FD on the selection seed (1000), then digits-m
  fine-tuned toward its steps (`workflows.timesteps_run.finetune`), sampled with the same times.
FD of 1,000 samples on held-out noise seeds 2000-2002 (mean +- std); seed 1000 only picks among the phase-1 results.
The rows are cached in OUT/rows-SOLVERS.json (the run resumes; run one process per solver side by side with
--solvers, then --report-only); the ODE references and tables in OUT/.

Writes the `timesteps` section of benchmarks/RESULTS.md, benchmarks/figures/timesteps-fd.png, and (with --ship)
the selected phase-1 schedules to checkpoints/digits/schedules/timesteps/.
Run: `python benchmarks/bench_timesteps.py --out runs/bench-timesteps [--fd-nfes 3 4 5 6] [--ship]`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from common import FIGURES, machine, write_section

from omsjax import data, metrics, presets, sampler, timesteps, zoo
from omsjax.search.evaluate import Evaluator
from omsjax.workflows import timesteps_run

SOLVERS = ("DDIM", "DPM-Solver++(2M)")
SEEDS = (2000, 2001, 2002)
SELECT_SEED = 1000
SPACINGS = timesteps.SPACINGS
SHORT = {"DDIM": "ddim", "DPM-Solver++(2M)": "dpmpp2m"}
SHIP_DIR = zoo.DEFAULT_ZOO / "schedules" / "timesteps"


def merge_rows(a: dict, b: dict) -> dict:
    """One row from two processes' copies of it: the union of their phase-1 methods (a's where both have one)
    and every other field from whichever copy has it (a's first)."""
    out = {**b, **a}
    if "phase1" in a or "phase1" in b:
        out["phase1"] = {**b.get("phase1", {}), **a.get("phase1", {})}
    return out


class Bench:
    def __init__(self, out: Path, k: int, fd_samples: int, solvers=SOLVERS, tag: str = ""):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.models, self.ns, self.man = zoo.load_zoo(zoo.DEFAULT_ZOO)
        self.k = k
        self.one = (self.models[k],)
        self.mean = jnp.asarray(np.asarray(self.man["data_mean"], np.float32))
        self.shape = tuple(self.man["image_shape"])
        self.x0 = jnp.asarray(data.load_digits("train"))
        self.fd_samples = fd_samples
        self.solvers = tuple(solvers)
        # one rows file per set of solvers, so that one process per solver can run side by side (on the CPU
        # a process keeps about one core busy); the report merges them
        self.rows_path = out / f"rows-{'-'.join(SHORT[s] for s in solvers)}{tag}.json"
        self.rows = {}
        for path in sorted(out.glob("rows-*.json")):
            for key, row in json.loads(path.read_text()).items():
                self.rows[key] = merge_rows(self.rows.get(key, {}), row)
        tpl = presets.preset("ddim", self.ns, 3, model=0)
        self.t0, self.t1 = float(np.asarray(tpl.ts)[0]), float(np.asarray(tpl.ts)[-1])
        self.lam_grid = np.linspace(float(self.ns.lam(self.t0)), float(self.ns.lam(self.t1)), 256)
        self._evals: dict = {}
        self._cache: dict = {}
        cls = metrics.load_classifier()
        self.embed = lambda x: metrics.apply_classifier(cls, x.astype(jnp.float32), True)  # noqa: E731

    def save(self):
        mine = {k: v for k, v in self.rows.items() if v["solver"] in self.solvers and v["nfe"] in self.nfes}
        self.rows_path.write_text(json.dumps(mine, indent=1))

    def cached(self, name, make):
        if name in self._cache:
            return self._cache[name]
        path = self.out / f"{name}.npz"
        if path.exists():
            arrs = dict(np.load(path))
        else:
            t = time.perf_counter()
            arrs = {k: np.asarray(v) for k, v in make().items()}
            np.savez(path, **arrs)
            print(f"  {name}: {time.perf_counter() - t:.0f} s", flush=True)
        self._cache[name] = arrs
        return arrs

    def refs(self):
        def make():
            x_T = sampler.noise(500, 128, self.shape)
            x_H = sampler.noise(600, 64, self.shape)
            ref = metrics.ode_reference(self.models[self.k], self.ns, jnp.concatenate([x_T, x_H]), self.t0, self.t1)
            return {"x_T": x_T, "x_H": x_H, "ref_T": ref[:128], "ref_H": ref[128:]}

        return self.cached("ode_refs", make)

    def g(self):
        def make():
            g, se = timesteps.estimate_g(self.models[self.k], self.ns, self.x0, self.lam_grid, jax.random.PRNGKey(1),
                                         num_samples=128)  # fmt: skip
            return {"g": g, "se": se}

        return self.cached("g_table", make)

    def ays(self):
        return self.cached("ays_table", lambda: {"table": timesteps.ays_table(
            self.models[self.k], self.ns, self.x0, self.lam_grid, jax.random.PRNGKey(2), num_samples=256)})  # fmt: skip

    def fd(self, zoo_, name, sched, seed):
        key = (name, seed)
        if key not in self._evals:
            self._evals[key] = Evaluator(zoo_, self.ns, num_samples=self.fd_samples, noise_seed=seed,
                                         image_shape=self.shape, data_mean=self.mean)  # fmt: skip
        return float(self._evals[key].evaluate_schedules([sched])[0].score)

    def fds(self, zoo_, name, sched, seeds=SEEDS):
        return [self.fd(zoo_, name, sched, s) for s in seeds]

    def template(self, solver, nfe):
        kind, kw = presets.NAMED[solver]
        return presets.preset(kind, self.ns, nfe, model=0, **kw)

    def with_ts(self, tpl, ts):
        return tpl._replace(ts=jnp.asarray(np.asarray(ts, np.float64), jnp.asarray(tpl.ts).dtype))

    def spacing_ts(self, tpl, sp):
        return timesteps_run._spacing_ts(self.ns, tpl, sp)

    # -------------------------------------------------------------------------------------------------- methods

    def phase1(self, method, solver, nfe, tpl):
        t = time.perf_counter()
        if method == "bound":
            g = self.g()["g"]
            res = timesteps.optimize_bound(self.ns, np.asarray(tpl.ts), self.lam_grid, g, steps=500, lr=0.05)
            ts, info = res.ts, {"bound_before": float(res.history[0]), "bound_after": float(res.history[-1])}
        elif method == "ays":
            table = self.ays()["table"]
            ts = timesteps.ays_schedule(self.ns, nfe, self.lam_grid, table, t_start=self.t0, t_end=self.t1)
            info = {"ays_before": timesteps.ays_bound(self.ns, np.asarray(tpl.ts), self.lam_grid, table),
                    "ays_after": timesteps.ays_bound(self.ns, ts, self.lam_grid, table)}  # fmt: skip
        elif method == "trajectory":
            r = self.refs()
            x_T, ref_T = jnp.asarray(r["x_T"]), jnp.asarray(r["ref_T"])
            init_loss = jax.jit(lambda s: timesteps.trajectory_loss(self.one, self.ns, s, x_T, ref_T, embed=self.embed))
            losses = {sp: float(init_loss(self.with_ts(tpl, self.spacing_ts(tpl, sp)))) for sp in SPACINGS}
            start = min(losses, key=losses.get)
            res = timesteps.optimize_trajectory(
                self.one, self.ns, self.with_ts(tpl, self.spacing_ts(tpl, start)), (x_T, ref_T),
                heldout=(jnp.asarray(r["x_H"]), jnp.asarray(r["ref_H"])), steps=self.args.traj_steps, lr=0.05,
                batch=64, key=jax.random.PRNGKey(3), embed=self.embed,
            )  # fmt: skip
            ts = res.ts
            info = {"start": start, "train_before": float(res.history[0]), "train_after": float(res.history[-1]),
                    "heldout_before": res.heldout["before"], "heldout_after": res.heldout["after"]}  # fmt: skip
        elif method == "fd":
            ref = metrics.reference_stats()
            best = min(SPACINGS, key=lambda sp: self.rows[f"{solver}|{nfe}"]["spacings"][sp]["select"])
            res = timesteps.optimize_fd(self.one, self.ns, self.with_ts(tpl, self.spacing_ts(tpl, best)), self.embed,
                                        ref, image_shape=self.shape, batch=256, steps=self.args.fd_steps, lr=0.05,
                                        data_mean=self.mean, key=jax.random.PRNGKey(4))  # fmt: skip
            ts = res.ts
            info = {"start": best, "batch_fd_first": float(res.history[0]), "batch_fd_last": float(res.history[-1])}
        else:
            raise ValueError(method)
        info["seconds"] = time.perf_counter() - t
        return [float(v) for v in ts], info

    def row(self, solver, nfe, methods, finetune_steps):
        key = f"{solver}|{nfe}"
        row = self.rows.setdefault(key, {"solver": solver, "nfe": nfe})
        tpl = self.template(solver, nfe)
        if "spacings" not in row:
            row["spacings"] = {}
            for sp in SPACINGS:
                s = self.with_ts(tpl, self.spacing_ts(tpl, sp))
                row["spacings"][sp] = {"fd": self.fds(self.one, "base", s),
                                       "select": self.fd(self.one, "base", s, SELECT_SEED),
                                       "traj_rmse": self.traj_rmse(self.one, s)}  # fmt: skip
            self.save()
        ph = row.setdefault("phase1", {})
        for m in methods:
            if m in ph:
                continue
            ts, info = self.phase1(m, solver, nfe, tpl)
            s = self.with_ts(tpl, ts)
            ph[m] = {"ts": ts, "fd": self.fds(self.one, "base", s), "select": self.fd(self.one, "base", s, SELECT_SEED),
                     "traj_rmse": self.traj_rmse(self.one, s), **info}  # fmt: skip
            print(f"  {solver} NFE {nfe} {m}: FD {statistics.mean(ph[m]['fd']):.2f} ({info['seconds']:.0f} s)",
                  flush=True)  # fmt: skip
            self.save()
        if finetune_steps and "finetune" not in row:
            cands = [m for m in ("bound", "ays", "trajectory") if m in ph]
            pick = min(cands, key=lambda m: ph[m]["select"])
            t = time.perf_counter()
            ft_model, _ = timesteps_run.finetune(zoo.DEFAULT_ZOO, self.k, ph[pick]["ts"][:-1],
                                             self.out / "finetune" / f"{SHORT[solver]}-nfe{nfe}",
                                             steps=finetune_steps, seed=nfe, progress=False)  # fmt: skip
            s = self.with_ts(tpl, ph[pick]["ts"])
            name = f"ft-{solver}-{nfe}"
            row["finetune"] = {"from": pick, "ts": ph[pick]["ts"], "steps": finetune_steps,
                               "fd": self.fds((ft_model,), name, s), "seconds": time.perf_counter() - t}  # fmt: skip
            print(f"  {solver} NFE {nfe} +finetune({pick}): FD {statistics.mean(row['finetune']['fd']):.2f}",
                  flush=True)  # fmt: skip
            for k_ in [k_ for k_ in self._evals if k_[0] == name]:
                del self._evals[k_]
            self.save()

    def traj_rmse(self, zoo_, sched):
        r = self.refs()
        out = sampler.sample(zoo_, self.ns, sched, jnp.asarray(r["x_H"]), data_mean=self.mean)
        return metrics.reference_rmse(out, r["ref_H"])


# ------------------------------------------------------------------------------------------------------ report


def _ms(v):
    return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}"


def report(bench: Bench, nfes, ship: bool):
    rows = bench.rows
    lines = [
        "## Learned timesteps (`benchmarks/bench_timesteps.py`)",
        "",
        f"Machine: {machine()}. digits-m; FD of 1,000 samples on held-out noise seeds {SEEDS[0]}-{SEEDS[-1]} "
        "(mean ± std over the three seeds); the seed that picks among phase-1 results for fine-tuning and shipping "
        f"is {SELECT_SEED}. `best spacing` is the standard spacing (logSNR, time-uniform, time-quadratic, Karras) "
        "with the lowest mean FD on the held-out seeds themselves (an optimistic baseline). Ratio: the best "
        "learned schedule's mean FD over the best spacing's.",
        "",
        "Settings of this run (2-core CPU, about 2.5 hours in three processes): trajectory fit 60 Adam steps at "
        "NFE 3-4 and 40 at NFE 5-10 (batch 64 of 128 training trajectories, lr 0.05, the FD classifier's "
        "features); FD objective 40 steps of 256 fresh samples, run at NFE 3-5 only; phase 2 fine-tunes digits-m "
        "200 steps (lr 2e-4, half of each batch at the schedule's times, EMA 0.995) from the phase-1 schedule with "
        "the lowest FD on seed 1000 (named in brackets), at NFE 3-9 for DDIM and 3-8 for DPM-Solver++(2M), not at "
        "the others (CPU time; at every NFE where it ran it raised the FD). `–`: not run.",
        "",
    ]
    methods = ["bound", "ays", "trajectory", "fd"]
    for solver in SOLVERS:
        lines += [f"### {solver}", "",
                  "| NFE | best spacing | its FD | bound (1a) | AYS-style | trajectory (1b) | FD objective | "
                  "phase 1+2 | best learned / best spacing |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for nfe in nfes:
            r = rows.get(f"{solver}|{nfe}")
            if r is None:
                continue
            sp = r["spacings"]
            best = min(sp, key=lambda k: statistics.mean(sp[k]["fd"]))
            ph = r.get("phase1", {})
            cells = [_ms(ph[m]["fd"]) if m in ph else "–" for m in methods]
            ft = r.get("finetune")
            cells.append(f"{_ms(ft['fd'])} ({ft['from']})" if ft else "–")
            learned = [statistics.mean(ph[m]["fd"]) for m in ph] + ([statistics.mean(ft["fd"])] if ft else [])
            ratio = min(learned) / statistics.mean(sp[best]["fd"]) if learned else math.nan
            lines.append(f"| {nfe} | {best} | {_ms(sp[best]['fd'])} | " + " | ".join(cells) + f" | {ratio:.2f} |")
        lines.append("")
    lines += ["Trajectory RMSE against the diffrax endpoint (64 held-out x_T): the lowest of the standard spacings vs. "
              "the trajectory fit (and its held-out feature MSE before → after the fit):", "",
              "| solver | NFE | lowest spacing RMSE | trajectory fit RMSE | held-out feature MSE |",
              "|---|---|---|---|---|"]  # fmt: skip
    for solver in SOLVERS:
        for nfe in nfes:
            r = rows.get(f"{solver}|{nfe}")
            if r is None or "trajectory" not in r.get("phase1", {}):
                continue
            tr = r["phase1"]["trajectory"]
            low = min(v["traj_rmse"] for v in r["spacings"].values())
            lines.append(f"| {solver} | {nfe} | {low:.4f} | {tr['traj_rmse']:.4f} | "
                         f"{tr['heldout_before']:.4f} → {tr['heldout_after']:.4f} |")  # fmt: skip
    lines.append("")
    _plot(bench, nfes)
    lines.append("![FD vs NFE](figures/timesteps-fd.png)")
    write_section("\n".join(lines), "timesteps")
    if ship:
        _ship(bench, nfes)


def _plot(bench, nfes):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, solver in zip(axes, SOLVERS, strict=True):
        series: dict = {}
        for nfe in nfes:
            r = bench.rows.get(f"{solver}|{nfe}")
            if r is None:
                continue
            for sp, v in r["spacings"].items():
                series.setdefault(sp, []).append((nfe, statistics.mean(v["fd"])))
            for m, v in r.get("phase1", {}).items():
                series.setdefault(m, []).append((nfe, statistics.mean(v["fd"])))
            if "finetune" in r:
                series.setdefault("phase 1+2", []).append((nfe, statistics.mean(r["finetune"]["fd"])))
        for name, pts in series.items():
            style = "--" if name in SPACINGS else "-o"
            ax.plot(*zip(*pts, strict=True), style, label=name, markersize=4)
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel("FD (1,000 samples, mean of 3 seeds)")
        ax.set_title(solver)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    FIGURES.mkdir(exist_ok=True)
    fig.tight_layout()
    fig.savefig(FIGURES / "timesteps-fd.png", dpi=100)
    plt.close(fig)


def _ship(bench, nfes):
    SHIP_DIR.mkdir(parents=True, exist_ok=True)
    for solver in SOLVERS:
        for nfe in nfes:
            r = bench.rows.get(f"{solver}|{nfe}")
            if r is None or not r.get("phase1"):
                continue
            ph = r["phase1"]
            pick = min(ph, key=lambda m: ph[m]["select"])
            tpl = bench.template(solver, nfe)._replace(model=jnp.full((nfe,), bench.k, jnp.int32))
            sched = bench.with_ts(tpl, ph[pick]["ts"])
            sp = r["spacings"]
            best = min(sp, key=lambda k: sp[k]["select"])
            stem = f"{SHORT[solver]}-nfe{nfe}"
            meta = {"solver": solver, "nfe": nfe, "method": pick, "fd": ph[pick]["select"],
                    "heldout_noise_seed": SELECT_SEED, "heldout_samples": bench.fd_samples}  # fmt: skip
            (SHIP_DIR / f"{stem}.json").write_text(sched.to_json(**meta))
            rep = {"solver": solver, "nfe": nfe, "model": bench.k, "selected": pick,
                   "selected_fd": ph[pick]["select"], "best_spacing": best, "best_spacing_fd": sp[best]["select"],
                   "select_seed": SELECT_SEED, "phase1": ph, "spacings": sp,
                   "finetune": r.get("finetune")}  # fmt: skip
            (SHIP_DIR / f"{stem}.report.json").write_text(json.dumps(rep, indent=1))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench-timesteps"))
    p.add_argument("--nfes", type=int, nargs="+", default=list(range(3, 11)))
    p.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    p.add_argument("--methods", nargs="+", default=["bound", "ays", "trajectory"])
    p.add_argument("--fd-nfes", type=int, nargs="*", default=[])
    p.add_argument("--traj-steps", type=int, default=80)
    p.add_argument("--fd-steps", type=int, default=40)
    p.add_argument("--finetune-steps", type=int, default=200)
    p.add_argument("--fd-samples", type=int, default=1000)
    p.add_argument("--rows-tag", default="", help="suffix of this process's rows file (several processes per solver)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--ship", action="store_true")
    args = p.parse_args()
    bench = Bench(args.out, k=3, fd_samples=args.fd_samples, solvers=args.solvers, tag=args.rows_tag)
    bench.nfes = set(args.nfes)
    bench.args = args
    if not args.report_only:
        for nfe in args.nfes:
            for solver in args.solvers:
                t = time.perf_counter()
                bench.row(solver, nfe, args.methods, args.finetune_steps)
                if nfe in args.fd_nfes:
                    bench.row(solver, nfe, ["fd"], 0)
                print(f"{solver} NFE {nfe}: {time.perf_counter() - t:.0f} s", flush=True)
                jax.clear_caches()
    report(bench, sorted(set(args.nfes)), args.ship)


if __name__ == "__main__":
    main()
