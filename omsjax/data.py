"""Data: scikit-learn's handwritten digits (the embedded default) and loaders for a user's own images.

Images are float32 NHWC arrays in [-1, 1]. The digits (1,797 real 8x8 grey images, values 0..16, shipped inside
scikit-learn) are scaled as x / 8 - 1 and split once: a permutation from RandomState(0), the first 300 held out.
"""

from __future__ import annotations

import functools
import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "DIGITS_SHAPE",
    "DIGITS_HELDOUT",
    "load_digits",
    "load_array",
    "load_idx_images",
    "load_idx_labels",
    "load_idx",
    "save_idx",
    "data_mean",
]

DIGITS_SHAPE = (8, 8, 1)
DIGITS_HELDOUT = 300
_SPLITS = ("train", "heldout", "all")


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images [1797, 8, 8, 1] float64 in [-1, 1], labels [1797] int64, split permutation [1797]); read-only."""
    from sklearn.datasets import load_digits as sk_load

    d = sk_load()
    x = (d.images.astype(np.float64) / 8.0 - 1.0)[..., None]
    y = d.target.astype(np.int64)
    perm = np.random.RandomState(0).permutation(len(x))
    for a in (x, y, perm):
        a.flags.writeable = False  # the cache is shared: callers only ever get copies
    return x, y, perm


def load_digits(split: str = "train", *, return_labels: bool = False, dtype=np.float32):
    """Digits images [N, 8, 8, 1] in [-1, 1] (and int64 labels [N]): 'train' (1,497), 'heldout' (300), 'all' (1,797).

    'all' is in scikit-learn's order; the other two follow the fixed RandomState(0) permutation. Returns fresh copies.
    """
    if split not in _SPLITS:
        raise ValueError(f"unknown digits split {split!r}; expected one of {_SPLITS}")
    x, y, perm = _digits()
    idx = {"train": perm[DIGITS_HELDOUT:], "heldout": perm[:DIGITS_HELDOUT], "all": np.arange(len(x))}[split]
    images = np.array(x[idx], dtype=dtype, copy=True)
    return (images, y[idx].copy()) if return_labels else images


def _check_value_range(value_range, what: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: value_range must be a pair (lo, hi) of numbers, got {value_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{what}: value_range needs finite lo < hi, got {value_range!r}")
    return lo, hi


def _to_images(a: np.ndarray, what: str, value_range=None) -> np.ndarray:
    """Validate an image array and map it to float32 [N, H, W, C] in [-1, 1] (see `load_array`)."""
    if a.dtype == np.bool_ or a.dtype.kind in "cOUSVMm" or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{what}: unsupported dtype {a.dtype}; expected integers (0..255) or real floats")
    if a.size == 0:
        raise ValueError(f"{what}: the array is empty (shape {a.shape})")
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4 or not 1 <= a.shape[-1] <= 4:
        raise ValueError(f"{what}: expected images [N, H, W] or [N, H, W, C] with C in 1..4, got shape {a.shape}")
    is_int = np.issubdtype(a.dtype, np.integer)
    if not is_int:
        bad = int(np.count_nonzero(~np.isfinite(a)))
        if bad:
            raise ValueError(f"{what}: {bad} of {a.size} values are NaN or inf")
    a = a.astype(np.float64)
    lo_seen, hi_seen = float(a.min()), float(a.max())
    if value_range is not None:
        lo, hi = _check_value_range(value_range, what)
        if lo_seen < lo or hi_seen > hi:
            raise ValueError(f"{what}: values {lo_seen:g}..{hi_seen:g} fall outside value_range ({lo:g}, {hi:g})")
    elif is_int:
        lo, hi = 0.0, 255.0
        if lo_seen < lo or hi_seen > hi:
            raise ValueError(
                f"{what}: integer images must lie in 0..255, got {lo_seen:g}..{hi_seen:g}; pass value_range=(lo, hi)"
            )
    else:
        if lo_seen < -1.0 or hi_seen > 1.0:
            raise ValueError(
                f"{what}: float images must lie in [-1, 1], got {lo_seen:g}..{hi_seen:g}; pass value_range=(lo, hi)"
            )
        return a.astype(np.float32)
    return ((a - lo) / (hi - lo) * 2.0 - 1.0).astype(np.float32)


def load_array(path, *, key: str | None = None, value_range=None) -> np.ndarray:
    """Images from a .npy or .npz file as float32 [N, H, W, C] in [-1, 1].

    Accepts [N, H, W] (a channel axis is added) or [N, H, W, C] with C in 1..4. Integer arrays are scaled from
    0..255, float arrays must already lie in [-1, 1]; `value_range=(lo, hi)` rescales from that range instead (any
    dtype). A .npz needs `key` unless it holds exactly one array. Out-of-range values raise; nothing is clipped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise ValueError(f"{path}: unsupported extension {path.suffix!r}; expected .npy or .npz")
    try:
        if suffix == ".npy":
            a = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                if not keys:
                    raise ValueError(f"{path}: the .npz file holds no arrays")
                if key is None:
                    if len(keys) != 1:
                        raise ValueError(f"{path}: holds arrays {keys}; choose one with key=")
                    key = keys[0]
                if key not in keys:
                    raise ValueError(f"{path}: no array {key!r}; it holds {keys}")
                a = z[key]
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise ValueError(f"{path}: unsupported dtype object (pickled arrays are not loaded)") from None
        raise
    return _to_images(np.asarray(a), str(path), value_range)


