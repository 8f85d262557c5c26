"""Deprecated: `omsjax.config` is `omsjax.fields` (re-exported by the one validation package, `omsjax.checks`);
this path forwards there for one release with a DeprecationWarning (CHANGELOG 0.2.0)."""

import warnings

warnings.warn("omsjax.config is deprecated: use omsjax.fields", DeprecationWarning, stacklevel=2)

from omsjax.fields import *  # noqa: E402, F403
