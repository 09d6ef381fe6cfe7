"""m3-rag: BGE-M3's dense, sparse and ColBERT retrieval as drop-in RAG parts.

This module only re-exports the public API; ``tests/test_public_api.py`` pins it.
"""

from .encoder import M3Encoder, MissingHeadError, ModelNotFoundError
from .scoring import colbert_score, colbert_scores, dense_scores, lexical_score, lexical_scores
from .types import MODES, STORE_MODES, Hit, M3Output, Record
from .fusion import DEFAULT_WEIGHTS, FUSIONS, fuse_dbsf, fuse_rrf, fuse_weighted
from .store import HybridStore

__version__ = "0.1.0"

__all__ = [
    "M3Encoder",
    "M3Output",
    "Hit",
    "Record",
    "MODES",
    "STORE_MODES",
    "MissingHeadError",
    "ModelNotFoundError",
    "lexical_score",
    "lexical_scores",
    "colbert_score",
    "colbert_scores",
    "dense_scores",
    "HybridStore",
    "FUSIONS",
    "DEFAULT_WEIGHTS",
    "fuse_weighted",
    "fuse_rrf",
    "fuse_dbsf",
]


def __getattr__(name: str):  # lazy exports: `import m3_rag` stays free of optional dependencies
    if name == "QdrantHybridStore":
        from .qdrant import QdrantHybridStore

        return QdrantHybridStore
    if name == "QdrantEdgeStore":
        from .qdrant_edge import QdrantEdgeStore

        return QdrantEdgeStore
    raise AttributeError(f"module 'm3_rag' has no attribute {name!r}")


__all__ += ["QdrantHybridStore", "QdrantEdgeStore"]
