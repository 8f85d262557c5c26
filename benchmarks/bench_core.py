"""Core sampler benchmarks (issue: the unified sampler).

1. Solver overhead: a jitted NFE-10 sample vs. NFE x one jitted model forward, small Flax U-Net, batch 256.
2. Many solver schedules: 64 schedules of one model via `vmap` vs. a Python loop of 64 jitted calls.
3. Many model schedules: `sample_many(method="map")` (runs only the scheduled models) vs. `vmap` (a batched
   `lax.switch` index becomes `select`: every zoo model runs at every step).
4. Compile time of one schedule length, and that it does not grow with the number of distinct schedules.

Every timing: compile first, then the median of repeated runs with `block_until_ready`. Writes the section
between the `core` markers of benchmarks/RESULTS.md.  Run: `python benchmarks/bench_core.py [--quick]`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import machine, median_time, write_section

import omsjax
from omsjax import nets, noise, presets, spacing
from omsjax.schedule import stack


def make_model(channels, mults, seed, image=(8, 8, 1)):
    cfg = nets.UNetConfig(channels=channels, channel_mults=mults)
    params = nets.init_unet(cfg, jax.random.PRNGKey(seed), image)
    # Perturb the zero-initialised output layer so outputs are non-trivial.
    params = jax.tree_util.tree_map(
        lambda p: p + 0.01 * jax.random.normal(jax.random.PRNGKey(seed + 1), p.shape, p.dtype), params
    )
    return omsjax.Model(nets.unet_apply_fn(cfg), params, name=f"unet{channels}"), nets.param_count(params)


def bench_overhead(quick):
    ns = noise.vp_linear()
    model, n_params = make_model(32, (1, 2), 0)
    batch, nfe = 256, 10
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, 8, 8, 1), jnp.float32)
    t = jnp.full((batch,), 0.5, jnp.float32)
    fwd = jax.jit(lambda p, x, t: model.apply_fn(p, x, t))
    run = jax.jit(lambda m, s, x: omsjax.sample(m, ns, s, x))
    reps = 5 if quick else 15
    rows = []
    for name, sched in [
        ("DDIM", presets.ddim(ns, nfe)),
        ("DPM-Solver++(3M)", presets.dpm_solver_pp(ns, nfe, 3)),
        ("UniPC-3 (bh2)", presets.unipc(ns, nfe, 3)),
    ]:
        # Interleave the two measurements so both see the same machine state.
        t_fwd = median_time(fwd, model.params, x, t, repeats=reps * 3)
        t_sample = median_time(run, model, sched, x, repeats=reps)
        t_fwd2 = median_time(fwd, model.params, x, t, repeats=reps * 3)
        f = 0.5 * (t_fwd + t_fwd2)
        rows.append((name, t_sample, f, t_sample / (nfe * f) - 1.0))
    return n_params, batch, nfe, rows


def bench_many_solver(quick):
    ns = noise.vp_linear()
    model, _ = make_model(32, (1, 2), 0)
    batch, nfe, count = 32, 8, 64 if not quick else 16
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, 8, 8, 1), jnp.float32)
    fams = [
        lambda s: presets.ddim(ns, nfe, skip=s),
        lambda s: presets.dpm_solver_pp(ns, nfe, 2, skip=s),
        lambda s: presets.dpm_solver_pp(ns, nfe, 3, skip=s),
        lambda s: presets.unipc(ns, nfe, 2, variant="bh1", skip=s),
        lambda s: presets.unipc(ns, nfe, 3, variant="bh2", skip=s),
        lambda s: presets.dpm_solver(ns, nfe, 2, skip=s),
        lambda s: presets.dpm_solver(ns, nfe, 3, skip=s),
    ]
    scheds = []
    rng = np.random.RandomState(0)
    while len(scheds) < count:
        s = fams[len(scheds) % len(fams)](spacing.SPACINGS[(len(scheds) // len(fams)) % 4])
        s = s._replace(relax=jnp.asarray(rng.randn(nfe) * 0.05, s.relax.dtype))  # all distinct
        scheds.append(s)
    stacked = stack(scheds)
    run = jax.jit(lambda s, x: omsjax.sample(model, ns, s, x))
    vm = jax.jit(lambda s, x: omsjax.sample_many(model, ns, s, x, method="vmap"))

    def loop(scheds, x):
        return [run(s, x) for s in scheds]

    t0 = time.perf_counter()
    jax.block_until_ready(vm(stacked, x))
    c_vmap = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(run(scheds[0], x))
    c_loop = time.perf_counter() - t0
    reps = 3 if quick else 5
    t_vmap = median_time(vm, stacked, x, repeats=reps)
    t_loop = median_time(loop, scheds, x, repeats=reps)
    return count, batch, nfe, c_vmap, c_loop, t_vmap, t_loop, run._cache_size()


def bench_model_schedules(quick):
    ns = noise.vp_linear()
    small, p_small = make_model(16, (1, 2), 3)
    big, p_big = make_model(64, (1, 2, 2), 5)
    zoo = (small, big)
    batch, nfe, count = 64, 8, 8 if not quick else 4
    x = jax.random.normal(jax.random.PRNGKey(2), (batch, 8, 8, 1), jnp.float32)
    base = presets.dpm_solver_pp(ns, nfe, 2)
    rng = np.random.RandomState(1)
    rows = []
    for label, frac_big in [("all small", 0.0), ("1/4 big", 0.25), ("all big", 1.0)]:
        scheds = []
        for _ in range(count):
            m = (rng.rand(nfe) < frac_big).astype(np.int32)
            if frac_big == 0.25:
                m = np.zeros(nfe, np.int32)
                m[rng.choice(nfe, nfe // 4, replace=False)] = 1
            scheds.append(base._replace(model=jnp.asarray(m)))
        stacked = stack(scheds)
        f_map = jax.jit(lambda s, x: omsjax.sample_many(zoo, ns, s, x, method="map"))
        f_vmap = jax.jit(lambda s, x: omsjax.sample_many(zoo, ns, s, x, method="vmap"))
        reps = 3 if quick else 5
        rows.append(
            (
                label,
                median_time(f_map, stacked, x, repeats=reps),
                median_time(f_vmap, stacked, x, repeats=reps),
            )
        )
    fwd_s = jax.jit(lambda p, x, t: small.apply_fn(p, x, t))
    fwd_b = jax.jit(lambda p, x, t: big.apply_fn(p, x, t))
    t = jnp.full((batch,), 0.5, jnp.float32)
    lat = (
        median_time(fwd_s, small.params, x, t, repeats=20),
        median_time(fwd_b, big.params, x, t, repeats=20),
    )
    return p_small, p_big, batch, nfe, count, lat, rows


def bench_compile(quick):
    ns = noise.vp_linear()
    model, _ = make_model(32, (1, 2), 0)
    x = jax.random.normal(jax.random.PRNGKey(3), (64, 8, 8, 1), jnp.float32)
    run = jax.jit(lambda s, x: omsjax.sample(model, ns, s, x))
    nfe = 10
    t0 = time.perf_counter()
    jax.block_until_ready(run(presets.ddim(ns, nfe), x))
    first = time.perf_counter() - t0
    rng = np.random.RandomState(2)
    later = []
    n_distinct = 10 if quick else 30
    for i in range(n_distinct):
        s = presets.unipc(ns, nfe, 1 + i % 3, skip=spacing.SPACINGS[i % 4])
        s = s._replace(relax=jnp.asarray(rng.randn(nfe) * 0.05, s.relax.dtype))
        t0 = time.perf_counter()
        jax.block_until_ready(run(s, x))
        later.append(time.perf_counter() - t0)
    programs = run._cache_size()
    t0 = time.perf_counter()
    jax.block_until_ready(run(presets.ddim(ns, nfe + 2), x))
    other_len = time.perf_counter() - t0
    return first, statistics.median(later), max(later), n_distinct, programs, other_len


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats (for a smoke run)")
    args = ap.parse_args()
    lines = ["## Core sampler (`benchmarks/bench_core.py`)", "", f"Machine: {machine()}.", ""]

    n_params, batch, nfe, rows = bench_overhead(args.quick)
    lines += [
        f"### Solver overhead (U-Net {n_params / 1e3:.0f}k params, 8x8x1, batch {batch}, NFE {nfe}, float32)",
        "",
        "| solver | jitted sample (ms) | one forward (ms) | overhead vs NFE x forward |",
        "|---|---|---|---|",
    ]
    for name, ts, tf, ov in rows:
        lines.append(f"| {name} | {ts * 1e3:.1f} | {tf * 1e3:.2f} | {ov * 100:+.1f}% |")
    print("\n".join(lines))

    count, b, n, c_vmap, c_loop, t_vmap, t_loop, cache = bench_many_solver(args.quick)
    lines += [
        "",
        f"### {count} solver schedules of one model (batch {b}, NFE {n}, all distinct)",
        "",
        "| path | compile (s) | run all (s) | schedules/s |",
        "|---|---|---|---|",
        f"| `vmap` (one program) | {c_vmap:.2f} | {t_vmap:.3f} | {count / t_vmap:.1f} |",
        f"| Python loop of jitted calls | {c_loop:.2f} | {t_loop:.3f} | {count / t_loop:.1f} |",
        "",
        f"vmap / loop speed-up: {t_loop / t_vmap:.2f}x; the loop compiled {cache} program for {count} schedules.",
    ]
    print("\n".join(lines[-9:]))

    p_s, p_b, b, n, c, lat, rows = bench_model_schedules(args.quick)
    lines += [
        "",
        f"### Model schedules: zoo of two U-Nets ({p_s / 1e3:.0f}k and {p_b / 1e3:.0f}k params; forward "
        f"{lat[0] * 1e3:.2f} / {lat[1] * 1e3:.2f} ms at batch {b}), {c} schedules, NFE {n}",
        "",
        "| schedules | `sample_many(method='map')` (s) | `method='vmap'` (s) | expected map cost, sum of "
        "scheduled latencies (s) |",
        "|---|---|---|---|",
    ]
    for label, t_map, t_vm in rows:
        frac = {"all small": 0.0, "1/4 big": 0.25, "all big": 1.0}[label]
        expect = c * n * ((1 - frac) * lat[0] + frac * lat[1])
        lines.append(f"| {label} | {t_map:.3f} | {t_vm:.3f} | {expect:.3f} |")
    lines += [
        "",
        "`map` costs what the scheduled models cost; `vmap` runs both models at every step whatever the schedule.",
    ]
    print("\n".join(lines[-8:]))

    first, med, worst, nd, cache, other = bench_compile(args.quick)
    lines += [
        "",
        "### Compile time",
        "",
        f"- first call (trace + compile + run) for N = 10 steps: {first:.2f} s",
        f"- {nd} further distinct schedules of N = 10 (all families, spacings, relaxations): median {med * 1e3:.1f} ms,"
        f" worst {worst * 1e3:.1f} ms per call; compiled programs: {cache}",
        f"- a new length (N = 12) compiles again: {other:.2f} s",
    ]
    print("\n".join(lines[-5:]))
    write_section("\n".join(lines), "core")


if __name__ == "__main__":
    main()
