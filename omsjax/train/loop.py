"""THE training loop: steps, a windowed log, a tqdm bar and periodic checkpoints, for every kind of training.

`run(step_fn, state, ...)` takes steps state.step + 1 .. `end` with `step_fn(state, step) -> (state, metrics)`,
summarises the metrics every `log_every` steps into a log row (appended to a JSON-lines file if given) and saves
(a `Saving`: `fn(step, state)` every `every` steps and at the end). It holds no randomness and no host-side
iterator state: each step's randomness comes from `fold_in(key, state.step)` inside `step_fn`, so a run stopped at a
checkpoint and resumed from it is the uninterrupted run, bit for bit. `train` is ordinary U-Net training on it
(orbax checkpoints of the full `TrainState` in `out_dir/ckpt`, `out_dir/log.jsonl`); `omsjax.stages.train` is
multi-stage training on it. `check_resume` / `reset_log` are the shared checks of a resumed run's directory.

Nothing is lost to a crash: log rows are appended as whole, fsynced lines (`files.append_jsonl`), the config and
a cut-back log are rewritten atomically, and a resume whose newest checkpoint step does not read back (a file
truncated or overwritten) continues from the newest step that does, with a warning naming the unreadable step
directory (moved aside to `out_dir/ckpt.corrupt`), or fails naming every step directory when none does.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from omsjax import checks, distributed, files
from omsjax.train.checkpoints import checkpoint_manager, restore_intact, save_params, set_aside, truncate_log
from omsjax.train.config import DTYPE, TrainConfig
from omsjax.train.step import TrainState, check_batch, init_state, make_optimizer, replicated_sharding, seed_keys
from omsjax.train.step import train_step as _train_step

__all__ = ["Saving", "run", "train", "run_training", "check_resume", "reset_log", "mean_loss", "check_labels"]


def mean_loss(step: int, window: list[dict]) -> dict:
    """The default log row of a window of step metrics: {"step", "loss" (mean over the window)}."""
    return {"step": step, "loss": float(np.mean(jax.device_get([m["loss"] for m in window])))}


class Saving(NamedTuple):
    """How `run` saves: `fn(step, state)` every `every` steps (None: only at the end) and at the end; with
    `log_rows`, every save also ends a log window (so that a run resumed from any checkpoint writes the rows of the
    uninterrupted run)."""

    fn: Callable[[int, Any], None]
    every: int | None = None
    log_rows: bool = False


def run(
    step_fn: Callable[[Any, int], tuple[Any, dict]],
    state: Any,
    *,
    end: int,
    config: Any,
    log_every: int = 50,
    summarize: Callable[[int, list[dict]], dict] = mean_loss,
    log_file=None,
    saving: Saving | None = None,
    progress: bool = True,
    desc: str = "train",
) -> tuple[Any, list[dict]]:
    """Take the steps `int(state.step) + 1 .. end` (of a run of `config.steps` steps, `config` any training config);
    returns the state and the log rows.

    `step_fn(state, step)` takes optimiser step number `step` (1-based; `state.step == step - 1`). Every
    `log_every` steps and at `end`, `summarize(step, metrics of the window)` gives a row, to which the loop adds
    "images_per_s" (`config.batch_size` images per step); it is appended to `log_file` as a JSON line (a path: whole,
    fsynced lines by `files.append_jsonl`, a torn last line ended first; or an open text file).
    `saving` (a `Saving`; None: never) saves after the step's row.
    """
    checks.count("log_every", log_every)
    start = int(state.step)
    rows, window, running, t0 = [], [], None, time.perf_counter()
    bar = tqdm(total=config.steps, initial=start, disable=not progress, desc=desc, unit="step")
    for step in range(start + 1, end + 1):
        state, metrics = step_fn(state, step)
        window.append(metrics)
        saves = saving is not None and (bool(saving.every and step % saving.every == 0) or step == end)
        if step % log_every == 0 or step == end or (saves and saving.log_rows):
            row = summarize(step, window)
            row["images_per_s"] = len(window) * config.batch_size / max(time.perf_counter() - t0, 1e-9)
            rows.append(row)
            if isinstance(log_file, (str, os.PathLike)):
                files.append_jsonl(log_file, [row])
            elif log_file is not None:
                log_file.write(json.dumps(row) + "\n")
                log_file.flush()
            running = row["loss"] if running is None else 0.9 * running + 0.1 * row["loss"]
            bar.set_postfix(loss=f"{running:.4f}", img_s=f"{row['images_per_s']:.0f}")
            bar.update(len(window))
            window, t0 = [], time.perf_counter()
        if saves:
            saving.fn(step, state)
    bar.close()
    return state, rows


def check_resume(out_dir: Path, old: dict | None, new: dict, *, ignore=("steps",), what: str = "resume") -> None:
    """Refuse to continue a run in `out_dir` recorded with config dict `old` under config dict `new` when a field
    other than `ignore` differs (`old` None: nothing recorded, nothing to check)."""
    if old is None:
        return
    diff = sorted(k for k in new if k not in ignore and old.get(k) != new[k])
    if diff:
        raise ValueError(f"{what}: {out_dir} was trained with a different config (fields {diff} differ)")


def reset_log(path: Path, step: int) -> None:
    """Keep the lines of the JSON-lines log `path` up to `step` (a run killed after its last checkpoint wrote
    more); creates an empty log if there is none."""
    if path.exists():
        truncate_log(path, step)
    else:
        files.write_text(path, "")


def train(
    config: TrainConfig,
    data,
    out_dir,
    *,
    resume: bool = False,
    progress: bool = True,
    log_every: int = 50,
    stop_at: int | None = None,
    init_params: Any = None,
    labels=None,
) -> TrainState:
    """Train to `config.steps` (or stop after step `stop_at`, as if interrupted there); returns the final state.

    `data`: the training images [N, H, W, C] (values roughly in [-1, 1]), put on device once. Checkpoints of the
    full `TrainState` go to `out_dir/ckpt` every `config.checkpoint_every` steps and at the end (the last 2 are
    kept); `out_dir/config.json` records the config; `out_dir/log.jsonl` gets one line
    {"step", "loss", "images_per_s"} every `log_every` steps (loss averaged over those steps).
    `resume=True` restores the latest checkpoint (a fresh start if there is none) and continues; the result
    equals an uninterrupted run's. A newest step that cannot be read is moved to `out_dir/ckpt.corrupt` with a
    warning naming it, and the run continues from the newest intact step; none intact: a `ValueError` naming the
    step directories. `resume=False` refuses a non-empty checkpoint directory. `init_params`
    (fine-tuning) starts from those parameters (EMA too, fresh optimiser state) instead of a fresh initialisation;
    they must have the network's structure and shapes. `labels` int[N] in 0..K-1: the images' classes, required by
    a class-conditional net (`config.net.num_classes` K > 0) and refused otherwise; each step drops them to the
    null label K at rate `config.label_dropout`.
    """
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    checks.count("log_every", log_every)
    end = config.steps if stop_at is None else min(checks.count("stop_at (or None)", stop_at, 0), config.steps)
    check_batch(config)
    data = np.asarray(data, np.float32)
    if data.ndim != 4 or tuple(data.shape[1:]) != config.image_shape:
        raise ValueError(f"data must have shape [N, *image_shape] = [N, {config.image_shape}], got {data.shape}")
    if data.shape[0] < 1:
        raise ValueError("data is empty")
    labels = check_labels(labels, data.shape[0], config.net.num_classes)

    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "ckpt"
    log_path = out_dir / "log.jsonl"
    config_path = out_dir / "config.json"
    if not resume and ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        raise ValueError(
            f"checkpoint directory {ckpt_dir} is not empty: pass resume=True to continue that run, "
            f"or choose another out_dir"
        )
    if resume and config_path.exists():
        old = files.read_json(config_path, "the run's config")
        try:  # a run recorded before a field existed has that field's default
            old = TrainConfig.from_dict(old).to_dict()
        except (ValueError, TypeError):
            pass
        check_resume(out_dir, old, config.to_dict(), ignore=("steps", "checkpoint_every"))
    state = _resume_state(ckpt_dir, config) if resume and ckpt_dir.exists() else None
    files.make_folder(out_dir, "out_dir")
    files.write_json(config_path, config.to_dict())

    rep = replicated_sharding()
    # On every device of every process, each process from its own copies (`distributed.put`: no collective).
    data_dev, labels_dev, key = distributed.put((data, labels, seed_keys(config)[1]), rep)
    if state is None:
        state = distributed.put(_fresh_state(config, init_params), rep)
    mngr = checkpoint_manager(ckpt_dir)
    try:
        truncate_log(log_path, int(state.step))
        state, _ = run(
            lambda state, step: _train_step(config, state, data_dev, key, labels_dev),
            state,
            end=end,
            config=config,
            log_every=log_every,
            log_file=log_path,
            saving=Saving(
                lambda step, state: mngr.save(step, args=ocp.args.StandardSave(state), force=True),
                config.checkpoint_every,
            ),
            progress=progress,
        )
        mngr.wait_until_finished()
    finally:
        mngr.close()
    return state


def run_training(config: TrainConfig, data, out_dir, *, resume: bool = False, progress: bool = True, labels=None):
    """A resumable U-Net training run in the folder `out_dir` (what `omsjax train` does with a `TrainConfig`):
    `train` (OUT/ckpt, OUT/log.jsonl, OUT/config.json), then the EMA parameters in OUT/params. `labels`: the
    images' classes, used by a class-conditional net only. Returns the final state."""
    labels = labels if config.net.num_classes else None
    state = train(config, data, out_dir, resume=resume, progress=progress, labels=labels)
    save_params(Path(out_dir) / "params", state.ema_params)
    return state


