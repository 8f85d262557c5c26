"""omsjax on an accelerator: one prepared command that measures what users run on a GPU or TPU.

(a) Overhead of `omsjax.sample` against its limit, one jitted `lax.scan` of NFE bare forward calls of the same
    network, at NFE 10, for DDIM, DPM-Solver++(3M) and UniPC-3 (bh2), at each batch size.
(b) Distinct solver schedules of one model: one `vmap` program (`sample_many(method="vmap")`) against a Python loop
    of jitted calls (one compiled program for every schedule of the length).
(c) Model schedules over a two-member zoo: `sample_many(method="map")` (runs only the scheduled member at each
    step) against `method="vmap"` (a batched `lax.switch` becomes a select: every member runs at every step).
(d) One search stage, each part timed: the true evaluation of 64 candidates (`Evaluator`, digits FD), the
    predictor fit on them, and the GA's generations scored by the predictor (one `lax.scan`).
(e) Training throughput of digits-m (`train.train_step`), in images per second.
(f) float32 against bfloat16: one forward pass and a DPM-Solver++(2M) NFE-10 sample with the network computing in
    bfloat16 (the solver itself stays in float32).
Then (full sizes only) `bench_scale.py` on 1, 2, 4, ... of the machine's devices: the search's evaluations on a
mesh, and the bytes they move to the host.

Every timing compiles first, then takes the median of repeated runs with `block_until_ready`; the ratios come from
measurements taken side by side in this one run. The networks are the digits U-Nets of the shipped zoo
(`checkpoints/digits`, 63k..634k parameters); digits-m is the largest member.

`--tiny` runs the same code at tiny sizes (untrained 8-channel U-Nets, a few schedules, short loops): the CPU mode
that the test suite runs, in about a minute. Without `--tiny` the sizes are the GPU's (about 6-8 minutes on one
GPU) and the section between the `device` markers of benchmarks/RESULTS.md is written, naming the device
(`--results FILE` writes elsewhere).
Run: `python benchmarks/bench_device.py [--tiny] [--results FILE]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from common import RESULTS, machine, median_time, write_section

import omsjax
from omsjax import data, nets, presets, train, zoo
from omsjax.schedule import stack
from omsjax.search import encoding, ga, predictor, seeding
from omsjax.search.evaluate import Evaluator
from omsjax.search.space import SearchSpace


@dataclasses.dataclass(frozen=True)
class Sizes:
    batches: tuple[int, ...]  # (a)
    schedules: int  # (b): distinct solver schedules
    many_batch: int  # (b), (c)
    model_schedules: int  # (c)
    candidates: int  # (d)
    eval_samples: int  # (d)
    predictor_epochs: int  # (d)
    generations: int  # (d)
    train_steps: int  # (e), timed after one compiling step
    precision_batch: int  # (f)
    repeats: int


DEVICE = Sizes((256, 1024), 256, 64, 32, 64, 1000, 300, 1000, 50, 1024, 10)
TINY = Sizes((8,), 4, 4, 2, 4, 16, 5, 5, 2, 8, 2)


def the_zoo(tiny: bool):
    """(models, noise schedule, image shape, train config of the largest): the shipped zoo, or for `tiny` two
    untrained U-Nets of 8 and 16 channels at one resolution (cheap to compile) with the same interface."""
    if not tiny:
        models, ns, manifest = zoo.load_zoo()
        return models, ns, tuple(manifest["image_shape"]), zoo.named_config("digits-m")
    ns = omsjax.noise.vp_linear()
    models, cfg = [], None
    for k, ch in enumerate((8, 16)):
        cfg = nets.UNetConfig(channels=ch, channel_mults=(1,))
        params = nets.init_unet(cfg, jax.random.PRNGKey(k), (8, 8, 1))
        params = jax.tree.map(
            lambda p, k=k: p + 0.01 * jax.random.normal(jax.random.PRNGKey(9 + k), p.shape, p.dtype), params
        )  # fmt: skip  (the output layer starts at zero)
        models.append(omsjax.Model(nets.unet_apply_fn(cfg), params, latency=float(ch), name=f"unet{ch}",
                                   sample_shape=(8, 8, 1)))  # fmt: skip
    return tuple(models), ns, (8, 8, 1), zoo.named_config("tiny")


def _noise(ns, batch, shape, seed=0):
    return omsjax.prior(ns, jax.random.PRNGKey(seed), batch, shape).astype(jnp.float32)


def overhead(model, ns, shape, sz: Sizes) -> list[str]:
    """(a) `sample` at NFE 10 against one jitted `lax.scan` of 10 bare forward calls."""
    nfe = 10
    ts = jnp.linspace(1.0, 1e-3, nfe, dtype=jnp.float32)

    @jax.jit
    def bare(params, x):
        def body(x, t):
            return x + 1e-3 * model.apply_fn(params, x, jnp.full((x.shape[0],), t, x.dtype)), None

        return jax.lax.scan(body, x, ts)[0]

    run = jax.jit(lambda m, s, x: omsjax.sample(m, ns, s, x))
    rows = ["| batch | solver | `sample` (ms) | bare scan of 10 calls (ms) | overhead |", "|---|---|---|---|---|"]
    for batch in sz.batches:
        x = _noise(ns, batch, shape)
        for name, s in (("DDIM", presets.ddim(ns, nfe)), ("DPM-Solver++(3M)", presets.dpm_solver_pp(ns, nfe, 3)),
                        ("UniPC-3 (bh2)", presets.unipc(ns, nfe, 3))):  # fmt: skip
            t_bare = median_time(bare, model.params, x, repeats=sz.repeats)
            t_s = median_time(run, model, s, x, repeats=sz.repeats)
            t_bare = 0.5 * (t_bare + median_time(bare, model.params, x, repeats=sz.repeats))  # around the sample
            over = (t_s / t_bare - 1) * 100
            rows.append(f"| {batch} | {name} | {t_s * 1e3:.2f} | {t_bare * 1e3:.2f} | {over:+.1f}% |")
    return rows


def distinct_schedules(ns, count: int, nfe: int = 8):
    """`count` distinct solver schedules of one length: the preset families over the spacings, each with random
    relaxation coefficients."""
    fams = [lambda k: presets.ddim(ns, nfe, skip=k), lambda k: presets.dpm_solver_pp(ns, nfe, 2, skip=k),
            lambda k: presets.dpm_solver_pp(ns, nfe, 3, skip=k), lambda k: presets.unipc(ns, nfe, 2, skip=k),
            lambda k: presets.unipc(ns, nfe, 3, variant="bh1", skip=k)]  # fmt: skip
    rng = np.random.RandomState(0)
    out = []
    for i in range(count):
        s = fams[i % len(fams)](omsjax.spacing.SPACINGS[(i // len(fams)) % 4])
        out.append(s._replace(relax=jnp.asarray(rng.randn(nfe) * 0.05, s.relax.dtype)))
    return out


def many_solver(model, ns, shape, sz: Sizes) -> list[str]:
    """(b) `vmap` over distinct solver schedules against a loop of jitted calls."""
    scheds = distinct_schedules(ns, sz.schedules)
    stacked = stack(scheds)
    x = _noise(ns, sz.many_batch, shape, 1)
    one = jax.jit(lambda s, x: omsjax.sample(model, ns, s, x))
    vm = jax.jit(lambda s, x: omsjax.sample_many(model, ns, s, x, method="vmap"))
    t_vmap = median_time(vm, stacked, x, repeats=max(1, sz.repeats // 3))
    t_loop = median_time(lambda ss, x: [one(s, x) for s in ss], scheds, x, repeats=max(1, sz.repeats // 3))
    n = len(scheds)
    return [
        "| path | all schedules (s) | schedules/s |",
        "|---|---|---|",
        f"| `vmap`, one program | {t_vmap:.3f} | {n / t_vmap:.1f} |",
        f"| loop of jitted calls ({one._cache_size()} program) | {t_loop:.3f} | {n / t_loop:.1f} |",
        "",
        f"{n} schedules, batch {sz.many_batch}, NFE 8: `vmap` is **{t_loop / t_vmap:.1f}x** the loop (target on a "
        "GPU: >= 10x).",
    ]


def model_schedules(models, ns, shape, sz: Sizes) -> list[str]:
    """(c) `map` against `vmap` for schedules mixing the smallest and the largest member."""
    pair = (models[0], models[-1])
    x = _noise(ns, sz.many_batch, shape, 2)
    base = presets.dpm_solver_pp(ns, 8, 2)
    rng = np.random.RandomState(1)
    f_map = jax.jit(lambda s, x: omsjax.sample_many(pair, ns, s, x, method="map"))
    f_vmap = jax.jit(lambda s, x: omsjax.sample_many(pair, ns, s, x, method="vmap"))
    rows = ["| schedules | `map` (s) | `vmap` (s) | vmap / map |", "|---|---|---|---|"]
    for label, frac in (("all small", 0.0), ("1/4 large", 0.25), ("all large", 1.0)):
        ms = [(rng.permutation(8) < round(8 * frac)).astype(np.int32) for _ in range(sz.model_schedules)]
        stacked = stack([base._replace(model=jnp.asarray(m)) for m in ms])
        reps = max(1, sz.repeats // 3)
        t_map, t_vmap = median_time(f_map, stacked, x, repeats=reps), median_time(f_vmap, stacked, x, repeats=reps)
        rows.append(f"| {label} | {t_map:.3f} | {t_vmap:.3f} | {t_vmap / t_map:.2f} |")
    return rows


def _timed(fn):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t0


def search_stage(models, ns, sz: Sizes) -> list[str]:
    """(d) True evaluation of candidates, the predictor fit on them, and the GA's generations."""
    lat = [m.latency for m in models]
    space = SearchSpace.for_nfe(5, lat, model=len(models) - 1, noise_schedule=ns, mean_afs=False)
    genomes = encoding.random_genomes(space, jax.random.PRNGKey(0), sz.candidates)
    ev = Evaluator(models, ns, space, num_samples=sz.eval_samples, method="vmap")
    recs, t_first = _timed(lambda: ev.evaluate(genomes))
    ev2 = Evaluator(models, ns, space, num_samples=sz.eval_samples, noise_seed=1, method="vmap")
    _, t_eval = _timed(lambda: ev2.evaluate(genomes))  # compiled: the same shapes, other noise
    fd = np.asarray([r.score for r in recs])

    def fit():
        return predictor.fit(
            space, ns, genomes, fd, jax.random.PRNGKey(1), training=predictor.Training(epochs=sz.predictor_epochs)
        ).params

    params, t_fit_first = _timed(fit)
    _, t_fit = _timed(fit)
    cfg = ga.GAConfig(pop_size=64, num_children=64)
    seeds = seeding.preset_seeds(space, ns)

    @jax.jit
    def go(params, key):
        score = lambda pop: predictor.score(space, ns, params, pop)  # noqa: E731
        return ga.run(space, cfg, score, ga.init(space, cfg, score, key, seeds), sz.generations)

    _, t_ga_first = _timed(lambda: go(params, jax.random.PRNGKey(2)))
    t_ga = statistics.median(_timed(lambda k=k: go(params, jax.random.PRNGKey(3 + k)))[1] for k in range(3))
    return [
        "| part | first call, with compile (s) | compiled (s) |",
        "|---|---|---|",
        f"| true evaluation: {sz.candidates} candidates x {sz.eval_samples} samples, digits FD | {t_first:.2f} | "
        f"{t_eval:.2f} |",
        f"| predictor fit on them, {sz.predictor_epochs} epochs | {t_fit_first:.2f} | {t_fit:.2f} |",
        f"| GA, {sz.generations} generations of 64 + 64 children | {t_ga_first:.2f} | {t_ga:.2f} |",
    ]


