"""Evaluations shipped with a zoo: the preset baselines, evaluated once and read back by every search on it.

A zoo folder may hold `evaluations.json`: {"fingerprint": ..., "machine": ..., "records": [Record, ...]}. The
fingerprint is the SHA-256 of every file of the zoo that an evaluation depends on (the manifest with its
latencies, the members' parameters, the classifier of the default metric), so a zoo that was retrained, changed
or re-measured (`omsjax zoo --remeasure-latency`) no longer matches and its cache is ignored, with a log line. The
records are looked up like the search archive's (`Archive.remember`): by the schedule's key and the evaluator's
`eval_key` (noise seed, number of samples, metric), so a cached FD is used only for the same schedule on the same
noise with the same metric. The FDs were computed on the machine named in the file; another machine's float32
arithmetic may differ in the last digits. `omsjax search --recompute-baselines` ignores the cache.

`write(zoo_dir, records, machine)` writes the file atomically; `load(zoo_dir)` returns (its records, the machine
that made them), or ([], None) when there is none or it does not match the zoo.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from omsjax import files
from omsjax.search.archive import Record

__all__ = ["FILENAME", "fingerprint", "load", "write"]

FILENAME = "evaluations.json"
# None of these changes what an evaluation of the zoo gives (references.npz: the reference samples it ships,
# `workflows.search_job.REFERENCES`, fingerprinted by this too).
_SKIP = {FILENAME, "schedules", "references.npz"}
_log = logging.getLogger(__name__)


def fingerprint(zoo_dir) -> str:
    """SHA-256 of the zoo's files (relative paths and contents, in sorted order), without the cache itself, the
    shipped reference samples and the searched schedules."""
    root = Path(zoo_dir)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if rel.parts[0] in _SKIP or not p.is_file():
            continue
        h.update(str(rel.as_posix()).encode() + b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()


def load(zoo_dir) -> tuple[list[Record], str | None]:
    """(The cached records of `zoo_dir`, the machine that made them), or ([], None): no cache, or a cache of other
    zoo files (logged). A cache that cannot be read is a `ValueError` naming the file and what is wrong."""
    path = Path(zoo_dir) / FILENAME
    if not path.exists():
        return [], None
    data = files.read_json(path, "evaluation cache")
    if not isinstance(data, dict) or not isinstance(data.get("records"), list) or "fingerprint" not in data:
        raise ValueError(f"{path}: expected an object with 'fingerprint' and a 'records' list")
    if data["fingerprint"] != fingerprint(zoo_dir):
        _log.warning("%s was made for other zoo files (changed, retrained or re-measured): not used", path)
        return [], None
    out = []
    for i, d in enumerate(data["records"]):
        try:
            out.append(Record.from_dict(d))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: record {i}: {e}") from None
    return out, str(data.get("machine", "?"))


def write(zoo_dir, records: list[Record], machine: str) -> Path:
    """Write `records` as the zoo's cache (atomically), with the zoo's fingerprint and the machine's name."""
    path = Path(zoo_dir) / FILENAME
    data = {"fingerprint": fingerprint(zoo_dir), "machine": machine, "records": [r.to_dict() for r in records]}
    return files.write_json(path, data, indent=None)
