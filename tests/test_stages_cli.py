"""The multi-stage wiring: `omsjax stages cluster`, `omsjax stages config`, `omsjax train` on a StageTrainConfig
(resumable legs), and a multi-stage member of a zoo (manifest, `load_zoo`, `omsjax evaluate`)."""

import contextlib
import dataclasses
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omsjax import cli, data, nets, noise, stages, train, zoo
from omsjax.cli.train_cmd import train_config

NS = noise.vp_linear()
# One tiny multi-stage network for every test here (8x8 digits; GroupNorm's 8 groups need widths of 8).
CONFIG_ARGV = ["--boundaries", "0.41", "0.64", "--decoders", "16", "8", "8", "--encoder", "8", "--channel-mults", "1",
               "--steps", "4", "--warmup", "0", "--batch-size", "16"]  # fmt: skip


def run(argv):
    """(exit status, stdout, stderr) of `omsjax ARGV` in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y) for x, y in zip(la, lb, strict=True)
    )


# ---------------------------------------------------------------------------------------------- stages cluster


def test_stages_cluster(tmp_path):
    path = tmp_path / "cluster.json"
    rc, out, err = run(["stages", "cluster", "--grid", "16", "--samples", "48", "--alpha", "0.6", "--partition", "4",
                        "--out", str(path)])  # fmt: skip
    assert rc == 0, err
    for label in ("threshold rule (alpha 0.6)", "DP partition (4 stages)", "uniform in t (4)", "uniform in logSNR (4)"):
        assert label in out
    r = json.loads(path.read_text())
    grid, sim = np.asarray(r["grid"]), np.asarray(r["similarity"])
    assert grid.shape == (16,) and grid[0] == pytest.approx(1e-3) and grid[-1] == 1.0
    assert sim.shape == (16, 16) and np.array_equal(sim, sim.T) and np.all(np.diag(sim) == 1.0)
    assert r["num_data"] == 1497 and r["dtype"] == "float64"
    # The report is the library's rules on its own matrix; every boundary set is ordered, in (0, 1), and given
    # consistently as lambda (decreasing in t) and EDM sigma = exp(-lambda).
    assert r["threshold_error"] is None
    assert tuple(r["threshold"]["t"]) == stages.boundaries(sim, grid, 0.6)
    part = stages.partition(sim, 4, grid)
    assert r["partition"]["t"] == list(part.times) and r["partition"]["score"] == pytest.approx(part.score)
    assert tuple(r["uniform_t"]["t"]) == stages.uniform_boundaries(NS, 4, "time_uniform")
    for key, k in (("threshold", 2), ("partition", 3), ("uniform_t", 3), ("uniform_logsnr", 3)):
        t, lam, sig = (np.asarray(r[key][f]) for f in ("t", "lambda", "sigma"))
        assert t.shape == (k,) and np.all(np.diff(t) > 0) and 0 < t[0] and t[-1] < 1, key
        assert np.all(np.diff(lam) < 0) and np.allclose(sig, np.exp(-lam), rtol=1e-12), key
        assert 0 < r[key]["score"] <= 1
    # The DP partition maximises the score: no boundary set of the same size beats it.
    assert r["partition"]["score"] >= max(r["uniform_t"]["score"], r["uniform_logsnr"]["score"]) - 1e-12

    rc, out, _ = run(["stages", "cluster", "--grid", "16", "--samples", "48", "--alpha", "0.6", "--json"])
    short = json.loads(out)
    assert rc == 0 and "similarity" not in short and short["threshold"]["t"] == r["threshold"]["t"]  # same seed
    for argv, msg in [(["--grid", "2"], "--grid must be an int >= 3, got 2"), (["--alpha", "1.5"], "alpha"),
                      (["--partition", "0"], "--partition must be an int >= 1, got 0"),
                      (["--samples", "0"], "--samples must be an int >= 1, got 0")]:  # fmt: skip
        rc, _, err = run(["stages", "cluster", *argv])
        assert rc == 2 and msg in err, (argv, err)


# ---------------------------------------------------------------------------------- stages config and train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`omsjax stages config` -> `omsjax train --config FILE --add-to-zoo`: (config file, run dir, zoo dir, config),
    trained in two legs of 2 steps (the config's checkpoint interval set to 2)."""
    root = tmp_path_factory.mktemp("stages_cli")
    cfg_path = root / "ms.json"
    rc, out, err = run(["stages", "config", *CONFIG_ARGV, "--out", str(cfg_path)])
    assert rc == 0 and out == "", err
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "checkpoint_every": 2}))
    rc, out, err = run(["train", "--config", str(cfg_path), "--out", str(root / "run"), "--add-to-zoo",
                        str(root / "zoo"), "--latency-batch", "16", "--quiet"])  # fmt: skip
    assert rc == 0, err
    assert json.loads(out.strip().splitlines()[-1])["added"] == "ms"
    assert json.loads((root / "zoo" / "manifest.json").read_text())["models"][0]["latency_batch"] == 16
    return cfg_path, root / "run", root / "zoo", stages.StageTrainConfig.from_dict(json.loads(cfg_path.read_text()))


