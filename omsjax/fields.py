"""Host-side validation of typed config fields, and the JSON round trip of frozen config dataclasses.

Each check raises a `ValueError` naming the field and returns the value normalised (Python int / float / bool /
tuple), so that equal configs hash equally and JSON round trips are exact; `count` is the one check of a count,
size, seed or index (a bool is not one). `to_dict` / `from_dict` convert a frozen dataclass whose fields are JSON
values, tuples or nested config dataclasses. It imports nothing above numpy.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from typing import Any

import numpy as np

__all__ = [
    "is_int",
    "is_real",
    "count",
    "seed",
    "shape",
    "SEED_LIMIT",
    "SEARCH_SEED_LIMIT",
    "positive_int",
    "nonneg_int",
    "integer",
    "real",
    "boolean",
    "image_shape",
    "to_dict",
    "from_dict",
]


def is_int(v: Any) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v: Any) -> bool:
    """A finite real number (Python or numpy), not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def count(name: str, v: Any, minimum: int = 1, *, maximum: int | None = None) -> int:
    """`v` (a Python or numpy int, not a bool) as an int >= `minimum` (and <= `maximum` when given): the one check
    of a count, size, seed or index; else "`name` must be an int >= `minimum`" (or "an int in minimum..maximum")."""
    if not is_int(v) or v < minimum or (maximum is not None and v > maximum):
        what = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ValueError(f"{name} must be an int {what}, got {v!r}")
    return int(v)


SEED_LIMIT = 2**32  # JAX keeps only the low 32 bits of a larger seed (without x64, s and s + 2**32 draw alike)
SEARCH_SEED_LIMIT = 2**31  # a search derives its other seeds from its own by adding up to 4000: all below 2**32


def seed(name: str, v: Any, limit: int = SEED_LIMIT) -> int:
    """`v` as a seed: an int in 0..limit - 1 (default `SEED_LIMIT`; a search's own seed, `SEARCH_SEED_LIMIT`)."""
    return count(name, v, 0, maximum=limit - 1)


def shape(name: str, v: Any) -> tuple[int, ...]:
    """`v` as the shape of one sample: a tuple (or list) of positive ints."""
    if not isinstance(v, (tuple, list)) or not all(is_int(d) and d > 0 for d in v):
        raise ValueError(f"{name} must be a tuple of positive ints (the shape of one sample), got {v!r}")
    return tuple(int(d) for d in v)


def positive_int(name: str, v: Any) -> int:
    """`v` as an int >= 1: `count(name, v, 1)`."""
    return count(name, v, 1)


def nonneg_int(name: str, v: Any) -> int:
    """`v` as an int >= 0: `count(name, v, 0)`."""
    return count(name, v, 0)


def integer(name: str, v: Any) -> int:
    """`v` as an int; else "`name` must be an int"."""
    if not is_int(v):
        raise ValueError(f"{name} must be an int, got {v!r}")
    return int(v)


def real(
    name: str,
    v: Any,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> float:
    """`v` (a Python or numpy number, or a concrete 0-d real array) as a finite float within the given bounds; the
    message names the field and the range, e.g. "lr must be a finite number > 0", "ema_decay must be in [0, 1)",
    "focus_prob must be in [0, 1]"."""
    if np.ndim(v) == 0 and getattr(v, "dtype", None) is not None and np.dtype(v.dtype).kind in "fiu":
        v = v.item()  # a 0-d numpy or jax array (a traced one raises JAX's concretization error here)
    ok = is_real(v) and (gt is None or v > gt) and (ge is None or v >= ge)
    ok = ok and (lt is None or v < lt) and (le is None or v <= le)
    if not ok:
        lo, hi = (ge, "[") if ge is not None else (gt, "(")
        up, close = (le, "]") if le is not None else (lt, ")")
        if lo is not None and up is not None:
            what = f"in {hi}{_num(lo)}, {_num(up)}{close}"
        elif lo is not None:
            what = f"a finite number {'>=' if ge is not None else '>'} {_num(lo)}"
        elif up is not None:
            what = f"a finite number {'<=' if le is not None else '<'} {_num(up)}"
        else:
            what = "a finite number"
        raise ValueError(f"{name} must be {what}, got {v!r}")
    return float(v)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def boolean(name: str, v: Any) -> bool:
    """`v` as a bool (Python or numpy); else "`name` must be a bool"."""
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{name} must be a bool, got {v!r}")
    return bool(v)


def image_shape(name: str, shape: Any) -> tuple[int, int, int]:
    """`shape` as a tuple (H, W, C) of positive ints."""
    if not isinstance(shape, (tuple, list)) or len(shape) != 3 or not all(is_int(s) and s > 0 for s in shape):
        raise ValueError(f"{name} must be (H, W, C) with positive ints, got {shape!r}")
    return tuple(int(s) for s in shape)


def to_dict(config: Any) -> dict:
    """JSON-friendly dict of a config dataclass: nested config dataclasses as dicts, tuples as lists (and a check
    that every field is JSON-able)."""
    d = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    for k, v in d.items():
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            d[k] = v.to_dict() if hasattr(v, "to_dict") else to_dict(v)
    return json.loads(json.dumps(d))


def from_dict(cls: type, d: Any, *, nested: dict[str, type] | None = None, tuples: tuple[str, ...] | None = None):
    """`cls(**d)` for a dict from `to_dict`: unknown fields raise "unknown <cls> fields [...]"; the fields in
    `nested` (name -> config class) are built from their dicts (with the same checks); the fields in `tuples`
    (default: every list value) become tuples."""
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__}.from_dict expects a dict, got {type(d).__name__}")
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}")
    kw = {}
    for k, v in d.items():
        if nested and k in nested and isinstance(v, dict):
            sub = nested[k]
            v = sub.from_dict(v) if hasattr(sub, "from_dict") else from_dict(sub, v)
        elif (k in tuples) if tuples is not None else isinstance(v, list):
            v = tuple(v)
        kw[k] = v
    return cls(**kw)
