"""``M3Retriever``: a LlamaIndex retriever straight over a ``HybridStore``, with every mode and fusion method."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, List, Mapping, Sequence

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.core.vector_stores.types import MetadataFilters

from ._store_args import check_modes, check_top_k, store_filter
from ._shared import search_with_query_handover
from .nodes import hit_to_node

__all__ = ["M3Retriever"]


class M3Retriever(BaseRetriever):
    """Retrieve from a ``HybridStore`` with any combination of dense, sparse and ColBERT, fused as you choose.

    Each query is one ``HybridStore.search`` call: the query is encoded once, computing only the heads the
    modes need, and the result (ids, order, scores) is exactly what ``HybridStore.search`` returns with the
    same settings.

    Args:
        store: the ``HybridStore`` (or a store with its API, e.g. ``QdrantHybridStore``).
        similarity_top_k: how many nodes to return (``k``).
        modes: a mode name or a sequence of them; default: every mode the store holds.
        weights: per-mode weights (sequence aligned with ``modes`` or ``{mode: weight}``); default: the
            ``None``, passed on as is: the store decides (its default weights for the fusion).
        fusion: ``"weighted"``, ``"rrf"`` or ``"dbsf"``.
        candidates: first-stage pool size per mode (default: the store's, ``max(100, k)``).
        filters: LlamaIndex ``MetadataFilters`` (every operator, nested), a HybridStore filter dict
            (``{"year": {"$gte": 2020}}``) or a callable ``metadata -> bool``; applied before top-k.
        node_ids: restrict the search to these ids (``None`` or empty: no restriction).
        explain: add the matched sparse tokens to ``node.metadata["m3_explain"]``.

    Returns nodes as ``NodeWithScore``: ``score`` is the fused score and ``node.metadata["m3_scores"]``
    holds the exact score of every searched mode (excluded from the LLM and embedding views). Nodes stored
    through ``M3VectorStore`` are rebuilt as they were inserted; plain records become ``TextNode``.
    """

    def __init__(
        self,
        store: Any,
        similarity_top_k: int = 10,
        *,
        modes: str | Sequence[str] | None = None,
        weights: Sequence[float] | Mapping[str, float] | None = None,
        fusion: str = "weighted",
        candidates: int | None = None,
        filters: MetadataFilters | Mapping[str, Any] | Callable[[Mapping[str, Any]], bool] | None = None,
        node_ids: Sequence[str] | None = None,
        explain: bool = False,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        if not callable(getattr(store, "search", None)):
            raise TypeError(f"store must be an m3_rag HybridStore (or have its search API); got {type(store).__name__}")
        from ..fusion import FUSIONS

        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose from {FUSIONS}")
        self._store = store
        self._top_k = check_top_k(similarity_top_k, "similarity_top_k")
        self._modes = None if modes is None else check_modes(modes)
        self._weights = weights
        self._fusion = fusion
        self._candidates = None if candidates is None else check_top_k(candidates, "candidates")
        self._filter = store_filter(filters)
        self._ids = set(node_ids) if node_ids else None
        self._explain = bool(explain)
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @property
    def store(self) -> Any:
        """The underlying ``HybridStore``."""
        return self._store

    @property
    def similarity_top_k(self) -> int:
        """How many nodes a query returns."""
        return self._top_k

    @similarity_top_k.setter
    def similarity_top_k(self, value: int) -> None:
        self._top_k = check_top_k(value, "similarity_top_k")

    def search_settings(self) -> dict[str, Any]:
        """The keyword arguments each query passes to ``HybridStore.search``."""
        modes = self._modes if self._modes is not None else (tuple(self._store.modes) or None)
        settings: dict[str, Any] = {
            "k": self._top_k,
            "modes": modes,
            "weights": self._weights,
            "fusion": self._fusion,
            "candidates": self._candidates,
            "filter": self._filter,
            "ids": self._ids,
            "explain": self._explain,
        }
        return {k: v for k, v in settings.items() if v is not None}

    def _retrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        hits = search_with_query_handover(self._store, query_bundle.query_str, self.search_settings())
        return [NodeWithScore(node=hit_to_node(h), score=float(h.score)) for h in hits]

    async def _aretrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)
