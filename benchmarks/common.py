"""Helpers shared by the benchmark scripts: timing, the machine's name, RESULTS.md sections, and resumable training
runs evaluated at checkpoints."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import jax
import numpy as np

# The benchmarks live in the repository and read its shipped checkpoints, also when omsjax is a regular (not
# editable) install and the script runs from `benchmarks/`; a folder set by the caller wins.
os.environ.setdefault("OMSJAX_CHECKPOINTS", str(Path(__file__).resolve().parent.parent / "checkpoints"))

from omsjax import (
    spacing,
    zoo,  # noqa: E402
)

RESULTS = Path(__file__).parent / "RESULTS.md"
FIGURES = Path(__file__).parent / "figures"


def median_time(fn, *args, repeats=10):
    """Median wall time of `fn(*args)` after one warm-up (compile) call, with block_until_ready."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> str:
    return f"{zoo.machine_name()}; jax {jax.__version__}"


def mean_se_cell(values) -> str:
    """A RESULTS cell: the mean ± standard error of per-draw values (`omsjax.verdict.mean_se`)."""
    from omsjax import verdict

    m, se = verdict.mean_se(values)
    return f"{m:.3g} ± {se:.2g}"


def paired_cell(p) -> str:
    """A RESULTS cell: a report's paired difference (dict with mean, se, verdict), or "-" when there is none."""
    return "-" if p is None else f"{p['mean']:+.3g} ± {p['se']:.2g} ({p['verdict']})"


def write_section(text: str, marker: str, path: Path = RESULTS) -> None:
    """Replace the block between `<!-- marker:begin -->` and `<!-- marker:end -->` of `path` (RESULTS.md), or append
    it; written atomically."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    path = Path(path)
    old = path.read_text() if path.exists() else "# omsjax benchmark results\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new)
    os.replace(tmp, path)


# ---- resumable training runs evaluated at checkpoints (bench_fdm.py, bench_stages.py)


def load_json(path: Path, default):
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else default


def save_json(path: Path, obj) -> None:
    """Write JSON atomically (a killed run leaves the previous file, never a partial one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def checkpoint_steps(steps: int, fractions) -> list[int]:
    """The distinct optimiser steps round(f * steps) >= 1 of a step budget, increasing."""
    return sorted({max(1, round(f * steps)) for f in fractions})


def unet_params_at(config, images, run_dir: Path, progress: bool):
    """`params_at(step)` for a U-Net `train.train` run in `run_dir`: train on to `step` (resuming from the latest
    orbax checkpoint; legs give the uninterrupted run bit for bit) and return the EMA parameters there."""
    from omsjax import train

    def params_at(step: int):
        state = train.train(config, images, run_dir, resume=True, stop_at=step, progress=progress)
        if int(state.step) != step:
            raise RuntimeError(f"{run_dir}: the latest checkpoint is past step {step}; delete the run to redo it")
        return state.ema_params

    return params_at


def stages_params_at(config, images, run_dir: Path, progress: bool):
    """`params_at(step)` for a multi-stage `stages.train` run in `run_dir`: the full state in run_dir/state after
    every leg (resumable), the EMA checkpoint (`stages.save_checkpoint`: config.json + params) and log.jsonl."""
    from omsjax import stages

    run_dir = Path(run_dir)
    cache = {}

    def params_at(step: int):
        state = cache.get("state")
        if state is None and (run_dir / "state").exists():
            state = stages.restore_state(run_dir / "state", config)
        if state is None or int(state.step) < step:
            state, log = stages.train(config, images, state=state, stop_at=step, progress=progress)
            stages.save_state(run_dir / "state", state)
            stages.save_checkpoint(run_dir, config, state.ema_params)
            with open(run_dir / "log.jsonl", "a") as f:
                f.write("".join(json.dumps(r) + "\n" for r in log))
        if int(state.step) != step:
            raise RuntimeError(f"{run_dir}: the saved state is past step {step}; delete the run to redo it")
        cache["state"] = state
        return state.ema_params

    return params_at


def run_checkpoints(run_dir: Path, steps, params_at, evaluate) -> dict[int, dict]:
    """{step: evaluate(params, step) + {"train_seconds", "train_cpu_seconds"}} at each step (the wall-clock and
    process CPU time of training since the previous checkpoint, compilation included), cached in
    run_dir/results.json: finished checkpoints are skipped, so an interrupted benchmark resumes where it stopped."""
    path = Path(run_dir) / "results.json"
    results = load_json(path, {})
    for s in steps:
        if str(s) in results:
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        params = jax.block_until_ready(params_at(s))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        results[str(s)] = {**evaluate(params, s), "train_seconds": seconds, "train_cpu_seconds": cpu}
        save_json(path, results)
        print(f"{run_dir.name} step {s}: {results[str(s)]}", flush=True)
    return {int(k): v for k, v in results.items() if int(k) in set(steps)}


def fd_at(model, ns, sched, n: int, seed: int = 0) -> float:
    """FD (`metrics.fd`) of n samples of one schedule from the noise seed `seed`."""
    from omsjax import metrics, sampler

    return float(metrics.fd(sampler.generate(model, ns, sched, n, (8, 8, 1), key=seed)))


def fd_heun_at(model, ns, nfe: int, n: int, seed: int = 0, batch_size: int = 500) -> float:
    """FD of n samples of EDM's Heun sampler (`omsjax.sample_heun`, nfe / 2 steps on the Karras grid, rho = 7)
    from the noise of `sampler.generate` (seed `seed`, scaled by the schedule's prior)."""
    from omsjax import metrics, sampler

    if nfe % 2:
        raise ValueError(f"EDM's Heun sampler makes 2 model calls per step: nfe must be even, got {nfe}")
    ts = spacing.time_steps(ns, nfe // 2, "karras")
    scale = float(ns.prior_std(ts[0]))
    out = [np.asarray(sampler.sample_heun(model, ns, ts, scale * sampler.noise(seed, min(batch_size, n - i),
                                                                               (8, 8, 1), offset=i)))
           for i in range(0, n, batch_size)]  # fmt: skip
    return float(metrics.fd(np.concatenate(out)))


def errorbar_panels(path: Path, panels, xlabel: str, title: str) -> None:
    """A PNG of log-log panels side by side: `panels` is a list of (ylabel, {name: (x, mean, std)}), one curve with
    error bars per name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (ylabel, lines) in zip(axes[0], panels, strict=True):
        for name, (x, m, s) in lines.items():
            ax.errorbar(x, m, yerr=s, marker="o", capsize=3, label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def mean_std(values) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std())
