"""Many processes (omsjax.distributed): 2 processes x 2 CPU devices on localhost, joined with gloo collectives
(tests/multiprocess.py; a timeout kills them, so a hang fails), against the same code in one process on one
device. Also the one-process behaviour of `omsjax.distributed` and of the writer rule in `omsjax.files`."""

import json
import signal
import sys
import time

import numpy as np
import pytest
from multiprocess import PRELUDE, REPO, free_port, quiet, run_cli, run_script, start, wait

import omsjax
from omsjax import distributed, files
from omsjax.cli.entry import main

# Scores of 8 presets by the Evaluator: on the tiny zoo with the default digits FD (reduced on the devices) and a
# host metric, on the exact Gaussian mixture with a host metric and a FeatureMetric of its own; then the tiny zoo
# again on a 2 x 2 split of the devices chosen by hand (`on_mesh`), where there are 4 devices. The presets are
# well-conditioned ones: float32 rounding differs with the batch each device runs, and a schedule that amplifies
# it (singlestep DPM-Solver-2 at NFE 6 on this mixture) moves a score by 2e-5.
EVALUATOR_SCRIPT = """
import json
import jax, numpy as np
from search_cases import tiny_zoo, NS
from omsjax import metrics, oracles, presets
from omsjax.metrics.device import FeatureMetric, frechet_of_sums
from omsjax.search.evaluate import Evaluator

class MeanCovFD(FeatureMetric):  # the Fréchet distance of the samples' own coordinates to N(0, I)
    name = "mean_cov_fd"
    @staticmethod
    def per_sample(args, x, cond):
        return x.reshape(x.shape[0], -1), x[:, :1] * 0
    def finalize(self, sums):
        return frechet_of_sums(sums, np.zeros(2), np.eye(2), np.zeros(2))

def eight(ns, model):  # one length (NFE 4): one compiled program per evaluator
    return [presets.ddim(ns, 4, model=model), presets.ddim(ns, 4, model=model, skip="logSNR"),
            presets.dpm_solver_pp(ns, 4, 2, model=model), presets.dpm_solver_pp(ns, 4, 3, model=model),
            presets.unipc(ns, 4, 2, model=model), presets.unipc(ns, 4, 3, model=model, skip="time_quadratic"),
            presets.dpm_solver_pp(ns, 4, 2, model=model, skip="time_uniform"),
            presets.ddim(ns, 4, model=model, skip="time_quadratic")]

host = lambda x, x_T: float(np.mean(np.abs(x - x_T)))
zoo = tiny_zoo()
gmm = oracles.GaussianMixture.create([[-1.0, 0.5], [1.5, -0.5]], [0.6, 0.8], [0.4, 0.6])
out = {}
for name, kw in [("tiny_fd", {}), ("tiny_host", {"metric": host})]:
    ev = Evaluator(zoo, NS, num_samples=100, sample_shape=(8, 8, 1), chunk=4, **kw)
    out[name] = [r.score for r in ev.evaluate_schedules(eight(NS, 1))]
    if jax.device_count() == 4:
        out[name + "_2x2"] = [r.score for r in ev.on_mesh(2, 2).evaluate_schedules(eight(NS, 1))]
for name, metric in [("gmm_host", host), ("gmm_device", MeanCovFD())]:
    ev = Evaluator(gmm.model(NS), NS, num_samples=99, sample_shape=(2,), chunk=3, metric=metric)
    out[name] = [r.score for r in ev.evaluate_schedules(eight(NS, 0))]
print("RESULT", json.dumps(out))
"""


