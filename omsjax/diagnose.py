"""Where a sampling run went non-finite: `first_nonfinite_step` re-runs the schedule's program with per-step
finiteness flags (`integrate.run` with `Switches(diagnose=True)`, a second program: `sample` itself pays nothing)
and names the step, its time, the zoo member and the cause."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

from omsjax.checks import check_inputs
from omsjax.integrate import Switches, run_used
from omsjax.models import Model, as_zoo
from omsjax.noise import NoiseSchedule
from omsjax.options import SampleOptions
from omsjax.schedule import AFS_NONE, Schedule, is_traced

__all__ = ["NonFiniteStep", "first_nonfinite_step"]


class NonFiniteStep(NamedTuple):
    """Where a sampling run first became non-finite (`first_nonfinite_step`).

    step:    schedule step i (its model call at ts[i]), or N for the state after the last update.
    t:       ts[step].
    cause:   "model": the zoo member called at step i returned NaN/inf on a finite input;
             "update": x_step became non-finite in the update of step - 1, every model output before was finite;
             "guess": the analytical first step's (eps, x0) from its x0 guess is non-finite (an overflow);
             "schedule": the decisions of step i are invalid for the sampler (its output is NaN by design);
             "guidance": the member's conditional and unconditional outputs at step i are finite, their guided
             combination out(uncond) + w (out(cond) - out(uncond)) is not (an enormous scale w).
    model:   the zoo index called at the step ("model", "guidance"), else None.
    name:    that member's name ("" if none).
    samples: the batch indices affected at that step.
    batch:   the batch size.
    guidance: the guidance scale of the step's call.
    """

    step: int
    t: float
    cause: str
    model: int | None
    name: str
    samples: tuple[int, ...]
    batch: int
    guidance: float = 1.0

    @property
    def message(self) -> str:
        """One sentence for an error message or a report."""
        i, t = self.step, f"t = {self.t:.6g}"
        some = f"in {len(self.samples)} of {self.batch} sample(s)"
        some += f" (first: sample {self.samples[0]})" if self.samples else ""
        who = f"zoo member {self.model}" + (f" {self.name!r}" if self.name else "")
        return {
            "model": f"the model returned non-finite values at step {i} ({t}): {who}, on a finite input, {some}",
            "update": f"the sampler's state became non-finite at step {i} ({t}) in the update of step {i - 1}, "
            f"although every model output before was finite, {some}",
            "guess": f"the analytical first step's guess became non-finite at step 0 ({t}), {some}",
            "schedule": f"step {i} ({t}) of the schedule is not a valid update (the sampler returns NaN)",
            "guidance": f"the guided combination out(uncond) + w (out(cond) - out(uncond)) at w = {self.guidance:g} "
            f"became non-finite at step {i} ({t}): {who}'s conditional and unconditional outputs are finite, {some}",
        }[self.cause]


def first_nonfinite_step(
    model_or_zoo: Model | Sequence[Model],
    noise_schedule: NoiseSchedule,
    schedule: Schedule,
    x_T: jax.Array,
    sampling: SampleOptions | None = None,
) -> NonFiniteStep | None:
    """Locate the first step at which `sample(model_or_zoo, noise_schedule, schedule, x_T, ...)` with the options
    `sampling` (an `omsjax.SampleOptions`: conditioning, data mean, thresholding; cond's rows those of x_T)
    becomes non-finite; None when the run is finite. Host side, concrete arrays only.

    It runs a second compiled program (the same scan that also returns, per step, which samples of the state and
    of the model outputs are finite), so call it only once a result was found non-finite: `sample` itself pays
    nothing. For one candidate of `sample_many`, pass that candidate's schedule. Typical use:

        x = np.asarray(sampler.sample(zoo, ns, schedule, x_T))
        if not np.all(np.isfinite(x)):
            found = first_nonfinite_step(zoo, ns, schedule, x_T)
            raise ValueError(found.message if found else "non-finite samples")
    """
    zoo = as_zoo(model_or_zoo)
    o = SampleOptions() if sampling is None else sampling
    data_mean, cond, uncond = o.data_mean, o.cond, o.uncond
    if is_traced((schedule, x_T, data_mean, [m.params for m in zoo], cond, uncond)):
        raise ValueError("first_nonfinite_step runs on the host: call it with concrete arrays, outside jit/vmap")
    check_inputs(zoo, noise_schedule, schedule, x_T, data_mean, cond, uncond)
    switches = Switches(diagnose=True, thresholding=o.thresholding)
    _, (x_ok, f_ok, ok, raw_ok), f0, ok0, raw0 = jax.device_get(
        run_used(zoo, noise_schedule, schedule, x_T, data_mean, cond=cond, uncond=uncond, switches=switches)
    )
    n, batch = schedule.num_steps, int(x_T.shape[0])
    ts, model, afs = np.asarray(schedule.ts, np.float64), np.asarray(schedule.model), int(np.asarray(schedule.afs))

    w = np.asarray(schedule.guidance, np.float64)

    def found(i, cause, bad=None):
        k = int(model[i]) if cause in ("model", "guidance") else None
        samples = () if bad is None else tuple(int(j) for j in np.flatnonzero(bad))
        name = zoo[k].name if k is not None else ""
        return NonFiniteStep(i, float(ts[i]), cause, k, name, samples, batch, float(w[min(i, n - 1)]))

    in_ok = np.concatenate([np.ones((1, batch), bool), x_ok[:-1]])  # x_i finite, i = 0..N-1
    out_ok = np.concatenate([f0[None], f_ok[:-1]])  # the model outputs at ts[i] finite
    raw_in = np.concatenate([raw0[None], raw_ok[:-1]])  # the raw conditional and unconditional outputs finite
    for i in range(n):
        if not in_ok[i].all():
            return found(i, "update", ~in_ok[i])
        if not out_ok[i].all():
            if i == 0 and afs != AFS_NONE:
                return found(i, "guess", ~out_ok[i])
            combined = w[i] != 1.0 and raw_in[i][~out_ok[i]].all()
            return found(i, "guidance" if combined else "model", ~out_ok[i])
        if not (ok0 and ok[i]):
            return found(i, "schedule")
    if not x_ok[-1].all():
        return found(n, "update", ~x_ok[-1])
    return None  # every state, every model output finite, every step valid: so is the output
