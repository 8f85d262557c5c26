"""Searched schedules shipped under checkpoints/digits/schedules: they load, fit the zoo, and reproduce their FD."""

import json

import pytest

from omsjax import cli, zoo
from omsjax.schedule import Schedule

SCHED_DIR = zoo.DEFAULT_ZOO / "schedules"
SHIPPED = sorted(p for p in SCHED_DIR.glob("*.json") if not p.name.endswith(".report.json"))
MANIFEST = json.loads((zoo.DEFAULT_ZOO / "manifest.json").read_text())
LATENCIES = [m["latency_ms"] for m in MANIFEST["models"]]


def _evaluate(path, meta, capsys):
    """`omsjax evaluate --schedule PATH` on the schedule's own held-out noise (the shipped zoo): its JSON output."""
    rc = cli.main(["evaluate", "--schedule", str(path), "--num-samples", str(meta["heldout_samples"]), "--seed",
                   str(meta["heldout_noise_seed"]), "--ref-samples", "0", "--json"])  # fmt: skip
    assert rc == 0
    return json.loads(capsys.readouterr().out)


def test_schedules_are_shipped():
    names = {p.stem for p in SHIPPED}
    assert {"solver-nfe4", "solver-nfe5"} <= names
    for p in SHIPPED:
        assert (SCHED_DIR / f"{p.stem}.report.json").exists()


def _check_shipped_schedule(path):
    """What a shipped schedule and its report promise without sampling: (metadata, report)."""
    text = path.read_text()
    meta = json.loads(text)["metadata"]
    report = json.loads((SCHED_DIR / f"{path.stem}.report.json").read_text())
    sched = Schedule.from_json(text, num_models=4)
    assert int(sched.nfe()) == meta["nfe"] == report["searched"]["nfe"]
    assert report["searched"]["fd"] == meta["fd"]
    # The cost is the schedule's on the shipped zoo's latencies (what `omsjax evaluate` reports).
    assert float(sched.cost(LATENCIES)) == pytest.approx(meta["cost"], rel=1e-6)
    if report["mode"] == "solver":
        # Up to NFE 6 the solver searches beat (or matched) the best published solver. From NFE 7 the best
        # baselines are at the model's ODE FD (about 3.1-3.4) and the searched schedules land within seed noise of
        # them (about +-0.5 at 1,000 samples), on either side.
        slack = 1.0 if meta["nfe"] <= 6 else 1.2
        assert meta["fd"] <= slack * report["best_baseline"]["fd"]
    else:  # model schedules stay within the budget, as do their baselines
        assert meta["cost"] <= report["budget_ms"] + 1e-6
        assert all(b["cost"] <= report["budget_ms"] + 1e-6 for b in report["baselines"].values())
    return meta, report


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_schedule_fits_the_zoo_and_its_report(path):
    _check_shipped_schedule(path)


@pytest.mark.slow  # the FD of every shipped file at 1,000 samples: 10-20 s each on 2 cores
@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_schedule_reproduces_its_fd(path, capsys):
    meta, _ = _check_shipped_schedule(path)
    out = _evaluate(path, meta, capsys)
    assert out["nfe"] == meta["nfe"] and out["cost"] == pytest.approx(meta["cost"], rel=1e-6)
    assert out["fd"] == pytest.approx(meta["fd"], rel=0.02)  # other CPUs round the U-Net's float32 differently


# ------------------------------------------------------------------ learned timesteps (benchmarks/bench_timesteps.py)

STEPS_DIR = SCHED_DIR / "timesteps"
STEPS = sorted(p for p in STEPS_DIR.glob("*.json") if not p.name.endswith(".report.json"))


def test_learned_timesteps_are_shipped_for_nfe_3_to_10():
    names = {p.stem for p in STEPS}
    assert {f"{s}-nfe{n}" for s in ("ddim", "dpmpp2m") for n in range(3, 11)} <= names
    for p in STEPS:
        assert (STEPS_DIR / f"{p.stem}.report.json").exists()


