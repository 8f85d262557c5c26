"""Crash-safe files: atomic writes, an append-only JSON-lines log, and an exclusive folder lock.

A result file is either the old one or the new one, never half of either: `write_text` / `write_json` /
`write_bytes` write a temporary file in the same folder, flush and fsync it, then `os.replace` it over the target
(atomic on POSIX and Windows within one file system).

An append-only log (`append_jsonl`) survives a crash at any byte. A killed writer can leave a half-written last
line; the next append first ends that line (it begins a new one when the file does not end in a newline), then
writes its record as one whole line, flushed and fsynced. `read_jsonl` returns the records of every parsable line
and skips the others with a warning that names the file and the line number, so a torn or corrupt line costs
that line only.

`FolderLock` takes an exclusive `fcntl.flock` on `<folder>/.omsjax.lock`: a second process (a second search on
the same `--out`) is refused with an error naming the folder, and the kernel releases the lock when its holder
dies, so a killed run never leaves a stale lock behind.

In a run over several processes (`omsjax.distributed`), process 0 alone writes: on every other process the writes,
appends, folder creations and locks here do nothing (they return as if done), so a shared file system never sees
two writers and a per-host disk never gets a partial copy.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from omsjax.distributed import is_writer

__all__ = [
    "write_bytes",
    "write_text",
    "write_json",
    "read_json",
    "json_object",
    "json_type",
    "unique_keys",
    "append_jsonl",
    "read_jsonl",
    "make_folder",
    "FolderLock",
    "FolderLocked",
]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_NEW_FILE_MODE = 0o666 & ~_umask()  # what open() gives a new file


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (temporary file in the same folder, fsync, rename). Returns the path.
    Only process 0 writes (`omsjax.distributed.is_writer`)."""
    path = Path(path)
    if not is_writer():
        return path
    mode = path.stat().st_mode & 0o7777 if path.exists() else _NEW_FILE_MODE  # mkstemp's file is 0600
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, default=None) -> Path:
    """Write `obj` as JSON to `path` atomically (the text is built first, so an unserialisable object writes
    nothing). `default` is `json.dumps`'s: it turns what JSON cannot hold into what it can."""
    return write_text(path, json.dumps(obj, indent=indent, default=default) + "\n")


def read_json(path: str | os.PathLike, what: str = "") -> Any:
    """The JSON value in the file `path`; a `ValueError` naming the file (and `what` it should hold) when it is not
    UTF-8 JSON (binary, truncated, overwritten)."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"), object_pairs_hook=unique_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        what = f" ({what})" if what else ""
        raise ValueError(f"{path}{what} is not valid JSON: {_short(e)}") from None
    except _RepeatedKey as e:
        raise ValueError(f"{path}{f' ({what})' if what else ''}: {e}") from None


class _RepeatedKey(ValueError):
    pass


def unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """`json.loads`'s `object_pairs_hook` that refuses a key repeated in one object (JSON itself allows it, and
    keeps the last value silently): "the key 'ts' appears twice in one object"."""
    d = {}
    for k, v in pairs:
        if k in d:
            raise _RepeatedKey(f"the key {k!r} appears twice in one object")
        d[k] = v
    return d


def json_type(v) -> str:
    """What a parsed JSON value is, for error messages: "an object", "a list", "a string", "a number", ..."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__)


