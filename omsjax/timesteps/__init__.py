"""Few-step sampler optimisation: learned timesteps, by an error bound or by differentiating the sampler (Huang
2024; Align Your Steps; LD3).

- `omsjax.spacing`: the monotone parameterisation of times by logits (`times`, `logits`), shared with the search.
- `bound`: the first-order error bound and its optimiser (phase 1a).
- `trajectory`: the trajectory fit (phase 1b) and the FD itself as the objective (phase 1c).
- `ays`: an Align-Your-Steps-style coordinate search.
- `result`: the result of a fit.

Phase 2 (fine-tuning a zoo member toward the chosen steps, `finetune`) and the whole `omsjax optimize-steps` run
(`run`) are workflows in `omsjax.workflows.timesteps_run`. Deprecated: `omsjax.timesteps.finetune`, `.run` and
`.METHODS` still resolve there for one release, with a DeprecationWarning (CHANGELOG 0.2.0).
"""

import importlib
import warnings

from omsjax.spacing import SPACINGS, U_BOUND, coordinate, logits, time_of_coordinate, times
from omsjax.timesteps.ays import ays_bound, ays_schedule, ays_table
from omsjax.timesteps.bound import bound, bound_mc, denoiser_derivative, estimate_g, optimize_bound
from omsjax.timesteps.result import FitResult
from omsjax.timesteps.trajectory import frechet_loss, optimize_fd, optimize_trajectory, trajectory_loss

__all__ = [
    "SPACINGS",
    "U_BOUND",
    "coordinate",
    "time_of_coordinate",
    "times",
    "logits",
    "denoiser_derivative",
    "estimate_g",
    "bound",
    "bound_mc",
    "optimize_bound",
    "trajectory_loss",
    "optimize_trajectory",
    "frechet_loss",
    "optimize_fd",
    "ays_table",
    "ays_bound",
    "ays_schedule",
    "FitResult",
]

# The workflow names of the module this package replaced: deprecated forwards to the layer above (CHANGELOG 0.2.0).
_WORKFLOW = "omsjax.workflows.timesteps_run"
_DEPRECATED = ("METHODS", "finetune", "run")


def __getattr__(name):
    if name in _DEPRECATED:
        warnings.warn(
            f"omsjax.timesteps.{name} is deprecated: use {_WORKFLOW}.{name}", DeprecationWarning, stacklevel=2
        )
        return getattr(importlib.import_module(_WORKFLOW), name)
    raise AttributeError(f"module 'omsjax.timesteps' has no attribute {name!r}")
