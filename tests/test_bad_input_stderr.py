"""Bad input, class 10: noise on stderr. Loading a zoo whose parameters are damaged or missing raises the error
that names the member and the folder, and nothing else reaches stderr: not orbax's absl warnings about its
metadata, not the dozens of "Event loop is closed" tracebacks that TensorStore's late reads of a failed restore
used to leave behind (`train.checkpoints` drops exactly those). Each case runs the CLI in a fresh process, as a
user would, and reads its whole stderr."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from omsjax.zoo import store


def _damage(params: Path, how: str) -> None:
    if how == "empty folder":
        shutil.rmtree(params)
        params.mkdir()
    elif how == "garbage manifest.ocdbt":
        (params / "manifest.ocdbt").write_bytes(os.urandom(64))
    elif how == "garbage data":
        for f in (params / "d").iterdir():
            f.write_bytes(os.urandom(64))
    elif how == "garbage _METADATA":
        (params / "_METADATA").write_bytes(os.urandom(64))
    else:
        raise AssertionError(how)


SLOW = pytest.mark.slow(seconds=12)  # a CLI process each: the default run keeps the case that printed the most


@pytest.mark.parametrize(
    "how",
    [
        pytest.param("empty folder", marks=SLOW),
        "garbage manifest.ocdbt",
        pytest.param("garbage data", marks=SLOW),
        pytest.param("garbage _METADATA", marks=SLOW),
    ],
)
def test_a_damaged_member_is_one_line_on_stderr(how, tmp_path):
    zoo = tmp_path / "zoo"
    shutil.copytree(store.DEFAULT_ZOO, zoo, ignore=shutil.ignore_patterns("references.npz", "schedules"))
    _damage(zoo / "digits-xxs" / "params", how)
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # warnings shown, as a user's terminal shows them
    proc = subprocess.run([sys.executable, "-m", "omsjax", "zoo", "--zoo", str(zoo), "--no-compile-cache"],
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr[:3000]
    assert "member 0 'digits-xxs'" in lines[0] and str(zoo / "digits-xxs" / "params") in lines[0]
