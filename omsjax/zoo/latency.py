"""Latency, the cost model of model-schedule search: `measure_latency` (median jitted forward per batch) and
`machine_name` (the machine a measurement is recorded on)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from omsjax.models import Model

__all__ = ["machine_name", "measure_latency"]


def machine_name() -> str:
    """The machine's name as measurements record it: "{platform}: {CPU model}, {cores} cores"."""
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = jax.local_devices()[0]
    return f"{dev.platform}: {cpu}, {os.cpu_count()} cores"


def measure_latency(model: Model, image_shape, batch: int = 256, repeats: int = 20, t: float = 0.5) -> float:
    """Median wall time (ms) of one jitted forward of `model` on a batch at time `t`, after compilation."""
    x = jnp.zeros((batch, *image_shape), jnp.float32)
    t = jnp.full((batch,), t, jnp.float32)
    f = jax.jit(model.apply_fn)
    jax.block_until_ready(f(model.params, x, t))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(model.params, x, t))
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)
