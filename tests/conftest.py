"""Test configuration: float64 and strict dtype promotion everywhere (as in diffrax's test suite)."""

import jax
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """A zoo of two tiny digits U-Nets ("a" 8 channels, "b" 16), 12 training steps each: (folder, entries)."""
    from omsjax import data, train, zoo

    root = tmp_path_factory.mktemp("zoo")
    images = data.load_digits("train")[:256]
    cfg_a = zoo.named_config("tiny", steps=12)
    d = cfg_a.to_dict()
    d["net"]["channels"] = 16
    cfg_b = train.TrainConfig.from_dict(d)
    entries = []
    for name, cfg in (("a", cfg_a), ("b", cfg_b)):
        state = train.train(cfg, images, root / f"run_{name}", progress=False)
        entries.append(zoo.add_member(root / "zoo", name, cfg, state.ema_params, train_steps=int(state.step),
                                      data_mean=data.data_mean(images), latency_batch=32))  # fmt: skip
    return root / "zoo", entries


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop JAX's compiled programs after every test module: one process runs the whole suite, and thousands of
    live CPU executables (each with its own memory mappings) can exhaust the kernel's map limit and abort XLA."""
    yield
    jax.clear_caches()
