"""Many processes, one computation: joining JAX's multi-controller runtime, and the few collectives omsjax needs.

Every process of a multi-host job (a TPU pod slice, a SLURM job over GPU hosts, or several CPU processes on one
machine) runs the same program; `initialize` joins them (`jax.distributed.initialize`), after which
`jax.devices()` lists the devices of every process and one `jit` over a mesh of them runs on all. omsjax never
joins by itself: a program calls `initialize` (or `jax.distributed.initialize`) first, before any JAX computation,
and the `omsjax` command does it for `--distributed` or `--coordinator ... --num-processes N --process-id I`.

- `initialize(...)`: `jax.distributed.initialize` with its arguments (all optional: SLURM, Open MPI and TPU pods
  are detected), selecting gloo collectives for CPU devices, so that CPU processes can run collectives at all.
- `process_index`, `process_count`, `is_writer` (process 0: the one process that writes files, `omsjax.files`),
  `describe` ("process 0 of 2: 2 local devices of 4 (cpu)").
- `broadcast(obj)`: process 0's Python object (pickled) on every process; `allgather(a)`: a global array's value
  on every process's host; `put(tree, sharding)`: host values placed on a mesh, each process its own parts.

Without `initialize`, every function here is the one-process identity (no collective, no backend started by
`is_writer`), so the library runs unchanged in one process.
"""

from __future__ import annotations

import pickle
from typing import Any

import jax
import numpy as np

__all__ = ["initialize", "is_initialized", "process_index", "process_count", "is_writer", "describe"]
__all__ += ["broadcast", "allgather", "put", "local_checkpointer"]


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    initialization_timeout: int = 300,
    heartbeat_timeout_seconds: int = 100,
    **kwargs: Any,
) -> None:
    """Join this process to the others (`jax.distributed.initialize`, same arguments; with none, the cluster is
    detected: SLURM, Open MPI, TPU pods). Call it once, before any JAX computation. It also selects gloo
    collectives for CPU devices (`jax_cpu_collectives_implementation`), which the CPU backend needs to run
    collectives across processes; GPUs and TPUs are unaffected.

    A process that does not join within `initialization_timeout` seconds, or stops answering for
    `heartbeat_timeout_seconds`, makes the others fail with an error instead of waiting for ever."""
    if jax.distributed.is_initialized():
        raise RuntimeError("omsjax.distributed.initialize: this process has joined already")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address,
        num_processes,
        process_id,
        initialization_timeout=initialization_timeout,
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
        **kwargs,
    )


def is_initialized() -> bool:
    """Whether this process has joined others (`jax.distributed.initialize` ran)."""
    return jax.distributed.is_initialized()


def process_index() -> int:
    """This process's index, 0 .. process_count() - 1 (0 in a one-process run, without starting JAX's backend)."""
    return jax.process_index() if is_initialized() else 0


def process_count() -> int:
    """How many processes run this program (1 unless `initialize` joined several)."""
    return jax.process_count() if is_initialized() else 1


def is_writer() -> bool:
    """Whether this process writes files: process 0 alone (`omsjax.files` skips every write on the others)."""
    return process_index() == 0


def describe() -> str:
    """'process I of N: L local devices of D (platform)', what a command launched on several processes prints."""
    return (
        f"process {process_index()} of {process_count()}: {jax.local_device_count()} local devices of "
        f"{jax.device_count()} ({jax.default_backend()})"
    )


def broadcast(obj: Any) -> Any:
    """Process 0's `obj` on every process (pickled, sent with two collectives); `obj` itself in one process.
    Every process must call it, in the same order."""
    if process_count() == 1:
        return obj
    from jax.experimental import multihost_utils

    data = np.frombuffer(pickle.dumps(obj), np.uint8) if process_index() == 0 else np.zeros(0, np.uint8)
    size = int(multihost_utils.broadcast_one_to_all(np.int64(data.size)))
    buf = np.zeros(size, np.uint8)
    buf[: data.size] = data
    out = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return obj if process_index() == 0 else pickle.loads(out.tobytes())


def put(tree: Any, sharding) -> Any:
    """`tree`'s leaves (host values, the same on every process) as arrays placed by `sharding`: `jax.device_put` in
    one process; over several, each process copies only the parts its own devices hold, from its own values (no
    collective: `device_put` would first check with the others that every value is the same)."""
    if process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(a):
        host = np.asarray(a)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree)


def allgather(a: jax.Array) -> np.ndarray:
    """The value of a (possibly multi-process) array on this host: `np.asarray` for an array this process holds
    whole, else the shards of every process gathered (`multihost_utils.process_allgather`)."""
    if not isinstance(a, jax.Array) or a.is_fully_addressable or a.is_fully_replicated:
        return np.asarray(a)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(a, tiled=True))


def local_checkpointer():
    """An orbax `StandardCheckpointer` of this process alone: it reads (or writes) without waiting for the other
    processes at orbax's barriers, for files every process reads for itself (a zoo's parameters, the classifier),
    at whatever moment it needs them. Writes stay process 0's (`save_params` checks `is_writer`)."""
    import orbax.checkpoint as ocp

    i = process_index()
    only_me = ocp.options.MultiprocessingOptions(
        primary_host=i, active_processes={i}, barrier_sync_key_prefix=f"omsjax-process-{i}"
    )
    return ocp.StandardCheckpointer(multiprocessing_options=only_me)
