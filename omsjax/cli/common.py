"""Helpers that several `omsjax` commands share: the named solvers as schedules, loading a zoo, and `check_out`,
the one check of an output path (`--out`) that every command runs before it computes anything."""

from __future__ import annotations

import os
from pathlib import Path

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


# The picture formats `omsjax sample` writes (`plots.save_grid`: matplotlib, by the path's suffix).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")


def check_out(path, *, flag: str = "--out", suffixes: tuple[str, ...] | None = None) -> Path:
    """Check an output path before any sampling or training starts; returns it as a `Path`.

    `suffixes` None: `path` is a folder (created later if missing); otherwise a file whose suffix (any case) is one
    of `suffixes`. A `ValueError` naming `flag` and the path when it is an existing file where a folder is
    expected, an existing folder where a file is expected, a file of another type, or when the nearest existing
    folder above it is a file or not writable.
    """
    p = Path(path)
    if suffixes is None:
        if p.exists() and not p.is_dir():
            raise ValueError(f"{flag} {path} is a file; expected a folder (missing or existing) to write into")
    else:
        if p.is_dir():
            raise ValueError(f"{flag} {path} is a folder; expected a file path ending in {' or '.join(suffixes)}")
        if p.suffix.lower() not in suffixes:
            got = f"type {p.suffix!r}" if p.suffix else "no file type"
            raise ValueError(f"{flag} {path} has {got}; this command writes {' or '.join(suffixes)}")
    here = p.absolute()
    for parent in ([here] if suffixes is None else []) + list(here.parents):  # the nearest existing folder
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {path}: {parent} is a file, so nothing can be written under it")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(f"{flag} {path}: the folder {parent} is not writable")
            break
    return p