def training(cfg: train.TrainConfig, sz: Sizes) -> list[str]:
    """(e) Images per second of `train.train_step` on the digits train split."""
    images = jnp.asarray(data.load_digits("train"))
    state = train.init_state(cfg)
    key = jax.random.PRNGKey(0)
    step = jax.jit(train.train_step, static_argnums=0)
    for _ in range(2):  # compiles (the second step again: its state comes back sharded)
        state, _ = jax.block_until_ready(step(cfg, state, images, key))
    t0 = time.perf_counter()
    for _ in range(sz.train_steps):
        state, _ = step(cfg, state, images, key)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - t0
    count = nets.param_count(state.params)
    return [f"{cfg.batch_size * sz.train_steps / seconds:,.0f} images/s ({count:,} parameters, batch "
            f"{cfg.batch_size}, {sz.train_steps} steps in {seconds:.2f} s after compiling)"]  # fmt: skip


def precision(model, ns, shape, sz: Sizes) -> list[str]:
    """(f) float32 against bfloat16 for one forward pass and an NFE-10 sample."""
    x = _noise(ns, sz.precision_batch, shape, 3)
    t = jnp.full((x.shape[0],), 0.5, jnp.float32)
    p16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), model.params)

    def half(params, x, t):  # the network in bfloat16, its output back in float32 for the solver
        return model.apply_fn(params, x.astype(jnp.bfloat16), t.astype(jnp.bfloat16)).astype(x.dtype)

    m16 = omsjax.Model(half, p16, name=model.name + "-bf16")
    fwd32 = jax.jit(model.apply_fn)
    fwd16 = jax.jit(half)
    s = presets.dpm_solver_pp(ns, 10, 2)
    run = jax.jit(lambda m, x: omsjax.sample(m, ns, s, x))
    f32, f16 = median_time(fwd32, model.params, x, t, repeats=sz.repeats), median_time(fwd16, p16, x, t,
                                                                                      repeats=sz.repeats)  # fmt: skip
    s32, s16 = median_time(run, model, x, repeats=sz.repeats), median_time(run, m16, x, repeats=sz.repeats)
    diff = float(jnp.sqrt(jnp.mean((run(model, x) - run(m16, x)) ** 2)))
    return [
        "| | float32 (ms) | bfloat16 (ms) | speed-up |",
        "|---|---|---|---|",
        f"| forward, batch {x.shape[0]} | {f32 * 1e3:.2f} | {f16 * 1e3:.2f} | {f32 / f16:.2f}x |",
        f"| DPM-Solver++(2M), NFE 10 | {s32 * 1e3:.2f} | {s16 * 1e3:.2f} | {s32 / s16:.2f}x |",
        "",
        f"RMS difference of the bfloat16 samples from the float32 ones: {diff:.2e} (data in [-1, 1]).",
    ]


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny sizes: the CPU mode the tests run (prints only)")
    ap.add_argument("--results", type=Path, default=None, help=f"the RESULTS file to write (default {RESULTS})")
    args = ap.parse_args(argv)
    sz = TINY if args.tiny else DEVICE
    models, ns, shape, cfg = the_zoo(args.tiny)
    big = models[-1]
    t_start = time.perf_counter()
    parts = [
        (f"(a) `sample` against a bare `lax.scan` of its model calls ({big.name}, NFE 10)", overhead, (big, ns, shape)),
        (f"(b) {sz.schedules} distinct solver schedules of {big.name}", many_solver, (big, ns, shape)),
        (
            f"(c) Model schedules over {models[0].name} and {big.name}: `map` against `vmap` ({sz.model_schedules} "
            f"schedules, batch {sz.many_batch}, NFE 8)",
            model_schedules,
            (models, ns, shape),
        ),  # fmt: skip
        ("(d) One search stage (solver mode, NFE 5)", search_stage, (models, ns)),
        (f"(e) Training throughput ({'digits-m' if not args.tiny else 'tiny'})", training, (cfg,)),
        (f"(f) float32 against bfloat16 ({big.name})", precision, (big, ns, shape)),
    ]
    device = f"Device: {jax.devices()[0].device_kind} ({jax.default_backend()}); {machine()}."
    lines = ["## On an accelerator (`benchmarks/bench_device.py`)", "",
             device + (" Tiny sizes (`--tiny`)." if args.tiny else ""), ""]  # fmt: skip
    for title, fn, fn_args in parts:
        t0 = time.perf_counter()
        body = fn(*fn_args, sz)
        lines += [f"### {title}", "", *body, "", f"({time.perf_counter() - t0:.0f} s for this part)", ""]
        print("\n".join(lines[-len(body) - 4 :]), flush=True)
    lines.append(f"Whole run: {time.perf_counter() - t_start:.0f} s.")
    text = "\n".join(lines)
    if args.results is not None or not args.tiny:
        write_section(text, "device", path=args.results or RESULTS)
    if not args.tiny:  # the evaluations on 1, 2, 4, ... of this machine's devices (`bench_scale.py`, its section)
        counts = [str(2**k) for k in range(jax.device_count().bit_length()) if 2**k <= jax.device_count()]
        scale = [sys.executable, str(Path(__file__).with_name("bench_scale.py")), "--devices", *counts]
        subprocess.run(scale + (["--results", str(args.results)] if args.results else []), check=True)
    return text


if __name__ == "__main__":
    main()
