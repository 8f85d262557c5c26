"""Nothing lost, nothing silent: damaged zoo files, a corrupt newest training checkpoint, bad `--out` paths.

Each damaged file is a one-line ValueError naming the file, field or member (the command: exit code 2 and one
line). Zoo cases corrupt a copy of the session's `tiny_zoo`; training cases reuse test_train.py's small config and
shapes (no new programs); the `--out` cases stop before anything is loaded, sampled or trained.
"""

import collections
import json
import shutil
import types
from pathlib import Path

import jax
import numpy as np
import pytest

from omsjax import cli, files, nets, stages, train, zoo
from omsjax.cli.common import check_out

# test_train.py's resume config and data shapes, so that this module compiles the same programs.
CFG = train.TrainConfig(net=nets.UNetConfig(channels=8, channel_mults=(1,)), steps=40, batch_size=16, lr=2e-3,
                        warmup=5, checkpoint_every=5)  # fmt: skip


def random_data(n=64, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 8, 8, 1)).astype(np.float32)


def garbage(path: Path) -> None:
    """Overwrite `path` with random bytes of its own length."""
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


def halve(path: Path) -> None:
    """Truncate `path` to half its length (a write cut short)."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def largest_file(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def one_line(e) -> str:
    msg = str(e.value if hasattr(e, "value") else e)
    assert "\n" not in msg, msg
    return msg


def run_cli(capsys, argv):
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


# ---------------------------------------------------------------------------------------------- zoo files


@pytest.fixture
def zoo_copy(tmp_path, tiny_zoo):
    """A copy of the tiny zoo ("a": 8 channels, "b": 16), safe to damage."""
    path = tmp_path / "zoo"
    shutil.copytree(tiny_zoo[0], path)
    return path


def edit_manifest(path: Path, edit) -> None:
    m = json.loads((path / "manifest.json").read_text())
    edit(m)
    (path / "manifest.json").write_text(json.dumps(m))


def test_load_zoo_members_carry_the_manifest_image_shape(tiny_zoo):
    models, _, manifest = zoo.load_zoo(tiny_zoo[0])
    assert [m.sample_shape for m in models] == [tuple(manifest["image_shape"])] * 2 == [(8, 8, 1)] * 2


@pytest.mark.parametrize(
    "damage", ["metadata truncated", "largest file truncated", "largest file overwritten"], ids=lambda s: s
)
def test_damaged_checkpoint_file_names_the_member_and_folder(zoo_copy, damage):
    params = zoo_copy / "b" / "params"
    target = params / "_METADATA" if damage.startswith("metadata") else largest_file(params)
    (garbage if damage.endswith("overwritten") else halve)(target)
    with pytest.raises(ValueError) as e:
        zoo.load_zoo(zoo_copy)
    msg = one_line(e)
    assert "member 1 'b'" in msg and str(zoo_copy) in msg and str(params.resolve()) in msg
    assert "cannot be read" in msg


@pytest.mark.parametrize(
    "content, words",
    [
        (b'[{"name": "a"}]', "holds a list"),
        (b'{"omsjax_zoo": 1, "models": [', "not valid JSON"),
        (bytes(range(256)), "not valid JSON"),
        (b'{"omsjax_zoo": 1, "image_shape": [8, 8, 1], "noise_schedule": {}, "models": {}}', "'models'"),
    ],
    ids=["list", "truncated", "binary", "models-not-a-list"],
)
def test_bad_manifest_names_manifest_json(zoo_copy, content, words):
    (zoo_copy / "manifest.json").write_bytes(content)
    with pytest.raises(ValueError) as e:
        zoo.load_zoo(zoo_copy)
    msg = one_line(e)
    assert str(zoo_copy / "manifest.json") in msg and words in msg


def test_cli_reports_a_bad_manifest_in_one_line(zoo_copy, capsys):
    (zoo_copy / "manifest.json").write_bytes(b"[1, 2]")
    rc, _, err = run_cli(capsys, ["zoo", "--zoo", zoo_copy])
    assert rc == 2 and err.count("\n") == 1 and "manifest.json" in err and "Traceback" not in err


@pytest.mark.parametrize("value", ["12.5", True, -1.0, None], ids=["string", "bool", "negative", "null"])
def test_latency_of_the_wrong_type_names_member_and_field(zoo_copy, value):
    edit_manifest(zoo_copy, lambda m: m["models"][1].update(latency_ms=value))
    with pytest.raises(ValueError) as e:
        zoo.load_zoo(zoo_copy)
    msg = one_line(e)
    assert "member 1 'b'" in msg and "'latency_ms'" in msg and "manifest.json" in msg


def test_weights_that_do_not_match_the_config_name_member_and_parameter(zoo_copy):
    # Member "b"'s config says 16 channels; point it at "a"'s 8-channel weights.
    edit_manifest(zoo_copy, lambda m: m["models"][1].update(params="a/params"))
    with pytest.raises(ValueError) as e:
        zoo.load_zoo(zoo_copy)
    msg = one_line(e)
    assert "member 1 'b'" in msg and str(zoo_copy) in msg
    assert "parameter conv_in/bias has shape (8,) in the checkpoint" in msg and "expects (16,)" in msg


def test_manifest_image_shape_that_disagrees_with_the_config_names_both(zoo_copy):
    edit_manifest(zoo_copy, lambda m: m.update(image_shape=[8, 8, 3]))
    with pytest.raises(ValueError) as e:
        zoo.load_zoo(zoo_copy)
    msg = one_line(e)
    assert "member 0 'a'" in msg and "[8, 8, 3]" in msg and "[8, 8, 1]" in msg


def test_image_shape_that_disagrees_with_the_weights_names_both_shapes(zoo_copy):
    # Manifest and configs both say 3 channels; the weights were trained on 1.
    def edit(m):
        m["image_shape"] = [8, 8, 3]
        for entry in m["models"]:
            entry["config"]["image_shape"] = [8, 8, 3]

    edit_manifest(zoo_copy, edit)
    with pytest.raises(ValueError) as e:
        zoo.load_zoo(zoo_copy)
    msg = one_line(e)
    assert "member 0 'a'" in msg and "[8, 8, 3]" in msg
    assert "conv_in/kernel has shape (3, 3, 1, 8) in the checkpoint" in msg and "expects (3, 3, 3, 8)" in msg


def test_manifest_rewrite_is_atomic(zoo_copy, monkeypatch):
    before = (zoo_copy / "manifest.json").read_bytes()
    monkeypatch.setattr(zoo, "measure_latency", lambda *a, **k: 1.0)  # no compilation
    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        zoo.remeasure_latency(zoo_copy, batch=2, repeats=1)
    assert (zoo_copy / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in zoo_copy.iterdir() if p.is_file()) == ["manifest.json"]  # no temporary left


STAGES_CFG = stages.StageTrainConfig(net=stages.MultiStageConfig(boundaries=(0.5,), decoder_channels=(8, 8)), steps=2)


def crash(*args):
    raise OSError("disk full (simulated)")


def test_multistage_config_write_is_atomic(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("OLD")
    monkeypatch.setattr(train, "save_params", lambda path, params: None)
    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        stages.save_checkpoint(tmp_path, STAGES_CFG, {"w": np.zeros(3, np.float32)})
    assert (tmp_path / "config.json").read_text() == "OLD"
    (tmp_path / "config.json").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(ValueError, match="config.json"):
        stages.load_checkpoint(tmp_path)


# ---------------------------------------------------------------------------------------------- training resume


@pytest.fixture(scope="module")
def run10(tmp_path_factory):
    """CFG trained to step 10 (checkpoints 5 and 10, log rows 5 and 10): (folder, state)."""
    out = tmp_path_factory.mktemp("run10") / "run"
    state = train.train(CFG, random_data(), out, progress=False, stop_at=10, log_every=5)
    return out, state


@pytest.fixture
def run_copy(tmp_path, run10):
    out = tmp_path / "run"
    shutil.copytree(run10[0], out)
    return out


def damage_step(run: Path, step: int, how: str) -> Path:
    step_dir = run / "ckpt" / str(step)
    if how == "metadata truncated":
        halve(step_dir / "default" / "_METADATA")
    else:
        garbage(largest_file(step_dir / "default"))
    return step_dir


@pytest.mark.parametrize("how", ["metadata truncated", "largest file overwritten"])
def test_resume_falls_back_to_the_newest_intact_step(run_copy, run10, how):
    step_dir = damage_step(run_copy, 10, how)
    with pytest.raises(ValueError) as e:
        train.restore_state(run_copy, CFG)
    assert str(step_dir) in one_line(e)
    with pytest.warns(UserWarning, match=f"{step_dir}.*resuming from step 5"):
        state = train.train(CFG, random_data(), run_copy, resume=True, progress=False, stop_at=10, log_every=5)
    assert int(state.step) == 10
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(run10[1]), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-6)  # the uninterrupted run
    assert [s for s, _ in train.read_log(run_copy)] == [5, 10]  # the log was cut back to step 5, then continued
    assert (run_copy / "ckpt.corrupt" / "10").is_dir()  # set aside, not deleted
    assert sorted(int(p.name) for p in (run_copy / "ckpt").iterdir() if p.name.isdigit()) == [5, 10]


def test_resume_without_an_intact_step_names_the_step_directories(run_copy, capsys):
    dirs = [damage_step(run_copy, step, "largest file overwritten") for step in (5, 10)]
    with pytest.raises(ValueError) as e:
        train.train(CFG, random_data(), run_copy, resume=True, progress=False, stop_at=10)
    msg = one_line(e)
    assert all(str(d) in msg for d in dirs) and "no intact checkpoint" in msg
    assert all(d.is_dir() for d in dirs)  # nothing moved or deleted
    # The command: exit code 2, one line, before any training step.
    rc, _, err = run_cli(capsys, ["train", "--config", run_copy / "config.json", "--out", run_copy, "--resume",
                                  "--quiet"])  # fmt: skip
    assert rc == 2 and err.count("\n") == 1 and str(dirs[0]) in err and "Traceback" not in err


def test_log_append_after_a_torn_line_starts_a_new_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')  # a writer killed mid-line
    State = collections.namedtuple("State", "step")
    config = types.SimpleNamespace(steps=4, batch_size=1)
    state, rows = train.run(lambda s, step: (State(step), {"loss": 1.0}), State(2), end=4, config=config, log_every=1,
                            log_file=log, progress=False)  # fmt: skip
    assert int(state.step) == 4 and [r["step"] for r in rows] == [3, 4]
    lines = log.read_text().splitlines()
    assert lines[1] == '{"step": 2, "lo' and [json.loads(s)["step"] for s in lines[2:]] == [3, 4]
    with pytest.warns(UserWarning, match="line 2"):  # the torn line is skipped, named
        assert [s for s, _ in train.read_log(tmp_path)] == [1, 3, 4]
    with pytest.warns(UserWarning, match="line 2"):
        train.reset_log(log, 3)
    assert [json.loads(s)["step"] for s in log.read_text().splitlines()] == [1, 3]


# ---------------------------------------------------------------------------------------------- --out checks


def test_check_out_accepts_folders_and_files(tmp_path):
    assert check_out(tmp_path) == tmp_path
    assert check_out(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert check_out(tmp_path / "grid.PNG", suffixes=(".png",)) == tmp_path / "grid.PNG"
    (tmp_path / "grid.png").write_bytes(b"old")  # an existing file of the right type is replaced later
    check_out(tmp_path / "grid.png", suffixes=(".png",))


def bad_outs(tmp: Path):
    """(kind, path, words) of each bad --out: a file where a folder is expected, a folder where a file is, a wrong
    type, a path under a file."""
    (tmp / "a_file").write_text("x")
    (tmp / "a_folder.png").mkdir()
    (tmp / "a_folder.json").mkdir()
    return {
        "folder": [(tmp / "a_file", "is a file"), (tmp / "a_file" / "run", "is a file")],
        "png": [
            (tmp / "x.txt", "type '.txt'"),
            (tmp / "grid", "no file type"),
            (tmp / "a_folder.png", "is a folder"),
            (tmp / "a_file" / "grid.png", "is a file"),
        ],  # fmt: skip
        "json": [
            (tmp / "x.yaml", "type '.yaml'"),
            (tmp / "a_folder.json", "is a folder"),
            (tmp / "a_file" / "x.json", "is a file"),
        ],  # fmt: skip
    }


def test_check_out_rejects_bad_paths_naming_the_flag(tmp_path):
    suffixes = {"folder": None, "png": (".png",), "json": (".json",)}
    for kind, cases in bad_outs(tmp_path).items():
        for path, words in cases:
            with pytest.raises(ValueError) as e:
                check_out(path, flag="--out", suffixes=suffixes[kind])
            msg = one_line(e)
            assert msg.startswith(f"--out {path}") and words in msg, (kind, path, msg)


def fail_if_called(*args, **kwargs):
    raise AssertionError("called before the --out check")


def test_sample_checks_out_before_loading_the_zoo(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(zoo, "load_zoo", fail_if_called)
    for path, words in bad_outs(tmp_path)["png"]:
        rc, _, err = run_cli(capsys, ["sample", "--zoo", tmp_path / "no-zoo", "--solver", "ddim", "--nfe", "3",
                                      "--out", path])  # fmt: skip
        assert rc == 2 and err.startswith(f"omsjax: error: --out {path}") and words in err and err.count("\n") == 1


@pytest.mark.parametrize("command", [["search", "--nfe", "3"], ["optimize-steps", "--nfe", "3"]])
def test_search_and_optimize_steps_check_out_before_loading_the_zoo(tmp_path, capsys, monkeypatch, command):
    monkeypatch.setattr(zoo, "load_zoo", fail_if_called)
    for path, words in bad_outs(tmp_path)["folder"]:
        rc, _, err = run_cli(capsys, [*command, "--zoo", tmp_path / "no-zoo", "--out", path])
        assert rc == 2 and err.startswith(f"omsjax: error: --out {path}") and words in err and err.count("\n") == 1


def test_train_checks_out_and_the_zoo_before_training(tmp_path, capsys, monkeypatch, zoo_copy):
    from omsjax import data

    monkeypatch.setattr(data, "load_digits", fail_if_called)
    monkeypatch.setattr(train, "train", fail_if_called)
    for path, words in bad_outs(tmp_path)["folder"]:
        rc, _, err = run_cli(capsys, ["train", "--config", "tiny", "--out", path])
        assert rc == 2 and err.startswith(f"omsjax: error: --out {path}") and words in err
        rc, _, err = run_cli(capsys, ["train", "--config", "tiny", "--out", tmp_path / "run", "--add-to-zoo", path])
        assert rc == 2 and err.startswith(f"omsjax: error: --add-to-zoo {path}") and words in err
    # A zoo that could not take the model: another image shape, or its manifest unreadable.
    edit_manifest(zoo_copy, lambda m: m.update(image_shape=[8, 8, 3]))
    rc, _, err = run_cli(capsys, ["train", "--config", "tiny", "--out", tmp_path / "run", "--add-to-zoo", zoo_copy])
    assert rc == 2 and "image shape (8, 8, 1), the zoo [8, 8, 3]" in err
    (zoo_copy / "manifest.json").write_bytes(b"\x00\x01")
    rc, _, err = run_cli(capsys, ["train", "--config", "tiny", "--out", tmp_path / "run", "--add-to-zoo", zoo_copy])
    assert rc == 2 and "manifest.json" in err and err.count("\n") == 1
    run = ["train", "--config", "tiny", "--out", tmp_path / "run"]
    cases = [
        (["--latency-batch", "8"], "--latency-batch sets the batch of the latency measured for --add-to-zoo"),
        (["--latency-batch", "0", "--add-to-zoo", zoo_copy], "--latency-batch must be an int >= 1, got 0"),
    ]
    for extra, words in cases:
        rc, _, err = run_cli(capsys, [*run, *extra])
        assert rc == 2 and words in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_stages_commands_check_out_first(tmp_path, capsys, monkeypatch):
    from omsjax import data

    monkeypatch.setattr(data, "load_digits", fail_if_called)
    for path, words in bad_outs(tmp_path)["json"]:
        rc, _, err = run_cli(capsys, ["stages", "cluster", "--out", path])
        assert rc == 2 and err.startswith(f"omsjax: error: --out {path}") and words in err
        rc, _, err = run_cli(capsys, ["stages", "config", "--boundaries", "0.5", "--decoders", "8", "8", "--out", path])
        assert rc == 2 and err.startswith(f"omsjax: error: --out {path}") and words in err
