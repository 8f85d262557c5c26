"""Files of a training run: orbax checkpoints of the `TrainState`, parameter save / load, and `log.jsonl`."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from omsjax.train.config import TrainConfig
from omsjax.train.step import TrainState, init_state, replicated_sharding

__all__ = ["restore_state", "read_log", "save_params", "load_params"]


def _abstract_state(config: TrainConfig) -> TrainState:
    rep = replicated_sharding()
    shapes = jax.eval_shape(functools.partial(init_state, config))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), shapes)


def _checkpoint_manager(ckpt_dir: Path) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        ckpt_dir.resolve(),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True, cleanup_tmp_directories=True),
    )


def restore_state(out_dir, config: TrainConfig, step: int | None = None) -> TrainState:
    """The `TrainState` checkpointed by `train` in `out_dir/ckpt` at `step` (default: the latest)."""
    ckpt_dir = Path(out_dir) / "ckpt"
    if not ckpt_dir.exists():
        raise FileNotFoundError(f"no checkpoints in {ckpt_dir}")
    mngr = _checkpoint_manager(ckpt_dir)
    try:
        step = mngr.latest_step() if step is None else step
        if step is None or step not in mngr.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {ckpt_dir} (have {list(mngr.all_steps())})")
        return mngr.restore(step, args=ocp.args.StandardRestore(_abstract_state(config)))
    finally:
        mngr.close()


def _log_rows(path: Path) -> list[dict]:
    """The JSON lines of a log (a partial last line, from a killed run, is skipped)."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def read_log(out_dir) -> list[tuple[int, float]]:
    """The (step, loss) pairs of `out_dir/log.jsonl` (loss: mean over the steps since the previous line)."""
    return [(int(r["step"]), float(r["loss"])) for r in _log_rows(Path(out_dir) / "log.jsonl")]


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past `step` (written by a run killed after its last checkpoint)."""
    if path.exists():
        path.write_text("".join(json.dumps(r) + "\n" for r in _log_rows(path) if r["step"] <= step))


def _abstract(tree: Any) -> Any:
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def f(x):
        sharding = getattr(x, "sharding", None) or dev
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(f, tree)


def save_params(path, params: Any) -> None:
    """Save a parameter pytree with orbax to the directory `path` (replaced if it exists)."""
    path = Path(path).resolve()
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, params, force=True)
        ckptr.wait_until_finished()


def load_params(path, like: Any) -> Any:
    """Load parameters saved by `save_params`, bit-exact, with the structure, shapes and dtypes of `like`
    (arrays, or `jax.ShapeDtypeStruct`s e.g. from `jax.eval_shape`)."""
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"no parameters at {path}")
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(path, _abstract(like))
