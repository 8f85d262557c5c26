"""Shared by the examples: a 2-D Gaussian mixture to learn and sample, and the `--small` flag the tests use."""

from __future__ import annotations

import argparse

import numpy as np

from omsjax import oracles


def args(description: str):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--small", action="store_true", help="tiny sizes (what the tests run)")
    return p.parse_args()


def mixture(dim: int = 2) -> oracles.GaussianMixture:
    """Four well separated Gaussians: its exact noise prediction is `gmm.eps(ns, x, t)` for any noise schedule."""
    rng = np.random.RandomState(0)
    return oracles.GaussianMixture.create(2.0 * rng.randn(4, dim), np.full(4, 0.3), np.full(4, 0.25))
