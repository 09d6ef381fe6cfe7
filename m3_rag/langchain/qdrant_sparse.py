"""``M3QdrantSparseEmbeddings``: BGE-M3 lexical weights as ``langchain_qdrant.SparseEmbeddings``."""

from __future__ import annotations

import os
from typing import Any, Mapping

try:
    from langchain_qdrant import SparseEmbeddings, SparseVector
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "M3QdrantSparseEmbeddings plugs into langchain_qdrant.QdrantVectorStore and needs langchain-qdrant, "
        "which is not installed. Install it with: pip install langchain-qdrant"
    ) from exc

from langchain_core.runnables.config import run_in_executor

from ..encoder import M3Encoder
from .sparse import DEFAULT_MODEL, M3SparseEmbeddings

__all__ = ["M3QdrantSparseEmbeddings"]


class M3QdrantSparseEmbeddings(SparseEmbeddings):
    """BGE-M3 sparse weights as ``SparseVector(indices=token ids, values=weights)``.

    Use it as the ``sparse_embedding`` of ``langchain_qdrant.QdrantVectorStore`` with
    ``RetrievalMode.SPARSE`` or ``RetrievalMode.HYBRID`` (dense side: ``M3Embeddings``)::

        emb = M3Embeddings(model="BAAI/bge-m3")
        qdrant = QdrantVectorStore.from_texts(texts, embedding=emb,
                                              sparse_embedding=M3QdrantSparseEmbeddings(model=emb),
                                              retrieval_mode=RetrievalMode.HYBRID, location=":memory:")

    Constructor arguments are those of :class:`~m3_rag.langchain.M3SparseEmbeddings`.
    Qdrant scores sparse vectors by dot product, which is exactly BGE-M3's lexical score.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | M3Encoder | Any = DEFAULT_MODEL,
        *,
        device: str | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        batch_size: int = 32,
        query_max_length: int | None = None,
        document_max_length: int | None = None,
        show_progress_bar: bool | None = None,
    ) -> None:
        self._sparse = M3SparseEmbeddings(
            model,
            device=device,
            model_kwargs=model_kwargs,
            batch_size=batch_size,
            query_max_length=query_max_length,
            document_max_length=document_max_length,
            show_progress_bar=show_progress_bar,
        )
        self._encoder_ref = self._sparse._encoder_ref  # lets other components share this encoder

    @property
    def encoder(self) -> M3Encoder:
        """The :class:`~m3_rag.M3Encoder` (loaded on first access)."""
        return self._sparse.encoder

    @property
    def is_loaded(self) -> bool:
        """Whether the model is loaded yet."""
        return self._sparse.is_loaded

    def embed_documents(self, texts: list[str]) -> list[SparseVector]:
        """One ``SparseVector`` per document."""
        return [_to_vector(row) for row in self._sparse.embed_documents(texts)]

    def embed_query(self, text: str) -> SparseVector:
        """The ``SparseVector`` of one query."""
        return _to_vector(self._sparse.embed_query(text))

    async def aembed_documents(self, texts: list[str]) -> list[SparseVector]:
        """:meth:`embed_documents` in a worker thread."""
        return await run_in_executor(None, self.embed_documents, texts)

    async def aembed_query(self, text: str) -> SparseVector:
        """:meth:`embed_query` in a worker thread."""
        return await run_in_executor(None, self.embed_query, text)

    def __repr__(self) -> str:
        return repr(self._sparse).replace("M3SparseEmbeddings", type(self).__name__, 1)


def _to_vector(row: dict[int, float]) -> SparseVector:
    return SparseVector(indices=list(row.keys()), values=list(row.values()))
