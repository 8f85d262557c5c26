"""How each kind of zoo member is stored and loaded: a `Recipe` per manifest "kind" (None: a U-Net, "multistage":
a multi-stage network), from a registry whose modules are imported by name only when a manifest has that kind."""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from omsjax import nets, noise
from omsjax.models import Model
from omsjax.zoo.latency import measure_latency

__all__ = [
    "MULTISTAGE",
    "Recipe",
    "RECIPES",
    "recipe",
    "kind_of",
    "kind_of_dict",
    "entry_kind",
    "entry_config",
    "latency_fields",
]


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
    run_training: (config, images, out_dir, *, resume, progress, labels) -> the final `TrainState`: the kind's
      resumable training run in a folder (`omsjax train`).
    recognises: a config dict -> whether it is this kind's `to_dict()` (`omsjax train --config FILE`).
    cli_fields: the config fields `omsjax train`'s flags may replace (None: all of them).
    """

    config_class: type
    to_model: Callable[..., Model]
    init_params: Callable[..., Any]
    noise_schedule: Callable[[Any], noise.NoiseSchedule]
    latency_times: Callable[[Any], list[float] | None]
    entry_fields: Callable[[Any, Any], dict]
    describe: Callable[[Any], str]
    run_training: Callable[..., Any]
    recognises: Callable[[Any], bool]
    cli_fields: tuple[str, ...] | None = None


def _unet_recipe(train_mod) -> Recipe:
    return Recipe(
        config_class=train_mod.TrainConfig,
        to_model=lambda cfg, params, latency, name: train_mod.model_from_params(
            cfg, params, latency=latency, name=name
        ),
        init_params=lambda cfg, key, shape: nets.init_unet(cfg.net, key, shape),
        noise_schedule=lambda cfg: train_mod.noise_schedule(cfg.precond),
        latency_times=lambda cfg: None,
        entry_fields=lambda cfg, params: {},
        describe=lambda cfg: f"precond {cfg.precond!r}",
        run_training=train_mod.run_training,
        recognises=lambda d: isinstance(d, dict) and isinstance(d.get("net"), dict),
    )


def _stage_times(config) -> list[float]:
    """The middle of each stage's time interval, where its latency is measured."""
    e = config.edges
    return [0.5 * (a + b) for a, b in zip(e[:-1], e[1:], strict=True)]


def _multistage_recipe(stages) -> Recipe:
    return Recipe(
        config_class=stages.StageTrainConfig,
        to_model=lambda cfg, params, latency, name: stages.to_model(cfg, params, latency=latency, name=name),
        init_params=lambda cfg, key, shape: stages.init_params(cfg.net, key, shape),
        noise_schedule=lambda cfg: noise.vp_linear(),
        latency_times=_stage_times,
        entry_fields=lambda cfg, params: {
            "active_params": [stages.active_params(params, k) for k in range(cfg.net.num_stages)]
        },
        describe=lambda cfg: "a multi-stage network",
        run_training=stages.run_training,
        recognises=_is_multistage,
        cli_fields=("steps", "ema_warmup"),
    )


def _is_multistage(d) -> bool:
    """Whether a config dict is a `stages.StageTrainConfig.to_dict()` (its "stage_probs" field, or a net with
    "decoder_channels")."""
    return isinstance(d, dict) and (
        "stage_probs" in d or (isinstance(d.get("net"), dict) and "decoder_channels" in d["net"])
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


def kind_of_dict(d) -> str | None:
    """The kind of a config dict (a `to_dict()`): the first recipe, multi-stage first, that recognises it (a
    U-Net's when none does, so that its `from_dict` names what is wrong)."""
    for kind in sorted(RECIPES, key=lambda k: k is None):
        if recipe(kind).recognises(d):
            return kind
    return None


def kind_of(config) -> str | None:
    """The kind whose recipe's config class is `config`'s (only the recipes of `config`'s own package are loaded)."""
    for kind, (module, _) in RECIPES.items():
        if type(config).__module__.startswith(module + ".") or type(config).__module__ == module:
            if type(config) is recipe(kind).config_class:
                return kind
    raise ValueError(f"config must be a train.TrainConfig or stages.StageTrainConfig, got {type(config).__name__}")


def latency_fields(model: Model, config, image_shape, batch: int, repeats: int = 20, kind: str | None = None) -> dict:
    """The latency fields of a manifest entry: "latency_ms" (a multi-stage network: the mean over its stages, and
    "latency_ms_per_stage")."""
    times = recipe(kind).latency_times(config)
    if times is not None:
        per = [measure_latency(model, image_shape, batch, repeats, t=t) for t in times]
        return {"latency_ms": float(np.mean(per)), "latency_ms_per_stage": per}
    return {"latency_ms": measure_latency(model, image_shape, batch, repeats)}


def entry_kind(entry: dict, where: str) -> str | None:
    """The "kind" of a manifest entry (None: a U-Net), checked against `RECIPES`; the error names `where`."""
    kind = entry.get("kind")
    if kind not in RECIPES:
        raise ValueError(f"{where}: model {entry.get('name')!r} has unknown kind {kind!r}; expected {MULTISTAGE!r}")
    return kind


def entry_config(entry: dict, where: str):
    """The config of a manifest entry: its kind's config class (a `StageTrainConfig` for "kind": "multistage", a
    `TrainConfig` without kind)."""
    return recipe(entry_kind(entry, where)).config_class.from_dict(entry["config"])
