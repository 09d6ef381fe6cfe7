"""HybridStore: an embedded in-memory index over BGE-M3's dense, sparse and ColBERT outputs, and BM25 over the
document texts.

The store owns the slot bookkeeping: one *slot* per stored document version, in insertion order, with its
id, text and metadata, and a tombstone mask for deleted slots. Each mode's rows live in a per-mode index
(:mod:`m3_rag.index`: FAISS dense, an inverted index for sparse, packed ColBERT tokens behind a codec), and
every search runs through the shared pipeline (:mod:`m3_rag.search`); this module only supplies the
in-memory candidates and exact scores (:class:`_MemoryBackend`). Persistence is :mod:`m3_rag.persistence`.

Deleted slots are excluded from every search before top-k. When more than a quarter of the slots are dead
the store is compacted (each index rebuilt without them); ``save`` always writes a compact store.

Concurrency: a readers-writer lock; searches run in parallel, writes are exclusive. Encoding (the model
forward pass) and the conversion of new rows run outside the lock; a failed write changes nothing.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Callable, Collection, Mapping, Sequence

import numpy as np

from .fusion import DEFAULT_WEIGHTS, FUSIONS
from .index import ModeIndex
from .index.codecs import CODECS
from .index.colbert import ColbertIndex
from .index.dense import DENSE_INDEXES, DenseIndex
from .index.bm25 import BM25_DEFAULTS, BM25Index, check_bm25_options
from .index.pooling import check_pool_factor
from .index.sparse import SparseIndex
from ._rwlock import RWLock
from .search import Candidates, SearchBackend, SearchOptions, parse_options, run
from .search.options import OPTION_NAMES
from .types import MODES, STORE_MODES, Hit, M3Output, Record
from .search.api import EncodedSearchMixin
from .validation import check_encoded, check_ids, check_modes, check_query, check_rows, check_sparse_dim, check_texts  # noqa: F401 (re-exported)

__all__ = ["HybridStore", "DENSE_INDEXES", "COLBERT_DTYPES", "FORMAT_VERSION", "DEFAULT_WEIGHTS", "FUSIONS"]

#: ColBERT storage types (codec names, :data:`m3_rag.index.codecs.CODECS`).
COLBERT_DTYPES: tuple[str, ...] = tuple(CODECS)
from .persistence import FORMAT_VERSION  # noqa: E402

#: Compact when more than this fraction of the slots are dead.
_COMPACT_FRACTION = 0.25


class _Restriction:
    def __init__(self, mask: np.ndarray) -> None:
        self.mask = mask
        self.count = int(mask.sum())


class _MemoryBackend(SearchBackend):
    """The in-memory store's candidates and exact scores (slots are keys and insertion sequence numbers)."""

    tie_margin = 1
    tie_rule_modes = ("sparse", "colbert", "bm25")  # topk_stable: score descending, then slot (= insertion) order

    def __init__(self, store: "HybridStore") -> None:
        self.s = store
        self.encoder = store.encoder

    def restrict(self, opts: SearchOptions) -> _Restriction | None:
        s = self.s
        if opts.filter is None and opts.ids is None:
            return _Restriction(s._alive) if s._n_dead else None
        mask = np.zeros(len(s._slot_ids), dtype=bool)
        if opts.ids is not None:
            slots = [s._id_to_slot[i] for i in opts.ids if i in s._id_to_slot]
        else:
            slots = np.flatnonzero(s._alive).tolist()
        pred = opts.filter
        if pred is None:
            mask[slots] = True
        else:
            metas = s._metas
            mask[[x for x in slots if pred(metas[x])]] = True
        return _Restriction(mask)

    def count(self, restriction: _Restriction | None) -> int:
        return len(self.s) if restriction is None else restriction.count

    def _q(self, mode: str, Q: M3Output) -> Any:
        return getattr(Q, mode)

    def first_stage(self, mode: str, Q: M3Output, depth: int, restriction: Any, pad: bool) -> list[Candidates]:
        index = self.s._indexes[mode]
        allowed = None if restriction is None else restriction.mask
        depth = min(depth, len(index))
        out = []
        if mode == "sparse":
            full = index.full_scores(Q.sparse)
            for i in range(len(Q)):
                row = full[i]
                scores = row
                if allowed is not None:
                    scores = row.copy()
                    scores[~allowed] = -np.inf
                from .index import topk_stable

                top = topk_stable(scores, depth)
                top = top[np.isfinite(scores[top]) & ((scores[top] > 0) | pad)]
                out.append(Candidates(top, top, {mode: scores[top]}, {"sparse_full": row}))
            return out
        if mode == "bm25":
            return self._bm25_first_stage(index, Q, depth, allowed, pad)  # type: ignore[arg-type]
        D, I = index.topk(self._q(mode, Q), depth, allowed)
        for i in range(len(Q)):
            ok = I[i] >= 0
            out.append(Candidates(I[i][ok], I[i][ok], {mode: D[i][ok]}))
        return out

    def _bm25_first_stage(self, index: BM25Index, Q: M3Output, depth: int, allowed: np.ndarray | None,
                          pad: bool) -> list[Candidates]:
        """Documents matching a query stem by BM25 (tie rule), then, with ``pad``, non-matching ones in slot order."""
        from .index import topk_stable

        out = []
        for entry in index.sparse_scores(Q.text):  # type: ignore[arg-type]
            u, sc, base = entry  # live matching slots, ascending, and their scores
            if allowed is not None and u.size:
                keep = allowed[u]
                u, sc = u[keep], sc[keep]
            sel = topk_stable(sc, min(depth, u.size)) if u.size else np.zeros(0, np.int64)
            top, top_s = u[sel], sc[sel]
            if pad and top.size < depth:
                rest = (self.s._alive if allowed is None else allowed).copy()
                rest[u] = False
                fill = np.flatnonzero(rest)[: depth - top.size]
                top, top_s = np.concatenate([top, fill]), np.concatenate([top_s, np.full(fill.size, base)])
            out.append(Candidates(top, top, {"bm25": top_s}, {"bm25_sparse": entry}))
        return out

    def score(self, mode: str, q: M3Output, cands: Candidates) -> np.ndarray:
        if mode == "sparse" and "sparse_full" in cands.cache:
            return cands.cache["sparse_full"][cands.keys]
        if mode == "bm25":
            if "bm25_sparse" in cands.cache:
                return BM25Index.lookup(cands.cache["bm25_sparse"], cands.keys)
            return self.s._indexes[mode].score(q.text, [cands.keys])[0]
        return self.s._indexes[mode].score(self._q(mode, q), [cands.keys])[0]

    def hits(self, cands: Candidates, scores: np.ndarray, per_mode: Mapping[str, np.ndarray]) -> list[Hit]:
        s = self.s
        slots_l = cands.keys.tolist()
        scores_l = np.asarray(scores, dtype=np.float64).tolist()
        mode_l = {m: np.asarray(v, dtype=np.float64).tolist() for m, v in per_mode.items()}
        return [
            Hit(id=s._slot_ids[x], score=scores_l[j], text=s._texts[x],
                metadata=copy.deepcopy(s._metas[x]) if s._metas[x] else {},
                scores={m: v[j] for m, v in mode_l.items()})
            for j, x in enumerate(slots_l)
        ]

    def matched_terms(self, q_sparse: Mapping[int, float], cands: Candidates) -> list[list[tuple[int, float]]]:
        index = self.s._indexes["sparse"]
        return [index.matched(q_sparse, int(x)) for x in cands.keys.tolist()]

    def matched_stems(self, query_text: str, cands: Candidates) -> list[dict[str, float]]:
        index: BM25Index = self.s._indexes["bm25"]  # type: ignore[assignment]
        return [index.explain(query_text, int(x)) for x in cands.keys.tolist()]

    def bm25_documents(self) -> int | None:
        index = self.s._indexes.get("bm25")
        return None if index is None else index.n_live  # type: ignore[attr-defined]


