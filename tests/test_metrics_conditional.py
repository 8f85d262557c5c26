"""Class-conditional U-Nets and zoos (issue 16 section 2): the class embedding and its null label, label dropout in
training, the conditional zoo, the conditional FD and accuracy, and `omsjax evaluate / sample --guidance --labels`."""

import json
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import omsjax
from omsjax import cli, data, metrics, nets, presets, train, zoo
from omsjax.metrics import conditional

K = 3  # classes of the tiny conditional nets; 3 is their null label
# 16 channels in 8 groups: with one channel per group (8 channels), GroupNorm would remove the embedding's shift.
NET = nets.UNetConfig(channels=16, channel_mults=(1,), num_classes=K)
CFG = train.TrainConfig(net=NET, steps=4, batch_size=16, warmup=1, checkpoint_every=4, label_dropout=0.2)


def _live(params, seed=0):
    """The parameters with a random output conv (an initialised U-Net outputs exactly 0, whatever its labels)."""
    kernel = params["conv_out"]["kernel"]
    live = jax.random.normal(jax.random.PRNGKey(seed), kernel.shape, kernel.dtype)
    return {**params, "conv_out": {**params["conv_out"], "kernel": live}}


@pytest.fixture(scope="module")
def cond_zoo(tmp_path_factory):
    """A class-conditional zoo of two tiny nets (16 and 24 channels, 4 steps on the digits of classes 0..2)."""
    root = tmp_path_factory.mktemp("cond")
    x, y = data.load_digits("train", return_labels=True)
    keep = y < K
    x, y = x[keep][:128], y[keep][:128]
    cfgs = {"c16": CFG, "c24": train.TrainConfig.from_dict({**CFG.to_dict(), "net": {**NET.__dict__, "channels": 24}})}
    for name, cfg in cfgs.items():
        state = train.train(cfg, x, root / f"run_{name}", labels=y, progress=False)
        params = _live(jax.device_get(state.ema_params))
        zoo.add_member(root / "zoo", name, cfg, params, train_steps=4, data_mean=data.data_mean(x), latency_batch=8)
    return root / "zoo"


def test_the_unconditional_unet_has_no_class_parameters_and_refuses_labels():
    net = nets.UNetConfig(channels=8, channel_mults=(1,))
    assert net.num_classes == 0
    params = nets.init_unet(net, jax.random.PRNGKey(0), (8, 8, 1))
    assert "class_embed" not in params
    with pytest.raises(ValueError, match="labels given to an unconditional U-Net"):
        nets.unet_apply_fn(net)(params, jnp.zeros((2, 8, 8, 1)), jnp.ones(2), jnp.zeros(2, jnp.int32))
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="num_classes must be an int >= 0"):
            nets.UNetConfig(num_classes=bad)


def test_the_class_embedding_conditions_the_output_and_none_is_the_null_label():
    params = _live(nets.init_unet(NET, jax.random.PRNGKey(0), (8, 8, 1)))
    emb = params["class_embed"]["embedding"]
    assert emb.shape == (K + 1, 4 * NET.channels) and 0.1 < float(jnp.std(emb)) < 0.3  # variance 1/32
    f = nets.unet_apply_fn(NET)
    x, t = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1)), jnp.full(4, 0.5)
    out = {c: f(params, x, t, jnp.full(4, c, jnp.int32)) for c in range(K + 1)}
    np.testing.assert_array_equal(f(params, x, t), out[K])  # no labels: the null label
    for a in range(K + 1):
        for b in range(a):
            assert float(jnp.max(jnp.abs(out[a] - out[b]))) > 1e-4
    with pytest.raises(ValueError, match=r"labels y must be integers of shape \[B\] = \(4,\)"):
        f(params, x, t, jnp.zeros(3, jnp.int32))


