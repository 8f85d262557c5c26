"""What every timestep fit shares: the result type and the checks of its optimiser settings."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["FitResult"]


class FitResult(NamedTuple):
    """An optimised schedule: its times, the logits, and the objective's history (first, every step, last)."""

    ts: np.ndarray
    u: np.ndarray
    history: np.ndarray
    heldout: dict


def check_fit(steps, lr):
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
