"""The evaluations shipped with a zoo (`omsjax.search.cache`): round trip, a changed zoo voids them, a damaged file
is an error naming it, and an archive that remembers them never writes them."""

import json
import logging

import pytest

from omsjax import noise, presets
from omsjax.search import cache
from omsjax.search.archive import Archive, Record


def _zoo(tmp_path):
    z = tmp_path / "zoo"
    (z / "m0").mkdir(parents=True)
    (z / "manifest.json").write_text('{"models": []}')
    (z / "m0" / "params").write_bytes(b"\x00\x01\x02")
    return z


SCHED = json.loads(presets.ddim(noise.vp_linear(), 5).to_json(indent=None))  # the cache checks the content


def _rec(i, eval_key="seed0-n500"):
    return Record(key=f"k{i}", eval_key=eval_key, score=1.0 + i, cost=3.0, nfe=5, schedule=SCHED)


def test_cache_round_trip_and_what_voids_it(tmp_path, caplog):
    z = _zoo(tmp_path)
    recs = [_rec(0), _rec(1, "seed1000-n1000"), Record(key="k2", eval_key="e", score=float("inf"), cost=1, nfe=1,
                                                       schedule=SCHED)]  # fmt: skip
    path = cache.write(z, recs, "test machine")
    assert path == z / cache.FILENAME
    got, machine = cache.load(z)
    assert machine == "test machine" and [r.to_dict() for r in got] == [r.to_dict() for r in recs]
    before = cache.fingerprint(z)
    (z / "schedules").mkdir()
    (z / "schedules" / "s.json").write_text("{}")  # searched schedules do not change an evaluation
    assert cache.fingerprint(z) == before and cache.load(z)[0]
    (z / "manifest.json").write_text('{"models": [], "latency": 2}')  # e.g. latencies measured again
    with caplog.at_level(logging.WARNING):
        assert cache.load(z) == ([], None)
    assert "other zoo files" in caplog.text
    (z / "manifest.json").write_text('{"models": []}')
    assert cache.load(z)[0]
    (z / "m0" / "params").write_bytes(b"\x00\x01\x03")  # a retrained member
    assert cache.load(z) == ([], None)
    assert cache.load(tmp_path) == ([], None)  # no cache at all


def test_a_damaged_cache_names_the_file(tmp_path):
    z = _zoo(tmp_path)
    (z / cache.FILENAME).write_text('{"fingerprint": "x", "rec')
    with pytest.raises(ValueError, match="evaluations.json"):
        cache.load(z)
    (z / cache.FILENAME).write_text('{"records": 3}')
    with pytest.raises(ValueError, match="'records' list"):
        cache.load(z)
    cache.write(z, [_rec(0)], "m")
    data = json.loads((z / cache.FILENAME).read_text())
    del data["records"][0]["nfe"]
    (z / cache.FILENAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="record 0: missing nfe"):
        cache.load(z)


def test_an_archive_remembers_without_writing(tmp_path):
    path = tmp_path / "archive.jsonl"
    a = Archive(path)
    a.append(_rec(0))
    a.remember([_rec(0), _rec(1), _rec(2)])  # the archive's own record of k0 wins; k1 and k2 are known
    assert [r.key for r in a.select("seed0-n500")] == ["k0"] and len(a) == 1  # not used yet: not the run's
    assert a.get("k1", "seed0-n500").score == 2.0 and a.cache_hits == {("k1", "seed0-n500")}
    assert [r.key for r in a.select("seed0-n500")] == ["k0", "k1"] and len(a) == 2  # k2 (another NFE, say) stays out
    assert len(path.read_text().splitlines()) == 1
    assert len(Archive(path)) == 1
