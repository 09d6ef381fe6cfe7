"""LangChain adapters for m3_rag: embeddings, sparse embeddings, a hybrid retriever and a vector store.

Needs ``langchain-core`` (``pip install "m3-rag[langchain]"``). The classes are re-exported lazily,
so ``import m3_rag.langchain`` stays cheap and ``M3QdrantSparseEmbeddings`` imports
``langchain-qdrant`` only when it is used.

================================  ==============================================================
``M3Embeddings``                  dense vectors (``langchain_core.embeddings.Embeddings``)
``M3SparseEmbeddings``            sparse ``{token_id: weight}`` dicts (the langchain-milvus shape)
``M3QdrantSparseEmbeddings``      ``langchain_qdrant.SparseEmbeddings`` returning ``SparseVector``
``M3Retriever``                   hybrid ``BaseRetriever`` over a :class:`m3_rag.HybridStore`
``M3VectorStore``                 ``VectorStore`` over a :class:`m3_rag.HybridStore`
================================  ==============================================================
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

try:
    import langchain_core  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        'm3_rag.langchain needs langchain-core, which is not installed. Install it with: pip install "m3-rag[langchain]"'
    ) from exc

if TYPE_CHECKING:
    from .embeddings import M3Embeddings
    from .qdrant_sparse import M3QdrantSparseEmbeddings
    from .retriever import M3Retriever
    from .sparse import M3SparseEmbeddings
    from .vectorstore import M3VectorStore

#: public name -> submodule defining it
_EXPORTS: dict[str, str] = {
    "M3Embeddings": "embeddings",
    "M3SparseEmbeddings": "sparse",
    "M3QdrantSparseEmbeddings": "qdrant_sparse",
    "M3Retriever": "retriever",
    "M3VectorStore": "vectorstore",
}

__all__ = ["M3Embeddings", "M3SparseEmbeddings", "M3QdrantSparseEmbeddings", "M3Retriever", "M3VectorStore"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'm3_rag.langchain' has no attribute {name!r}; it exports {', '.join(__all__)}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
