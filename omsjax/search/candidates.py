"""Sampling many candidate schedules from the same noise: the compiled program of a search's evaluations.

An evaluation runs on a 2-D mesh of every device of every process (`omsjax.distributed`), axes ("cand", "data"):
the candidates of a chunk are split over "cand", the samples (x_T, `cond`, `uncond`) over "data", and each device
runs its candidates on its samples. `choose_layout` picks the split from the counts: every device on "data" (each
candidate on all of them: no device idles on a short chunk, and a single candidate, a final re-evaluation or a
held-out score, uses every device), unless that leaves a device fewer than `MIN_ROWS` samples; `Layout(cand, data)`
overrides it. On a CPU host with one XLA device per core (as `omsjax search` sets up) a search's evaluations run
about twice as fast on 2 cores as on one device.

- `place` / `place_noise`: the per-sample inputs on the mesh (`Placed`); `place_noise` draws the noise on the
  devices, each device its own rows (row i from `fold_in(PRNGKey(seed), i)`, as `sampler.noise`), so no process
  builds the whole batch and the values do not depend on the split. A batch that is not a multiple of the "data"
  axis is padded (rows that `Placed.keep` marks false and nothing scores).
- `run_candidates`: the samples of C schedules of one length, or, with a `metrics.device.FeatureMetric`, only their
  feature sums (added over the "data" axis on the devices) and a count of non-finite samples: what leaves the
  devices is then a few kilobytes per candidate, not the samples.
- `sample_candidates`: the samples [C, n, ...] on the host (gathered from every process), from any x_T.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from omsjax import checks, distributed, sampler
from omsjax.integrate import used_members
from omsjax.metrics.device import FeatureMetric, feature_sums
from omsjax.models import Model, as_zoo
from omsjax.options import SampleOptions
from omsjax.schedule import Schedule, stack

__all__ = ["Layout", "Placed", "MIN_ROWS", "choose_layout", "place", "place_noise", "run_candidates"]
__all__ += ["sample_candidates", "sample_jit"]

MIN_ROWS = 32  # the fewest samples per device before the automatic layout splits candidates over devices instead


class Layout(NamedTuple):
    """The mesh of an evaluation: `cand` x `data` devices (their product: every device of every process)."""

    cand: int
    data: int


def choose_layout(num_samples: int, split: Layout | tuple[int, int] | None = None) -> Layout:
    """The evaluation mesh for `num_samples` samples on `jax.device_count()` devices: `split` (cand, data) when
    given (a ValueError unless its product is the device count), else "data" the largest divisor of the device
    count that leaves each device at least `MIN_ROWS` samples (at least 1), "cand" the rest."""
    d = jax.device_count()
    if split is not None:
        if not (isinstance(split, tuple) and len(split) == 2):
            raise ValueError(f"mesh split must be (cand, data), two ints, got {split!r}")
        cand, data = (checks.count(f"mesh split {name}", v, 1) for name, v in zip(("cand", "data"), split, strict=True))
        if cand * data != d:
            raise ValueError(f"mesh split {cand} x {data} must use every device: {d} in all")
        return Layout(cand, data)
    data = max(k for k in range(1, d + 1) if d % k == 0 and (k == 1 or num_samples >= k * MIN_ROWS))
    return Layout(d // data, data)


@functools.cache
def _mesh(layout: Layout) -> Mesh:
    return Mesh(mesh_utils.create_device_mesh(tuple(layout), jax.devices()), ("cand", "data"))


def _sharding(layout: Layout, *spec) -> NamedSharding:
    return NamedSharding(_mesh(layout), P(*spec))


class Placed(NamedTuple):
    """The per-sample inputs of an evaluation on a layout's mesh: `x_T` [n_pad, ...], `cond`, `uncond` (pytrees of
    [n_pad, ...] leaves, or None) and `keep` bool [n_pad] (false on padding rows) split over "data"; `n` real
    rows (the first n)."""

    x_T: jax.Array
    cond: Any
    uncond: Any
    keep: jax.Array
    n: int
    layout: Layout


def _padded(n: int, layout: Layout) -> int:
    return -(-n // layout.data) * layout.data


def _place_rows(tree, n: int, layout: Layout):
    """Host or device leaves [n, ...] padded (the last row repeated) to the mesh's row count and split over it."""
    extra = _padded(n, layout) - n
    tree = jax.tree.map(lambda a: np.concatenate([np.asarray(a), np.repeat(np.asarray(a)[-1:], extra, 0)]), tree)
    return distributed.put(tree, _sharding(layout, "data"))


