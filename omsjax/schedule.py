"""The `Schedule` pytree: every per-step decision of a sampler as an array.

A schedule of N steps goes from ts[0] (usually T) to ts[N] (t_end). Step i evaluates model `model[i]` at
(x_i, ts[i]) -- except step 0 under an analytical first step -- and updates x_i to x_{i+1} with the USF step
decided by `order[i]`, `prediction[i]`, `start[i]`, `d1_points[i]`, `relax_type[i]`, `relax[i]`, and, if
`corrector[i]`, a pseudo-corrector that reuses the model call at ts[i+1]. See `omsjax.usf` for the semantics.
`guidance[i]` is the classifier-free guidance scale w of the model call at ts[i] (1: the conditional model alone;
`omsjax.sample`'s `cond` and `uncond`). Because all fields are arrays, one compiled sampler serves every schedule
of the same N, and `jax.vmap` over a stacked batch of schedules works. Validation (`check_schedule`) runs on the
host and names the field and step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from omsjax import usf
from omsjax.files import json_object, json_type

__all__ = ["Schedule", "check_schedule", "AFS_NONE", "AFS_ZERO_X0", "AFS_MEAN_X0", "AFS_NAMES", "stack"]

AFS_NONE, AFS_ZERO_X0, AFS_MEAN_X0 = 0, 1, 2
AFS_NAMES = ("none", "zero_x0", "mean_x0")
_PREDICTION_NAMES = ("noise", "data")
_RELAX_NAMES = ("linear", "dpm2", "bh1")
_JSON_VERSION = 1

_ARRAYS = "build a Schedule of arrays (np.asarray or jnp.asarray of each field), or with Schedule.from_json"
_INT_FIELDS = ("model", "order", "prediction", "start", "d1_points", "relax_type")


class Schedule(NamedTuple):
    """Per-step decisions of a USF sampler (N steps).

    ts:         float[N+1] strictly decreasing times, ts[0] = start, ts[N] = end.
    model:      int[N]   zoo index evaluated at ts[i].
    order:      int[N]   Taylor order 1..4.
    prediction: int[N]   0 = noise (eps) prediction, 1 = data (x0) prediction.
    start:      int[N]   expansion point, 0 = newest (multistep), q = q points back (singlestep).
    d1_points:  int[N]   stencil points for D_1, 0 = all order-1 (full-order estimate).
    relax:      float[N] coefficient c of the linear relaxation rho = 1 + c h.
    relax_type: int[N]   0 = linear, 1 = DPM-Solver-2 / UniPC-bh2 factor, 2 = UniPC-bh1 factor.
    d2_scale:   float[N] factor on the D_2 term (1 = Taylor; 0.5 = DPM-Solver(++)'s published 3M update).
    corrector:  bool[N]  pseudo-corrector after step i (never on the last step).
    guidance:   float[N] classifier-free guidance scale w of the model call at ts[i]: the output is
                out(uncond) + w (out(cond) - out(uncond)); 1 = the conditional (or unconditional) model alone.
                A step with w != 1 costs two evaluations (`nfe`, `cost`) and needs `sample(..., uncond=)`.
    afs:        int[]    analytical first step: 0 none, 1 zero x0, 2 data-set mean x0.
    """

    ts: jax.Array
    model: jax.Array
    order: jax.Array
    prediction: jax.Array
    start: jax.Array
    d1_points: jax.Array
    relax: jax.Array
    relax_type: jax.Array
    d2_scale: jax.Array
    corrector: jax.Array
    guidance: jax.Array
    afs: jax.Array

    @property
    def num_steps(self) -> int:
        return int(np.shape(self.ts)[-1]) - 1

    def _calls(self) -> np.ndarray:
        """Model evaluations per step [..., N]: 0 at step 0 under an analytical first step, 2 for a guided step
        (guidance != 1: the conditional and the unconditional output), else 1."""
        model = np.asarray(self.model)
        calls = np.where(np.asarray(self.guidance) != 1.0, 2, 1) * np.ones(model.shape, int)
        calls[..., 0] = np.where(np.asarray(self.afs) == AFS_NONE, calls[..., 0], 0)
        return calls

    def nfe(self):
        """Model evaluations: one per step, two for a guided step (guidance != 1), none at step 0 under an
        analytical first step (correctors are free)."""
        return np.sum(self._calls(), axis=-1)

    def cost(self, latencies):
        """Sum of the latencies of the models actually called (AFS skips the call at step 0; a guided step counts
        its model twice)."""
        lat = np.asarray(latencies, dtype=np.float64)
        return np.sum(self._calls() * lat[np.asarray(self.model)], axis=-1)

    def to_json(self, *, indent: int | None = 2, **metadata) -> str:
        """Human-readable JSON (decision names spelled out); extra keyword arguments are stored as metadata."""
        check_schedule(self)
        d = {
            "omsjax_schedule": _JSON_VERSION,
            "num_steps": self.num_steps,
            "ts": [float(v) for v in np.asarray(self.ts, np.float64)],
            "model": [int(v) for v in np.asarray(self.model)],
            "order": [int(v) for v in np.asarray(self.order)],
            "prediction": [_PREDICTION_NAMES[int(v)] for v in np.asarray(self.prediction)],
            "start": [int(v) for v in np.asarray(self.start)],
            "d1_points": [int(v) for v in np.asarray(self.d1_points)],
            "relax": [float(v) for v in np.asarray(self.relax, np.float64)],
            "relax_type": [_RELAX_NAMES[int(v)] for v in np.asarray(self.relax_type)],
            "d2_scale": [float(v) for v in np.asarray(self.d2_scale, np.float64)],
            "corrector": [bool(v) for v in np.asarray(self.corrector)],
            "afs": AFS_NAMES[int(np.asarray(self.afs))],
        }
        guidance = np.asarray(self.guidance, np.float64)
        if np.any(guidance != 1.0):  # written only when used: unguided schedules keep their JSON (and archive keys)
            d["guidance"] = [float(v) for v in guidance]
        if metadata:
            d["metadata"] = metadata
        return json.dumps(d, indent=indent)

    @classmethod
    def from_json(cls, text, num_models: int | None = None, *, noise_schedule=None, source=None) -> Schedule:
        """Parse and validate a schedule written by `to_json`: JSON text (str, or UTF-8 bytes) or a parsed dict.

        Every error is a ValueError naming the field (and step), prefixed by `source` (e.g. the file) when given.
        `num_models` bounds the model indices and `noise_schedule` the times, as in `check_schedule`.
        """
        try:
            sched = _from_dict(json_object(text, "schedule JSON", '{"omsjax_schedule": 1, ...}'))
            check_schedule(sched, num_models, noise_schedule)
        except ValueError as e:
            if source is None:
                raise
            raise ValueError(f"{source}: {e}") from None
        return sched

    @classmethod
    def from_times(cls, ts, like: Schedule, *, noise_schedule=None) -> Schedule:
        """`like`'s decisions at the times `ts` float[N+1] (N = like's number of steps): custom timesteps for any
        preset, e.g. `Schedule.from_times(times_from_sigmas(ns, karras_sigmas(...)), like=presets.unipc(ns, N))`.

        Concrete `ts` are checked (`check_schedule`; also against `noise_schedule`'s time range when given) and a
        wrong length raises ValueError. Traced `ts` (inside jit or grad) pass through unchecked: times outside the
        noise schedule or not decreasing then make `sample`'s output NaN. `ts` keeps its dtype when it is
        floating (float32 times stay float32)."""
        if not isinstance(like, Schedule):
            raise ValueError(f"from_times needs like= an omsjax.Schedule (e.g. a preset), got {type(like).__name__}")
        n = like.num_steps
        if np.ndim(ts) != 1 or np.shape(ts)[0] != n + 1:
            raise ValueError(
                f"ts must have shape [{n + 1}] (N + 1 times for the {n} steps of `like`), got {np.shape(ts)}"
            )
        if not is_traced(ts):
            ts = jnp.asarray(ts)
            if not jnp.issubdtype(ts.dtype, jnp.floating):
                ts = ts.astype(jnp.result_type(float))
        out = like._replace(ts=ts)
        if not is_traced(ts):
            check_schedule(out, noise_schedule=noise_schedule)
        return out

    @classmethod
    def load(cls, path, num_models: int | None = None, *, noise_schedule=None) -> Schedule:
        """Read and validate a schedule file written from `to_json`; errors (unreadable, not UTF-8 text, not a valid
        schedule) are ValueErrors that name the file."""
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise ValueError(f"cannot read schedule file {path}: {e.strerror or e}") from None
        return cls.from_json(data, num_models, noise_schedule=noise_schedule, source=f"schedule file {path}")


_INT32 = (-(2**31), 2**31 - 1)
_OPTIONAL = frozenset({"guidance"})  # absent in a schedule file: 1 at every step
_JSON_KEYS = frozenset(Schedule._fields) | {"omsjax_schedule", "num_steps", "metadata"}


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _from_dict(d: dict) -> Schedule:
    v = d.get("omsjax_schedule")
    if type(v) is not int or v != _JSON_VERSION:
        raise ValueError(f"not an omsjax schedule of version {_JSON_VERSION} (key 'omsjax_schedule' is {_short(v)})")
    unknown = sorted(str(k) for k in d if k not in _JSON_KEYS)
    if unknown:
        raise ValueError(f"schedule JSON has unknown field(s) {unknown}; the fields are {sorted(_JSON_KEYS)}")
    for name in Schedule._fields:
        if name not in d and name not in _OPTIONAL:
            raise ValueError(f"schedule JSON lacks the field {name!r}")
    fields = {"ts": _json_list(d, "ts", float)}
    if "num_steps" in d:
        n = d["num_steps"]
        if type(n) is not int or n < 1:
            raise ValueError(f"schedule JSON field 'num_steps' must be an integer >= 1, got {_short(n)}")
        if n != len(fields["ts"]) - 1:
            raise ValueError(
                f"schedule JSON field 'num_steps' is {n} but 'ts' has {len(fields['ts'])} times "
                f"({len(fields['ts']) - 1} steps)"
            )
    for name in ("model", "order", "start", "d1_points"):
        fields[name] = _json_list(d, name, int)
    fields["prediction"] = _json_names(d, "prediction", _PREDICTION_NAMES)
    fields["relax_type"] = _json_names(d, "relax_type", _RELAX_NAMES)
    fields["relax"] = _json_list(d, "relax", float)
    fields["d2_scale"] = _json_list(d, "d2_scale", float)
    fields["corrector"] = _json_list(d, "corrector", bool)
    if "guidance" in d:
        fields["guidance"] = _json_list(d, "guidance", float)
    if not (isinstance(d["afs"], str) and d["afs"] in AFS_NAMES):
        raise ValueError(f"schedule JSON field 'afs' must be one of {AFS_NAMES}, got {_short(d['afs'])}")
    fields["afs"] = AFS_NAMES.index(d["afs"])
    return make(**fields)


def _list(d, name) -> list:
    """The field `d[name]`, which must be a JSON list."""
    if not isinstance(d[name], list):
        raise ValueError(f"schedule JSON field {name!r} must be a list, got {json_type(d[name])}")
    return d[name]


def _json_list(d, name, typ):
    """The list `d[name]` of `typ` (int: within int32; float: within float64, inf/NaN left to check_schedule)."""
    out = []
    for i, e in enumerate(_list(d, name)):
        number = isinstance(e, (int, float)) and not isinstance(e, bool)
        if typ is bool and isinstance(e, bool):
            out.append(e)
        elif typ is int and number and (isinstance(e, int) or (math.isfinite(e) and e.is_integer())):
            if not _INT32[0] <= e <= _INT32[1]:
                raise ValueError(
                    f"schedule JSON field {name!r}, step {i}: integer {_short(e)} is out of range "
                    f"[{_INT32[0]}, {_INT32[1]}]"
                )
            out.append(int(e))
        elif typ is float and number:
            try:
                out.append(float(e))
            except OverflowError:
                raise ValueError(
                    f"schedule JSON field {name!r}, step {i}: {_short(e)} is too large for a float64"
                ) from None
        else:
            raise ValueError(f"schedule JSON field {name!r}, step {i}: expected {typ.__name__}, got {_short(e)}")
    return out


def _json_names(d, name, names):
    """The list `d[name]` of names, as their indices in `names`."""
    out = []
    for i, e in enumerate(_list(d, name)):
        if not (isinstance(e, str) and e in names):
            raise ValueError(f"schedule JSON field {name!r}, step {i}: expected one of {names}, got {_short(e)}")
        out.append(names.index(e))
    return out


def make(
    ts, model, order, prediction, start, d1_points, relax, relax_type, corrector, afs, d2_scale=None, guidance=None
) -> Schedule:
    """Build a Schedule with the canonical dtypes (float ts/relax/d2_scale/guidance in the default float dtype,
    int32, bool); `d2_scale` and `guidance` default to 1 at every step, and a scalar `guidance` applies to all."""
    f = jnp.result_type(float)
    n = len(ts) - 1
    g = np.ones(n) if guidance is None else np.asarray(guidance, np.float64)
    if g.ndim == 0:
        g = np.full(n, float(g))
    if g.shape != (n,):
        raise ValueError(f"guidance must be a scalar or one scale per step, shape ({n},), got shape {g.shape}")
    return Schedule(
        ts=jnp.asarray(np.asarray(ts, np.float64), f),
        model=jnp.asarray(model, jnp.int32),
        order=jnp.asarray(order, jnp.int32),
        prediction=jnp.asarray(prediction, jnp.int32),
        start=jnp.asarray(start, jnp.int32),
        d1_points=jnp.asarray(d1_points, jnp.int32),
        relax=jnp.asarray(np.asarray(relax, np.float64), f),
        relax_type=jnp.asarray(relax_type, jnp.int32),
        d2_scale=jnp.asarray(np.ones(len(ts) - 1) if d2_scale is None else np.asarray(d2_scale, np.float64), f),
        corrector=jnp.asarray(corrector, jnp.bool_),
        guidance=jnp.asarray(g, f),
        afs=jnp.asarray(afs, jnp.int32),
    )


def stack(schedules) -> Schedule:
    """Stack schedules of equal length along a new leading axis (for `jax.vmap` / `sample_many`)."""
    schedules = list(schedules)
    if not schedules:
        raise ValueError("stack needs at least one schedule")
    n = {s.num_steps for s in schedules}
    if len(n) != 1:
        raise ValueError(f"stack needs schedules of one length, got lengths {sorted(n)}")
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *schedules)


def is_traced(tree) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


def time_bounds(noise_schedule) -> tuple[float, float]:
    """The admissible times [lo, hi] of a schedule on `noise_schedule`: [t_min, t_max] widened by 1e-9 t_max below
    and 1e-6 t_max above (float32 rounding of the end points); the host check and the traced one share it."""
    lo, hi = float(noise_schedule.t_min), float(noise_schedule.t_max)
    return lo - 1e-9 * hi, hi + 1e-6 * hi


def check_schedule(schedule: Schedule, num_models: int | None = None, noise_schedule=None) -> None:
    """Validate a concrete schedule on the host; raise ValueError naming the field and the step. Checks that the
    fields are arrays, their shapes and dtypes, NaN/inf, strictly decreasing times (inside the noise schedule's
    range if given), model indices below `num_models`, orders 1..4 within the available history, start points and
    D_1 stencils within the history, prediction / relaxation codes, no corrector on the last step, the AFS code."""
    if not isinstance(schedule, Schedule):
        raise ValueError(f"expected an omsjax.Schedule, got {type(schedule).__name__}")
    if is_traced(schedule):
        raise ValueError("check_schedule needs a concrete schedule (it was called under tracing)")
    bad = next((k for k, v in schedule._asdict().items() if v is None or isinstance(v, (list, tuple, str, dict))), 0)
    if bad:
        raise ValueError(f"Schedule.{bad} is a {type(getattr(schedule, bad)).__name__}, not an array: {_ARRAYS}")
    a = {k: np.asarray(v) for k, v in schedule._asdict().items()}
    ts = a["ts"]
    if ts.ndim != 1 or ts.size < 2:
        raise ValueError(f"Schedule.ts must be a 1-D array of N+1 >= 2 times, got shape {ts.shape}")
    n = ts.size - 1
    if not np.issubdtype(ts.dtype, np.floating):
        raise ValueError(f"Schedule.ts must be floating point, got {ts.dtype}")
    for name in Schedule._fields[1:-1]:
        v = a[name]
        if v.shape != (n,):
            raise ValueError(f"Schedule.{name} must have shape ({n},) to match ts, got {v.shape}")
    for name in _INT_FIELDS:
        if not np.issubdtype(a[name].dtype, np.integer):
            raise ValueError(f"Schedule.{name} must be an integer array, got {a[name].dtype}")
    if a["corrector"].dtype != np.bool_:
        raise ValueError(f"Schedule.corrector must be a bool array, got {a['corrector'].dtype}")
    if not np.issubdtype(a["relax"].dtype, np.floating):
        raise ValueError(f"Schedule.relax must be floating point, got {a['relax'].dtype}")
    if a["afs"].shape != () or not np.issubdtype(a["afs"].dtype, np.integer):
        raise ValueError(f"Schedule.afs must be an integer scalar, got shape {a['afs'].shape} {a['afs'].dtype}")

    def fail(field, i, msg):
        raise ValueError(f"Schedule.{field} at step {i}: {msg}")

    for name in ("d2_scale", "guidance"):
        if not np.issubdtype(a[name].dtype, np.floating):
            raise ValueError(f"Schedule.{name} must be floating point, got {a[name].dtype}")
    for name in ("ts", "relax", "d2_scale", "guidance"):
        bad = np.flatnonzero(~np.isfinite(a[name]))
        if bad.size:
            fail(name, int(bad[0]), f"non-finite value {a[name][bad[0]]}")
    dec = np.flatnonzero(np.diff(ts) >= 0)
    if dec.size:
        i = int(dec[0])
        fail("ts", i, f"times must decrease strictly, got ts[{i}]={ts[i]} then ts[{i + 1}]={ts[i + 1]}")
    if np.any(ts <= 0):
        i = int(np.flatnonzero(ts <= 0)[0])
        fail("ts", i, f"times must be > 0, got {ts[i]}")
    if noise_schedule is not None:
        lo, hi = time_bounds(noise_schedule)
        out = np.flatnonzero((ts < lo) | (ts > hi))
        if out.size:
            i = int(out[0])
            fail(
                "ts",
                i,
                f"time {ts[i]} outside the noise schedule's range [{noise_schedule.t_min}, {noise_schedule.t_max}]",
            )
    if num_models is not None:
        bad = np.flatnonzero((a["model"] < 0) | (a["model"] >= num_models))
        if bad.size:
            i = int(bad[0])
            fail("model", i, f"index {a['model'][i]} is not in the zoo of {num_models} model(s)")
    else:
        bad = np.flatnonzero(a["model"] < 0)
        if bad.size:
            fail("model", int(bad[0]), f"negative index {a['model'][bad[0]]}")
    afs = int(a["afs"])
    if afs not in (AFS_NONE, AFS_ZERO_X0, AFS_MEAN_X0):
        raise ValueError(f"Schedule.afs must be 0 (none), 1 (zero x0) or 2 (mean x0), got {afs}")
    for i in range(n):
        k, q, d1 = int(a["order"][i]), int(a["start"][i]), int(a["d1_points"][i])
        avail = min(i + 1, usf.HISTORY)
        if not 1 <= k <= usf.MAX_ORDER:
            fail("order", i, f"order must be in 1..{usf.MAX_ORDER}, got {k}")
        if k > avail:
            fail("order", i, f"order {k} needs {k} evaluated points but only {avail} exist at this step")
        if not 0 <= q < avail:
            fail("start", i, f"start point {q} points back is not in the history of {avail} point(s)")
        if not 0 <= d1 <= k - 1:
            fail("d1_points", i, f"D_1 stencil size must be in 0..{k - 1} for order {k}, got {d1}")
        if int(a["prediction"][i]) not in (usf.NOISE, usf.DATA):
            fail("prediction", i, f"must be 0 (noise) or 1 (data), got {a['prediction'][i]}")
        if int(a["relax_type"][i]) not in (usf.RELAX_LINEAR, usf.RELAX_DPM2, usf.RELAX_BH1):
            fail("relax_type", i, f"must be 0 (linear), 1 (dpm2/bh2) or 2 (bh1), got {a['relax_type'][i]}")
        if a["corrector"][i]:
            if i == n - 1:
                fail("corrector", i, "no corrector on the last step (no model call follows it)")
            if k + 1 > usf.MAX_ORDER + 1 or q + 1 >= usf.HISTORY:
                fail("corrector", i, f"a corrector on an order-{k} step from start {q} exceeds the history")
