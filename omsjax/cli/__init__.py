"""The `omsjax` command (`omsjax --help`; the `omsjax` script and `python -m omsjax` run `console`, which runs `main`).

One module per command, named after it, each with its `add_<command>` parser function and `cmd_<command>` handler:
`gmm_cmd`, `compare_cmd`, `evaluate_sample_cmds` (evaluate and sample, which share their schedule flags),
`zoo_cmd`, `train_cmd`, `stages_cmds` (stages cluster, stages config), `search_cmd`, `optimize_steps_cmd`;
`common` holds what several share, `entry` the top-level parser and `main`.
"""

from __future__ import annotations

from omsjax.cli.entry import build_parser, console, main

__all__ = ["build_parser", "console", "main"]