def _conditioning(sampling: SampleOptions | None, n: int, layout: Layout) -> tuple:
    """(cond, uncond, keep) of `n` samples on the mesh: `sampling`'s first n rows, and keep (false on padding)."""
    o = SampleOptions() if sampling is None else sampling
    cond, uncond = (None if c is None else jax.tree.map(lambda a: np.asarray(a)[:n], c) for c in (o.cond, o.uncond))
    keep = distributed.put(np.arange(_padded(n, layout)) < n, _sharding(layout, "data"))
    return *_place_rows((cond, uncond), n, layout), keep


def place(x_T, sampling: SampleOptions | None, layout: Layout) -> Placed:
    """`x_T` [n, ...] and `sampling`'s cond and uncond (at least their first n rows are used) on the mesh."""
    n = int(x_T.shape[0])
    return Placed(_place_rows(x_T, n, layout), *_conditioning(sampling, n, layout), n, layout)


def place_noise(seed: int, n: int, shape, scale: float, sampling: SampleOptions | None, layout: Layout) -> Placed:
    """`scale` x `sampler.noise(seed, n, shape)` drawn on the mesh's devices, each its own rows (the values do not
    depend on the layout), with `sampling`'s cond and uncond as in `place`."""
    draw = functools.partial(sampler.noise, seed, _padded(n, layout), tuple(shape))
    x_T = jax.jit(lambda: scale * draw(), out_shardings=_sharding(layout, "data"))()
    return Placed(x_T, *_conditioning(sampling, n, layout), n, layout)


def _replicate(tree, layout: Layout):
    """Every leaf of `tree` (the models, the noise schedule, a metric's arrays) on every device of the mesh. Over
    several processes, a process's own arrays become global ones (from their host copies; Python scalars and numpy
    arrays are left to `jit`, which replicates them)."""
    if distributed.process_count() == 1:
        return jax.device_put(tree, _sharding(layout))
    every = _sharding(layout)
    own = lambda a: isinstance(a, jax.Array) and a.is_fully_addressable  # noqa: E731
    return jax.tree.map(lambda a: distributed.put(a, every) if own(a) else a, tree)


class _Static(NamedTuple):
    method: str
    thresholding: Any
    layout: Layout | None  # None: one device, no mesh
    per_sample: Any  # a FeatureMetric's per_sample, or None for the samples
    specs: Any = None  # the stack's PartitionSpecs: every field split over "cand", a shared guidance replicated


@functools.partial(jax.jit, static_argnames="static")
def _program(zoo, ns, stacked, x_T, data_mean, cond, uncond, keep, metric_args, static: _Static):
    """Samples [C, n_pad, ...] of the stacked schedules, or (FeatureSums per candidate, non-finite kept rows per
    candidate) with `static.per_sample`; over the mesh with `jax.shard_map` when `static.layout` is given."""

    def run(s, x, c, u, k, margs):
        xs = sampler.sample_many(
            zoo, ns, s, x, method=static.method, data_mean=data_mean, cond=c, uncond=u, thresholding=static.thresholding
        )
        if static.per_sample is None:
            return xs
        finite = jnp.all(jnp.isfinite(xs.reshape(*xs.shape[:2], -1)), axis=-1)
        bad = jnp.sum(k[None, :] & ~finite, axis=1)
        axis = None if static.layout is None else "data"
        sums = jax.vmap(lambda xi: feature_sums(static.per_sample, margs, xi, c, k, axis))(xs)
        if static.layout is None:
            return sums, bad
        return jax.lax.all_gather((sums, jax.lax.psum(bad, "data")), "cand", tiled=True)

    if static.layout is None:
        return run(stacked, x_T, cond, uncond, keep, metric_args)
    split, out = P("data"), (P("cand", "data") if static.per_sample is None else P())
    return jax.shard_map(
        run,
        mesh=_mesh(static.layout),
        in_specs=(static.specs, split, split, split, split, P()),
        out_specs=out,
        check_vma=False,
    )(stacked, x_T, cond, uncond, keep, metric_args)


def sample_jit(zoo, ns, stacked, x_T, data_mean, method, cond=None, uncond=None, thresholding=None):
    """`sampler.sample_many` of a stack of schedules on one device, compiled (the one-device program of
    `run_candidates`; one program per zoo, length, noise and method)."""
    keep = jnp.ones(x_T.shape[0], bool)
    return _program(zoo, ns, stacked, x_T, data_mean, cond, uncond, keep, (), _Static(method, thresholding, None, None))


