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
from omsjax.schedule import AFS_MEAN_X0, Schedule, _is_traced, check_schedule
from omsjax.schedules import NoiseSchedule

__all__ = ["check_noise_schedule", "check_x_T", "check_sample_shape", "check_inputs"]


def check_noise_schedule(noise_schedule) -> None:
    """`noise_schedule` must be an `omsjax.schedules.NoiseSchedule`."""
    if not isinstance(noise_schedule, NoiseSchedule):
        raise ValueError(f"noise_schedule must be an omsjax noise schedule, got {type(noise_schedule).__name__}")


def check_x_T(x_T) -> None:
    """x_T must be a floating jax or numpy array [batch >= 1, ...]; a concrete one must also be finite (the
    message says how many values are NaN or inf and where the first is). Traced noise is checked for shape only."""
    if not isinstance(x_T, (jax.Array, np.ndarray)):
        raise ValueError(f"x_T must be a jax or numpy array of shape [batch, ...], got {type(x_T).__name__}")
    if x_T.ndim < 1 or x_T.shape[0] < 1:
        raise ValueError(f"x_T must be an array [batch, ...] with batch >= 1, got shape {tuple(x_T.shape)}")
    if not jnp.issubdtype(x_T.dtype, jnp.floating):
        raise ValueError(f"x_T must be floating point, got {x_T.dtype}")
    if _is_traced(x_T):
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
            raise ValueError(f"x_T of shape {tuple(x_T.shape)} holds samples of shape {shape}, but {who} "
                             f"declares sample_shape {m.sample_shape}")  # fmt: skip


def check_inputs(zoo: tuple[Model, ...], noise_schedule, schedule, x_T, data_mean) -> None:
    """Everything `sample` can check on the host: the noise schedule, x_T (`check_x_T`, `check_sample_shape`),
    a concrete data_mean (shape against a sample, finite), and a concrete schedule (`check_schedule` on this zoo
    and noise schedule)."""
    check_noise_schedule(noise_schedule)
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be an omsjax.Schedule, got {type(schedule).__name__}")
    check_x_T(x_T)
    check_sample_shape(zoo, x_T)
    if data_mean is not None and not _is_traced(data_mean):
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
    if not _is_traced(schedule):
        check_schedule(schedule, len(zoo), noise_schedule)
        if int(np.asarray(schedule.afs)) == AFS_MEAN_X0 and data_mean is None:
            raise ValueError("Schedule.afs is 2 (mean x0) but no data_mean was given to sample")