def _check_learned_timesteps(path):
    """A learned-timesteps file keeps every decision of its solver's preset and moves only the inner times."""
    import numpy as np

    from omsjax import presets, schedules

    text = path.read_text()
    meta = json.loads(text)["metadata"]
    report = json.loads((STEPS_DIR / f"{path.stem}.report.json").read_text())
    sched = Schedule.from_json(text, num_models=4)
    kind, kw = presets.NAMED[meta["solver"]]
    base = presets.preset(kind, schedules.vp_linear(), meta["nfe"], model=report["model"], **kw)
    for field in ("model", "order", "prediction", "start", "d1_points", "relax_type", "corrector", "afs"):
        np.testing.assert_array_equal(np.asarray(getattr(sched, field)), np.asarray(getattr(base, field)))
    ts = np.asarray(sched.ts, np.float64)
    assert ts[0] == pytest.approx(float(base.ts[0])) and ts[-1] == pytest.approx(float(base.ts[-1]))
    assert np.all(np.diff(ts) < 0)
    assert report["selected_fd"] == meta["fd"] == report["phase1"][meta["method"]]["select"]
    assert int(sched.nfe()) == meta["nfe"]
    return meta


@pytest.mark.parametrize("path", STEPS, ids=[p.stem for p in STEPS])
def test_learned_timesteps_keep_the_solver(path):
    _check_learned_timesteps(path)


@pytest.mark.slow  # as above
@pytest.mark.parametrize("path", STEPS, ids=[p.stem for p in STEPS])
def test_learned_timesteps_keep_the_solver_and_reproduce_their_fd(path, capsys):
    meta = _check_learned_timesteps(path)
    out = _evaluate(path, meta, capsys)
    assert out["nfe"] == meta["nfe"]
    assert out["fd"] == pytest.approx(meta["fd"], rel=0.02)


# ------------------------------------------------------- guided schedules of the class-conditional zoo (issue 16)

COND_DIR = zoo.COND_ZOO / "schedules"
GUIDED = sorted(p for p in COND_DIR.glob("*.json") if not p.name.endswith(".report.json"))


def test_guided_schedules_are_shipped_for_nfe_4_5_6_8():
    assert {f"solver-w4-nfe{n}" for n in (4, 5, 6, 8)} <= {p.stem for p in GUIDED}


def _check_guided(path):
    """A shipped guided schedule: the guidance gene's scales, its calls and cost on the zoo's latencies, and the
    objective and its parts in its report."""
    import numpy as np

    text = path.read_text()
    meta = json.loads(text)["metadata"]
    report = json.loads((COND_DIR / f"{path.stem}.report.json").read_text())
    lat = [m["latency_ms"] for m in json.loads((zoo.COND_ZOO / "manifest.json").read_text())["models"]]
    sched = Schedule.from_json(text, num_models=len(lat))
    w = np.asarray(sched.guidance)
    assert report["guidance"] == 4.0 and report["guidance_choices"] == [1.0, 2.0, 4.0, 6.0]
    assert set(w.tolist()) <= set(report["guidance_choices"]) and w.tolist() == report["searched_guidance"]
    assert int(sched.nfe()) == meta["nfe"] == report["searched"]["nfe"] <= 2 * report["nfe"]
    assert float(sched.cost(lat)) == pytest.approx(meta["cost"], rel=1e-6)
    assert np.all(np.asarray(sched.model) == report["model"])
    assert report["searched"]["fd"] == meta["fd"]
    return meta, report


@pytest.mark.parametrize("path", GUIDED, ids=[p.stem for p in GUIDED])
def test_guided_schedule_fits_the_zoo_and_its_report(path):
    _check_guided(path)


@pytest.mark.slow  # 1,000 guided samples of each shipped file
@pytest.mark.parametrize("path", GUIDED, ids=[p.stem for p in GUIDED])
def test_guided_schedule_reproduces_its_fd_and_accuracy(path, capsys):
    meta, report = _check_guided(path)
    rc = cli.main(["evaluate", "--zoo", str(zoo.COND_ZOO), "--schedule", str(path), "--num-samples",
                   str(meta["heldout_samples"]), "--seed", str(meta["heldout_noise_seed"]), "--ref-samples", "0",
                   "--json"])  # fmt: skip
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    want = report["conditional"]["searched"]
    scales = report["searched_guidance"]  # evaluate gives one number when every step has the same scale
    assert out["nfe"] == meta["nfe"] and out["guidance"] == (scales[0] if len(set(scales)) == 1 else scales)
    assert out["fd"] == pytest.approx(want["fd"], rel=0.02)  # other CPUs round the U-Net's float32 differently
    assert out["accuracy"] == pytest.approx(want["accuracy"], abs=0.005)
