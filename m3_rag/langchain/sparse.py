"""``M3SparseEmbeddings``: BGE-M3 lexical weights as ``{token_id: weight}`` dicts (the langchain-milvus shape)."""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import TYPE_CHECKING, Any, Mapping

from langchain_core.runnables.config import run_in_executor

from ..encoder import M3Encoder
from ._model import EncoderComponent, check_text, check_texts

if TYPE_CHECKING:
    from .qdrant_sparse import M3QdrantSparseEmbeddings

__all__ = ["M3SparseEmbeddings"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "BAAI/bge-m3"


class M3SparseEmbeddings(EncoderComponent):
    """Sparse BGE-M3 embeddings: ``{token_id: weight}`` per text, only the sparse head runs.

    The methods match ``langchain_milvus.utils.sparse.BaseSparseEmbedding`` (``embed_query`` ->
    ``dict[int, float]``, ``embed_documents`` -> ``list[dict[int, float]]``, async twins). Token ids
    are the tokenizer's ids; weights are positive Python floats; tokens of weight 0 are left out.
    When langchain-milvus is installed, the class is registered as a virtual subclass of that ABC,
    so ``langchain_milvus.Milvus(embedding_function=[dense, M3SparseEmbeddings(...)])`` recognises
    it as the sparse field's embedding.

    For ``langchain_qdrant.QdrantVectorStore(sparse_embedding=...)``, whose interface returns
    ``SparseVector(indices, values)``, use :meth:`for_qdrant` (or build
    :class:`~m3_rag.langchain.M3QdrantSparseEmbeddings` directly).

    Constructor arguments are those of :class:`~m3_rag.langchain.M3Embeddings`; pass
    ``model=<an M3Embeddings>`` to share its encoder.
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
        _register_with_milvus()
        self._setup(
            model,
            device=device,
            model_kwargs=model_kwargs,
            batch_size=batch_size,
            query_max_length=query_max_length,
            document_max_length=document_max_length,
            show_progress_bar=show_progress_bar,
        )

    def embed_documents(self, texts: list[str]) -> list[dict[int, float]]:
        """Lexical weights of documents, one ``{token_id: weight}`` dict per text."""
        items = check_texts(texts, f"{type(self).__name__}.embed_documents")
        if not items:
            return []
        return [_plain(row) for row in self._encode_documents(items, dense=False, sparse=True).sparse]

    def embed_query(self, text: str) -> dict[int, float]:
        """Lexical weights of one query as ``{token_id: weight}``."""
        query = check_text(text, f"{type(self).__name__}.embed_query: text")
        return _plain(self._encode_query(query, dense=False, sparse=True).sparse[0])

    async def aembed_documents(self, texts: list[str]) -> list[dict[int, float]]:
        """:meth:`embed_documents` in a worker thread, so the event loop keeps running."""
        return await run_in_executor(None, self.embed_documents, texts)

    async def aembed_query(self, text: str) -> dict[int, float]:
        """:meth:`embed_query` in a worker thread, so the event loop keeps running."""
        return await run_in_executor(None, self.embed_query, text)

    def for_qdrant(self) -> "M3QdrantSparseEmbeddings":
        """The ``langchain_qdrant.SparseEmbeddings`` view of this model, sharing its encoder.

        Raises ImportError naming the package to install when langchain-qdrant is missing.
        """
        from .qdrant_sparse import M3QdrantSparseEmbeddings

        return M3QdrantSparseEmbeddings(
            model=self,
            batch_size=self.batch_size,
            query_max_length=self.query_max_length,
            document_max_length=self.document_max_length,
            show_progress_bar=self.show_progress_bar,
        )


_milvus_checked = False


def _register_with_milvus() -> None:
    """Register :class:`M3SparseEmbeddings` with langchain-milvus's ``BaseSparseEmbedding`` ABC, if installed.

    Milvus decides which field an embedding fills with ``isinstance(f, BaseSparseEmbedding)``.
    Checked once per process, at the first construction (importing langchain-milvus is not cheap).
    """
    global _milvus_checked
    if _milvus_checked:
        return
    _milvus_checked = True
    if importlib.util.find_spec("langchain_milvus") is None:
        return
    try:
        from langchain_milvus.utils.sparse import BaseSparseEmbedding
    except ImportError as exc:  # an installed but broken/incompatible langchain-milvus: say so, do not fail
        logger.warning("langchain-milvus is installed but its BaseSparseEmbedding could not be imported: %s", exc)
        return
    BaseSparseEmbedding.register(M3SparseEmbeddings)


def _plain(row: Mapping[int, float]) -> dict[int, float]:
    """A sparse row with Python ``int`` keys and ``float`` values (no numpy scalars)."""
    return {int(t): float(w) for t, w in row.items()}
