"""Where the shipped checkpoints live.

`checkpoints/` sits at the top of the repository. It is found, in order, at `$OMSJAX_CHECKPOINTS`, next to the
package (a source or editable install), or in the current directory (a regular install run from the repository).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["checkpoints_dir"]


def checkpoints_dir() -> Path:
    env = os.environ.get("OMSJAX_CHECKPOINTS")
    if env:
        return Path(env)
    for cand in (Path(__file__).resolve().parent.parent / "checkpoints", Path.cwd() / "checkpoints"):
        if (cand / "digits").is_dir():
            return cand
    return Path(__file__).resolve().parent.parent / "checkpoints"
