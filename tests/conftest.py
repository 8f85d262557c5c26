"""Test configuration: float64 and strict dtype promotion everywhere (as in diffrax's test suite), and one on-disk
cache of compiled programs for the session.

The tests mirror the package: `test_<module>.py` for a module of the package root (`test_sampler.py`,
`test_presets.py`, `test_noise.py`, ...), `test_<package>_<module>.py` for a module of a subpackage
(`test_search_encoding.py`, `test_metrics_reference.py`, ...) or `test_<package>.py` for a whole one (`test_train.py`,
`test_stages.py`, `test_zoo.py`), and `test_<module>_<topic>.py` for a module's large topic
(`test_presets_convergence.py`, `test_presets_authors.py`, `test_sampler_heun.py`, `test_models_guidance.py`). What
the whole package promises has its own file: `test_layers.py` (the layers), `test_checks.py`, `test_bad_files.py`
and `test_bad_input_<class>.py` (bad input, a file per class of it), `test_crash_safety.py`, `test_regression.py`
(the pins), `test_shipped_*.py`, `test_docs.py`, `test_examples.py`. Shared cases live in `regression_cases.py` and
`search_cases.py`, shared fixtures here."""

import os
import shutil
import tempfile

# JAX's persistent compilation cache, in a fresh folder per test session (so a run never reuses another run's
# programs): the same program compiled again (after `jax.clear_caches()` between modules, by a new `jax.jit` of
# the same function in another test, in a subprocess, which inherits these variables, or in another pytest-xdist
# worker) is read back from disk instead of compiled again (about 1 s instead of 5-10 s for a sampler on 2 cores).
# Only what the session itself compiled is in it; a cache folder set by the caller is used as it is. A size limit
# turns on JAX's file lock around every read and write (the `filelock` package), so the xdist workers can share
# the folder: without it JAX writes entries in place and a worker could read another's half-written entry.
# XLA's CPU compiler at its fastest-compiling settings: the legacy loop emitters and no LLVM optimisation. Nearly
# every test's time is compilation (a sampler program compiles 2.6x faster, a U-Net train step about 2x) and its
# programs are small, so the slower generated code costs less than it saves. Neither flag allows fast math; float32
# results can differ in the last bits (a U-Net's training losses by ~1e-7), within every test's tolerance, and the
# regression pins recorded under XLA's defaults hold. Appended to flags set by the caller;
# `OMSJAX_TEST_XLA_DEFAULT=1` keeps XLA's defaults.
_FAST_COMPILE = "--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0"
if os.environ.get("OMSJAX_TEST_XLA_DEFAULT") != "1" and _FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()

_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="omsjax-tests-jax-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
_min_secs = float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", _min_secs)
jax.config.update("jax_compilation_cache_max_size", int(os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"]))


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory, worker_id):
    """A zoo of two tiny digits U-Nets ("a" 8 channels, "b" 16), 12 training steps each: (folder, manifest entries).

    Built once per test session: the first pytest-xdist worker to get here trains it under a file lock in the
    session's shared temporary folder, the others wait and read it. Tests must not change it (copy it first)."""
    import json

    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":  # every worker's basetemp is a child of the session's folder
        root = root.parent
    zoo_dir = root / "tiny_zoo"
    with FileLock(str(root / "tiny_zoo.lock")):
        if not (zoo_dir / "manifest.json").exists():
            _build_tiny_zoo(root / "tiny_zoo_runs", zoo_dir)
    return zoo_dir, json.loads((zoo_dir / "manifest.json").read_text())["models"]


def _build_tiny_zoo(runs, zoo_dir):
    from omsjax import data, train, zoo

    images = data.load_digits("train")[:256]
    cfg_a = zoo.named_config("tiny", steps=12)
    d = cfg_a.to_dict()
    d["net"]["channels"] = 16
    cfg_b = train.TrainConfig.from_dict(d)
    tmp = zoo_dir.with_name(zoo_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for name, cfg in (("a", cfg_a), ("b", cfg_b)):
        state = train.train(cfg, images, runs / f"run_{name}", progress=False)
        zoo.add_member(tmp, name, cfg, state.ema_params, train_steps=int(state.step), data_mean=data.data_mean(images),
                       latency_batch=32)  # fmt: skip
    os.replace(tmp, zoo_dir)  # whole or absent: a worker that finds the manifest finds every member


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drop JAX's compiled programs after every test module: one process runs the whole suite, and thousands of
    live CPU executables (each with its own memory mappings) can exhaust the kernel's map limit and abort XLA."""
    yield
    jax.clear_caches()


def pytest_collection_modifyitems(config, items):
    """The files with the most expected seconds first: pytest-xdist's `--dist loadfile` (pyproject's addopts) hands
    out whole files in collection order, so a long file collected last keeps one worker busy while the other idles
    (the slow tier lost about 3 of its 20 minutes that way). A slow test states its expected seconds on 2 cores as
    `@pytest.mark.slow(seconds=S)`; a file's weight is their sum (0 without hints), and the sort is stable, so each
    file's tests stay together and in order, and the fast tier (no hints) keeps its order."""

    def hint(item) -> float:
        mark = item.get_closest_marker("slow")
        return float(mark.kwargs.get("seconds", 0.0)) if mark is not None else 0.0

    weight: dict = {}
    for item in items:
        weight[item.path] = weight.get(item.path, 0.0) + hint(item)
    items[:] = sorted(items, key=lambda item: -weight[item.path])
