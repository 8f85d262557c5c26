"""Evaluations on 1, 2 and 4 devices: the search's true evaluation spread over a mesh, and what leaves the devices.

For each device count D (one process of D forced CPU devices here; the first D GPUs on a GPU host, where
`bench_device.py` runs this script), a subprocess times `search.candidates.run_candidates`, the program of every search
evaluation: 16 NFE-5 schedules of digits-m on 500 samples, 8 candidates per compiled call, on the mesh
`choose_layout` picks, scored two ways:
- device: the digits FD reduced on the devices (`metrics.digits_fd`, a `FeatureMetric`): only the feature sums
  (count, 128 sums, a 128 x 128 scatter matrix) of each candidate come back;
- host: the samples come back to the host and `metrics.fd` scores them there (any plain `metric(samples, x_T)`).
Each timing compiles first and takes the median of 3 runs. Efficiency is evaluations per second at D devices over
D times those at 1. On this 2-core machine 4 devices share 2 cores: the table measures the overhead of the mesh and
the bytes moved, not a speed-up (real devices: `bench_device.py` runs this script on the device it has).

The bytes per evaluation are measured (the arrays the host receives); the last rows compute the same for a
1,000-sample FID of 256x256x3 images with Inception's 2,048 features, where it matters.

Run: `python benchmarks/bench_scale.py [--devices 1 2 4] [--results FILE]`; writes the `scale` section of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
NUM_SAMPLES, CANDIDATES, CHUNK, REPEATS = 500, 16, 8, 3


def worker() -> dict:
    import jax
    import numpy as np
    from common import machine

    from omsjax import metrics, presets, zoo
    from omsjax.search import candidates as C

    models, ns, _ = zoo.load_zoo()
    member = len(models) - 1  # digits-m
    makers = [presets.ddim, presets.dpm_solver_pp, presets.unipc, presets.dpm_solver]
    spacings = ["time_uniform", "logSNR", "time_quadratic", "karras"]
    scheds = [
        (mk(ns, 5, model=member, skip=sp) if mk is presets.ddim else mk(ns, 5, 2, model=member, skip=sp))
        for mk in makers
        for sp in spacings
    ][:CANDIDATES]
    layout = C.choose_layout(NUM_SAMPLES)
    x_T = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (NUM_SAMPLES, 8, 8, 1)))
    placed = C.place(x_T, None, layout)

    def device():
        return C.run_candidates(models, ns, scheds, placed, method="map", chunk=CHUNK, metric=metrics.digits_fd)

    def host():
        xs = C.run_candidates(models, ns, scheds, placed, method="map", chunk=CHUNK)
        return xs, [metrics.fd(x) for x in xs]

    out = {"devices": jax.device_count(), "layout": list(layout), "machine": machine()}
    out["cpu"] = jax.default_backend() == "cpu"
    for name, fn in [("device", device), ("host", host)]:
        res = fn()  # compiles
        times = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            res = fn()
            times.append(time.perf_counter() - t0)
        received = jax.tree.leaves(res[0] if name == "host" else [s for s, _ in res])
        out[name] = {
            "evals_per_s": CANDIDATES / statistics.median(times),
            "bytes_per_eval": sum(np.asarray(a).nbytes for a in received) / CANDIDATES,
        }
    fd_dev = [metrics.digits_fd.finalize(s) for s, _ in device()]
    fd_host = host()[1]
    out["max_rel_diff"] = float(max(abs(a - b) / b for a, b in zip(fd_dev, fd_host, strict=True)))
    return out


def table(rows: list[dict]) -> str:
    base = {k: rows[0][k]["evals_per_s"] for k in ("device", "host")}
    lines = [
        "## Evaluations on several devices (`benchmarks/bench_scale.py`)",
        "",
        f"Machine: {rows[0]['machine']}; "
        + (
            f"forced CPU devices of one process ({os.cpu_count()} cores: more devices than cores share them, so this "
            "measures overhead and bytes, not a speed-up). "
            if rows[0]["cpu"]
            else "the first D devices of one process. "
        )
        + "16 NFE-5 schedules of digits-m, 500 samples, 8 per call.",
        "",
        "| devices | mesh (cand x data) | device FD: evals/s | efficiency | host FD: evals/s | efficiency "
        "| bytes to host per evaluation: device FD | host FD | FD device vs host (max rel. diff) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = r["devices"]
        eff = {k: r[k]["evals_per_s"] / (d * base[k]) for k in base}
        lines.append(
            f"| {d} | {r['layout'][0]} x {r['layout'][1]} | {r['device']['evals_per_s']:.2f} | {eff['device']:.2f} "
            f"| {r['host']['evals_per_s']:.2f} | {eff['host']:.2f} | {r['device']['bytes_per_eval'] / 1e3:.1f} kB "
            f"| {r['host']['bytes_per_eval'] / 1e3:.1f} kB | {r['max_rel_diff']:.1e} |"
        )
    k, n, img = 2048, 1000, 256 * 256 * 3
    lines += [
        "",
        f"For a 1,000-sample FID of 256x256x3 images (Inception's {k} features), computed the same way: the host "
        f"metric moves {n * img * 4 / 1e6:.0f} MB of samples per evaluation, the device FD "
        f"{(1 + k + k * k) * 4 / 1e6:.1f} MB of sums (float32).",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--results", type=Path, default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker()))
        return
    import jax

    gpu = jax.default_backend() == "gpu"  # d GPUs: the first d visible to the run; CPUs: d forced devices
    rows = []
    for d in args.devices:
        env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(d), "PYTHONPATH": str(HERE.parent)}
        if gpu:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(d)))
        res = subprocess.run([sys.executable, __file__, "--worker"], env=env, capture_output=True, text=True, cwd=HERE)
        line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
        if res.returncode or not line:
            sys.exit(f"bench_scale: the {d}-device run failed:\n{res.stderr[-3000:]}")
        rows.append(json.loads(line[0].removeprefix("RESULT ")))
        print(json.dumps(rows[-1]))
    text = table(rows)
    print(text)
    from common import RESULTS, write_section

    write_section(text, "scale", args.results or RESULTS)


if __name__ == "__main__":
    main()
