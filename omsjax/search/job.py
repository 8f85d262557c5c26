"""Deprecated (CHANGELOG 0.2.0): the search job is a workflow, `omsjax.workflows.search_job`. Importing this module
warns and forwards its public names there for one release; it holds nothing else."""

import warnings

from omsjax.workflows.search_job import (  # noqa: F401
    BASELINES,
    MODEL_MODE_BASELINES,
    MODEL_MODE_SPACINGS,
    baselines,
    run,
)

warnings.warn("omsjax.search.job is deprecated: use omsjax.workflows.search_job", DeprecationWarning, stacklevel=2)
