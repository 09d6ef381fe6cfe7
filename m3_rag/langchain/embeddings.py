"""``M3Embeddings``: BGE-M3 dense vectors behind LangChain's ``Embeddings`` interface."""

from __future__ import annotations

import os
from typing import Any, Mapping

from langchain_core.embeddings import Embeddings
from langchain_core.runnables.config import run_in_executor

from ..encoder import M3Encoder
from ._model import EncoderComponent, check_text, check_texts

__all__ = ["M3Embeddings"]

DEFAULT_MODEL = "BAAI/bge-m3"


class M3Embeddings(EncoderComponent, Embeddings):
    """Dense BGE-M3 embeddings for LangChain.

    Vectors are L2-normalised ``list[float]`` of Python floats. Only the dense head runs.

    Construction is cheap: the model loads on the first ``embed_*`` call (or on ``.encoder``).
    Share one model between components by passing the same object::

        emb = M3Embeddings(model="BAAI/bge-m3")        # nothing loaded yet
        sparse = M3SparseEmbeddings(model=emb)          # shares emb's (future) encoder
        store = HybridStore(encoder=emb.encoder)        # loads it once, for all three

    Args:
        model: a hub id (``"BAAI/bge-m3"``) or local checkpoint folder, loaded lazily with
            :meth:`m3_rag.M3Encoder.from_pretrained`; a ready :class:`~m3_rag.M3Encoder`; or another
            m3_rag LangChain component whose encoder is shared.
        device: device for loading (``"cpu"``, ``"cuda"``...); only with a hub id / folder.
        model_kwargs: more ``M3Encoder.from_pretrained`` arguments (``fp16``, ``revision``,
            ``local_files_only``...); only with a hub id / folder.
        batch_size: texts per forward pass in :meth:`embed_documents`.
        query_max_length: token limit for queries (default: the encoder's, 512).
        document_max_length: token limit for documents (default: the encoder's, 8192).
        show_progress_bar: ``None`` shows a bar for large inputs only.
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
        self._setup(
            model,
            device=device,
            model_kwargs=model_kwargs,
            batch_size=batch_size,
            query_max_length=query_max_length,
            document_max_length=document_max_length,
            show_progress_bar=show_progress_bar,
        )

    @property
    def dimension(self) -> int:
        """Length of the vectors (loads the model)."""
        return self.encoder.dense_dim

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Dense vectors of documents (document token limit), one list of floats per text."""
        items = check_texts(texts, "M3Embeddings.embed_documents")
        if not items:
            return []
        return self._encode_documents(items, dense=True, sparse=False).dense.tolist()

    def embed_query(self, text: str) -> list[float]:
        """Dense vector of one query (query token limit)."""
        query = check_text(text, "M3Embeddings.embed_query: text")
        return self._encode_query(query, dense=True, sparse=False).dense[0].tolist()

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """:meth:`embed_documents` in a worker thread, so the event loop keeps running."""
        return await run_in_executor(None, self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """:meth:`embed_query` in a worker thread, so the event loop keeps running."""
        return await run_in_executor(None, self.embed_query, text)
