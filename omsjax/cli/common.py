"""Helpers that several `omsjax` commands share: the named solvers as schedules, loading a zoo, and `check_out`,
the one check of an output path (`--out`) that every command runs before it computes anything."""

from __future__ import annotations

import os
from pathlib import Path

# The solvers of `omsjax gmm` and `omsjax compare` (names of `omsjax.presets.NAMED`).
SOLVERS = (
    "DDIM",
    "DPM-Solver-2",
    "DPM-Solver-3",
    "DPM-Solver++(2M)",
    "DPM-Solver++(3M)",
    "UniPC-2 (bh1)",
    "UniPC-2 (bh2)",
    "UniPC-3 (bh2)",
)


def flags(args, names: str, **renamed: str) -> dict:
    """The keywords of a call or config built from parsed flags: {name: args.name} for each space-separated name
    in `names`, and {keyword: args.dest} for each `keyword=dest` in `renamed`."""
    return {**{n: getattr(args, n) for n in names.split()}, **{k: getattr(args, d) for k, d in renamed.items()}}


def add_zoo_arg(p, model: str | None = None) -> None:
    """The `--zoo` flag of every command that reads a zoo; with `model` (its help), also `--model K`, a zoo index
    (default None: the command's choice, e.g. the largest model)."""
    p.add_argument("--zoo", default=None, help="zoo folder with manifest.json (default: the shipped digits zoo)")
    if model is not None:
        p.add_argument("--model", type=int, default=None, help=model)


def solver_schedule(name, ns, nfe, skip, model=0):
    """The named solver (a key of presets.NAMED) as a schedule, or None where it has no schedule at this NFE."""
    from omsjax import presets

    kind, kw = presets.NAMED[name]
    try:
        return presets.preset(kind, ns, nfe, skip=skip, model=model, **kw)
    except ValueError:
        return None


def zoo_from_arg(path):
    from omsjax import zoo

    models, ns, manifest = zoo.load_zoo(path)
    return models, ns, manifest, zoo.data_mean(manifest)


# The picture formats `omsjax sample` writes (`plots.save_grid`: matplotlib, by the path's suffix).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")


def check_out(path, *, flag: str = "--out", suffixes: tuple[str, ...] | None = None) -> Path:
    """Check an output path before any sampling or training starts; returns it as a `Path`.

    `suffixes` None: `path` is a folder (created later if missing); otherwise a file whose suffix (any case) is one
    of `suffixes`. A `ValueError` naming `flag` and the path when it is an existing file where a folder is
    expected, an existing folder where a file is expected, a file of another type, or when the nearest existing
    folder above it is a file or not writable.
    """
    p = Path(path)
    if suffixes is None:
        if p.exists() and not p.is_dir():
            raise ValueError(f"{flag} {path} is a file; expected a folder (missing or existing) to write into")
    else:
        if p.is_dir():
            raise ValueError(f"{flag} {path} is a folder; expected a file path ending in {' or '.join(suffixes)}")
        if p.suffix.lower() not in suffixes:
            got = f"type {p.suffix!r}" if p.suffix else "no file type"
            raise ValueError(f"{flag} {path} has {got}; this command writes {' or '.join(suffixes)}")
    here = p.absolute()
    for parent in ([here] if suffixes is None else []) + list(here.parents):  # the nearest existing folder
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{flag} {path}: {parent} is a file, so nothing can be written under it")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(f"{flag} {path}: the folder {parent} is not writable")
            break
    return p


# ---- JAX's persistent compilation cache (on by default for every command)

# Programs that compile faster than this are not written to the cache (JAX's own default is 1 s; a sampler or a
# training step of the digits U-Nets takes 2-10 s on 2 CPU cores, the small helpers around them well under 1 s).
CACHE_MIN_COMPILE_SECONDS = 0.5


