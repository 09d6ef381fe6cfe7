"""The search pipeline shared by every backend: options, candidates, exact scores, fusion, stable top-k."""

from .options import OPTION_NAMES, SearchOptions, default_weights, parse_options
from .pipeline import Candidates, SearchBackend, exact_top, run, union

__all__ = ["SearchOptions", "parse_options", "default_weights", "OPTION_NAMES", "Candidates", "SearchBackend",
           "exact_top", "union", "run"]
