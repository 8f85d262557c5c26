"""Genomes: fixed-length arrays that decode to valid sampler schedules with pure JAX ops (so under `vmap`).

A `SearchSpace` (`search.space`; static, hashable) fixes the structure: the number of positions N (the most steps
a schedule may have), the zoo's latencies (the cost model), and the mode:

- "solver" (S3): one zoo model; every solver decision is searched; the NFE is fixed: N = nfe + 1 positions, of
  which the first nfe + (afs != none) are active (an analytical first step buys one more step for free).
- "model" (OMS-DPM): the model of every position is searched, including a "skip" model (index Z = zoo size) that
  removes the position, so the number of steps varies (an all-skip genome keeps one step of model 0); the solver
  decisions are those of a fixed multistep solver (`base_solver`) on the active steps, which follow the space's
  base `spacing` (logSNR, time-uniform, time-quadratic or Karras) at whatever length the genome has.
- "joint" (ours): models, skips and every solver decision in one genome.

A `Genome` holds one integer gene per position and decision (model, order, prediction, corrector, D_1 stencil,
relaxation type, half D_2 term), the AFS gene, and two continuous genes per position: `u`, the increment logits of
the time coordinate, and `relax`, the linear relaxation coefficient c; with the space's `guidance_choices`, also
a per-step guidance gene (the index of the step's scale among them; None otherwise, so that unguided genomes,
their random draws and their archives are what they were before the gene existed). Decoding (`decode`):

1. active positions (not skipped, or within the NFE) are moved to the front, in order (a stable sort);
2. times: the active steps split [c(t_start), c(t_end)] in fractions softmax(B tanh(u / B)) (B = 8), where c is
   the coordinate of the base `spacing` (lambda for logSNR, t, sqrt(t), or sigma^(1/7) with sigma = e^-lambda for
   Karras); c is monotone in t, so times are strictly decreasing with fixed end points for every genome, and u = 0
   is the base spacing itself at any number of steps;
3. repair, never rejection: order <= min(max_order, step + 1), D_1 stencil <= order - 1, no corrector on the last
   step, AFS "mean" only when the space allows it.

The result is a `Schedule` of N steps padded past `length` (the padding repeats t_end and is not a valid
schedule); `to_schedule` cuts it to `length` on the host, where `check_schedule` accepts it. The cost of a genome is
the sum of the latencies of the models it calls (AFS skips the first call; a guided step calls twice); its NFE is
the number of calls (`step_calls`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from omsjax import usf
from omsjax.noise import NoiseSchedule
from omsjax.schedule import AFS_NONE, Schedule, check_schedule
from omsjax.search.space import SearchSpace
from omsjax.spacing import times

__all__ = [
    "ORDER_PRIOR",
    "Genome",
    "gene_cardinalities",
    "random_genomes",
    "active_mask",
    "decode",
    "to_schedule",
    "cost",
    "nfe",
    "step_calls",
    "decode_models",
]

ORDER_PRIOR = (0.2, 0.4, 0.3, 0.1)  # S3's prior over orders 1..4


class Genome(NamedTuple):
    """One candidate (or, with a leading axis, a population). Integer genes int32[N], `afs` int32[], `u` and
    `relax` float[N], `guidance` int32[N] where the space searches it (else None). Genes the mode does not search
    are carried but ignored by `decode`."""

    model: jax.Array  # 0..Z-1, or Z = skip
    order: jax.Array  # 1..max_order (repaired to the available history)
    prediction: jax.Array  # 0 noise, 1 data
    corrector: jax.Array  # 0/1
    d1: jax.Array  # D_1 stencil size, 0 = full (repaired to <= order - 1)
    relax_type: jax.Array  # usf.RELAX_*
    d2_half: jax.Array  # 0/1: D_2 term scaled by 1 or 1/2
    afs: jax.Array  # 0 none, 1 zero x0, 2 mean x0
    u: jax.Array  # log-SNR increment logits
    relax: jax.Array  # linear relaxation coefficient c
    guidance: jax.Array | None = None  # index into SearchSpace.guidance_choices (None: not searched)


# Categorical genes and the number of values each takes (a function of the space).
def gene_cardinalities(space: SearchSpace) -> dict:
    """{gene: the number of values it takes} of the categorical genes of `space` (a mode's unsearched genes
    included, as the GA mutates every gene)."""
    return {
        "model": space.num_models + (1 if space.searches_models else 0),
        "order": space.max_order,  # values 1..max_order
        "prediction": 2,
        "corrector": 2,
        "d1": space.max_order,  # values 0..max_order-1
        "relax_type": 3,
        "d2_half": 2,
        "afs": space.num_afs,
        **({"guidance": len(space.guidance_choices)} if space.searches_guidance else {}),
    }


def random_genomes(space: SearchSpace, key: jax.Array, n: int, *, skip_rate=(0.2, 0.8)) -> Genome:
    """`n` random genomes (leading axis n). Orders follow S3's prior, model mixes a Dirichlet(0.4) over the zoo
    (OMS-DPM), skips a rate uniform in `skip_rate`; u ~ N(0, 0.5^2) around the space's base spacing; c ~ N(0,
    0.05^2); a searched guidance gene uniform over the choices. One compiled program per (`space.timeless()`,
    n, skip_rate): genomes do not depend on the end times."""
    return _random_genomes(space.timeless(), key, n, skip_rate=tuple(skip_rate))


@functools.partial(jax.jit, static_argnames=("space", "n", "skip_rate"))
def _random_genomes(space: SearchSpace, key: jax.Array, n: int, *, skip_rate) -> Genome:
    f = jnp.result_type(float)
    N = space.num_positions
    k = jax.random.split(key, 12)
    prior = jnp.asarray(ORDER_PRIOR[: space.max_order], f)
    order = 1 + jax.random.categorical(k[0], jnp.log(prior / prior.sum()), shape=(n, N))
    mix = jax.random.dirichlet(k[1], jnp.full((space.num_models,), 0.4, f), shape=(n,))
    model = jax.vmap(lambda kk, p: jax.random.categorical(kk, jnp.log(p + 1e-12), shape=(N,)))(
        jax.random.split(k[2], n), mix
    )
    if space.searches_models:
        rate = jax.random.uniform(k[3], (n, 1), f, skip_rate[0], skip_rate[1])
        model = jnp.where(jax.random.uniform(k[4], (n, N), f) < rate, space.skip, model)
    else:
        model = jnp.full((n, N), space.model)
    ints = lambda kk, hi: jax.random.randint(kk, (n, N), 0, hi, jnp.int32)  # noqa: E731
    return Genome(
        model=model.astype(jnp.int32),
        order=order.astype(jnp.int32),
        prediction=ints(k[5], 2),
        corrector=ints(k[6], 2),
        d1=ints(k[7], space.max_order),
        relax_type=ints(k[8], 3),
        d2_half=(jax.random.uniform(k[9], (n, N), f) < 0.3).astype(jnp.int32),
        afs=jax.random.randint(k[10], (n,), 0, space.num_afs, jnp.int32),
        u=0.5 * jax.random.normal(k[11], (n, N), f),
        relax=0.05 * jax.random.normal(jax.random.fold_in(key, 99), (n, N), f),
        guidance=_random_guidance(space, jax.random.fold_in(key, 100), (n, N)),
    )


def _random_guidance(space: SearchSpace, key, shape):
    if not space.searches_guidance:
        return None
    return jax.random.randint(key, shape, 0, len(space.guidance_choices), jnp.int32)


def _guidance(space: SearchSpace, g: Genome, perm) -> jax.Array:
    """float[N]: the scale of each compacted step (`perm`: active positions first)."""
    f = jnp.result_type(float)
    if not space.searches_guidance:
        return jnp.full((space.num_positions,), space.guidance, f)
    idx = jnp.clip(jnp.take(g.guidance, perm), 0, len(space.guidance_choices) - 1)
    return jnp.asarray(space.guidance_choices, f)[idx]


def active_mask(space: SearchSpace, g: Genome) -> jax.Array:
    """bool[N]: the positions that become steps. At least one step is always active (position 0 if all skip)."""
    pos = jnp.arange(space.num_positions, dtype=jnp.int32)
    if space.mode == "solver":
        return pos < space.nfe + (_afs(space, g) != AFS_NONE).astype(jnp.int32)
    active = g.model != space.skip
    return active.at[0].set(active[0] | ~jnp.any(active))


def _afs(space: SearchSpace, g: Genome) -> jax.Array:
    if space.mode == "model":
        return jnp.zeros((), jnp.int32)
    return jnp.clip(g.afs, 0, space.num_afs - 1).astype(jnp.int32)


def _base_solver(space: SearchSpace, pos, length):
    """Model mode's fixed decisions per step: (order, prediction, relax_type, corrector, d2_scale)."""
    if space.base_solver == "unipc":
        order = jnp.minimum(jnp.minimum(2, pos + 1), length - pos)
        corrector = pos < length - 1
    else:  # dpm_solver_pp (2M): lower order final only under 10 steps
        order = jnp.minimum(2, pos + 1)
        order = jnp.where(length < 10, jnp.minimum(order, length - pos), order)
        corrector = jnp.zeros_like(pos, bool)
    order = jnp.maximum(order, 1)
    relax_type = jnp.full_like(pos, usf.RELAX_DPM2)
    return order, jnp.full_like(pos, usf.DATA), relax_type, corrector


