"""Multi-stage checkpoints on disk: `save_checkpoint` / `load_checkpoint` (config.json, written atomically, and
orbax parameters); a damaged config.json or parameter file is a `ValueError` naming it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from omsjax import files, nets
from omsjax import train as _train
from omsjax.stages.config import StageTrainConfig
from omsjax.stages.network import init_params

__all__ = ["save_checkpoint", "load_checkpoint"]

_DTYPE = jnp.float32  # the training dtype, as in omsjax.train


_CHECKPOINT_VERSION = 1


def save_checkpoint(path, config: StageTrainConfig, params: Any) -> Path:
    """Write `path/config.json` ({"omsjax_multistage": 1, "config": ..., "param_count": ...}) and the parameters
    to `path/params` (orbax, `train.save_params`); returns `path`."""
    if not isinstance(config, StageTrainConfig):
        raise ValueError(f"config must be a StageTrainConfig, got {type(config).__name__}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _train.save_params(path / "params", params)
    meta = {
        "omsjax_multistage": _CHECKPOINT_VERSION,
        "config": config.to_dict(),
        "param_count": nets.param_count(params),
    }
    files.write_json(path / "config.json", meta)
    return path


def load_checkpoint(path) -> tuple[StageTrainConfig, Any]:
    """(config, params) saved by `save_checkpoint`, bit-exact (float32 parameters)."""
    path = Path(path)
    meta_path = path / "config.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"no multi-stage checkpoint at {path} (missing config.json)")
    meta = files.read_json(meta_path, "a multi-stage checkpoint's config")
    if not isinstance(meta, dict) or meta.get("omsjax_multistage") != _CHECKPOINT_VERSION:
        raise ValueError(f"{meta_path}: not an omsjax multi-stage checkpoint of version {_CHECKPOINT_VERSION}")
    config = StageTrainConfig.from_dict(meta["config"])
    like = jax.eval_shape(lambda: init_params(config.net, jax.random.PRNGKey(0), config.image_shape, _DTYPE))
    return config, _train.load_params(path / "params", like)
