"""omsjax: fast diffusion sampling in JAX with per-step model and solver schedules as data."""

from omsjax import nets, oracles, presets, schedules, usf
from omsjax.models import Model, as_zoo
from omsjax.sampler import sample, sample_many
from omsjax.schedule import Schedule, check_schedule, stack

__version__ = "0.1.0"

__all__ = [
    "Model",
    "Schedule",
    "as_zoo",
    "check_schedule",
    "nets",
    "oracles",
    "presets",
    "sample",
    "sample_many",
    "schedules",
    "stack",
    "usf",
]
