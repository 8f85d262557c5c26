"""Training of the small U-Nets (`omsjax.nets`): resumable, reproducible, data parallel.

- `config`: `TrainConfig` (frozen, hashable: the static argument of the jitted `train_step`), JSON round trip.
- `losses`: `loss_fn` (noise-level sampling, the preconditioned denoiser, `loss_weight`, `clamp_cap`); the
  preconditioning formulas (`precondition`, `fdm_scale`, `loss_weight`, `noise_schedule`) are `omsjax.precond`'s.
- `step`: `TrainState` (step, params, ema_params, opt_state), `init_state`, `train_step(config, state, data, key)`
  (randomness from `fold_in(key, state.step)`), the optimiser, the EMA, data-parallel sharding.
- `loop`: `run`, THE training loop (also multi-stage training's), and `train(config, data, out_dir)` on it.
- `checkpoints`: orbax checkpoints, `restore_state`, `save_params` / `load_params`, `read_log`.
- `model`: `model_from_params` (an `omsjax.Model` for the sampler).
Training runs in float32 whatever `jax_enable_x64` says.
"""

from omsjax.precond import (
    FDM_SIGMA_RANGES,
    PRECONDS,
    SIGMA_DATA,
    T_EPS,
    VE_SIGMA_MAX,
    VE_SIGMA_MIN,
    fdm_scale,
    loss_weight,
    noise_schedule,
    precondition,
)
from omsjax.train.checkpoints import load_params, read_log, restore_state, save_params
from omsjax.train.config import OptimConfig, TrainConfig
from omsjax.train.loop import Saving, check_labels, check_resume, mean_loss, reset_log, run, run_training, train
from omsjax.train.losses import P_MEAN, P_STD, clamp_cap, loss_fn
from omsjax.train.model import model_from_params
from omsjax.train.step import (
    TrainState,
    data_sharding,
    drop_labels,
    ema_decay_at,
    init_state,
    lr_schedule,
    make_optimizer,
    replicated_sharding,
    train_step,
)

__all__ = [
    "PRECONDS",
    "FDM_SIGMA_RANGES",
    "OptimConfig",
    "TrainConfig",
    "TrainState",
    "precondition",
    "fdm_scale",
    "loss_weight",
    "clamp_cap",
    "noise_schedule",
    "lr_schedule",
    "make_optimizer",
    "init_state",
    "loss_fn",
    "train_step",
    "data_sharding",
    "replicated_sharding",
    "train",
    "run_training",
    "restore_state",
    "read_log",
    "save_params",
    "load_params",
    "model_from_params",
    "T_EPS",
    "P_MEAN",
    "P_STD",
    "SIGMA_DATA",
    "VE_SIGMA_MIN",
    "VE_SIGMA_MAX",
    "ema_decay_at",
    "run",
    "Saving",
    "mean_loss",
    "check_resume",
    "reset_log",
    "check_labels",
    "drop_labels",
]
