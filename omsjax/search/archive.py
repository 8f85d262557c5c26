"""The search's archive of evaluated schedules: `Record` (one evaluation: the schedule, its score, cost, NFE, the
genome it came from) and `Archive`, a JSONL file, one line per evaluated schedule, keyed by the schedule's canonical
JSON (`schedule_key`) and the evaluation settings (`eval_key`: noise seed, sample count, metric, conditioning).

It is appended to as results arrive (`files.append_jsonl`: whole lines, fsynced), so an interrupted search that
reopens it re-evaluates nothing; a line torn by a killed run, or one that is not a valid record, is skipped with a
warning naming the file and the line. `remember` adds records that are looked up but never written (a zoo's shipped
evaluations, `search.cache`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from omsjax import distributed, files, usf
from omsjax.schedule import Schedule
from omsjax.search.encoding import Genome

__all__ = ["Record", "Archive", "schedule_key", "same_schedule", "genome_to_dict", "genome_from_dict"]


def schedule_key(schedule: Schedule) -> str:
    """A stable id of a concrete schedule: sha1 of its canonical JSON."""
    return hashlib.sha1(schedule.to_json(indent=None).encode()).hexdigest()[:16]


def same_schedule(a: Schedule, b: Schedule, rtol: float = 1e-5) -> bool:
    """Whether two concrete schedules are the same up to float rounding: every discrete decision equal, every real
    field (times, D_2 scale, guidance, and the linear relaxation coefficient where a step's relaxation is linear:
    the only place the USF step reads it) within `rtol`. A genome decoded from a preset gives the preset's times
    to float32 precision only and may carry an unused coefficient (another `schedule_key`, the same samples): this
    tells such a twin apart from a genuinely new schedule."""
    if a.num_steps != b.num_steps:
        return False
    linear = np.asarray(a.relax_type) == usf.RELAX_LINEAR
    for name in Schedule._fields:
        x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        if name == "relax" and x.shape == y.shape == linear.shape:
            x, y = np.where(linear, x, 0.0), np.where(linear, y, 0.0)
        if x.shape != y.shape:
            return False
        same = np.allclose(x, y, rtol=rtol, atol=0.0) if x.dtype.kind == "f" else np.array_equal(x, y)
        if not same:
            return False
    return True


def genome_to_dict(g: Genome) -> dict:
    """A genome as JSON-ready lists (one per gene; the archive's "genome" field). A gene the space does not search
    (None: the guidance gene) has no entry, so unguided archives are what they were before it existed."""
    return {k: np.asarray(v).tolist() for k, v in g._asdict().items() if v is not None}


def genome_from_dict(d: dict) -> Genome:
    """The inverse of `genome_to_dict`: continuous genes as floats of the default precision, the others int32; a
    missing optional gene (`guidance`) is None."""
    f = jnp.result_type(float)
    optional = {k for k, v in Genome._field_defaults.items() if v is None}
    return Genome(
        **{
            k: jnp.asarray(d[k], f if k in ("u", "relax") else jnp.int32)
            for k in Genome._fields
            if k in d or k not in optional
        }
    )


# An archive line's fields: the JSON types each may have, and how the warning about a wrong one names them.
_NUMBER = (int, float)
_FIELDS = {
    "key": (str, "a string"),
    "eval_key": (str, "a string"),
    "fd": ((*_NUMBER, type(None)), "a number or null"),
    "cost": (_NUMBER, "a number"),
    "nfe": (int, "an integer"),
    "schedule": (dict, "an object"),
    "genome": ((dict, type(None)), "an object or null"),
    "stage": (int, "an integer"),
    "seconds": (_NUMBER, "a number"),
    "note": (str, "a string"),
    "extras": (dict, "an object"),
}
_REQUIRED = ("key", "eval_key", "fd", "cost", "nfe", "schedule")


def _check_content(kw: dict) -> None:
    """A record's fields of the right JSON types must also hold what they name: `schedule` a valid schedule,
    `genome` (when given) every required gene, each a list of numbers of one length (`afs` one number). Raises
    `ValueError` naming the field. (`key` is not recomputed: a later version may write a schedule's JSON, and so
    its key, differently, and its records must still read.)"""
    try:
        Schedule.from_json(kw["schedule"])
    except ValueError as e:
        raise ValueError(f"schedule is not a schedule: {e}") from None
    g = kw.get("genome")
    if g is None:
        return
    missing = [k for k in Genome._fields if k not in g and k not in Genome._field_defaults]
    if missing:
        raise ValueError(f"genome misses the genes {', '.join(missing)}")
    if set(g) - set(Genome._fields):
        raise ValueError(f"genome has unknown genes {', '.join(sorted(set(g) - set(Genome._fields)))}")
    for k, v in g.items():
        vals = [v] if k == "afs" else v if isinstance(v, list) and v else [None]
        if any(isinstance(x, bool) or not isinstance(x, _NUMBER) or not math.isfinite(x) for x in vals):
            raise ValueError(f"genome gene {k} is {v!r}, not {'a number' if k == 'afs' else 'a list of numbers'}")
    if len({len(v) for k, v in g.items() if k != "afs"}) != 1:
        raise ValueError(f"genome genes differ in length: { {k: len(v) for k, v in g.items() if k != 'afs'} }")


@dataclasses.dataclass
class Record:
    """One evaluated schedule. `score` is the evaluator's metric value, lower is better (the digits FD by default;
    inf for a diverged schedule); the archive's JSON keeps it under the key "fd", its first name, so archives and
    the zoos' shipped evaluations read unchanged."""

    key: str
    eval_key: str
    score: float
    cost: float
    nfe: int
    schedule: dict
    genome: dict | None = None
    stage: int = 0
    seconds: float = 0.0
    note: str = ""  # why the score is inf: the first non-finite step and its cause (`sampler.first_nonfinite_step`)
    extras: dict = dataclasses.field(default_factory=dict)  # other metrics of the same samples (`Evaluator.also`)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        score = d.pop("score")  # JSON has no inf: null
        d = {"key": d.pop("key"), "eval_key": d.pop("eval_key"), "fd": score if np.isfinite(score) else None, **d}
        d["extras"] = {k: None if not np.isfinite(v) else v for k, v in self.extras.items()}
        if not d["extras"]:
            del d["extras"]  # records without them keep their JSON
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> Record:
        """The record of an archive line's object; raises `ValueError` naming the field that is missing or of the
        wrong type. "fd" (the score) is a number or null (inf: a diverged schedule); fields it does not know are
        ignored."""
        missing = [f for f in _REQUIRED if f not in d]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        kw = {f: d[f] for f in _FIELDS if f in d}
        for f, v in kw.items():
            types, what = _FIELDS[f]
            if isinstance(v, bool) or not isinstance(v, types):
                raise ValueError(f"{f} is {v!r}, not {what}")
        _check_content(kw)
        fd = kw.pop("fd")
        fd = math.inf if fd is None else float(fd)
        kw["score"] = math.inf if math.isnan(fd) else fd  # null or NaN: diverged, the worst score
        kw.update({f: float(kw[f]) for f in ("cost", "seconds") if f in kw})
        if "extras" in kw:
            bad = [
                k
                for k, v in kw["extras"].items()
                if v is not None and (isinstance(v, bool) or not isinstance(v, _NUMBER))
            ]
            if bad:
                raise ValueError(f"extras {bad[0]!r} is {kw['extras'][bad[0]]!r}, not a number or null")
            kw["extras"] = {k: math.inf if v is None else float(v) for k, v in kw["extras"].items()}
        return cls(**kw)

    @classmethod
    def from_json(cls, line: str) -> Record:
        return cls.from_dict(json.loads(line, object_pairs_hook=files.unique_keys))

    def to_schedule(self) -> Schedule:
        return Schedule.from_json(self.schedule)


