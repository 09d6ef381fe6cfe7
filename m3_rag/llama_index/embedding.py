"""``M3Embedding``: BGE-M3 dense vectors as a LlamaIndex ``BaseEmbedding``."""

from __future__ import annotations

import asyncio
from typing import Any, List, Mapping

from llama_index.core.base.embeddings.base import DEFAULT_EMBED_BATCH_SIZE, BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.callbacks import CallbackManager

from ..encoder import M3Encoder
from ._loading import LazyEncoder, ModelRef, model_name
from ._shared import shared_for

__all__ = ["M3Embedding"]


class M3Embedding(BaseEmbedding):
    """Dense BGE-M3 embeddings for LlamaIndex (``Settings.embed_model`` or ``embed_model=``).

    Queries are encoded with the query settings of :meth:`M3Encoder.encode_queries` (512 tokens), texts with
    :meth:`M3Encoder.encode_documents`. Only the dense head runs, unless an ``M3VectorStore`` over the same
    ``M3Encoder`` exists: then the texts' other heads that store holds are computed in the same forward pass
    and left for its ``add`` (so ``VectorStoreIndex(nodes, ...)`` runs the backbone once per node).

    Args:
        model: a Hugging Face hub id (``"BAAI/bge-m3"``), a local checkpoint folder, or an ``M3Encoder``
            (shared as is, e.g. with ``M3VectorStore``). A hub id or path is loaded on first use.
        embed_batch_size: texts per call to the encoder; LlamaIndex hands ``_get_text_embeddings`` one
            batch of this size, which is encoded in one ``encode_documents`` call.
        encoder_kwargs: passed to ``M3Encoder.from_pretrained`` (``device``, ``fp16``, ...) when ``model``
            is a hub id or a path.

    Example:
        >>> from llama_index.core import Settings                                   # doctest: +SKIP
        >>> Settings.embed_model = M3Embedding(model="BAAI/bge-m3")                  # doctest: +SKIP
    """

    _lazy: LazyEncoder = PrivateAttr()

    def __init__(
        self,
        model: ModelRef = "BAAI/bge-m3",
        *,
        embed_batch_size: int = DEFAULT_EMBED_BATCH_SIZE,
        encoder_kwargs: Mapping[str, Any] | None = None,
        callback_manager: CallbackManager | None = None,
        **kwargs: Any,
    ) -> None:
        lazy = LazyEncoder(model, encoder_kwargs, owner="M3Embedding")
        super().__init__(
            model_name=model_name(model),
            embed_batch_size=embed_batch_size,
            callback_manager=callback_manager,
            **kwargs,
        )
        self._lazy = lazy

    @classmethod
    def class_name(cls) -> str:
        return "M3Embedding"

    @property
    def encoder(self) -> M3Encoder:
        """The encoder (loaded on first access)."""
        return self._lazy.get()

    # ------------------------------------------------------------------ sync
    def _get_query_embedding(self, query: str) -> List[float]:
        out = self.encoder.encode_queries([query], dense=True, sparse=False, colbert=False)
        return out.dense[0].tolist()  # type: ignore[index]

    def _get_text_embedding(self, text: str) -> List[float]:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: List[str]) -> List[List[float]]:
        if not texts:
            return []
        encoder = self.encoder
        shared = shared_for(encoder)
        extra = [m for m in shared.node_heads() if m != "dense" and m in encoder.available_modes]
        out = encoder.encode_documents(
            list(texts),
            dense=True,
            sparse="sparse" in extra,
            colbert="colbert" in extra,
            batch_size=self.embed_batch_size,
            show_progress=False,
        )
        if extra:
            # an M3VectorStore over this encoder will add these texts next: leave it every head it holds
            shared.put_documents(list(texts), out, ("dense", *extra))
        return out.dense.tolist()  # type: ignore[union-attr]

    # ------------------------------------------------------------------ async: run in a worker thread
    async def _aget_query_embedding(self, query: str) -> List[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> List[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: List[str]) -> List[List[float]]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
