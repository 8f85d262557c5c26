"""omsjax: fast diffusion sampling in JAX with per-step model and solver schedules as data."""

import importlib

from omsjax import nets, noise, oracles, presets, spacing, usf
from omsjax.models import Model, as_zoo
from omsjax.options import SampleOptions
from omsjax.sampler import generate, prior, sample, sample_heun, sample_many
from omsjax.schedule import Schedule, check_schedule, stack

__version__ = "0.2.0"

__all__ = [
    "Model",
    "Schedule",
    "SampleOptions",
    "as_zoo",
    "check_schedule",
    "data",
    "generate",
    "load_zoo",
    "metrics",
    "nets",
    "oracles",
    "presets",
    "prior",
    "sample",
    "sample_heun",
    "sample_many",
    "noise",
    "spacing",
    "stack",
    "stages",
    "timesteps",
    "train",
    "usf",
    "zoo",
]

# Training, data, metric, zoo, stage and timestep modules pull in orbax, optax, scikit-learn and
# scipy: import them on first use (and the deprecated paths `conditional` and `schedules`, which warn).
_LAZY_MODULES = ("conditional", "data", "metrics", "schedules", "stages", "timesteps", "train", "zoo")


def __getattr__(name):
    if name in _LAZY_MODULES:
        return importlib.import_module(f"omsjax.{name}")
    if name == "load_zoo":
        return importlib.import_module("omsjax.zoo").load_zoo
    raise AttributeError(f"module 'omsjax' has no attribute {name!r}")
