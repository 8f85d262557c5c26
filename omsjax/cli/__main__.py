"""`python -m omsjax.cli`: the `omsjax` command, as `python omsjax/cli.py` ran it before the package."""

import sys

from omsjax.cli.entry import console

sys.exit(console())