def test_stages_config_json(tmp_path):
    rc, out, _ = run(["stages", "config", *CONFIG_ARGV])
    cfg = stages.StageTrainConfig.from_dict(json.loads(out))
    assert rc == 0 and cfg.net.boundaries == (0.41, 0.64) and cfg.net.decoder_channels == (16, 8, 8)
    assert (cfg.net.encoder_channels, cfg.net.channel_mults, cfg.steps, cfg.batch_size) == (8, (1,), 4, 16)
    assert not cfg.ema_warmup
    rc, out, _ = run(["stages", "config", *CONFIG_ARGV, "--ema-warmup"])
    assert rc == 0 and stages.StageTrainConfig.from_dict(json.loads(out)) == dataclasses.replace(cfg, ema_warmup=True)
    for argv, msg in [(["--boundaries", "0.64", "0.41"], "boundaries"), (["--boundaries", "0.5"], "decoder_channels"),
                      (["--boundaries", "0.3", "0.6", "--steps", "0"], "steps")]:  # fmt: skip
        rc, _, err = run(["stages", "config", *argv])
        assert rc == 2 and msg in err, (argv, err)


def test_train_config_detects_multistage(tmp_path, trained):
    cfg_path, run_dir, _, cfg = trained

    def args(*argv):
        return cli.build_parser().parse_args(["train", "--out", "unused", *argv])

    assert train_config(args("--config", str(cfg_path))) == (cfg, "ms")
    # A run's config.json (the checkpoint's {"omsjax_multistage", "config"} wrapper) reproduces the run.
    assert train_config(args("--config", str(run_dir / "config.json"))) == (cfg, "run")
    more, _ = train_config(args("--config", str(cfg_path), "--steps", "9"))
    assert isinstance(more, stages.StageTrainConfig) and more.steps == 9 and more.net == cfg.net
    assert not more.ema_warmup
    warm, _ = train_config(args("--config", str(cfg_path), "--ema-warmup"))
    assert warm.ema_warmup and warm.steps == cfg.steps
    with pytest.raises(ValueError, match="--precond does not apply to the config .*a multi-stage network"):
        train_config(args("--config", str(cfg_path), "--precond", "edm"))
    with pytest.raises(ValueError, match="--fdm-m, --weight-clamp-warmup do not apply"):
        train_config(args("--config", str(cfg_path), "--fdm-m", "1", "--weight-clamp-warmup", "3"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**cfg.to_dict(), "stage_probs": [0.5, 0.5]}))
    with pytest.raises(ValueError, match="stage_probs"):
        train_config(args("--config", str(bad)))
    u, _ = train_config(args("--config", "tiny"))  # U-Net configs are untouched
    assert isinstance(u, train.TrainConfig)


def test_cli_training_in_legs_is_the_uninterrupted_run(tmp_path, trained):
    cfg_path, run_dir, _, cfg = trained
    images = data.load_digits("train")
    whole, _ = stages.train(cfg, images, progress=False)
    saved_cfg, ema = stages.load_checkpoint(run_dir)
    assert saved_cfg == cfg and trees_equal(ema, whole.ema_params)
    assert trees_equal(stages.restore_state(run_dir / "state", cfg), whole)
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    # Interrupted after step 2, resumed with --resume: the same run, bit for bit.
    half, _ = stages.train(cfg, images, progress=False, stop_at=2)
    stages.save_state(tmp_path / "run" / "state", half)
    rc, _, err = run(["train", "--config", str(cfg_path), "--out", str(tmp_path / "run"), "--resume", "--quiet"])
    assert rc == 0, err
    assert trees_equal(stages.restore_state(tmp_path / "run" / "state", cfg), whole)
    # A finished run is not overwritten without --resume, nor resumed with another config.
    rc, _, err = run(["train", "--config", str(cfg_path), "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 2 and "--resume" in err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**cfg.to_dict(), "lr": 1e-3}))
    rc, _, err = run(["train", "--config", str(other), "--out", str(tmp_path / "run"), "--resume", "--quiet"])
    assert rc == 2 and "lr" in err


# ------------------------------------------------------------------------------------------------------- zoo


def test_multistage_zoo_member(tmp_path, trained):
    _, run_dir, zoo_dir, cfg = trained
    models, ns, manifest = zoo.load_zoo(zoo_dir)
    entry = manifest["models"][0]
    assert entry["kind"] == "multistage" and entry["train_steps"] == 4
    assert noise.to_dict(ns) == noise.to_dict(NS)
    assert stages.StageTrainConfig.from_dict(entry["config"]) == cfg
    assert len(entry["latency_ms_per_stage"]) == 3 and entry["latency_ms"] == pytest.approx(
        np.mean(entry["latency_ms_per_stage"])
    )
    _, ema = stages.load_checkpoint(run_dir)
    assert entry["active_params"] == [stages.active_params(ema, k) for k in range(3)]
    assert entry["param_count"] == nets.param_count(ema)
    # The zoo member is the trained network: same function, same parameters, the same output bit for bit.
    model = models[0]
    direct = stages.to_model(cfg, ema, latency=model.latency, name="ms")
    assert model.apply_fn is direct.apply_fn and model.parameterization == "noise" and trees_equal(model.params, ema)
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 8, 8, 1), jnp.float32)
    t = jnp.array([0.05, 0.41, 0.42, 0.6, 0.7, 1.0], jnp.float32)  # every stage, boundaries included
    f = jax.jit(model.apply_fn)
    np.testing.assert_array_equal(np.asarray(f(model.params, x, t)), np.asarray(f(direct.params, x, t)))

    rc, out, err = run(["evaluate", "--zoo", str(zoo_dir), "--solver", "ddim", "--nfe", "3", "--num-samples", "16",
                        "--batch-size", "16", "--ref-samples", "0", "--json"])  # fmt: skip
    r = json.loads(out)
    assert rc == 0 and r["nfe"] == 3 and np.isfinite(r["fd"]), err
    assert r["cost"] == pytest.approx(3 * entry["latency_ms"])