def json_object(text, what: str, shape: str = "") -> dict:
    """The JSON object of `text` (str, UTF-8 bytes, or a mapping already parsed); a `ValueError` that starts with
    `what` (e.g. "schedule JSON") when it is not UTF-8 text, not JSON, or not an object (`shape` shows one)."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8-sig")
        except UnicodeDecodeError as e:
            bad = bytes(text)[e.start : e.start + 1]
            raise ValueError(f"{what} is not UTF-8 text (byte {e.start} is {bad!r}: a binary file?)") from None
    if isinstance(text, str):
        try:
            d = json.loads(text, object_pairs_hook=unique_keys)
        except json.JSONDecodeError as e:
            raise ValueError(f"{what} is not valid JSON: {e}") from None
        except _RepeatedKey as e:
            raise ValueError(f"{what}: {e}") from None
        except (ValueError, RecursionError) as e:  # an integer of > 4300 digits, nesting too deep
            raise ValueError(f"{what} cannot be read: {type(e).__name__}: {e}") from None
    elif isinstance(text, Mapping):
        d = dict(text)
    else:
        raise ValueError(f"{what} must be text (str or UTF-8 bytes) or a dict, got {type(text).__name__}")
    if not isinstance(d, dict):
        raise ValueError(f"{what} must be an object{' ' + shape if shape else ''}, got {json_type(d)}")
    return d


def append_jsonl(path: str | os.PathLike, records: list[dict]) -> None:
    """Append `records` to the JSON-lines file `path`, one whole line each, then flush and fsync. A file that does
    not end in a newline (a writer killed mid-line) is first ended with one, so the torn line stays one bad line
    and the new records stay whole."""
    if not records or not is_writer():
        return
    text = "".join(json.dumps(r) + "\n" for r in records)
    path = Path(path)
    with open(path, "ab+") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                text = "\n" + text
        fh.seek(0, os.SEEK_END)
        fh.write(text.encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike, *, check: Callable[[dict], None] | None = None) -> Iterator[dict]:
    """The records of the JSON-lines file `path`, in order. A line that is not a JSON object (a torn write, binary
    bytes, a value `check` rejects by raising) is skipped with a warning naming the file and its line number.
    Empty lines are skipped silently. A missing file has no records."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=unique_keys)
                if not isinstance(rec, dict):
                    raise ValueError(f"a JSON {type(rec).__name__}, not an object")
                if check is not None:
                    check(rec)
            except (ValueError, TypeError, KeyError, ArithmeticError, RecursionError) as e:  # Unicode: a ValueError
                warnings.warn(f"{path}: line {lineno} skipped, not a valid record ({_short(e)})", stacklevel=2)
                continue
            yield rec


def _reject_constant(name: str) -> float:
    # json writes float("inf") as Infinity; read it back (an infinite score is a valid record), NaN too.
    return {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}[name]


def _short(e: Exception) -> str:
    if isinstance(e, json.JSONDecodeError):  # its position is within the line: the message alone says more
        return f"not JSON: {e.msg}"
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return msg if len(msg) <= 120 else msg[:117] + "..."


class FolderLocked(RuntimeError):
    """Another process holds the folder's lock."""


def make_folder(path: str | os.PathLike, what: str) -> Path:
    """`path` as an existing folder, created with its parents; else a `ValueError` that starts with `what` (the
    argument or flag that named it, e.g. "--out" or "find_schedule: out=") and says which part is a file, or why
    the folder cannot be made."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise ValueError(f"{what} {path}: {'it' if p == path else p} is a file, not a folder")
    if not is_writer():  # process 0 alone makes folders and writes (`omsjax.distributed`)
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{what} {path}: cannot create the folder ({e.strerror or e})") from None
    return path


class FolderLock:
    """An exclusive, non-blocking lock on a folder, for the lifetime of a `with` block (or `acquire`/`release`).

    >>> with FolderLock(out, what="omsjax search"):
    ...     run()

    The holder writes its process id and `what` (the run it is) into the lock file; a second holder, in this
    process or another, gets `FolderLocked` naming the folder, that run and its process, and the lock file. Where
    the file system cannot lock, it warns and runs unlocked.
    """

    NAME = ".omsjax.lock"

    def __init__(self, folder: str | os.PathLike, *, what: str = "another omsjax run"):
        self.folder = Path(folder)
        self.path = self.folder / self.NAME
        self.what = what
        self._fh = None

    def acquire(self) -> FolderLock:
        if self._fh is not None:
            raise RuntimeError(f"{self.path} is already held by this FolderLock")
        if not is_writer():  # process 0 holds the lock for every process of a multi-process run
            return self
        try:
            import fcntl
        except ImportError:  # no flock (Windows): run unlocked, but say so
            warnings.warn(
                f"cannot lock {self.folder} here (no fcntl); two runs on it at once are not refused", stacklevel=2
            )
            return self
        make_folder(self.folder, f"the folder of {self.what}")
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            fh.seek(0)
            pid, _, what = fh.read().strip().partition(" ")  # the holder's "pid what"
            fh.close()
            if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):  # a file system without flock
                warnings.warn(f"cannot lock {self.folder} ({e}); two runs on it at once are not refused", stacklevel=2)
                return self
            who = f"{what or 'another omsjax run'} (process {pid}" if pid.isdigit() else "another process ("
            raise FolderLocked(
                f"{self.folder} is in use by {who}, lock {self.path}); wait for it to finish or choose another folder"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()} {self.what}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
