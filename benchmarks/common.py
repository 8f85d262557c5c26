"""Helpers shared by the benchmark scripts: timing, the machine's name, and RESULTS.md sections."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import jax

from omsjax import zoo

RESULTS = Path(__file__).parent / "RESULTS.md"
FIGURES = Path(__file__).parent / "figures"


def median_time(fn, *args, repeats=10):
    """Median wall time of `fn(*args)` after one warm-up (compile) call, with block_until_ready."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> str:
    return f"{zoo.machine_name()}; jax {jax.__version__}"


def write_section(text: str, marker: str) -> None:
    """Replace the block between `<!-- marker:begin -->` and `<!-- marker:end -->` of RESULTS.md (or append it)."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    old = RESULTS.read_text() if RESULTS.exists() else "# omsjax benchmark results\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(new)
