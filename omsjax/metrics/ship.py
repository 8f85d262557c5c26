"""`python -m omsjax.metrics --train` (`main`): train the digits classifier of the FD metric and ship it
(parameters, the train split's feature statistics, `info.json` with its accuracy and the FD floors); without
`--train`, print the shipped classifier's info."""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from omsjax import files
from omsjax.data import load_digits
from omsjax.metrics.classifier import (
    ARCHITECTURE,
    DEFAULT_DIR,
    FEATURE_DIM,
    IMAGE_SHAPE,
    accuracy,
    classifier_dir,
    features,
    save_classifier,
    train_classifier,
)
from omsjax.metrics.digits import RefStats, fd, fd_floor
from omsjax.metrics.frechet import feature_stats

__all__ = ["main"]


def _train_and_ship(out: Path, steps: int, seed: int) -> dict[str, Any]:
    x_tr, y_tr = load_digits("train", return_labels=True)
    x_ho, y_ho = load_digits("heldout", return_labels=True)
    t0 = time.perf_counter()
    params = train_classifier(x_tr, y_tr, steps=steps, seed=seed)
    train_s = time.perf_counter() - t0
    acc = accuracy(params, x_ho, y_ho)
    print(f"held-out accuracy {acc:.4f} ({x_ho.shape[0]} images), trained {steps} steps in {train_s:.1f} s")
    save_classifier(params, out)
    mu, cov = feature_stats(features(params, x_tr))
    buf = io.BytesIO()
    np.savez(buf, mu=mu, cov=cov, n=np.int64(x_tr.shape[0]))
    files.write_bytes(out / "ref_stats.npz", buf.getvalue())
    ref = RefStats(mu, cov, x_tr.shape[0])
    floors = {k: fd_floor(n=k, repeats=10, ref=ref, classifier=params) for k in (300, 1000)}
    stat = ("mean", "std", "repeats")
    noise = np.clip(np.random.RandomState(1).randn(x_ho.shape[0], *IMAGE_SHAPE), -1, 1).astype(np.float32)
    info = {
        "heldout_accuracy": acc,
        "train_accuracy": accuracy(params, x_tr, y_tr),
        "train_seconds": round(train_s, 2),
        "steps": steps,
        "batch": 128,
        "lr": 1e-3,
        "seed": seed,
        "augmentation": "random shift by up to 1 pixel (background -1)",
        "architecture": ARCHITECTURE,
        "feature_dim": FEATURE_DIM,
        "train_n": int(x_tr.shape[0]),
        "heldout_n": int(x_ho.shape[0]),
        "fd_floors": {
            "heldout_n300": floors[300]["heldout"],
            **{f"train_resample_n{k}": {key: f[f"train_resample_{key}"] for key in stat} for k, f in floors.items()},
        },
        "fd_clipped_noise_n300": fd(noise, ref=ref, classifier=params),
        "fd_note": "FD vs train-split stats; it grows as N shrinks, so compare with the floor at the same N. "
        "Train-resample subsets are part of the reference (optimistic); the held-out split is unseen.",
        "jax_version": jax.__version__,
    }
    files.write_json(out / "info.json", info)
    return info


def main(argv: list[str] | None = None) -> None:
    """`python -m omsjax.metrics --train` builds the shipped classifier; without `--train` it prints its info."""
    what = "Train the digits classifier behind the FD metric, or print its info."
    ap = argparse.ArgumentParser(prog="python -m omsjax.metrics", description=what)
    ap.add_argument("--train", action="store_true", help="train the classifier and write the shipped folder")
    ap.add_argument("--out", type=Path, default=DEFAULT_DIR, help="classifier folder (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.train:
        info = _train_and_ship(args.out.resolve(), args.steps, args.seed)
    else:
        info = json.loads((classifier_dir(args.out) / "info.json").read_text())
    print(json.dumps(info, indent=2))
