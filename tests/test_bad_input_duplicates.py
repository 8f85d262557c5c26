"""Bad input, class 4: duplicates. A JSON object with a repeated key (JSON allows it and Python keeps the last
value silently) is an error naming the key in every file omsjax reads (schedules, zoo manifests, training
configs, evaluation caches) and a skipped line in the JSON-lines archives; a zoo manifest that lists one member
twice is an error naming both entries."""

import json
import shutil

import pytest

import omsjax
from omsjax import cli, files, noise, presets
from omsjax.search import cache
from omsjax.search.archive import Archive, Record, schedule_key
from omsjax.zoo import manifest, store

SCHEDULE = presets.ddim(noise.vp_linear(), 3)


def _repeat_first(text: str, key: str, value: str) -> str:
    """`text` (a JSON object's text) with `"key": value` inserted before its first `"key":`."""
    i = text.index(f'"{key}":')
    return text[:i] + f'"{key}": {value}, ' + text[i:]


def test_a_schedule_with_a_repeated_key_names_it():
    text = _repeat_first(SCHEDULE.to_json(), "ts", "[0.5, 0.1]")
    with pytest.raises(ValueError, match=r"^schedule JSON: the key 'ts' appears twice in one object$"):
        omsjax.Schedule.from_json(text)
    with pytest.raises(ValueError, match=r"the key 'ts' appears twice"):
        omsjax.Schedule.from_json(text.encode())


def test_a_schedule_file_with_a_repeated_key_names_file_and_key(tmp_path, capsys):
    path = tmp_path / "s.json"
    path.write_text(_repeat_first(SCHEDULE.to_json(), "afs", '"none"'))
    with pytest.raises(ValueError, match=rf"schedule file {path}.*the key 'afs' appears twice"):
        omsjax.Schedule.load(path)
    # The CLI: exit 2, one line, the file and the key.
    rc = cli.main(["evaluate", "--schedule", str(path), "--num-samples", "4"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and str(path) in err and "'afs' appears twice" in err


def test_a_nested_repeated_key_is_found_too(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"net": {"channels": 8, "channels": 16}, "steps": 3}')
    with pytest.raises(ValueError, match=rf"^{path} \(a training config\): the key 'channels' appears twice"):
        files.read_json(path, "a training config")


@pytest.fixture
def manifest_dir(tmp_path):
    """A copy of the shipped digits zoo's manifest (only the manifest: `read_manifest` reads nothing else)."""
    shutil.copy(store.DEFAULT_ZOO / "manifest.json", tmp_path / "manifest.json")
    return tmp_path


def test_a_manifest_with_a_repeated_key_names_file_and_key(manifest_dir):
    path = manifest_dir / "manifest.json"
    path.write_text(_repeat_first(path.read_text(), "image_shape", "[8, 8, 1]"))
    with pytest.raises(ValueError, match=rf"^{path} \(a zoo manifest\): the key 'image_shape' appears twice"):
        manifest.read_manifest(manifest_dir)


def test_a_member_listed_twice_names_both_entries(manifest_dir, capsys):
    path = manifest_dir / "manifest.json"
    m = json.loads(path.read_text())
    m["models"].append(dict(m["models"][0]))
    path.write_text(json.dumps(m))
    last = len(m["models"]) - 1
    name = m["models"][0]["name"]
    with pytest.raises(ValueError, match=rf"members 0 and {last} are both named '{name}' \(a member listed twice\?\)"):
        manifest.read_manifest(manifest_dir)
    rc = cli.main(["zoo", "--zoo", str(manifest_dir)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "manifest.json" in err and "both named" in err


def test_an_archive_line_with_a_repeated_key_is_skipped_naming_file_and_line(tmp_path):
    good = Record(schedule_key(SCHEDULE), "e", 1.0, 1.0, 3, json.loads(SCHEDULE.to_json())).to_json()
    path = tmp_path / "archive.jsonl"
    path.write_text(good + "\n" + _repeat_first(good, "fd", "0.5") + "\n")
    with pytest.warns(UserWarning, match=rf"{path}: line 2 skipped.*the key 'fd' appears twice"):
        archive = Archive(path)
    assert len(archive) == 1 and archive.records[0].score == 1.0
    with pytest.raises(ValueError, match="the key 'fd' appears twice"):
        Record.from_json(_repeat_first(good, "fd", "0.5"))


def test_an_evaluation_cache_with_a_repeated_key_names_file_and_key(tmp_path):
    shutil.copytree(store.DEFAULT_ZOO, tmp_path / "zoo")
    path = tmp_path / "zoo" / cache.FILENAME
    path.write_text(_repeat_first(path.read_text(), "machine", '"x"'))
    with pytest.raises(ValueError, match=rf"{path} \(evaluation cache\): the key 'machine' appears twice"):
        cache.load(tmp_path / "zoo")
