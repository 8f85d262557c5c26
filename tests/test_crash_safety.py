"""Crash safety of results (issue 14): atomic result files, an append-only archive that survives `kill -9` at any
byte and skips bad lines with a warning naming the file and the line, and the folder lock that refuses a second
search (or optimize-steps run) on the same `--out` before anything loads. Pure file tests and subprocesses that
never sample a model, so the file runs in seconds."""

import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import omsjax
from omsjax import cli, files, noise, plots, presets, zoo
from omsjax.search import evaluate as EV
from omsjax.search.archive import Archive, Record, schedule_key

REPO = Path(__file__).resolve().parent.parent
NS = noise.vp_linear()


def _messages(rec) -> list[str]:
    return [str(w.message) for w in rec]


SCHED = json.loads(presets.ddim(NS, 3).to_json(indent=None))  # a valid schedule: the archive checks the content


def _record(i, **kw) -> Record:
    d = dict(key=f"k{i}", eval_key="seed0-n12", score=float(i), cost=1.0, nfe=3, schedule=SCHED)
    return Record(**{**d, **kw})


# ------------------------------------------------------------------------------------------------ files.py


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    files.write_json(path, {"old": 1})
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # the mode open() gives, not mkstemp's 0600
    plain.unlink()

    def boom(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(OSError, match="simulated"):
        files.write_json(path, {"new": 2})
    monkeypatch.undo()
    with pytest.raises(TypeError):  # unserialisable: nothing is written at all
        files.write_json(path, {"new": object()})
    assert json.loads(path.read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary file left behind
    files.write_json(path, {"new": np.float64(2.5)}, default=float)
    assert json.loads(path.read_text()) == {"new": 2.5}


def test_append_after_a_torn_line_keeps_every_record(tmp_path):
    path = tmp_path / "log.jsonl"
    files.append_jsonl(path, [{"i": 0}, {"i": 1}])
    with open(path, "ab") as fh:  # a writer killed mid-line
        fh.write(b'{"i": 2, "pad": "xx')
    files.append_jsonl(path, [{"i": 3}])
    files.append_jsonl(path, [{"i": 4}])
    with pytest.warns(UserWarning) as rec:
        got = [r["i"] for r in files.read_jsonl(path)]
    assert got == [0, 1, 3, 4]
    assert _messages(rec) == [m for m in _messages(rec) if f"{path}: line 3 skipped" in m] and len(rec) == 1


def test_read_jsonl_skips_bad_lines_naming_file_and_line(tmp_path):
    path = tmp_path / "log.jsonl"
    lines = [b'{"score": 1.5}', b'{"score": 2', b"\xff\xfe\x00\x81 binary", b"[1, 2]", b'"text"',
             b'{"score": "abc"}', b'{"score": Infinity}', b"", b'{"score": 3}']  # fmt: skip
    path.write_bytes(b"\n".join(lines) + b"\n")

    def check(r):
        if not isinstance(r["score"], (int, float)):
            raise ValueError(f"score is {r['score']!r}, not a number")

    with pytest.warns(UserWarning) as rec:
        got = [r["score"] for r in files.read_jsonl(path, check=check)]
    assert got == [1.5, math.inf, 3]  # an infinite score is a valid record; the empty line is no record
    msgs = _messages(rec)
    assert len(msgs) == 5
    for line, m in zip((2, 3, 4, 5, 6), msgs, strict=True):
        assert m.startswith(f"{path}: line {line} skipped"), m
    assert "not a number" in msgs[-1] and "list" in msgs[2]
    assert list(files.read_jsonl(tmp_path / "missing.jsonl")) == []


def test_folder_lock_refuses_a_second_holder_and_is_released(tmp_path):
    out = tmp_path / "out"
    with files.FolderLock(out, what="omsjax search"):
        with pytest.raises(files.FolderLocked, match=rf"{out} is in use by omsjax search \(process {os.getpid()},"):
            files.FolderLock(out).acquire()
    with pytest.raises(RuntimeError, match="boom"), files.FolderLock(out):  # released on an exception too
        raise RuntimeError("boom")
    files.FolderLock(out).acquire().release()


# ------------------------------------------------------------------------------------------------ the archive


def test_archive_skips_invalid_records_with_file_and_line(tmp_path):
    path = tmp_path / "archive.jsonl"
    good = _record(0).to_dict()
    bad = [
        {**good, "key": "k1", "fd": "abc"},  # line 2: a non-numeric score
        {k: v for k, v in good.items() if k != "nfe"} | {"key": "k2"},  # line 3: a missing field
        {**good, "key": "k3", "nfe": "3"},  # line 4: a wrong type
        {**good, "key": "k4", "schedule": True},  # line 5
    ]
    text = [json.dumps(good)] + [json.dumps(d) for d in bad]
    text += [json.dumps({**good, "key": "inf_null", "fd": None}), json.dumps({**good, "key": "inf", "fd": math.inf})]
    path.write_bytes("\n".join(text).encode() + b"\n\x00\x00\xff\xd8 binary\n" + b'{"key": "torn", "eval')
    with pytest.warns(UserWarning) as rec:
        arch = Archive(path)
    assert [r.key for r in arch.records] == ["k0", "inf_null", "inf"]
    assert arch.get("inf", "seed0-n12").score == math.inf and arch.get("inf_null", "seed0-n12").score == math.inf
    msgs = _messages(rec)
    assert [int(m.split(": line ")[1].split()[0]) for m in msgs] == [2, 3, 4, 5, 8, 9]
    assert all(m.startswith(f"{path}: line ") for m in msgs)
    assert "fd is 'abc', not a number or null" in msgs[0] and "missing nfe" in msgs[1] and "nfe is '3'" in msgs[2]
    # The archive still opens and takes new records: appended after the torn line, nothing is glued onto it.
    arch.append(_record(5))
    with pytest.warns(UserWarning) as rec:
        again = Archive(path)
    assert [r.key for r in again.records] == ["k0", "inf_null", "inf", "k5"] and len(rec) == 6
    genome = {g: [0] for g in ("model", "order", "prediction", "corrector", "d1", "relax_type", "d2_half")}
    r = _record(6, score=math.inf, genome={**genome, "afs": 0, "u": [0.5], "relax": [0.0]})  # inf round-trips
    assert Record.from_json(r.to_json()) == r


def test_evaluator_resumes_from_an_archive_with_bad_lines(tmp_path):
    """A search that restarts on a damaged archive starts, finds its evaluated schedules and samples nothing."""
    model = omsjax.Model(lambda p, x, t: 0.0 * x, None, latency=1.0)
    s = presets.ddim(NS, 3)
    path = tmp_path / "archive.jsonl"
    rec = Record(key=schedule_key(s), eval_key="seed0-n12", score=1.25, cost=3.0, nfe=3,
                    schedule=json.loads(s.to_json(indent=None)))  # fmt: skip
    path.write_bytes(b'{"key": 1}\n\xfe\xff\n' + rec.to_json().encode() + b'\n{"key": "x", "fd": [')
    with pytest.warns(UserWarning) as warned:
        ev = EV.Evaluator([model], NS, num_samples=12, archive=path, chunk=4, sample_shape=(8, 8, 1))
    assert [m.split(" skipped")[0] for m in _messages(warned)] == [f"{path}: line {i}" for i in (1, 2, 4)]
    (got,) = ev.evaluate_schedules([s])
    assert ev.evaluated == 0 and got == rec


KILLED_WRITER = """
import json, sys
from omsjax import noise, presets
from omsjax.search.archive import Archive, Record

SCHED = json.loads(presets.ddim(noise.vp_linear(), 3).to_json(indent=None))
arch = Archive(sys.argv[1])
pad = "x" * 2_000_000  # a large record: a kill may land inside its write (a torn line)
i = 0
while True:
    arch.append(Record(key=f"k{i}", eval_key="e", score=float(i), cost=1.0, nfe=3, schedule=SCHED, note=pad))
    print(i, flush=True)  # record i is fully written
    i += 1
"""


def test_kill_9_mid_append_loses_no_reported_record(tmp_path):
    """A writer appending large records through `Archive.append` is SIGKILLed; a resumed run appends more. Every
    record the writer reported as written, and every new one, reads back; at most the torn line is skipped."""
    path = tmp_path / "archive.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"})  # fmt: skip
    try:
        first = [proc.stdout.readline().strip() for _ in range(3)]
        assert all(first), "the writer died before writing 3 records"
        time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        reported = [int(v) for v in first + proc.stdout.read().split()]  # printed after each complete append
    finally:
        proc.kill()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL and reported == list(range(len(reported)))
    new = [f"new{i}" for i in range(3)]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        arch = Archive(path)  # the resumed run
        for k in new:
            arch.append(Record(key=k, eval_key="e", score=0.5, cost=1.0, nfe=3, schedule=SCHED))
        keys = [r.key for r in Archive(path).records]
    in_flight = f"k{len(reported)}"  # killed after its write but before its print, or torn
    assert keys in ([f"k{i}" for i in reported] + new, [f"k{i}" for i in reported] + [in_flight] + new)
    torn = f"{path}: line {len(reported) + 1} skipped"
    assert all(torn in m for m in _messages(rec)) and len(rec) in ((0,) if in_flight in keys else (0, 2))


