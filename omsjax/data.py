"""Data: scikit-learn's handwritten digits (the embedded default) and loaders for a user's own images.

Images are float32 NHWC arrays in [-1, 1]. The digits (1,797 real 8x8 grey images, values 0..16, shipped inside
scikit-learn) are scaled as x / 8 - 1 and split once: a permutation from RandomState(0), the first 300 held out.
"""

from __future__ import annotations

import functools
import gzip
import struct
from pathlib import Path

import numpy as np

__all__ = ["DIGITS_SHAPE", "DIGITS_HELDOUT", "load_digits", "load_array", "load_idx_images", "load_idx_labels",
           "load_idx", "save_idx", "data_mean"]  # fmt: skip

DIGITS_SHAPE = (8, 8, 1)
DIGITS_HELDOUT = 300
_SPLITS = ("train", "heldout", "all")


@functools.lru_cache(maxsize=1)
def _digits():
    from sklearn.datasets import load_digits as sk_load

    d = sk_load()
    x = (d.images.astype(np.float64) / 8.0 - 1.0)[..., None]
    perm = np.random.RandomState(0).permutation(len(x))
    return x, d.target.astype(np.int64), perm


def load_digits(split: str = "train", *, return_labels: bool = False, dtype=np.float32):
    """Digits images [N, 8, 8, 1] in [-1, 1] (and int labels): split 'train' (1,497), 'heldout' (300), 'all'."""
    if split not in _SPLITS:
        raise ValueError(f"unknown digits split {split!r}; expected one of {_SPLITS}")
    x, y, perm = _digits()
    idx = {"train": perm[DIGITS_HELDOUT:], "heldout": perm[:DIGITS_HELDOUT], "all": np.arange(len(x))}[split]
    images = x[idx].astype(dtype)
    return (images, y[idx].copy()) if return_labels else images


def _to_images(a: np.ndarray, what: str, value_range=None) -> np.ndarray:
    if a.size == 0:
        raise ValueError(f"{what}: the array is empty")
    if a.dtype == np.bool_ or np.iscomplexobj(a) or a.dtype == object or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{what}: unsupported dtype {a.dtype}; expected integers (0..255) or floats")
    if a.ndim == 3:
        a = a[..., None]
    if a.ndim != 4 or not 1 <= a.shape[-1] <= 4:
        raise ValueError(f"{what}: expected images [N, H, W] or [N, H, W, C] with C in 1..4, got shape {a.shape}")
    if np.issubdtype(a.dtype, np.integer):
        if a.min() < 0 or a.max() > 255:
            raise ValueError(f"{what}: integer images must lie in 0..255, got {a.min()}..{a.max()}")
        return (a.astype(np.float64) / 127.5 - 1.0).astype(np.float32)
    bad = int(np.sum(~np.isfinite(a)))
    if bad:
        raise ValueError(f"{what}: {bad} value(s) are NaN or inf")
    a = a.astype(np.float64)
    if value_range is not None:
        lo, hi = (float(v) for v in value_range)
        if not hi > lo:
            raise ValueError(f"{what}: value_range needs lo < hi, got {value_range}")
        if a.min() < lo or a.max() > hi:
            raise ValueError(f"{what}: values {a.min()}..{a.max()} fall outside value_range {value_range}")
        a = (a - lo) / (hi - lo) * 2.0 - 1.0
    elif a.min() < -1.0 or a.max() > 1.0:
        raise ValueError(f"{what}: float images must lie in [-1, 1] (got {a.min()}..{a.max()}); pass value_range")
    return a.astype(np.float32)


def load_array(path, *, key: str | None = None, value_range=None) -> np.ndarray:
    """Images from a .npy or .npz file as float32 [N, H, W, C] in [-1, 1] (uint8 scaled from 0..255)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such image file: {path}")
    if path.suffix == ".npy":
        a = np.load(path, allow_pickle=False)
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.keys())
            if key is None:
                if len(keys) != 1:
                    raise ValueError(f"{path}: holds arrays {keys}; choose one with key=")
                key = keys[0]
            if key not in keys:
                raise ValueError(f"{path}: no array {key!r}; it holds {keys}")
            a = z[key]
    else:
        raise ValueError(f"{path}: unsupported extension {path.suffix!r}; expected .npy or .npz")
    return _to_images(np.asarray(a), str(path), value_range)


_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_idx(path) -> np.ndarray:
    """The array of an MNIST-format IDX file (optionally gzip-compressed)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such IDX file: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4]!r})")
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != need:
        raise ValueError(
            f"{path}: IDX header promises {need} data bytes for shape {dims}, file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def load_idx_images(path) -> np.ndarray:
    """MNIST-style image file [N, H, W] -> float32 [N, H, W, 1] in [-1, 1]."""
    a = load_idx(path)
    if a.ndim != 3:
        raise ValueError(f"{path}: expected 3-D image data [N, H, W], got shape {a.shape}")
    return _to_images(a, str(path))


def load_idx_labels(path) -> np.ndarray:
    """MNIST-style label file [N] -> int64."""
    a = load_idx(path)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{path}: expected 1-D integer labels, got shape {a.shape} dtype {a.dtype}")
    return a.astype(np.int64)


def save_idx(path, array) -> Path:
    """Write an IDX file (gzip when the name ends in .gz)."""
    a = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_TYPES.items()}
    code = codes.get(a.dtype)
    if code is None:
        raise ValueError(f"save_idx: dtype {a.dtype} has no IDX code")
    raw = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    raw += a.astype(np.dtype(_IDX_TYPES[code])).tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def data_mean(images) -> np.ndarray:
    """Per-pixel mean image [H, W, C] (the x0 guess of the analytical first step 'mean_x0')."""
    a = np.asarray(images)
    if a.ndim != 4:
        raise ValueError(f"data_mean needs images [N, H, W, C], got shape {a.shape}")
    return a.mean(axis=0).astype(np.float32)
