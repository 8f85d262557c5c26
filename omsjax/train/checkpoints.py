"""Files of a training run: orbax checkpoints of the `TrainState`, parameter save / load, and `log.jsonl`.

Nothing unreadable passes silently: `load_params` checks the stored shapes against the expected ones first (a
`ValueError` names the first parameter that differs, both shapes and the folder) and turns a checkpoint orbax
cannot read (a truncated or overwritten file) into a one-line `ValueError` naming the folder. `restore_intact`
restores the newest step of a run that reads back, naming the newer steps that do not.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from omsjax import distributed, files
from omsjax.train.config import TrainConfig
from omsjax.train.step import TrainState, init_state, replicated_sharding

__all__ = ["restore_state", "restore_intact", "read_log", "save_params", "load_params"]


def _abstract_state(config: TrainConfig) -> TrainState:
    rep = replicated_sharding()
    shapes = jax.eval_shape(functools.partial(init_state, config))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), shapes)


def checkpoint_manager(ckpt_dir: Path) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        ckpt_dir.resolve(),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True, cleanup_tmp_directories=True),
    )


def _short(e: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (orbax and TensorStore ones run to pages), at most `limit` chars."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    msg = f"{type(e).__name__}: {lines[0].split(' See full TensorStore details')[0]}" if lines else type(e).__name__
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _step_dir(ckpt_dir: Path, step: int) -> Path:
    return ckpt_dir / str(step)


def restore_state(out_dir, config: TrainConfig, step: int | None = None) -> TrainState:
    """The `TrainState` checkpointed by `train` in `out_dir/ckpt` at `step` (default: the latest)."""
    ckpt_dir = Path(out_dir) / "ckpt"
    if not ckpt_dir.exists():
        raise FileNotFoundError(f"no checkpoints in {ckpt_dir}")
    mngr = checkpoint_manager(ckpt_dir)
    try:
        step = mngr.latest_step() if step is None else step
        if step is None or step not in mngr.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {ckpt_dir} (have {list(mngr.all_steps())})")
        return _restore_step(mngr, ckpt_dir, step, config)
    finally:
        mngr.close()


@contextlib.contextmanager
def _reading():
    """Around an orbax read: its absl warnings about a missing or damaged metadata file are off (our error names the
    folder), and a read that fails leaves no tracebacks behind. orbax closes its event loop when one array of a
    damaged checkpoint fails while TensorStore still reads the others; each of those that finishes later wakes the
    closed loop, and Python reports every one on stderr ("Event loop is closed", dozens after our one-line error).
    From its first orbax read this process drops exactly those reports, those of the abandoned read coroutines and
    asyncio's log of their uncollected failures (`_drop_orbax_leftovers`), and passes every other one on."""
    _drop_orbax_leftovers()  # before the read: a failed metadata read leaves them too, and orbax swallows it
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)


def _drop_orbax_leftovers() -> None:
    if not getattr(sys.unraisablehook, "_omsjax_orbax_leftovers", False):
        inner = sys.unraisablehook

        def hook(u):
            if not _orbax_leftover(u):
                inner(u)

        hook._omsjax_orbax_leftovers = True
        sys.unraisablehook = hook
    log = logging.getLogger("asyncio")
    if _not_never_retrieved not in log.filters:
        log.addFilter(_not_never_retrieved)


def _orbax_leftover(u) -> bool:
    """An unraisable report that a failed orbax read leaves: TensorStore waking orbax's closed event loop, or one
    of orbax's read coroutines, abandoned with the read, raising as the garbage collector closes it."""
    top = u.exc_traceback.tb_frame.f_code.co_name if u.exc_traceback is not None else ""
    if u.exc_type is RuntimeError and str(u.exc_value) == "Event loop is closed" and top == "call_soon_threadsafe":
        return True
    code = getattr(u.object, "cr_code", None)
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def _not_never_retrieved(record) -> bool:
    """asyncio's log of a failed orbax read task that nothing awaited ("Task exception was never retrieved"; a
    TensorStore error, wrapped by orbax's own coroutine or, with a process-local checkpointer, asyncio's)."""
    message = record.getMessage()
    ours = "orbax" in message or "tensorstore_spec" in message
    return not (message.startswith("Task exception was never retrieved") and ours)


def _restore_step(mngr: ocp.CheckpointManager, ckpt_dir: Path, step: int, config: TrainConfig) -> TrainState:
    try:
        with _reading():
            return mngr.restore(step, args=ocp.args.StandardRestore(_abstract_state(config)))
    except Exception as e:  # orbax raises anything from JSONDecodeError to a bare Exception on a damaged file
        raise ValueError(
            f"checkpoint step directory {_step_dir(ckpt_dir, step)} cannot be read (a truncated or "
            f"overwritten file?): {_short(e)}"
        ) from None


