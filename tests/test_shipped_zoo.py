"""The shipped digits zoo under checkpoints/digits: manifest, sizes, restore, and sample quality."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import omsjax
from omsjax import metrics, nets, noise, presets, sampler, train, zoo
from omsjax.paths import checkpoints_dir


@pytest.fixture(scope="module")
def shipped():
    return zoo.load_zoo(zoo.DEFAULT_ZOO)


def test_manifest_describes_at_least_four_models_spanning_8x(shipped):
    models, ns, manifest = shipped
    assert len(models) >= 4
    counts = [m["param_count"] for m in manifest["models"]]
    assert counts == sorted(counts) and counts[-1] >= 8 * counts[0]
    assert isinstance(ns, noise.VPLinear) and manifest["image_shape"] == [8, 8, 1]
    assert len(manifest["data_mean"]) == 8
    for model, entry in zip(models, manifest["models"], strict=True):
        cfg = train.TrainConfig.from_dict(entry["config"])
        assert nets.param_count(model.params) == entry["param_count"]
        assert entry["train_steps"] == cfg.steps >= 1000
        assert model.latency == entry["latency_ms"] > 0 and entry["latency_batch"] == 256
        assert entry["latency_machine"]
        leaves = jax.tree.leaves(model.params)
        assert all(x.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(x))) for x in leaves)
    assert omsjax.load_zoo is zoo.load_zoo


def test_checkpoints_folder_under_40_mb():
    total = sum(p.stat().st_size for p in checkpoints_dir().rglob("*") if p.is_file())
    assert total < 40 * 2**20


def test_restore_into_an_abstract_shape_is_bit_exact(shipped):
    models, _, manifest = shipped
    entry = manifest["models"][0]
    cfg = train.TrainConfig.from_dict(entry["config"])
    like = jax.eval_shape(lambda: nets.init_unet(cfg.net, jax.random.PRNGKey(0), (8, 8, 1)))
    again = train.load_params(zoo.DEFAULT_ZOO / entry["params"], like)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(models[0].params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert json.loads((zoo.DEFAULT_ZOO / "manifest.json").read_text()) == manifest


@pytest.mark.slow  # a reproduction of shipped results: compiles a sampler for each of the four U-Nets
def test_every_shipped_model_makes_digits(shipped):
    models, ns, manifest = shipped
    mean = jnp.asarray(np.asarray(manifest["data_mean"], np.float32))
    white = np.clip(np.random.default_rng(0).standard_normal((200, 8, 8, 1)), -1, 1).astype(np.float32)
    fd_noise = metrics.fd(white)
    for k in range(len(models)):
        x = sampler.generate(models, ns, presets.dpm_solver_pp(ns, 10, 2, model=k), 200, (8, 8, 1), data_mean=mean)
        assert x.dtype == np.float32 and np.all(np.isfinite(x))
        assert metrics.fd(x) < fd_noise / 15  # measured: 17.6 .. 24.2 at N = 200; clipped noise 645


def test_loading_a_plain_zoo_does_not_import_stages():
    """The zoo's multi-stage recipe is imported by module name only for a manifest with a multi-stage entry."""
    import subprocess
    import sys

    code = (
        "import sys; from omsjax import zoo; models, _, _ = zoo.load_zoo(zoo.DEFAULT_ZOO); "
        "assert len(models) >= 4; assert 'omsjax.stages' not in sys.modules, 'omsjax.stages was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
