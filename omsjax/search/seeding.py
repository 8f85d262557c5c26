"""The classic solvers as genomes: `encode` (a concrete schedule -> the genome of a `SearchSpace` that decodes to
it, `encoding.decode`'s inverse) and `preset_seeds` (S3's seeding: every preset the space can represent)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from omsjax import presets, usf
from omsjax.noise import NoiseSchedule
from omsjax.schedule import AFS_NONE, Schedule, check_schedule
from omsjax.search.encoding import Genome
from omsjax.search.space import SearchSpace
from omsjax.spacing import SPACINGS, U_BOUND, coordinate

__all__ = ["SEED_SOLVERS", "encode", "preset_seeds"]

# Solver-mode seeds: `presets.BASELINES` in the order the seeds have always had (the search's results depend on it).
SEED_SOLVERS = (
    "DDIM",
    "DPM-Solver++(2M)",
    "DPM-Solver++(3M)",
    "UniPC-2 (bh2)",
    "UniPC-3 (bh2)",
    "UniPC-2 (bh1)",
    "UniPC-3 (bh1)",
)


def encode(space: SearchSpace, noise_schedule: NoiseSchedule, schedule: Schedule) -> Genome:
    """The genome of a concrete schedule with start points 0 (multistep) and the space's end times; decoding it
    gives the schedule back (up to float rounding of the times). Raises ValueError when it does not fit."""
    check_schedule(schedule, space.num_models, noise_schedule)
    s = {k: np.asarray(v) for k, v in schedule._asdict().items()}
    n = len(s["order"])
    N = space.num_positions
    if n > N:
        raise ValueError(f"the schedule has {n} steps, the space at most {N}")
    if np.any(s["start"] != 0):
        raise ValueError("the search space is multistep only (start = 0 at every step)")
    # At the times' own precision: float32 times of a float64 space's ends differ by up to half an ulp (1e-8 at
    # flow()'s t_start 0.999), which a float64 tolerance rejected.
    tol = max(1e-9, 4 * float(np.finfo(s["ts"].dtype).eps))
    ts = np.asarray(s["ts"], np.float64)
    if not (np.isclose(ts[0], space.t_start, rtol=tol) and np.isclose(ts[-1], space.t_end, rtol=tol)):
        raise ValueError(f"the schedule runs {ts[0]} -> {ts[-1]}, the space {space.t_start} -> {space.t_end}")
    afs = int(s["afs"])
    if afs >= space.num_afs:
        raise ValueError(f"AFS code {afs} is not allowed in this space (mean_afs={space.mean_afs})")
    if space.mode == "solver":
        if n != space.nfe + (afs != AFS_NONE):
            raise ValueError(f"the schedule has NFE {n - (afs != AFS_NONE)}, the space {space.nfe}")
        if np.any(s["model"] != space.model):
            raise ValueError(f"solver mode runs model {space.model} at every step")
    if np.any(s["order"] > space.max_order):
        raise ValueError(f"the schedule uses order {int(s['order'].max())} > max_order {space.max_order}")
    if not np.all(np.isin(s["d2_scale"], (0.5, 1.0))):
        raise ValueError("d2_scale must be 0.5 or 1 at every step")
    dc = np.diff(np.asarray(coordinate(noise_schedule, ts, space.spacing), np.float64))
    logf = np.log(dc / dc.sum())
    v = logf - logf.mean()
    if np.any(np.abs(v) >= U_BOUND * (1 - 1e-9)):
        raise ValueError(f"the {space.spacing} increments differ by more than e^(2 * {U_BOUND}): not representable")
    u = U_BOUND * np.arctanh(v / U_BOUND)
    guidance = _encode_guidance(space, s["guidance"])

    def full(a, fill, dtype):
        out = np.full((N,), fill, dtype)
        out[:n] = a
        return out

    skip_fill = space.skip if space.searches_models else space.model
    return Genome(
        model=jnp.asarray(full(s["model"], skip_fill, np.int32)),
        order=jnp.asarray(full(s["order"], 1, np.int32)),
        prediction=jnp.asarray(full(s["prediction"], usf.DATA, np.int32)),
        corrector=jnp.asarray(full(s["corrector"].astype(np.int32), 0, np.int32)),
        d1=jnp.asarray(full(s["d1_points"], 0, np.int32)),
        relax_type=jnp.asarray(full(s["relax_type"], usf.RELAX_LINEAR, np.int32)),
        d2_half=jnp.asarray(full((s["d2_scale"] == 0.5).astype(np.int32), 0, np.int32)),
        afs=jnp.asarray(afs, jnp.int32),
        u=jnp.asarray(full(u, 0.0, np.float64), jnp.result_type(float)),
        relax=jnp.asarray(full(s["relax"], 0.0, np.float64), jnp.result_type(float)),
        guidance=None if guidance is None else jnp.asarray(full(guidance, 0, np.int32)),
    )


def _encode_guidance(space: SearchSpace, scales) -> np.ndarray | None:
    """The guidance genes (indices into the space's choices) of a schedule's per-step scales; None when the space
    does not search them. Raises ValueError naming the first step whose scale the space cannot represent."""
    scales = np.asarray(scales, np.float64)
    allowed = np.asarray(space.guidance_choices if space.searches_guidance else (space.guidance,), np.float64)
    hit = np.isclose(scales[:, None], allowed[None, :], rtol=1e-9, atol=0.0)
    bad = np.flatnonzero(~hit.any(1))
    if bad.size:
        what = f"the choices {space.guidance_choices}" if space.searches_guidance else f"{space.guidance:g}"
        raise ValueError(
            f"the schedule's guidance at step {bad[0]} is {scales[bad[0]]:g}; the space guides every step at {what}"
        )
    return hit.argmax(1).astype(np.int32) if space.searches_guidance else None


def _stack(genomes) -> Genome:
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *genomes)


def preset_seeds(space: SearchSpace, noise_schedule: NoiseSchedule, *, budget: float | None = None) -> Genome:
    """The classic solvers as genomes (a population with a leading axis): S3's seeding, every step guided at the
    space's `guidance`.

    Solver and joint modes: DDIM, DPM-Solver++(2M/3M) and UniPC-2/3 (bh1, bh2) over the four step spacings,
    with and without AFS (zero x0) -- every one the space can represent at its NFE. Joint and model modes: the
    base solver with a single model at every NFE that fits `budget` (and N positions), in the space's spacing.
    """
    out = []
    if space.mode == "solver":
        for name in SEED_SOLVERS:
            for skip in SPACINGS:
                for afs in ("none", "zero_x0"):
                    try:
                        s = presets.named(
                            name,
                            noise_schedule,
                            space.nfe,
                            skip=skip,
                            model=space.model,
                            afs=afs,
                            t_start=space.t_start,
                            t_end=space.t_end,
                        )
                        out.append(encode(space, noise_schedule, presets.with_guidance(s, space.guidance)))
                    except ValueError:
                        continue
    else:
        name = {"unipc": "UniPC-2 (bh2)", "dpm_solver_pp": "DPM-Solver++(2M)"}[space.base_solver]
        for m, lat in enumerate(space.latencies):
            for k in range(1, space.num_positions + 1):
                if budget is not None and k * lat * (1 if space.guidance == 1 else 2) > budget:
                    break
                try:
                    s = presets.named(
                        name, noise_schedule, k, model=m, skip=space.spacing, t_start=space.t_start, t_end=space.t_end
                    )
                    g = encode(space, noise_schedule, presets.with_guidance(s, space.guidance))
                except ValueError:
                    continue
                if space.mode == "model":  # model mode ignores the solver genes; keep them neutral
                    g = g._replace(u=jnp.zeros_like(g.u))
                out.append(g)
    if not out:
        raise ValueError("no preset fits this search space")
    return _stack(out)
