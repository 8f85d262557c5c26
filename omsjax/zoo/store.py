"""Zoo folders: `add_member` (parameters saved, latency measured, the manifest rewritten atomically),
`check_member`, `load_zoo` (models in manifest order, each error naming the member), `remeasure_latency`, and
the manifest's `data_mean` and `num_classes`."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from omsjax import fields, files, nets, noise, train
from omsjax.models import Model
from omsjax.paths import checkpoints_dir
from omsjax.zoo.latency import machine_name
from omsjax.zoo.manifest import VERSION, read_manifest
from omsjax.zoo.recipes import entry_config, entry_kind, kind_of, latency_fields, recipe

__all__ = [
    "DEFAULT_ZOO",
    "COND_ZOO",
    "add_member",
    "check_member",
    "load_zoo",
    "data_mean",
    "num_classes",
    "remeasure_latency",
]

DEFAULT_ZOO = checkpoints_dir() / "digits"
COND_ZOO = checkpoints_dir() / "digits-cond"  # class-conditional: labels 0..9, null label 10


def add_member(
    zoo_dir,
    name: str,
    config: Any,
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
    kind = kind_of(config)
    rec = recipe(kind)
    zoo_dir = Path(zoo_dir)
    zoo_dir.mkdir(parents=True, exist_ok=True)
    path = zoo_dir / "manifest.json"
    ns = noise.to_dict(rec.noise_schedule(config))
    if path.exists():
        manifest = read_manifest(zoo_dir)
    else:
        manifest = {
            "omsjax_zoo": VERSION,
            "dataset": dataset,
            "image_shape": list(config.image_shape),
            "noise_schedule": ns,
            "models": [],
        }
    _check_fits(manifest, name, config)
    if data_mean is not None:
        manifest["data_mean"] = np.asarray(data_mean, np.float64).tolist()
    params_dir = zoo_dir / name / "params"
    train.save_params(params_dir, params)
    model = rec.to_model(config, params, 1.0, name)
    entry = {"name": name}
    if kind is not None:
        entry["kind"] = kind
    entry.update(
        {
            "config": config.to_dict(),
            "params": f"{name}/params",
            "param_count": nets.param_count(params),
            "train_steps": int(train_steps),
            **latency_fields(model, config, config.image_shape, latency_batch, kind=kind),
            "latency_batch": latency_batch,
            "latency_machine": machine_name(),
        }
    )
    entry.update(rec.entry_fields(config, params))
    manifest["models"] = [m for m in manifest["models"] if m["name"] != name] + [entry]
    manifest["models"].sort(key=lambda m: m["param_count"])
    files.write_json(path, manifest)
    return entry


def check_member(zoo_dir, name: str, config: Any) -> None:
    """Check now (before training) that `add_member(zoo_dir, name, config, ...)` will take a member of `config`:
    the zoo's manifest, if there is one, reads back and has the config's image shape and noise schedule."""
    if (Path(zoo_dir) / "manifest.json").exists():
        _check_fits(read_manifest(Path(zoo_dir)), name, config)


def _check_fits(manifest: dict, name: str, config: Any) -> None:
    rec = recipe(kind_of(config))
    ns = noise.to_dict(rec.noise_schedule(config))
    if list(config.image_shape) != manifest["image_shape"]:
        raise ValueError(f"member {name!r} has image shape {config.image_shape}, the zoo {manifest['image_shape']}")
    others = {_entry_classes(m) for m in manifest["models"] if m.get("name") != name}
    k = int(getattr(getattr(config, "net", None), "num_classes", 0))
    if others and others != {k}:
        raise ValueError(
            f"member {name!r} has net.num_classes {k}, the zoo's other members {sorted(others)}: a zoo's "
            f"members all take the same labels (0 = unconditional)"
        )
    if manifest["noise_schedule"] != ns:
        what = rec.describe(config)
        raise ValueError(
            f"member {name!r} ({what}) is sampled on the noise schedule {ns}, the zoo on {manifest['noise_schedule']}"
        )


def load_zoo(path=DEFAULT_ZOO):
    """(models, noise_schedule, manifest) of a zoo folder; models ordered as in the manifest (their zoo index),
    each with its measured latency (ms per batch) filled in."""
    zoo_dir = Path(path)
    manifest = read_manifest(zoo_dir)
    where = zoo_dir / "manifest.json"
    try:
        ns = noise.from_dict(manifest["noise_schedule"])
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{where}: field 'noise_schedule' is not a noise schedule: {e}") from None
    image_shape = tuple(manifest["image_shape"])
    models = []
    for i, entry in enumerate(manifest["models"]):
        models.append(_load_member(zoo_dir, i, entry, image_shape))
    if not models:
        raise ValueError(f"{where} lists no models")
    return tuple(models), ns, manifest


def data_mean(manifest: dict) -> jax.Array | None:
    """The manifest's "data_mean" (the training images' mean, for FDM's mean-shifted prior) as a float32 array,
    or None when the zoo has none."""
    mean = manifest.get("data_mean")
    return None if mean is None else jnp.asarray(np.asarray(mean, np.float32))


def _entry_classes(entry: dict) -> int:
    net = entry.get("config", {}).get("net", {}) if isinstance(entry.get("config"), dict) else {}
    return int(net.get("num_classes", 0)) if isinstance(net, dict) else 0


def num_classes(manifest: dict) -> int:
    """K > 0 for a class-conditional zoo (every member takes labels 0..K-1, and K is the null label: the `uncond`
    of classifier-free guidance), 0 for an unconditional one; a ValueError when the members disagree (every member
    of a zoo is called with the same conditioning)."""
    ks = {m.get("name", i): _entry_classes(m) for i, m in enumerate(manifest["models"])}
    if len(set(ks.values())) > 1:
        raise ValueError(f"the zoo's members disagree on their classes (net.num_classes): {ks}")
    return next(iter(ks.values()), 0)


def _load_member(zoo_dir: Path, i: int, entry: dict, image_shape: tuple) -> Model:
    """The `Model` of manifest entry `i` (its `sample_shape` the zoo's image shape); errors name the member."""
    name = entry["name"]
    who = f"zoo {zoo_dir}: member {i} {name!r}"
    rec = recipe(entry_kind(entry, str(zoo_dir / "manifest.json")))
    try:
        cfg = rec.config_class.from_dict(entry["config"])
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{who}: field 'config' is not a valid config: {e}") from None
    if tuple(cfg.image_shape) != image_shape:
        raise ValueError(
            f"{who}: the manifest's image_shape {list(image_shape)} differs from the member config's "
            f"image_shape {list(cfg.image_shape)}"
        )
    init = functools.partial(rec.init_params, cfg, jax.random.PRNGKey(0), image_shape)
    params_dir = zoo_dir / entry["params"]
    if not params_dir.exists():
        raise FileNotFoundError(f"zoo model {name!r}: no parameters at {params_dir}")
    try:
        by = f"its config (for images {list(image_shape)})"
        params = train.load_params(params_dir, jax.eval_shape(init), expected_by=by)
    except ValueError as e:
        raise ValueError(f"{who}: {e}") from None
    model = rec.to_model(cfg, params, float(entry["latency_ms"]), name)
    return model.replace(sample_shape=image_shape)


def remeasure_latency(path=DEFAULT_ZOO, *, batch: int | None = None, repeats: int = 20) -> dict:
    """Measure every model's latency again (e.g. on a quiet machine, or on the machine that will sample) and
    rewrite `manifest.json`; returns the manifest. `batch` defaults to each entry's `latency_batch`."""
    if batch is not None:
        batch = fields.count("remeasure_latency: batch", batch)
    repeats = fields.count("remeasure_latency: repeats", repeats)
    zoo_dir = Path(path)
    models, _, manifest = load_zoo(zoo_dir)
    shape = tuple(manifest["image_shape"])
    name = machine_name()
    for model, entry in zip(models, manifest["models"], strict=True):
        b = int(batch or entry.get("latency_batch", 256))
        kind = entry_kind(entry, str(zoo_dir))
        entry.update(latency_fields(model, entry_config(entry, str(zoo_dir)), shape, b, repeats, kind=kind))
        entry["latency_batch"] = b
        entry["latency_machine"] = name
    files.write_json(zoo_dir / "manifest.json", manifest)
    return manifest
