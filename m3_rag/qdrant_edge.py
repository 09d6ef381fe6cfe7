"""QdrantEdgeStore: the :class:`~m3_rag.HybridStore` contract on Qdrant Edge, Qdrant's engine in-process.

``qdrant-edge-py`` (pinned ``0.9.0``, extra ``m3-rag[qdrant-edge]``) is Qdrant's Rust engine as a library: a
*shard* in a directory with a write-ahead log, the server's segment, sparse, quantisation and MaxSim code, and
no server. This store keeps one shard per directory and is written incrementally: an ``add`` of ten documents
writes ten points, never the whole index.

Layout of ``path``::

    path/m3_rag_edge.json   format, version, modes, dimensions, ColBERT storage settings, model fingerprint
    path/shard/             the Edge shard (``wal/``, ``segments/``, ``edge_config.json``)
    path/.lock              an exclusive ``flock`` held while a store has the directory open

One point per document, as in :class:`m3_rag.QdrantHybridStore` (same point ids ``uuid5(M3_NAMESPACE, id)``,
same payload keys ``m3_id``/``m3_seq``/``text``/``metadata``): a dense vector ``"dense"`` (dot product), a
sparse vector ``"sparse"`` (no IDF modifier) and a multivector ``"colbert"`` (MaxSim, no HNSW graph).

Search is the shared pipeline (:func:`m3_rag.search.run`) over :class:`EdgeBackend`: the engine finds the
candidates (filters applied before top-k, dense and ColBERT with ``SearchParams(exact=True)`` by default), the
per-mode scores are then computed as ``HybridStore`` computes them (dense: FAISS/numpy float32 inner products of
the stored vectors; sparse: the float64 lexical sum; ColBERT: the engine's float32 MaxSim sum divided by the
number of query tokens), so ids and scores equal ``HybridStore``'s with ``colbert_dtype="fp32"``.

Known engine quirks handled here (see docs/qdrant_edge.md): point ids come back as ``uuid.UUID``; the 0.9.0
binding turns ``MatchValue(True)`` into ``MatchValue(1)``, so a filter comparing with a boolean is evaluated
client-side (like a callable filter); float16 ColBERT storage rounds the *query* to float16 as well (``~1e-4``
from ``HybridStore``'s fp16 scores), which is why the default here is float32.
"""

from __future__ import annotations

import errno
import json
from itertools import chain
import os
import shutil
import functools
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Mapping, Sequence

import numpy as np

from ._rwlock import RWLock
from .search import Candidates, SearchBackend, SearchOptions, parse_options, run
from .search.api import EncodedSearchMixin
from .index.bm25 import BM25_DEFAULTS
from .index.bm25_sparse import BM25_VECTOR, PAYLOAD_BM25_LEN, carry, declare, reopen
from .search.engine_bm25 import EngineBm25
from .search.pipeline import LEXICAL_MODES, exact_top
from .types import MODES, STORE_MODES, Hit, M3Output, Record
from .validation import check_ids, check_query, check_rows, check_texts

if TYPE_CHECKING:  # pragma: no cover
    from .store import HybridStore

__all__ = ["QdrantEdgeStore", "EdgeBackend", "StoreLockedError", "COLBERT_DATATYPES", "COLBERT_QUANTIZATIONS",
           "FORMAT_NAME", "FORMAT_VERSION", "SIDECAR"]

FORMAT_NAME = "m3-rag.QdrantEdgeStore"
#: 2: the header may hold the bm25 mode (written only by stores holding bm25, so older readers refuse those with
#: a clear version error and still read the others, which are written as 1).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
SIDECAR = "m3_rag_edge.json"
SHARD_DIR = "shard"
LOCK_FILE = ".lock"
COLBERT_DATATYPES = ("float32", "float16")
COLBERT_QUANTIZATIONS = (None, "scalar", "binary")

PAYLOAD_ID = "m3_id"
PAYLOAD_SEQ = "m3_seq"
PAYLOAD_TEXT = "text"
PAYLOAD_META = "metadata"
PAYLOAD_COLBERT_EMPTY = "m3_colbert_empty"
_SCROLL_PAGE = 1024


class StoreLockedError(RuntimeError):
    """The directory is already open by another :class:`QdrantEdgeStore` (in this process or another)."""


def _edge() -> Any:
    try:
        import qdrant_edge
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError('QdrantEdgeStore needs qdrant-edge-py: pip install "m3-rag[qdrant-edge]"') from exc
    return qdrant_edge


def _pid(doc_id: str) -> uuid.UUID:
    from .qdrant.store import point_id

    return uuid.UUID(point_id(doc_id))


# ---------------------------------------------------------------------------------------------- filters
class _ClientSide(Exception):
    """Raised while translating a filter that the engine would get wrong (boolean equality)."""


class _EdgeModels:
    """The subset of ``qdrant_client.models`` that :func:`m3_rag.qdrant.filters._translate` builds, mapped to
    Qdrant Edge objects: one filter translation for both Qdrant stores."""

    def __init__(self, qe: Any) -> None:
        self.qe = qe

    def Filter(self, must: Any = None, should: Any = None, must_not: Any = None) -> Any:
        return self.qe.Filter(must=must, should=should, must_not=must_not)

    def PayloadField(self, key: str) -> str:
        return key

    def IsNullCondition(self, is_null: str) -> Any:
        return self.qe.IsNullCondition(is_null)

    def IsEmptyCondition(self, is_empty: str) -> Any:
        return self.qe.IsEmptyCondition(is_empty)

    def FieldCondition(self, key: str, match: Any = None, range: Any = None) -> Any:
        return self.qe.FieldCondition(key=key, match=match, range=range)

    def MatchValue(self, value: Any) -> Any:
        if isinstance(value, bool):  # qdrant-edge-py 0.9.0 sends True as 1: matches no boolean payload
            raise _ClientSide()
        return self.qe.MatchValue(value)

    def MatchSubstring(self, substring: str) -> Any:
        return self.qe.MatchSubstring(substring)

    def Range(self, gte: Any = None, gt: Any = None, lte: Any = None, lt: Any = None) -> Any:
        return self.qe.RangeFloat(gte=gte, gt=gt, lte=lte, lt=lt)

    def HasIdCondition(self, has_id: Any) -> Any:
        return self.qe.HasIdCondition(set(has_id))


def to_edge_filter(flt: Mapping[str, Any]) -> Any | None:
    """Translate a ``HybridStore`` filter dict into a ``qdrant_edge.Filter`` (the same translation, and the
    same documented differences on odd data, as :func:`m3_rag.qdrant.to_qdrant_filter`).

    Returns ``None`` when the filter compares with a boolean: qdrant-edge-py 0.9.0 cannot express that, and
    :class:`QdrantEdgeStore` evaluates such filters client-side instead.
    """
    from .qdrant.filters import _translate

    if not isinstance(flt, Mapping):
        raise TypeError(f"filter must be a dict (or None); got {type(flt).__name__}")
    try:
        return _translate(_EdgeModels(_edge()), flt)
    except _ClientSide:
        return None


# ---------------------------------------------------------------------------------------------- backend
class _Restriction:
    def __init__(self, flt: Any, count: int) -> None:
        self.flt = flt
        self.count = count


class _Pt:
    """An engine result materialised once (the binding builds ``vector``/``payload`` anew on every access)."""

    __slots__ = ("id", "score", "payload", "vector")

    def __init__(self, p: Any) -> None:
        self.id = p.id
        self.score = getattr(p, "score", None)
        self.payload = p.payload
        self.vector = p.vector or {}

    @classmethod
    def of(cls, id: Any, score: Any, payload: Any, vector: dict) -> "_Pt":
        self = cls.__new__(cls)
        self.id, self.score, self.payload, self.vector = id, score, payload, vector
        return self


def _pts(points: Any) -> list[_Pt]:
    return [_Pt(p) for p in points]


