"""Multi-stage diffusion (Zhang et al., CVPR 2024): timestep clustering and multi-decoder U-Nets.

- `clustering`: the optimal denoiser's similarity of noise levels, `boundaries` (the paper's threshold rule),
  `partition` (contiguous partition by dynamic programming), `uniform_boundaries`, `clustering_report`, `stage_of`.
- `config`: `MultiStageConfig` (the network) and `StageTrainConfig` (its training run).
- `network`: the shared encoder and per-stage decoders, `apply_fn` / `stage_apply_fn`, `init_params`,
  `active_params`, `forward_flops`, `to_model`.
- `training`: the per-stage loss and step (only the step's decoder moves), `train` on `omsjax.train.run`,
  `run_training` (a resumable run in a folder), `save_state` / `restore_state`.
- `checkpoints`: `save_checkpoint` / `load_checkpoint`.
"""

from omsjax.stages.checkpoints import load_checkpoint, save_checkpoint
from omsjax.stages.clustering import (
    DEFAULT_ETA,
    PREDICTIONS,
    Partition,
    boundaries,
    clustering_report,
    partition,
    partition_score,
    similarity,
    similarity_matrix,
    stage_of,
    uniform_boundaries,
)
from omsjax.stages.config import MultiStageConfig, StageTrainConfig
from omsjax.stages.network import (
    active_params,
    apply_fn,
    decode,
    encode,
    forward_flops,
    init_params,
    stage_apply_fn,
    to_model,
)
from omsjax.stages.training import (
    init_state,
    loss_fn,
    mean_active_params,
    restore_state,
    run_training,
    save_state,
    train,
    train_step,
)

__all__ = [
    "PREDICTIONS",
    "similarity",
    "similarity_matrix",
    "boundaries",
    "Partition",
    "partition",
    "partition_score",
    "uniform_boundaries",
    "stage_of",
    "MultiStageConfig",
    "StageTrainConfig",
    "init_params",
    "encode",
    "decode",
    "stage_apply_fn",
    "apply_fn",
    "active_params",
    "mean_active_params",
    "forward_flops",
    "init_state",
    "loss_fn",
    "train_step",
    "train",
    "run_training",
    "to_model",
    "save_checkpoint",
    "load_checkpoint",
    "save_state",
    "restore_state",
    "clustering_report",
    "DEFAULT_ETA",
]
