"""The learned-timesteps workflow: phase 2 (fine-tuning a zoo member toward a schedule's steps) and the whole
`omsjax optimize-steps` run (phase 1 by any method, optional fine-tuning rounds, the comparison with the standard
spacings on held-out noise, and its files).

Phase 2
-------
`finetune`: continue training a zoo model with the diffusion loss weighted toward the chosen steps (`focus_times`
of `train.TrainConfig`: a share of each batch draws its noise level from the schedule's evaluation times), small
learning rate and EMA; `alternate` runs phase 1 and phase 2 for K rounds.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from omsjax import fields, files
from omsjax.models import Model
from omsjax.sampler import sample
from omsjax.spacing import SPACINGS, time_steps
from omsjax.timesteps import (  # the application this workflow drives
    ays_bound,
    ays_schedule,
    ays_table,
    estimate_g,
    optimize_bound,
    optimize_fd,
    optimize_trajectory,
    trajectory_loss,
)

__all__ = ["METHODS", "StepsConfig", "finetune", "run"]


def finetune(
    zoo_dir,
    model: int,
    focus_times,
    out_dir,
    *,
    data=None,
    steps: int = 600,
    lr: float = 2e-4,
    focus_prob: float = 0.5,
    ema_decay: float = 0.995,
    seed: int = 0,
    name: str | None = None,
    progress: bool = True,
) -> tuple[Model, Path]:
    """Phase 2: fine-tune zoo member `model` with its diffusion loss weighted toward `focus_times` (a share
    `focus_prob` of every batch takes its noise level from them), warm-up then cosine decay from `lr`, EMA
    `ema_decay` starting at the member's weights. Writes `out_dir/train` (checkpoints, log: resumable) and
    `out_dir/zoo`, a one-member zoo with the fine-tuned EMA weights; the source zoo is only read. `data`: the
    training images (default: the digits train split for a digits zoo). Returns (the model, the zoo folder)."""
    from omsjax import data as data_mod
    from omsjax import train, zoo

    model, steps = fields.count("finetune: model", model, 0), fields.count("finetune: steps", steps)
    models, _, manifest = zoo.load_zoo(zoo_dir)
    if model >= len(models):
        raise ValueError(f"model {model!r} is not in the zoo of {len(models)} models")
    entry = manifest["models"][model]
    if data is None:
        if manifest.get("dataset") != "digits":
            raise ValueError(f"the zoo's data set is {manifest.get('dataset')!r}: pass the training images as data")
        data = data_mod.load_digits("train")
    base = train.TrainConfig.from_dict(entry["config"])
    focus = tuple(float(t) for t in focus_times)
    cfg = dataclasses.replace(
        base,
        steps=steps,
        lr=float(lr),
        warmup=max(1, min(50, steps // 10)),
        ema_decay=float(ema_decay),
        seed=seed,  # checked by TrainConfig
        checkpoint_every=steps,
        focus_times=focus,
        focus_prob=float(focus_prob),
    )
    out = Path(out_dir)
    state = train.train(cfg, data, out / "train", resume=True, progress=progress, init_params=models[model].params)
    name = name or f"{entry['name']}-ft"
    zoo.add_member(
        out / "zoo",
        name,
        cfg,
        state.ema_params,
        train_steps=int(entry.get("train_steps", 0)) + steps,
        dataset=manifest.get("dataset", "digits"),
        data_mean=manifest.get("data_mean"),
        latency_batch=int(entry.get("latency_batch", 256)),
    )
    ft, _, _ = zoo.load_zoo(out / "zoo")
    return ft[0], out / "zoo"


METHODS = ("bound", "trajectory", "ays", "fd")


def _phase1(method, zoo, k, ns, template, x0, keys, cfg):
    """The times of `template` (a preset at model k) chosen by `method` on zoo[k]; (ts, info)."""
    m = zoo[k]
    t0, t1 = float(np.asarray(template.ts)[0]), float(np.asarray(template.ts)[-1])
    lam_grid = np.linspace(float(ns.lam(t0)), float(ns.lam(t1)), cfg["grid"])
    nfe = int(template.nfe())
    if method == "bound":
        g, _ = estimate_g(m, ns, x0, lam_grid, keys[0], num_samples=cfg["g_samples"])
        res = optimize_bound(ns, np.asarray(template.ts), lam_grid, g, steps=cfg["bound_steps"], lr=0.05)
        return res.ts, {"bound_before": float(res.history[0]), "bound_after": float(res.history[-1])}
    if method == "ays":
        table = ays_table(m, ns, x0, lam_grid, keys[1], num_samples=cfg["ays_samples"])
        ts = ays_schedule(ns, nfe + int(int(np.asarray(template.afs)) != 0), lam_grid, table, t_start=t0, t_end=t1)
        return ts, {
            "ays_bound_before": ays_bound(ns, np.asarray(template.ts), lam_grid, table),
            "ays_bound_after": ays_bound(ns, ts, lam_grid, table),
        }
    if method == "fd":  # the FD itself, from the standard spacing with the lowest FD on the training noise
        from omsjax import metrics

        x_T = cfg["traj_data"](None)[0]
        fd_of = jax.jit(lambda s: sample(zoo, ns, s, x_T, data_mean=cfg["data_mean"]))
        cands = [
            template._replace(ts=jnp.asarray(_spacing_ts(ns, template, sp), jnp.asarray(template.ts).dtype))
            for sp in SPACINGS
        ]
        best = min(cands, key=lambda s: metrics.fd(np.asarray(fd_of(s))))
        res = optimize_fd(
            zoo,
            ns,
            best,
            cfg["fd_embed"],
            metrics.reference_stats(),
            image_shape=x_T.shape[1:],
            batch=min(256, x_T.shape[0]),
            steps=cfg["traj_steps"],
            lr=cfg["traj_lr"],
            data_mean=cfg["data_mean"],
            key=keys[2],
        )
        return res.ts, {"batch_fd_first": float(res.history[0]), "batch_fd_last": float(res.history[-1])}
    # trajectory: start from the standard spacing with the lowest training loss
    x_T, x_ref, held = cfg["traj_data"](m)
    best, best_loss = None, math.inf
    init_loss = jax.jit(lambda s: trajectory_loss(zoo, ns, s, x_T, x_ref, embed=cfg["embed"]))  # one compile
    for sp in SPACINGS:
        cand = template._replace(ts=jnp.asarray(_spacing_ts(ns, template, sp), jnp.asarray(template.ts).dtype))
        loss = float(init_loss(cand))
        if loss < best_loss:
            best, best_loss = cand, loss
    res = optimize_trajectory(
        zoo,
        ns,
        best,
        (x_T, x_ref),
        heldout=held,
        steps=cfg["traj_steps"],
        lr=cfg["traj_lr"],
        batch=min(64, x_T.shape[0]),
        key=keys[2],
        embed=cfg["embed"],
    )
    return res.ts, {
        "train_mse_before": float(res.history[0]),
        "train_mse_after": float(res.history[-1]),
        "heldout_mse_before": res.heldout["before"],
        "heldout_mse_after": res.heldout["after"],
    }


def _spacing_ts(ns, template, spacing):
    ts = np.asarray(template.ts, np.float64)
    return time_steps(ns, len(ts) - 1, spacing, t_start=float(ts[0]), t_end=float(ts[-1]))


@dataclasses.dataclass(frozen=True)
class StepsConfig:
    """What `run` (`omsjax optimize-steps`) learns and how: the times of `solver` (a key of `presets.NAMED`) at
    `nfe` on zoo member `model` (default: the largest) by `method` (one of METHODS: "bound", "trajectory", "ays" or
    "fd", the FD itself through the sampler, `optimize_fd`), optionally alternating with `rounds` of fine-tuning
    (phase 2, `finetune_steps` each); `train_samples` / `heldout_samples` trajectories from seeds `seed` + 500 /
    + 600, `traj_steps` Adam steps of the trajectory fit at the `distance` "pixels" or "features" (the FD
    classifier's features: the perceptual distance, as LD3 uses LPIPS), and the comparison's FD on `fd_samples`
    samples of seed + 1000. Checked on construction, each error naming the field."""

    model: int | None = None
    solver: str = "DDIM"
    nfe: int = 5
    method: str = "trajectory"
    rounds: int = 0
    train_samples: int = 256
    heldout_samples: int = 128
    fd_samples: int = 1000
    seed: int = 0
    traj_steps: int = 300
    finetune_steps: int = 600
    distance: str = "features"

    def __post_init__(self):
        from omsjax import presets

        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.distance not in ("pixels", "features"):
            raise ValueError(f"distance must be 'pixels' or 'features', got {self.distance!r}")
        if self.solver not in presets.NAMED:
            raise ValueError(f"unknown solver {self.solver!r}; expected one of {sorted(presets.NAMED)}")
        for name, lo in (
            ("nfe", 1),
            ("rounds", 0),
            ("train_samples", 2),
            ("heldout_samples", 2),
            ("fd_samples", 2),
            ("traj_steps", 1),
            ("finetune_steps", 1),
            ("seed", 0),
        ):
            object.__setattr__(self, name, fields.count(f"StepsConfig.{name}", getattr(self, name), lo))
        if self.model is not None:
            object.__setattr__(self, "model", fields.count("StepsConfig.model", self.model, 0))


def run(zoo_dir, out_dir, config: StepsConfig = StepsConfig(), *, progress: bool = True) -> dict:
    """`omsjax optimize-steps` (`StepsConfig`): learn a solver's times, compare them with the standard spacings on
    held-out noise. Writes out/schedule.json (for `omsjax evaluate --schedule`; after fine-tuning its model is
    member 0 of the last round's zoo, out/finetune{K-1}/zoo, named in the report and the schedule's metadata),
    out/report.json and out/timesteps.png, atomically, holding `out_dir`'s `files.FolderLock` from before the zoo
    loads (a second run on the same folder is refused at once with `files.FolderLocked`)."""
    if not isinstance(config, StepsConfig):
        raise ValueError(f"config must be a StepsConfig, got {type(config).__name__}")
    out = Path(out_dir)
    with files.FolderLock(out, what="omsjax optimize-steps"):
        return _run(zoo_dir, out, config, progress)


def _run(zoo_dir, out, config: StepsConfig, progress: bool) -> dict:
    """`run` (its arguments checked) with the folder lock held."""
    model, solver, nfe, method, rounds, seed = (
        config.model,
        config.solver,
        config.nfe,
        config.method,
        config.rounds,
        config.seed,
    )
    train_samples, heldout_samples, fd_samples = config.train_samples, config.heldout_samples, config.fd_samples
    traj_steps, finetune_steps, distance = config.traj_steps, config.finetune_steps, config.distance
    from omsjax import data as data_mod
    from omsjax import metrics, plots, presets, sampler, zoo
    from omsjax.options import SampleOptions
    from omsjax.search.evaluate import Evaluator

    models, ns, manifest = zoo.load_zoo(zoo_dir)
    k = len(models) - 1 if model is None else model  # an int >= 0 (StepsConfig)
    if k >= len(models):
        raise ValueError(f"model {k!r} is not in the zoo of {len(models)} models (0..{len(models) - 1})")
    kind, kw = presets.NAMED[solver]
    template = presets.preset(kind, ns, nfe, model=k, **kw)
    shape = tuple(manifest["image_shape"])
    mean = zoo.data_mean(manifest)
    x0 = jnp.asarray(data_mod.load_digits("train")) if manifest.get("dataset") == "digits" else None
    if x0 is None and method in ("bound", "ays"):
        raise ValueError("the bound and AYS methods need the zoo's training data (digits zoos only here)")
    t0, t1 = float(np.asarray(template.ts)[0]), float(np.asarray(template.ts)[-1])
    x_T = float(ns.prior_std(t0)) * sampler.noise(seed + 500, train_samples, shape)
    x_H = float(ns.prior_std(t0)) * sampler.noise(seed + 600, heldout_samples, shape)

    def traj_data(m):
        if m is None:  # the FD objective needs no ODE reference
            return x_T, None, None
        ref = lambda x: metrics.ode_reference(m, ns, x, t0, t1)  # noqa: E731
        return x_T, ref(x_T), (x_H, ref(x_H))

    cls = metrics.load_classifier()
    feats = lambda x: metrics.apply_classifier(cls, x.astype(jnp.float32), True)  # noqa: E731
    cfg = {
        "grid": 256,
        "g_samples": 128,
        "bound_steps": 500,
        "ays_samples": 256,
        "traj_steps": traj_steps,
        "traj_lr": 0.05,
        "traj_data": traj_data,
        "embed": feats if distance == "features" else None,
        "fd_embed": feats,
        "data_mean": mean,
    }
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    zoo_now, k_now, ft_dir = models, k, None
    rounds_info = []
    for r in range(rounds + 1):
        tsr, info = _phase1(
            method, zoo_now, k_now, ns, template._replace(model=jnp.full_like(template.model, k_now)), x0, keys, cfg
        )
        rounds_info.append({"round": r, "ts": [float(v) for v in tsr], **info})
        if r == rounds:
            break
        ft_model, ft_dir = finetune(
            zoo_dir if r == 0 else ft_dir,
            k_now,
            tsr[:-1],
            out / f"finetune{r}",
            steps=finetune_steps,
            seed=seed + r,
            progress=progress,
        )
        zoo_now, k_now = (ft_model,), 0
    final = template._replace(
        ts=jnp.asarray(tsr, jnp.asarray(template.ts).dtype), model=jnp.full_like(template.model, k_now)
    )

    # Compare on held-out noise: the standard spacings (original model), the optimised times (final model).
    sampling = SampleOptions(data_mean=mean)
    ev = Evaluator(models, ns, num_samples=fd_samples, noise_seed=seed + 1000, sample_shape=shape, sampling=sampling)
    rows = {}
    ref_H = metrics.ode_reference(models[k], ns, x_H, t0, t1)

    def row(zoo_, sched, ev_, ref_):
        out_h = sampler.sample(zoo_, ns, sched, x_H, data_mean=mean)
        return {"fd": ev_.evaluate_schedules([sched])[0].score, "traj_rmse": metrics.reference_rmse(out_h, ref_)}

    for sp in SPACINGS:
        s = template._replace(ts=jnp.asarray(_spacing_ts(ns, template, sp), jnp.asarray(template.ts).dtype))
        rows[sp] = row(models, s, ev, ref_H)
    if rounds == 0:
        opt_row = row(models, final, ev, ref_H)
    else:
        ev_ft = Evaluator(
            zoo_now, ns, num_samples=fd_samples, noise_seed=seed + 1000, sample_shape=shape, sampling=sampling
        )
        opt_row = row(zoo_now, final, ev_ft, metrics.ode_reference(zoo_now[0], ns, x_H, t0, t1))
    best_sp = min(SPACINGS, key=lambda sp: rows[sp]["fd"])
    label = method + ("" if rounds == 0 else f" + fine-tuning x{rounds}")
    report = {
        "zoo": str(zoo_dir),
        "model": k,
        "solver": solver,
        "nfe": nfe,
        "method": method,
        "rounds": rounds,
        "distance": distance if method == "trajectory" else None,
        "optimized": {"label": label, "ts": [float(v) for v in tsr], **opt_row},
        "spacings": rows,
        "best_spacing": best_sp,
        "fd_ratio_to_best_spacing": opt_row["fd"] / rows[best_sp]["fd"],
        "phase1": rounds_info,
        "finetuned_zoo": None if ft_dir is None else str(ft_dir),
        "heldout_noise_seed": seed + 1000,
        "fd_samples": fd_samples,
        "heldout_trajectories": heldout_samples,
        "train_trajectories": train_samples,
    }
    meta = dict(solver=solver, method=label, fd=opt_row["fd"], zoo=str(zoo_dir) if ft_dir is None else str(ft_dir))
    files.write_text(out / "schedule.json", final.to_json(**meta))
    files.write_json(out / "report.json", report)
    plots.timesteps_plot(
        ns,
        {**{sp: _spacing_ts(ns, template, sp) for sp in SPACINGS}, label: tsr},
        out / "timesteps.png",
        title=f"{solver}, NFE {nfe}",
    )
    return report
