"""Several JAX processes on this machine, joined as a multi-host job would be (tests/test_distributed.py).

`run_script(source, processes=P, devices=D)` starts P Python processes, each with D forced CPU devices, joined by
`omsjax.distributed.initialize` on a free localhost port (gloo collectives), and runs `source` in each after
`PRELUDE` (which sets `PROCESS`, `PROCESSES`); `run_cli(args, ...)` runs `python -m omsjax ARGS --coordinator ...
--process-id I` the same way. Both wait at most `timeout` seconds, then kill every process and fail: a hang
fails the test instead of blocking CI. P = 1 runs the same code in one process without joining (the reference).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent

PRELUDE = """
import os, sys
sys.path.insert(0, os.environ["OMSJAX_TEST_DIR"])
from omsjax import distributed
PROCESS, PROCESSES = int(os.environ["OMSJAX_TEST_PROCESS"]), int(os.environ["OMSJAX_TEST_PROCESSES"])
if PROCESSES > 1:
    distributed.initialize(os.environ["OMSJAX_TEST_COORDINATOR"], PROCESSES, PROCESS, initialization_timeout=60,
                           heartbeat_timeout_seconds=int(os.environ["OMSJAX_TEST_HEARTBEAT"]))
"""


class Finished(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(i: int, processes: int, devices: int, coordinator: str, heartbeat: int) -> dict:
    # XLA's own optimisation, not tests/conftest.py's fast-compile flags: a digits search at -O0 runs 10x slower.
    fast = ("--xla_cpu_use_fusion_emitters=false", "--xla_backend_optimization_level=0")
    xla = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if f not in fast)
    return {
        **os.environ,
        "XLA_FLAGS": xla,
        "PYTHONPATH": str(REPO),
        "JAX_NUM_CPU_DEVICES": str(devices),
        "OMSJAX_TEST_DIR": str(REPO / "tests"),
        "OMSJAX_TEST_PROCESS": str(i),
        "OMSJAX_TEST_PROCESSES": str(processes),
        "OMSJAX_TEST_COORDINATOR": coordinator,
        "OMSJAX_TEST_HEARTBEAT": str(heartbeat),
    }


def start(commands: list[list[str]], devices: int, coordinator: str, heartbeat: int, cwd) -> list[subprocess.Popen]:
    """Start one process per command (process i runs commands[i]); stdout and stderr go to temporary files, not
    pipes: a process blocked on a full pipe would stall the collectives of the others."""
    n = len(commands)
    procs = []
    for i, cmd in enumerate(commands):
        out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        env = _env(i, n, devices, coordinator, heartbeat)
        p = subprocess.Popen(cmd, env=env, cwd=cwd, text=True, stdout=out, stderr=err)
        p.outputs = (out, err)
        procs.append(p)
    return procs


def _read(p: subprocess.Popen) -> tuple[str, str]:
    texts = []
    for fh in p.outputs:
        fh.seek(0)
        texts.append(fh.read())
        fh.close()
    return texts[0], texts[1]


def wait(procs: list[subprocess.Popen], timeout: float) -> list[Finished]:
    """Every process's result; after `timeout` seconds, kill them all and fail with their stderr."""
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
                q.wait()
            tails = [quiet(_read(q)[1])[-3000:] for q in procs]
            raise AssertionError(f"processes still running after {timeout} s (a hang?); stderr: {tails}") from None
    return [Finished(p.returncode, *_read(p)) for p in procs]


def quiet(text: str) -> str:
    """Output without gloo's connection lines."""
    return "\n".join(line for line in text.splitlines() if "[Gloo]" not in line)


def run_script(source: str, *, processes: int = 2, devices: int = 2, timeout: float = 300, cwd=None) -> list[Finished]:
    """`source` (after `PRELUDE`) in `processes` joined processes of `devices` CPU devices each."""
    code = PRELUDE + textwrap.dedent(source)
    coordinator = f"localhost:{free_port()}"
    procs = start([[sys.executable, "-c", code]] * processes, devices, coordinator, 30, cwd or REPO)
    return wait(procs, timeout)


def cli_commands(args: list[str], processes: int, coordinator: str, heartbeat: int = 30) -> list[list[str]]:
    """`python -m omsjax ARGS` for each process, joined with --coordinator (one process: not joined)."""
    base = [sys.executable, "-m", "omsjax", *args]
    if processes == 1:
        return [base]
    join = ["--coordinator", coordinator, "--num-processes", str(processes), "--heartbeat-timeout", str(heartbeat)]
    return [[*base, *join, "--process-id", str(i)] for i in range(processes)]


def run_cli(args: list[str], *, processes: int = 2, devices: int = 2, timeout: float = 300, cwd=None) -> list[Finished]:
    coordinator = f"localhost:{free_port()}"
    procs = start(cli_commands(args, processes, coordinator), devices, coordinator, 30, cwd or REPO)
    return wait(procs, timeout)
