"""Sample-quality metrics.

- The digits metric (`metrics.classifier`): a Fréchet distance in the features of a small digits classifier
  shipped in `checkpoints/digits/classifier/` (`fd`, `digits_fd`, `fd_floor`, the classifier itself;
  `python -m omsjax.metrics --train` rebuilds it).
- The reference metrics (`metrics.reference`): the distance from a sampler's output to the model's own converged
  samples from the same noise, labels and guidance (`reference_fd`, `reference_rmse`, the search metrics
  `ReferenceFD` and `ReferenceRMSE`, the diffrax endpoint `ode_reference`).
- Distances between sample sets of any shape (`metrics.distribution`): `sliced_wasserstein`, `energy_distance`,
  and the search metrics `SlicedWasserstein(data)` / `EnergyDistance(data)` (distance to a fixed sample set).
"""

from omsjax.metrics.classifier import (
    ARCHITECTURE,
    DEFAULT_DIR,
    FEATURE_DIM,
    IMAGE_SHAPE,
    NUM_CLASSES,
    Classifier,
    RefStats,
    accuracy,
    apply_classifier,
    classifier_dir,
    digits_fd,
    fd,
    fd_floor,
    fd_from_features,
    feature_stats,
    features,
    frechet_distance,
    load_classifier,
    reference_stats,
    save_classifier,
    shipped_classifier,
    train_classifier,
)
from omsjax.metrics.distribution import EnergyDistance, SlicedWasserstein, energy_distance, sliced_wasserstein
from omsjax.metrics.reference import (
    Reference,
    ReferenceFD,
    ReferenceRMSE,
    ReferenceSampler,
    ReferenceStore,
    digits_features,
    ode_reference,
    reference_fd,
    reference_rmse,
)
from omsjax.metrics.ship import main

__all__ = [
    "Classifier",
    "RefStats",
    "FEATURE_DIM",
    "NUM_CLASSES",
    "IMAGE_SHAPE",
    "ARCHITECTURE",
    "DEFAULT_DIR",
    "train_classifier",
    "apply_classifier",
    "accuracy",
    "features",
    "frechet_distance",
    "feature_stats",
    "fd_from_features",
    "classifier_dir",
    "save_classifier",
    "load_classifier",
    "shipped_classifier",
    "reference_stats",
    "fd",
    "digits_fd",
    "fd_floor",
    "ReferenceSampler",
    "Reference",
    "ReferenceStore",
    "ReferenceFD",
    "ReferenceRMSE",
    "reference_fd",
    "reference_rmse",
    "digits_features",
    "ode_reference",
    "sliced_wasserstein",
    "energy_distance",
    "SlicedWasserstein",
    "EnergyDistance",
    "main",
]
