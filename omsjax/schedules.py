"""Deprecated: `omsjax.schedules` is `omsjax.noise` (the noise schedules; `omsjax.schedule` is the sampler's
`Schedule`). This path forwards there for one release with a DeprecationWarning (CHANGELOG 0.2.0), and its names
that moved to `omsjax.spacing` (`time_steps`, `karras_sigmas`, `times_from_sigmas`, `SKIP_TYPES`) resolve there
with a warning each."""

import importlib
import warnings

warnings.warn("omsjax.schedules is deprecated: use omsjax.noise", DeprecationWarning, stacklevel=2)

from omsjax.noise import *  # noqa: E402, F403

_MOVED = ("time_steps", "karras_sigmas", "times_from_sigmas", "SKIP_TYPES")


def __getattr__(name):
    if name in _MOVED:
        new = "SPACINGS" if name == "SKIP_TYPES" else name
        msg = f"omsjax.schedules.{name} is deprecated: use omsjax.spacing.{new}"
        warnings.warn(msg, DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("omsjax.spacing"), new)
    raise AttributeError(f"module 'omsjax.schedules' has no attribute {name!r}")