def _result(finished) -> dict:
    assert finished.returncode == 0, quiet(finished.stderr)[-4000:]
    line = next(x for x in finished.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_evaluator_scores_on_two_processes_equal_one_device():
    one = _result(run_script(EVALUATOR_SCRIPT, processes=1, devices=1)[0])
    two = [_result(f) for f in run_script(EVALUATOR_SCRIPT, processes=2, devices=2)]
    assert two[0] == two[1]  # process 0's scores, sent to process 1
    for name in ("tiny_fd", "tiny_host", "gmm_host", "gmm_device"):
        assert len(one[name]) == 8 and np.all(np.isfinite(one[name])), name
        np.testing.assert_allclose(two[0][name], one[name], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(two[0]["tiny_fd_2x2"], one["tiny_fd"], rtol=1e-5)
    np.testing.assert_allclose(two[0]["tiny_host_2x2"], one["tiny_host"], rtol=1e-5)


# find_schedule(quick=True) on the tiny zoo, archived in OUT; its metric takes SLEEP s a schedule (on process 0),
# so that a run can be killed mid-search.
FIND_SCRIPT = """
import json, time
from search_cases import tiny_zoo, NS
from omsjax.search import find_schedule

def slow_metric(x, x_T):
    time.sleep(SLEEP)
    return float(abs(x).mean())

res = find_schedule(tiny_zoo(), NS, metric=slow_metric, key=3, nfe=4, quick=True, sample_shape=(8, 8, 1), out=OUT)
print("RESULT", json.dumps({"schedule": res.schedule.to_json(), "score": res.score}))
"""


@pytest.mark.slow(seconds=150)
def test_find_schedule_on_two_processes_killed_and_resumed(tmp_path):
    """find_schedule(quick=True) on 2 x 2 devices: the same schedule on both processes as in one process on one
    device, its score to 1e-5, the archive's records once. Then a run with process 1 killed mid-search: process 0
    exits with an error within the heartbeat timeout (10 s; not a hang), the archive keeps every record finished
    before, and a rerun on 2 processes resumes from it: it evaluates only what is missing and ends with the
    uninterrupted run's schedule and archive."""
    script = {name: FIND_SCRIPT.replace("OUT", repr(str(tmp_path / name))) for name in ("one", "two", "killed")}
    script = {name: code.replace("SLEEP", "0.25" if name == "killed" else "0") for name, code in script.items()}
    one = _result(run_script(script["one"], processes=1, devices=1, timeout=400)[0])
    two = [_result(f) for f in run_script(script["two"], processes=2, devices=2, timeout=400)]
    assert two[0] == two[1]
    assert two[0]["schedule"] == one["schedule"]
    np.testing.assert_allclose(two[0]["score"], one["score"], rtol=1e-5)
    records = list(_lines(tmp_path / "two" / "archive.jsonl"))
    assert len({(r["key"], r["eval_key"]) for r in records}) == len(records) > 8
    assert (tmp_path / "two" / "schedule.json").exists() and (tmp_path / "two" / "report.json").exists()
    # Killed once the archive has 3 records.
    out = tmp_path / "killed"
    coordinator = f"localhost:{free_port()}"
    procs = start([[sys.executable, "-c", PRELUDE + script["killed"]]] * 2, 2, coordinator, 10, REPO)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(_lines(out / "archive.jsonl"))) < 3:
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    first = wait(procs[:1], timeout=120)[0]
    waited = time.monotonic() - killed_at
    assert first.returncode != 0 and waited < 60, (first.returncode, waited, quiet(first.stderr)[-3000:])
    assert "stopped sending heartbeats" in first.stderr and "\n1\n" in first.stderr  # names process 1
    kept = list(_lines(out / "archive.jsonl"))
    assert 3 <= len(kept) < len(records)
    again = [_result(f) for f in run_script(script["killed"].replace("0.25", "0"), processes=2, timeout=400)]
    whole = list(_lines(out / "archive.jsonl"))
    assert whole[: len(kept)] == kept  # nothing lost or rewritten
    assert again[0]["schedule"] == one["schedule"] and len(whole) == len(records)  # nothing evaluated twice


@pytest.mark.slow(seconds=150)
def test_omsjax_search_on_two_processes(tmp_path):
    """`omsjax search --quick` on 2 processes (one device each): both print the same result, and the files are
    written once, by process 0 (one archive line per record)."""
    out = tmp_path / "run"
    two = run_cli(["search", "--nfe", "5", "--quick", "--out", str(out)], processes=2, devices=1, timeout=500)
    for f in two:
        assert f.returncode == 0, quiet(f.stderr)[-4000:]
    assert "process 0 of 2: 1 local devices of 2" in two[0].stderr and "process 1 of 2" in two[1].stderr
    assert two[0].stdout.splitlines()[-3:] == two[1].stdout.splitlines()[-3:]
    records = list(_lines(out / "archive.jsonl"))
    assert len({(r["key"], r["eval_key"]) for r in records}) == len(records) > 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".omsjax.lock", "archive.jsonl", "pareto.png", "report.json", "samples.png", "schedule.json"]
    )


TRAIN_SCRIPT = """
import json, pathlib, sys
import jax, numpy as np
from omsjax import nets, train
cfg = train.TrainConfig(net=nets.UNetConfig(channels=8, channel_mults=(1,)), steps=4, batch_size=8, lr=2e-3,
                        warmup=1, checkpoint_every=2)
data = np.asarray(np.random.default_rng(0).uniform(-1, 1, (32, 8, 8, 1)), np.float32)
out = pathlib.Path(OUT)
state = train.train(cfg, data, out, progress=False, stop_at=2)  # as if interrupted after step 2
state = train.train(cfg, data, out, progress=False, resume=True)  # resumed from the checkpoint of step 2
leaves = [np.asarray(a).ravel().tolist() for a in jax.tree.leaves(state.params)]
print("RESULT", json.dumps({"step": int(state.step), "params": leaves}))
"""


