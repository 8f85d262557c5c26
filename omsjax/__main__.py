"""`python -m omsjax`: the command line."""

import sys

from omsjax.cli import main

sys.exit(main())
