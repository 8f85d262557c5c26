import sys

from omsjax.cli import main

sys.exit(main())