def _lexical(q_sparse: Mapping[int, float], svs: Sequence[Any]) -> np.ndarray:
    """HybridStore's lexical scores of each document's sparse vector (``None``: none): per document, the float64
    sum in query-term order of ``float32 weight * query weight`` -- the order ``SparseIndex.full_scores`` adds in."""
    n = len(svs)
    out = np.zeros(n, dtype=np.float64)
    if not n or not q_sparse:
        return out
    terms = np.fromiter((int(t) for t in q_sparse), dtype=np.int64, count=len(q_sparse))
    weights = np.fromiter((float(w) for w in q_sparse.values()), dtype=np.float64, count=len(q_sparse))
    idx = [sv.indices if sv is not None else [] for sv in svs]
    val = [sv.values if sv is not None else [] for sv in svs]
    lens = np.fromiter(map(len, idx), dtype=np.int64, count=n)
    total = int(lens.sum())
    if total == 0:
        return out
    all_idx = np.fromiter(chain.from_iterable(idx), dtype=np.int64, count=total)
    all_val = np.fromiter(chain.from_iterable(val), dtype=np.float32, count=total).astype(np.float64)
    doc_of = np.repeat(np.arange(n), lens)
    order = np.argsort(terms, kind="stable")
    sorted_terms = terms[order]
    pos = np.minimum(np.searchsorted(sorted_terms, all_idx), len(terms) - 1)
    hit = sorted_terms[pos] == all_idx
    M = np.zeros((n, len(terms)), dtype=np.float64)
    M[doc_of[hit], order[pos[hit]]] = all_val[hit]
    for j in range(len(terms)):  # query-term order; adding 0.0 for an absent term changes nothing
        out += M[:, j] * weights[j]
    return out


class EdgeBackend(EngineBm25, SearchBackend):
    """Candidates from an Edge shard for the shared pipeline; keys are point UUIDs, ``seq`` the payload's
    insertion number."""

    #: The engine breaks exact ties in its own (run-dependent) order: fetch past each cut, re-rank by ``seq``.
    tie_margin = 16

    def __init__(self, store: "QdrantEdgeStore", n_docs: int | None = None) -> None:
        self.s = store
        self.n_docs = n_docs
        self.qe = store._qe
        self.shard = store._shard_or_raise()
        self.encoder = store.encoder
        self.params = store._search_params()
        self.bm25_params = store._search_params(bm25=True) if "bm25" in store._modes else None

    # -------------------------------------------------- restriction
    def restrict(self, opts: SearchOptions) -> _Restriction | None:
        qe = self.qe
        must: list[Any] = []
        pids: set[uuid.UUID] | None = None
        if opts.ids is not None:
            pids = {_pid(x) for x in opts.ids}
            if not pids:
                return _Restriction(None, 0)
        if opts.filter is not None:
            spec = opts.filter_spec
            edge = None
            if isinstance(spec, Mapping):
                try:
                    edge = to_edge_filter(spec)
                except (ValueError, TypeError):  # valid (parse_options checked it) but not expressible in Qdrant
                    edge = None  # e.g. equality with a list or dict value, $gt on strings: evaluated here instead
            if edge is None:  # a callable, or a filter the engine cannot express: evaluate it here
                scope = qe.Filter(must=[qe.HasIdCondition(pids)]) if pids is not None else None
                pred = opts.filter
                pids = {r.id for r in self.s._scroll([PAYLOAD_META], flt=scope)
                        if pred((r.payload or {}).get(PAYLOAD_META) or {})}
                if not pids:
                    return _Restriction(None, 0)
            else:
                must.append(edge)
        if pids is not None:
            must.append(qe.HasIdCondition(pids))
        if not must:
            return None
        flt = qe.Filter(must=must)
        return _Restriction(flt, int(self.shard.count(qe.CountRequest(filter=flt, exact=True))))

    def count(self, restriction: _Restriction | None) -> int:
        if restriction is not None:
            return restriction.count
        return self.n_docs if self.n_docs is not None else len(self.s)

    # -------------------------------------------------- helpers
    def _qvec(self, mode: str, q: M3Output) -> Any:
        if mode == "dense":
            return np.asarray(q.dense[0], dtype=np.float32).tolist()  # type: ignore[index]
        if mode == "sparse":
            items = sorted((int(t), float(w)) for t, w in q.sparse[0].items())  # type: ignore[index]
            return self.qe.SparseVector([t for t, _ in items], [w for _, w in items])
        if mode == "bm25":
            return self.qe.SparseVector(*self.s._bm25.query(q.text[0]))  # type: ignore[index]
        return np.asarray(q.colbert[0], dtype=np.float32).tolist()  # type: ignore[index]

    def _params(self, mode: str) -> Any:
        return self.bm25_params if mode == "bm25" else self.params

    # -------------------------------------------------- bm25 engine calls (EngineBm25)
    def _bm25_query(self, vectors: Any, limit: int, flt: Any) -> list[list[Any]]:
        qe = self.qe
        reqs = [qe.QueryRequest(limit=limit, query=qe.Query.Nearest(qe.SparseVector(ids, vals), using=BM25_VECTOR),
                                filter=flt, with_payload=True, with_vector=False, params=self.bm25_params)
                for ids, vals in vectors]
        return [_pts(r) for r in self.shard.query_batch(qe.QueryBatchRequest(reqs))]

    def _bm25_only(self, keys: list[Any]) -> Any:
        return self.qe.Filter(must=[self.qe.HasIdCondition(set(keys))])

    def _bm25_count(self) -> int:
        return self.s._bm25_ready().n_docs  # kept exact by the store's writes (the only writer)

    @staticmethod
    def _flt(restriction: _Restriction | None) -> Any:
        return None if restriction is None else restriction.flt

    def _cands(self, points: list[Any], mode: str | None = None, scores: np.ndarray | None = None) -> Candidates:
        keys = np.empty(len(points), dtype=object)
        keys[:] = [p.id for p in points]
        seq = np.asarray([p.payload[PAYLOAD_SEQ] for p in points], dtype=np.int64)
        c = Candidates(keys, seq, {}, {"points": {p.id: p for p in points}})
        if mode is not None and scores is not None:
            c.scores[mode] = scores
        return c

    @staticmethod
    def _colbert(raw: Sequence[float], n_q: int) -> np.ndarray:
        return (np.asarray(raw, dtype=np.float32) / np.float32(n_q)).astype(np.float32)

    def _request(self, mode: str, q: M3Output, limit: int, flt: Any, with_vector: Any) -> Any:
        return self.qe.QueryRequest(limit=limit, query=self.qe.Query.Nearest(self._qvec(mode, q), using=mode),
                                    filter=flt, with_payload=True, with_vector=with_vector, params=self.params)

    def _zero_fill(self, n: int, exclude: list[Any], flt: Any) -> list[Any]:
        """The first ``n`` documents in insertion order outside ``exclude``: sparse score exactly 0."""
        qe = self.qe
        f = qe.Filter(must=[flt] if flt is not None else None,
                      must_not=[qe.HasIdCondition(set(exclude))] if exclude else None)
        points, _ = self.shard.scroll(qe.ScrollRequest(
            limit=n, filter=f, with_payload=True, with_vector=["sparse"] if "sparse" in self.s._modes else False,
            order_by=qe.OrderBy(PAYLOAD_SEQ, direction=qe.Direction.Asc)))
        return _pts(points)

    # -------------------------------------------------- the pipeline interface
    def first_stage(self, mode: str, Q: M3Output, depth: int, restriction: Any, pad: bool) -> list[Candidates]:
        if mode == "bm25":
            return self._bm25_first_stage(Q, depth, restriction, pad)
        flt = self._flt(restriction)
        rows = [Q[i] for i in range(len(Q))]
        with_vector = [mode] if mode != "colbert" else False
        runnable = [i for i, q in enumerate(rows) if not (mode == "sparse" and not q.sparse[0])]  # type: ignore[index]
        answers: dict[int, list[Any]] = {i: [] for i in range(len(rows))}
        if runnable:
            reqs = [self._request(mode, rows[i], depth, flt, with_vector) for i in runnable]
            for i, res in zip(runnable, self.shard.query_batch(self.qe.QueryBatchRequest(reqs))):
                answers[i] = _pts(res)
        out = []
        for i, q in enumerate(rows):
            res = answers[i]
            if mode == "colbert":
                scores = self._colbert([p.score for p in res], len(q.colbert[0]))  # type: ignore[index]
            elif mode == "dense":
                from .qdrant.backend import _faiss_dense

                X = np.asarray([p.vector["dense"] for p in res], dtype=np.float32)
                scores = _faiss_dense(X, q.dense[0]) if res else np.zeros(0, np.float32)  # type: ignore[index]
            else:
                scores = _lexical(q.sparse[0], [p.vector.get("sparse") for p in res])  # type: ignore[index]
                keep = scores > 0
                res, scores = [p for p, k in zip(res, keep) if k], scores[keep]
                if pad and len(res) < depth:
                    fill = self._zero_fill(depth - len(res), [p.id for p in res], flt)
                    res = res + fill
                    scores = np.concatenate([scores, np.zeros(len(fill))])
            out.append(self._cands(res, mode, scores))
        return out

    def _stage(self, mode: str, Q: M3Output, depth: int, restriction: Any, pad: bool) -> list[Candidates]:
        """``exact_top``; a padded sparse stage takes the exact top of the matching documents first, then the
        zero-score documents in insertion order (the tie rule among zeros) without re-asking the engine."""
        if not pad or mode == "bm25":
            return exact_top(self, mode, Q, depth, restriction, pad=pad)
        out = []
        for i, c in enumerate(exact_top(self, mode, Q, depth, restriction, pad=False)):
            if len(c) < depth:
                fill = self._zero_fill(depth - len(c), c.keys.tolist(), self._flt(restriction))
                if fill:
                    f = self._cands(fill, mode, np.zeros(len(fill)))
                    c.cache["points"].update(f.cache["points"])
                    c = Candidates(np.concatenate([c.keys, f.keys]), np.concatenate([c.seq, f.seq]),
                                   {mode: np.concatenate([c.scores[mode], f.scores[mode]])}, c.cache)
            out.append(c)
        return out

    def candidates(self, Q: M3Output, opts: SearchOptions, restriction: Any) -> list[Candidates]:
        """The union of the first stages per query (each cut by the tie rule), then one batched request that
        returns the union with payloads, dense/sparse vectors and, when ColBERT is searched, its MaxSim."""
        qe = self.qe
        stages = {m: self._stage(m, Q, d, restriction, pad=(m in LEXICAL_MODES and not opts.explicit_depths))
                  for m, d in opts.depths.items()}
        need = [x for x in ("dense", "sparse") if x in opts.modes]
        merged: list[dict[Any, _Pt]] = []
        for i in range(len(Q)):  # what the first stages already fetched: payloads and their own vectors
            known: dict[Any, _Pt] = {}
            for m in opts.depths:
                c = stages[m][i]
                for key in c.keys.tolist():
                    p = c.cache["points"][key]
                    if key in known:
                        known[key].vector.update(p.vector)
                    else:
                        known[key] = _Pt.of(p.id, None, p.payload, dict(p.vector))
            merged.append(known)
        missing: dict[str, set[Any]] = {v: {k for known in merged for k, p in known.items() if v not in p.vector}
                                        for v in need}
        for v, ids in missing.items():  # one request per vector name for everything a stage did not bring
            if ids:
                got = {p.id: p for p in _pts(self.shard.retrieve(list(ids), False, [v]))}
                for known in merged:
                    for k in ids & known.keys():
                        if k in got:
                            known[k].vector[v] = got[k].vector.get(v)
                        else:  # deleted by a concurrent write since the first stage: not a candidate any more
                            del known[k]
        if "colbert" in opts.modes:
            todo = [i for i in range(len(Q)) if merged[i]]
            reqs = [qe.QueryRequest(limit=len(merged[i]), query=qe.Query.Nearest(self._qvec("colbert", Q[i]), using="colbert"),
                                    filter=qe.Filter(must=[qe.HasIdCondition(set(merged[i]))]), with_payload=False,
                                    with_vector=False, params=self.params) for i in todo]
            if reqs:
                for i, res in zip(todo, self.shard.query_batch(qe.QueryBatchRequest(reqs))):
                    for p in res:
                        if p.id in merged[i]:
                            merged[i][p.id].score = p.score
                    for k in [k for k, p in merged[i].items() if p.score is None]:
                        del merged[i][k]  # deleted by a concurrent write since the first stage
        out = []
        for i in range(len(Q)):
            pts = sorted(merged[i].values(), key=lambda p: p.payload[PAYLOAD_SEQ])
            c = self._cands(pts)
            if "colbert" in opts.modes:
                c.scores["colbert"] = self._colbert([p.score for p in pts], len(Q[i].colbert[0]))  # type: ignore[index]
            out.append(c)
        return out

    def score(self, mode: str, q: M3Output, cands: Candidates) -> np.ndarray:
        pts = cands.cache["points"]
        keys = cands.keys.tolist()
        if mode == "dense":
            if not keys:
                return np.zeros(0, dtype=np.float32)
            X = np.asarray([pts[k].vector["dense"] for k in keys], dtype=np.float32)
            return X @ np.asarray(q.dense[0], dtype=np.float32)  # type: ignore[index]
        if mode == "sparse":
            return _lexical(q.sparse[0], [pts[k].vector.get("sparse") for k in keys])  # type: ignore[index]
        if mode == "bm25":
            return self._bm25_scores(q, cands)
        qe = self.qe
        if not keys:
            return np.zeros(0, dtype=np.float32)
        got = self.shard.query(self._request("colbert", q, len(keys), qe.Filter(must=[qe.HasIdCondition(set(keys))]),
                                             False))
        by_id = {p.id: p.score for p in got}
        return self._colbert([by_id.get(k, 0.0) for k in keys], len(q.colbert[0]))  # type: ignore[index]

    def hits(self, cands: Candidates, scores: np.ndarray, per_mode: Mapping[str, np.ndarray]) -> list[Hit]:
        pts = cands.cache["points"]
        scores_l = np.asarray(scores, dtype=np.float64).tolist()
        mode_l = {m: np.asarray(v, dtype=np.float64).tolist() for m, v in per_mode.items()}
        out = []
        for j, key in enumerate(cands.keys.tolist()):
            pl = pts[key].payload
            out.append(Hit(id=pl[PAYLOAD_ID], score=scores_l[j], text=pl.get(PAYLOAD_TEXT),
                           metadata=dict(pl.get(PAYLOAD_META) or {}), scores={m: v[j] for m, v in mode_l.items()}))
        return out

    def matched_terms(self, q_sparse: Mapping[int, float], cands: Candidates) -> list[list[tuple[int, float]]]:
        keys = cands.keys.tolist()
        pts = cands.cache.get("points", {})
        missing = [k for k in keys if k not in pts or not pts[k].vector.get("sparse")]
        fetched = {r.id: r for r in _pts(self.shard.retrieve(missing, False, ["sparse"]))} if missing else {}
        out = []
        for key in keys:
            rec = fetched.get(key, pts.get(key))
            sv = rec.vector.get("sparse") if rec is not None else None
            doc = {} if sv is None else {int(t): float(w) for t, w in zip(sv.indices, sv.values)}
            out.append([(int(t), float(qw) * doc[int(t)]) for t, qw in q_sparse.items() if int(t) in doc])
        return out


