"""Sampling many candidate schedules from the same noise: the compiled program of a search's evaluations.

`sample_candidates` returns the samples of C schedules of one length from one x_T, `chunk` candidates per compiled
call (`sample_jit`): solver schedules of one model as one `vmap` program, model schedules (`method="map"`) with
`lax.map`, so each costs the models it schedules. With several devices, candidates are split over them with
`jax.shard_map` (a 1-D mesh "cand").
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from omsjax import checks, sampler
from omsjax.checks import thresholding_option
from omsjax.models import Model, as_zoo, used_members
from omsjax.schedule import Schedule, check_schedule, stack

__all__ = ["sample_candidates", "sample_jit"]


@functools.cache
def _mesh() -> Mesh:
    return Mesh(np.array(jax.devices()), ("cand",))


@functools.partial(jax.jit, static_argnames=("method", "thresholding"))
def sample_jit(zoo, ns, stacked, x_T, data_mean, method, cond=None, uncond=None, thresholding=None):
    """The compiled program of `sample_candidates`: `sampler.sample_many` of a stack of schedules, split over the
    devices along the candidate axis when there are several (one program per zoo, length, noise and method)."""

    def run(s):
        return sampler.sample_many(zoo, ns, s, x_T, method=method, data_mean=data_mean, cond=cond, uncond=uncond,
                                   thresholding=thresholding)  # fmt: skip

    ndev = len(jax.devices())
    if ndev == 1:
        return run(stacked)
    shared = sampler.shared_fields(stacked)
    spec = Schedule(**{f: P() if f in shared else P("cand") for f in Schedule._fields})
    return jax.shard_map(run, mesh=_mesh(), in_specs=(spec,), out_specs=P("cand"), check_vma=False)(stacked)


def sample_candidates(
    model_or_zoo: Model | Sequence[Model],
    noise_schedule,
    schedules: Sequence[Schedule],
    x_T: jax.Array,
    *,
    method: str = "vmap",
    data_mean=None,
    chunk: int = 8,
    cond=None,
    uncond=None,
    thresholding=None,
) -> np.ndarray:
    """Samples [C, *x_T.shape] of C schedules of one length from the same `x_T` (and `cond`, `uncond`,
    `thresholding`, as in `sample`), `chunk` candidates per compiled call. A short chunk (the last one, or all of
    fewer than `chunk` schedules) is padded by repeating a candidate, so every call of a length has one shape: a
    search compiles one program per schedule length and noise batch, not one per leftover count (the final
    re-evaluation of 3 and the held-out score of 1 would each compile their own). With D devices, each chunk
    (rounded up to a multiple of D) is split over them.

    A chunk whose schedules all call one zoo member compiles that member alone (`models.used_members`): a solver
    search on one model of a big zoo compiles one network. Chunks that call several members keep the whole zoo in
    the program's `lax.switch`, so a model search compiles one program, not one per subset of members. A
    guidance array that every schedule shares is passed unbatched (one guided step: 2 half-calls, not 3)."""
    zoo = as_zoo(model_or_zoo)
    schedules = list(schedules)
    if not schedules:
        raise ValueError("no schedules to sample")
    if method not in ("vmap", "map"):
        raise ValueError(f"method must be 'vmap' or 'map', got {method!r}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    checks.check_conditioning(cond, uncond, x_T.shape[0])
    for i, s in enumerate(schedules):
        try:
            check_schedule(s, len(zoo))
            checks.check_guidance(s, uncond)
        except ValueError as e:
            raise ValueError(f"candidate {i}: {e}") from None
    ndev = len(jax.devices())
    chunk = -(-chunk // ndev) * ndev
    # A guidance scale every candidate shares is passed once (`sampler.sample_many`), keeping the w == 1 shortcut
    # of `models.guided_eps_x0`; batched, both halves of the model call would run at every step (3 half-batch
    # calls instead of 2 at a guided step). Decided for the whole call, so a length still compiles one program.
    g0 = np.asarray(schedules[0].guidance)
    shared = {"guidance": jnp.asarray(g0)} if all(np.array_equal(s.guidance, g0) for s in schedules) else {}
    out = []
    for start in range(0, len(schedules), chunk):
        part = schedules[start : start + chunk]
        padded = stack(part + [part[-1]] * (chunk - len(part)))
        used, model, _ = used_members(zoo, padded.model, padded.afs)
        kw = dict(cond=cond, uncond=uncond, thresholding=thresholding_option(thresholding))
        if len(used) == 1:  # one member: compile it alone (one program per member, not one per subset of the zoo)
            res = sample_jit(used, noise_schedule, padded._replace(model=model, **shared), x_T, data_mean,
                              method, **kw)  # fmt: skip
        else:
            res = sample_jit(zoo, noise_schedule, padded._replace(**shared), x_T, data_mean, method, **kw)
        out.append(np.asarray(res)[: len(part)])
    return np.concatenate(out)
