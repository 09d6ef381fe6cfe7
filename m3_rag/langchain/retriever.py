"""``M3Retriever``: dense + sparse + ColBERT hybrid retrieval over a :class:`~m3_rag.HybridStore` as a LangChain retriever."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, field_validator, model_validator

from ..fusion import resolve_weights
from ..types import StoreLike
from ..types import Hit
from ._convert import (
    check_candidates,
    check_filter,
    check_fusion,
    check_k,
    check_modes,
    hit_to_document,
    reject_unknown,
)
from ._model import check_text

__all__ = ["M3Retriever"]

#: Search settings that are fields of the retriever and can be overridden per call.
SEARCH_FIELDS = ("k", "modes", "weights", "fusion", "candidates", "filter")
_CALL_FIELDS = SEARCH_FIELDS + ("include_scores",)
#: Keyword arguments LangChain's ``invoke`` itself passes along; not search settings.
_LANGCHAIN_KWARGS = ("verbose",)


class M3Retriever(BaseRetriever):
    """Hybrid BGE-M3 retriever: one query encoding, dense/sparse/ColBERT search and fusion in the store.

    Every result is exactly ``HybridStore.search(query, k=..., modes=..., weights=..., fusion=...,
    candidates=..., filter=...)`` converted to ``Document(id=hit.id, page_content=hit.text,
    metadata=hit.metadata)``; the query is encoded once, running only the heads the modes need.

    Scores: ``Document.metadata`` is the stored metadata, unchanged (a copy). Get scores with
    :meth:`with_scores` (``(Document, fused score)`` pairs, like ``similarity_search_with_score``) or
    :meth:`hits` (the store's :class:`~m3_rag.Hit` with per-mode scores). With ``include_scores=True``
    the metadata copy additionally holds ``"m3_score"`` (fused) and ``"m3_scores"`` (``{mode: score}``).

    Every field except ``store`` can be overridden per call::

        retriever = M3Retriever(store=store, k=4)                       # all modes, weighted fusion
        retriever.invoke("query", k=3, modes=["sparse"])                 # sparse only, top 3
        await retriever.ainvoke("query", fusion="rrf", filter={"lang": "en"})

    Fields:
        store: the :class:`~m3_rag.HybridStore` to search (it must have an encoder).
        k: number of documents to return.
        modes: modes to search (``"dense"``, ``"sparse"``, ``"colbert"``, ``"bm25"`` when the store holds it);
            ``None`` = every mode the store holds.
        weights: per-mode weights, a list aligned with ``modes`` or a ``{mode: weight}`` dict;
            ``None`` (default) = passed on as ``None``: the store decides (its default weights for the fusion).
        fusion: ``"weighted"``, ``"rrf"`` or ``"dbsf"``.
        candidates: first-stage candidates per mode (``None`` = ``max(100, k)``).
        filter: a metadata filter dict (``{"year": {"$gte": 2020}}``) or a callable ``metadata -> bool``.
        include_scores: also put ``m3_score`` / ``m3_scores`` into each returned metadata copy.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: Any  # a HybridStore, a QdrantHybridStore, or anything implementing m3_rag.types.StoreLike
    k: int = 4
    modes: tuple[str, ...] | None = None
    weights: Sequence[float] | Mapping[str, float] | None = None
    fusion: str = "weighted"
    candidates: int | None = None
    filter: Mapping[str, Any] | Callable[[dict], bool] | None = None
    include_scores: bool = False

    @field_validator("store", mode="after")
    @classmethod
    def _store_can_encode(cls, v: Any) -> Any:
        if not isinstance(v, StoreLike):
            raise TypeError(
                f"store must be an m3_rag.HybridStore or QdrantHybridStore (the StoreLike API); got {type(v).__name__}"
            )
        if v.encoder is None and tuple(getattr(v, "modes", ()) or ()) != ("bm25",):  # bm25 alone encodes nothing
            raise ValueError(
                "M3Retriever needs a HybridStore with an encoder to encode queries; this one has none. Build it with "
                "HybridStore(encoder=...) or HybridStore.load(path, encoder=...). For a store of vectors from another "
                "LangChain Embeddings, use M3VectorStore(embedding=...).as_retriever()."
            )
        return v

    @field_validator("k", mode="before")
    @classmethod
    def _valid_k(cls, v: Any) -> int:
        return check_k(v)

    @field_validator("modes", mode="before")
    @classmethod
    def _valid_modes(cls, v: Any) -> tuple[str, ...] | None:
        return check_modes(v)

    @field_validator("fusion", mode="before")
    @classmethod
    def _valid_fusion(cls, v: Any) -> str:
        return check_fusion(v)

    @field_validator("candidates", mode="before")
    @classmethod
    def _valid_candidates(cls, v: Any) -> int | None:
        return check_candidates(v)

    @field_validator("filter", mode="before")
    @classmethod
    def _valid_filter(cls, v: Any) -> Any:
        return check_filter(v)

    @model_validator(mode="after")
    def _valid_weights(self) -> "M3Retriever":
        modes = self.modes or self.store.modes
        if self.weights is not None and modes:
            resolve_weights(modes, self.weights, self.fusion)  # raises naming the mismatch
        return self

    # ------------------------------------------------------------------ search
    def _search(self, query: str, overrides: Mapping[str, Any]) -> tuple[list[Hit], bool]:
        """Run ``store.search`` with the fields merged with per-call ``overrides``; also returns ``include_scores``."""
        check_text(query, "query")
        extra = {k: v for k, v in overrides.items() if k not in _LANGCHAIN_KWARGS}
        reject_unknown(extra, _CALL_FIELDS, f"{type(self).__name__} call")
        s = {name: extra.get(name, getattr(self, name)) for name in _CALL_FIELDS}
        include_scores = bool(s.pop("include_scores"))
        check_k(s["k"])
        s["modes"] = check_modes(s["modes"])
        check_fusion(s["fusion"])
        check_candidates(s["candidates"])
        check_filter(s["filter"])
        if len(self.store) == 0:
            return [], include_scores
        if s["modes"] is None:
            s["modes"] = tuple(self.store.modes)
        return self.store.search(query, **s), include_scores

    def hits(self, query: str, **overrides: Any) -> list[Hit]:
        """The store's :class:`~m3_rag.Hit` list (fused ``score``, per-mode ``scores``) for ``query``.

        ``overrides``: any of ``k``, ``modes``, ``weights``, ``fusion``, ``candidates``, ``filter``.
        """
        return self._search(query, overrides)[0]

    def with_scores(self, query: str, **overrides: Any) -> list[tuple[Document, float]]:
        """``(Document, fused score)`` pairs, best first; metadata unchanged. Same overrides as ``invoke``."""
        return [(hit_to_document(h), float(h.score)) for h in self.hits(query, **overrides)]

    async def awith_scores(self, query: str, **overrides: Any) -> list[tuple[Document, float]]:
        """:meth:`with_scores` in a worker thread."""
        return await run_in_executor(None, self.with_scores, query, **overrides)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        hits, include_scores = self._search(query, kwargs)
        return [hit_to_document(h, include_scores=include_scores) for h in hits]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        # BaseRetriever's default drops **kwargs; this keeps per-call overrides working in ainvoke/abatch.
        return await run_in_executor(
            None, self._get_relevant_documents, query, run_manager=run_manager.get_sync(), **kwargs
        )

