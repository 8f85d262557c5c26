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

How a member is stored and loaded (its config class, parameter shapes, `Model`, noise schedule, latency points and
extra manifest fields) is its kind's `Recipe`, from a registry keyed by the entry's kind and imported by module
name only when a manifest (or `add_member`) has that kind: loading a zoo of U-Nets does not import `omsjax.stages`.

Nothing silent: a manifest that is not a JSON object of this form, a field of the wrong type, a member whose config
disagrees with the zoo's image shape, parameters whose shapes differ from the config's, or a parameter file that
cannot be read is a one-line `ValueError` naming manifest.json, the member and the field, parameter or folder.
Manifests are rewritten atomically (`files.write_json`). Loaded models carry the zoo's image shape as
`Model.sample_shape`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import numbers
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from omsjax import files, nets, schedules, train
from omsjax.models import Model
from omsjax.paths import checkpoints_dir

__all__ = [
    "CONFIGS",
    "named_config",
    "measure_latency",
    "machine_name",
    "data_mean",
    "num_classes",
    "COND_ZOO",
    "add_member",
    "check_member",
    "load_zoo",
    "remeasure_latency",
    "DEFAULT_ZOO",
    "MULTISTAGE",
]

_VERSION = 1
DEFAULT_ZOO = checkpoints_dir() / "digits"
COND_ZOO = checkpoints_dir() / "digits-cond"  # class-conditional: labels 0..9, null label 10


def _digits(channels, mults=(1, 2), steps=6000, net_kw=None, **kw) -> train.TrainConfig:
    net = nets.UNetConfig(channels=channels, channel_mults=mults, **(net_kw or {}))
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
# The class-conditional family (checkpoints/digits-cond): the same U-Nets with a class embedding, trained with 10%
# label dropout (classifier-free guidance).
CONFIGS.update({f"digits-cond-{size}": _digits(ch, net_kw={"num_classes": 10})
                for size, ch in (("xxs", 10), ("xs", 16), ("s", 24), ("m", 32))})  # fmt: skip