def test_label_dropout_draws_the_null_label_at_its_rate():
    labels = jnp.full(20000, 2, jnp.int32)
    y = np.asarray(train.drop_labels(CFG, labels, jax.random.PRNGKey(0)))
    assert set(np.unique(y)) == {2, K} and abs(np.mean(y == K) - 0.2) < 0.01
    none = train.TrainConfig.from_dict({**CFG.to_dict(), "label_dropout": 0.0})
    np.testing.assert_array_equal(train.drop_labels(none, labels, jax.random.PRNGKey(0)), labels)
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="label_dropout"):
            train.TrainConfig.from_dict({**CFG.to_dict(), "label_dropout": bad})


def test_training_labels_are_checked_and_named():
    x = np.zeros((5, 8, 8, 1), np.float32)
    plain = zoo.named_config("tiny")
    cases = [
        (plain, np.zeros(5, int), "labels given, but config.net.num_classes is 0"),
        (CFG, None, "config.net.num_classes is 3: a class-conditional net needs the images' labels"),
        (CFG, np.zeros(4, int), r"labels must be integers of shape \[N\] = \(5,\)"),
        (CFG, np.zeros(5), r"labels must be integers"),
        (CFG, np.array([0, 1, 2, 3, 0]), "label 3 at row 3"),
    ]
    for cfg, y, msg in cases:
        with pytest.raises(ValueError, match=msg):
            train.train(cfg, x, "/nonexistent/never-written", labels=y)


def test_a_conditional_zoo_samples_with_labels_and_guidance(cond_zoo):
    models, ns, manifest = zoo.load_zoo(cond_zoo)
    assert zoo.num_classes(manifest) == K and [m.name for m in models] == ["c16", "c24"]
    y = jnp.asarray([0, 1, 2, 1], jnp.int32)
    null = jnp.full(4, K, jnp.int32)
    x_T = jax.random.normal(jax.random.PRNGKey(2), (4, 8, 8, 1))
    w = 2.5
    guided = omsjax.sample(models, ns, presets.dpm_solver_pp(ns, 3, 2, model=1, guidance=w), x_T, cond=y, uncond=null)
    # The same guided model written out by hand, as an unconditional model: the labels reach the U-Net.
    m = models[1]
    by_hand = omsjax.Model(lambda p, x, t: (1 - w) * m.apply_fn(p, x, t, null) + w * m.apply_fn(p, x, t, y), m.params)
    ref = omsjax.sample(by_hand, ns, presets.dpm_solver_pp(ns, 3, 2), x_T)
    np.testing.assert_allclose(guided, ref, rtol=1e-5, atol=1e-5)
    plain = omsjax.sample(models, ns, presets.dpm_solver_pp(ns, 3, 2, model=1), x_T, cond=y)
    assert float(jnp.max(jnp.abs(plain - guided))) > 1e-4


def test_a_zoo_refuses_members_of_other_classes(cond_zoo, tmp_path):
    path = tmp_path / "zoo"
    shutil.copytree(cond_zoo, path)
    with pytest.raises(ValueError, match=r"has net.num_classes 0, the zoo's other members \[3\]"):
        zoo.check_member(path, "plain", zoo.named_config("tiny"))
    man = json.loads((path / "manifest.json").read_text())
    man["models"][0]["config"]["net"]["num_classes"] = 5
    with pytest.raises(ValueError, match="the zoo's members disagree on their classes"):
        zoo.num_classes(man)
    assert zoo.num_classes(json.loads((zoo.DEFAULT_ZOO / "manifest.json").read_text())) == 0
    assert zoo.named_config("digits-cond-m").net.num_classes == 10


