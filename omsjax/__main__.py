"""`python -m omsjax`: the command line."""

import sys

from omsjax.cli import console

sys.exit(console())
