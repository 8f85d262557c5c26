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


Modules: `configs` (the named training configs), `latency` (measurement and the machine's name), `manifest` (the
manifest's schema), `recipes` (how each kind of member is stored and loaded), `store` (zoo folders: add, check,
load, remeasure). Their public names are all here.
"""

# Each module's public names, re-exported: listed once, in its own __all__.
from omsjax.zoo import configs, latency, manifest, recipes, store
from omsjax.zoo.configs import *  # noqa: F403
from omsjax.zoo.latency import *  # noqa: F403
from omsjax.zoo.manifest import *  # noqa: F403
from omsjax.zoo.recipes import *  # noqa: F403
from omsjax.zoo.store import *  # noqa: F403

__all__ = [*configs.__all__, *latency.__all__, *manifest.__all__, *recipes.__all__, *store.__all__]