def default_cache_dir() -> Path:
    """Where `omsjax` keeps compiled programs: `$OMSJAX_COMPILE_CACHE`, else `$XDG_CACHE_HOME/omsjax/jax`, else
    `~/.cache/omsjax/jax`."""
    env = os.environ.get("OMSJAX_COMPILE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "omsjax" / "jax"


def add_cache_args(p) -> None:
    """`--compile-cache DIR` and `--no-compile-cache` on a command's parser."""
    g = p.add_argument_group("compilation cache")
    g.add_argument(
        "--compile-cache",
        metavar="DIR",
        default=None,
        help="keep compiled programs in DIR, so that the next run of the same command does not compile "
        "them again (default: $OMSJAX_COMPILE_CACHE, else ~/.cache/omsjax/jax; a cache folder "
        "already set for JAX, JAX_COMPILATION_CACHE_DIR, is used as it is)",
    )
    g.add_argument("--no-compile-cache", action="store_true", help="compile everything afresh and keep nothing")


def one_device_per_core() -> int:
    """Give JAX one CPU device per core this process may use (`jax_num_cpu_devices`), so that a search's
    evaluations split their samples over the cores (`search.candidates`): on a 2-core AMD EPYC, 500 digits-m samples
    at NFE 5 take 0.90 s on two devices against 1.85 s on one, whose programs leave the second core mostly idle.
    Returns the count set, or 0 where it is left alone: a count the caller chose (`JAX_NUM_CPU_DEVICES`, or
    `--xla_force_host_platform_device_count` in `XLA_FLAGS`) or JAX already running. GPUs and TPUs are unaffected."""
    import jax

    if "JAX_NUM_CPU_DEVICES" in os.environ or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        jax.config.update("jax_num_cpu_devices", cores)
    except RuntimeError:  # JAX has run something already: its devices stay as they are
        return 0
    return cores


def enable_compile_cache(args) -> str | None:
    """Turn on JAX's persistent compilation cache for this process as the cache flags say; returns the folder in
    use, or None when it is off.

    `--no-compile-cache` turns JAX's cache off (also one set by the caller). Otherwise `--compile-cache DIR` wins;
    without it a folder the caller already set for JAX (`JAX_COMPILATION_CACHE_DIR` or `jax.config`) is kept, and
    else `default_cache_dir()` is used. A `ValueError` names the flag when the folder cannot be created."""
    import jax

    if getattr(args, "no_compile_cache", False):
        if getattr(args, "compile_cache", None) is not None:
            raise ValueError("give either --compile-cache DIR or --no-compile-cache, not both")
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    given = getattr(args, "compile_cache", None)
    current = jax.config.jax_compilation_cache_dir
    if given is None and current:
        return str(current)
    path = Path(given).expanduser() if given is not None else default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        flag = (
            "--compile-cache"
            if given is not None
            else "the compilation cache (set --compile-cache DIR or --no-compile-cache)"
        )
        raise ValueError(f"{flag}: cannot create the folder {path}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"--compile-cache {path}: the folder is not writable")
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECONDS)
    return str(path)


def add_distributed_args(p) -> None:
    """The flags that join this process to the other processes of a multi-process run (`omsjax.distributed`)."""
    g = p.add_argument_group("many processes (jax.distributed; every process runs the same command)")
    g.add_argument(
        "--distributed",
        action="store_true",
        help="join the other processes of this job, found from the cluster's environment (SLURM, Open MPI, TPU pod)",
    )
    g.add_argument("--coordinator", metavar="HOST:PORT", help="join explicitly: process 0's address and a free port")
    g.add_argument("--num-processes", type=int, metavar="N", help="with --coordinator: how many processes join")
    g.add_argument("--process-id", type=int, metavar="I", help="with --coordinator: this process's index, 0..N-1")
    g.add_argument(
        "--heartbeat-timeout",
        type=int,
        metavar="SECONDS",
        default=None,
        help="a process silent this long (dead, or never joined) fails the others with an error (default 100)",
    )


def join_processes(args) -> str | None:
    """Join the other processes as the distributed flags say (`omsjax.distributed.initialize`, before any JAX
    computation) and return `distributed.describe()`, which the command prints; None without those flags. A
    ValueError names the flag that is missing or out of range."""
    explicit = {f: getattr(args, f, None) for f in ("coordinator", "num_processes", "process_id")}
    timeout = getattr(args, "heartbeat_timeout", None)
    if not getattr(args, "distributed", False) and all(v is None for v in explicit.values()):
        if timeout is not None:
            raise ValueError("--heartbeat-timeout needs --distributed or --coordinator")
        return None
    from omsjax import distributed

    given = {f: v for f, v in explicit.items() if v is not None}
    if given and len(given) < 3:
        missing = ", ".join("--" + f.replace("_", "-") for f in explicit if f not in given)
        raise ValueError(f"--coordinator, --num-processes and --process-id go together: give {missing} too")
    if given and getattr(args, "distributed", False):
        raise ValueError("give either --distributed (found from the environment) or --coordinator ..., not both")
    if given and not 0 <= args.process_id < args.num_processes:
        raise ValueError(
            f"--process-id must be in 0..{args.num_processes - 1} (--num-processes), got {args.process_id}"
        )
    seconds = 100 if timeout is None else timeout
    distributed.initialize(
        args.coordinator,
        args.num_processes,
        args.process_id,
        initialization_timeout=max(seconds, 30),
        heartbeat_timeout_seconds=seconds,
    )
    return distributed.describe()