def test_mixed_zoo_and_old_manifests(tmp_path, trained):
    """A U-Net and a multi-stage network in one VP zoo; U-Net entries keep their old form (no "kind")."""
    _, run_dir, _, cfg = trained
    _, ema = stages.load_checkpoint(run_dir)
    unet_cfg = zoo.named_config("tiny")
    unet_params = nets.init_unet(unet_cfg.net, jax.random.PRNGKey(1), (8, 8, 1))
    zoo.add_member(tmp_path, "u", unet_cfg, unet_params, train_steps=0, latency_batch=8)
    zoo.add_member(tmp_path, "ms", cfg, ema, train_steps=4, latency_batch=8)
    models, _, manifest = zoo.load_zoo(tmp_path)
    assert [m["name"] for m in manifest["models"]] == ["u", "ms"]  # sorted by size
    assert "kind" not in manifest["models"][0] and manifest["models"][1]["kind"] == "multistage"
    assert set(manifest["models"][0]) == {"name", "config", "params", "param_count", "train_steps", "latency_ms",
                                          "latency_batch", "latency_machine"}  # fmt: skip
    assert trees_equal(models[0].params, unet_params) and trees_equal(models[1].params, ema)
    after = zoo.remeasure_latency(tmp_path, batch=8, repeats=2)
    assert len(after["models"][1]["latency_ms_per_stage"]) == 3 and "latency_ms_per_stage" not in after["models"][0]
    # Unknown kinds and other noise schedules are refused.
    manifest["models"][1]["kind"] = "cascade"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="unknown kind 'cascade'"):
        zoo.load_zoo(tmp_path)
    edm = train.TrainConfig.from_dict({**unet_cfg.to_dict(), "precond": "edm"})
    zoo.add_member(tmp_path / "edm", "e", edm, unet_params, train_steps=0, latency_batch=8)
    with pytest.raises(ValueError, match="a multi-stage network"):
        zoo.add_member(tmp_path / "edm", "ms", cfg, ema, train_steps=4, latency_batch=8)
    with pytest.raises(ValueError, match="StageTrainConfig"):
        zoo.add_member(tmp_path / "x", "ms", cfg.net, ema, train_steps=4)


def test_stop_at_validates():
    cfg = stages.StageTrainConfig.from_dict(json.loads(run(["stages", "config", *CONFIG_ARGV])[1]))
    with pytest.raises(ValueError, match="stop_at"):
        stages.train(cfg, data.load_digits("train"), stop_at=-1, progress=False)


def test_benchmark_configs_reproduce_through_omsjax_train():
    # The configs that benchmarks/bench_fdm.py and bench_stages.py ship for `omsjax train --config FILE`.
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "benchmarks" / "configs"
    for sub in ("fdm", "stages"):
        files = sorted((root / sub).glob("*.json"))
        assert files, f"no configs in {root / sub}"
        for f in files:
            cfg, name = train_config(cli.build_parser().parse_args(["train", "--config", str(f), "--out", "x"]))
            assert name == f.stem and cfg.to_dict() == json.loads(f.read_text()), f
            assert cfg.ema_warmup  # both benchmarks train with the EMA warm-up
            if sub == "fdm":
                assert isinstance(cfg, train.TrainConfig) and cfg.precond == f.stem.split("-seed")[0].replace(
                    "edm-fdm", "fdm_edm").replace("vp-fdm", "fdm_vp")  # fmt: skip
            else:
                want = train.TrainConfig if f.stem.startswith("unified") else stages.StageTrainConfig
                assert isinstance(cfg, want), f
