"""Host-side checks of the samplers' inputs: each raises a ValueError that names the argument, the field or the
zoo member, before anything is traced or compiled.

What can only be known while the program is traced (a model that fails on x, or returns the wrong shape or dtype)
is checked where the model is called (`omsjax.models.to_eps_x0`); what depends on traced values (a traced
schedule, traced noise) cannot be checked here and makes the sampler's output NaN instead (`omsjax.sampler`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from omsjax.models import Model
from omsjax.noise import NoiseSchedule
from omsjax.schedule import AFS_MEAN_X0, Schedule, check_schedule, is_traced

__all__ = [
    "check_noise_schedule",
    "check_x_T",
    "check_sample_shape",
    "check_conditioning",
    "check_guidance",
    "thresholding_option",
    "check_inputs",
    "check_batch",
    "check_each",
]

THRESHOLDING_DEFAULT = (0.995, 1.0)  # DPM-Solver's dynamic_thresholding_ratio and thresholding_max_val


def check_noise_schedule(noise_schedule) -> None:
    """`noise_schedule` must be an `omsjax.noise.NoiseSchedule`."""
    if not isinstance(noise_schedule, NoiseSchedule):
        raise ValueError(f"noise_schedule must be an omsjax noise schedule, got {type(noise_schedule).__name__}")


def check_x_T(x_T) -> None:
    """x_T must be a float32 or float64 jax or numpy array [batch >= 1, ...]; a concrete one must also be finite (the
    message says how many values are NaN or inf and where the first is). Traced noise is checked for shape only."""
    if not isinstance(x_T, (jax.Array, np.ndarray)):
        raise ValueError(f"x_T must be a jax or numpy array of shape [batch, ...], got {type(x_T).__name__}")
    if x_T.ndim < 1 or x_T.shape[0] < 1:
        raise ValueError(f"x_T must be an array [batch, ...] with batch >= 1, got shape {tuple(x_T.shape)}")
    if x_T.dtype not in (jnp.float32, jnp.float64):
        raise ValueError(f"x_T must be float32 or float64 (the dtype of the sampler's state), got {x_T.dtype}")
    if is_traced(x_T):
        return
    if isinstance(x_T, np.ndarray):
        finite = bool(np.all(np.isfinite(x_T)))
    else:
        with jax.ensure_compile_time_eval():  # a concrete x_T closed over inside a jit: still checked eagerly
            finite = bool(jnp.all(jnp.isfinite(x_T)))
    if finite:
        return
    bad = ~np.isfinite(np.asarray(x_T))
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    samples = int(np.count_nonzero(bad.reshape(bad.shape[0], -1).any(axis=1)))
    raise ValueError(
        f"x_T has {int(bad.sum())} non-finite value(s) (NaN or inf) in {samples} of its {bad.shape[0]} sample(s); "
        f"the first is x_T[{', '.join(map(str, first))}] = {np.asarray(x_T)[first]}"
    )


def check_sample_shape(model_or_zoo: Model | tuple[Model, ...], x_T) -> None:
    """A model, or every zoo member, that declares a `sample_shape` must take samples of x_T.shape[1:]."""
    shape = tuple(x_T.shape[1:])
    single = isinstance(model_or_zoo, Model)
    for k, m in enumerate((model_or_zoo,) if single else model_or_zoo):
        if m.sample_shape is not None and m.sample_shape != shape:
            who = m.label() if single else m.label(k)
            raise ValueError(
                f"x_T of shape {tuple(x_T.shape)} holds samples of shape {shape}, but {who} "
                f"declares sample_shape {m.sample_shape}"
            )


def _leaves(tree) -> list[tuple[str, object]]:
    return [(jax.tree_util.keystr(path) or "", leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]


def check_conditioning(cond, uncond, batch: int) -> None:
    """`cond` and `uncond` are pytrees of arrays whose leading axis is the batch; `uncond` needs `cond` and has its
    structure, shapes and dtypes (the two are concatenated for one call). Errors name the argument and the leaf."""
    if uncond is not None and cond is None:
        raise ValueError("uncond (the unconditional input of guidance) needs cond, the conditioning")
    if cond is None:
        return
    for name, tree in (("cond", cond), ("uncond", uncond)):
        if tree is None:
            continue
        leaves = _leaves(tree)
        if not leaves:
            raise ValueError(f"{name} has no arrays: pass labels or embeddings with the batch as leading axis")
        for path, leaf in leaves:
            shape = np.shape(leaf)
            if not hasattr(leaf, "dtype") or len(shape) < 1 or shape[0] != batch:
                raise ValueError(
                    f"{name}{path} must be an array with the batch ({batch}) as leading axis, got "
                    f"{type(leaf).__name__} of shape {tuple(shape)}"
                )
    if uncond is not None:
        c, u = jax.tree_util.tree_structure(cond), jax.tree_util.tree_structure(uncond)
        if c != u:
            raise ValueError(f"uncond must have cond's structure, got {u} for cond {c}")
        for (path, a), (_, b) in zip(_leaves(cond), _leaves(uncond), strict=True):
            if np.shape(a) != np.shape(b) or a.dtype != b.dtype:
                raise ValueError(
                    f"uncond{path} is {tuple(np.shape(b))} {b.dtype}, but cond{path} is "
                    f"{tuple(np.shape(a))} {a.dtype}: they must match"
                )


def check_guidance(schedule: Schedule, uncond) -> None:
    """A concrete schedule with a guidance scale other than 1 needs `uncond`; the error names the step."""
    guided = np.flatnonzero(np.asarray(schedule.guidance) != 1.0)
    if uncond is None and guided.size:
        i = int(guided[0])
        raise ValueError(
            f"Schedule.guidance at step {i}: scale {float(np.asarray(schedule.guidance)[i])} needs "
            "classifier-free guidance: pass cond= and uncond= to the sampler"
        )


def thresholding_option(value) -> tuple[float, float] | None:
    """The samplers' `thresholding` argument as (ratio, max_val), or None: None or False is off, True is
    `THRESHOLDING_DEFAULT` (0.995, 1.0), a pair (ratio in (0, 1], max_val > 0) is taken as given."""
    if value is None or value is False:
        return None
    if value is True:
        return THRESHOLDING_DEFAULT
    ok = isinstance(value, (tuple, list)) and len(value) == 2
    ok = ok and all(isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) for v in value)
    if not ok or not (0 < float(value[0]) <= 1 and float(value[1]) > 0 and np.isfinite(float(value[1]))):
        raise ValueError(f"thresholding must be None, True, or (ratio in (0, 1], max_val > 0), got {value!r}")
    return float(value[0]), float(value[1])


def check_inputs(zoo: tuple[Model, ...], noise_schedule, schedule, x_T, data_mean, cond=None, uncond=None) -> None:
    """Everything `sample` can check on the host: the noise schedule, x_T (`check_x_T`, `check_sample_shape`),
    a concrete data_mean (shape against a sample, finite), the conditioning (`check_conditioning`), and a concrete
    schedule (`check_schedule` on this zoo and noise schedule; a guidance scale other than 1 needs `uncond`)."""
    check_batch(zoo, noise_schedule, [schedule], x_T, data_mean, cond, uncond, name=None)


def check_batch(zoo, noise_schedule, schedules, x_T, data_mean, cond=None, uncond=None, *, name="candidate") -> None:
    """`check_inputs` of several schedules sampled from the same x_T, data_mean and conditioning, in one place (what
    `sample_many` and the search's `sample_candidates` run on the way in): the shared inputs once, then each
    schedule; an error about schedule i starts "{name} i: " (None: one schedule, no prefix)."""
    check_noise_schedule(noise_schedule)
    check_x_T(x_T)
    check_sample_shape(zoo, x_T)
    if data_mean is not None and not is_traced(data_mean):
        dm = np.shape(data_mean)
        try:
            np.broadcast_shapes(dm, tuple(x_T.shape[1:]))
        except ValueError:
            raise ValueError(f"data_mean of shape {dm} does not broadcast to a sample {tuple(x_T.shape[1:])}") from None
        if len(dm) > len(x_T.shape) - 1:
            raise ValueError(f"data_mean of shape {dm} has more dimensions than a sample {tuple(x_T.shape[1:])}")
        bad = np.count_nonzero(~np.isfinite(np.asarray(data_mean, np.float64)))
        if bad:
            raise ValueError(f"data_mean has {bad} non-finite value(s) (NaN or inf)")
    check_conditioning(cond, uncond, x_T.shape[0])
    check_each(zoo, noise_schedule, schedules, data_mean, uncond, name=name)


def check_each(zoo, noise_schedule, schedules, data_mean, uncond=None, *, name="candidate") -> None:
    """The per-schedule part of `check_batch` (the shared inputs checked already, e.g. a search's noise): each
    schedule against the zoo, the noise schedule, the data mean and the guidance; "{name} i: " as there."""
    for i, schedule in enumerate(schedules):
        try:
            if not isinstance(schedule, Schedule):
                raise ValueError(f"schedule must be an omsjax.Schedule, got {type(schedule).__name__}")
            if not is_traced(schedule):
                check_schedule(schedule, len(zoo), noise_schedule)
                if int(np.asarray(schedule.afs)) == AFS_MEAN_X0 and data_mean is None:
                    raise ValueError("Schedule.afs is 2 (mean x0) but no data_mean was given to sample")
                check_guidance(schedule, uncond)
        except ValueError as e:
            if name is None:
                raise
            raise ValueError(f"{name} {i}: {e}") from None
