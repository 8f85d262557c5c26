"""Multi-stage training on `omsjax.train`'s loop: the per-stage loss, the step that moves only its stage's decoder,
and `train`.

Each step trains one stage (one micro-batch = one stage): draw the stage k (by default with probability
proportional to its interval length, so that t is marginally U(T_EPS, 1) as in `train.loss_fn`), then
t ~ U(edge_k, edge_{k+1}), x = alpha_t x0 + sigma_t eps, and the loss of `train.loss_fn`'s "vp" branch,
mean (eps_hat - eps)^2 (continuous linear VP, noise prediction). The decoders absent from a step do not move: each
parameter group (the encoder, each decoder) has its own Adam state (moments as one flat vector per group, and its
own step count for the bias correction), and a decoder's parameters, Adam state and EMA are all left bit-identical
unless it is the step's stage, as PyTorch's Adam skips parameters without gradients (plain optax would keep moving
them on stale momentum, and its EMA would keep drifting toward them). So a decoder's EMA averages over its own
updates: with decay d and stage probability p_k it spans ~1/((1 - d) p_k) steps. The gradient is clipped to the
global norm over all groups and the learning rate `train.lr_schedule` follows the global step. The step is compiled
once per stage and the stages of a run are drawn first: XLA's CPU backend runs a backward pass inside a conditional
(`lax.switch` on a traced stage) 10-30x slower than the same convolutions outside one.
`train(..., stop_at=s)` with `save_state` / `restore_state` makes a run resumable (legs give the uninterrupted
run bit for bit).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from omsjax import files, noise
from omsjax import train as _train
from omsjax.checks import count
from omsjax.checks import is_int as _is_int
from omsjax.stages.checkpoints import save_checkpoint
from omsjax.stages.config import MultiStageConfig, StageTrainConfig
from omsjax.stages.network import active_params, check_input, decode, encode, init_params, stage_apply_fn
from omsjax.train.step import seed_keys

__all__ = [
    "mean_active_params",
    "init_state",
    "loss_fn",
    "train_step",
    "train",
    "run_training",
    "save_state",
    "restore_state",
]

_DTYPE = jnp.float32  # the training dtype, as in omsjax.train


def mean_active_params(config: StageTrainConfig, params: Any) -> float:
    """Expected `active_params` per training step, sum_k p_k (|encoder| + |decoder_k|): the per-step cost to set
    against a unified U-Net's parameter count for an equal-compute comparison."""
    return float(sum(p * active_params(params, k) for k, p in enumerate(config.probs)))


def _group_tx(config: StageTrainConfig) -> optax.GradientTransformation:
    """Adam's direction (AdamW's with weight decay) for one parameter group; the learning rate is applied after."""
    if config.weight_decay > 0:
        return optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(config.weight_decay))
    return optax.scale_by_adam()


