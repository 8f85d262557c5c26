"""Sample-quality metrics.

- The digits metric (`metrics.digits`): a Fréchet distance (`metrics.frechet`) in the features of a small digits
  classifier (`metrics.classifier`) shipped in `checkpoints/digits/classifier/` (`fd`, `digits_fd`, `fd_floor`;
  `python -m omsjax.metrics --train` rebuilds the classifier, `metrics.ship`).
- The reference metrics (`metrics.reference`): the distance from a sampler's output to the model's own converged
  samples from the same noise, labels and guidance (`reference_fd`, `reference_rmse`, the search metrics
  `ReferenceFD` and `ReferenceRMSE`, the diffrax endpoint `ode_reference`).
- The conditional digits metric (`metrics.conditional`, not re-exported here): balanced labels, the conditioning
  of a class-conditional zoo, its conditional FD and accuracy, and the search metric `ConditionalFD`.
- Distances between sample sets of any shape (`metrics.distribution`): `sliced_wasserstein`, `energy_distance`,
  and the search metrics `SlicedWasserstein(data)` / `EnergyDistance(data)` (distance to a fixed sample set).
"""

# Each submodule's public names, re-exported: listed once, in its own __all__.
from omsjax.metrics import classifier, conditional, digits, distribution, frechet, reference
from omsjax.metrics.classifier import *  # noqa: F403
from omsjax.metrics.digits import *  # noqa: F403
from omsjax.metrics.distribution import *  # noqa: F403
from omsjax.metrics.frechet import *  # noqa: F403
from omsjax.metrics.reference import *  # noqa: F403
from omsjax.metrics.ship import main

__all__ = [
    "conditional",
    *classifier.__all__,
    *frechet.__all__,
    *digits.__all__,
    *reference.__all__,
    *distribution.__all__,
    "main",
]