def test_balanced_labels_conditioning_and_their_errors():
    np.testing.assert_array_equal(conditional.balanced_labels(7, 3), [0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(conditional.balanced_labels(4, 10, [7, 2]), [7, 2, 7, 2])
    with pytest.raises(ValueError, match=r"label 10 is not a class of this zoo \(0..9; 10 is the null label\)"):
        conditional.balanced_labels(4, 10, [10])
    cond, uncond = conditional.conditioning([1, 0, 2], 3)
    assert cond.dtype == np.int32 and uncond.tolist() == [3, 3, 3]
    with pytest.raises(ValueError, match=r"label 3 \(sample 1\) is not a class"):
        conditional.conditioning([0, 3], 3)


def test_scores_on_real_digits():
    x, y = data.load_digits("heldout", return_labels=True)
    good = conditional.scores(x, y)
    assert good["accuracy"] > 0.9 and good["fd"] == pytest.approx(metrics.fd(x))
    wrong = conditional.scores(x, (y + 1) % 10)
    assert wrong["accuracy"] < 0.1 and wrong["fd"] == good["fd"]
    metric = conditional.ConditionalFD(y)
    assert metric(x[:100]) == pytest.approx(metrics.fd(x[:100])) and metric.history[0]["accuracy"] > 0.9
    weighted = conditional.ConditionalFD((y + 1) % 10, accuracy_weight=0.5)
    s = weighted(x)
    assert s == pytest.approx(good["fd"] + 0.5 * 100 * (1 - wrong["accuracy"]))
    assert (metric.name, weighted.name) == ("cond_fd", "cond_fd+0.5x_err_pct")
    with pytest.raises(ValueError, match="accuracy_weight"):
        conditional.ConditionalFD(y, accuracy_weight=-1)
    with pytest.raises(ValueError, match="labels must have one entry per sample"):
        conditional.scores(x, y[:3])


def _run(capsys, argv):
    rc = cli.main(argv)
    assert rc == 0
    return capsys.readouterr().out


def test_cli_evaluate_and_sample_with_guidance_and_labels(cond_zoo, tmp_path, capsys):
    base = ["--zoo", str(cond_zoo), "--solver", "ddim", "--nfe", "2", "--model", "1", "--num-samples", "12"]
    out = json.loads(_run(capsys, ["evaluate", *base, "--guidance", "2", "--json"]).strip().splitlines()[-1])
    assert out["guidance"] == 2.0 and out["labels"] == "balanced" and out["nfe"] == 4  # two calls per guided step
    assert 0 <= out["accuracy"] <= 1 and out["fd"] > 0
    one = json.loads(_run(capsys, ["evaluate", *base, "--labels", "1", "--json"]).strip().splitlines()[-1])
    assert one["guidance"] == 1.0 and one["labels"] == [1] and one["nfe"] == 2
    _run(capsys, ["sample", *base, "--guidance", "3", "--labels", "0", "2", "--out", str(tmp_path / "g.png")])
    assert (tmp_path / "g.png").stat().st_size > 0
    for argv, msg in (
        (["evaluate", "--solver", "ddim", "--nfe", "2", "--guidance", "2"], "--guidance: the zoo .* is unconditional"),
        (["evaluate", *base, "--labels", "3"], r"label 3 is not a class of this zoo \(0..2"),
        (["evaluate", *base, "--ref-samples", "4"], "--ref-samples: the trajectory error's ODE reference"),
        (["compare", "--zoo", str(cond_zoo), "--nfe", "2"], "compare samples without labels"),
    ):
        rc = cli.main(argv)
        assert rc == 2 and re.search(msg, capsys.readouterr().err), argv


def test_search_refuses_guidance_on_an_unconditional_zoo(tmp_path, capsys):
    rc = cli.main(["search", "--nfe", "3", "--guidance", "2", "--out", str(tmp_path / "s")])
    assert rc == 2 and re.search("guidance 2.0: the zoo .* is unconditional", capsys.readouterr().err)


def test_search_guidance_flag_errors(cond_zoo, tmp_path, capsys):
    for argv, msg in (
        (["--search-guidance", "2"], r"needs the guidance scale W \(--guidance\)"),
        (["--guidance", "1", "--search-guidance"], "guidance w != 1, got 1"),
        (["--guidance", "3", "--search-guidance", "1", "2"], r"must include the space's guidance 3"),
    ):
        rc = cli.main(["search", "--zoo", str(cond_zoo), "--nfe", "3", "--out", str(tmp_path / "s"), *argv])
        assert rc == 2 and re.search(msg, capsys.readouterr().err), argv


@pytest.mark.slow(seconds=310)  # three small searches: about five minutes on 2 cores
def test_search_under_guidance_on_a_conditional_zoo(cond_zoo, tmp_path, capsys):
    small = ["--quick", "--num-samples", "12", "--final-samples", "24", "--json"]
    out = _run(capsys, ["search", "--zoo", str(cond_zoo), "--guidance", "2", "--nfe", "2", "--out",
                        str(tmp_path / "solver"), *small])  # fmt: skip
    rep = json.loads(out.strip().splitlines()[-1])
    # The default metric keeps the user's target: the distance to the model's own samples at guidance 2.
    assert rep["guidance"] == 2.0 and rep["metric"].startswith("reference_fd[") and ", w 2, " in rep["metric"]
    assert rep["searched"]["nfe"] == 4 and rep["best_baseline"]["nfe"] == 4  # 2 guided steps: 4 model calls
    assert rep["guided_calls"] == rep["searched"]["nfe"] == 4  # every call guided (an AFS step calls none)
    for part in ("searched", "best_baseline"):  # the FD to data and the error rate beside it, per held-out draw
        assert len(rep["also"]["fd"][part]) == 3 and all(f > 0 for f in rep["also"]["fd"][part])
        assert all(0 <= e <= 100 for e in rep["also"]["error_pct"][part])
    sched = omsjax.Schedule.load(tmp_path / "solver" / "schedule.json", num_models=2)
    assert np.all(np.asarray(sched.guidance) == 2.0)
    # Model mode with the per-step guidance gene: the budget of 3 guided steps (6 calls) may buy up to 6 steps.
    out = _run(capsys, ["search", "--zoo", str(cond_zoo), "--guidance", "2", "--nfe", "3", "--mode", "model",
                        "--search-guidance", "--out", str(tmp_path / "model"), *small])  # fmt: skip
    rep = json.loads(out.strip().splitlines()[-1])
    assert rep["searched"]["nfe"] <= 6 and all(r["nfe"] == 6 for r in rep["baselines"].values())
    assert rep["guidance_choices"] == [1.0, 2.0, 3.0]
    sched = omsjax.Schedule.load(tmp_path / "model" / "schedule.json", num_models=2)
    np.testing.assert_array_equal(sched.guidance, rep["searched_guidance"])
    assert set(rep["searched_guidance"]) <= {1.0, 2.0, 3.0} and sched.nfe() == rep["searched"]["nfe"]


def test_metric_fd_on_a_conditional_zoo_is_the_conditional_fd_with_its_accuracy_weight(cond_zoo, tmp_path):
    """`omsjax search --metric fd` on a class-conditional zoo: the evaluator's metric is the conditional FD to data
    plus the accuracy weight, on class-balanced labels, and the report keeps the FD and the error rate beside it.
    The searches themselves run in the slow tier's test above."""
    from omsjax.search.space import SearchSpace
    from omsjax.workflows import search_job

    models, ns, manifest = zoo.load_zoo(cond_zoo)
    space = SearchSpace.for_nfe(2, [m.latency for m in models], noise_schedule=ns, guidance=2.0)
    for weight, name in ((1.0, "cond_fd+1x_err_pct"), (0.0, "cond_fd")):
        objective = search_job.Objective(metric="fd", guidance=2.0, accuracy_weight=weight)
        kw, also, labels = search_job.objective_setup(cond_zoo, tmp_path, models, ns, space, manifest, objective, 12)
        assert isinstance(kw["metric"], conditional.ConditionalFD) and kw["metric_name"] == kw["metric"].name == name
        np.testing.assert_array_equal(labels, np.arange(12) % K)
        np.testing.assert_array_equal(kw["sampling"].cond, labels)
        assert set(also) == {"fd", "error_pct"}