def decode(space: SearchSpace, noise_schedule: NoiseSchedule, g: Genome, bounds=None) -> tuple[Schedule, jax.Array]:
    """(padded Schedule of N steps, number of steps `length`) for one genome; pure JAX, vmappable, and jitted
    (`space.timeless()` static, so a host-side call is one compiled program rather than dozens of small ones, and
    spaces that differ only in their end times share it). `bounds`: (t_start, t_end), possibly traced; default
    the space's."""
    bounds = space.bounds if bounds is None else bounds
    return _decode(space.timeless(), noise_schedule, g, jnp.asarray(bounds, jnp.result_type(float)))


@functools.partial(jax.jit, static_argnames=("space",))
def _decode(space: SearchSpace, noise_schedule: NoiseSchedule, g: Genome, bounds) -> tuple[Schedule, jax.Array]:
    f = jnp.result_type(float)
    N = space.num_positions
    pos = jnp.arange(N, dtype=jnp.int32)
    active = active_mask(space, g)
    length = jnp.sum(active).astype(jnp.int32)
    perm = jnp.argsort(~active, stable=True)  # active positions first, in order
    take = lambda a: jnp.take(a, perm, axis=0)  # noqa: E731
    valid = pos < length
    last = pos == length - 1
    # Times: softmax increments of the spacing's coordinate over the active steps, fixed end points.
    u = take(jnp.asarray(g.u, f)) if space.searches_solver else jnp.zeros((N,), f)
    ts = times(noise_schedule, u, bounds[0], bounds[1], space.spacing, valid=valid)
    afs = _afs(space, g)
    model, _ = decode_models(space, g)
    if space.searches_solver:
        hist = jnp.minimum(pos + 1, space.max_order)
        order = jnp.clip(take(g.order), 1, hist)
        prediction = jnp.clip(take(g.prediction), 0, 1)
        relax_type = jnp.clip(take(g.relax_type), 0, 2)
        corrector = (take(g.corrector) != 0) & ~last
        d1 = jnp.where(take(g.d1) <= order - 1, jnp.maximum(take(g.d1), 0), 0)
        d2_scale = jnp.where(take(g.d2_half) != 0, 0.5, 1.0).astype(f)
        relax = take(jnp.asarray(g.relax, f))
    else:
        order, prediction, relax_type, corrector = _base_solver(space, pos, length)
        d1 = jnp.zeros((N,), jnp.int32)
        d2_scale = jnp.ones((N,), f)
        relax = jnp.zeros((N,), f)
    pad = lambda a, fill: jnp.where(valid, a, fill)  # noqa: E731
    sched = Schedule(
        ts=ts.astype(f),
        model=model,
        order=pad(order, 1).astype(jnp.int32),
        prediction=pad(prediction, usf.DATA).astype(jnp.int32),
        start=jnp.zeros((N,), jnp.int32),
        d1_points=pad(d1, 0).astype(jnp.int32),
        relax=pad(relax, 0.0).astype(f),
        relax_type=pad(relax_type, usf.RELAX_LINEAR).astype(jnp.int32),
        d2_scale=pad(d2_scale, 1.0).astype(f),
        corrector=pad(corrector, False).astype(jnp.bool_),
        guidance=pad(_guidance(space, g, perm), space.guidance).astype(f),
        afs=afs,
    )
    return sched, length


