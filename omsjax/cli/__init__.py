"""The `omsjax` command (`omsjax --help`; the `omsjax` script and `python -m omsjax` run `console`, which runs `main`).

One module per command group, each with its `add_<command>` parser function(s) and `cmd_<command>` handler(s):
`solvers` (gmm, compare), `zoo_cmds` (evaluate, sample, zoo), `train_cmd` (train), `stages_cmds` (stages cluster,
stages config), `search_cmd` (search), `steps_cmd` (optimize-steps); `common` holds what several share, `entry` the
top-level parser and `main`. The names below are re-exported so that every `omsjax.cli.<name>` of the former
single module keeps working.
"""

# ruff: noqa: F401 (re-exports)

from __future__ import annotations

from omsjax.cli.common import SOLVERS, _load_zoo, _solver_schedule
from omsjax.cli.entry import build_parser, console, main
from omsjax.cli.search_cmd import cmd_search
from omsjax.cli.solvers import HEUN, _default_gmm, cmd_compare, cmd_gmm
from omsjax.cli.stages_cmds import cmd_stages_cluster, cmd_stages_config
from omsjax.cli.steps_cmd import cmd_optimize_steps
from omsjax.cli.train_cmd import _PRECONDS, _is_multistage, _train_stages, cmd_train, train_config
from omsjax.cli.zoo_cmds import (
    _add_schedule_args,
    _schedule_from_args,
    _trajectory_error,
    _zoo_samples,
    cmd_evaluate,
    cmd_sample,
    cmd_zoo,
)

__all__ = ["main"]

# `omsjax train` on a multi-stage config saves the full training state every this many steps. Defined here, and
# read from here by `train_cmd._train_stages` at call time, so that patching `omsjax.cli.STAGES_CHECKPOINT_EVERY`
# takes effect.
STAGES_CHECKPOINT_EVERY = 1000
