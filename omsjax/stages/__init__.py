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

# Each module's public names, re-exported: listed once, in its own __all__.
from omsjax.stages import checkpoints, clustering, config, network, training
from omsjax.stages.checkpoints import *  # noqa: F403
from omsjax.stages.clustering import *  # noqa: F403
from omsjax.stages.config import *  # noqa: F403
from omsjax.stages.network import *  # noqa: F403
from omsjax.stages.training import *  # noqa: F403

__all__ = [*checkpoints.__all__, *clustering.__all__, *config.__all__, *network.__all__, *training.__all__]