class HybridStore(EncodedSearchMixin):
    """An in-memory index holding any subset of BGE-M3's dense, sparse and ColBERT outputs, and optionally
    BM25 over the document texts (mode ``"bm25"``).

    Args:
        encoder: an :class:`m3_rag.M3Encoder` for text input (``add``/``search``); without one,
            use ``add_encoded``/``search_encoded`` with precomputed :class:`M3Output` rows.
        dense_index: ``"flat"`` (exact inner product, ``faiss.IndexFlatIP``) or ``"hnsw"``
            (``faiss.IndexHNSWFlat``: approximate, much faster on large corpora; see the README
            for the measured recall/speed trade-off). Filters admitting <= 25% of the docs are
            always served exactly.
        hnsw_m: HNSW graph degree (memory ~ ``2 * hnsw_m * 4`` bytes/doc on top of the vectors).
        hnsw_ef_search: HNSW search beam width (raised to the number of results wanted).
        hnsw_ef_construction: HNSW build beam width.
        colbert_dtype: ColBERT storage codec: ``"fp16"`` (default, 2 bytes/value), ``"fp32"``, ``"int8"``
            (1 byte/value + a float32 scale per token), ``"binary"`` (1 bit/value + a scale per token) or ``"pq"``
            (FAISS product quantisation trained on the first add); see :data:`COLBERT_DTYPES` and
            ``docs/colbert_storage.md``.
        colbert_storage: the same option under a more general name (give one of the two).
        colbert_pool_factor: store each document's ColBERT tokens as at most ``ceil(n / factor)`` Ward-cluster
            means (:mod:`m3_rag.index.pooling`); ``1`` (default) keeps every token. Queries are never pooled.
        show_progress: show the encoder's progress bar for large ``add`` calls.
        sparse_dim: the vocabulary size bounding sparse token ids (ids must be ints in ``0 .. sparse_dim-1``);
            default: the encoder's ``vocab_size``, or any id below 2**31 - 1 without an encoder. Memory never
            grows with the largest id.
        modes: the modes the store holds, a subset of :data:`m3_rag.types.STORE_MODES`
            (``("dense", "sparse", "colbert", "bm25")``). Default ``None``: the outputs of the first add
            (never ``bm25``). ``bm25`` must be asked for here; a store of ``("bm25",)`` alone needs no encoder.
        bm25_language: the PyStemmer language of the ``bm25`` stemmer (default ``"english"``; ``None``: no
            stemming); an unknown language raises ``ValueError`` naming the allowed ones.
        bm25_stopwords: a bm25s stop-word list name (default ``"en"``), a list of words, or ``None``.
        bm25_k1: BM25 term-frequency saturation, ``> 0`` (default 1.5, bm25s's).
        bm25_b: BM25 length normalisation in ``[0, 1]`` (default 0.75).
        bm25_method: the bm25s variant: ``"lucene"`` (default), ``"robertson"``, ``"atire"``, ``"bm25l"``,
            ``"bm25+"``.

    The modes the store holds are fixed by ``modes`` or by the first add.

    The ``bm25`` mode (:mod:`m3_rag.index.bm25`) tokenises each document's text at add time exactly like
    ``bm25s.tokenize`` with a PyStemmer stemmer, and scores like ``bm25s`` on the live corpus: IDF and the
    average length follow every add, upsert and delete. A document without text (``add_encoded`` with
    ``texts=None`` or a ``None`` entry) has no bm25 entry: it never matches, scores 0 in bm25 and does not
    count in IDF. Searching ``bm25`` when no live document has a text raises ``ValueError``. The query side is
    the query text (``search``), or ``search_encoded(..., query_text=...)``; a query with no term after
    tokenisation matches nothing (``bm25`` alone returns ``[]``).
    Document ids are strings; an existing id is upserted (the new version goes last in insertion
    order). Duplicate ids within one add raise ``ValueError``. Weighted fusion defaults to the
    encoder's declared ``fusion_weights`` (``minilm-m3`` declares them), else FlagEmbedding's 0.4/0.2/0.4.
    """

    def __init__(
        self,
        encoder: Any | None = None,
        *,
        dense_index: str = "flat",
        hnsw_m: int = 32,
        hnsw_ef_search: int = 128,
        hnsw_ef_construction: int = 80,
        colbert_dtype: str = "fp16",
        show_progress: bool = True,
        colbert_storage: str | None = None,
        colbert_pool_factor: int = 1,
        sparse_dim: int | None = None,
        modes: Sequence[str] | str | None = None,
        bm25_language: str | None = BM25_DEFAULTS["language"],
        bm25_stopwords: str | Sequence[str] | None = BM25_DEFAULTS["stopwords"],
        bm25_k1: float = BM25_DEFAULTS["k1"],
        bm25_b: float = BM25_DEFAULTS["b"],
        bm25_method: str = BM25_DEFAULTS["method"],
    ) -> None:
        if colbert_storage is not None:
            if colbert_dtype not in ("fp16", colbert_storage):
                raise ValueError(
                    f"give colbert_storage or colbert_dtype, not both (got {colbert_storage!r} and {colbert_dtype!r})"
                )
            colbert_dtype = colbert_storage
        if dense_index not in DENSE_INDEXES:
            raise ValueError(f"dense_index must be one of {', '.join(DENSE_INDEXES)}; got {dense_index!r}")
        if colbert_dtype not in COLBERT_DTYPES:
            raise ValueError(f"colbert_dtype must be one of {', '.join(COLBERT_DTYPES)}; got {colbert_dtype!r}")
        for name, val in (("hnsw_m", hnsw_m), ("hnsw_ef_search", hnsw_ef_search), ("hnsw_ef_construction", hnsw_ef_construction)):
            if not isinstance(val, int) or isinstance(val, bool) or not 0 < val <= 2**31 - 1:
                raise ValueError(f"{name} must be a positive int below 2**31; got {val!r}")
        if encoder is not None and not hasattr(encoder, "encode_queries"):
            raise TypeError(f"encoder must be an m3_rag.M3Encoder; got {type(encoder).__name__}")
        self._declared: tuple[str, ...] | None = (
            None if modes is None else tuple(m for m in STORE_MODES if m in check_modes(modes)))
        bm25_opts = {"language": bm25_language, "stopwords": bm25_stopwords, "k1": bm25_k1, "b": bm25_b,
                     "method": bm25_method}
        if self._declared is not None and "bm25" in self._declared:
            self.bm25_options: dict[str, Any] = check_bm25_options(**bm25_opts)
        else:
            changed = sorted(f"bm25_{k}" for k, v in bm25_opts.items() if v != BM25_DEFAULTS[k])
            if changed:
                raise ValueError(f"{', '.join(changed)} given but the store does not hold bm25: pass modes=(..., 'bm25')")
            self.bm25_options = dict(BM25_DEFAULTS)
        self._encoder = encoder
        self._sparse_dim = check_sparse_dim(sparse_dim, encoder)
        self.dense_index = dense_index
        self.hnsw_m = hnsw_m
        self.hnsw_ef_search = hnsw_ef_search
        self.hnsw_ef_construction = hnsw_ef_construction
        self.colbert_dtype = colbert_dtype
        self.colbert_pool_factor = check_pool_factor(colbert_pool_factor)
        self.show_progress = bool(show_progress)
        self._saved_fingerprint: str | None = None
        self._lock = RWLock()
        self._reset()

    def _reset(self) -> None:
        self._modes: tuple[str, ...] | None = None
        self._indexes: dict[str, ModeIndex] = {}
        self._slot_ids: list[str] = []
        self._texts: list[str | None] = []
        self._metas: list[dict] = []
        self._alive = np.zeros(0, dtype=bool)
        self._id_to_slot: dict[str, int] = {}

    # ------------------------------------------------------------------ info
    @property
    def encoder(self) -> Any | None:
        """The encoder used for text input, or ``None``."""
        return self._encoder

    @property
    def modes(self) -> tuple[str, ...]:
        """The modes this store holds: those declared with ``modes=``, else those of the first add (empty until then)."""
        return self._modes or self._declared or ()

    @property
    def _vector_modes(self) -> tuple[str, ...] | None:
        """The held (or declared) modes the encoder computes: every mode but ``bm25``."""
        modes = self._modes or self._declared
        return None if modes is None else tuple(m for m in modes if m != "bm25")

    @property
    def fingerprint(self) -> str | None:
        """The encoder fingerprint recorded with the index (``None`` without an encoder)."""
        if self._encoder is not None:
            return self._encoder.fingerprint
        return self._saved_fingerprint

    @property
    def sparse_dim(self) -> int | None:
        """The vocabulary size bounding sparse token ids (``None``: any id below 2**31 - 1)."""
        return self._sparse_dim

    @property
    def dense_dim(self) -> int | None:
        """Dense vector dimension (``None`` until dense vectors are added)."""
        idx = self._indexes.get("dense")
        return None if idx is None else idx.dim  # type: ignore[attr-defined]

    @property
    def colbert_dim(self) -> int | None:
        """ColBERT vector dimension (``None`` until ColBERT vectors are added)."""
        idx = self._indexes.get("colbert")
        return None if idx is None else idx.dim  # type: ignore[attr-defined]

    @property
    def _n_dead(self) -> int:
        return len(self._slot_ids) - len(self._id_to_slot)

    def __len__(self) -> int:
        return len(self._id_to_slot)

    def __contains__(self, id: object) -> bool:
        return isinstance(id, str) and id in self._id_to_slot

    def __repr__(self) -> str:
        return (
            f"HybridStore(docs={len(self)}, modes={self.modes}, dense_index={self.dense_index!r}, "
            f"colbert_dtype={self.colbert_dtype!r}"
            + (f", colbert_pool_factor={self.colbert_pool_factor}" if self.colbert_pool_factor != 1 else "") + ")"
        )

    def ids(self) -> list[str]:
        """All document ids, in insertion order (an upserted id counts as inserted at its upsert)."""
        with self._lock.read():
            return [self._slot_ids[i] for i in np.flatnonzero(self._alive)]

    def memory_bytes(self) -> dict[str, int]:
        """Approximate bytes held per component (dense, sparse, colbert, and bm25 when held), excluding Python objects."""
        with self._lock.read():
            out = {m: 0 for m in MODES}
            for m, idx in self._indexes.items():
                out[m] = idx.nbytes()
            return out

    # ------------------------------------------------------------------ adding
    def add(
        self,
        texts: Sequence[str],
        *,
        ids: Sequence[str] | None = None,
        metadatas: Sequence[dict | None] | None = None,
        batch_size: int = 32,
    ) -> list[str]:
        """Encode ``texts`` and add them; returns the ids (generated as uuid4 hex when absent).

        Only the heads the store holds are computed (a fresh store computes every head the
        encoder has). Existing ids are upserted.
        """
        vector_modes = self._vector_modes
        if self._encoder is None and vector_modes != ():
            raise ValueError(
                "add() needs an encoder: build the store with HybridStore(encoder=M3Encoder.from_pretrained(...)), "
                "load a saved one with HybridStore.load(path, encoder), or encode yourself and call add_encoded()"
            )
        texts = check_texts(texts)
        ids_list, metas = check_rows(len(texts), ids, metadatas)
        if not texts:
            return []
        if vector_modes == ():  # a bm25-only store: nothing to encode
            return self._add_checked(M3Output(text=list(texts)), ids_list, texts, metas)
        modes = vector_modes or tuple(self._encoder.available_modes)
        encoded = self._encoder.encode_documents(
            texts, dense="dense" in modes, sparse="sparse" in modes, colbert="colbert" in modes,
            batch_size=batch_size, show_progress_bar=None if self.show_progress else False,
        )
        return self._add_checked(encoded, ids_list, texts, metas)

    def add_encoded(
        self,
        encoded: M3Output,
        *,
        ids: Sequence[str] | None = None,
        texts: Sequence[str | None] | None = None,
        metadatas: Sequence[dict | None] | None = None,
    ) -> list[str]:
        """Add precomputed rows. The first add fixes the store's modes (``encoded.modes``, unless declared with
        ``modes=``); later adds must hold at least those modes (extra ones are ignored). Returns the ids.

        ``texts`` are stored with the documents and are the ``bm25`` mode's source: a row whose text is
        ``None`` (or every row, without ``texts``) has no bm25 entry."""
        if not isinstance(encoded, M3Output):
            raise TypeError(f"encoded must be an M3Output; got {type(encoded).__name__}")
        n = len(encoded)
        if texts is not None:
            texts = check_texts(texts, allow_none=True)
            if len(texts) != n:
                raise ValueError(f"got {len(texts)} texts for {n} encoded rows; pass one text per row")
        ids_list, metas = check_rows(n, ids, metadatas)
        if n == 0:
            return []
        return self._add_checked(encoded, ids_list, texts if texts is not None else [None] * n, metas)

    def _add_exported(self, encoded: M3Output, **kwargs: Any) -> list[str]:
        """``add_encoded`` for rows exported from a store that already pooled its ColBERT tokens with this store's
        ``colbert_pool_factor`` (migration): they are stored as they are, never pooled twice."""
        pf = self.colbert_pool_factor
        self.colbert_pool_factor = 1
        if "colbert" in self._indexes:
            self._indexes["colbert"].pool_factor = 1  # type: ignore[attr-defined]
        try:
            return self.add_encoded(encoded, **kwargs)
        finally:
            self.colbert_pool_factor = pf
            if "colbert" in self._indexes:
                self._indexes["colbert"].pool_factor = pf  # type: ignore[attr-defined]

    def _new_index(self, mode: str, encoded: M3Output) -> ModeIndex:
        if mode == "dense":
            return DenseIndex(int(encoded.dense.shape[1]), self.dense_index, hnsw_m=self.hnsw_m,  # type: ignore[union-attr]
                              hnsw_ef_search=self.hnsw_ef_search, hnsw_ef_construction=self.hnsw_ef_construction)
        if mode == "sparse":
            return SparseIndex(self._sparse_dim)
        if mode == "bm25":
            o = self.bm25_options
            return BM25Index(o["k1"], o["b"], o["method"], language=o["language"], stopwords=o["stopwords"])
        mats = encoded.colbert
        dim = next((int(m.shape[1]) for m in mats if m.shape[0] > 0), int(mats[0].shape[1]))  # type: ignore[union-attr,index]
        return ColbertIndex(dim, self.colbert_dtype, self.colbert_pool_factor)

    def _prepare(self, encoded: M3Output, modes: tuple[str, ...], indexes: Mapping[str, ModeIndex],
                 texts: Sequence[str | None]) -> dict[str, Any]:
        for mode in modes:
            if mode != "bm25" and getattr(encoded, mode) is None:
                raise ValueError(f"encoded has no {mode!r} output but the store holds {modes}; encode with {mode}=True")
        return {mode: indexes[mode].prepare(list(texts) if mode == "bm25" else getattr(encoded, mode)) for mode in modes}

    def _add_checked(self, encoded: M3Output, ids: list[str], texts: Sequence[str | None], metas: list[dict]) -> list[str]:
        n = len(encoded)
        if n != len(ids):
            raise ValueError(f"the encoder returned {n} rows for {len(ids)} texts")
        while True:
            modes = self._modes or self._declared or encoded.modes
            if not modes:
                raise ValueError("encoded holds no output (dense, sparse and colbert are all None)")
            vector_modes = tuple(m for m in modes if m != "bm25")
            check_encoded(encoded, vector_modes, {"dense": self.dense_dim, "colbert": self.colbert_dim},
                          sparse_dim=self._sparse_dim, fp16_colbert=self.colbert_dtype == "fp16")
            fresh = self._modes is None
            indexes = dict(self._indexes) if not fresh else {m: self._new_index(m, encoded) for m in modes}
            # Convert and validate outside the lock: the expensive part of an add, and it changes nothing.
            prepared = self._prepare(encoded, tuple(modes), indexes, texts)
            with self._lock.write():
                if (self._modes is None) != fresh:
                    continue  # another thread fixed the modes meanwhile: prepare again against them
                # the live indexes, not the snapshot: another writer may have swapped in new ones meanwhile
                # (prepared rows depend only on settings fixed by the first add: dimensions, codec)
                self._commit(tuple(modes), indexes if fresh else self._indexes, prepared, ids, texts, metas)
                return ids

    def _commit(self, modes: tuple[str, ...], indexes: dict[str, ModeIndex], prepared: dict[str, Any],
                ids: list[str], texts: Sequence[str | None], metas: list[dict]) -> None:
        """Apply a prepared add under the write lock, all or nothing.

        Every step that can fail builds new objects (the extended indexes, the bookkeeping, a compaction);
        the dense FAISS append, which grows in place, comes last and is rolled back if it fails; then plain
        assignments install the result. Upserted ids are tombstoned in the new bookkeeping.
        """
        n_old, n = len(self._slot_ids), len(ids)
        upserted = [self._id_to_slot[i] for i in ids if i in self._id_to_slot]
        alive = np.concatenate([self._alive, np.ones(n, dtype=bool)])
        alive[upserted] = False
        slot_ids = self._slot_ids + list(ids)
        all_texts = self._texts + list(texts)
        all_metas = self._metas + list(metas)
        for slot in upserted:
            all_texts[slot], all_metas[slot] = None, {}
        n_dead = n_old + n - int(alive.sum())
        if n_dead and n_dead > _COMPACT_FRACTION * (n_old + n):
            keep = np.flatnonzero(alive)
            new_indexes = {m: indexes[m].extended_compacted(prepared[m], keep) for m in modes}
            slot_ids, all_texts, all_metas, alive = self._kept(keep, slot_ids, all_texts, all_metas)
            id_to_slot = {doc_id: i for i, doc_id in enumerate(slot_ids)}
        else:
            new_indexes = {m: indexes[m] if m == "dense" else indexes[m].extended(prepared[m]) for m in modes}
            if upserted and "bm25" in new_indexes:  # the old versions stop counting in IDF and average length
                new_indexes["bm25"].discard(np.array(upserted, np.int64))  # type: ignore[attr-defined]  # on the new copy
            id_to_slot = dict(self._id_to_slot)
            id_to_slot.update((doc_id, n_old + j) for j, doc_id in enumerate(ids))
            if "dense" in modes:
                dense = new_indexes["dense"]
                dense.append_or_rollback(prepared["dense"])
                try:
                    self._install(modes, new_indexes, slot_ids, all_texts, all_metas, alive, id_to_slot)
                except BaseException:
                    dense._rollback(n_old)
                    raise
                return
        self._install(modes, new_indexes, slot_ids, all_texts, all_metas, alive, id_to_slot)

    @staticmethod
    def _kept(keep: np.ndarray, slot_ids: list[str], texts: list[str | None], metas: list[dict]
              ) -> tuple[list[str], list[str | None], list[dict], np.ndarray]:
        kl = keep.tolist()
        return [slot_ids[i] for i in kl], [texts[i] for i in kl], [metas[i] for i in kl], np.ones(len(kl), dtype=bool)

    def _install(self, modes: tuple[str, ...] | None, indexes: dict[str, ModeIndex], slot_ids: list[str],
                 texts: list[str | None], metas: list[dict], alive: np.ndarray, id_to_slot: dict[str, int]) -> None:
        """Swap in a complete new state (plain assignments only: cannot fail half way)."""
        self._modes, self._indexes = modes, indexes
        self._slot_ids, self._texts, self._metas = slot_ids, texts, metas
        self._alive, self._id_to_slot = alive, id_to_slot

    # ------------------------------------------------------------------ delete / get
    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents by id; unknown ids are ignored. Returns the number removed.

        All or nothing: the new bookkeeping (and a compaction, when due) is built before it is swapped in.
        """
        ids_list = check_ids(ids, ordered=False)
        with self._lock.write():
            return self._delete_locked(ids_list)

    def _delete_locked(self, ids: list[str]) -> int:
        slots = [self._id_to_slot[i] for i in dict.fromkeys(ids) if i in self._id_to_slot]
        if not slots:
            return 0
        alive = self._alive.copy()
        alive[slots] = False
        texts, metas = list(self._texts), list(self._metas)
        for slot in slots:
            texts[slot], metas[slot] = None, {}
        id_to_slot = dict(self._id_to_slot)
        for doc_id in ids:
            id_to_slot.pop(doc_id, None)
        slot_ids, indexes = self._slot_ids, self._indexes
        n_dead = len(slot_ids) - len(id_to_slot)
        if n_dead > _COMPACT_FRACTION * len(slot_ids):
            keep = np.flatnonzero(alive)
            indexes = {m: idx.compact(keep) for m, idx in indexes.items()}
            slot_ids, texts, metas, alive = self._kept(keep, slot_ids, texts, metas)
            id_to_slot = {doc_id: i for i, doc_id in enumerate(slot_ids)}
        elif "bm25" in indexes:  # tombstoned: stop counting in IDF and average length (a new index, self unchanged)
            indexes = dict(indexes)
            indexes["bm25"] = indexes["bm25"].discarded(np.array(slots, np.int64))  # type: ignore[attr-defined]
        self._install(self._modes, indexes, slot_ids, texts, metas, alive, id_to_slot)
        return len(slots)

    def _compact(self) -> None:
        """Rebuild every index without the dead slots (all built before the swap)."""
        keep = np.flatnonzero(self._alive)
        if len(keep) == len(self._slot_ids):
            return
        indexes = {m: idx.compact(keep) for m, idx in self._indexes.items()}
        slot_ids, texts, metas, alive = self._kept(keep, self._slot_ids, self._texts, self._metas)
        self._install(self._modes, indexes, slot_ids, texts, metas, alive, {d: i for i, d in enumerate(slot_ids)})

    def clear(self) -> None:
        """Remove every document and forget the modes and dimensions (the store is fresh again)."""
        with self._lock.write():
            self._reset()  # plain assignments of fresh empty state

    def get(self, ids: Sequence[str]) -> list[Record]:
        """Records of the ids found, in the order asked (unknown ids are skipped)."""
        ids_list = check_ids(ids)
        with self._lock.read():
            out = []
            for doc_id in ids_list:
                slot = self._id_to_slot.get(doc_id)
                if slot is not None:
                    out.append(Record(doc_id, self._texts[slot], copy.deepcopy(self._metas[slot])))
            return out

    def export(self, ids: Sequence[str] | None = None) -> tuple[list[str], M3Output, list[str | None], list[dict]]:
        """Everything stored for ``ids`` (default: all, in insertion order; unknown ids skipped).

        Returns ``(ids, M3Output, texts, metadatas)``; ColBERT vectors come back as float32. The ``bm25`` mode
        has no rows of its own: it is rebuilt from the texts.
        """
        with self._lock.read():
            if ids is None:
                slots = np.flatnonzero(self._alive)
            else:
                wanted = check_ids(ids)
                slots = np.array([self._id_to_slot[i] for i in wanted if i in self._id_to_slot], dtype=np.int64)
            out_ids = [self._slot_ids[s] for s in slots]
            texts = [self._texts[s] for s in slots]
            metas = [copy.deepcopy(self._metas[s]) for s in slots]
            rows: dict[str, Any] = {m: idx.rows(slots) for m, idx in self._indexes.items() if m != "bm25"}
            if "dense" in rows and not len(slots):
                rows["dense"] = np.zeros((0, self.dense_dim or 0), np.float32)
            return out_ids, M3Output(**rows, text=None if rows else list(texts)), texts, metas  # bm25 alone: the texts

    # ------------------------------------------------------------------ search API
    def search(
        self,
        query: str,
        *,
        k: int = 10,
        modes: Sequence[str] | str | None = None,
        weights: Sequence[float] | Mapping[str, float] | None = None,
        fusion: str | None = None,
        candidates: int | Mapping[str, int] | None = None,
        filter: Mapping[str, Any] | Callable[[dict], bool] | None = None,
        ids: Collection[str] | None = None,
        explain: bool = False,
    ) -> list[Hit]:
        """Search with a text query (encoded once, computing only the heads ``modes`` need).

        Args:
            query: the query text (an empty string is searched as is).
            k: how many hits (a positive int); fewer when fewer documents match.
            modes: the modes to search, a subset of the modes the store holds (or one mode name). Default: the
                model's ``default_modes`` restricted to the held modes, else dense, sparse and ColBERT.
            weights: per-mode weights, a sequence aligned with ``modes`` or a dict mode -> weight.
                Default for ``weighted``: the model's recommended weights for exactly this mode set
                (``fusion_weights_by_modes``), else its ``fusion_weights``, else
                :data:`m3_rag.fusion.DEFAULT_WEIGHTS` (bm25: :data:`m3_rag.fusion.DEFAULT_BM25_WEIGHT`);
                1.0 each for ``rrf``/``dbsf``.
            fusion: ``"weighted"``, ``"rrf"`` or ``"dbsf"`` (see :mod:`m3_rag.fusion`); default: the model's
                ``default_fusion``, else ``"weighted"``.
            candidates: per first-stage mode, how many top documents enter the candidate set
                (default ``max(100, k)``; never fewer than ``k``). Dense, sparse and bm25 are first-stage;
                ColBERT is first-stage (brute force) only when searched alone, and otherwise
                rescores the candidates. A dict ``{mode: depth}`` sets the first stages and their
                depths exactly (unpadded). Every candidate is scored exactly in every mode.
            filter: a metadata filter dict (see :mod:`m3_rag.filters`) or a callable
                ``metadata -> bool``, applied before top-k.
            ids: restrict the search to these ids (``None``: no restriction).
            explain: fill ``Hit.explain`` with the matched sparse tokens ``{token: q_w * d_w}`` when
                ``sparse`` is among the searched modes, and the matched BM25 stems ``{"bm25:" + stem:
                contribution}`` when ``bm25`` is (otherwise ``Hit.explain`` stays ``None``).

        Single-mode searches return the exact top-k over the filtered corpus (approximate for
        ``dense_index="hnsw"``). Sparse alone returns only documents sharing a token with the query
        (fewer than ``k`` when fewer match); as a fusion first stage it is padded with zero-score
        documents in insertion order. Ties: score descending, then insertion order.
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be a str; got {type(query).__name__}. Use search_batch for a list.")
        return self.search_batch([query], k=k, modes=modes, weights=weights, fusion=fusion, candidates=candidates,
                                 filter=filter, ids=ids, explain=explain)[0]

    _ENCODER_HINT = "load the store with HybridStore.load(path, encoder) or build it with HybridStore(encoder=...)"  # search_batch comes from EncodedSearchMixin

    _OPTION_NAMES = OPTION_NAMES

    def _options(self, kwargs: Mapping[str, Any]) -> SearchOptions:
        return parse_options(self._modes or self._declared, encoder=self._encoder, **kwargs)

    def _search(self, queries: M3Output, opts: SearchOptions) -> list[list[Hit]]:
        if len(queries) == 0:
            return []
        with self._lock.read():
            if len(self._id_to_slot) == 0 or self._modes is None:
                return [[] for _ in range(len(queries))]
            check_query(queries, opts.modes, {"dense": self.dense_dim, "colbert": self.colbert_dim}, self._sparse_dim)
            return run(_MemoryBackend(self), queries, opts)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the store to the folder ``path`` atomically (npy arrays + JSON, no pickle); see
        :func:`m3_rag.persistence.save_store`."""
        from .persistence import save_store

        save_store(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], encoder: Any | None = None, *, show_progress: bool = True) -> "HybridStore":
        """Load a store written by :meth:`save`.

        Raises ``ValueError`` when the encoder's fingerprint differs from the one recorded, and
        when any file is missing, truncated, tampered with (checksums) or inconsistent.
        """
        from .persistence import load_store

        return load_store(cls, path, encoder, show_progress=show_progress)