@pytest.mark.slow(seconds=60)
def test_training_on_two_processes_equals_one_device(tmp_path):
    """4 steps of a tiny U-Net on 2 x 2 devices, interrupted after step 2 and resumed from the orbax checkpoint
    that both processes saved together: the parameters of one process on one device, to 1e-5."""
    runs = {}
    for name, (p, d) in {"two": (2, 2), "one": (1, 1)}.items():
        script = TRAIN_SCRIPT.replace("OUT", repr(str(tmp_path / name)))
        runs[name] = [_result(f) for f in run_script(script, processes=p, devices=d, timeout=300)]
    assert runs["two"][0] == runs["two"][1] and runs["two"][0]["step"] == 4
    # atol: Adam turns a gradient entry at rounding level (a bias of ~1e-6 whose gradient sums to ~0 over the
    # batch) into a step of the learning rate's size, whatever its sign, so such entries differ by a few 1e-6.
    for a, b in zip(runs["two"][0]["params"], runs["one"][0]["params"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert sorted(p.name for p in (tmp_path / "two" / "ckpt").iterdir()) == ["2", "4"]
    assert len(list(_lines(tmp_path / "two" / "log.jsonl"))) == len(list(_lines(tmp_path / "one" / "log.jsonl")))


def _lines(path):
    """The records of a JSON-lines file (none if it does not exist)."""
    if path.exists():
        yield from (json.loads(line) for line in path.read_text().splitlines() if line.strip())


# ------------------------------------------------------------------------------------------ one process


def test_one_process_is_the_identity():
    """Without joining: process 0 of 1, the writer; broadcast returns its argument; allgather is np.asarray."""
    assert not distributed.is_initialized()
    assert (distributed.process_index(), distributed.process_count(), distributed.is_writer()) == (0, 1, True)
    obj = {"a": [1, 2], "b": np.arange(3)}
    assert distributed.broadcast(obj) is obj
    x = omsjax.sampler.noise(0, 4, (2,))
    np.testing.assert_array_equal(distributed.allgather(x), np.asarray(x))
    assert distributed.describe().startswith("process 0 of 1: ")


def test_only_process_zero_writes(tmp_path, monkeypatch):
    """On a process other than 0, every write of `omsjax.files` (atomic writes, appends, folders, the lock) does
    nothing."""
    monkeypatch.setattr(distributed, "process_index", lambda: 1)
    assert not distributed.is_writer()
    files.write_json(tmp_path / "a.json", {"x": 1})
    files.write_text(tmp_path / "b.txt", "x")
    files.append_jsonl(tmp_path / "c.jsonl", [{"x": 1}])
    files.make_folder(tmp_path / "d" / "e", "--out")
    with files.FolderLock(tmp_path / "f"):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="is a file"):  # checks still run on every process
        (tmp_path / "g").mkdir()
        (tmp_path / "g" / "h").write_text("")
        files.make_folder(tmp_path / "g" / "h" / "i", "--out")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--coordinator", "localhost:1"], "--num-processes, --process-id"),
        (["--coordinator", "localhost:1", "--num-processes", "2", "--process-id", "2"], "--process-id must be in 0..1"),
        (
            ["--distributed", "--coordinator", "h:1", "--num-processes", "2", "--process-id", "0"],
            "either --distributed",
        ),
        (["--heartbeat-timeout", "5"], "--heartbeat-timeout needs --distributed"),
        (["--num-processes", "0"], "--num-processes must be an int >= 1"),
    ],
)
def test_distributed_flags_are_checked_before_joining(flags, message, capsys):
    assert main(["gmm", "--nfe", "4", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_gathering_many_samples_for_a_host_metric_warns():
    from omsjax.search import host_metric as H

    assert H.gathered_warning("m", 2**30, 1) is None and H.gathered_warning("m", H.GATHER_WARN_BYTES, 2) is None
    assert H.gathered_warning("fd", 2**30, 4).startswith("metric fd scores on the host: 1024 MiB of samples")


def test_the_layout_uses_every_device():
    from omsjax.search import candidates as C

    assert C.choose_layout(500) == C.Layout(1, 1)  # one device here
    with pytest.raises(ValueError, match="must use every device: 1 in all"):
        C.choose_layout(500, (2, 2))
