"""Compile costs that do not grow with the zoo: first calls of a one-model schedule, and `omsjax evaluate` in a
first and a second process.

(a) First call (trace + compile + run) of a one-model DPM-Solver++(2M) schedule, NFE 10, batch 64, on the shipped
4-model digits zoo, for each member: `omsjax.sample` with the concrete schedule (only the member it calls is
compiled, `integrate.used_members`) against the same call under `jax.jit`, where the model indices are traced and every
member is in the program's `lax.switch` (what every call compiled before). Side by side in one process, the
in-memory caches cleared before each call, no persistent cache.

(b) `omsjax evaluate --solver dpm_solver_pp --nfe 10` (1000 samples) as separate processes: with the persistent
cache off, then a first and a second process sharing a fresh cache folder, with the trajectory error of 64
samples (`--ref-samples 64`, diffrax's ODE solve, whose program JAX does not cache) and without it (the default).
Wall time of the whole process (imports and loading included).

Writes the section between the `compile` markers of benchmarks/RESULTS.md.
Run: `python benchmarks/bench_compile.py [--quick]` (one process at a time on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
from common import machine, write_section

import omsjax
from omsjax import presets, zoo

REPO = Path(__file__).resolve().parent.parent


def first_call_seconds(fn) -> float:
    """Wall time of one call from cold in-memory caches (trace + compile + run)."""
    jax.clear_caches()
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def part_a(repeats: int, batch: int) -> list[str]:
    models, ns, manifest = zoo.load_zoo()
    x_T = omsjax.prior(ns, jax.random.PRNGKey(0), batch, tuple(manifest["image_shape"]))
    traced = jax.jit(lambda s, x: omsjax.sample(models, ns, s, x))
    rows = [
        "| member | params | concrete schedule: this member only (s) | under `jit`: whole zoo (s) | ratio |",
        "|---|---|---|---|---|",
    ]
    for k, m in enumerate(models):
        s = presets.dpm_solver_pp(ns, 10, 2, model=k)
        only, whole = [], []
        for _ in range(repeats):  # alternated, so that drift on the machine hits both alike
            only.append(first_call_seconds(lambda s=s: omsjax.sample(models, ns, s, x_T)))
            whole.append(first_call_seconds(lambda s=s: traced(s, x_T)))
        a, b = statistics.median(only), statistics.median(whole)
        count = sum(int(v.size) for v in jax.tree_util.tree_leaves(m.params))
        rows.append(f"| {k} {m.name} | {count:,} | {a:.1f} | {b:.1f} | {b / a:.1f}x |")
        print(rows[-1], flush=True)
    return rows


def part_b(num_samples: int) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    base = [sys.executable, "-m", "omsjax", "evaluate", "--solver", "dpm_solver_pp", "--nfe", "10", "--num-samples",
            str(num_samples), "--json"]  # fmt: skip

    def run(*extra) -> tuple[float, dict]:
        t0 = time.perf_counter()
        res = subprocess.run(base + list(extra), env=env, cwd=REPO, capture_output=True, text=True, timeout=1800)
        seconds = time.perf_counter() - t0
        if res.returncode != 0:
            raise RuntimeError(f"omsjax evaluate failed: {res.stderr}")
        return seconds, json.loads(res.stdout)

    rows = ["| process | cache | --ref-samples | wall (s) | FD |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="omsjax-bench-cache-") as d:
        cases = [
            ("any", "off", ("--no-compile-cache", "--ref-samples", "64")),
            ("first", "fresh folder", ("--compile-cache", d, "--ref-samples", "64")),
            ("second", "same folder", ("--compile-cache", d, "--ref-samples", "64")),
            ("any", "off", ("--no-compile-cache", "--ref-samples", "0")),
            ("third", "same folder", ("--compile-cache", d, "--ref-samples", "0")),
        ]
        for which, cache, extra in cases:
            seconds, out = run(*extra)
            ref = extra[-1]
            rows.append(f"| {which} | {cache} | {ref} | {seconds:.1f} | {out['fd']:.3f} |")
            print(rows[-1], flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batch 8, 100 samples, one repeat (a smoke test)")
    args = ap.parse_args()
    repeats, batch, num_samples = (1, 8, 100) if args.quick else (2, 64, 1000)
    rows_a = part_a(repeats, batch)
    rows_b = part_b(num_samples)
    text = "\n".join([
        "## Compile costs (`benchmarks/bench_compile.py`)",
        "",
        f"Machine: {machine()}.",
        "",
        f"First call of a one-model DPM-Solver++(2M) schedule, NFE 10, batch {batch}, on the shipped 4-model digits "
        f"zoo (median of {repeats}; in-memory caches cleared before each call, no persistent cache):",
        "",
        *rows_a,
        "",
        f"`omsjax evaluate --solver dpm_solver_pp --nfe 10 --num-samples {num_samples}` as separate processes (wall "
        "time of the process; the FD is the same in every row, as it must be):",
        "",
        *rows_b,
    ])  # fmt: skip
    if args.quick:
        print(text)
    else:
        write_section(text, "compile")


if __name__ == "__main__":
    main()
