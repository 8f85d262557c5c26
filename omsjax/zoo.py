"""Model zoos on disk: named training configs, a `manifest.json` per zoo, latency measurement, `load_zoo`.

A zoo folder holds one sub-folder of orbax parameters per model and a manifest:

  {"omsjax_zoo": 1, "dataset": "digits", "image_shape": [8, 8, 1], "noise_schedule": {...},
   "data_mean": [[...]], "models": [{"name", "config", "params", "param_count", "train_steps",
   "latency_ms", "latency_batch", "latency_machine"}, ...]}

`latency_ms` (median jitted forward per batch of `latency_batch` on the named machine) is the cost model of
model-schedule search. The zoo index of a model is its position in `models`.

A multi-stage network (`omsjax.stages`) joins a continuous-VP zoo like any U-Net: its entry has "kind":
"multistage", "config" a `StageTrainConfig.to_dict()`, "active_params" (encoder + decoder k, per stage) and
"latency_ms_per_stage" (measured at the middle of each stage's interval); its "latency_ms" is the mean over the
stages. Entries without "kind" are U-Nets (`TrainConfig`), as in every older manifest.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from omsjax import nets, schedules, stages, train
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
    "MULTISTAGE",
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


MULTISTAGE = "multistage"  # the "kind" of a multi-stage entry


def _stage_times(config: stages.StageTrainConfig) -> list[float]:
    """The middle of each stage's time interval, where its latency is measured."""
    e = config.edges
    return [0.5 * (a + b) for a, b in zip(e[:-1], e[1:], strict=True)]


def _latency(model: Model, config, image_shape, batch: int, repeats: int = 20) -> dict:
    """The latency fields of a manifest entry: "latency_ms" (a multi-stage network: the mean over its stages, and
    "latency_ms_per_stage")."""
    if isinstance(config, stages.StageTrainConfig):
        per = [measure_latency(model, image_shape, batch, repeats, t=t) for t in _stage_times(config)]
        return {"latency_ms": float(np.mean(per)), "latency_ms_per_stage": per}
    return {"latency_ms": measure_latency(model, image_shape, batch, repeats)}


def _entry_config(entry: dict, where: str):
    """The config of a manifest entry: a `StageTrainConfig` ("kind": "multistage") or a `TrainConfig` (no kind)."""
    kind = entry.get("kind")
    if kind == MULTISTAGE:
        return stages.StageTrainConfig.from_dict(entry["config"])
    if kind is not None:
        raise ValueError(f"{where}: model {entry.get('name')!r} has unknown kind {kind!r}; expected {MULTISTAGE!r}")
    return train.TrainConfig.from_dict(entry["config"])


def _member_model(config, params, latency: float, name: str) -> Model:
    if isinstance(config, stages.StageTrainConfig):
        return stages.to_model(config, params, latency=latency, name=name)
    return train.model_from_params(config, params, latency=latency, name=name)


def add_member(
    zoo_dir,
    name: str,
    config: train.TrainConfig | stages.StageTrainConfig,
    params,
    *,
    train_steps: int,
    dataset: str = "digits",
    data_mean=None,
    latency_batch: int = 256,
) -> dict:
    """Save `params` (EMA weights) as zoo member `name` and add/replace its manifest entry (latency measured).

    `config`: a `train.TrainConfig` (a U-Net, sampled on `train.noise_schedule(config.precond)`) or a
    `stages.StageTrainConfig` (a multi-stage network, continuous linear VP); the zoo's noise schedule must match.
    """
    if not isinstance(config, (train.TrainConfig, stages.StageTrainConfig)):
        raise ValueError(f"config must be a train.TrainConfig or stages.StageTrainConfig, got {type(config).__name__}")
    zoo_dir = Path(zoo_dir)
    zoo_dir.mkdir(parents=True, exist_ok=True)
    path = zoo_dir / "manifest.json"
    multistage = isinstance(config, stages.StageTrainConfig)
    ns = schedules.to_dict(schedules.vp_linear() if multistage else train.noise_schedule(config.precond))
    if path.exists():
        manifest = _read_manifest(zoo_dir)
    else:
        manifest = {
            "omsjax_zoo": _VERSION,
            "dataset": dataset,
            "image_shape": list(config.image_shape),
            "noise_schedule": ns,
            "models": [],
        }
    if list(config.image_shape) != manifest["image_shape"]:
        raise ValueError(f"member {name!r} has image shape {config.image_shape}, the zoo {manifest['image_shape']}")
    if manifest["noise_schedule"] != ns:
        what = "a multi-stage network" if multistage else f"precond {config.precond!r}"
        raise ValueError(
            f"member {name!r} ({what}) is sampled on the noise schedule {ns}, the zoo on {manifest['noise_schedule']}"
        )
    if data_mean is not None:
        manifest["data_mean"] = np.asarray(data_mean, np.float64).tolist()
    params_dir = zoo_dir / name / "params"
    train.save_params(params_dir, params)
    model = _member_model(config, params, 1.0, name)
    entry = {"name": name}
    if multistage:
        entry["kind"] = MULTISTAGE
    entry.update({
        "config": config.to_dict(),
        "params": f"{name}/params",
        "param_count": nets.param_count(params),
        "train_steps": int(train_steps),
        **_latency(model, config, config.image_shape, latency_batch),
        "latency_batch": latency_batch,
        "latency_machine": machine_name(),
    })  # fmt: skip
    if multistage:
        entry["active_params"] = [stages.active_params(params, k) for k in range(config.net.num_stages)]
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
        cfg = _entry_config(entry, str(zoo_dir / "manifest.json"))
        if isinstance(cfg, stages.StageTrainConfig):
            init = functools.partial(stages.init_params, cfg.net, jax.random.PRNGKey(0), image_shape)
        else:
            init = functools.partial(nets.init_unet, cfg.net, jax.random.PRNGKey(0), image_shape)
        params_dir = zoo_dir / entry["params"]
        if not params_dir.exists():
            raise FileNotFoundError(f"zoo model {entry['name']!r}: no parameters at {params_dir}")
        params = train.load_params(params_dir, jax.eval_shape(init))
        models.append(_member_model(cfg, params, float(entry["latency_ms"]), entry["name"]))
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
        entry.update(_latency(model, _entry_config(entry, str(zoo_dir)), shape, b, repeats))
        entry["latency_batch"] = b
        entry["latency_machine"] = name
    (zoo_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
