"""Training of the small U-Nets (`omsjax.nets`): resumable, reproducible, data parallel.

- `TrainConfig` (frozen, hashable: it is the static argument of the jitted `train_step`) with JSON round trip.
- `TrainState` (step, params, ema_params, opt_state), `init_state(config)`.
- `train_step(config, state, data, key)`: one optimiser step. The whole data set `data` [N, H, W, C] is an
  argument (it lives on device); the step's randomness (batch indices, diffusion times, noise) comes from
  `jax.random.fold_in(key, state.step)`, so a resumed run draws exactly the batches and noise of an uninterrupted
  one, and there is no host-side iterator state to checkpoint.
- `train(config, data, out_dir)`: the loop, with orbax checkpoints of the full `TrainState` in `out_dir/ckpt`,
  `resume=True` to continue after an interruption, a tqdm bar and `out_dir/log.jsonl`.
- Data parallelism: the batch is sharded over a 1-D mesh of all devices (axis "data"), parameters and optimiser
  state are replicated; with one device this is the same program.
- `save_params` / `load_params` (orbax), `model_from_params` (an `omsjax.Model` for the sampler).

Losses (see REFERENCE.md sections 2 and 6), both written as `pred = c_skip x + c_out F(c_in x; c_noise)`:
- "vp": continuous linear VP, noise prediction; t ~ U(1e-5, 1), x = alpha_t x0 + sigma_t eps, F sees (x, t),
  loss = mean (eps_hat - eps)^2.
- "edm": EDM preconditioning; ln sigma ~ N(-1.2, 1.2^2), x = x0 + sigma eps, sigma_data = 0.5,
  loss = mean lambda(sigma) (D - x0)^2 with lambda = (sigma^2 + sd^2) / (sigma sd)^2.
Training runs in float32 whatever `jax_enable_x64` says.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from omsjax import nets, schedules
from omsjax.models import Model

__all__ = [
    "PRECONDS",
    "TrainConfig",
    "TrainState",
    "precondition",
    "lr_schedule",
    "make_optimizer",
    "init_state",
    "loss_fn",
    "train_step",
    "data_sharding",
    "replicated_sharding",
    "train",
    "restore_state",
    "read_log",
    "save_params",
    "load_params",
    "model_from_params",
]

PRECONDS = ("vp", "edm")

# Continuous VP: t ~ U(T_EPS, 1). EDM: ln sigma ~ N(P_MEAN, P_STD^2), sigma_data = SIGMA_DATA.
T_EPS = 1e-5
P_MEAN = -1.2
P_STD = 1.2
SIGMA_DATA = 0.5

_DTYPE = jnp.float32


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of a training run (hashable; a static argument of `train_step`).

    Attributes:
      net: the `UNetConfig` of the network.
      steps: total optimiser steps.
      precond: "vp" (continuous linear VP, noise prediction) or "edm" (EDM preconditioning).
      batch_size: global batch size (divisible by the number of devices).
      lr: peak learning rate: linear warm-up from 0 over `warmup` steps, then cosine decay to 0.1 lr at `steps`
        (if warmup >= steps the run ends during the warm-up).
      warmup: warm-up steps.
      grad_clip: clip gradients to this global norm.
      weight_decay: decoupled weight decay (AdamW) when > 0, else Adam.
      ema_decay: decay of the exponential moving average of the parameters (0 keeps the raw parameters).
      seed: seeds the initialisation and every step's randomness.
      checkpoint_every: `train` saves a checkpoint every this many steps (and at the end).
      image_shape: (H, W, C) of the training images.
      focus_times: noise levels to weight the loss toward (VP times t; EDM sigmas): fine-tuning on a sampler's
        steps (`omsjax.timesteps.finetune`). Empty: none.
      focus_prob: the share of each batch whose noise level is drawn uniformly from `focus_times` (the rest from the
        base distribution).
    """

    net: nets.UNetConfig
    steps: int
    precond: str = "vp"
    batch_size: int = 128
    lr: float = 2e-3
    warmup: int = 200
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 1000
    image_shape: tuple = (8, 8, 1)
    focus_times: tuple = ()
    focus_prob: float = 0.0

    def __post_init__(self):
        if not isinstance(self.net, nets.UNetConfig):
            raise ValueError(f"net must be an omsjax.nets.UNetConfig, got {type(self.net).__name__}")
        if self.precond not in PRECONDS:
            raise ValueError(f"precond must be one of {PRECONDS}, got {self.precond!r}")
        for name in ("steps", "batch_size", "checkpoint_every"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not _is_int(self.warmup) or self.warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {self.warmup!r}")
        if not _is_int(self.seed):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if not _is_real(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not _is_real(self.grad_clip) or self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be a finite number > 0, got {self.grad_clip!r}")
        if not _is_real(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not _is_real(self.ema_decay) or not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        shape = self.image_shape
        if not isinstance(shape, (tuple, list)) or len(shape) != 3 or not all(_is_int(s) and s > 0 for s in shape):
            raise ValueError(f"image_shape must be (H, W, C) with positive ints, got {shape!r}")
        shape = tuple(int(s) for s in shape)
        object.__setattr__(self, "image_shape", shape)
        d = self.net.spatial_divisor
        if shape[0] % d or shape[1] % d:
            raise ValueError(
                f"image_shape {shape}: H and W must be divisible by {d} for channel_mults={self.net.channel_mults}"
            )
        focus = self.focus_times
        if not isinstance(focus, (tuple, list)) or not all(_is_real(v) and v > 0 for v in focus):
            raise ValueError(f"focus_times must be a sequence of finite noise levels > 0, got {focus!r}")
        object.__setattr__(self, "focus_times", tuple(float(v) for v in focus))
        if not _is_real(self.focus_prob) or not 0 <= self.focus_prob <= 1:
            raise ValueError(f"focus_prob must be in [0, 1], got {self.focus_prob!r}")
        if self.focus_prob > 0 and not self.focus_times:
            raise ValueError("focus_prob > 0 needs focus_times")
        if self.precond == "vp" and any(v > 1 for v in self.focus_times):
            raise ValueError(f"vp focus_times are times in (0, 1], got {self.focus_times}")
        # Normalise numeric types so that equal configs hash equally (and JSON round trips are exact).
        for name in ("lr", "grad_clip", "weight_decay", "ema_decay", "focus_prob"):
            object.__setattr__(self, name, float(getattr(self, name)))
        for name in ("steps", "batch_size", "warmup", "seed", "checkpoint_every"):
            object.__setattr__(self, name, int(getattr(self, name)))

    def to_dict(self) -> dict:
        """JSON-friendly dict (the net config nested, tuples as lists)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["net"] = {f.name: getattr(self.net, f.name) for f in dataclasses.fields(self.net)}
        return json.loads(json.dumps(d))  # tuples -> lists, and checks that it is JSON-able

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        if not isinstance(d, dict) or "net" not in d:
            raise ValueError("TrainConfig.from_dict expects a dict with a 'net' entry")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {sorted(unknown)}")
        net = d["net"]
        if isinstance(net, dict):
            net_names = {f.name for f in dataclasses.fields(nets.UNetConfig)}
            if set(net) - net_names:
                raise ValueError(f"unknown UNetConfig fields {sorted(set(net) - net_names)}")
            net = nets.UNetConfig(**net)
        kw = dict(d, net=net)
        for name in ("image_shape", "focus_times"):
            if name in kw:
                kw[name] = tuple(kw[name])
        return cls(**kw)


@struct.dataclass
class TrainState:
    """Everything a resumed run needs (a pytree; checkpointed as a whole)."""

    step: jax.Array  # int32 scalar: the number of optimiser steps taken
    params: Any
    ema_params: Any
    opt_state: Any


def precondition(precond: str, sigma, sigma_data: float = SIGMA_DATA):
    """(c_skip, c_out, c_in, c_noise) with pred = c_skip x + c_out F(c_in x; c_noise).

    "edm": `sigma` is EDM's noise level; c_skip = sd^2/(sigma^2+sd^2), c_out = sigma sd/sqrt(sigma^2+sd^2),
      c_in = 1/sqrt(sigma^2+sd^2), c_noise = ln(sigma)/4; pred is the denoised x0.
    "vp": `sigma` is the VP time t; the network is a plain noise predictor: (0, 1, 1, t), pred is eps.
    """
    if precond == "edm":
        sd2 = sigma_data**2
        s2 = sigma * sigma
        c_skip = sd2 / (s2 + sd2)
        c_out = sigma * sigma_data * jax.lax.rsqrt(s2 + sd2)
        c_in = jax.lax.rsqrt(s2 + sd2)
        c_noise = 0.25 * jnp.log(sigma)
        return c_skip, c_out, c_in, c_noise
    if precond == "vp":
        return jnp.zeros_like(sigma), jnp.ones_like(sigma), jnp.ones_like(sigma), sigma
    raise ValueError(f"precond must be one of {PRECONDS}, got {precond!r}")


def lr_schedule(config: TrainConfig):
    """Learning rate at optimiser step `count`: linear warm-up from 0, cosine decay to 0.1 lr at `steps`."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.lr,
        warmup_steps=config.warmup,
        decay_steps=max(config.steps, config.warmup + 1),
        end_value=0.1 * config.lr,
    )

    def lr(count):  # float32 whatever x64 says; optax's schedules mix Python floats and int counts
        with jax.numpy_dtype_promotion("standard"):
            return jnp.asarray(schedule(count), _DTYPE)

    return lr


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then Adam (AdamW when weight_decay > 0) on `lr_schedule(config)`."""
    lr = lr_schedule(config)
    if config.weight_decay > 0:
        opt = optax.adamw(lr, weight_decay=config.weight_decay)
    else:
        opt = optax.adam(lr)
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), opt)


def _keys(config: TrainConfig) -> tuple[jax.Array, jax.Array]:
    """(init key, base key of the per-step randomness)."""
    k_init, k_train = jax.random.split(jax.random.PRNGKey(config.seed))
    return k_init, k_train


def init_state(config: TrainConfig) -> TrainState:
    """Fresh float32 parameters (EMA = parameters), optimiser state and step 0."""
    params = nets.init_unet(config.net, _keys(config)[0], config.image_shape, _DTYPE)
    tx = make_optimizer(config)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=tx.init(params),
    )


def loss_fn(config: TrainConfig, params: Any, batch: jax.Array, key: jax.Array) -> jax.Array:
    """Mean diffusion loss of `params` on `batch` [B, H, W, C] (float32), noise levels and noise from `key`."""
    batch = jnp.asarray(batch, _DTYPE)
    b = batch.shape[0]
    k_level, k_eps = jax.random.split(key)
    eps = jax.random.normal(k_eps, batch.shape, _DTYPE)

    def bc(v):
        return v.reshape((b,) + (1,) * (batch.ndim - 1))

    k_focus = jax.random.fold_in(key, 7)  # leaves the base levels' stream unchanged

    def focus(level):  # a share focus_prob of the batch takes its level from focus_times
        if not config.focus_times:
            return level
        kf, kp = jax.random.split(k_focus)
        pick = jnp.asarray(config.focus_times, _DTYPE)[jax.random.randint(kf, (b,), 0, len(config.focus_times))]
        return jnp.where(jax.random.uniform(kp, (b,), _DTYPE) < config.focus_prob, pick, level)

    if config.precond == "vp":
        t = focus(jax.random.uniform(k_level, (b,), _DTYPE, minval=T_EPS, maxval=1.0))
        ns = schedules.vp_linear()
        alpha, sigma = jnp.exp(ns.log_alpha(t)), ns.sigma(t)
        x = bc(alpha) * batch + bc(sigma) * eps
        level, target, weight = t, eps, jnp.ones_like(t)
    else:  # edm
        sigma = focus(jnp.exp(P_MEAN + P_STD * jax.random.normal(k_level, (b,), _DTYPE)))
        x = batch + bc(sigma) * eps
        level, target = sigma, batch
        weight = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
    c_skip, c_out, c_in, c_noise = precondition(config.precond, level, SIGMA_DATA)
    f = nets.unet_apply_fn(config.net)(params, bc(c_in) * x, c_noise)
    pred = bc(c_skip) * x + bc(c_out) * f
    per_sample = jnp.mean(jnp.square(pred - target), axis=tuple(range(1, batch.ndim)))
    return jnp.mean(weight * per_sample)


@functools.cache
def _mesh() -> Mesh:
    return Mesh(np.array(jax.devices()), ("data",))


def data_sharding() -> NamedSharding:
    """Sharding of a batch: leading axis split over all devices."""
    return NamedSharding(_mesh(), P("data"))


def replicated_sharding() -> NamedSharding:
    """Sharding of parameters, optimiser state and the data set: a full copy on every device."""
    return NamedSharding(_mesh(), P())


def _check_batch(config: TrainConfig) -> None:
    n = len(jax.devices())
    if config.batch_size % n:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the number of devices ({n})")


@functools.partial(jax.jit, static_argnums=0)
def train_step(config: TrainConfig, state: TrainState, data: jax.Array, key: jax.Array) -> tuple[TrainState, dict]:
    """One optimiser step on a batch drawn from `data` [N, H, W, C] with `fold_in(key, state.step)`.

    Pure (jitted, `config` static). Returns the new state and metrics {"loss", "grad_norm", "lr"}. The batch is
    sharded over the devices' "data" axis; the new parameters and optimiser state are replicated.
    """
    _check_batch(config)
    step_key = jax.random.fold_in(key, state.step)
    k_idx, k_loss = jax.random.split(step_key)
    idx = jax.random.randint(k_idx, (config.batch_size,), 0, data.shape[0], dtype=jnp.int32)
    batch = jax.lax.with_sharding_constraint(jnp.asarray(data, _DTYPE)[idx], data_sharding())
    loss, grads = jax.value_and_grad(loss_fn, argnums=1)(config, state.params, batch, k_loss)
    tx = make_optimizer(config)
    # optax mixes Python floats with its int32 step count (e.g. Adam's bias correction b1**count), which strict
    # dtype promotion rejects; the results are float32 either way.
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    d = config.ema_decay
    ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema_params, params)
    rep = replicated_sharding()
    params, ema, opt_state = jax.lax.with_sharding_constraint((params, ema, opt_state), rep)
    new = TrainState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": lr_schedule(config)(state.step)}
    return new, metrics


def _abstract_state(config: TrainConfig) -> TrainState:
    rep = replicated_sharding()
    shapes = jax.eval_shape(functools.partial(init_state, config))
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), shapes)


def _checkpoint_manager(ckpt_dir: Path) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        ckpt_dir.resolve(),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True, cleanup_tmp_directories=True),
    )


def restore_state(out_dir, config: TrainConfig, step: int | None = None) -> TrainState:
    """The `TrainState` checkpointed by `train` in `out_dir/ckpt` at `step` (default: the latest)."""
    ckpt_dir = Path(out_dir) / "ckpt"
    if not ckpt_dir.exists():
        raise FileNotFoundError(f"no checkpoints in {ckpt_dir}")
    mngr = _checkpoint_manager(ckpt_dir)
    try:
        step = mngr.latest_step() if step is None else step
        if step is None or step not in mngr.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {ckpt_dir} (have {list(mngr.all_steps())})")
        return mngr.restore(step, args=ocp.args.StandardRestore(_abstract_state(config)))
    finally:
        mngr.close()


def _log_rows(path: Path) -> list[dict]:
    """The JSON lines of a log (a partial last line, from a killed run, is skipped)."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def read_log(out_dir) -> list[tuple[int, float]]:
    """The (step, loss) pairs of `out_dir/log.jsonl` (loss: mean over the steps since the previous line)."""
    return [(int(r["step"]), float(r["loss"])) for r in _log_rows(Path(out_dir) / "log.jsonl")]


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past `step` (written by a run killed after its last checkpoint)."""
    if path.exists():
        path.write_text("".join(json.dumps(r) + "\n" for r in _log_rows(path) if r["step"] <= step))


def train(
    config: TrainConfig,
    data,
    out_dir,
    *,
    resume: bool = False,
    progress: bool = True,
    log_every: int = 50,
    stop_at: int | None = None,
    init_params: Any = None,
) -> TrainState:
    """Train to `config.steps` (or stop after step `stop_at`, as if interrupted there); returns the final state.

    `data`: the training images [N, H, W, C] (values roughly in [-1, 1]), put on device once. Checkpoints of the
    full `TrainState` go to `out_dir/ckpt` every `config.checkpoint_every` steps and at the end (the last 2 are
    kept); `out_dir/config.json` records the config; `out_dir/log.jsonl` gets one line
    {"step", "loss", "images_per_s"} every `log_every` steps (loss averaged over those steps).
    `resume=True` restores the latest checkpoint (a fresh start if there is none) and continues; the result
    equals an uninterrupted run's. `resume=False` refuses a non-empty checkpoint directory. `init_params`
    (fine-tuning) starts from those parameters (EMA too, fresh optimiser state) instead of a fresh initialisation;
    they must have the network's structure and shapes.
    """
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not _is_int(log_every) or log_every < 1:
        raise ValueError(f"log_every must be a positive int, got {log_every!r}")
    end = config.steps if stop_at is None else min(int(stop_at), config.steps)
    _check_batch(config)
    data = np.asarray(data, np.float32)
    if data.ndim != 4 or tuple(data.shape[1:]) != config.image_shape:
        raise ValueError(f"data must have shape [N, *image_shape] = [N, {config.image_shape}], got {data.shape}")
    if data.shape[0] < 1:
        raise ValueError("data is empty")

    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "ckpt"
    log_path = out_dir / "log.jsonl"
    config_path = out_dir / "config.json"
    if not resume and ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        raise ValueError(
            f"checkpoint directory {ckpt_dir} is not empty: pass resume=True to continue that run, "
            f"or choose another out_dir"
        )
    if resume and config_path.exists():
        old = json.loads(config_path.read_text())
        new = config.to_dict()
        diff = sorted(k for k in new if k not in ("steps", "checkpoint_every") and old.get(k) != new[k])
        if diff:
            raise ValueError(f"resume: {out_dir} was trained with a different config (fields {diff} differ)")
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(config.to_dict(), indent=2))

    rep = replicated_sharding()
    data_dev = jax.device_put(data, rep)
    key = jax.device_put(_keys(config)[1], rep)
    mngr = _checkpoint_manager(ckpt_dir)
    try:
        latest = mngr.latest_step() if resume else None
        if latest is not None:
            state = mngr.restore(latest, args=ocp.args.StandardRestore(_abstract_state(config)))
        else:
            state = init_state(config)
            if init_params is not None:
                same = jax.tree.structure(state.params) == jax.tree.structure(init_params) and all(
                    tuple(a.shape) == tuple(np.shape(b))
                    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(init_params), strict=True)
                )
                if not same:
                    raise ValueError("init_params do not match the network of config.net (structure or shapes)")
                params = jax.tree.map(lambda a: jnp.asarray(a, _DTYPE), init_params)
                state = TrainState(step=state.step, params=params, ema_params=jax.tree.map(jnp.copy, params),
                                   opt_state=make_optimizer(config).init(params))  # fmt: skip
            state = jax.device_put(state, rep)
        start = int(state.step)
        _truncate_log(log_path, start)

        bar = tqdm(total=config.steps, initial=start, disable=not progress, desc="train", unit="step")
        losses, running, t0, n_window = [], None, time.perf_counter(), 0
        with open(log_path, "a") as log:
            for step in range(start + 1, end + 1):
                state, metrics = train_step(config, state, data_dev, key)
                losses.append(metrics["loss"])
                n_window += 1
                if step % log_every == 0 or step == end:
                    window = float(np.mean(jax.device_get(losses)))
                    dt = time.perf_counter() - t0
                    ips = n_window * config.batch_size / max(dt, 1e-9)
                    running = window if running is None else 0.9 * running + 0.1 * window
                    log.write(json.dumps({"step": step, "loss": window, "images_per_s": ips}) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{running:.4f}", img_s=f"{ips:.0f}")
                    bar.update(n_window)
                    losses, t0, n_window = [], time.perf_counter(), 0
                if step % config.checkpoint_every == 0 or step == end:
                    mngr.save(step, args=ocp.args.StandardSave(state), force=True)
        bar.close()
        mngr.wait_until_finished()
    finally:
        mngr.close()
    return state


def _abstract(tree: Any) -> Any:
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def f(x):
        sharding = getattr(x, "sharding", None) or dev
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(f, tree)


def save_params(path, params: Any) -> None:
    """Save a parameter pytree with orbax to the directory `path` (replaced if it exists)."""
    path = Path(path).resolve()
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, params, force=True)
        ckptr.wait_until_finished()


def load_params(path, like: Any) -> Any:
    """Load parameters saved by `save_params`, bit-exact, with the structure, shapes and dtypes of `like`
    (arrays, or `jax.ShapeDtypeStruct`s e.g. from `jax.eval_shape`)."""
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"no parameters at {path}")
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(path, _abstract(like))


def model_from_params(config: TrainConfig, params: Any, latency: float = 1.0, name: str = "") -> Model:
    """An `omsjax.Model` for trained parameters: parameterisation "noise" (vp) or "edm" (sigma_data 0.5)."""
    parameterization = {"vp": "noise", "edm": "edm"}[config.precond]
    return Model(
        apply_fn=nets.unet_apply_fn(config.net),
        params=params,
        parameterization=parameterization,
        latency=latency,
        sigma_data=SIGMA_DATA,
        name=name,
    )
