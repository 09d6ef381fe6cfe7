"""LlamaIndex integration: BGE-M3 dense embeddings, a hybrid vector store, a retriever and a ColBERT reranker.

Needs the optional extra ``pip install "m3-rag[llama-index]"`` (``llama-index-core``).
Importing this package only checks that llama-index-core is installed; each class (and LlamaIndex
itself) is imported on first use:

- :class:`M3Embedding` (``embedding.py``): a dense ``BaseEmbedding``.
- :class:`M3VectorStore` (``vector_store.py``): a ``BasePydanticVectorStore`` over a ``HybridStore``
  with the DEFAULT (dense), SPARSE, HYBRID and MMR query modes.
- :class:`M3Retriever` (``retriever.py``): a ``BaseRetriever`` straight over a ``HybridStore``.
- :class:`M3ColbertRerank` (``postprocessor.py``): ColBERT MaxSim reranking after any retriever.
- :func:`to_metadata_predicate` (``filters.py``): ``MetadataFilters`` as a ``metadata -> bool`` callable.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

INSTALL_HINT = 'pip install "m3-rag[llama-index]"'


def _require_llama_index_core() -> None:
    try:
        spec = importlib.util.find_spec("llama_index.core")
    except (ImportError, ValueError):  # the parent namespace package is missing or blocked
        spec = None
    if spec is None:
        raise ImportError(
            f"m3_rag.llama_index needs llama-index-core, which is not installed. Install it with: {INSTALL_HINT}"
        )


_require_llama_index_core()

#: public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "M3Embedding": "embedding",
    "M3VectorStore": "vector_store",
    "M3Retriever": "retriever",
    "M3ColbertRerank": "postprocessor",
    "to_metadata_predicate": "filters",
    "SCORES_KEY": "nodes",
    "EXPLAIN_KEY": "nodes",
}

__all__ = list(_EXPORTS)

if TYPE_CHECKING:
    from .embedding import M3Embedding
    from .filters import to_metadata_predicate
    from .nodes import EXPLAIN_KEY, SCORES_KEY
    from .postprocessor import M3ColbertRerank
    from .retriever import M3Retriever
    from .vector_store import M3VectorStore


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