def _each_group(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` applied to each parameter group of a dict {name: flat vector} with a state of the group's own
    ({name: tx's state}): a step over some groups moves only their states."""

    def init(params):
        return {name: tx.init(p) for name, p in params.items()}

    def update(updates, state, params=None):
        out, new = {}, dict(state)
        for name, u in updates.items():
            out[name], new[name] = tx.update(u, state[name], None if params is None else params[name])
        return out, new

    return optax.GradientTransformation(init, update)


def _stage_tx(config: StageTrainConfig, lr: jax.Array) -> optax.GradientTransformation:
    """The optimiser of one step on the step's groups (the encoder and one decoder, flat vectors): clipping to the
    global norm (an absent decoder's gradient is zero, so the norm is the one over all groups), each group's own
    Adam, the learning rate `lr`."""
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), _each_group(_group_tx(config)), optax.scale(-lr))


def init_state(config: StageTrainConfig) -> _train.TrainState:
    """Step 0: fresh float32 parameters, EMA = parameters, and one Adam state per group ("encoder", "decoder_k"),
    its moments flat vectors of the group's `ravel_pytree` order."""
    if not isinstance(config, StageTrainConfig):
        raise ValueError(f"config must be a StageTrainConfig, got {type(config).__name__}")
    k_init, _ = seed_keys(config)
    params = init_params(config.net, k_init, config.image_shape, _DTYPE)
    return _train.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=_each_group(_group_tx(config)).init({name: ravel_pytree(p)[0] for name, p in params.items()}),
    )


def _stage_forward(net: MultiStageConfig, stage: int) -> Callable:
    """`f(params, x, t)`: the encoder, then decoder `stage` (a Python int) called directly; `params` needs only
    "encoder" and "decoder_{stage}"."""

    def f(params, x, t):
        x, t = check_input(net, x, t)
        h, skips, emb = encode(net, params, x, t)
        return decode(net, params, stage, h, skips, emb, net.out_channels or x.shape[-1])

    return f


def loss_fn(
    config: StageTrainConfig, params: Any, batch: jax.Array, key: jax.Array, stage: int | jax.Array
) -> jax.Array:
    """Mean noise-prediction loss of stage `stage` on `batch` [B, H, W, C]:
    t ~ U(edges[stage], edges[stage + 1]), x = alpha_t x0 + sigma_t eps, mean (eps_hat(x, t) - eps)^2.

    A Python int `stage` calls its decoder directly (`params` needs only "encoder" and "decoder_{stage}"); an int32
    array (possibly traced) goes through `stage_apply_fn`'s `lax.switch`."""
    batch = jnp.asarray(batch, _DTYPE)
    b = batch.shape[0]
    k_t, k_eps = jax.random.split(key)
    edges = jnp.asarray(config.edges, _DTYPE)
    t = jax.random.uniform(k_t, (b,), _DTYPE, minval=edges[stage], maxval=edges[stage + 1])
    eps = jax.random.normal(k_eps, batch.shape, _DTYPE)
    ns = noise.vp_linear()
    shape = (b,) + (1,) * (batch.ndim - 1)
    x = jnp.exp(ns.log_alpha(t)).reshape(shape) * batch + ns.sigma(t).reshape(shape) * eps
    if _is_int(stage):
        pred = _stage_forward(config.net, int(stage))(params, x, t)
    else:
        pred = stage_apply_fn(config.net)(params, x, t, stage)
    return jnp.mean(jnp.square(pred - eps))


def _stage_key(key: jax.Array, step: jax.Array) -> jax.Array:
    """The key of step `step`'s stage draw (the first of the three keys of `fold_in(key, step)`)."""
    return jax.random.split(jax.random.fold_in(key, step), 3)[0]


@functools.partial(jax.jit, static_argnums=0)
def _draw_stages(config: StageTrainConfig, key: jax.Array, steps: jax.Array) -> jax.Array:
    """int32 [S]: the stage drawn from `config.probs` at each optimiser step of `steps` [S]."""
    logp = jnp.log(jnp.asarray(config.probs, _DTYPE))
    return jax.vmap(lambda s: jax.random.categorical(_stage_key(key, s), logp))(steps).astype(jnp.int32)


# The stage is static: one compiled program per stage. On the CPU, XLA runs the backward pass of a conditional
# (`lax.switch` on a traced stage, or `value_and_grad` inside its branches) 10-30x slower than the same
# convolutions outside one, so the step never differentiates through a switch; the stage sequence is drawn first.
@functools.partial(jax.jit, static_argnums=(0, 4))
def _train_step(
    config: StageTrainConfig, state: _train.TrainState, data: jax.Array, key: jax.Array, stage: int
) -> tuple[_train.TrainState, dict]:
    step_key = jax.random.fold_in(key, state.step)
    _, k_idx, k_loss = jax.random.split(step_key, 3)  # the first key draws the stage (`_draw_stages`)
    idx = jax.random.randint(k_idx, (config.batch_size,), 0, data.shape[0], dtype=jnp.int32)
    batch = jnp.asarray(data, _DTYPE)[idx]
    # One flat vector per parameter group of the step (the encoder and the stage's decoder): a few large
    # element-wise ops instead of a few per leaf (the step compiles much faster). Every other decoder's parameters,
    # Adam state and EMA stay the same arrays.
    active = ("encoder", f"decoder_{stage}")
    flat, unravel = {}, {}
    for name in active:
        flat[name], unravel[name] = ravel_pytree(state.params[name])

    def loss(flat_params):
        return loss_fn(config, {n: unravel[n](v) for n, v in flat_params.items()}, batch, k_loss, stage)

    value, grads = jax.value_and_grad(loss)(flat)
    params, ema, opt_state = dict(state.params), dict(state.ema_params), dict(state.opt_state)
    # optax mixes Python floats with int32 counts (strict promotion rejects that); the results are float32.
    with jax.numpy_dtype_promotion("standard"):
        lr = _train.lr_schedule(config)(state.step)
        tx = _stage_tx(config, lr)
        clip_state, _, scale_state = tx.init({})
        groups = {name: state.opt_state[name] for name in active}
        updates, (_, groups, _) = tx.update(grads, (clip_state, groups, scale_state), flat)
        new_flat = optax.apply_updates(flat, updates)
    for name in active:
        count = optax.tree_utils.tree_get(state.opt_state[name], "count")  # this group's updates so far
        d = _train.ema_decay_at(config.ema_decay, config.ema_warmup, count)
        e = ravel_pytree(state.ema_params[name])[0]
        params[name], ema[name] = unravel[name](new_flat[name]), unravel[name](d * e + (1.0 - d) * new_flat[name])
        opt_state[name] = groups[name]
    new = _train.TrainState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
    return new, {"loss": value, "grad_norm": optax.tree.norm(grads), "lr": lr, "stage": jnp.int32(stage)}


def train_step(
    config: StageTrainConfig,
    state: _train.TrainState,
    data: jax.Array,
    key: jax.Array,
    stage: int | jax.Array | None = None,
) -> tuple[_train.TrainState, dict]:
    """One optimiser step of one stage on a batch drawn from `data` [N, H, W, C] (pure; one compiled program per
    config and stage).

    The step's randomness (stage, batch indices, times, noise) comes from `fold_in(key, state.step)`. `stage`
    None draws the stage from `config.probs` (`_draw_stages`: a host round trip; `train` draws a whole run's stages
    at once); an int (or a concrete int array) trains that stage. Only the encoder and the step's decoder change:
    every other decoder's parameters, Adam state (moments and count) and EMA stay bit-identical. The learning
    rate follows the global step. Returns the new state and {"loss", "grad_norm", "lr", "stage"}.
    """
    if stage is None:
        stage = _draw_stages(config, key, jnp.reshape(state.step, (1,)))[0]
    if isinstance(stage, (jax.Array, np.ndarray, np.integer)) and jnp.issubdtype(jnp.result_type(stage), jnp.integer):
        try:
            stage = int(stage)
        except (jax.errors.ConcretizationTypeError, TypeError):
            raise ValueError(f"stage must be a concrete int (the step is compiled per stage), got {stage!r}") from None
    return _train_step(config, state, data, key, count("stage", stage, 0, maximum=config.net.num_stages - 1))


def train(
    config: StageTrainConfig,
    data,
    *,
    state: _train.TrainState | None = None,
    progress: bool = True,
    log_every: int = 50,
    out_dir=None,
    stop_at: int | None = None,
    log_file=None,
    saving: _train.Saving | None = None,
) -> tuple[_train.TrainState, list[dict]]:
    """Train to `config.steps` from `state` (default: `init_state(config)`); returns the final state and a log, one
    row {"step", "loss", "loss_per_stage", "steps_per_stage", "images_per_s"} per `log_every` steps (means over
    the window). `stop_at` stops after that step, as if interrupted there (the learning rate still follows
    `config.steps`): continuing from the returned state gives the uninterrupted run, bit for bit. With `out_dir`,
    the EMA parameters are saved there at the end (`save_checkpoint`). The loop is `omsjax.train.run`: `log_file`
    (an open text file) gets the rows as JSON lines, and `saving` (a `train.Saving`) saves the state."""
    if not isinstance(config, StageTrainConfig):
        raise ValueError(f"config must be a StageTrainConfig, got {type(config).__name__}")
    count("log_every", log_every)
    end = config.steps if stop_at is None else min(count("stop_at (or None)", stop_at, 0), config.steps)
    data = np.asarray(data, np.float32)
    if data.ndim != 4 or tuple(data.shape[1:]) != config.image_shape or data.shape[0] < 1:
        raise ValueError(f"data must have shape [N, *image_shape] = [N, {config.image_shape}], got {data.shape}")

    state = init_state(config) if state is None else state
    data_dev = jnp.asarray(data)
    key = seed_keys(config)[1]
    start = int(state.step)
    drawn = np.asarray(_draw_stages(config, key, jnp.arange(start, max(end, start), dtype=jnp.int32)))

    def step_fn(state, step):
        return _train_step(config, state, data_dev, key, int(drawn[step - 1 - start]))

    def summarize(step, window):
        losses, stage_ids = (
            np.asarray(v) for v in zip(*jax.device_get([(m["loss"], m["stage"]) for m in window]), strict=True)
        )
        per = [losses[stage_ids == k] for k in range(config.net.num_stages)]
        return {
            "step": step,
            "loss": float(losses.mean()),
            "loss_per_stage": [float(v.mean()) if v.size else None for v in per],
            "steps_per_stage": [int(v.size) for v in per],
        }

    state, log = _train.run(
        step_fn,
        state,
        end=end,
        config=config,
        log_every=log_every,
        summarize=summarize,
        log_file=log_file,
        saving=saving,
        progress=progress,
        desc="train stages",
    )
    if out_dir is not None:
        save_checkpoint(out_dir, config, state.ema_params)
    return state, log


def run_training(
    config: StageTrainConfig, data, out_dir, *, resume: bool = False, progress: bool = True, labels=None
) -> _train.TrainState:
    """A resumable multi-stage training run in the folder `out_dir` (what `omsjax train` does with a multi-stage
    config): OUT/config.json, OUT/params (`save_checkpoint` of the EMA parameters, rewritten at every checkpoint),
    OUT/state (the full `TrainState`) every `config.checkpoint_every` steps and at the end, OUT/log.jsonl.

    An existing OUT/state needs `resume=True`, which continues that run after checking that its config matches
    (`steps` and `checkpoint_every` may differ). `labels` are not used (the network is unconditional); the
    argument makes the call `train.run_training`'s."""
    out = Path(out_dir)
    state_dir, log_path, meta_path = out / "state", out / "log.jsonl", out / "config.json"
    if state_dir.exists() and not resume:
        raise ValueError(f"{state_dir} exists: pass --resume to continue that run, or choose another --out")
    state = None
    if resume and state_dir.exists():
        if meta_path.exists():
            old = files.read_json(meta_path, "the run's config")
            old = old.get("config", {}) if isinstance(old, dict) else {}
            _train.check_resume(out, old, config.to_dict(), ignore=("steps", "checkpoint_every"), what="--resume")
        state = restore_state(state_dir, config)
    out.mkdir(parents=True, exist_ok=True)
    _train.reset_log(log_path, 0 if state is None else int(state.step))

    def save(step, state):
        save_state(state_dir, state)
        save_checkpoint(out, config, state.ema_params)

    saving = _train.Saving(save, config.checkpoint_every, log_rows=True)
    state, _ = train(config, data, state=state, progress=progress, log_file=log_path, saving=saving)
    return state


def save_state(path, state: _train.TrainState) -> Path:
    """Save the full training state (step, parameters, EMA, every group's Adam state) to the directory `path`
    (orbax, replaced if it exists), to continue later with `restore_state` and `train(..., state=...)`."""
    path = Path(path)
    _train.save_params(path, state)
    return path


def restore_state(path, config: StageTrainConfig) -> _train.TrainState:
    """The `TrainState` of `config` saved by `save_state`, bit-exact."""
    if not isinstance(config, StageTrainConfig):
        raise ValueError(f"config must be a StageTrainConfig, got {type(config).__name__}")
    return _train.load_params(path, jax.eval_shape(functools.partial(init_state, config)))
