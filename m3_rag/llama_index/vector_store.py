"""``M3VectorStore``: a LlamaIndex vector store over a ``HybridStore``, with DEFAULT, SPARSE, HYBRID and MMR query modes.

How LlamaIndex calls map to the store:

- ``add(nodes)``: stores, for every head the store holds, the encoding of
  ``node.get_content(metadata_mode=MetadataMode.EMBED)`` by the store's own encoder. When an ``M3Embedding``
  over the same ``M3Encoder`` has just embedded these texts (``VectorStoreIndex(nodes, ...)`` does that first),
  it computed the store's heads in the same forward pass and ``add`` takes those rows from a bounded cache keyed
  by the exact text (see ``_shared.py``); only texts not found there are encoded now. Either way each text goes
  through the backbone once. The dense vector LlamaIndex put on the node (``node.embedding``) is **not**
  stored: the store's encoder is the single source of every vector, so the store holds exactly what
  ``HybridStore.add`` of the same texts holds and every query gives the same ids, order and scores as
  ``HybridStore.search`` with the same settings.
- Queries are encoded by the store from ``query_str``, once per call, computing only the heads the modes need.
  ``is_embedding_query`` is ``False``, so LlamaIndex's retriever does not embed the query itself.
- Query modes (``VectorStoreQuery.mode``):

  ==========  ======================================================================================
  DEFAULT     dense: ``HybridStore.search(query_str, modes=("dense",), k=similarity_top_k)``
  SPARSE      lexical, by the store option ``sparse_mode``: ``"sparse"`` (default) M3 lexical weights,
              ``modes=("sparse",)``; ``"bm25"`` BM25 over the node texts, ``modes=("bm25",)``; ``"both"``
              RRF of the two; ``k = sparse_top_k or similarity_top_k``
  HYBRID      fusion of ``modes`` (default: dense and the ``sparse_mode`` mode(s)); ``alpha`` sets the weights
              ``{"dense": alpha, <lexical mode>: 1 - alpha}``. Without ``sparse_top_k``/``hybrid_top_k``:
              ``k = similarity_top_k`` and the store's candidate pools. With either of them (LlamaIndex's
              meaning): the dense pool is the top ``similarity_top_k``, the sparse pool the top
              ``sparse_top_k`` (default ``similarity_top_k``), and the ``hybrid_top_k`` (default
              ``similarity_top_k``) best of their union by the fused score are returned.
  MMR         maximal marginal relevance on dense vectors: the top ``mmr_prefetch_k`` dense hits (default
              ``max(20, 4 * similarity_top_k)``; or ``mmr_prefetch_factor * similarity_top_k``) are re-ranked
              by LlamaIndex's ``get_top_k_mmr_embeddings`` with ``mmr_threshold`` (``vector_store_kwargs`` or
              ``VectorStoreQuery.mmr_threshold``; default 0.5, 1 = relevance only). ``similarities`` are
              the MMR scores, as ``SimpleVectorStore`` returns them; the dense score is in ``m3_scores``.
  ==========  ======================================================================================

  Any other mode raises ``ValueError`` listing these four.
- ``vector_store_kwargs`` (``index.as_retriever(vector_store_kwargs={...})``), HYBRID mode unless noted:
  ``modes`` (e.g. ``("dense", "sparse", "colbert")`` for three-way fusion, ``"colbert"`` for ColBERT only),
  ``weights`` (sequence aligned with ``modes`` or ``{mode: weight}``; not together with ``alpha``),
  ``fusion`` (``"weighted"``, ``"rrf"`` or ``"dbsf"``), ``candidates`` (first-stage pool size),
  ``explain`` (any mode: matched sparse tokens in ``node.metadata["m3_explain"]``); MMR mode only:
  ``mmr_threshold``, ``mmr_prefetch_k``, ``mmr_prefetch_factor``.
- Results: nodes rebuilt from the stored node JSON, ``similarities`` = fused scores, and the exact per-mode
  scores in ``node.metadata["m3_scores"]`` (excluded from the LLM and embedding views).
- ``filters`` (every ``FilterOperator``, nested ``AND``/``OR``/``NOT``; see ``filters.py``) and ``doc_ids`` are
  applied before top-k; ``node_ids`` restricts the search to those nodes. An empty ``doc_ids``/``node_ids``
  list means no restriction (``VectorStoreIndex.as_retriever`` passes ``node_ids=[]``).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, List, Mapping, Sequence

import numpy as np
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import (
    DEFAULT_PERSIST_DIR,
    DEFAULT_PERSIST_FNAME,
    BasePydanticVectorStore,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)

from ..fusion import resolve_weights
from ..types import M3Output
from ..encoder import M3Encoder
from ._loading import LazyEncoder, ModelRef
from ._shared import search_with_query_handover, shared_for
from ._store_args import check_modes, check_top_k
from .filters import to_metadata_predicate
from .nodes import REF_DOC_ID_KEY, hit_to_node, node_metadata, node_text, record_to_node

__all__ = ["M3VectorStore", "SUPPORTED_QUERY_MODES", "QUERY_KWARGS"]

#: The LlamaIndex query modes M3VectorStore answers.
SUPPORTED_QUERY_MODES: tuple[VectorStoreQueryMode, ...] = (
    VectorStoreQueryMode.DEFAULT,
    VectorStoreQueryMode.SPARSE,
    VectorStoreQueryMode.HYBRID,
    VectorStoreQueryMode.MMR,
)
#: The keys ``query(..., **kwargs)`` (``vector_store_kwargs``) accepts.
QUERY_KWARGS: tuple[str, ...] = (
    "modes", "weights", "fusion", "candidates", "explain", "mmr_threshold", "mmr_prefetch_k", "mmr_prefetch_factor",
)
_HYBRID_ONLY_KWARGS = ("modes", "weights", "fusion", "candidates")
_MMR_ONLY_KWARGS = ("mmr_threshold", "mmr_prefetch_k", "mmr_prefetch_factor")
#: MMR candidate pool without ``mmr_prefetch_k``/``mmr_prefetch_factor``: this many times ``similarity_top_k``
#: dense hits (at least ``MMR_MIN_PREFETCH``).
MMR_PREFETCH_FACTOR = 4.0
MMR_MIN_PREFETCH = 20
#: ``sparse_mode`` -> the lexical modes LlamaIndex's SPARSE query mode (and HYBRID's default) searches.
SPARSE_MODES: dict[str, tuple[str, ...]] = {"sparse": ("sparse",), "bm25": ("bm25",), "both": ("sparse", "bm25")}
_STORE_METHODS = ("add", "search", "search_encoded", "get", "delete", "ids", "clear", "save")
NAMESPACE_SEP = "__"


def _mmr_settings(query: VectorStoreQuery, kwargs: Mapping[str, Any], top_k: int) -> tuple[float, int]:
    """``(mmr_threshold, prefetch)`` for an MMR query, validated."""
    threshold = kwargs.get("mmr_threshold")
    if threshold is not None and query.mmr_threshold is not None and threshold != query.mmr_threshold:
        raise ValueError(
            f"mmr_threshold given twice with different values ({query.mmr_threshold!r} on the query, "
            f"{threshold!r} in vector_store_kwargs)"
        )
    threshold = query.mmr_threshold if threshold is None else threshold
    if threshold is None:
        threshold = 0.5
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"mmr_threshold must be a number in [0, 1] (1 = relevance only, 0 = diversity only); got {threshold!r}")
    if "mmr_prefetch_k" in kwargs and "mmr_prefetch_factor" in kwargs:
        raise ValueError("give either mmr_prefetch_k or mmr_prefetch_factor, not both")
    if "mmr_prefetch_k" in kwargs:
        prefetch = check_top_k(kwargs["mmr_prefetch_k"], "vector_store_kwargs['mmr_prefetch_k']")
    else:
        factor = kwargs.get("mmr_prefetch_factor", MMR_PREFETCH_FACTOR)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 1.0:
            raise ValueError(f"mmr_prefetch_factor must be a number >= 1; got {factor!r}")
        prefetch = int(np.ceil(factor * top_k))
        if "mmr_prefetch_factor" not in kwargs:
            prefetch = max(prefetch, MMR_MIN_PREFETCH)
    return float(threshold), max(prefetch, top_k)


def _embedding_query(query: VectorStoreQuery) -> M3Output:
    """A query given only as ``query_embedding``, as a one-row dense ``M3Output``."""
    return M3Output(dense=np.asarray([query.query_embedding], dtype=np.float32))


def _supported_text() -> str:
    return ", ".join(f"{m.name} ({m.value!r})" for m in SUPPORTED_QUERY_MODES)


class M3VectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store over an m3_rag ``HybridStore``: dense, sparse, hybrid and MMR query modes.

    Build it from a model (a new in-memory ``HybridStore``) or around an existing store::

        store = M3VectorStore(model="BAAI/bge-m3")                 # or model=<M3Encoder>
        store = M3VectorStore(store=HybridStore(encoder))          # share a store you also search directly
        index = VectorStoreIndex.from_vector_store(store, embed_model=M3Embedding(model=encoder))

    Args:
        model: hub id, local checkpoint folder or ``M3Encoder``; creates ``HybridStore(encoder, **store_kwargs)``.
        store: an existing ``HybridStore`` (or a store with the same API, e.g. ``QdrantHybridStore``) that has
            an encoder. Give exactly one of ``model`` and ``store``.
        batch_size: texts per encoder batch in ``add``.
        sparse_mode: what LlamaIndex's SPARSE query mode means (and the lexical part of HYBRID's default
            modes): ``"sparse"`` (default: M3's learned lexical weights), ``"bm25"`` (BM25 over the node texts)
            or ``"both"`` (RRF of the two in SPARSE). With ``model=`` and ``"bm25"``/``"both"`` the new store
            holds bm25 too; a ``store=`` must have been built with ``HybridStore(modes=(..., "bm25"))``.
        encoder_kwargs: ``M3Encoder.from_pretrained`` options when ``model`` is a hub id or a path.
        **store_kwargs: ``HybridStore`` options (``dense_index``, ``colbert_dtype``, ``show_progress``...),
            only with ``model``.

    See the module docstring for what is encoded, the query modes and ``vector_store_kwargs``.
    """

    stores_text: bool = True
    is_embedding_query: bool = False
    flat_metadata: bool = False
    batch_size: int = Field(default=32, gt=0, description="Texts per encoder batch in add().")
    sparse_mode: str = Field(default="sparse", description="SPARSE query mode: 'sparse' (M3), 'bm25' or 'both'.")

    _store: Any = PrivateAttr()

    def __init__(
        self,
        model: ModelRef | None = None,
        *,
        store: Any | None = None,
        batch_size: int = 32,
        sparse_mode: str = "sparse",
        encoder_kwargs: Mapping[str, Any] | None = None,
        **store_kwargs: Any,
    ) -> None:
        if sparse_mode not in SPARSE_MODES:
            raise ValueError(f"sparse_mode must be one of {', '.join(SPARSE_MODES)}; got {sparse_mode!r}")
        if (model is None) == (store is None):
            raise ValueError(
                "M3VectorStore needs exactly one of model= (a hub id, a local path or an M3Encoder: a new "
                "HybridStore is created) or store= (an existing HybridStore); "
                f"got model={model!r:.60} and store={type(store).__name__ if store is not None else None}"
            )
        if store is None:
            from ..store import HybridStore

            encoder = LazyEncoder(model, encoder_kwargs, owner="M3VectorStore").get()  # type: ignore[arg-type]
            if "bm25" in SPARSE_MODES[sparse_mode] and "modes" not in store_kwargs:
                store_kwargs["modes"] = tuple(encoder.available_modes) + ("bm25",)
            store = HybridStore(encoder, **store_kwargs)
        else:
            if store_kwargs or encoder_kwargs:
                extra = sorted(store_kwargs) + (["encoder_kwargs"] if encoder_kwargs else [])
                raise ValueError(
                    f"M3VectorStore(store=...): {extra} only apply with model=; configure the store you pass instead"
                )
            missing = [m for m in _STORE_METHODS if not callable(getattr(store, m, None))]
            if missing:
                raise TypeError(
                    f"store must be an m3_rag HybridStore (or have its API); {type(store).__name__} lacks {missing}"
                )
            if getattr(store, "encoder", None) is None:
                raise ValueError(
                    "M3VectorStore needs a store with an encoder to encode nodes and queries; this store has none. "
                    "Load it with HybridStore.load(path, encoder=M3Encoder.from_pretrained(...))."
                )
        super().__init__(batch_size=batch_size, sparse_mode=sparse_mode)
        self._store = store
        if isinstance(store.encoder, M3Encoder):
            shared_for(store.encoder).register_store(self)

    def wanted_heads(self) -> tuple[str, ...]:
        """The heads ``add`` encodes: the store's modes, or every head of the encoder for a store still empty."""
        modes = tuple(m for m in (getattr(self._store, "modes", ()) or ()) if m != "bm25")  # bm25 reads the texts
        return modes or tuple(self._store.encoder.available_modes)

    @classmethod
    def class_name(cls) -> str:
        return "M3VectorStore"

    @property
    def client(self) -> Any:
        """The underlying ``HybridStore``."""
        return self._store

    @property
    def store(self) -> Any:
        """The underlying ``HybridStore`` (same as :attr:`client`)."""
        return self._store

    # ------------------------------------------------------------------ writing
    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> List[str]:
        """Encode and store nodes (upsert by ``node_id``); returns their ids.

        Stores the encoding of ``node.get_content(metadata_mode=MetadataMode.EMBED)`` by the store's encoder,
        reusing the rows an ``M3Embedding`` over the same encoder just computed for these texts;
        ``node.embedding`` is not used (see the module docstring).
        """
        if add_kwargs:
            raise TypeError(f"M3VectorStore.add got unexpected keyword arguments {sorted(add_kwargs)}")
        nodes = list(nodes)
        if not nodes:
            return []
        ids = [n.node_id for n in nodes]
        texts = [node_text(n) for n in nodes]
        metadatas = [node_metadata(n) for n in nodes]
        encoder = self._store.encoder
        if isinstance(encoder, M3Encoder) and callable(getattr(self._store, "add_encoded", None)):
            # rows M3Embedding computed for these texts in its own forward pass; only the others are encoded now
            show = None if getattr(self._store, "show_progress", True) else False
            encoded = shared_for(encoder).take_documents(
                texts, self.wanted_heads(), batch_size=self.batch_size, show_progress=show
            )
            self._store.add_encoded(encoded, ids=ids, texts=texts, metadatas=metadatas)
        else:
            self._store.add(texts, ids=ids, metadatas=metadatas, batch_size=self.batch_size)
        return ids

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node whose source document is ``ref_doc_id``."""
        if delete_kwargs:
            raise TypeError(f"M3VectorStore.delete got unexpected keyword arguments {sorted(delete_kwargs)}")
        ids = [r.id for r in self._store.get(self._store.ids()) if r.metadata.get(REF_DOC_ID_KEY) == ref_doc_id]
        if ids:
            self._store.delete(ids)

    def _select(self, node_ids: Sequence[str] | None, filters: MetadataFilters | None) -> list[Any]:
        ids = self._store.ids() if node_ids is None else [str(i) for i in node_ids]
        predicate = to_metadata_predicate(filters)
        records = self._store.get(ids)
        return [r for r in records if predicate is None or predicate(r.metadata)]

    def delete_nodes(
        self,
        node_ids: List[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        """Delete the nodes with these ids that match ``filters`` (either may be ``None``, not both).

        An empty ``node_ids`` list deletes nothing; use :meth:`clear` to delete everything.
        """
        if delete_kwargs:
            raise TypeError(f"M3VectorStore.delete_nodes got unexpected keyword arguments {sorted(delete_kwargs)}")
        if node_ids is None and filters is None:
            raise ValueError("delete_nodes needs node_ids and/or filters; call clear() to delete every node")
        ids = [r.id for r in self._select(node_ids, filters)]
        if ids:
            self._store.delete(ids)

    def get_nodes(self, node_ids: List[str] | None = None, filters: MetadataFilters | None = None) -> List[BaseNode]:
        """The stored nodes with these ids (all when ``None``) that match ``filters``, in store order
        (``node_ids`` order when given; unknown ids are skipped)."""
        return [record_to_node(r.id, r.text, r.metadata) for r in self._select(node_ids, filters)]

    def clear(self) -> None:
        """Delete every node."""
        self._store.clear()

    # ------------------------------------------------------------------ querying
    def _plan(self, query: VectorStoreQuery, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Validate a query and turn it into HybridStore search settings."""
        try:
            mode = VectorStoreQueryMode(query.mode)
        except ValueError:
            mode = None  # type: ignore[assignment]
        if mode not in SUPPORTED_QUERY_MODES:
            raise ValueError(
                f"M3VectorStore does not support query mode {query.mode!r}; supported: {_supported_text()}. "
                "For ColBERT or three-way fusion use HYBRID with vector_store_kwargs={'modes': ('dense', "
                "'sparse', 'colbert')} (or {'modes': 'colbert'})."
            )
        unknown = sorted(set(kwargs) - set(QUERY_KWARGS))
        if unknown:
            raise ValueError(f"M3VectorStore.query: unknown vector_store_kwargs {unknown}; valid: {QUERY_KWARGS}")
        top_k = check_top_k(query.similarity_top_k, "similarity_top_k")
        sparse_top_k = None if query.sparse_top_k is None else check_top_k(query.sparse_top_k, "sparse_top_k")
        hybrid_top_k = None if query.hybrid_top_k is None else check_top_k(query.hybrid_top_k, "hybrid_top_k")
        plan: dict[str, Any] = {"explain": bool(kwargs.get("explain", False)), "depths": None, "mmr": None}
        if mode != VectorStoreQueryMode.MMR:
            misplaced = [k for k in _MMR_ONLY_KWARGS if k in kwargs]
            if misplaced or query.mmr_threshold is not None:
                raise ValueError(
                    f"{misplaced or 'mmr_threshold'} only apply to query mode MMR; got mode {mode.name}. "
                    "Use vector_store_query_mode='mmr'."
                )
        if mode != VectorStoreQueryMode.HYBRID:
            misplaced = [k for k in _HYBRID_ONLY_KWARGS if k in kwargs]
            if misplaced:
                raise ValueError(
                    f"vector_store_kwargs {misplaced} only apply to query mode HYBRID; got mode {mode.name}. "
                    "Use vector_store_query_mode='hybrid' (e.g. with modes=('colbert',) for ColBERT alone)."
                )
            if mode == VectorStoreQueryMode.MMR:
                plan.update(modes=("dense",), k=top_k, mmr=_mmr_settings(query, kwargs, top_k))
            elif mode == VectorStoreQueryMode.DEFAULT:
                plan.update(modes=("dense",), k=top_k)
            else:
                lexical = SPARSE_MODES[self.sparse_mode]
                plan.update(modes=lexical, k=sparse_top_k or top_k)
                if len(lexical) > 1:
                    plan.update(fusion="rrf")
            return plan
        lexical = SPARSE_MODES[self.sparse_mode]
        modes = check_modes(kwargs.get("modes", ("dense",) + lexical), "vector_store_kwargs['modes']")
        weights = kwargs.get("weights")
        if query.alpha is not None:
            alpha = query.alpha
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
                raise ValueError(f"alpha must be a number in [0, 1] (1 = dense only, 0 = sparse only); got {alpha!r}")
            if weights is not None:
                raise ValueError("give either alpha or vector_store_kwargs['weights'], not both")
            lex = [m for m in modes if m in ("sparse", "bm25")]
            if len(modes) != 2 or "dense" not in modes or len(lex) != 1:
                raise ValueError(
                    f"alpha weighs dense against one lexical mode (sparse or bm25), but the modes are {modes}; "
                    "pass vector_store_kwargs['weights'] (e.g. {'dense': 0.4, 'sparse': 0.2, 'colbert': 0.4}) instead"
                )
            weights = {"dense": float(alpha), lex[0]: 1.0 - float(alpha)}
        fusion = kwargs.get("fusion", "weighted")
        resolve_weights(modes, weights, fusion)  # validate now: an empty store would not look at them
        plan.update(modes=modes, weights=weights, fusion=fusion, k=top_k)
        candidates = kwargs.get("candidates")
        if candidates is not None:
            check_top_k(candidates, "vector_store_kwargs['candidates']")
        if sparse_top_k is not None or hybrid_top_k is not None:
            if candidates is not None:
                raise ValueError(
                    "give either sparse_top_k/hybrid_top_k (LlamaIndex pool sizes) or vector_store_kwargs"
                    "['candidates'], not both"
                )
            plan["k"] = hybrid_top_k or top_k
            first = [m for m in modes if m in ("dense", "sparse", "bm25")]
            if len(modes) > 1 and first:
                plan["depths"] = {"dense": top_k, "sparse": sparse_top_k or top_k, "bm25": sparse_top_k or top_k}
        elif candidates is not None:
            plan["candidates"] = candidates
        return plan

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """Search the store; see the module docstring for modes, pools and ``vector_store_kwargs``."""
        plan = self._plan(query, kwargs)
        search_filter = to_metadata_predicate(query.filters, doc_ids=query.doc_ids, doc_id_key=REF_DOC_ID_KEY)
        ids = set(query.node_ids) if query.node_ids else None
        if query.query_str is None and not (plan["modes"] == ("dense",) and query.query_embedding is not None):
            raise ValueError(
                f"M3VectorStore needs query_str to search in mode(s) {plan['modes']} (only dense search can use a "
                "bare query_embedding)"
            )
        if len(self._store) == 0:
            return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        depths, mmr = plan.pop("depths"), plan.pop("mmr")
        settings = {k: v for k, v in plan.items() if v is not None}
        if mmr is not None:
            return self._query_mmr(query, mmr, search_filter, ids, settings)
        if query.query_str is None:
            hits = self._store.search_encoded(_embedding_query(query), filter=search_filter, ids=ids, **settings)
        elif depths is None:
            hits = search_with_query_handover(
                self._store, query.query_str, {"filter": search_filter, "ids": ids, **settings}
            )
        else:
            hits = self._search_pools(query.query_str, depths, search_filter, ids, settings)
        return VectorStoreQueryResult(
            nodes=[hit_to_node(h) for h in hits],
            similarities=[float(h.score) for h in hits],
            ids=[h.id for h in hits],
        )

    def _query_mmr(
        self, query: VectorStoreQuery, mmr: tuple[float, int], search_filter: Any, ids: set[str] | None, settings: dict
    ) -> VectorStoreQueryResult:
        """MMR mode: the top ``prefetch`` dense hits, re-ranked by LlamaIndex's own ``get_top_k_mmr_embeddings``
        over the stored dense vectors (so the same pool gives exactly what ``SimpleVectorStore`` gives)."""
        from llama_index.core.indices.query.embedding_utils import get_top_k_mmr_embeddings

        threshold, prefetch = mmr
        if query.query_str is None:
            encoded = _embedding_query(query)
        else:
            encoded = self._store.encoder.encode_queries(
                [query.query_str], dense=True, sparse=settings["explain"], colbert=False, show_progress=False
            )
        pool = self._store.search_encoded(
            encoded, k=prefetch, modes=("dense",), filter=search_filter, ids=ids, explain=settings["explain"]
        )
        if not pool:
            return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        stored_ids, stored, _, _ = self._store.export([h.id for h in pool])
        row = {id_: i for i, id_ in enumerate(stored_ids)}
        vectors = [stored.dense[row[h.id]].tolist() for h in pool]  # type: ignore[index]
        scores, picked = get_top_k_mmr_embeddings(
            encoded.dense[0].tolist(),  # type: ignore[index]
            vectors,
            similarity_top_k=settings["k"],
            embedding_ids=list(range(len(pool))),
            mmr_threshold=threshold,
        )
        return VectorStoreQueryResult(
            nodes=[hit_to_node(pool[i]) for i in picked],
            similarities=[float(s) for s in scores],
            ids=[pool[i].id for i in picked],
        )

    def _search_pools(
        self, query_str: str, depths: Mapping[str, int], search_filter: Any, ids: set[str] | None, settings: dict
    ) -> list[Any]:
        """HYBRID with LlamaIndex pool sizes: fuse over the union of per-mode top lists.

        The query is encoded once; the store's pipeline takes the per-mode depths (``candidates={mode: depth}``):
        each first stage gives its top ``depths[mode]`` (sparse: only documents sharing a term), and the union is
        scored in every searched mode and fused, in one store call.
        """
        modes = settings["modes"]
        encoder = self._store.encoder
        handover = isinstance(encoder, M3Encoder) and "colbert" in encoder.available_modes and shared_for(encoder).wants_query_colbert
        encoded = encoder.encode_queries(
            [query_str],
            dense="dense" in modes,
            sparse="sparse" in modes or settings["explain"],
            colbert="colbert" in modes or handover,
            show_progress=False,
        )
        if handover:
            shared_for(encoder).put_query(query_str, encoded.colbert[0])  # type: ignore[index]
        # one pipeline call: each first stage keeps its own depth, and the union is scored and fused exactly
        pools = {m: d for m, d in depths.items() if m in modes}
        return self._store.search_encoded(encoded, query_text=query_str, filter=search_filter, ids=ids, candidates=pools,
                                          **settings)

    # ------------------------------------------------------------------ async: the sync code in a worker thread
    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> List[str]:
        return await asyncio.to_thread(self.add, nodes, **kwargs)

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        await asyncio.to_thread(self.delete, ref_doc_id, **delete_kwargs)

    async def adelete_nodes(
        self, node_ids: List[str] | None = None, filters: MetadataFilters | None = None, **delete_kwargs: Any
    ) -> None:
        await asyncio.to_thread(self.delete_nodes, node_ids, filters, **delete_kwargs)

    async def aget_nodes(
        self, node_ids: List[str] | None = None, filters: MetadataFilters | None = None
    ) -> List[BaseNode]:
        return await asyncio.to_thread(self.get_nodes, node_ids, filters)

    async def aclear(self) -> None:
        await asyncio.to_thread(self.clear)

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return await asyncio.to_thread(self.query, query, **kwargs)

    # ------------------------------------------------------------------ persistence (HybridStore.save / load)
    def persist(self, persist_path: str = os.path.join(DEFAULT_PERSIST_DIR, DEFAULT_PERSIST_FNAME), fs: Any = None) -> None:
        """Save the store as a ``HybridStore`` folder at ``persist_path`` (arrays + versioned JSON, no pickle).

        ``StorageContext.persist(persist_dir)`` calls this with ``<persist_dir>/default__vector_store.json``,
        which becomes a folder of that name. Only the local filesystem is supported.
        """
        _check_local_fs(fs)
        self._store.save(persist_path)

    @classmethod
    def from_persist_path(
        cls,
        persist_path: str | os.PathLike[str],
        model: ModelRef | None = None,
        *,
        fs: Any = None,
        batch_size: int = 32,
        encoder_kwargs: Mapping[str, Any] | None = None,
    ) -> "M3VectorStore":
        """Load a store saved by :meth:`persist`; ``model`` must be the encoder it was built with
        (``HybridStore.load`` refuses a different one)."""
        _check_local_fs(fs)
        from ..store import HybridStore

        if not os.path.exists(persist_path):
            raise ValueError(f"no M3VectorStore saved at {os.fspath(persist_path)!r}")
        if model is None:
            raise ValueError(
                "from_persist_path needs model= (a hub id, a local path or an M3Encoder): the model the store was "
                "built with, to encode queries and new nodes"
            )
        encoder = LazyEncoder(model, encoder_kwargs, owner="M3VectorStore").get()
        store = HybridStore.load(persist_path, encoder=encoder)
        return cls(store=store, batch_size=batch_size)

    @classmethod
    def from_persist_dir(
        cls,
        persist_dir: str | os.PathLike[str] = DEFAULT_PERSIST_DIR,
        model: ModelRef | None = None,
        *,
        namespace: str = "default",
        fs: Any = None,
        batch_size: int = 32,
        encoder_kwargs: Mapping[str, Any] | None = None,
    ) -> "M3VectorStore":
        """Load the store ``StorageContext.persist(persist_dir)`` wrote (``<namespace>__vector_store.json``)."""
        path = os.path.join(os.fspath(persist_dir), f"{namespace}{NAMESPACE_SEP}{DEFAULT_PERSIST_FNAME}")
        return cls.from_persist_path(path, model, fs=fs, batch_size=batch_size, encoder_kwargs=encoder_kwargs)


def _check_local_fs(fs: Any) -> None:
    if fs is None:
        return
    from fsspec.implementations.local import LocalFileSystem

    if not isinstance(fs, LocalFileSystem):
        raise ValueError(
            f"M3VectorStore persists to the local filesystem only; got fs={type(fs).__name__}. "
            "Persist locally, then copy the folder."
        )