# ---------------------------------------------------------------------------------------------- store
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _valid_pool_factor(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _reading(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a reading method under the store's read lock: it never sees a write half done."""

    @functools.wraps(method)
    def wrapper(self: "QdrantEdgeStore", *args: Any, **kwargs: Any) -> Any:
        with self._rw.read():
            return method(self, *args, **kwargs)

    return wrapper


class QdrantEdgeStore(EncodedSearchMixin):
    """The ``HybridStore`` API on a Qdrant Edge shard in the directory ``path``: persistent, incremental,
    larger than RAM if you like, and no server.

    Args:
        path: a directory. Missing or empty: a new store (the shard is created by the first add, which fixes the
            modes, as in ``HybridStore``). Holding a ``QdrantEdgeStore``: it is reopened. Anything else (a file,
            a directory with other content, a bare Edge shard) is refused with ``ValueError``.
        encoder: an ``M3Encoder`` for ``add``/``search``; optional for ``add_encoded``/``search_encoded``. On
            reopen, a model whose fingerprint differs from the recorded one is refused (as ``HybridStore.load``).
        colbert_datatype: ``"float32"`` (default: scores equal ``HybridStore(colbert_dtype="fp32")``) or
            ``"float16"`` (half the storage; the engine also rounds the query tokens to float16, so scores differ
            from ``HybridStore(colbert_dtype="fp16")`` by ~1e-4 relative). Fixed at creation; ``None`` on reopen
            keeps the recorded value, a different value is refused.
        colbert_on_disk: keep the ColBERT token vectors memory-mapped on disk (``Memory.Cold``) instead of cached
            in RAM: for collections whose token vectors do not fit in memory. Fixed at creation.
        colbert_quantization: ``None`` (default), ``"scalar"`` (int8, in RAM, 4x smaller) or ``"binary"`` (32x
            smaller) quantisation of the ColBERT vectors; searches rescore with the original vectors
            (``rescore=True``), so returned scores stay exact. Fixed at creation.
        colbert_pool_factor: pool each document's ColBERT tokens before upsert into at most ``ceil(n / factor)``
            Ward-cluster means, as ``HybridStore(colbert_pool_factor=)`` does (``1``, the default for a new store:
            keep every token; queries are never pooled). Fixed at creation; ``None`` on reopen keeps the recorded
            value, a different value is refused.
        server_fusion: default for ``search(..., server_fusion=)``: RRF/DBSF fused by the engine (``Prefetch`` +
            ``Fusion.Rrf``/``Fusion.Dbsf``), as ``QdrantHybridStore(server_fusion=True)``; approximate in ``Hit.score``
            only (see :mod:`m3_rag.search.server_fusion`).
        exact: send ``SearchParams(exact=True)`` (brute force, the default: exact parity with ``HybridStore``).
            ``False`` lets the engine use an HNSW graph once :meth:`optimize` has built one (approximate dense).
        hnsw_ef: HNSW beam width when ``exact=False``.
        durable: flush the shard (fsync) before every write call returns (default). ``False`` relies on the
            write-ahead log, which survives a killed process but not necessarily a power loss.
        batch_size: points per engine update.
        show_progress: show the encoder's progress bar in ``add``.
        modes: the modes a new store holds (default: those of the first add). ``"bm25"`` must be declared here.
        bm25_language, bm25_stopwords, bm25_k1, bm25_b, bm25_method: the ``bm25`` mode's settings, as for
            ``QdrantHybridStore`` (lucene only; recorded in the header, checked on reopen).

    The ``bm25`` mode is the same sparse vector with the IDF modifier as in ``QdrantHybridStore`` (see
    :mod:`m3_rag.index.bm25_sparse`); IDF is computed over the live documents holding a bm25 vector.

    Only one store may have ``path`` open at a time: a second opener (this process or another) gets
    :class:`StoreLockedError`. Call :meth:`close` (or use ``with``) to release it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        encoder: Any | None = None,
        *,
        colbert_datatype: str | None = None,
        colbert_on_disk: bool | None = None,
        colbert_quantization: str | None = None,
        colbert_pool_factor: int | None = None,
        server_fusion: bool = False,
        exact: bool = True,
        hnsw_ef: int | None = None,
        durable: bool = True,
        batch_size: int = 256,
        show_progress: bool = True,
        modes: Sequence[str] | None = None,
        bm25_language: str | None = BM25_DEFAULTS["language"],
        bm25_stopwords: str | Sequence[str] | None = BM25_DEFAULTS["stopwords"],
        bm25_k1: float = BM25_DEFAULTS["k1"],
        bm25_b: float = BM25_DEFAULTS["b"],
        bm25_method: str = BM25_DEFAULTS["method"],
    ) -> None:
        self._qe = _edge()
        if not isinstance(path, (str, os.PathLike)) or not str(path):
            raise TypeError(f"path must be a directory path (str or os.PathLike); got {type(path).__name__} ({path!r:.60})")
        if encoder is not None and not hasattr(encoder, "encode_queries"):
            raise TypeError(f"encoder must be an m3_rag.M3Encoder; got {type(encoder).__name__}")
        if colbert_datatype is not None and colbert_datatype not in COLBERT_DATATYPES:
            raise ValueError(f"colbert_datatype must be one of {', '.join(COLBERT_DATATYPES)}; got {colbert_datatype!r}")
        if colbert_quantization not in COLBERT_QUANTIZATIONS:
            raise ValueError(f"colbert_quantization must be one of {COLBERT_QUANTIZATIONS}; got {colbert_quantization!r}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
        if hnsw_ef is not None and (not isinstance(hnsw_ef, int) or isinstance(hnsw_ef, bool) or hnsw_ef <= 0):
            raise ValueError(f"hnsw_ef must be a positive int or None; got {hnsw_ef!r}")
        if colbert_pool_factor is not None:
            from .index.pooling import check_pool_factor

            colbert_pool_factor = check_pool_factor(colbert_pool_factor)
        self._declared, self._bm25 = declare(modes, {"language": bm25_language, "stopwords": bm25_stopwords,
                                                     "k1": bm25_k1, "b": bm25_b, "method": bm25_method})
        self._bm25_declared = self._bm25 is not None
        self.path = Path(path)
        self._encoder = encoder
        self.exact = bool(exact)
        self.server_fusion = bool(server_fusion)
        self.hnsw_ef = hnsw_ef
        self.durable = bool(durable)
        self.batch_size = batch_size
        self.show_progress = bool(show_progress)
        self._rw = RWLock()  # searches and reads share it; writes are exclusive
        self._shard: Any = None
        self._lock_fd: int | None = None
        self._closed = False
        self._modes: tuple[str, ...] = ()
        self._dims: dict[str, int] = {}
        self._next_seq = 0
        self._n_docs: int | None = None  # the document count, cached between writes (an exact count is O(n))
        self._fingerprint: str | None = encoder.fingerprint if encoder is not None else None
        self._requested = {"colbert_datatype": colbert_datatype, "colbert_on_disk": colbert_on_disk,
                           "colbert_quantization": colbert_quantization, "colbert_pool_factor": colbert_pool_factor}
        self.colbert_pool_factor: int = colbert_pool_factor or 1
        self._pool_on_add = True  # False while copying rows exported from a store that already pooled them
        self.colbert_datatype = colbert_datatype or "float32"
        self.colbert_on_disk = bool(colbert_on_disk)
        self.colbert_quantization = colbert_quantization
        self._open()

    # ------------------------------------------------------------------ opening
    def _open(self) -> None:
        p = self.path
        if p.exists() and not p.is_dir():
            raise NotADirectoryError(f"{p} is a file; QdrantEdgeStore needs a directory (missing, empty, or a store)")
        sidecar = p / SIDECAR
        if p.is_dir() and not sidecar.exists():
            other = sorted(x.name for x in p.iterdir() if x.name != LOCK_FILE and x.name != f".{SIDECAR}.tmp")
            if other:
                what = "a bare Qdrant Edge shard" if "edge_config.json" in other or "wal" in other else "other files"
                raise ValueError(
                    f"{p} is not a QdrantEdgeStore directory: it holds {what} ({', '.join(other[:5])}"
                    f"{', ...' if len(other) > 5 else ''}) but no {SIDECAR}. Use a new or empty directory."
                )
        try:
            p.mkdir(parents=True, exist_ok=True)
        except PermissionError as exc:
            raise PermissionError(f"cannot create {p}: {exc.strerror}; QdrantEdgeStore needs a writable directory") from exc
        self._lock()
        try:
            if sidecar.exists():
                self._reopen(self._read_sidecar())
        except BaseException:
            self._unlock()
            raise

    def _lock(self) -> None:
        import fcntl

        lock = self.path / LOCK_FILE
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError as exc:
            raise PermissionError(
                f"{self.path} is not writable ({exc.strerror}): QdrantEdgeStore needs write access to its directory "
                "(the engine writes a write-ahead log even for searches). Copy the store to a writable place."
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreLockedError(
                    f"{self.path} is already open by another QdrantEdgeStore (in this or another process); close that "
                    "store first (store.close() or a with-block; in a notebook, close the previous store before re-running "
                    "the cell that opens it). Two writers on one shard are never allowed."
                ) from exc
            raise
        if not os.access(self.path, os.W_OK):
            os.close(fd)
            raise PermissionError(f"{self.path} is not writable: QdrantEdgeStore needs write access to its directory")
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _read_sidecar(self) -> dict[str, Any]:
        f = self.path / SIDECAR
        try:
            meta = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{f} is corrupt: {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise ValueError(f"{f} is not a QdrantEdgeStore header (format {meta.get('format') if isinstance(meta, dict) else None!r})")
        if meta.get("format_version") not in READABLE_VERSIONS:
            raise ValueError(f"{self.path} has format version {meta.get('format_version')!r}; this m3_rag reads versions "
                             f"{READABLE_VERSIONS}. Upgrade m3_rag or re-index.")
        modes = meta.get("modes")
        dims = meta.get("dims")
        if (not isinstance(modes, list) or not modes or any(m not in STORE_MODES for m in modes) or len(set(modes)) != len(modes)
                or not isinstance(dims, dict)
                or any(not isinstance(dims.get(m), int) or dims[m] <= 0 for m in modes if m not in ("sparse", "bm25"))
                or meta.get("colbert_datatype") not in COLBERT_DATATYPES
                or meta.get("colbert_quantization") not in COLBERT_QUANTIZATIONS
                or not _valid_pool_factor(meta.get("colbert_pool_factor", 1))):
            raise ValueError(f"{f} is malformed: modes {modes!r}, dims {dims!r}")
        return meta

    def _reopen(self, meta: dict[str, Any]) -> None:
        from .persistence import check_fingerprint

        modes = tuple(m for m in STORE_MODES if m in meta["modes"])
        dims = {m: int(meta["dims"][m]) for m in modes if m not in ("sparse", "bm25")}
        if "bm25" in modes:
            self._bm25 = reopen(meta.get("bm25"), self._bm25 if self._bm25_declared else None, str(self.path))
        elif self._bm25_declared:
            raise ValueError(f"{self.path} holds modes {modes}, without bm25; open it without modes=, or re-index "
                             "into a new store with bm25 (QdrantEdgeStore.from_store(store, path, modes=...))")
        saved_fp = meta.get("fingerprint")
        check_fingerprint(self.path, saved_fp, self._encoder)
        enc = self._encoder
        if enc is not None:
            if "dense" in dims and enc.dense_dim != dims["dense"]:
                raise ValueError(f"the index has dense dimension {dims['dense']} but the encoder produces {enc.dense_dim}")
            cdim = getattr(enc, "colbert_dim", None)
            if "colbert" in dims and cdim is not None and cdim != dims["colbert"]:
                raise ValueError(f"the index has ColBERT dimension {dims['colbert']} but the encoder produces {cdim}")
        for key in ("colbert_datatype", "colbert_on_disk", "colbert_quantization", "colbert_pool_factor"):
            want, have = self._requested[key], meta.get(key, 1 if key == "colbert_pool_factor" else None)
            if want is not None and want != have:
                raise ValueError(f"{self.path} was created with {key}={have!r}; got {key}={want!r}. Omit it to "
                                 "reopen with the stored setting, or migrate to a new store (QdrantEdgeStore.from_store).")
        self.colbert_datatype = meta["colbert_datatype"]
        self.colbert_on_disk = bool(meta.get("colbert_on_disk"))
        self.colbert_quantization = meta.get("colbert_quantization")
        self.colbert_pool_factor = int(meta.get("colbert_pool_factor", 1))
        if saved_fp is not None:
            self._fingerprint = saved_fp
        shard_dir = self.path / SHARD_DIR
        if not (shard_dir / "edge_config.json").exists():
            # a crash came between the header and the shard (no add had returned): start the shard again
            shutil.rmtree(shard_dir, ignore_errors=True)
            self._shard = self._create_shard(modes, dims)
        else:
            self._check_shard_config(shard_dir, modes, dims)
            try:
                self._shard = self._qe.EdgeShard.load(str(shard_dir), None)
            except Exception as exc:
                raise ValueError(f"the Qdrant Edge shard in {shard_dir} cannot be opened: {exc}") from exc
        self._modes, self._dims = modes, dims
        last, _ = self._shard.scroll(self._qe.ScrollRequest(
            limit=1, with_payload=[PAYLOAD_SEQ], with_vector=False,
            order_by=self._qe.OrderBy(PAYLOAD_SEQ, direction=self._qe.Direction.Desc)))
        self._next_seq = int(last[0].payload[PAYLOAD_SEQ]) + 1 if last else 0

    def _check_shard_config(self, shard_dir: Path, modes: tuple[str, ...], dims: Mapping[str, int]) -> None:
        """The shard's own config (``edge_config.json``) must hold exactly the header's vectors."""
        f = shard_dir / "edge_config.json"
        try:
            cfg = json.loads(f.read_text(encoding="utf-8"))
            vectors = cfg.get("vectors") or {}
            sparse = cfg.get("sparse_vectors") or {}
            found = {name: int(v.get("size")) for name, v in vectors.items()}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"{f} is unreadable or not a Qdrant Edge config: {exc}") from exc
        want = {m: dims[m] for m in modes if m not in ("sparse", "bm25")}
        want_sparse = {m for m in modes if m in ("sparse", "bm25")}
        if found != want or set(sparse) != want_sparse:
            have = dict(found, **{name: "sparse" for name in sparse})
            raise ValueError(
                f"the Qdrant Edge shard in {shard_dir} does not match {SIDECAR}: it holds vectors {have}, the header "
                f"records modes {modes} with dimensions {dict(want)}. The directory was modified; restore it or re-index."
            )

    def _vector_params(self, dims: Mapping[str, int], modes: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        qe = self._qe
        vectors: dict[str, Any] = {}
        if "dense" in modes:
            vectors["dense"] = qe.EdgeVectorParams(size=int(dims["dense"]), distance=qe.Distance.Dot)
        if "colbert" in modes:
            quant = None
            if self.colbert_quantization == "scalar":
                quant = qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, always_ram=True)
            elif self.colbert_quantization == "binary":
                quant = qe.BinaryQuantizationConfig(always_ram=True)
            vectors["colbert"] = qe.EdgeVectorParams(
                size=int(dims["colbert"]), distance=qe.Distance.Dot,
                multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim),
                datatype=qe.VectorStorageDatatype.Float16 if self.colbert_datatype == "float16" else None,
                quantization_config=quant,
                # ColBERT only reranks candidates or brute-forces: an HNSW graph over tokens is wasted work
                hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000),
                memory=qe.Memory.Cold if self.colbert_on_disk else None,
            )
        sparse: dict[str, Any] = {}
        if "sparse" in modes:
            sparse["sparse"] = qe.EdgeSparseVectorParams()
        if "bm25" in modes:  # BM25 tf components; the engine multiplies the query by IDF
            sparse[BM25_VECTOR] = qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)
        return vectors, sparse or None

    def _create_shard(self, modes: tuple[str, ...], dims: Mapping[str, int]) -> Any:
        qe = self._qe
        vectors, sparse = self._vector_params(dims, modes)
        shard = qe.EdgeShard.create(str(self.path / SHARD_DIR), qe.EdgeConfig(vectors=vectors or None, sparse_vectors=sparse))
        # a range index on the insertion sequence: ordered scrolls (zero-score fill, reopen) need it
        shard.update(qe.UpdateOperation.create_field_index(PAYLOAD_SEQ, qe.PayloadSchemaType.Integer))
        shard.flush()
        return shard

    def _create(self, modes: tuple[str, ...], dims: Mapping[str, int]) -> None:
        """Write the header (atomically, fsynced), then create the shard."""
        meta = {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION if "bm25" in modes else 1, "modes": list(modes),
            "dims": {m: int(dims[m]) for m in modes if m not in ("sparse", "bm25")}, "fingerprint": self._fingerprint,
            "colbert_datatype": self.colbert_datatype, "colbert_on_disk": self.colbert_on_disk,
            "colbert_quantization": self.colbert_quantization, "colbert_pool_factor": self.colbert_pool_factor,
            "qdrant_edge_version": _edge_version(),
            **({"bm25": self._bm25.settings()} if "bm25" in modes else {}),
        }
        tmp = self.path / f".{SIDECAR}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / SIDECAR)
        _fsync_dir(self.path)
        self._shard = self._create_shard(modes, dims)
        self._modes, self._dims, self._next_seq = modes, {m: int(dims[m]) for m in modes if m not in ("sparse", "bm25")}, 0
        if self._bm25 is not None:
            self._bm25.load(())

    # ------------------------------------------------------------------ lifecycle
    def _shard_or_raise(self) -> Any:
        if self._closed:
            raise RuntimeError(f"this QdrantEdgeStore ({self.path}) is closed; open it again with QdrantEdgeStore(path)")
        return self._shard

    def flush(self) -> None:
        """Persist every pending change (fsync). Writes already flush unless ``durable=False``."""
        shard = self._shard_or_raise()
        if shard is not None:
            shard.flush()

    def optimize(self) -> bool:
        """Run the engine's segment optimisers (merges, vacuum after deletes, the dense HNSW graph); blocking.
        Searches stay exact unless the store was opened with ``exact=False``. Returns whether anything changed."""
        shard = self._shard_or_raise()
        if shard is None:
            return False
        with self._rw.write():
            changed = bool(shard.optimize())
            shard.flush()
        return changed

    def index_metadata(self, field: str, kind: str) -> None:
        """Create an engine payload index on the metadata field ``field`` so that dict filters on it are served
        from the index instead of a payload scan: ``kind="keyword"`` for string values, ``"number"`` for int/float
        values (one float index: integers are compared numerically, as the filter translation does).

        Results do not change, only filter speed; values of other types in that field are not indexed by this
        index, so index a field with the kind its values have. Needs the store to exist (after the first add).
        """
        from .qdrant.filters import _field_key

        if kind not in ("keyword", "number"):
            raise ValueError(f"kind must be 'keyword' or 'number'; got {kind!r}")
        key = _field_key(field)
        with self._rw.write():
            shard = self._shard_or_raise()
            if shard is None:
                raise ValueError("index_metadata needs documents first: the shard is created by the first add")
            schema = self._qe.PayloadSchemaType.Keyword if kind == "keyword" else self._qe.PayloadSchemaType.Float
            shard.update(self._qe.UpdateOperation.create_field_index(key, schema))
            shard.flush()

    def close(self) -> None:
        """Flush, close the shard and release the directory lock (idempotent)."""
        if self._closed:
            return
        with self._rw.write():
            try:
                if self._shard is not None:
                    self._shard.flush()
                    self._shard.close()
            finally:
                self._shard = None
                self._closed = True
                self._unlock()

    def __enter__(self) -> "QdrantEdgeStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ info
    @property
    def encoder(self) -> Any | None:
        """The encoder used for text input, or ``None``."""
        return self._encoder

    @property
    def modes(self) -> tuple[str, ...]:
        """The modes this store holds (empty until the first add)."""
        return self._modes

    @property
    def bm25_options(self) -> dict[str, Any] | None:
        """The ``bm25`` mode's settings (``None`` when the store does not hold bm25)."""
        return None if self._bm25 is None or "bm25" not in self._modes else dict(self._bm25.options)

    @property
    def fingerprint(self) -> str | None:
        """The model fingerprint recorded with the store (``None`` when built without an encoder)."""
        return self._fingerprint

    @property
    def dense_dim(self) -> int | None:
        """Dense vector dimension (``None`` until dense vectors are added)."""
        return self._dims.get("dense")

    @property
    def colbert_dim(self) -> int | None:
        """ColBERT vector dimension (``None`` until ColBERT vectors are added)."""
        return self._dims.get("colbert")

    @property
    def colbert_dtype(self) -> str:
        """The equivalent ``HybridStore`` codec name (``"fp32"``/``"fp16"``), for migration helpers."""
        return "fp16" if self.colbert_datatype == "float16" else "fp32"

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"docs={len(self)}"
        return f"QdrantEdgeStore({str(self.path)!r}, {state}, modes={self._modes}, colbert_datatype={self.colbert_datatype!r})"

    @_reading
    def __len__(self) -> int:
        shard = self._shard_or_raise()
        if shard is None:
            return 0
        n = self._n_docs
        if n is None:  # this process is the only writer (the directory lock): valid until the next write
            n = self._n_docs = int(shard.count(self._qe.CountRequest(exact=True)))
        return n

    @_reading
    def __contains__(self, id: object) -> bool:
        shard = self._shard_or_raise()
        if not isinstance(id, str) or shard is None:
            return False
        return bool(shard.retrieve([_pid(id)], False, False))

    def _scroll(self, with_payload: Any = True, with_vector: Any = False, flt: Any = None) -> list[Any]:
        """Every point (matching ``flt``), in insertion order when the payload holds the sequence number."""
        shard = self._shard_or_raise()
        if shard is None:
            return []
        out: list[Any] = []
        offset = None
        want_seq = with_payload is True or (isinstance(with_payload, list) and PAYLOAD_SEQ in with_payload)
        while True:
            points, offset = shard.scroll(self._qe.ScrollRequest(
                offset=offset, limit=_SCROLL_PAGE, filter=flt, with_payload=with_payload, with_vector=with_vector))
            out.extend(points)
            if offset is None:
                break
        if want_seq:
            out.sort(key=lambda r: r.payload[PAYLOAD_SEQ])
        return out

    @_reading
    def ids(self) -> list[str]:
        """All document ids, in insertion order (an upserted id counts as inserted at its upsert)."""
        return [r.payload[PAYLOAD_ID] for r in self._scroll([PAYLOAD_ID, PAYLOAD_SEQ])]

    # ------------------------------------------------------------------ writing
    def add(
        self,
        texts: Sequence[str],
        *,
        ids: Sequence[str] | None = None,
        metadatas: Sequence[dict | None] | None = None,
        batch_size: int = 32,
    ) -> list[str]:
        """Encode ``texts`` and upsert them; returns the ids (uuid4 hex when absent). Durable on return.

        Only the heads the store holds are computed (a fresh store computes every head the encoder has).
        """
        self._shard_or_raise()
        declared = self._modes or self._declared
        bm25_only = declared is not None and tuple(declared) == ("bm25",)
        if self._encoder is None and not bm25_only:
            raise ValueError(
                "add() needs an encoder: open the store with QdrantEdgeStore(path, encoder=M3Encoder.from_pretrained(...)), "
                "or encode yourself and call add_encoded()"
            )
        texts = check_texts(texts)
        ids_list, metas = check_rows(len(texts), ids, metadatas)
        if not texts:
            return []
        if bm25_only:  # nothing to encode
            return self._add_checked(M3Output(text=list(texts)), ids_list, texts, metas)
        modes = declared or tuple(self._encoder.available_modes)
        encoded = self._encoder.encode_documents(
            texts, dense="dense" in modes, sparse="sparse" in modes, colbert="colbert" in modes,
            batch_size=batch_size, show_progress_bar=None if self.show_progress else False,
        )
        if len(encoded) != len(ids_list):
            raise ValueError(f"the encoder returned {len(encoded)} rows for {len(ids_list)} texts")
        return self._add_checked(encoded, ids_list, texts, metas)

    def add_encoded(
        self,
        encoded: M3Output,
        *,
        ids: Sequence[str] | None = None,
        texts: Sequence[str | None] | None = None,
        metadatas: Sequence[dict | None] | None = None,
    ) -> list[str]:
        """Upsert precomputed rows; returns the ids. The first add fixes the store's modes (``encoded.modes``);
        later adds must hold at least those modes (extra ones are ignored). Existing ids are replaced and move
        last in insertion order. Durable when it returns (``durable=True``)."""
        self._shard_or_raise()
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

    def _prepare(self, encoded: M3Output, modes: tuple[str, ...], dims: Mapping[str, int]) -> dict[str, Any]:
        """Validate and convert rows with ``HybridStore``'s own index code: the same errors for the same input."""
        from .index.colbert import ColbertIndex
        from .index.dense import DenseIndex
        from .index.sparse import sparse_matrix

        from .validation import check_encoded, check_sparse_dim

        out: dict[str, Any] = {}
        check_encoded(encoded, tuple(m for m in modes if m != "bm25"), dims, sparse_dim=check_sparse_dim(None, self._encoder),
                      fp16_colbert=self.colbert_datatype == "float16")  # the checks every store shares
        if "dense" in modes:
            out["dense"] = DenseIndex(dims["dense"]).prepare(encoded.dense)
        if "sparse" in modes:
            out["sparse"] = sparse_matrix(encoded.sparse, "sparse")  # HybridStore's checks, CSR over raw token ids
        if "colbert" in modes:
            idx = ColbertIndex(dims["colbert"], "fp16" if self.colbert_datatype == "float16" else "fp32",
                               self.colbert_pool_factor if self._pool_on_add else 1)
            packed = idx.prepare(encoded.colbert)
            tokens = packed.parts["tokens"].astype(np.float32)  # float16 storage: rounded like HybridStore's fp16
            out["colbert"] = [tokens[packed.offsets[i] : packed.offsets[i + 1]] for i in range(len(packed.offsets) - 1)]
        return out

    def _add_checked(self, encoded: M3Output, ids: list[str], texts: Sequence[str | None], metas: list[dict]) -> list[str]:
        with self._rw.write():
            self._shard_or_raise()
            modes = self._modes or self._declared or tuple(m for m in MODES if m in encoded.modes)
            if not modes:
                raise ValueError("encoded holds no output (dense, sparse and colbert are all None)")
            if "bm25" in modes and self._bm25 is None:
                raise ValueError("the bm25 mode must be declared: QdrantEdgeStore(path, modes=(..., 'bm25'))")
            for mode in modes:
                if mode != "bm25" and getattr(encoded, mode) is None:
                    raise ValueError(f"encoded has no {mode!r} output but the store holds {modes}; encode with {mode}=True")
            dims = dict(self._dims)
            fresh = not self._modes
            if fresh:
                if "dense" in modes:
                    dims["dense"] = int(encoded.dense.shape[1])  # type: ignore[union-attr]
                if "colbert" in modes:
                    mats = encoded.colbert
                    dims["colbert"] = next((int(m.shape[1]) for m in mats if m.shape[0] > 0), int(mats[0].shape[1]))  # type: ignore[union-attr,index]
            prepared = self._prepare(encoded, modes, dims)
            if fresh:
                self._create(modes, dims)
            old: dict[Any, int] = {}
            if "bm25" in modes:  # the average length includes this write and drops the versions it replaces
                old = self._bm25_lengths([_pid(x) for x in ids])
                prepared["bm25"] = self._bm25_ready().documents(list(texts), replaced=list(old.values()))
            n = len(ids)
            seqs = range(self._next_seq, self._next_seq + n)
            self._next_seq += n
            self._n_docs = None
            self._upsert(prepared, ids, texts, metas, seqs)
            if "bm25" in modes:  # the statistics follow what was written (a repeated id: its last row)
                last = {x: j for j, x in enumerate(ids)}
                lens = prepared["bm25"][1]
                self._bm25.added([lens[j] for j in last.values() if lens[j] is not None])
                self._bm25.removed(list(old.values()))
            if self.durable:
                self._shard.flush()
            return ids

    def _upsert(self, prepared: Mapping[str, Any], ids: list[str], texts: Sequence[str | None], metas: list[dict],
                seqs: Sequence[int]) -> None:
        qe = self._qe
        cdim = self._dims.get("colbert")
        for lo in range(0, len(ids), self.batch_size):
            points = []
            for i in range(lo, min(lo + self.batch_size, len(ids))):
                vec: dict[str, Any] = {}
                payload: dict[str, Any] = {PAYLOAD_ID: ids[i], PAYLOAD_SEQ: int(seqs[i]), PAYLOAD_TEXT: texts[i],
                                           PAYLOAD_META: metas[i]}
                if "dense" in prepared:
                    vec["dense"] = prepared["dense"][i].tolist()
                if "sparse" in prepared:
                    m = prepared["sparse"]
                    a, b = m.indptr[i], m.indptr[i + 1]
                    order = np.argsort(m.indices[a:b], kind="stable")
                    vec["sparse"] = qe.SparseVector(m.indices[a:b][order].tolist(), m.data[a:b][order].tolist())
                if "bm25" in prepared and prepared["bm25"][0][i] is not None:
                    vec[BM25_VECTOR] = qe.SparseVector(*prepared["bm25"][0][i])
                    payload[PAYLOAD_BM25_LEN] = prepared["bm25"][1][i]
                if "colbert" in prepared:
                    mat = prepared["colbert"][i]
                    if len(mat) == 0:  # the engine refuses empty multivectors; a zero token scores 0 under MaxSim
                        vec["colbert"] = [[0.0] * int(cdim)]  # type: ignore[arg-type]
                        payload[PAYLOAD_COLBERT_EMPTY] = True
                    else:
                        vec["colbert"] = mat.tolist()
                points.append(qe.Point(id=_pid(ids[i]), vector=vec, payload=payload))
            self._shard.update(qe.UpdateOperation.upsert_points(points))

    def _bm25_ready(self) -> Any:
        """The bm25 encoder with its length statistics loaded (one payload scroll, once per open)."""
        if not self._bm25.loaded:
            flt = self._qe.Filter(must=[self._qe.HasVectorCondition(BM25_VECTOR)])
            self._bm25.load(int((r.payload or {}).get(PAYLOAD_BM25_LEN, 0)) for r in self._scroll([PAYLOAD_BM25_LEN], flt=flt))
        return self._bm25

    def _bm25_lengths(self, pids: list[Any]) -> dict[Any, int]:
        """Stored bm25 lengths of the points among ``pids`` that have a bm25 entry."""
        got = self._shard.retrieve(list(set(pids)), [PAYLOAD_BM25_LEN], False)
        return {r.id: int(r.payload[PAYLOAD_BM25_LEN]) for r in got if (r.payload or {}).get(PAYLOAD_BM25_LEN) is not None}

    def refresh_bm25(self) -> int:
        """Rewrite every document's bm25 vector with the current average length (the engine keeps the one of each
        document's write): afterwards bm25 scores equal ``HybridStore``'s on the same documents, to float32. One
        pass over the stored texts, O(n); worth it after loading in many small batches. Returns the number of
        documents rewritten."""
        from .index.bm25_sparse import NOT_HELD

        with self._rw.write():
            shard = self._shard_or_raise()
            if shard is None or "bm25" not in self._modes:
                raise ValueError(NOT_HELD)
            enc = self._bm25_ready()
            qe = self._qe
            recs = self._scroll([PAYLOAD_TEXT, PAYLOAD_BM25_LEN], flt=qe.Filter(must=[qe.HasVectorCondition(BM25_VECTOR)]))
            for lo in range(0, len(recs), self.batch_size):
                part = recs[lo:lo + self.batch_size]
                vecs, _ = enc.documents([r.payload.get(PAYLOAD_TEXT) or "" for r in part],
                                        replaced=[int(r.payload[PAYLOAD_BM25_LEN]) for r in part])
                shard.update(qe.UpdateOperation.update_vectors(
                    [qe.PointVectors(r.id, {BM25_VECTOR: qe.SparseVector(*v)}) for r, v in zip(part, vecs)]))
            if self.durable:
                shard.flush()
            return len(recs)

    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents by id; unknown ids are ignored. Returns the number removed. Durable on return."""
        ids_list = check_ids(ids)
        with self._rw.write():
            shard = self._shard_or_raise()
            if shard is None or not ids_list:
                return 0
            found = [r.id for r in shard.retrieve(list({_pid(x) for x in ids_list}), False, False)]
            if not found:
                return 0
            old = self._bm25_lengths(found) if "bm25" in self._modes else {}
            if old:
                self._bm25_ready()
            self._n_docs = None
            shard.update(self._qe.UpdateOperation.delete_points(found))
            if old:
                self._bm25.removed(list(old.values()))
            if self.durable:
                shard.flush()
            return len(found)

    def clear(self) -> None:
        """Remove every document and forget the modes and dimensions (the directory is an empty store again)."""
        with self._rw.write():
            self._shard_or_raise()
            if self._shard is not None:
                self._shard.close()
                self._shard = None
            shutil.rmtree(self.path / SHARD_DIR, ignore_errors=True)
            (self.path / SIDECAR).unlink(missing_ok=True)
            _fsync_dir(self.path)
            self._modes, self._dims, self._next_seq, self._n_docs = (), {}, 0, None
            self._fingerprint = self._encoder.fingerprint if self._encoder is not None else None
            if self._bm25 is not None:
                self._bm25.load(())
                if not self._bm25_declared:  # a reopened store's bm25 is forgotten with its modes
                    self._bm25 = None

    @_reading
    def get(self, ids: Sequence[str]) -> list[Record]:
        """Records of the ids found, in the order asked (unknown ids are skipped)."""
        ids_list = check_ids(ids)
        shard = self._shard_or_raise()
        if shard is None or not ids_list:
            return []
        found = {r.payload[PAYLOAD_ID]: r.payload for r in shard.retrieve(list({_pid(x) for x in ids_list}), True, False)}
        return [Record(x, found[x].get(PAYLOAD_TEXT), dict(found[x].get(PAYLOAD_META) or {})) for x in ids_list if x in found]

    @_reading
    def export(self, ids: Sequence[str] | None = None) -> tuple[list[str], M3Output, list[str | None], list[dict]]:
        """Everything stored for ``ids`` (default: all, in insertion order; unknown ids skipped), for migration.

        Returns ``(ids, M3Output, texts, metadatas)``; ColBERT vectors come back as float32.
        """
        shard = self._shard_or_raise()
        if shard is None:
            return [], M3Output(), [], []
        if ids is None:
            recs = self._scroll(True, True)
        else:
            wanted = check_ids(ids)
            got = {r.payload[PAYLOAD_ID]: r for r in shard.retrieve(list({_pid(x) for x in wanted}), True, True)} if wanted else {}
            recs = [got[x] for x in wanted if x in got]
        out_ids = [r.payload[PAYLOAD_ID] for r in recs]
        texts = [r.payload.get(PAYLOAD_TEXT) for r in recs]
        metas = [dict(r.payload.get(PAYLOAD_META) or {}) for r in recs]
        rows: dict[str, Any] = {}
        if "dense" in self._modes:
            rows["dense"] = np.asarray([r.vector["dense"] for r in recs], dtype=np.float32).reshape(len(recs), self._dims["dense"])
        if "sparse" in self._modes:
            rows["sparse"] = [{} if (sv := (r.vector or {}).get("sparse")) is None
                              else {int(t): float(w) for t, w in zip(sv.indices, sv.values)} for r in recs]
        if "colbert" in self._modes:
            d = self._dims["colbert"]
            rows["colbert"] = [np.zeros((0, d), np.float32) if r.payload.get(PAYLOAD_COLBERT_EMPTY)
                               else np.asarray(r.vector["colbert"], dtype=np.float32).reshape(-1, d) for r in recs]
        return out_ids, M3Output(**rows, text=None if rows else list(texts)), texts, metas  # bm25 alone: the texts

    # ------------------------------------------------------------------ migration
    @classmethod
    def from_store(cls, store: Any, path: str | os.PathLike[str], **kwargs: Any) -> "QdrantEdgeStore":
        """Copy a ``HybridStore`` or ``QdrantHybridStore`` (anything with ``export()``: vectors, texts, metadata,
        ids and order) into a new Edge store at ``path``, without re-encoding.

        ``kwargs`` go to the constructor; the source's encoder is reused unless ``encoder=`` is given, and the
        ColBERT storage type follows the source (``fp16``/``float16`` -> ``"float16"``, else ``"float32"``).
        """
        kwargs.setdefault("encoder", store.encoder)
        kwargs.setdefault("colbert_pool_factor", getattr(store, "colbert_pool_factor", 1))
        carry(store, kwargs)
        if "colbert_datatype" not in kwargs:
            src = getattr(store, "colbert_datatype", None) or getattr(store, "colbert_dtype", "fp32")
            kwargs["colbert_datatype"] = "float16" if src in ("fp16", "float16") else "float32"
        out = cls(path, **kwargs)
        try:
            if out._fingerprint is None:
                out._fingerprint = store.fingerprint
            if len(store):
                ids, encoded, texts, metadatas = store.export()
                out._pool_on_add = getattr(store, "colbert_pool_factor", 1) == 1  # exported tokens are already pooled
                try:
                    out.add_encoded(encoded, ids=ids, texts=texts, metadatas=metadatas)
                finally:
                    out._pool_on_add = True
        except BaseException:
            out.close()
            raise
        return out

    def to_store(self, **store_kwargs: Any) -> "HybridStore":
        """Export into a new in-memory ``HybridStore`` (same ids, order, texts, metadata and vectors).

        ``store_kwargs`` go to the ``HybridStore`` constructor (``encoder`` defaults to this store's).
        """
        from .store import HybridStore

        store_kwargs.setdefault("encoder", self._encoder)
        store_kwargs.setdefault("colbert_dtype", self.colbert_dtype)
        store_kwargs.setdefault("colbert_pool_factor", self.colbert_pool_factor)
        carry(self, store_kwargs)
        out = HybridStore(**store_kwargs)
        out._saved_fingerprint = self._fingerprint
        if len(self):
            ids, encoded, texts, metadatas = self.export()
            out._add_exported(encoded, ids=ids, texts=texts, metadatas=metadatas)  # already pooled here
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a ``HybridStore`` snapshot folder (``HybridStore.load`` reads it). The Edge store itself is
        always persisted; this is for moving back to the in-memory store or for code calling ``save``."""
        self.to_store(show_progress=False).save(path)

    # ------------------------------------------------------------------ search
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
        """Search with a text query; the same arguments and results as :meth:`m3_rag.HybridStore.search`.

        Dict filters run in the engine before top-k; callables (and dict filters comparing with a boolean,
        which qdrant-edge-py 0.9.0 cannot express) are evaluated client-side over the stored metadata and sent
        as an id restriction (still before top-k, but O(collection) per search).
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be a str; got {type(query).__name__}. Use search_batch for a list.")
        return self.search_batch([query], k=k, modes=modes, weights=weights, fusion=fusion, candidates=candidates,
                                 filter=filter, ids=ids, explain=explain)[0]

    _ENCODER_HINT = "open the store with QdrantEdgeStore(path, encoder=...)"  # search_batch comes from EncodedSearchMixin

    def _options(self, kwargs: Mapping[str, Any]) -> SearchOptions:
        from .search.server_fusion import wants_server_fusion

        opts = parse_options(self._modes or None, encoder=self._encoder, extra_names=("server_fusion",), **kwargs)
        wants_server_fusion(opts, self.server_fusion)  # refuses weighted fusion on the engine
        return opts

    @_reading
    def _search(self, queries: M3Output, opts: SearchOptions) -> list[list[Hit]]:
        self._shard_or_raise()
        if len(queries) == 0:
            return []
        n = len(self) if self._shard is not None and self._modes else 0
        if n == 0:
            return [[] for _ in range(len(queries))]
        check_query(queries, opts.modes, self._dims)
        from .search.server_fusion import wants_server_fusion

        backend = EdgeBackend(self, n)
        if wants_server_fusion(opts, self.server_fusion):
            return [self._server_fused(backend, queries[i], opts) for i in range(len(queries))]
        return run(backend, queries, opts)

    def _server_fused(self, backend: EdgeBackend, q: M3Output, opts: SearchOptions) -> list[Hit]:
        """One query row fused by the engine (the plan of :mod:`m3_rag.search.server_fusion`)."""
        from .fusion import RRF_K
        from .search.server_fusion import hits_from_fused, plan

        qe = self._qe
        restriction = backend.restrict(opts)
        if restriction is not None and restriction.count == 0:
            return []
        flt = backend._flt(restriction)
        p = plan(opts)
        stages = [qe.Prefetch(limit=lim, query=qe.Query.Nearest(backend._qvec(f, q), using=f), filter=flt,
                              params=backend._params(f)) for f, lim in p.stages]
        sources = list(stages)
        if p.rerank is not None:
            mode, lim = p.rerank
            sources.append(qe.Prefetch(limit=lim, query=qe.Query.Nearest(backend._qvec(mode, q), using=mode),
                                       prefetches=stages, params=backend.params))
        fusion = qe.Fusion.Rrf(k=RRF_K, weights=list(p.weights)) if p.fusion == "rrf" else qe.Fusion.Dbsf()
        res = self._shard.query(qe.QueryRequest(
            limit=p.k, query=fusion, prefetches=sources, filter=flt, with_payload=True,
            with_vector=[x for x in ("dense", "sparse") if x in opts.modes] or False))
        return hits_from_fused(backend, q, opts, _pts(res), PAYLOAD_SEQ)

    def _search_params(self, bm25: bool = False) -> Any:
        """The engine's search params; ``bm25``: IDF over the live documents holding a bm25 vector (the engine's
        global IDF counts deleted points until the shard is reloaded, and leaves out empty vectors)."""
        qe = self._qe
        if bm25:
            return qe.SearchParams(exact=self.exact, idf=qe.IdfParams(corpus=qe.Filter(must=[qe.HasVectorCondition(BM25_VECTOR)])))
        quant = qe.QuantizationSearchParams(rescore=True) if self.colbert_quantization else None
        return qe.SearchParams(exact=self.exact, hnsw_ef=self.hnsw_ef, quantization=quant)


def _edge_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("qdrant-edge-py")
    except Exception:  # pragma: no cover
        return None
