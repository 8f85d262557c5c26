"""What every timestep fit shares: the result type and the checks of its optimiser settings."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from omsjax.fields import count, real

__all__ = ["FitResult"]


class FitResult(NamedTuple):
    """An optimised schedule: its times, the logits, and the objective's history (first, every step, last)."""

    ts: np.ndarray
    u: np.ndarray
    history: np.ndarray
    heldout: dict


def check_fit(steps, lr):
    """The optimiser settings of a fit: `steps` an int >= 1, `lr` a finite number > 0."""
    count("steps", steps)
    real("lr", lr, gt=0)