def to_schedule(space: SearchSpace, noise_schedule: NoiseSchedule, g: Genome) -> Schedule:
    """The concrete schedule of one genome (host): decoded, cut to its length and checked."""
    sched, length = decode(space, noise_schedule, g)
    n = int(length)
    out = Schedule(
        *(
            np.asarray(v)[: n + 1] if name == "ts" else np.asarray(v) if name == "afs" else np.asarray(v)[:n]
            for name, v in sched._asdict().items()
        )
    )
    out = jax.tree_util.tree_map(jnp.asarray, out)
    check_schedule(out, space.num_models, noise_schedule)
    return out


def step_calls(space: SearchSpace, g: Genome) -> jax.Array:
    """int32[N]: the model calls of each compacted step: 2 at a guided step (scale != 1), 1 at an unguided one, 0
    past the length and at the first step under AFS (it calls no model)."""
    active = active_mask(space, g)
    length = jnp.sum(active).astype(jnp.int32)
    pos = jnp.arange(space.num_positions, dtype=jnp.int32)
    called = (pos < length) & ~((pos == 0) & (_afs(space, g) != AFS_NONE))
    per_step = jnp.where(_guidance(space, g, jnp.argsort(~active, stable=True)) != 1, 2, 1)
    return jnp.where(called, per_step, 0).astype(jnp.int32)


