"""True evaluation of candidate schedules: a metric (and cost, NFE) on fixed noise, batched, archived on disk.

It samples with `search.candidates.sample_candidates` (the samples of C schedules of one length from the same
x_T, one compiled program per length) and keeps what it scored in a `search.archive.Archive` (a JSONL file, one
line per evaluated schedule, keyed by the schedule's canonical JSON and the evaluation settings; an interrupted
search that reopens it re-evaluates nothing).

- `Evaluator`: decodes genomes (or takes schedules), skips what the archive holds, groups the rest by length,
  samples them in chunks and scores each by its metric, `metric(samples, x_T) -> float` (lower is better; numpy
  arrays [n, *sample_shape]): the user's own, or by default the digits FD `omsjax.metrics.digits_fd`, which scores
  only 8x8x1 digits. Diverged schedules (non-finite samples) score inf, and the record's `note` (also logged as a
  warning) says at which step and why: the model returned non-finite values, or the solver's update overflowed.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

from omsjax import checks, distributed, metrics, sampler
from omsjax.metrics.device import FeatureMetric
from omsjax.models import as_zoo
from omsjax.options import SampleOptions
from omsjax.schedule import Schedule
from omsjax.search import encoding, host_metric
from omsjax.search.archive import Archive, Record, genome_to_dict, schedule_key
from omsjax.search.candidates import Layout, choose_layout, place_noise, run_candidates
from omsjax.search.encoding import Genome
from omsjax.search.space import SearchSpace

_log = logging.getLogger(__name__)

__all__ = ["Evaluator", "DIGITS_SHAPE"]


def _sample_shape(zoo, sample_shape) -> tuple[int, ...] | None:
    """The evaluator's sample shape: the one given and/or the one the models declare; errors when they disagree.
    None when nothing says it."""
    given = {} if sample_shape is None else {"sample_shape": tuple(sample_shape)}
    for name, v in given.items():
        if not v or not all(checks.is_int(d) and d > 0 for d in v):
            raise ValueError(f"{name} must be a tuple of positive ints, got {v!r}")
    shape, source = None, None
    if given:
        source, shape = next(iter(given.items()))
        shape = tuple(int(d) for d in shape)
    for i, m in enumerate(zoo):
        if m.sample_shape is not None and shape is None:
            shape, source = m.sample_shape, f"zoo member {i} {m.name!r} declares sample_shape"
        elif m.sample_shape is not None and m.sample_shape != shape:
            raise ValueError(f"{source} {shape}, but zoo member {i} {m.name!r} declares sample_shape {m.sample_shape}")
    return shape


DIGITS_SHAPE = metrics.IMAGE_SHAPE  # the one sample shape the default metric, the digits FD, scores


class Evaluator:
    """A metric of candidate schedules on fixed noise (`num_samples` from `noise_seed`), with an archive.

    `zoo`: the models; `noise_schedule`; `space`: decodes genomes (optional when only schedules are passed); its
    [t_end, t_start] must lie inside the noise schedule's [t_min, t_max] (`SearchSpace.check_times`).

    `metric(samples, x_T) -> float`, lower is better, on numpy arrays [num_samples, *sample_shape]: the score kept
    in each `Record` (field `score`; "fd" in the archive JSON); a metric with a third parameter, or a keyword
    `cond`, also gets the evaluator's `cond` (the rows sampled, numpy leaves; None without conditioning). NaN and
    -inf are errors; a diverged candidate (non-finite samples) scores inf without calling it. By default
    (`metric=None`) the digits FD `metrics.digits_fd`; it scores only samples of shape (8, 8, 1) (others: a
    ValueError asking for `metric=` when it is first called). `metric_name` (default: the metric's `name`
    attribute if it has one, else its `__qualname__`) is part of `eval_key` for a custom metric, so archives keep
    metrics apart (give one to tell apart lambdas or partials); the default's keys are
    "seed{noise_seed}-n{num_samples}" as before.

    `sample_shape`: the shape of one sample, e.g. (16,), (T, D) or (H, W, C); by default the
    shape the models declare (`Model.sample_shape`, set on zoo members by `zoo.load_zoo`); a shape that differs
    from a declared one is an error, and so is no shape at all (there is no default shape). The noise `x_T` is
    float32 (`sampler.noise`), at the prior scale of the space's t_start (without a space: the noise schedule's
    t_max).

    `sampling` (an `omsjax.SampleOptions`): conditioning, classifier-free guidance, the data mean and dynamic
    thresholding, as in `omsjax.sample`; cond's and uncond's leaves have at least `num_samples` rows (one per
    sample of the noise; the first `num_samples` are used, so `with_noise` may ask for fewer, or for as many as
    given). Conditioning and thresholding are part of `eval_key` ("-c" and a hash), so an archive never mixes
    evaluations under different conditioning.

    `method=None` picks `map` for model schedules, and for solver schedules of one model `vmap` on an accelerator
    but `map` on the CPU: there, 8 candidates x 500 samples of the 634k digits U-Net took 47 s with `vmap` and
    6.4 s with `map` (the same as a loop of jitted calls; the batched activations no longer fit the caches).
    """

    def __init__(
        self,
        zoo,
        noise_schedule,
        space: SearchSpace | None = None,
        *,
        num_samples: int = 500,
        noise_seed: int = 0,
        metric: Callable[[np.ndarray, np.ndarray], float] | None = None,
        sample_shape=None,
        metric_name: str | None = None,
        archive: Archive | str | Path | None = None,
        chunk: int = 8,
        method: str | None = None,
        sampling: SampleOptions | None = None,
    ):
        self.num_samples = checks.count("Evaluator: num_samples", num_samples, 2)  # a metric of a sample set
        self.noise_seed = checks.seed("Evaluator: noise_seed", noise_seed)
        self.zoo = as_zoo(zoo)
        self.ns = noise_schedule
        if space is not None:
            space.check_times(noise_schedule)
        self.space = space
        sampling = SampleOptions() if sampling is None else sampling
        if not isinstance(sampling, SampleOptions):
            raise ValueError(f"sampling must be an omsjax.SampleOptions, got {type(sampling).__name__}")
        self.sampling = sampling
        self.data_mean = sampling.data_mean
        self.archive = archive if isinstance(archive, Archive) else Archive(archive)
        self.chunk = checks.positive_int("chunk", chunk)
        if method not in (None, "vmap", "map"):
            raise ValueError(f"method must be None (automatic), 'vmap' or 'map', got {method!r}")
        self.method = method
        self.custom_metric = metric is not None and metric is not metrics.digits_fd
        if self.custom_metric:
            if not callable(metric):
                raise ValueError(f"metric must be callable as metric(samples, x_T) -> float, got {metric!r}")
            self.metric = metric
            self.metric_name = host_metric.name_of(metric) if metric_name is None else metric_name
            if not isinstance(self.metric_name, str) or not self.metric_name:
                raise ValueError(f"metric_name must be a non-empty string, got {self.metric_name!r}")
        else:
            if metric_name is not None:
                raise ValueError("metric_name names a custom metric: pass metric= with it")
            self.metric = metrics.digits_fd
            self.metric_name = "digits_fd"
        self._set_conditioning()
        self.eval_key = self._eval_key()
        self.sample_shape = _sample_shape(self.zoo, sample_shape)
        if self.sample_shape is None:
            raise ValueError(
                "the models declare no sample_shape (Model.sample_shape): pass sample_shape=, the "
                f"shape of one sample (the digits: {DIGITS_SHAPE})"
            )
        self.evaluated = 0  # schedules actually sampled (not found in the archive) by this evaluator
        self.split: Layout | None = None  # the evaluation mesh's split when `on_mesh` chose it
        self._warned = False  # the warning of samples gathered for a host metric, logged once
        self.also: dict[str, Callable] = {}  # other metrics of the same samples, kept in `Record.extras`

    def _set_conditioning(self) -> None:
        """Keep the first num_samples rows of `sampling`'s cond and uncond (checked) and its thresholding."""
        self.rows = self.sampling.rows(self.num_samples, "num_samples")  # the options of this noise's samples
        self.cond, self.uncond, self.thresholding = self.rows.cond, self.rows.uncond, self.rows.thresholding

    def _eval_key(self) -> str:
        """The archive's name for this noise, metric and conditioning: "seed{noise_seed}-n{num_samples}", then
        "-{metric_name}" for a custom metric, and "-c{hash}" of cond, uncond and thresholding when any is given."""
        key = f"seed{self.noise_seed}-n{self.num_samples}"
        key = f"{key}-{self.metric_name}" if self.custom_metric else key
        if self.cond is None and self.thresholding is None:
            return key
        h = hashlib.sha1(repr(self.thresholding).encode())
        for leaf in jax.tree.leaves((self.cond, self.uncond)):
            a = np.asarray(leaf)
            h.update(f"{a.dtype}{a.shape}".encode() + a.tobytes())
        return f"{key}-c{h.hexdigest()[:10]}"

    def with_noise(
        self,
        noise_seed: int,
        num_samples: int | None = None,
        *,
        chunk: int | None = None,
        also: dict[str, Callable] | None = None,
    ) -> Evaluator:
        """This evaluator on other noise (`noise_seed`, `num_samples`, default the same number): the same models,
        space, metric and archive, its own `eval_key` and count of evaluations (e.g. a search's held-out noise).
        `chunk` (default the same) sets its candidates per compiled call: a few schedules on many samples (a final
        re-evaluation, a held-out score) run best one at a time, in one program for both evaluators.

        `also`: {name: metric(samples, x_T) -> float} scored on the same samples as the evaluator's own metric (e.g.
        the FD to data beside a reference metric) and kept in each record's `extras` (inf for diverged samples);
        an archived record without them is evaluated again."""
        noise_seed = checks.seed("with_noise: noise_seed", noise_seed)
        if num_samples is not None:
            num_samples = checks.count("with_noise: num_samples", num_samples, 2)
        other = copy.copy(self)
        other.chunk = self.chunk if chunk is None else checks.positive_int("chunk", chunk)
        # The noise (and its rows of cond) is this evaluator's own.
        for cached in ("x_T", "_placed", "_x_T_host", "_cond_host"):
            other.__dict__.pop(cached, None)
        other.noise_seed = noise_seed
        other.num_samples = self.num_samples if num_samples is None else num_samples
        other._set_conditioning()
        other.eval_key = other._eval_key()
        other.evaluated = 0
        other.also = dict(also or {})
        for name, fn in other.also.items():
            if not (isinstance(name, str) and name and callable(fn)):
                raise ValueError(f"also must map names to metrics metric(samples, x_T) -> float, got {name!r}: {fn!r}")
        return other

    def on_mesh(self, cand: int, data: int) -> Evaluator:
        """This evaluator with its evaluations on a `cand` x `data` mesh of all devices (`search.candidates.Layout`:
        candidates split over `cand`, samples over `data`; their product must be `jax.device_count()`) instead of
        the split `choose_layout` picks from the counts. The noise and the scores do not depend on the split."""
        other = self.with_noise(self.noise_seed, chunk=self.chunk, also=self.also)
        other.split = choose_layout(self.num_samples, Layout(cand, data))
        return other

    @property
    def layout(self) -> Layout:
        """The mesh of this evaluator's evaluations: `split` if set (`on_mesh`), else `choose_layout`'s."""
        return choose_layout(self.num_samples, self.split)

    @functools.cached_property
    def _placed(self):
        """The fixed noise and its conditioning on the evaluation mesh, each device drawing its own rows."""
        t0 = self.space.t_start if self.space is not None else self.ns.t_max
        scale = float(self.ns.prior_std(float(t0)))
        return place_noise(self.noise_seed, self.num_samples, self.sample_shape, scale, self.rows, self.layout)

    @functools.cached_property
    def x_T(self) -> jax.Array:
        """The fixed noise [num_samples, *sample_shape] at the schedules' start (the space's t_start, else the noise
        schedule's t_max): the prior there. Sample i is `sampler.noise`'s row i, scaled; the evaluations draw it on
        the devices (`search.candidates.place_noise`), and this is its copy on this process's first device (over
        several processes, gathered from all of them: every process must ask for it, at the same point)."""
        return jax.numpy.asarray(self._x_T_host)

    def _method(self, schedules: Sequence[Schedule]) -> str:
        if self.method is not None:
            return self.method
        models = {int(m) for s in schedules for m in np.asarray(s.model).ravel()}
        return "vmap" if len(models) == 1 and jax.default_backend() != "cpu" else "map"

    def fd_of_samples(self, x: np.ndarray, key: str = "(samples)") -> float:
        """The metric's value for samples `x` [num_samples, *sample_shape] of the evaluator's noise (`score` of a
        `Record`; the name is historical): inf if any sample is non-finite; `key` names the schedule in errors."""
        if not np.all(np.isfinite(x)):
            return float("inf")
        if not self.custom_metric and tuple(x.shape[1:]) != DIGITS_SHAPE:
            raise ValueError(
                f"the default metric, the digits FD, scores samples of shape {DIGITS_SHAPE}, not "
                f"{tuple(x.shape[1:])}: pass metric=, a metric(samples, x_T) -> float"
            )
        return self._score(self.metric, self.metric_name, x, key)

    def _score(self, metric, name: str, x: np.ndarray, key: str) -> float:
        """`metric(x, x_T)` (or with the cond, `host_metric.call`) checked; inf without calling it for non-finite x."""
        if not np.all(np.isfinite(x)):
            return float("inf")
        return host_metric.call(metric, name, x, self._x_T_host, self._cond_host, key)

    @functools.cached_property
    def _cond_host(self):
        """The conditioning of exactly the rows sampled (numpy leaves), or None: what a cond-aware metric gets."""
        return None if self.cond is None else jax.tree.map(np.asarray, self.cond)

    @functools.cached_property
    def _x_T_host(self) -> np.ndarray:
        """The noise on this host (numpy), gathered from every process once: what a host metric gets."""
        return distributed.allgather(self._placed.x_T)[: self.num_samples]

    def evaluate_schedules(self, schedules: Sequence[Schedule], *, genomes: Genome | None = None, stage: int = 0):
        """A `Record` per schedule (from the archive where it has one); new results are appended as they come.
        Over several processes, every process evaluates process 0's `schedules` (and `genomes`), and gets the
        scores process 0 computed (`omsjax.distributed.broadcast`)."""
        schedules, genomes = distributed.broadcast((list(schedules), genomes))
        latencies = [m.latency for m in self.zoo]
        keys = [schedule_key(s) for s in schedules]
        out: list[Record | None] = [self._known(k) for k in keys]
        todo: dict[int, list[int]] = {}
        seen: dict[str, int] = {}
        for i, (k, r) in enumerate(zip(keys, out, strict=True)):
            if r is None and k not in seen:
                seen[k] = i
                todo.setdefault(schedules[i].num_steps, []).append(i)
        for _, idx in sorted(todo.items()):
            for start in range(0, len(idx), self.chunk):
                part_idx = idx[start : start + self.chunk]
                part = [schedules[i] for i in part_idx]
                t0 = time.perf_counter()
                scored = self._score_part(part, [keys[i] for i in part_idx])
                dt = (time.perf_counter() - t0) / len(part)
                for i, s, (fd, extras, finite) in zip(part_idx, part, scored, strict=True):
                    g = None if genomes is None else genome_to_dict(jax.tree.map(lambda a, i=i: a[i], genomes))
                    rec = Record(
                        key=keys[i],
                        eval_key=self.eval_key,
                        score=fd,
                        note="" if finite else self._why_not_finite(s, keys[i]),
                        cost=float(s.cost(latencies)),
                        nfe=int(s.nfe()),
                        schedule=json.loads(s.to_json(indent=None)),
                        genome=g,
                        stage=stage,
                        seconds=dt,
                        extras=extras,
                    )
                    self.archive.append(rec)
                    self.evaluated += 1
                    out[i] = rec
        for i, k in enumerate(keys):  # duplicates within the call
            if out[i] is None:
                out[i] = self._known(k)
        return out

    def _score_part(self, part: list[Schedule], keys: list[str]) -> list[tuple[float, dict, bool]]:
        """(score, extras, finite samples) of each schedule of one chunk. A `FeatureMetric` without `also` metrics
        scores on the devices (only its feature sums come back); any other metric gets the samples, gathered from
        every process. Process 0 computes the scores and sends them to the others."""
        run = functools.partial(
            run_candidates, self.zoo, self.ns, part, self._placed, method=self._method(part), chunk=self.chunk
        )
        writer = distributed.is_writer()
        checks.check_each(self.zoo, self.ns, part, self.data_mean, self.uncond)
        digits = self.custom_metric or self.sample_shape == DIGITS_SHAPE  # else the default metric raises if finite
        if isinstance(self.metric, FeatureMetric) and not self.also and digits:
            self.metric.check(self.sample_shape)  # what its host call checks (e.g. DigitsFD: 8x8x1 images)
            res = run(sampling=self.rows, metric=self.metric)
            scored = [(self.metric.finalize(sums) if not bad else float("inf"), {}, not bad) for sums, bad in res]
        else:
            xs = run(sampling=self.rows)
            warning = host_metric.gathered_warning(self.metric_name, xs.nbytes, distributed.process_count())
            if warning is not None and writer and not self._warned:
                self._warned = True
                _log.warning(warning)
            self._x_T_host  # noqa: B018 (the noise on the host: a collective, so every process gathers it)
            scored = [
                (
                    self.fd_of_samples(x, k),
                    {name: self._score(fn, name, x, k) for name, fn in self.also.items()},
                    bool(np.all(np.isfinite(x))),
                )
                for x, k in zip(xs, keys, strict=True)
                if writer  # process 0 alone calls the metric
            ]
        return distributed.broadcast(scored if writer else None)

    def _known(self, key: str) -> Record | None:
        """The archived record of a schedule on this noise and metric, if it has every metric of `also`."""
        r = self.archive.get(key, self.eval_key)
        return r if r is not None and set(self.also) <= set(r.extras) else None

    def _why_not_finite(self, schedule: Schedule, key: str) -> str:
        """The first non-finite step of a diverged schedule and its cause (the model's output, or the solver's
        update), logged as a warning and kept in the record: the search scores it inf and says why."""
        found = sampler.first_nonfinite_step(self.zoo, self.ns, schedule, self.x_T, self.rows)
        note = found.message if found is not None else "non-finite samples"
        _log.warning("schedule %s scored FD = inf: %s", key, note)
        return note

    def evaluate(self, genomes: Genome, *, stage: int = 0) -> list[Record]:
        """Decode a population (leading axis C) with the evaluator's space and evaluate every member."""
        if self.space is None:
            raise ValueError("Evaluator.evaluate needs a SearchSpace to decode genomes")
        genomes = jax.tree.map(np.asarray, genomes)  # indexed per member below: on the host, nothing to compile
        n = int(jax.tree_util.tree_leaves(genomes)[0].shape[0])
        scheds = [
            encoding.to_schedule(self.space, self.ns, jax.tree.map(lambda a, i=i: a[i], genomes)) for i in range(n)
        ]
        return self.evaluate_schedules(scheds, genomes=genomes, stage=stage)

    def samples(self, schedule: Schedule, *, reuse_chunk: bool = False) -> np.ndarray:
        """The evaluator's samples of one schedule (its fixed noise), on the host. `reuse_chunk`: run it in the
        evaluator's program for `chunk` candidates (the schedule repeated), which the evaluations have compiled
        already: `chunk` times the work of a program of its own, without compiling one."""
        return run_candidates(
            self.zoo,
            self.ns,
            [schedule],
            self._placed,
            method=self._method([schedule]),
            chunk=self.chunk if reuse_chunk else 1,
            sampling=self.rows,
        )[0]
