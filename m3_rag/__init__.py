"""m3-rag: BGE-M3's dense, sparse and ColBERT retrieval as drop-in RAG parts.

This module only re-exports the public API; ``tests/test_public_api.py`` pins it.
"""

from .encoder import M3Encoder, MissingHeadError, ModelNotFoundError
from .scoring import colbert_score, colbert_scores, dense_scores, lexical_score, lexical_scores
from .types import MODES, Hit, M3Output, Record

__version__ = "0.1.0"

__all__ = [
    "M3Encoder",
    "M3Output",
    "Hit",
    "Record",
    "MODES",
    "MissingHeadError",
    "ModelNotFoundError",
    "lexical_score",
    "lexical_scores",
    "colbert_score",
    "colbert_scores",
    "dense_scores",
]