def cost(space: SearchSpace, g: Genome) -> jax.Array:
    """Sum of the latencies of the models called, each step's latency times its calls (`step_calls`: none at the
    first step under AFS, two at a guided step)."""
    f = jnp.result_type(float)
    model, _ = decode_models(space, g)
    lat = jnp.asarray(space.latencies, f)[model]
    return jnp.sum(step_calls(space, g).astype(f) * lat)


def nfe(space: SearchSpace, g: Genome) -> jax.Array:
    """Model calls: the number of steps, minus one under AFS, a guided step counting twice (`step_calls`)."""
    return jnp.sum(step_calls(space, g))


def decode_models(space: SearchSpace, g: Genome) -> tuple[jax.Array, jax.Array]:
    """(model index per step, compacted and padded with 0; length): the part of `decode` the cost needs."""
    active = active_mask(space, g)
    length = jnp.sum(active).astype(jnp.int32)
    if not space.searches_models:
        return jnp.full((space.num_positions,), space.model, jnp.int32), length
    perm = jnp.argsort(~active, stable=True)
    model = jnp.take(g.model, perm)
    # Padding, and the forced step of an all-skip genome, run model 0 (the zoo's smallest).
    ok = (jnp.arange(space.num_positions, dtype=jnp.int32) < length) & (model >= 0) & (model < space.num_models)
    return jnp.where(ok, model, 0).astype(jnp.int32), length
