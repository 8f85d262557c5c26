"""Searched schedules shipped under checkpoints/digits/schedules (and checkpoints/digits-cond/schedules): they load,
fit the zoo, keep what their reports promise (never worse than the best preset on the held-out draws; the guided
ones beat the presets at their scale, or are on the Pareto front of the trade-off), and reproduce their scores."""

import json

import pytest

from omsjax import cli, zoo
from omsjax.schedule import Schedule

SCHED_DIR = zoo.DEFAULT_ZOO / "schedules"
SHIPPED = sorted(p for p in SCHED_DIR.glob("*.json") if not p.name.endswith(".report.json"))
MANIFEST = json.loads((zoo.DEFAULT_ZOO / "manifest.json").read_text())
LATENCIES = [m["latency_ms"] for m in MANIFEST["models"]]


def _evaluate(path, meta, capsys, zoo_dir=zoo.DEFAULT_ZOO):
    """`omsjax evaluate --schedule PATH` on the first draw of the schedule's own held-out noise: its JSON output."""
    seed = meta["heldout_noise_seeds"][0] if "heldout_noise_seeds" in meta else meta["heldout_noise_seed"]
    rc = cli.main(["evaluate", "--zoo", str(zoo_dir), "--schedule", str(path), "--num-samples",
                   str(meta["heldout_samples"]), "--seed", str(seed), "--ref-samples", "0", "--json"])  # fmt: skip
    assert rc == 0
    return json.loads(capsys.readouterr().out)


def test_schedules_are_shipped():
    names = {p.stem for p in SHIPPED}
    assert {"solver-nfe4", "solver-nfe5"} <= names
    for p in SHIPPED:
        assert (SCHED_DIR / f"{p.stem}.report.json").exists()


def _check_verdict(sched, meta, report):
    """What every searched schedule's report promises: the metadata is the report's, and the schedule is never
    worse than the best preset on the held-out draws (it beat it, tied, or is that preset)."""
    assert int(sched.nfe()) == meta["nfe"] == report["searched"]["nfe"]
    assert report["searched"]["score"] == meta["score"] and report["verdict"] == meta["verdict"]
    assert report["metric"] == meta["metric"] and report["returned"] == meta["returned"]
    assert report["verdict"] in ("beats", "tie", "no better schedule found")
    assert len(report["searched"]["scores"]) == len(report["heldout_noise_seeds"]) == 3
    if report["returned"] == "searched":
        d = [a - b for a, b in zip(report["searched"]["scores"], report["best_baseline"]["scores"], strict=True)]
        assert report["paired_difference"]["mean"] == pytest.approx(sum(d) / 3, rel=1e-9, abs=1e-12)
    else:  # the search found nothing better: it ships the best preset, named
        assert report["verdict"] == "no better schedule found"
        assert sched.to_json() == Schedule.from_json(report["best_baseline"]["schedule"]).to_json()
        assert report["returned"] == f"baseline: {report['best_baseline']['name']}"


def _check_shipped_schedule(path):
    """What a shipped schedule and its report promise without sampling: (metadata, report)."""
    text = path.read_text()
    meta = json.loads(text)["metadata"]
    report = json.loads((SCHED_DIR / f"{path.stem}.report.json").read_text())
    sched = Schedule.from_json(text, num_models=4)
    _check_verdict(sched, meta, report)
    # The cost is the schedule's on the shipped zoo's latencies (what `omsjax evaluate` reports).
    assert float(sched.cost(LATENCIES)) == pytest.approx(meta["cost"], rel=1e-6)
    if report["mode"] == "solver":  # every preset and its +AFS variant was a baseline
        assert len(report["baselines"]) == 56 and report["metric"].startswith("reference_fd[digits-m, ")
    else:  # model schedules stay within the budget, as do their baselines
        assert meta["cost"] <= report["budget_ms"] + 1e-6
        assert all(b["cost"] <= report["budget_ms"] + 1e-6 for b in report["baselines"].values())
    return meta, report


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_schedule_fits_the_zoo_and_its_report(path):
    _check_shipped_schedule(path)


