"""Compatibility alias: the search job is a workflow now, `omsjax.workflows.search_job` (above the applications).
`omsjax.search.job.run`, `.baselines` and the baseline tables keep resolving here; this module holds nothing else."""

from omsjax.workflows.search_job import (  # noqa: F401
    BASELINES,
    MODEL_MODE_BASELINES,
    MODEL_MODE_SPACINGS,
    _baseline_nfe,
    _jsonable,
    _largest_nfe,
    _pareto,
    baselines,
    run,
)
