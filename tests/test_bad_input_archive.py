"""Bad input, class 8: archive lines of the right JSON types but the wrong content (a `schedule` that is not a
schedule, a `key` that is not its schedule's, a `genome` missing genes or holding non-numbers) are skipped with
the warning that names the file and the line, as a torn or binary line is, and the archive stays resumable: the
good records are read, new ones are appended after the bad lines and read back."""

import json
import warnings

import jax
import pytest
from search_cases import NS, SPACES, one

from omsjax import presets
from omsjax.search import encoding as E
from omsjax.search.archive import Archive, Record, genome_to_dict, schedule_key

EVAL_KEY = "seed0-n8-test"


def _record(schedule, genome=None, score=1.0) -> dict:
    return Record(schedule_key(schedule), EVAL_KEY, score, 1.0, int(schedule.nfe()), json.loads(schedule.to_json()),
                  genome=genome).to_dict()  # fmt: skip


def _good():
    space = SPACES["joint"]
    g = one(E.random_genomes(space, jax.random.PRNGKey(0), 1), 0)
    return _record(E.to_schedule(space, NS, g), genome_to_dict(g))


def _edit(d, **change):
    d = json.loads(json.dumps(d))
    for path, v in change.items():
        *head, last = path.split("__")
        target = d
        for k in head:
            target = target[k]
        if v is _DROP:
            del target[last]
        else:
            target[last] = v
    return d


_DROP = object()

BAD = {
    "schedule missing ts": (dict(schedule__ts=_DROP), "schedule is not a schedule"),
    "schedule times increase": (dict(schedule__ts=[0.1, 0.5, 0.9, 1.0]), "schedule is not a schedule"),
    "schedule of another length": (dict(schedule__model=[0]), "schedule is not a schedule"),
    "schedule an empty object": (dict(schedule={}), "schedule is not a schedule"),
    "genome missing a gene": (dict(genome__u=_DROP), "genome misses the genes u"),
    "genome with an unknown gene": (dict(genome__colour=[1, 2]), "genome has unknown genes colour"),
    "genome gene of strings": (dict(genome__order=["a", "b", "c", "d"]), "genome gene order is"),
    "genome gene of booleans": (dict(genome__model=[True, False, True, True]), "genome gene model is"),
    "genome gene empty": (dict(genome__relax=[]), "genome gene relax is"),
    "genome afs a list": (dict(genome__afs=[0]), "genome gene afs is"),
    "genome genes of two lengths": (dict(genome__u=[0.0]), "genome genes differ in length"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_line_of_the_wrong_content_is_skipped_naming_file_and_line(case, tmp_path):
    change, why = BAD[case]
    good = _good()
    path = tmp_path / "archive.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(_edit(good, **change)) + "\n")
    with pytest.warns(UserWarning, match=rf"{path}: line 2 skipped, not a valid record \(.*{why}"):
        archive = Archive(path)
    assert [r.key for r in archive.records] == [good["key"]]


def test_the_archive_stays_resumable_after_bad_lines(tmp_path):
    path = tmp_path / "archive.jsonl"
    good = _good()
    bad = [_edit(good, **change) for change, _ in BAD.values()]
    path.write_text("".join(json.dumps(d) + "\n" for d in [good, *bad]))
    with pytest.warns(UserWarning, match="skipped") as caught:
        archive = Archive(path)
    assert len(caught) == len(BAD) and len(archive) == 1
    ddim = presets.ddim(NS, 3)
    archive.append(Record.from_dict(_record(ddim, score=2.0)))
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        reread = Archive(path)
    assert len(again) == len(BAD)  # the same bad lines, nothing new
    assert reread.get(schedule_key(ddim), EVAL_KEY).score == 2.0 and reread.get(good["key"], EVAL_KEY) is not None


def test_the_shipped_archives_and_caches_pass_the_content_check():
    """The check rejects nothing that omsjax writes: every record of the shipped digits zoo's evaluation cache."""
    from omsjax.search import cache
    from omsjax.zoo import store

    records, _ = cache.load(store.DEFAULT_ZOO)
    assert len(records) > 50 and all(Record.from_dict(r.to_dict()) == r for r in records)