# ------------------------------------------------------------------------------------------------ the lock


def _no_zoo(*a, **k):
    raise AssertionError("the zoo was loaded although the folder is locked")


HOLDER = """
import sys, time
from omsjax.files import FolderLock

with FolderLock(sys.argv[1], what="omsjax search"):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_second_search_on_one_out_is_refused_before_anything_loads(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text('{"first": "run"}')
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, cwd=REPO,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"})  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(zoo, "load_zoo", _no_zoo)
        rc = cli.main(["search", "--nfe", "3", "--out", str(out), "--quick"])
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert err.startswith(f"omsjax: error: {out} is in use by omsjax search (process {holder.pid}, lock")
        assert (out / "report.json").read_text() == '{"first": "run"}'
        # The kernel releases the lock of a killed holder: no stale lock.
        holder.kill()
        holder.wait(timeout=30)
        files.FolderLock(out).acquire().release()
    finally:
        holder.kill()
        holder.stdout.close()


def test_second_optimize_steps_on_one_out_is_refused_before_anything_loads(tmp_path, capsys, monkeypatch):
    out = tmp_path / "steps"
    monkeypatch.setattr(zoo, "load_zoo", _no_zoo)
    with files.FolderLock(out, what="omsjax optimize-steps"):
        rc = cli.main(["optimize-steps", "--nfe", "3", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.startswith(f"omsjax: error: {out} is in use by omsjax optimize-steps")


# ------------------------------------------------------------------------------------------------ plots


def test_plots_save_is_atomic_in_the_format_of_the_suffix(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    try:
        assert plots.save(fig, tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
        assert b"<svg" in plots.save(fig, tmp_path / "sub" / "a.svg").read_bytes()
        with pytest.raises(ValueError, match="xyz"):  # an unknown format writes nothing, not even a temporary file
            plots.save(fig, tmp_path / "a.xyz")
    finally:
        plt.close(fig)
    grid = plots.save_grid(np.zeros((4, 8, 8, 1)), tmp_path / "grid.png")
    assert grid.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "grid.png", "sub"]
