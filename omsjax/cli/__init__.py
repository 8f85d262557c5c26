"""The `omsjax` command (`omsjax --help`; the `omsjax` script and `python -m omsjax` run `console`, which runs `main`).

One module per command group, each with its `add_<command>` parser function(s) and `cmd_<command>` handler(s):
`solvers` (gmm, compare), `zoo_cmds` (evaluate, sample, zoo), `train_cmd` (train), `stages_cmds` (stages cluster,
stages config), `search_cmd` (search), `steps_cmd` (optimize-steps); `common` holds what several share, `entry` the
top-level parser and `main`.
"""

from __future__ import annotations

from omsjax.cli.entry import build_parser, console, main

__all__ = ["build_parser", "console", "main"]