def check_labels(labels, n: int, num_classes: int) -> np.ndarray | None:
    """Training labels as int32 [n] in 0..num_classes-1 (None for an unconditional net); errors name what is
    wrong: labels missing or unexpected, their shape, a value out of range."""
    if num_classes == 0:
        if labels is not None:
            raise ValueError("labels given, but config.net.num_classes is 0 (an unconditional net)")
        return None
    if labels is None:
        raise ValueError(f"config.net.num_classes is {num_classes}: a class-conditional net needs the images' labels")
    y = np.asarray(labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape [N] = ({n},), got {y.dtype}{list(y.shape)}")
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        raise ValueError(
            f"labels must be in 0..{num_classes - 1} (config.net.num_classes = {num_classes}); "
            f"label {int(y[bad[0]])} at row {int(bad[0])}"
        )
    return y.astype(np.int32)


def _resume_state(ckpt_dir: Path, config: TrainConfig) -> TrainState | None:
    """The newest intact checkpoint of `ckpt_dir` (None: there is none); each newer step directory that cannot be
    read is moved aside with a warning naming it (so that the run can save that step again)."""
    state, bad = restore_intact(ckpt_dir, config)
    for step_dir, why in bad:
        moved = set_aside(step_dir)
        warnings.warn(
            f"resume: {why}; moved it to {moved} and resuming from step {int(state.step)}, the newest "
            f"intact checkpoint",
            stacklevel=3,
        )
    return state


def _fresh_state(config: TrainConfig, init_params: Any) -> TrainState:
    """`init_state(config)`, or (fine-tuning) a state starting from `init_params` with a fresh optimiser state."""
    state = init_state(config)
    if init_params is None:
        return state
    same = jax.tree.structure(state.params) == jax.tree.structure(init_params) and all(
        tuple(a.shape) == tuple(np.shape(b))
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(init_params), strict=True)
    )
    if not same:
        raise ValueError("init_params do not match the network of config.net (structure or shapes)")
    params = jax.tree.map(lambda a: jnp.asarray(a, DTYPE), init_params)
    return TrainState(
        step=state.step,
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=make_optimizer(config).init(params),
    )