_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_idx(path) -> np.ndarray:
    """The array of an MNIST-format IDX file (gzip-compressed or not), in native byte order with the header's shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such IDX file: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt or truncated gzip data ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(
            f"{path}: not an IDX file (bad magic number {raw[:4].hex()}; expected 0000 then a type code in "
            f"{sorted(f'{k:02x}' for k in _IDX_TYPES)} and the number of dims)"
        )
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dims need {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    need = math.prod(dims) * dtype.itemsize
    if len(raw) - header != need:
        raise ValueError(
            f"{path}: IDX header promises {need} data bytes for shape {dims}, file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def load_idx_images(path) -> np.ndarray:
    """MNIST-style image file [N, H, W] -> float32 [N, H, W, 1] in [-1, 1] (integers scaled from 0..255)."""
    a = load_idx(path)
    if a.ndim != 3:
        raise ValueError(f"{path}: expected 3-D image data [N, H, W], got shape {a.shape}")
    return _to_images(a, str(path))


def load_idx_labels(path) -> np.ndarray:
    """MNIST-style label file [N] -> int64 [N]."""
    a = load_idx(path)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{path}: expected 1-D integer labels, got shape {a.shape} dtype {a.dtype}")
    return a.astype(np.int64)


_IDX_CODES = {(np.dtype(v).kind, np.dtype(v).itemsize): k for k, v in _IDX_TYPES.items()}


def save_idx(path, array) -> Path:
    """Write `array` (uint8, int8, int16, int32, float32 or float64) as an IDX file; gzip when the name ends in .gz."""
    a = np.asarray(array)
    code = _IDX_CODES.get((a.dtype.kind, a.dtype.itemsize))
    if code is None:
        names = ", ".join(str(np.dtype(v).newbyteorder("=")) for v in _IDX_TYPES.values())
        raise ValueError(f"save_idx: dtype {a.dtype} has no IDX type code; convert to one of {names}")
    if a.ndim > 255 or any(d >= 2**32 for d in a.shape):
        raise ValueError(f"save_idx: shape {a.shape} does not fit an IDX header (<= 255 dims, each < 2**32)")
    raw = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    raw += np.ascontiguousarray(a, dtype=np.dtype(_IDX_TYPES[code])).tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(raw) if path.suffix.lower() == ".gz" else raw)
    return path


def data_mean(images) -> np.ndarray:
    """Per-pixel mean image [H, W, C] float32 of images [N, H, W, C] (the x0 guess of the analytical first step)."""
    a = np.asarray(images)
    if a.ndim != 4:
        raise ValueError(f"data_mean needs images [N, H, W, C], got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"data_mean needs at least one image, got shape {a.shape}")
    return a.mean(axis=0, dtype=np.float64).astype(np.float32)
