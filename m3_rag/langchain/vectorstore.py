"""``M3VectorStore``: a LangChain ``VectorStore`` on top of :class:`~m3_rag.HybridStore`."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.runnables.config import run_in_executor
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from ..fusion import RRF_K, resolve_weights
from ..store import HybridStore
from ..types import StoreLike
from ..types import M3Output
from ._convert import (
    check_candidates,
    check_filter,
    check_fusion,
    check_k,
    check_modes,
    hit_to_document,
    record_to_document,
    reject_unknown,
)
from ._model import check_text
from .embeddings import M3Embeddings

__all__ = ["M3VectorStore", "m3_relevance"]

#: Keyword arguments accepted by the search methods besides ``k``.
SEARCH_KWARGS = ("modes", "weights", "fusion", "candidates", "filter")
DENSE_ONLY = ("dense",)


def m3_relevance(
    score: float,
    *,
    fusion: str = "weighted",
    modes: Sequence[str] = ("dense", "sparse", "colbert"),
    weights: Sequence[float] | Mapping[str, float] | None = None,
) -> float:
    """Map a fused score to a relevance in ``[0, 1]`` (the relevance function of :class:`M3VectorStore`).

    - ``weighted``: the score itself, clipped to ``[0, 1]``. It is a weighted mean of similarities whose
      best value is 1 (dense and ColBERT cosines; sparse lexical matches, which rarely exceed 1), so
      an identical text scores about 1 and unrelated texts about 0.
    - ``rrf``: the score divided by its maximum, ``sum(weights) / (60 + 1)`` (rank 1 in every mode).
    - ``dbsf``: the score divided by ``sum(weights)`` (each mode's normalised score is at most about 1),
      clipped to ``[0, 1]``.

    ``modes`` and ``weights`` are those of the search (``weights=None``: the fusion's defaults).
    """
    s = float(score)
    if fusion == "weighted":
        value = s
    else:
        total = sum(resolve_weights(tuple(modes), weights, fusion).values())
        if total <= 0:
            return 0.0
        value = s * (RRF_K + 1) / total if fusion == "rrf" else s / total
    return min(1.0, max(0.0, value))


class M3VectorStore(VectorStore):
    """A LangChain ``VectorStore`` backed by an in-process :class:`~m3_rag.HybridStore`.

    With ``embedding=M3Embeddings(...)`` the store holds dense, sparse and ColBERT vectors from one
    encoder pass per batch, and every search is the store's hybrid search (all modes by default,
    weighted fusion); the query is encoded once per call, with only the heads the modes need.

    With any other LangChain ``Embeddings`` (as ``InMemoryVectorStore`` takes) the store holds its
    dense vectors only, L2-normalised so scores are cosine similarities. Asking such a store for
    ``"sparse"`` or ``"colbert"`` raises ``ValueError``.

    ``modes`` may include ``"bm25"`` (BM25 over the stored texts, :mod:`m3_rag.index.bm25`) with either kind of
    embedding: the store made on first use then holds it (a ``store=`` you pass must have been built with
    ``HybridStore(modes=(..., "bm25"))``). This replaces LangChain's ``EnsembleRetriever`` + ``BM25Retriever``.

    Search keyword arguments (``similarity_search*``, ``as_retriever(search_kwargs=...)``):
    ``modes``, ``weights``, ``fusion`` (``"weighted"``, ``"rrf"``, ``"dbsf"``), ``candidates`` and
    ``filter`` (a dict such as ``{"year": {"$gte": 2020}}`` or a callable ``metadata -> bool``).
    ``similarity_search_with_score`` returns the fused score (higher is better);
    ``similarity_search_with_relevance_scores`` maps it with :func:`m3_relevance`.

    Args:
        embedding: ``M3Embeddings`` (all modes) or any LangChain ``Embeddings`` (dense only). May be left out
            when ``store`` has an encoder: ``M3Embeddings(model=store.encoder)`` is used.
        store: an existing :class:`~m3_rag.HybridStore` to wrap; by default a new empty one is made on
            first use (so construction does not load the model).
        modes, weights, fusion, candidates: default search settings, overridable per call.
        relevance_score_fn: replaces :func:`m3_relevance` (``fused score -> [0, 1]``).
    """

    def __init__(
        self,
        embedding: Embeddings | None = None,
        *,
        store: HybridStore | None = None,
        modes: str | Sequence[str] | None = None,
        weights: Sequence[float] | Mapping[str, float] | None = None,
        fusion: str = "weighted",
        candidates: int | None = None,
        relevance_score_fn: Callable[[float], float] | None = None,
    ) -> None:
        if embedding is None:
            if store is None:
                raise TypeError(
                    "M3VectorStore needs embedding= (M3Embeddings or any LangChain Embeddings) or store= (a HybridStore "
                    "with an encoder, whose encoder is then used); got neither"
                )
            if getattr(store, "encoder", None) is None:
                raise ValueError(
                    "M3VectorStore(store=...) without embedding= needs a store with an encoder; this one has none. "
                    "Load it with HybridStore.load(path, encoder), or pass the embedding its vectors came from."
                )
            embedding = M3Embeddings(model=store.encoder)
        if not isinstance(embedding, Embeddings):
            raise TypeError(
                "M3VectorStore(embedding=...) must be M3Embeddings or another langchain_core Embeddings; "
                f"got {type(embedding).__name__}"
            )
        if store is not None and not isinstance(store, StoreLike):
            raise TypeError(
                f"store must be an m3_rag.HybridStore, a QdrantHybridStore or None; got {type(store).__name__}"
            )
        if relevance_score_fn is not None and not callable(relevance_score_fn):
            raise TypeError(f"relevance_score_fn must be a callable float -> float; got {type(relevance_score_fn).__name__}")
        self._embedding = embedding
        self._is_m3 = isinstance(embedding, M3Embeddings)
        self.modes = self._check_mode_support(check_modes(modes))
        self.weights = weights
        self.fusion = check_fusion(fusion)
        self.candidates = check_candidates(candidates)
        known_modes = self.modes or (None if self._is_m3 else DENSE_ONLY)
        if weights is not None and known_modes:
            resolve_weights(known_modes, weights, self.fusion)  # fail now, not at the first search
        self.override_relevance_score_fn = relevance_score_fn
        if store is not None:
            self._check_store(store)
        self._store = store
        self._store_lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing
    @property
    def embeddings(self) -> Embeddings:
        """The embedding given at construction."""
        return self._embedding

    @property
    def store(self) -> HybridStore:
        """The wrapped :class:`~m3_rag.HybridStore` (created on first use; for M3 this loads the model)."""
        if self._store is None:
            with self._store_lock:
                if self._store is None:
                    encoder = self._embedding.encoder if self._is_m3 else None  # type: ignore[attr-defined]
                    held = None
                    if self.modes and "bm25" in self.modes:  # the store must be told to hold bm25
                        held = (tuple(encoder.available_modes) if encoder is not None else ("dense",)) + ("bm25",)
                    self._store = HybridStore(encoder=encoder, show_progress=False, modes=held)
        return self._store

    def _check_store(self, store: HybridStore) -> None:
        if self._is_m3:
            encoder = self._embedding.encoder  # type: ignore[attr-defined]
            if store.encoder is None:
                raise ValueError(
                    "the HybridStore has no encoder, so it cannot encode M3 queries. Build it with "
                    "HybridStore(encoder=embedding.encoder) or HybridStore.load(path, encoder=embedding.encoder); "
                    "a store of vectors from another LangChain Embeddings must be wrapped with that embedding."
                )
            if store.encoder is not encoder and store.encoder.fingerprint != encoder.fingerprint:
                raise ValueError(
                    f"the HybridStore's encoder (fingerprint {store.encoder.fingerprint}) differs from the "
                    f"M3Embeddings encoder (fingerprint {encoder.fingerprint}); use the same model for both"
                )
            dense_dim = getattr(store, "dense_dim", None)
            if dense_dim is not None and dense_dim != encoder.dense_dim:
                raise ValueError(
                    f"the HybridStore holds {dense_dim}-d dense vectors but the M3 encoder makes "
                    f"{encoder.dense_dim}-d ones; it was built with another embedding"
                )
        else:
            if store.encoder is not None or store.fingerprint is not None:
                raise ValueError(
                    f"this HybridStore was built with an M3 encoder (fingerprint {store.fingerprint}), but "
                    f"embedding={type(self._embedding).__name__} is not M3Embeddings. Pass "
                    "embedding=M3Embeddings(model=store.encoder) (or the same checkpoint)."
                )
            extra = [m for m in store.modes if m != "dense"]
            if extra:
                raise ValueError(f"this HybridStore holds {extra} vectors, which only M3Embeddings can query")

    def _check_mode_support(self, modes: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if modes is not None and not self._is_m3:
            bad = [m for m in modes if m not in ("dense", "bm25")]
            if bad:
                raise ValueError(
                    f"M3VectorStore with embedding={type(self._embedding).__name__} holds dense vectors only, so "
                    f"mode(s) {bad} are not available. Use embedding=M3Embeddings(...) for sparse and colbert "
                    "search, or search with modes=['dense'] (and 'bm25', BM25 over the texts)."
                )
        return modes

    def _settings(self, k: Any, kwargs: Mapping[str, Any], where: str) -> dict[str, Any]:
        reject_unknown(kwargs, SEARCH_KWARGS, where)
        modes = check_modes(kwargs.get("modes", self.modes))
        self._check_mode_support(modes)
        if modes is None:
            modes = (tuple(self.store.modes) or None) if self._is_m3 else DENSE_ONLY
        settings = {
            "k": check_k(k),
            "modes": modes,
            "weights": kwargs.get("weights", self.weights),
            "fusion": check_fusion(kwargs.get("fusion", self.fusion)),
            "candidates": check_candidates(kwargs.get("candidates", self.candidates)),
            "filter": check_filter(kwargs.get("filter")),
        }
        return settings

    def _dense_query(self, vector: Sequence[float]) -> M3Output:
        return M3Output(dense=_normalise(np.asarray([vector], dtype=np.float32)))

    # ------------------------------------------------------------------ writing
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
        *,
        ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and store ``texts``; an id that is already stored is replaced (upsert).

        Args:
            texts: the texts (``str`` each).
            metadatas: one ``dict`` per text (stored as given), or ``None``.
            ids: one id per text; ``None`` entries (and ``ids=None``) get a fresh ``uuid4`` string.
            batch_size: (M3Embeddings only) texts per forward pass.

        Returns:
            The ids, in input order.
        """
        reject_unknown(kwargs, ("batch_size",) if self._is_m3 else (), "M3VectorStore.add_texts")
        items = list(texts) if not isinstance(texts, str) else None
        if items is None:
            raise TypeError("add_texts expects a list of strings; got a single str. Wrap it in a list.")
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise TypeError(f"add_texts: texts[{i}] must be a str; got {type(t).__name__} ({t!r:.60})")
        n = len(items)
        if metadatas is not None:
            metadatas = list(metadatas)
            if len(metadatas) != n:
                raise ValueError(f"add_texts: got {len(metadatas)} metadatas for {n} texts; give one dict per text")
            for i, md in enumerate(metadatas):
                if not isinstance(md, dict):
                    raise TypeError(f"add_texts: metadatas[{i}] must be a dict; got {type(md).__name__} ({md!r:.60})")
        if ids is not None:
            ids = list(ids)
            if len(ids) != n:
                raise ValueError(f"add_texts: got {len(ids)} ids for {n} texts; give one id per text (or None)")
            for i, id_ in enumerate(ids):
                if id_ is not None and not isinstance(id_, str):
                    raise TypeError(f"add_texts: ids[{i}] must be a str or None; got {type(id_).__name__} ({id_!r})")
        if n == 0:
            return []
        full_ids = [id_ if id_ is not None else str(uuid.uuid4()) for id_ in (ids or [None] * n)]
        if self._is_m3:
            extra = {"batch_size": kwargs["batch_size"]} if "batch_size" in kwargs else {}
            return self.store.add(items, ids=full_ids, metadatas=metadatas, **extra)
        vectors = np.asarray(self._embedding.embed_documents(items), dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != n:
            raise ValueError(
                f"{type(self._embedding).__name__}.embed_documents returned shape {vectors.shape} for {n} texts; "
                "expected one vector per text"
            )
        return self.store.add_encoded(
            M3Output(dense=_normalise(vectors)), ids=full_ids, texts=items, metadatas=metadatas
        )

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        """Delete documents by id (unknown ids are ignored); ``ids=None`` deletes everything."""
        reject_unknown(kwargs, (), "M3VectorStore.delete")
        if ids is None:
            self.store.clear()
        else:
            self.store.delete(list(ids))
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """Stored documents for ``ids`` in the order asked; missing ids are skipped."""
        return [record_to_document(r) for r in self.store.get(list(ids))]

    # ------------------------------------------------------------------ search
    def similarity_search_with_score(self, query: str, k: int = 4, **kwargs: Any) -> list[tuple[Document, float]]:
        """``(Document, fused score)`` pairs, best first (the store's hybrid search).

        Keyword arguments: ``modes``, ``weights``, ``fusion``, ``candidates``, ``filter``.
        """
        check_text(query, "query")
        s = self._settings(k, kwargs, "M3VectorStore.similarity_search")
        if len(self.store) == 0:
            return []
        if self._is_m3:
            hits = self.store.search(query, **s)
        else:
            hits = self.store.search_encoded(self._dense_query(self._embedding.embed_query(query)), query_text=query, **s)
        return [(hit_to_document(h), float(h.score)) for h in hits]

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        """The ``k`` best documents for ``query``; same keyword arguments as :meth:`similarity_search_with_score`."""
        return [doc for doc, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, **kwargs: Any) -> list[Document]:
        """Dense search with a ready query vector (``filter`` and ``candidates`` accepted)."""
        return [doc for doc, _ in self.similarity_search_with_score_by_vector(embedding, k, **kwargs)]

    def similarity_search_with_score_by_vector(
        self, embedding: list[float], k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Dense search with a ready query vector: ``(Document, cosine similarity)`` pairs."""
        reject_unknown(kwargs, ("filter", "candidates"), "M3VectorStore.similarity_search_by_vector")
        check_k(k)
        if len(self.store) == 0:
            return []
        hits = self.store.search_encoded(
            self._dense_query(embedding),
            k=k,
            modes=DENSE_ONLY,
            candidates=check_candidates(kwargs.get("candidates")),
            filter=check_filter(kwargs.get("filter")),
        )
        return [(hit_to_document(h), float(h.score)) for h in hits]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        if self.override_relevance_score_fn is not None:
            return self.override_relevance_score_fn
        modes = self.modes or (DENSE_ONLY if not self._is_m3 else tuple(self.store.modes))
        return lambda score: m3_relevance(score, fusion=self.fusion, modes=modes, weights=self.weights)

    def _similarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        s = self._settings(k, kwargs, "M3VectorStore.similarity_search_with_relevance_scores")
        pairs = self.similarity_search_with_score(query, k, **kwargs)
        if self.override_relevance_score_fn is not None:
            fn = self.override_relevance_score_fn
            return [(doc, float(fn(score))) for doc, score in pairs]
        return [
            (doc, m3_relevance(score, fusion=s["fusion"], modes=s["modes"] or DENSE_ONLY, weights=s["weights"]))
            for doc, score in pairs
        ]

    async def _asimilarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        # the base class would map with the default fusion's function; keep the per-call fusion instead
        return await run_in_executor(None, self._similarity_search_with_relevance_scores, query, k, **kwargs)

    def max_marginal_relevance_search(
        self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5, **kwargs: Any
    ) -> list[Document]:
        """Maximal marginal relevance on dense vectors: fetch ``fetch_k`` dense hits, pick ``k`` diverse ones.

        The query is embedded once (dense head only for M3). ``filter`` is accepted.
        """
        check_text(query, "query")
        reject_unknown(kwargs, ("filter",), "M3VectorStore.max_marginal_relevance_search")
        check_k(k)
        if len(self.store) == 0:
            return []
        return self.max_marginal_relevance_search_by_vector(
            self._embedding.embed_query(query), k, fetch_k, lambda_mult, **kwargs
        )

    def max_marginal_relevance_search_by_vector(
        self, embedding: list[float], k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5, **kwargs: Any
    ) -> list[Document]:
        """Maximal marginal relevance from a ready dense query vector (``filter`` accepted)."""
        reject_unknown(kwargs, ("filter",), "M3VectorStore.max_marginal_relevance_search_by_vector")
        check_k(k)
        check_k(fetch_k, "fetch_k")
        if not 0.0 <= float(lambda_mult) <= 1.0:
            raise ValueError(f"lambda_mult must be in [0, 1] (1 = relevance only, 0 = diversity only); got {lambda_mult!r}")
        if len(self.store) == 0:
            return []
        query = self._dense_query(embedding)
        hits = self.store.search_encoded(
            query, k=max(fetch_k, k), modes=DENSE_ONLY, filter=check_filter(kwargs.get("filter"))
        )
        if not hits:
            return []
        ids, encoded, _, _ = self.store.export([h.id for h in hits])
        row = {id_: i for i, id_ in enumerate(ids)}
        vectors = [encoded.dense[row[h.id]] for h in hits]  # type: ignore[index]
        chosen = maximal_marginal_relevance(query.dense[0], vectors, lambda_mult=float(lambda_mult), k=k)  # type: ignore[index]
        return [hit_to_document(hits[i]) for i in chosen]

    # ------------------------------------------------------------------ building and persistence
    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> "M3VectorStore":
        """A new store holding ``texts``; ``kwargs`` go to the constructor (``modes``, ``fusion``, ``store``...)."""
        vs = cls(embedding=embedding, **kwargs)
        vs.add_texts(texts, metadatas, ids=ids)
        return vs

    def save_local(self, folder_path: str | os.PathLike[str]) -> None:
        """Save to a folder with :meth:`HybridStore.save` (arrays + JSON, atomic, nothing pickled)."""
        self.store.save(Path(folder_path))

    @classmethod
    def load_local(
        cls,
        folder_path: str | os.PathLike[str],
        embeddings: Embeddings,
        *,
        allow_dangerous_deserialization: bool = False,
        **kwargs: Any,
    ) -> "M3VectorStore":
        """Load a folder written by :meth:`save_local`.

        ``embeddings`` must be the embedding the store was built with: for ``M3Embeddings`` the saved
        encoder fingerprint is checked. ``allow_dangerous_deserialization`` is accepted for FAISS
        compatibility and has no effect: loading never unpickles anything. ``kwargs`` go to the
        constructor.
        """
        encoder = embeddings.encoder if isinstance(embeddings, M3Embeddings) else None
        store = HybridStore.load(Path(folder_path), encoder=encoder)
        return cls(embedding=embeddings, store=store, **kwargs)


def _normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)
