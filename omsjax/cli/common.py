"""Helpers that several `omsjax` commands share: the named solvers as schedules, and loading a zoo."""

from __future__ import annotations

# The solvers of `omsjax gmm` and `omsjax compare` (names of `omsjax.presets.NAMED`).
SOLVERS = (
    "DDIM",
    "DPM-Solver-2",
    "DPM-Solver-3",
    "DPM-Solver++(2M)",
    "DPM-Solver++(3M)",
    "UniPC-2 (bh1)",
    "UniPC-2 (bh2)",
    "UniPC-3 (bh2)",
)


def _solver_schedule(name, ns, nfe, skip, model=0):
    """The named solver (a key of presets.NAMED) as a schedule, or None where it has no schedule at this NFE."""
    from omsjax import presets

    kind, kw = presets.NAMED[name]
    try:
        return presets.preset(kind, ns, nfe, skip=skip, model=model, **kw)
    except ValueError:
        return None


def _load_zoo(path):
    import jax.numpy as jnp
    import numpy as np

    from omsjax import zoo

    models, ns, manifest = zoo.load_zoo(path)
    mean = manifest.get("data_mean")
    mean = None if mean is None else jnp.asarray(np.asarray(mean, np.float32))
    return models, ns, manifest, mean