@pytest.mark.slow(seconds=18)  # the FD of every shipped file at 1,000 samples: 10-20 s each on 2 cores
@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_schedule_reproduces_its_fd(path, capsys):
    meta, report = _check_shipped_schedule(path)
    out = _evaluate(path, meta, capsys)
    assert out["nfe"] == meta["nfe"] and out["cost"] == pytest.approx(meta["cost"], rel=1e-6)
    # The FD to data of the first held-out draw (other CPUs round the U-Net's float32 differently).
    assert out["fd"] == pytest.approx(report["also"]["fd"]["searched"][0], rel=0.02)


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

    from omsjax import noise, presets

    text = path.read_text()
    meta = json.loads(text)["metadata"]
    report = json.loads((STEPS_DIR / f"{path.stem}.report.json").read_text())
    sched = Schedule.from_json(text, num_models=4)
    kind, kw = presets.NAMED[meta["solver"]]
    base = presets.preset(kind, noise.vp_linear(), meta["nfe"], model=report["model"], **kw)
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


@pytest.mark.slow(seconds=16)  # as above
@pytest.mark.parametrize("path", STEPS, ids=[p.stem for p in STEPS])
def test_learned_timesteps_keep_the_solver_and_reproduce_their_fd(path, capsys):
    meta = _check_learned_timesteps(path)
    out = _evaluate(path, meta, capsys)
    assert out["nfe"] == meta["nfe"]
    assert out["fd"] == pytest.approx(meta["fd"], rel=0.02)


# ------------------------------------------------------- guided schedules of the class-conditional zoo (issue 16)

COND_DIR = zoo.COND_ZOO / "schedules"
GUIDED = sorted(p for p in COND_DIR.glob("*.json") if not p.name.endswith(".report.json"))
COND_LATENCIES = [m["latency_ms"] for m in json.loads((zoo.COND_ZOO / "manifest.json").read_text())["models"]]


def test_guided_schedules_are_shipped_for_4_5_6_8_steps():
    assert {f"solver-w4-nfe{n}" for n in (4, 5, 6, 8)} <= {p.stem for p in GUIDED}


def _check_guided(path):
    """A shipped guided schedule: its calls and cost on the zoo's latencies, its verdict, and what its kind
    promises. Every step at guidance 4 (solver-w4-nfe*): it beats the best preset at guidance 4 with the same steps
    by the reference FD at guidance 4, paired over the held-out draws, with an accuracy within 0.5 points of it.
    The guidance gene (solver-w4-gene-nfe*): no preset at guidance 1..4 with no more model calls dominates it on
    (FD to data, error rate), recomputed from the report's means."""
    from omsjax.search import guided

    text = path.read_text()
    meta = json.loads(text)["metadata"]
    report = json.loads((COND_DIR / f"{path.stem}.report.json").read_text())
    sched = Schedule.from_json(text, num_models=len(COND_LATENCIES))
    _check_verdict(sched, meta, report)
    assert float(sched.cost(COND_LATENCIES)) == pytest.approx(meta["cost"], rel=1e-6)
    assert report["guidance"] == 4.0 and ", w 4, " in report["metric"] and report["model"] == 1
    assert report["guided_calls"] > 0  # it samples the guided model, not the unguided one
    if "-gene-" not in path.stem:
        assert all(w == 4.0 for w in sched.guidance.tolist()) and report["verdict"] == "beats"
        e = report["also"]["error_pct"]
        assert abs(sum(e["searched"]) - sum(e["best_baseline"])) / 3 <= 0.5
    else:
        t = report["guidance_tradeoff"]
        assert t["calls"] == meta["nfe"] and {p["guidance"] for p in t["presets"].values()} >= {1.0, 1.5, 2.0, 4.0}
        assert all(p["nfe"] <= t["calls"] for p in t["presets"].values())
        assert not [n for n, p in t["presets"].items() if guided.dominates(p, t["searched"], "fd", "error_pct")]
        assert t["dominated_by"] == []
    return meta, report


@pytest.mark.parametrize("path", GUIDED, ids=[p.stem for p in GUIDED])
def test_guided_schedule_keeps_its_promise(path):
    _check_guided(path)


@pytest.mark.slow(seconds=12)  # 1,000 guided samples of each shipped file
@pytest.mark.parametrize("path", GUIDED, ids=[p.stem for p in GUIDED])
def test_guided_schedule_reproduces_its_fd_and_accuracy(path, capsys):
    meta, report = _check_guided(path)
    out = _evaluate(path, meta, capsys, zoo.COND_ZOO)
    scales = report["searched_guidance"] if "searched_guidance" in report else [4.0]
    assert out["nfe"] == meta["nfe"] and out["guidance"] == (scales[0] if len(set(scales)) == 1 else scales)
    assert out["fd"] == pytest.approx(report["also"]["fd"]["searched"][0], rel=0.02)
    assert 100 * (1 - out["accuracy"]) == pytest.approx(report["also"]["error_pct"]["searched"][0], abs=0.5)
