"""Zoo folders (manifest, load_zoo) and the omsjax command on a tiny freshly trained zoo."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import omsjax
from omsjax import cli, presets, train, zoo
from omsjax.search.space import SearchSpace


def test_manifest_and_load(tiny_zoo):
    path, entries = tiny_zoo
    manifest = json.loads((path / "manifest.json").read_text())
    assert [m["name"] for m in manifest["models"]] == ["a", "b"]  # sorted by size
    assert entries[1]["param_count"] > entries[0]["param_count"]
    assert all(m["latency_ms"] > 0 and m["latency_machine"] for m in manifest["models"])
    models, ns, man = zoo.load_zoo(path)
    assert len(models) == 2 and models[0].latency == manifest["models"][0]["latency_ms"]
    assert ns.kind == "vp_linear" and man["image_shape"] == [8, 8, 1]
    # Restored parameters are bit-exact and the zoo samples through omsjax.sample.
    run_params = train.load_params(path / "a" / "params", models[0].params)
    for x, y in zip(jax.tree_util.tree_leaves(run_params), jax.tree_util.tree_leaves(models[0].params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    s = presets.ddim(ns, 4)._replace(model=jnp.asarray([0, 1, 1, 0], jnp.int32))
    out = omsjax.sample(models, ns, s, jnp.zeros((3, 8, 8, 1), jnp.float32))
    assert out.shape == (3, 8, 8, 1) and bool(jnp.all(jnp.isfinite(out)))


def test_load_zoo_errors(tmp_path, tiny_zoo):
    with pytest.raises(FileNotFoundError, match="no zoo manifest"):
        zoo.load_zoo(tmp_path)
    (tmp_path / "manifest.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        zoo.load_zoo(tmp_path)
    path, _ = tiny_zoo
    m = json.loads((path / "manifest.json").read_text())
    m["models"][0]["params"] = "missing/params"
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(FileNotFoundError, match="no parameters at"):
        zoo.load_zoo(tmp_path)
    with pytest.raises(ValueError, match="unknown training config"):
        zoo.named_config("huge")


def _run(capsys, argv):
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.slow  # the CLI twice and a schedule file (about 11 s); generate's batching is checked in test_sampler
def test_cli_evaluate_is_deterministic(tiny_zoo, capsys, tmp_path):
    path, _ = tiny_zoo
    # 20 samples in batches of 12 (the last one ragged) and in one batch of 20: the batch shapes of the other tests
    # here (12 and 20 samples of the same zoo), so that this compiles only the ragged batch's program.
    argv = ["evaluate", "--zoo", str(path), "--model", "1", "--solver", "dpm_solver_pp", "--order", "2", "--nfe", "3",
            "--num-samples", "20", "--batch-size", "12", "--seed", "5", "--json"]  # fmt: skip
    rc, out, _ = _run(capsys, argv)
    assert rc == 0
    a = json.loads(out)
    assert set(a) >= {"fd", "nfe", "cost", "seconds"} and a["nfe"] == 3
    assert a["cost"] == pytest.approx(3 * zoo.load_zoo(path)[0][1].latency)
    rc, out, _ = _run(capsys, argv[:-5] + ["--batch-size", "20", "--seed", "5", "--json"])
    assert json.loads(out)["fd"] == a["fd"]  # same seed, other batching: same samples, same FD
    # A schedule file reproduces the preset.
    models, ns, _ = zoo.load_zoo(path)
    sched_file = tmp_path / "s.json"
    sched_file.write_text(presets.dpm_solver_pp(ns, 3, 2, model=1).to_json())
    rc, out, _ = _run(capsys, ["evaluate", "--zoo", str(path), "--schedule", str(sched_file), "--num-samples", "20",
                               "--batch-size", "12", "--seed", "5", "--json"])  # fmt: skip
    assert rc == 0 and json.loads(out)["fd"] == a["fd"]


@pytest.mark.slow  # the diffrax ODE endpoint through the CLI (about 11 s); test_metrics_reference checks the metric
def test_cli_evaluate_trajectory_error(tiny_zoo, capsys):
    from omsjax import metrics, sampler

    path, _ = tiny_zoo
    argv = ["evaluate", "--zoo", str(path), "--model", "0", "--solver", "ddim", "--nfe", "3", "--num-samples", "12",
            "--ref-samples", "5", "--json"]  # fmt: skip
    rc, out, _ = _run(capsys, argv)
    a = json.loads(out)
    assert rc == 0 and a["traj_samples"] == 5 and a["traj_ref_model"] == 0
    # The same number by hand: the first 5 noises, DDIM-3 on model 0, against model 0's ODE endpoint.
    models, ns, manifest = zoo.load_zoo(path)
    s = presets.ddim(ns, 3)
    x_T = sampler.noise(0, 5, (8, 8, 1))
    mean = jnp.asarray(np.asarray(manifest["data_mean"], np.float32))
    x = omsjax.sample(models, ns, s, x_T, data_mean=mean)
    ref = metrics.ode_reference(models[0], ns, x_T, float(s.ts[0]), float(s.ts[-1]))
    assert a["traj_rmse"] == pytest.approx(metrics.reference_rmse(x, ref), rel=1e-4)
    rc, out, _ = _run(capsys, argv[:-3] + ["--ref-samples", "0", "--json"])
    assert rc == 0 and "traj_rmse" not in json.loads(out)
    rc, _, err = _run(capsys, argv[:-1] + ["--ref-model", "4"])
    assert rc == 2 and "--ref-model 4" in err


def test_cli_compare_and_zoo(tiny_zoo, capsys):
    path, _ = tiny_zoo
    rc, out, _ = _run(capsys, ["compare", "--zoo", str(path), "--nfe", "3", "4", "--solvers", "DDIM", "DPM-Solver-3",
                               "--num-samples", "20", "--json"])  # fmt: skip
    a = json.loads(out)
    assert rc == 0 and a["model"] == 1 and a["name"] == "b"  # default: the largest model
    assert a["fd"]["DPM-Solver-3"]["3"] > 0 and a["fd"]["DDIM"]["4"] > 0
    assert a["floor"]["train_resample_n"] == 20
    # Each cell is what `evaluate` prints for the same preset and seed.
    rc, out, _ = _run(capsys, ["evaluate", "--zoo", str(path), "--model", "1", "--solver", "ddim", "--nfe", "4",
                               "--num-samples", "20", "--ref-samples", "0", "--json"])  # fmt: skip
    assert json.loads(out)["fd"] == pytest.approx(a["fd"]["DDIM"]["4"], rel=1e-9)
    rc, out, _ = _run(capsys, ["compare", "--zoo", str(path), "--model", "0", "--nfe", "3", "--solvers", "DDIM",
                               "--num-samples", "20"])  # fmt: skip
    assert rc == 0 and "model 0 (a," in out and "best per NFE: 3: DDIM" in out
    rc, _, err = _run(capsys, ["compare", "--zoo", str(path), "--solvers", "Euler"])
    assert rc == 2 and "unknown solvers ['Euler']" in err
    rc, out, _ = _run(capsys, ["zoo", "--zoo", str(path)])
    assert rc == 0 and "digits" in out and out.count("batch 32") == 2


def test_remeasure_latency(tiny_zoo, tmp_path):
    import shutil

    path, _ = tiny_zoo
    copy = tmp_path / "zoo"
    shutil.copytree(path, copy)
    before = json.loads((copy / "manifest.json").read_text())
    after = zoo.remeasure_latency(copy, batch=8, repeats=3)
    assert json.loads((copy / "manifest.json").read_text()) == after
    for b, a in zip(before["models"], after["models"], strict=True):
        assert a["latency_batch"] == 8 and a["latency_ms"] > 0 and a["latency_machine"] == zoo.machine_name()
        assert {k: v for k, v in a.items() if not k.startswith("latency")} == {
            k: v for k, v in b.items() if not k.startswith("latency")
        }
    assert zoo.load_zoo(copy)[0][1].latency == after["models"][1]["latency_ms"]
    with pytest.raises(ValueError, match="remeasure_latency: batch must be an int >= 1, got 0"):
        zoo.remeasure_latency(copy, batch=0)


def test_cli_errors(tiny_zoo, capsys):
    path, _ = tiny_zoo
    rc, _, err = _run(capsys, ["evaluate", "--zoo", str(path), "--model", "7", "--solver", "ddim", "--nfe", "3"])
    assert rc == 2 and "--model 7 is not in the zoo of 2 models" in err
    rc, _, err = _run(capsys, ["evaluate", "--zoo", str(path), "--nfe", "3"])
    assert rc == 2 and "--solver" in err
    rc, _, err = _run(capsys, ["evaluate", "--zoo", str(path / "nope"), "--solver", "ddim", "--nfe", "3"])
    assert rc == 2 and "no zoo manifest" in err


def test_cli_sample_writes_png(tiny_zoo, capsys, tmp_path):
    path, _ = tiny_zoo
    out = tmp_path / "grid.png"
    rc, text, _ = _run(capsys, ["sample", "--zoo", str(path), "--solver", "unipc", "--nfe", "4", "--num-samples", "20",
                                "--out", str(out)])  # fmt: skip
    assert rc == 0 and out.read_bytes()[:4] == b"\x89PNG" and "wrote" in text


def test_cli_search_argument_errors(tiny_zoo, capsys, tmp_path):
    path, _ = tiny_zoo
    out = tmp_path / "search"
    rc, _, err = _run(capsys, ["search", "--zoo", str(path), "--nfe", "3", "--budget", "1", "--out", str(out)])
    assert rc == 2 and "not both" in err
    for flag, value, named in (
        ("--num-samples", "1", "--num-samples"),
        ("--final-top", "0", "--final-top must be an int >= 1"),
    ):
        # a size flag given on the command line is checked, not dropped in favour of the preset's value
        rc, _, err = _run(capsys, ["search", "--zoo", str(path), "--nfe", "3", "--out", str(out), flag, value])
        assert rc == 2 and named in err, err
    rc, _, err = _run(capsys, ["search", "--zoo", str(path), "--nfe", "3", "--out", str(out), "--quick", "--thorough"])
    assert rc == 2 and "not both" in err
    with pytest.raises(SystemExit):  # argparse rejects an unknown spacing
        cli.main(["search", "--zoo", str(path), "--nfe", "3", "--out", str(out), "--spacing", "cosine"])


@pytest.mark.slow(seconds=55)
def test_cli_search_writes_its_outputs_and_resumes(tiny_zoo, capsys, tmp_path):
    """A whole (quick) solver-mode search, its paired held-out verdict and a rerun from the archive: a long CLI run
    (the search loop, 56 baselines, the references, plots; minutes on 2 cores), so it runs with `-m slow`."""
    from omsjax import metrics, sampler
    from omsjax.schedule import Schedule
    from omsjax.search import baselines

    path, _ = tiny_zoo
    out = tmp_path / "search"
    # The search's samples and the held-out ones in batches of one shape (12): one set of compiled programs.
    argv = ["search", "--zoo", str(path), "--nfe", "3", "--out", str(out), "--quick", "--num-samples", "12",
            "--final-samples", "12", "--quiet", "--json"]  # fmt: skip
    rc, text, _ = _run(capsys, argv)
    rep = json.loads(text)
    assert rc == 0 and {p.name for p in out.iterdir()} >= {"schedule.json", "report.json", "pareto.png",
                                                          "samples.png", "archive.jsonl", "references.npz"}  # fmt: skip
    sched = Schedule.from_json((out / "schedule.json").read_text(), num_models=2)
    assert int(sched.nfe()) == 3 and np.all(np.asarray(sched.model) == 1)  # solver mode: the largest model
    models, ns, _ = zoo.load_zoo(path)
    space = SearchSpace.for_nfe(3, [m.latency for m in models], model=1, noise_schedule=ns)
    assert set(rep["baselines"]) == set(baselines.for_space(ns, space))  # 7 solvers x 4 spacings, +AFS
    assert len(rep["baselines"]) > 28 and rep["spacing"] == "time_quadratic"  # the default base spacing
    assert rep["metric"] == f"reference_fd[{models[1].name}, DPM-Solver++(3M), time_quadratic, 100 steps]"
    assert json.loads((out / "report.json").read_text()) == rep
    assert rep["heldout_noise_seeds"] == [1000, 1001, 1002] and rep["selection_noise_seeds"] == [3000, 3001, 3002]
    # The held-out scores: the reference FD and the FD to data of the returned schedule's samples on each draw.
    ref = metrics.ReferenceFD(metrics.Reference(models[1], ns))
    for k, seed in enumerate(rep["heldout_noise_seeds"]):
        evaluate = ["evaluate", "--zoo", str(path), "--schedule", str(out / "schedule.json"), "--num-samples", "12"]
        rc, text, _ = _run(capsys, [*evaluate, "--seed", str(seed), "--ref-samples", "0", "--json"])
        assert json.loads(text)["fd"] == pytest.approx(rep["also"]["fd"]["searched"][k], rel=1e-4)
        x_T = sampler.noise(seed, 12, (8, 8, 1))
        x = np.asarray(sampler.sample(models, ns, sched, x_T))
        assert ref(x, np.asarray(x_T)) == pytest.approx(rep["searched"]["scores"][k], rel=1e-3, abs=1e-4)
    assert rep["verdict"] in ("beats", "tie", "loses", "no better schedule found")
    if rep["returned"] != "searched":
        assert sched.to_json() == Schedule.from_json(rep["best_baseline"]["schedule"]).to_json()
    assert rep["noise_check"]["ok"] in (True, False) and len(rep["noise_check"]["presets"]) == 2
    rc, text, _ = _run(capsys, argv)  # rerun: everything comes from the archive (and the references from the run)
    assert rc == 0 and json.loads(text)["new_evaluations"] == 0
    assert rep["cached_evaluations"] == 0  # the tiny zoo ships no evaluations
    rc, text, _ = _run(capsys, argv[:-1])  # the printed verdict
    assert "verdict: " in text and "best baseline (of " in text and "FD to data" in text


@pytest.mark.slow(seconds=45)
def test_cli_search_reads_the_zoos_cached_presets(tiny_zoo, capsys, tmp_path):
    """`omsjax zoo --cache-presets` evaluates the presets once into the zoo, with the reference samples; a search
    then reads them instead of evaluating them, with the same report as `--recompute-baselines` (a long CLI run:
    three quick searches)."""
    import shutil

    from omsjax.workflows import search_job

    zoo_dir = tmp_path / "zoo"
    shutil.copytree(tiny_zoo[0], zoo_dir)  # the cache is written into the zoo: not into the shared fixture
    search_job.cache_presets(
        zoo_dir,
        [3],
        options=dataclasses.replace(search_job.DEFAULTS, num_samples=12, heldout_samples=12),
        progress=False,
    )
    assert (zoo_dir / "evaluations.json").exists() and (zoo_dir / "references.npz").exists()
    argv = ["search", "--zoo", str(zoo_dir), "--nfe", "3", "--quick", "--num-samples", "12", "--final-samples", "12",
            "--quiet", "--json"]  # fmt: skip
    rc, text, _ = _run(capsys, argv + ["--out", str(tmp_path / "cached")])
    cached = json.loads(text)
    shipped = {(r["key"], r["eval_key"]) for r in json.loads((zoo_dir / "evaluations.json").read_text())["records"]}
    # The seeds and the baselines on the search noise, the noise check, the best baselines on the selection noise
    # and the best on the held-out noise: everything of the presets that the search needs.
    assert rc == 0 and cached["cached_evaluations"] == len(shipped)
    assert cached["cache_machine"] == zoo.machine_name()
    written = [json.loads(line) for line in (tmp_path / "cached" / "archive.jsonl").read_text().splitlines()]
    assert written and not {(r["key"], r["eval_key"]) for r in written} & shipped  # the run's archive: only its own
    assert not (tmp_path / "cached" / "references.npz").exists()  # every reference came from the zoo
    rc, text, _ = _run(capsys, argv + ["--out", str(tmp_path / "fresh"), "--recompute-baselines"])
    fresh = json.loads(text)
    assert rc == 0 and fresh["cached_evaluations"] == 0 and fresh["cache_machine"] is None
    search_noise = sum(1 for _, e in shipped if e.startswith("seed0-n12-"))  # the seeds and baselines there
    assert fresh["new_evaluations"] == cached["new_evaluations"] + search_noise
    for name, row in fresh["baselines"].items():
        assert cached["baselines"][name]["score"] == pytest.approx(row["score"], rel=1e-9)
    assert cached["searched"]["scores"] == pytest.approx(fresh["searched"]["scores"], rel=1e-9)


@pytest.mark.slow(seconds=45)
def test_cli_search_model_mode_under_a_time_budget(tiny_zoo, capsys, tmp_path):
    """Model mode under a time budget: three calls of the larger model. A long CLI run (its candidates have every
    length from 1 step up, one compilation each: minutes on 2 cores), so it runs with `-m slow`."""
    path, _ = tiny_zoo
    budget = 3 * zoo.load_zoo(path)[0][1].latency / 1000
    rc, text, _ = _run(capsys, ["search", "--zoo", str(path), "--budget", f"{budget}", "--mode", "model", "--out",
                                str(tmp_path / "m"), "--quick", "--num-samples", "12", "--final-samples", "12",
                                "--quiet", "--json"])  # fmt: skip
    rep = json.loads(text)
    assert rc == 0 and rep["searched"]["cost"] <= 1000 * budget + 1e-6 and rep["spacing"] == "time_quadratic"
    assert all(b["cost"] <= 1000 * budget + 1e-6 for b in rep["baselines"].values())
