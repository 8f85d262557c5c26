"""Multi-stage diffusion (Zhang et al., CVPR 2024): timestep clustering and multi-decoder U-Nets.

- `clustering`: the optimal denoiser's similarity of noise levels, `boundaries` (the paper's threshold rule),
  `partition` (contiguous partition by dynamic programming), `uniform_boundaries`, `clustering_report`, `stage_of`.
- `config`: `MultiStageConfig` (the network) and `StageTrainConfig` (its training run).
- `network`: the shared encoder and per-stage decoders, `apply_fn` / `stage_apply_fn`, `init_params`,
  `active_params`, `forward_flops`, `to_model`.
- `training`: the per-stage loss and step (only the step's decoder moves), `train` on `omsjax.train.run`,
  `save_state` / `restore_state`.
- `checkpoints`: `save_checkpoint` / `load_checkpoint`.
"""

from omsjax.config import is_int as _is_int
from omsjax.config import is_real as _is_real
from omsjax.stages.checkpoints import _CHECKPOINT_VERSION, load_checkpoint, save_checkpoint
from omsjax.stages.clustering import (
    DEFAULT_ETA,
    PREDICTIONS,
    Partition,
    _agreement_counts,
    _check_sim,
    _check_times,
    _deviations,
    _draw,
    _levels,
    boundaries,
    clustering_report,
    partition,
    partition_score,
    similarity,
    similarity_matrix,
    stage_of,
    uniform_boundaries,
)
from omsjax.stages.config import MultiStageConfig, StageTrainConfig, _positive_ints
from omsjax.stages.network import (
    _DTYPE,
    _TRUNCATED_NORMAL_STD,
    _branches,
    _cast,
    _check_input,
    _Decoder,
    _decoder_names,
    _Encoder,
    _init_params,
    _param_shapes,
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
    _draw_stages,
    _group_tx,
    _keys,
    _stage_forward,
    _stage_key,
    _train_step,
    init_state,
    loss_fn,
    mean_active_params,
    restore_state,
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
    "to_model",
    "save_checkpoint",
    "load_checkpoint",
    "save_state",
    "restore_state",
    "clustering_report",
    "DEFAULT_ETA",
]

# Private names of the former single module, kept importable for old callers (tests use `_draw`, `_train_step`).
_PRIVATE = (
    _is_int, _is_real, _DTYPE,
    _CHECKPOINT_VERSION, _agreement_counts, _check_sim, _check_times, _deviations, _draw, _levels, _positive_ints,
    _TRUNCATED_NORMAL_STD, _branches, _cast, _check_input, _decoder_names, _Decoder, _Encoder, _init_params,
    _param_shapes, _draw_stages, _group_tx, _keys, _stage_forward, _stage_key, _train_step,
)  # fmt: skip
