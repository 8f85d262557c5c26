"""Schedule search: genomes (`encoding`), true evaluation (`evaluate`), the ranking predictor (`predictor`), the
genetic search (`ga`) and the S3 multi-stage loop (`loop`)."""

from omsjax.search import encoding
from omsjax.search.encoding import Genome, SearchSpace

__all__ = ["Genome", "SearchSpace", "encoding"]