def run_candidates(
    zoo,
    noise_schedule,
    schedules: Sequence[Schedule],
    placed: Placed,
    *,
    method: str = "vmap",
    chunk: int = 8,
    sampling: SampleOptions | None = None,
    metric: FeatureMetric | None = None,
):
    """The C schedules of one length run on `placed` (its layout's mesh), `chunk` candidates per compiled call
    (padded up to a multiple of the layout's "cand" axis and, for a short chunk, by repeating a candidate, so
    every call of a length has one shape). `sampling` gives the data mean and thresholding (its cond and uncond
    are `placed`'s).

    Returns the samples [C, n, ...] on the host (gathered from every process), or, with `metric`, a list of C
    (`metrics.device.FeatureSums`, number of non-finite samples) computed on the devices.

    A chunk whose schedules all call one zoo member compiles that member alone (`integrate.used_members`): a solver
    search on one model of a big zoo compiles one network. Chunks that call several members keep the whole zoo in
    the program's `lax.switch`, so a model search compiles one program, not one per subset of members. A
    guidance array that every schedule shares is passed unbatched (one guided step: 2 half-calls, not 3)."""
    zoo = as_zoo(zoo)
    o = SampleOptions() if sampling is None else sampling
    layout = placed.layout
    one = jax.device_count() == 1
    chunk = math.ceil(chunk / layout.cand) * layout.cand
    place_all = (lambda t: t) if one else functools.partial(_replicate, layout=layout)
    ns, data_mean = place_all((noise_schedule, o.data_mean))
    margs = () if metric is None else place_all(metric.device_args())
    # A guidance scale every candidate shares is passed once (`sampler.sample_many`), keeping the w == 1 shortcut
    # of `models.guided_eps_x0`; batched, both halves of the model call would run at every step (3 half-batch
    # calls instead of 2 at a guided step). Decided for the whole call, so a length still compiles one program.
    g0 = np.asarray(schedules[0].guidance)
    shared = {"guidance": g0} if all(np.array_equal(s.guidance, g0) for s in schedules) else {}
    per_sample = None if metric is None else metric.per_sample
    specs = Schedule(*[P() if shared and f == "guidance" else P("cand") for f in Schedule._fields])
    static = _Static(method, o.thresholding, None if one else layout, per_sample, None if one else specs)
    out = []
    for start in range(0, len(schedules), chunk):
        part = schedules[start : start + chunk]
        padded = stack(part + [part[-1]] * (chunk - len(part)))
        used, model, _ = used_members(zoo, padded.model, padded.afs)
        members, padded = (used, padded._replace(model=model)) if len(used) == 1 else (zoo, padded)
        padded = jax.tree.map(np.asarray, padded._replace(**shared))
        if not one:
            placed_fields = zip(padded, specs, strict=True)
            padded = Schedule(*[distributed.put(v, _sharding(layout, *spec)) for v, spec in placed_fields])
        args = (place_all(members), ns, padded, placed.x_T, data_mean, placed.cond, placed.uncond, placed.keep, margs)
        res = _program(*args, static=static)
        if metric is None:
            out.append(distributed.allgather(res)[: len(part), : placed.n])
        else:
            sums, bad = jax.tree.map(distributed.allgather, res)
            out.extend((jax.tree.map(lambda a, i=i: a[i], sums), int(bad[i])) for i in range(len(part)))
    return np.concatenate(out) if metric is None else out


def sample_candidates(
    model_or_zoo: Model | Sequence[Model],
    noise_schedule,
    schedules: Sequence[Schedule],
    x_T: jax.Array,
    *,
    method: str = "vmap",
    chunk: int = 8,
    sampling: SampleOptions | None = None,
) -> np.ndarray:
    """Samples [C, *x_T.shape] of C schedules of one length from the same `x_T` (and the same `sampling`, an
    `omsjax.SampleOptions`: conditioning, data mean, thresholding, as in `sample`), `chunk` candidates per
    compiled call. A short chunk (the last one, or all of
    fewer than `chunk` schedules) is padded by repeating a candidate, so every call of a length has one shape: a
    search compiles one program per schedule length and noise batch, not one per leftover count (the final
    re-evaluation of 3 and the held-out score of 1 would each compile their own). With several devices, the run
    is `run_candidates` on the mesh `choose_layout` gives (the padding of the samples dropped from the result).
    """
    zoo = as_zoo(model_or_zoo)
    o = SampleOptions() if sampling is None else sampling
    schedules = list(schedules)
    if not schedules:
        raise ValueError("no schedules to sample")
    if method not in ("vmap", "map"):
        raise ValueError(f"method must be 'vmap' or 'map', got {method!r}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    checks.check_batch(zoo, noise_schedule, schedules, x_T, o.data_mean, o.cond, o.uncond)  # the one host check
    placed = place(x_T, o, choose_layout(int(x_T.shape[0])))
    return run_candidates(zoo, noise_schedule, schedules, placed, method=method, chunk=chunk, sampling=o)
