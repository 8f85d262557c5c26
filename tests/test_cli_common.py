"""`omsjax`'s process settings: the persistent compilation cache (the flags, their errors, a second process that
compiles nothing new) and one CPU device per core for `omsjax search`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from omsjax import cli
from omsjax.cli import common

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def jax_cache_config():
    """Restore JAX's cache settings after a test that changes them in this process."""
    names = ("jax_compilation_cache_dir", "jax_enable_compilation_cache", "jax_persistent_cache_min_compile_time_secs")
    saved = {n: getattr(jax.config, n) for n in names}
    yield
    for n, v in saved.items():
        jax.config.update(n, v)


def _args(*argv):
    return cli.build_parser().parse_args(["stages", "config", "--boundaries", "0.3", "0.6", *argv])


def test_cache_flags_choose_the_folder(tmp_path, monkeypatch, jax_cache_config):
    assert jax.config.jax_compilation_cache_dir  # the test session's own cache (conftest): kept without a flag
    assert common.enable_compile_cache(_args()) == jax.config.jax_compilation_cache_dir
    target = tmp_path / "a" / "b"
    assert common.enable_compile_cache(_args("--compile-cache", str(target))) == str(target)
    assert target.is_dir() and jax.config.jax_compilation_cache_dir == str(target)
    assert jax.config.jax_persistent_cache_min_compile_time_secs == common.CACHE_MIN_COMPILE_SECONDS
    assert common.enable_compile_cache(_args("--no-compile-cache")) is None
    assert jax.config.jax_enable_compilation_cache is False
    jax.config.update("jax_compilation_cache_dir", None)  # no folder set for JAX: the default one
    monkeypatch.setenv("OMSJAX_COMPILE_CACHE", str(tmp_path / "env"))
    assert common.enable_compile_cache(_args()) == str(tmp_path / "env")
    assert jax.config.jax_enable_compilation_cache is True
    monkeypatch.delenv("OMSJAX_COMPILE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert common.default_cache_dir() == tmp_path / "xdg" / "omsjax" / "jax"


def test_bad_cache_flags_are_errors(tmp_path, capsys, jax_cache_config):
    (tmp_path / "file").write_text("x")
    argv = ["stages", "config", "--boundaries", "0.3", "0.6"]
    assert cli.main(argv + ["--compile-cache", str(tmp_path / "file" / "sub")]) == 2
    assert "--compile-cache" in capsys.readouterr().err
    assert cli.main(argv + ["--compile-cache", str(tmp_path), "--no-compile-cache"]) == 2
    assert "not both" in capsys.readouterr().err
    parse = cli.build_parser().parse_args  # every command that runs has the flags, nested ones included
    for command in (["evaluate"], ["search"], ["stages", "cluster"], ["train"], ["gmm"]):
        with pytest.raises(SystemExit):
            parse(command + ["--help"])
        assert "--no-compile-cache" in capsys.readouterr().out


@pytest.mark.slow  # two processes that each compile an NFE-2 sampler program and diffrax's reference (about 30 s)
def test_a_second_process_reads_its_programs_from_the_cache(tmp_path):
    # A user's environment: no JAX settings, and XLA's own optimisation (tests/conftest.py's fast-compile flags make
    # the sampler compile in under the CLI's 0.5 s threshold for caching on a fast CPU, and nothing is cached).
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") and k != "XLA_FLAGS"}
    cache = tmp_path / "cache"
    argv = [sys.executable, "-m", "omsjax", "gmm", "--nfe", "2", "--batch", "4", "--json"]
    argv += ["--compile-cache", str(cache)]

    def run():
        res = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout), {p.name for p in cache.iterdir() if p.name.endswith("-cache")}

    first, entries = run()
    assert any(name.startswith("jit__lambda") for name in entries)  # the sampler program
    second, again = run()
    assert again == entries  # nothing new compiled and written
    assert second == first


def test_search_takes_one_cpu_device_per_core():
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS", "JAX_PLATFORMS")}
    env["JAX_PLATFORMS"] = "cpu"
    cores = len(os.sched_getaffinity(0))

    def run(first="pass", **extra):
        code = f"import jax; from omsjax.cli import common; {first}; print(common.one_device_per_core(), " \
            "len(jax.devices()))"  # fmt: skip
        res = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True,
                             timeout=120, cwd=REPO)  # fmt: skip
        assert res.returncode == 0, res.stderr[-2000:]
        return res.stdout.split()

    assert run() == [str(cores), str(cores)]
    assert run("jax.numpy.zeros(1)") == ["0", "1"]  # JAX running already: its devices stay as they are
