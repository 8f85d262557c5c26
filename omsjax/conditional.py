"""Deprecated: `omsjax.conditional` is `omsjax.metrics.conditional` (the conditional digits metric); this path
forwards there for one release with a DeprecationWarning (CHANGELOG 0.2.0)."""

import warnings

warnings.warn("omsjax.conditional is deprecated: use omsjax.metrics.conditional", DeprecationWarning, stacklevel=2)

from omsjax.metrics.conditional import *  # noqa: E402, F403