class Archive:
    """Append-only JSONL of `Record`s, written with `files.append_jsonl`: a record is one whole line, flushed and
    fsynced, and a line torn by a killed run is ended before the next record. Reading skips a line that is torn,
    not JSON, or not a valid record (`Record.from_dict`) with a warning naming the file and the line number.
    Over several processes, process 0 alone reads and writes the file; the others get its records at start."""

    def __init__(self, path=None):
        self.path = None if path is None else Path(path)
        self.records: list[Record] = []
        self._index: dict[tuple[str, str], Record] = {}
        self._cached: set[tuple[str, str]] = set()  # remembered (`remember`), not in the file
        self._unused: set[tuple[str, str]] = set()  # remembered and not yet returned by `get`
        if self.path is not None:
            # Process 0 reads the file and sends its records to the other processes (`omsjax.distributed`): they
            # need not see the file (a pod's hosts have their own disks), and they resume from the same records.
            found = distributed.broadcast(self._read() if distributed.is_writer() else None)
            if isinstance(found, Exception):  # process 0's error, raised on every process
                raise found
            for d in found:
                self._add(Record.from_dict(d))

    def _read(self) -> list[dict] | Exception:
        """The file's valid records, or the error that reading it raised."""
        if self.path.is_dir():
            return ValueError(f"archive {self.path} is a folder, not a JSON-lines file (give the file's path)")
        try:
            return list(files.read_jsonl(self.path, check=Record.from_dict))
        except (ValueError, OSError) as e:
            return e

    def _add(self, r: Record) -> None:
        if (r.key, r.eval_key) not in self._index:
            self.records.append(r)
        self._index[(r.key, r.eval_key)] = r

    def get(self, key: str, eval_key: str) -> Record | None:
        r = self._index.get((key, eval_key))
        if r is not None:
            self._unused.discard((key, eval_key))
        return r

    def remember(self, records) -> None:
        """Make `records` (e.g. a zoo's cached evaluations, `search.cache`) known without writing them to the file;
        records already in the archive win. A remembered record joins `select` and `len` once `get` has returned
        it (a search used it), not before: a cache of other NFEs or noise stays out of a search's records.
        `cache_hits` holds the (key, eval_key) pairs of those used."""
        for r in records:
            if (r.key, r.eval_key) not in self._index:
                self._add(r)
                self._cached.add((r.key, r.eval_key))
                self._unused.add((r.key, r.eval_key))

    @property
    def cache_hits(self) -> set[tuple[str, str]]:
        """The remembered records that `get` has returned."""
        return self._cached - self._unused

    def append(self, r: Record) -> None:
        """Add `r` and append it to the file (flushed and fsynced before this returns)."""
        self._add(r)
        if self.path is not None:
            files.make_folder(self.path.parent, f"the folder of the archive {self.path}")
            files.append_jsonl(self.path, [r.to_dict()])

    def select(self, eval_key: str) -> list[Record]:
        return [r for r in self.records if r.eval_key == eval_key and (r.key, r.eval_key) not in self._unused]

    def __len__(self) -> int:
        return len(self.records) - len(self._unused)
