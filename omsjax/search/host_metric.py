"""Calling a host metric, `metric(samples, x_T) -> float` on numpy arrays, as the Evaluator does: its name in an
archive (`name_of`), how it takes the conditioning (`cond_argument`), and the checked call (`call`)."""

from __future__ import annotations

import functools
import inspect

import jax
import numpy as np

__all__ = ["name_of", "cond_argument", "call", "gathered_warning", "GATHER_WARN_BYTES"]

GATHER_WARN_BYTES = 256 << 20  # samples gathered from several processes for a host metric: warn above this


def name_of(metric) -> str:
    """A metric's `name` attribute if it has one (`metrics.ReferenceFD`, `conditional.ConditionalFD`), else its
    `__qualname__` (a partial's: its function's)."""
    if isinstance(getattr(metric, "name", None), str) and metric.name:
        return metric.name
    f = metric.func if isinstance(metric, functools.partial) else metric
    return getattr(f, "__qualname__", None) or type(f).__qualname__


def cond_argument(metric) -> str | None:
    """How `metric` takes the conditioning: "cond" (a parameter named `cond`, passed by name), "third" (a third
    positional parameter), or None: `metric(samples, x_T)` (also a metric with `*args` or `**kwargs` only)."""
    try:
        params = list(inspect.signature(metric).parameters.values())
    except (TypeError, ValueError):  # no signature to read (some builtins): called as metric(samples, x_T)
        return None
    if any(q.name == "cond" and q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD) for q in params):
        return "cond"
    positional = [q for q in params if q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD)]
    return "third" if len(positional) >= 3 else None


def call(metric, name: str, x: np.ndarray, x_T: np.ndarray, cond, key: str) -> float:
    """`metric(x, x_T)` (or `metric(x, x_T, cond)`, as `cond_argument` says) checked: a real number, finite or
    +inf; a ValueError naming the metric `name` and the schedule `key` when it raises or returns anything else."""
    try:
        how, args = cond_argument(metric), (np.asarray(x), x_T)
        if how is None:
            v = metric(*args)
        else:
            v = metric(*args, cond) if how == "third" else metric(*args, cond=cond)
    except Exception as e:
        raise ValueError(f"metric {name} raised on schedule {key}: {type(e).__name__}: {e}") from e
    a = np.asarray(v) if isinstance(v, (int, float, np.number, np.ndarray, jax.Array)) else None
    if a is None or a.shape != () or a.dtype.kind not in "iuf" or np.isnan(a) or a == -np.inf:
        raise ValueError(
            f"metric {name} returned {v!r} on schedule {key}: it must return a real number, "
            "finite or +inf (lower is better)"
        )
    return float(a)


def gathered_warning(name: str, nbytes: int, processes: int) -> str | None:
    """The one-line warning when a host metric's samples, `nbytes` of them, were gathered from several
    `processes` and exceed `GATHER_WARN_BYTES`; else None."""
    if processes < 2 or nbytes <= GATHER_WARN_BYTES:
        return None
    return (
        f"metric {name} scores on the host: {nbytes / 2**20:.0f} MiB of samples were gathered from {processes} "
        "processes for one chunk of candidates; a metrics.device.FeatureMetric would reduce them on the devices"
    )