def named_config(name: str, steps: int | None = None) -> train.TrainConfig:
    """The training config named `name` (a key of `CONFIGS`, e.g. "digits-m"), with `steps` replaced if given."""
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
    """The machine's name as measurements record it: "{platform}: {CPU model}, {cores} cores"."""
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
    """The manifest of `zoo_dir`, checked: a JSON object of this version with an image shape, a noise schedule and
    a list of member entries whose fields have the right types (each error names the file, member and field)."""
    path = zoo_dir / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"no zoo manifest at {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a zoo manifest file")
    m = files.read_json(path, "a zoo manifest")
    if not isinstance(m, dict):
        raise ValueError(f"{path}: a zoo manifest is a JSON object, this file holds a {_json_type(m)}")
    if m.get("omsjax_zoo") != _VERSION:
        raise ValueError(f"{path}: not an omsjax zoo manifest of version {_VERSION}")
    for key in ("image_shape", "noise_schedule", "models"):
        if key not in m:
            raise ValueError(f"{path}: the manifest lacks {key!r}")
    shape = m["image_shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(d) and d > 0 for d in shape)):
        raise ValueError(f"{path}: field 'image_shape' must be [H, W, C] (positive ints), got {shape!r}")
    if not isinstance(m["noise_schedule"], dict):
        raise ValueError(f"{path}: field 'noise_schedule' must be an object, got a {_json_type(m['noise_schedule'])}")
    if "data_mean" in m:
        try:
            mean = np.asarray(m["data_mean"], np.float64)
            np.broadcast_to(mean, shape)
        except (ValueError, TypeError):
            raise ValueError(f"{path}: field 'data_mean' must be numbers of a shape that broadcasts to the image "
                             f"shape {shape}") from None  # fmt: skip
    if not isinstance(m["models"], list):
        raise ValueError(f"{path}: field 'models' must be a list of members, got a {_json_type(m['models'])}")
    for i, entry in enumerate(m["models"]):
        _check_entry(entry, i, path)
    return m


def _json_type(v) -> str:
    names = {dict: "JSON object", list: "JSON list", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(v), "number" if isinstance(v, (int, float)) else type(v).__name__)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_ms(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


# The fields of a member entry: (required, check, what the check wants).
_ENTRY_FIELDS = {
    "name": (True, lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "config": (True, lambda v: isinstance(v, dict), "an object (the training config)"),
    "params": (True, lambda v: isinstance(v, str) and v != "", "a folder name relative to the zoo"),
    "latency_ms": (True, _is_ms, "a number >= 0 (ms per batch)"),
    "latency_ms_per_stage": (False, lambda v: isinstance(v, list) and all(map(_is_ms, v)), "a list of numbers >= 0"),
    "latency_batch": (False, lambda v: _is_int(v) and v > 0, "a positive int"),
    "latency_machine": (False, lambda v: isinstance(v, str), "a string"),
    "param_count": (False, lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "train_steps": (False, lambda v: _is_int(v) and v >= 0, "an int >= 0"),
}


def _check_entry(entry, i: int, path: Path) -> None:
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: member {i} is a {_json_type(entry)}, not an object")
    who = f"member {i}" + (f" {entry['name']!r}" if isinstance(entry.get("name"), str) else "")
    for key, (required, ok, want) in _ENTRY_FIELDS.items():
        if key not in entry:
            if required:
                raise ValueError(f"{path}: {who} lacks the field {key!r}")
            continue
        if not ok(entry[key]):
            raise ValueError(f"{path}: {who}: field {key!r} must be {want}, got {entry[key]!r} "
                             f"(a {_json_type(entry[key])})")  # fmt: skip


MULTISTAGE = "multistage"  # the "kind" of a multi-stage entry


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one kind of zoo member is stored and loaded.

    config_class: the config dataclass of the entry's "config" (with `from_dict` / `to_dict`).
    to_model: (config, params, latency, name) -> `Model`.
    init_params: (config, key, image_shape) -> parameters (shapes for loading).
    noise_schedule: config -> the `NoiseSchedule` the member is sampled on (the zoo's must match).
    latency_times: config -> the times at which latency is measured (one: "latency_ms"; several: their mean,
      with "latency_ms_per_stage").
    entry_fields: (config, params) -> extra manifest fields.
    describe: config -> a few words naming the member's kind in error messages.
    """

    config_class: type
    to_model: Callable[..., Model]
    init_params: Callable[..., Any]
    noise_schedule: Callable[[Any], schedules.NoiseSchedule]
    latency_times: Callable[[Any], list[float] | None]
    entry_fields: Callable[[Any, Any], dict]
    describe: Callable[[Any], str]


def _unet_recipe(train_mod) -> Recipe:
    return Recipe(
        config_class=train_mod.TrainConfig,
        to_model=lambda cfg, params, latency, name: train_mod.model_from_params(cfg, params, latency=latency,
                                                                                 name=name),
        init_params=lambda cfg, key, shape: nets.init_unet(cfg.net, key, shape),
        noise_schedule=lambda cfg: train_mod.noise_schedule(cfg.precond),
        latency_times=lambda cfg: None,
        entry_fields=lambda cfg, params: {},
        describe=lambda cfg: f"precond {cfg.precond!r}",
    )  # fmt: skip


def _stage_times(config) -> list[float]:
    """The middle of each stage's time interval, where its latency is measured."""
    e = config.edges
    return [0.5 * (a + b) for a, b in zip(e[:-1], e[1:], strict=True)]


def _multistage_recipe(stages) -> Recipe:
    return Recipe(
        config_class=stages.StageTrainConfig,
        to_model=lambda cfg, params, latency, name: stages.to_model(cfg, params, latency=latency, name=name),
        init_params=lambda cfg, key, shape: stages.init_params(cfg.net, key, shape),
        noise_schedule=lambda cfg: schedules.vp_linear(),
        latency_times=_stage_times,
        entry_fields=lambda cfg, params: {
            "active_params": [stages.active_params(params, k) for k in range(cfg.net.num_stages)]
        },
        describe=lambda cfg: "a multi-stage network",
    )


# The manifest's "kind" (None: no kind, a U-Net) -> (the module its recipe needs, the recipe built on it).
RECIPES: dict[str | None, tuple[str, Callable[[Any], Recipe]]] = {
    None: ("omsjax.train", _unet_recipe),
    MULTISTAGE: ("omsjax.stages", _multistage_recipe),
}


@functools.cache
def recipe(kind: str | None) -> Recipe:
    """The `Recipe` of a manifest entry's kind (its module imported now, on first use)."""
    if kind not in RECIPES:
        known = sorted(k for k in RECIPES if k is not None)
        raise ValueError(f"unknown zoo member kind {kind!r}; expected one of {known}")
    module, build = RECIPES[kind]
    return build(importlib.import_module(module))


def _kind_of(config) -> str | None:
    """The kind whose recipe's config class is `config`'s (only the recipes of `config`'s own package are loaded)."""
    for kind, (module, _) in RECIPES.items():
        if type(config).__module__.startswith(module + ".") or type(config).__module__ == module:
            if type(config) is recipe(kind).config_class:
                return kind
    raise ValueError(f"config must be a train.TrainConfig or stages.StageTrainConfig, got {type(config).__name__}")


def _latency(model: Model, config, image_shape, batch: int, repeats: int = 20, kind: str | None = None) -> dict:
    """The latency fields of a manifest entry: "latency_ms" (a multi-stage network: the mean over its stages, and
    "latency_ms_per_stage")."""
    times = recipe(kind).latency_times(config)
    if times is not None:
        per = [measure_latency(model, image_shape, batch, repeats, t=t) for t in times]
        return {"latency_ms": float(np.mean(per)), "latency_ms_per_stage": per}
    return {"latency_ms": measure_latency(model, image_shape, batch, repeats)}


def _entry_kind(entry: dict, where: str) -> str | None:
    kind = entry.get("kind")
    if kind not in RECIPES:
        raise ValueError(f"{where}: model {entry.get('name')!r} has unknown kind {kind!r}; expected {MULTISTAGE!r}")
    return kind


def _entry_config(entry: dict, where: str):
    """The config of a manifest entry: its kind's config class (a `StageTrainConfig` for "kind": "multistage", a
    `TrainConfig` without kind)."""
    return recipe(_entry_kind(entry, where)).config_class.from_dict(entry["config"])


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
    kind = _kind_of(config)
    rec = recipe(kind)
    zoo_dir = Path(zoo_dir)
    zoo_dir.mkdir(parents=True, exist_ok=True)
    path = zoo_dir / "manifest.json"
    ns = schedules.to_dict(rec.noise_schedule(config))
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
    _check_fits(manifest, name, config)
    if data_mean is not None:
        manifest["data_mean"] = np.asarray(data_mean, np.float64).tolist()
    params_dir = zoo_dir / name / "params"
    train.save_params(params_dir, params)
    model = rec.to_model(config, params, 1.0, name)
    entry = {"name": name}
    if kind is not None:
        entry["kind"] = kind
    entry.update({
        "config": config.to_dict(),
        "params": f"{name}/params",
        "param_count": nets.param_count(params),
        "train_steps": int(train_steps),
        **_latency(model, config, config.image_shape, latency_batch, kind=kind),
        "latency_batch": latency_batch,
        "latency_machine": machine_name(),
    })  # fmt: skip
    entry.update(rec.entry_fields(config, params))
    manifest["models"] = [m for m in manifest["models"] if m["name"] != name] + [entry]
    manifest["models"].sort(key=lambda m: m["param_count"])
    files.write_json(path, manifest)
    return entry


def check_member(zoo_dir, name: str, config: Any) -> None:
    """Check now (before training) that `add_member(zoo_dir, name, config, ...)` will take a member of `config`:
    the zoo's manifest, if there is one, reads back and has the config's image shape and noise schedule."""
    if (Path(zoo_dir) / "manifest.json").exists():
        _check_fits(_read_manifest(Path(zoo_dir)), name, config)


def _check_fits(manifest: dict, name: str, config: Any) -> None:
    rec = recipe(_kind_of(config))
    ns = schedules.to_dict(rec.noise_schedule(config))
    if list(config.image_shape) != manifest["image_shape"]:
        raise ValueError(f"member {name!r} has image shape {config.image_shape}, the zoo {manifest['image_shape']}")
    others = {_entry_classes(m) for m in manifest["models"] if m.get("name") != name}
    k = int(getattr(getattr(config, "net", None), "num_classes", 0))
    if others and others != {k}:
        raise ValueError(f"member {name!r} has net.num_classes {k}, the zoo's other members {sorted(others)}: a zoo's "
                         f"members all take the same labels (0 = unconditional)")  # fmt: skip
    if manifest["noise_schedule"] != ns:
        what = rec.describe(config)
        raise ValueError(
            f"member {name!r} ({what}) is sampled on the noise schedule {ns}, the zoo on {manifest['noise_schedule']}"
        )


def load_zoo(path=DEFAULT_ZOO):
    """(models, noise_schedule, manifest) of a zoo folder; models ordered as in the manifest (their zoo index),
    each with its measured latency (ms per batch) filled in."""
    zoo_dir = Path(path)
    manifest = _read_manifest(zoo_dir)
    where = zoo_dir / "manifest.json"
    try:
        ns = schedules.from_dict(manifest["noise_schedule"])
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
    rec = recipe(_entry_kind(entry, str(zoo_dir / "manifest.json")))
    try:
        cfg = rec.config_class.from_dict(entry["config"])
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{who}: field 'config' is not a valid config: {e}") from None
    if tuple(cfg.image_shape) != image_shape:
        raise ValueError(f"{who}: the manifest's image_shape {list(image_shape)} differs from the member config's "
                         f"image_shape {list(cfg.image_shape)}")  # fmt: skip
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
    zoo_dir = Path(path)
    models, _, manifest = load_zoo(zoo_dir)
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    shape = tuple(manifest["image_shape"])
    name = machine_name()
    for model, entry in zip(models, manifest["models"], strict=True):
        b = int(batch or entry.get("latency_batch", 256))
        kind = _entry_kind(entry, str(zoo_dir))
        entry.update(_latency(model, _entry_config(entry, str(zoo_dir)), shape, b, repeats, kind=kind))
        entry["latency_batch"] = b
        entry["latency_machine"] = name
    files.write_json(zoo_dir / "manifest.json", manifest)
    return manifest
