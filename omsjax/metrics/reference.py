"""Reference-based quality: how far a few-step sampler lands from the model's own converged sampler, from the same
noise, labels and guidance.

FD to real data measures the model and the sampler together. It saturates at the model's own floor (digits-m: FD
4.2 +- 0.5 from NFE 5 on), so solver differences vanish in its noise, and under guidance it rewards samplers that
drift away from the guided target (FD to data rises with the guidance scale). A fast sampler's job is to reproduce
what the same model gives when sampled to convergence; these metrics measure exactly that:

- `ReferenceSampler`: the converged sampler (default DPM-Solver++(3M), 100 steps, time-quadratic: 5.8e-3 RMSE to
  400 steps on digits-m, a tenth of a 10-step sampler's error).
- `Reference`: a model (one zoo member), its noise schedule, the interval [t_start, t_end], the guidance scale and
  the conditioning; `Reference.samples(x_T)` are the reference sampler's samples from x_T (the first rows of
  `cond` / `uncond` go with the rows of x_T), cached in memory per noise and, with a `ReferenceStore`, on disk.
- `reference_fd(samples, reference)`: the Fréchet distance between the features of a candidate's samples and of the
  reference samples from the same noise (default features: the shipped digits classifier's, as `metrics.fd`);
  `reference_rmse(samples, reference)`: sqrt(mean (x - x_ref)^2) over every sample and entry.
- `ReferenceFD`, `ReferenceRMSE`: the same as search metrics `metric(samples, x_T) -> float` (lower is better) for
  `omsjax.search.Evaluator` and `find_schedule`; `name` says the metric, the member, the scale and the reference
  sampler (the archive keeps metrics apart by it).
- `ReferenceStore`: reference samples in one `.npz` file (atomic writes) with a fingerprint of what they depend on
  (a zoo's files); a file of another fingerprint is ignored with a log line. A zoo ships the references of its
  default search noise this way, as it ships its preset evaluations.
- `ode_reference`: the diffrax endpoint of the probability-flow ODE (adaptive Dopri8), the other converged
  reference (`omsjax evaluate --ref-samples`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from omsjax import checks, files, presets
from omsjax.checks import thresholding_option
from omsjax.metrics.classifier import IMAGE_SHAPE, features
from omsjax.metrics.digits import shipped_classifier
from omsjax.metrics.frechet import feature_stats, frechet_distance
from omsjax.models import Model
from omsjax.sampler import sample
from omsjax.schedule import Schedule
from omsjax.spacing import SPACINGS

__all__ = [
    "ReferenceSampler",
    "Reference",
    "ReferenceStore",
    "ReferenceFD",
    "ReferenceRMSE",
    "reference_fd",
    "reference_rmse",
    "digits_features",
    "ode_reference",
]

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ReferenceSampler:
    """The converged sampler of the reference metrics: the named solver `solver` (`presets.NAMED`) at `steps`
    model calls per sample (each guided step two) on the `spacing` step grid, run in batches of `batch_size`."""

    solver: str = "DPM-Solver++(3M)"
    steps: int = 100
    spacing: str = "time_quadratic"
    batch_size: int = 500

    def __post_init__(self):
        if self.solver not in presets.NAMED:
            raise ValueError(f"ReferenceSampler.solver {self.solver!r} is not one of {sorted(presets.NAMED)}")
        checks.positive_int("ReferenceSampler.steps", self.steps)
        checks.positive_int("ReferenceSampler.batch_size", self.batch_size)
        if self.spacing not in SPACINGS:
            raise ValueError(f"ReferenceSampler.spacing {self.spacing!r} is not one of {SPACINGS}")

    @property
    def name(self) -> str:
        return f"{self.solver}, {self.spacing}, {self.steps} steps"

    def schedule(self, noise_schedule, *, t_start: float, t_end: float, guidance: float = 1.0) -> Schedule:
        """The reference schedule of one model (index 0) over [t_start, t_end], every step at `guidance`."""
        s = presets.named(self.solver, noise_schedule, self.steps, skip=self.spacing, t_start=t_start, t_end=t_end)
        return presets.with_guidance(s, guidance)


def _digest(*parts) -> str:
    """sha1 (16 hex digits) of strings and arrays (dtype, shape and bytes)."""
    h = hashlib.sha1()
    for p in parts:
        if isinstance(p, str):
            h.update(p.encode() + b"\0")
        else:
            a = np.ascontiguousarray(np.asarray(p))
            h.update(f"{a.dtype}{a.shape}".encode() + a.tobytes())
    return h.hexdigest()[:16]


class ReferenceStore:
    """Reference samples by key in the `.npz` file `path`, valid for `fingerprint` (any string; e.g. the SHA-256 of a
    zoo's files, `omsjax.search.cache.fingerprint`). A file made for another fingerprint is ignored (logged) and
    replaced at the first `put`. `shipped`: another store's file, read (same fingerprint) but never written: a
    zoo's shipped references under a run's own store. Every `put` rewrites the file atomically."""

    def __init__(self, path, fingerprint: str, *, shipped=None):
        self.path = Path(path)
        self.fingerprint = str(fingerprint)
        self.entries: dict[str, np.ndarray] = self._read(self.path)
        self.shipped = {} if shipped is None else self._read(Path(shipped))

    def _read(self, path: Path) -> dict[str, np.ndarray]:
        if not path.exists():
            return {}
        try:
            with np.load(path, allow_pickle=False) as z:
                found = str(z["fingerprint"]) if "fingerprint" in z.files else None
                if found != self.fingerprint:
                    _log.warning("%s was made for other model files: not used", path)
                    return {}
                return {k: np.asarray(z[k]) for k in z.files if k != "fingerprint"}
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{path}: not a reference store ({type(e).__name__}: {e})") from None

    def get(self, key: str) -> np.ndarray | None:
        return self.entries.get(key, self.shipped.get(key))

    def put(self, key: str, samples: np.ndarray) -> None:
        self.entries[key] = np.asarray(samples)
        buf = io.BytesIO()
        np.savez_compressed(buf, fingerprint=np.asarray(self.fingerprint), **self.entries)
        files.write_bytes(self.path, buf.getvalue())


@dataclasses.dataclass(frozen=True, eq=False)
class Reference:
    """What a candidate is compared with: `model` (one `omsjax.Model`, e.g. the zoo member a search targets) sampled
    by `sampler` over [t_start, t_end] (default the noise schedule's [t_max, default_t_end]) at classifier-free
    guidance `guidance`, with `cond` / `uncond` (leaves with one row per sample; a noise of n rows takes the first
    n) and `thresholding`, as in `omsjax.sample`. `store`: a `ReferenceStore` (optional) that keeps the samples."""

    model: Model
    noise_schedule: Any
    sampler: ReferenceSampler = ReferenceSampler()
    t_start: float | None = None
    t_end: float | None = None
    guidance: float = 1.0
    cond: Any = None
    uncond: Any = None
    thresholding: Any = None
    store: ReferenceStore | None = None

    def __post_init__(self):
        if not isinstance(self.model, Model):
            raise ValueError(f"Reference.model must be one omsjax.Model, got {type(self.model).__name__}")
        checks.real("Reference.guidance", self.guidance)
        ns = self.noise_schedule
        object.__setattr__(self, "t_start", float(ns.t_max if self.t_start is None else self.t_start))
        object.__setattr__(self, "t_end", float(ns.default_t_end if self.t_end is None else self.t_end))
        object.__setattr__(self, "thresholding", thresholding_option(self.thresholding))
        object.__setattr__(self, "_memory", {})

    @property
    def name(self) -> str:
        """The member, the guidance scale (when not 1) and the reference sampler, e.g. "digits-m, w 4,
        DPM-Solver++(3M), time_quadratic, 100 steps"."""
        w = "" if self.guidance == 1 else f", w {self.guidance:g}"
        return f"{self.model.name or 'model'}{w}, {self.sampler.name}"

    def key(self, x_T) -> str:
        """The store's key of the reference samples from x_T: a digest of the member, the interval, the scale,
        the reference sampler, the thresholding, the noise and the conditioning rows it takes."""
        n = int(np.shape(x_T)[0])
        conditioning = jax.tree.leaves((_take(self.cond, np.arange(n)), _take(self.uncond, np.arange(n))))
        return _digest(
            self.name, f"{self.t_start!r} {self.t_end!r} {self.thresholding!r}", np.asarray(x_T), *conditioning
        )

    def samples(self, x_T) -> np.ndarray:
        """The reference samples [n, ...] from x_T [n, ...] (at the prior's scale of t_start): from memory, the
        store, or sampled in batches of `sampler.batch_size` (one compiled program; the last batch padded)."""
        key = self.key(x_T)
        hit = self._memory.get(key)
        if hit is None and self.store is not None:
            hit = self.store.get(key)
        if hit is None:
            hit = self._sample(np.asarray(x_T))
            if self.store is not None:
                self.store.put(key, hit)
        self._memory[key] = hit
        return hit

    def _sample(self, x_T: np.ndarray) -> np.ndarray:
        n = x_T.shape[0]
        sched = self.sampler.schedule(
            self.noise_schedule, t_start=self.t_start, t_end=self.t_end, guidance=self.guidance
        )
        b = min(self.sampler.batch_size, n)
        out = []
        for start in range(0, n, b):
            idx = np.minimum(np.arange(start, start + b), n - 1)  # the last batch padded: one program shape
            x = sample(
                self.model,
                self.noise_schedule,
                sched,
                jnp.asarray(x_T[idx]),
                cond=_take(self.cond, idx),
                uncond=_take(self.uncond, idx),
                thresholding=self.thresholding,
            )
            out.append(np.asarray(x)[: min(b, n - start)])
        ref = np.concatenate(out)
        if not np.all(np.isfinite(ref)):
            raise ValueError(f"the reference sampler ({self.name}) returned non-finite samples")
        return ref


def _take(tree, idx):
    """The rows `idx` of every leaf of a conditioning pytree (None stays None)."""
    return None if tree is None else jax.tree.map(lambda a: jnp.asarray(np.asarray(a)[idx]), tree)


def digits_features(x: np.ndarray, classifier: Any = None) -> np.ndarray:
    """The shipped digits classifier's 128 features of images [N, 8, 8, 1], clipped to [-1, 1] first (as
    `metrics.fd`)."""
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
        raise ValueError(
            f"the digits features take images [N, 8, 8, 1], got {x.shape}: pass features= for other samples"
        )
    params = shipped_classifier() if classifier is None else classifier
    return features(params, np.clip(x.astype(np.float32), -1.0, 1.0))


def _check_pair(samples, reference) -> tuple[np.ndarray, np.ndarray]:
    x, r = np.asarray(samples), np.asarray(reference)
    if x.shape != r.shape:
        raise ValueError(
            f"samples {x.shape} and reference {r.shape} must have the same shape (one reference per "
            "sample, from the same noise)"
        )
    if not np.all(np.isfinite(r)):
        raise ValueError("the reference has non-finite entries")
    return x, r


def reference_rmse(samples: Any, reference: Any) -> float:
    """sqrt(mean (x - x_ref)^2) over every sample and entry: how far a sampler lands from the reference endpoint
    of the same noise (its own discretisation error). Shapes must match; non-finite samples give inf."""
    x, r = _check_pair(samples, reference)
    if not np.all(np.isfinite(x)):
        return float("inf")
    return float(np.sqrt(np.mean((x.astype(np.float64) - r.astype(np.float64)) ** 2)))


def reference_fd(samples: Any, reference: Any, *, features: Callable | None = None, ref_stats=None) -> float:
    """The Fréchet distance between Gaussians fitted to `features(samples)` and `features(reference)` (default
    `digits_features`); 0 when the samples are the reference. `ref_stats`: the reference's (mu, cov), when
    known. Non-finite samples give inf."""
    x, r = _check_pair(samples, reference)
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {x.shape[0]}")
    if not np.all(np.isfinite(x)):
        return float("inf")
    f = digits_features if features is None else features
    mu_r, cov_r = feature_stats(f(r)) if ref_stats is None else ref_stats
    return frechet_distance(*feature_stats(f(x)), mu_r, cov_r)


class ReferenceRMSE:
    """`reference_rmse` to `reference` (a `Reference`) as a search metric `metric(samples, x_T) -> float`."""

    kind = "reference_rmse"

    def __init__(self, reference: Reference):
        if not isinstance(reference, Reference):
            raise ValueError(f"{type(self).__name__} needs an omsjax.metrics.Reference, got {type(reference).__name__}")
        self.reference = reference
        self.name = f"{self.kind}[{reference.name}]"

    def __call__(self, samples, x_T) -> float:
        return reference_rmse(samples, self.reference.samples(x_T))


class ReferenceFD(ReferenceRMSE):
    """`reference_fd` to `reference` (a `Reference`) as a search metric `metric(samples, x_T) -> float`; `features`
    (default the digits classifier's, `digits_features`) maps samples [N, ...] to features [N, D]. The reference's
    feature statistics are computed once per noise."""

    kind = "reference_fd"

    def __init__(self, reference: Reference, *, features: Callable | None = None):
        super().__init__(reference)
        self.features = digits_features if features is None else features
        self._stats: dict[str, tuple] = {}

    def __call__(self, samples, x_T) -> float:
        key = self.reference.key(x_T)
        if key not in self._stats:
            self._stats[key] = feature_stats(self.features(self.reference.samples(x_T)))
        return reference_fd(samples, self.reference.samples(x_T), features=self.features, ref_stats=self._stats[key])


def ode_reference(model, noise_schedule, x_T, t_start, t_end, *, rtol: float = 1e-5, atol: float = 1e-5):
    """Endpoint at `t_end` of the probability-flow ODE of `model` (an `omsjax.Model`) from `x_T` at `t_start`:
    `oracles.reference_solution` (diffrax Dopri8, adaptive steps) on the model's noise prediction. The tolerances
    suit float32 networks; pass float64 `x_T` (with x64 enabled) and tighter ones for an exact model."""
    from omsjax import oracles
    from omsjax.models import to_eps_x0

    if not isinstance(model, Model):
        raise ValueError(f"ode_reference needs one omsjax.Model, got {type(model).__name__}")
    ns = noise_schedule
    t_start, t_end = float(t_start), float(t_end)
    if not t_start > t_end:
        raise ValueError(f"ode_reference integrates backwards in time: need t_start > t_end, got {t_start}, {t_end}")

    def eps_fn(x, t):
        return to_eps_x0(model, model.params, x, t, ns.log_alpha(t), ns.sigma(t))[0]

    x_T = jnp.asarray(x_T)
    run = jax.jit(lambda x: oracles.reference_solution(eps_fn, ns, x, t_start, t_end, rtol=rtol, atol=atol))
    return run(x_T)
