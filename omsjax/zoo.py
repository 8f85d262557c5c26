"""Model zoos on disk: named training configs, a `manifest.json` per zoo, latency measurement, `load_zoo`.

A zoo folder holds one sub-folder of orbax parameters per model and a manifest:

  {"omsjax_zoo": 1, "dataset": "digits", "image_shape": [8, 8, 1], "noise_schedule": {...},
   "data_mean": [[...]], "models": [{"name", "config", "params", "param_count", "train_steps",
   "latency_ms", "latency_batch", "latency_machine"}, ...]}

`latency_ms` (median jitted forward per batch of `latency_batch` on the named machine) is the cost model of
model-schedule search. The zoo index of a model is its position in `models`.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from omsjax import nets, schedules, train
from omsjax.models import Model
from omsjax.paths import checkpoints_dir

__all__ = [
    "CONFIGS",
    "named_config",
    "measure_latency",
    "machine_name",
    "add_member",
    "load_zoo",
    "remeasure_latency",
    "DEFAULT_ZOO",
]

_VERSION = 1
DEFAULT_ZOO = checkpoints_dir() / "digits"


def _digits(channels, mults=(1, 2), steps=6000, **kw) -> train.TrainConfig:
    net = nets.UNetConfig(channels=channels, channel_mults=mults)
    return train.TrainConfig(net=net, steps=steps, **kw)


# The shipped digits zoo is digits-xxs .. digits-m: widths 10..32 span 10x in parameters (63k .. 634k).
# digits-l (1.4M) is there to train yourself; on a 2-core CPU it costs more than the other four together.
CONFIGS: dict[str, train.TrainConfig] = {
    "digits-xxs": _digits(10),
    "digits-xs": _digits(16),
    "digits-s": _digits(24),
    "digits-m": _digits(32),
    "digits-l": _digits(48),
    "tiny": _digits(8, (1,), steps=200, batch_size=32, warmup=20, checkpoint_every=100),
}


def named_config(name: str, steps: int | None = None) -> train.TrainConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown training config {name!r}; expected one of {sorted(CONFIGS)}")
    cfg = CONFIGS[name]
    if steps is not None:
        if steps < 1:
            raise ValueError(f"--steps must be >= 1, got {steps}")
        d = cfg.to_dict()
        d["steps"] = int(steps)
        cfg = train.TrainConfig.from_dict(d)
    return cfg


def machine_name() -> str:
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = jax.devices()[0]
    return f"{dev.platform}: {cpu}, {os.cpu_count()} cores"


def measure_latency(model: Model, image_shape, batch: int = 256, repeats: int = 20) -> float:
    """Median wall time (ms) of one jitted forward of `model` on a batch, after compilation."""
    x = jnp.zeros((batch, *image_shape), jnp.float32)
    t = jnp.full((batch,), 0.5, jnp.float32)
    f = jax.jit(model.apply_fn)
    jax.block_until_ready(f(model.params, x, t))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(model.params, x, t))
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _read_manifest(zoo_dir: Path) -> dict:
    path = zoo_dir / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"no zoo manifest at {path}")
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if m.get("omsjax_zoo") != _VERSION:
        raise ValueError(f"{path}: not an omsjax zoo manifest of version {_VERSION}")
    for key in ("image_shape", "noise_schedule", "models"):
        if key not in m:
            raise ValueError(f"{path}: the manifest lacks {key!r}")
    return m


def add_member(
    zoo_dir,
    name: str,
    config: train.TrainConfig,
    params,
    *,
    train_steps: int,
    dataset: str = "digits",
    data_mean=None,
    latency_batch: int = 256,
) -> dict:
    """Save `params` (EMA weights) as zoo member `name` and add/replace its manifest entry (latency measured)."""
    zoo_dir = Path(zoo_dir)
    zoo_dir.mkdir(parents=True, exist_ok=True)
    path = zoo_dir / "manifest.json"
    if path.exists():
        manifest = _read_manifest(zoo_dir)
    else:
        manifest = {
            "omsjax_zoo": _VERSION,
            "dataset": dataset,
            "image_shape": list(config.image_shape),
            "noise_schedule": schedules.to_dict(schedules.vp_linear()) if config.precond == "vp" else
            schedules.to_dict(schedules.edm()),
            "models": [],
        }  # fmt: skip
    if list(config.image_shape) != manifest["image_shape"]:
        raise ValueError(f"member {name!r} has image shape {config.image_shape}, the zoo {manifest['image_shape']}")
    if data_mean is not None:
        manifest["data_mean"] = np.asarray(data_mean, np.float64).tolist()
    params_dir = zoo_dir / name / "params"
    train.save_params(params_dir, params)
    model = train.model_from_params(config, params, name=name)
    entry = {
        "name": name,
        "config": config.to_dict(),
        "params": f"{name}/params",
        "param_count": nets.param_count(params),
        "train_steps": int(train_steps),
        "latency_ms": measure_latency(model, config.image_shape, latency_batch),
        "latency_batch": latency_batch,
        "latency_machine": machine_name(),
    }
    manifest["models"] = [m for m in manifest["models"] if m["name"] != name] + [entry]
    manifest["models"].sort(key=lambda m: m["param_count"])
    path.write_text(json.dumps(manifest, indent=2))
    return entry


def load_zoo(path=DEFAULT_ZOO):
    """(models, noise_schedule, manifest) of a zoo folder; models ordered as in the manifest (their zoo index),
    each with its measured latency (ms per batch) filled in."""
    zoo_dir = Path(path)
    manifest = _read_manifest(zoo_dir)
    ns = schedules.from_dict(manifest["noise_schedule"])
    image_shape = tuple(manifest["image_shape"])
    models = []
    for i, entry in enumerate(manifest["models"]):
        for key in ("name", "config", "params", "latency_ms"):
            if key not in entry:
                raise ValueError(f"{zoo_dir / 'manifest.json'}: model {i} lacks {key!r}")
        cfg = train.TrainConfig.from_dict(entry["config"])
        like = jax.eval_shape(lambda cfg=cfg: nets.init_unet(cfg.net, jax.random.PRNGKey(0), image_shape))
        params_dir = zoo_dir / entry["params"]
        if not params_dir.exists():
            raise FileNotFoundError(f"zoo model {entry['name']!r}: no parameters at {params_dir}")
        params = train.load_params(params_dir, like)
        models.append(train.model_from_params(cfg, params, latency=float(entry["latency_ms"]), name=entry["name"]))
    if not models:
        raise ValueError(f"{zoo_dir / 'manifest.json'} lists no models")
    return tuple(models), ns, manifest


def remeasure_latency(path=DEFAULT_ZOO, *, batch: int | None = None, repeats: int = 20) -> dict:
    """Measure every model's latency again (e.g. on a quiet machine, or on the machine that will sample) and
    rewrite `manifest.json`; returns the manifest. `batch` defaults to each entry's `latency_batch`."""
    zoo_dir = Path(path)
    models, _, manifest = load_zoo(zoo_dir)
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    shape = tuple(manifest["image_shape"])
    name = machine_name()
    for model, entry in zip(models, manifest["models"], strict=True):
        b = int(batch or entry.get("latency_batch", 256))
        entry["latency_ms"] = measure_latency(model, shape, b, repeats)
        entry["latency_batch"] = b
        entry["latency_machine"] = name
    (zoo_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
