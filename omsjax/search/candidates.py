"""Sampling many candidate schedules from the same noise: the compiled program of a search's evaluations.

`sample_candidates` returns the samples of C schedules of one length from one x_T, `chunk` candidates per compiled
call (`sample_jit`): solver schedules of one model as one `vmap` program, model schedules (`method="map"`) with
`lax.map`, so each costs the models it schedules. With several devices, the samples (x_T, `cond`, `uncond`) are
split over them with `jax.shard_map` (a 1-D mesh "batch"), every device running every candidate on its share: no
device idles on a short chunk, and on a CPU host with one XLA device per core (as `omsjax search` sets up) a
search's evaluations run about twice as fast on 2 cores as on one device.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from omsjax import checks, sampler
from omsjax.integrate import used_members
from omsjax.models import Model, as_zoo
from omsjax.options import SampleOptions
from omsjax.schedule import Schedule, stack

__all__ = ["sample_candidates", "sample_jit"]


@functools.cache
def _mesh() -> Mesh:
    return Mesh(np.array(jax.devices()), ("batch",))


@functools.partial(jax.jit, static_argnames=("method", "thresholding"))
def sample_jit(zoo, ns, stacked, x_T, data_mean, method, cond=None, uncond=None, thresholding=None):
    """The compiled program of `sample_candidates`: `sampler.sample_many` of a stack of schedules, the samples split
    over the devices when there are several (one program per zoo, length, noise and method). With D devices the
    batch of x_T (and of `cond`, `uncond`) must be a multiple of D."""

    def run(s, x, c, u):
        return sampler.sample_many(
            zoo, ns, s, x, method=method, data_mean=data_mean, cond=c, uncond=u, thresholding=thresholding
        )

    if len(jax.devices()) == 1:
        return run(stacked, x_T, cond, uncond)
    split = P("batch")
    return jax.shard_map(
        run, mesh=_mesh(), in_specs=(P(), split, split, split), out_specs=P(None, "batch"), check_vma=False
    )(stacked, x_T, cond, uncond)


def _spread(zoo, ns, data_mean, x_T, cond, uncond):
    """The arguments of `sample_jit` placed for D devices: the models, noise schedule and data mean on every device
    (a no-op where they are already), the samples split (a batch that is not a multiple of D padded by repeating its
    last sample)."""
    extra = -x_T.shape[0] % len(jax.devices())
    per_sample = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], extra, 0)]), (x_T, cond, uncond))
    every, split = NamedSharding(_mesh(), P()), NamedSharding(_mesh(), P("batch"))
    return *jax.device_put((zoo, ns, data_mean), every), *jax.device_put(per_sample, split)


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
    re-evaluation of 3 and the held-out score of 1 would each compile their own). With D devices, the samples are
    split over them (a batch that is not a multiple of D is padded by repeating its last sample, and the padding
    dropped from the result).

    A chunk whose schedules all call one zoo member compiles that member alone (`integrate.used_members`): a solver
    search on one model of a big zoo compiles one network. Chunks that call several members keep the whole zoo in
    the program's `lax.switch`, so a model search compiles one program, not one per subset of members. A
    guidance array that every schedule shares is passed unbatched (one guided step: 2 half-calls, not 3)."""
    zoo = as_zoo(model_or_zoo)
    o = SampleOptions() if sampling is None else sampling
    data_mean, cond, uncond = o.data_mean, o.cond, o.uncond
    schedules = list(schedules)
    if not schedules:
        raise ValueError("no schedules to sample")
    if method not in ("vmap", "map"):
        raise ValueError(f"method must be 'vmap' or 'map', got {method!r}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    checks.check_batch(zoo, noise_schedule, schedules, x_T, data_mean, cond, uncond)  # the one host check
    n = x_T.shape[0]
    if len(jax.devices()) > 1:
        zoo, noise_schedule, data_mean, x_T, cond, uncond = _spread(zoo, noise_schedule, data_mean, x_T, cond, uncond)
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
        kw = dict(cond=cond, uncond=uncond, thresholding=o.thresholding)
        if len(used) == 1:  # one member: compile it alone (one program per member, not one per subset of the zoo)
            res = sample_jit(used, noise_schedule, padded._replace(model=model, **shared), x_T, data_mean, method, **kw)
        else:
            res = sample_jit(zoo, noise_schedule, padded._replace(**shared), x_T, data_mean, method, **kw)
        out.append(np.asarray(res)[: len(part), :n])
    return np.concatenate(out)
