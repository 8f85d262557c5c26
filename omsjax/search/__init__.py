"""Schedule search: genomes (`encoding`), true evaluation (`evaluate`), the ranking predictor (`predictor`), the
genetic search (`ga`), the S3 multi-stage loop (`loop`), and all of it in one call for any models and metric
(`find_schedule`, in `find`)."""

from omsjax.search import encoding
from omsjax.search.encoding import Genome
from omsjax.search.find import FindOptions, FindResult, find_schedule
from omsjax.search.space import SearchSpace

__all__ = ["FindOptions", "FindResult", "Genome", "SearchSpace", "encoding", "find_schedule"]