def restore_intact(ckpt_dir, config: TrainConfig) -> tuple[TrainState | None, list[tuple[Path, str]]]:
    """(the state of the newest step in `ckpt_dir` that reads back, [(step directory, why) of each newer step that
    does not]); (None, []) without checkpoints. Every step unreadable: a `ValueError` naming each directory."""
    ckpt_dir = Path(ckpt_dir)
    mngr = checkpoint_manager(ckpt_dir)
    bad: list[tuple[Path, str]] = []
    try:
        for step in sorted(mngr.all_steps(), reverse=True):
            try:
                return _restore_step(mngr, ckpt_dir, step, config), bad
            except ValueError as e:
                bad.append((_step_dir(ckpt_dir, step), str(e)))
    finally:
        mngr.close()
    if bad:
        dirs = ", ".join(str(d) for d, _ in bad)
        raise ValueError(
            f"no intact checkpoint in {ckpt_dir} to resume from: every step directory ({dirs}) cannot "
            f"be read; {bad[0][1]}"
        )
    return None, bad


def set_aside(step_dir: Path) -> Path:
    """Move an unreadable step directory out of the checkpoint folder (to `<run>/ckpt.corrupt/<step>`, numbered if
    taken), so that the run can save that step again; returns where it went."""
    target = step_dir.parent.parent / "ckpt.corrupt" / step_dir.name
    k = 1
    while target.exists():
        target = target.with_name(f"{step_dir.name}.{k}")
        k += 1
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(step_dir, target)
    return target


def _log_rows(path: Path) -> list[dict]:
    """The JSON lines of a log with a "step" (a torn line from a killed run, or any unreadable one, is skipped with
    a warning naming the file and the line)."""

    def check(row: dict) -> None:
        int(row["step"])

    return list(files.read_jsonl(path, check=check))


def read_log(out_dir) -> list[tuple[int, float]]:
    """The (step, loss) pairs of `out_dir/log.jsonl` (loss: mean over the steps since the previous line)."""
    return [(int(r["step"]), float(r["loss"])) for r in _log_rows(Path(out_dir) / "log.jsonl")]


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines past `step` (written by a run killed after its last checkpoint); rewritten atomically."""
    if path.exists():
        files.write_text(path, "".join(json.dumps(r) + "\n" for r in _log_rows(path) if int(r["step"]) <= step))


def _abstract(tree: Any) -> Any:
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def f(x):
        sharding = getattr(x, "sharding", None) or dev
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(f, tree)


def save_params(path, params: Any) -> None:
    """Save a parameter pytree with orbax to the directory `path` (replaced if it exists); process 0 alone writes
    (`omsjax.distributed`)."""
    path = Path(path).resolve()
    params = jax.tree.map(distributed.allgather, params)  # host copies (a collective only for split arrays)
    if not distributed.is_writer():
        return
    with distributed.local_checkpointer() as ckptr:
        ckptr.save(path, params, force=True)
        ckptr.wait_until_finished()


def _key(path) -> tuple[str, ...]:
    """A key path as plain names, the same for a NamedTuple field and the dict key orbax stores it under."""
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _shapes(tree: Any) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{key path: shape} of the array leaves of `tree` (arrays, `ShapeDtypeStruct`s or orbax's array metadata)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_key(p): tuple(x.shape) for p, x in leaves if getattr(x, "shape", None) is not None}


def _mismatch(stored: dict, expected: dict, *, missing: bool, by: str) -> str | None:
    """The first parameter whose stored shape differs from the expected one (or, with `missing`, that is not
    stored), as words; None if there is none."""
    for key, shape in expected.items():
        name = "/".join(key)
        if key in stored and stored[key] != shape:
            return f"parameter {name} has shape {stored[key]} in the checkpoint, {by} expects {shape}"
        if missing and key not in stored:
            return f"parameter {name} (shape {shape}) is not in the checkpoint"
    return None


def load_params(path, like: Any, *, expected_by: str = "the config") -> Any:
    """Load parameters saved by `save_params`, bit-exact, with the structure, shapes and dtypes of `like`
    (arrays, or `jax.ShapeDtypeStruct`s e.g. from `jax.eval_shape`).

    A `ValueError` naming `path` when the stored shapes differ from `like`'s (the first differing parameter, its
    stored shape and the one `expected_by` expects) or a file of the checkpoint cannot be read (truncated or
    overwritten)."""
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"no parameters at {path}")
    expected = _shapes(like)
    with distributed.local_checkpointer() as ckptr:
        try:  # orbax logs a damaged _METADATA and returns None
            with _reading():
                tree = ckptr.metadata(path).item_metadata
            stored = {} if tree is None else _shapes(tree)
        except Exception:
            stored = {}
        wrong = _mismatch(stored, expected, missing=False, by=expected_by)
        if wrong is not None:
            raise ValueError(f"parameters at {path}: {wrong}")
        try:
            with _reading():
                return ckptr.restore(path, _abstract(like))
        except Exception as e:  # orbax raises anything from JSONDecodeError to a bare Exception on a damaged file
            wrong = _mismatch(stored, expected, missing=bool(stored), by=expected_by)
            if wrong is not None:
                raise ValueError(f"parameters at {path}: {wrong}") from None
            raise ValueError(
                f"parameters at {path} cannot be read (a truncated or overwritten file?): {_short(e)}"
            ) from None
