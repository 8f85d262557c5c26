"""The zoo manifest's schema: `read_manifest` checks a `manifest.json` (version, image shape, noise schedule,
data mean, and every member entry's fields and their types), each error naming the file, member and field."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from omsjax import fields, files

__all__ = ["VERSION", "read_manifest"]

VERSION = 1


def read_manifest(zoo_dir: Path) -> dict:
    """The manifest of `zoo_dir`, checked: a JSON object of this version with an image shape, a noise schedule and
    a list of member entries whose fields have the right types (each error names the file, member and field)."""
    path = zoo_dir / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"no zoo manifest at {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a zoo manifest file")
    m = files.read_json(path, "a zoo manifest")
    if not isinstance(m, dict):
        raise ValueError(f"{path}: a zoo manifest is a JSON object, this file holds {files.json_type(m)}")
    if m.get("omsjax_zoo") != VERSION:
        raise ValueError(f"{path}: not an omsjax zoo manifest of version {VERSION}")
    for key in ("image_shape", "noise_schedule", "models"):
        if key not in m:
            raise ValueError(f"{path}: the manifest lacks {key!r}")
    shape = m["image_shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(fields.is_int(d) and d > 0 for d in shape)):
        raise ValueError(f"{path}: field 'image_shape' must be [H, W, C] (positive ints), got {shape!r}")
    if not isinstance(m["noise_schedule"], dict):
        raise ValueError(
            f"{path}: field 'noise_schedule' must be an object, got {files.json_type(m['noise_schedule'])}"
        )
    if "data_mean" in m:
        try:
            mean = np.asarray(m["data_mean"], np.float64)
            np.broadcast_to(mean, shape)
        except (ValueError, TypeError):
            raise ValueError(
                f"{path}: field 'data_mean' must be numbers of a shape that broadcasts to the image shape {shape}"
            ) from None
    if not isinstance(m["models"], list):
        raise ValueError(f"{path}: field 'models' must be a list of members, got {files.json_type(m['models'])}")
    first: dict[str, int] = {}
    for i, entry in enumerate(m["models"]):
        _check_entry(entry, i, path)
        j = first.setdefault(entry["name"], i)
        if j != i:
            raise ValueError(f"{path}: members {j} and {i} are both named {entry['name']!r} (a member listed twice?)")
    return m


def _is_ms(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


# The fields of a member entry: (required, check, what the check wants).
_ENTRY_FIELDS = {
    "name": (True, lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "config": (True, lambda v: isinstance(v, dict), "an object (the training config)"),
    "params": (True, lambda v: isinstance(v, str) and v != "", "a folder name relative to the zoo"),
    "latency_ms": (True, _is_ms, "a number >= 0 (ms per batch)"),
    "latency_ms_per_stage": (False, lambda v: isinstance(v, list) and all(map(_is_ms, v)), "a list of numbers >= 0"),
    "latency_batch": (False, lambda v: fields.is_int(v) and v > 0, "a positive int"),
    "latency_machine": (False, lambda v: isinstance(v, str), "a string"),
    "param_count": (False, lambda v: fields.is_int(v) and v >= 0, "an int >= 0"),
    "train_steps": (False, lambda v: fields.is_int(v) and v >= 0, "an int >= 0"),
}


def _check_entry(entry, i: int, path: Path) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: member {i} is {files.json_type(entry)}, not an object")
    who = f"member {i}" + (f" {entry['name']!r}" if isinstance(entry.get("name"), str) else "")
    for key, (required, ok, want) in _ENTRY_FIELDS.items():
        if key not in entry:
            if required:
                raise ValueError(f"{path}: {who} lacks the field {key!r}")
            continue
        if not ok(entry[key]):
            raise ValueError(
                f"{path}: {who}: field {key!r} must be {want}, got {entry[key]!r} ({files.json_type(entry[key])})"
            )
