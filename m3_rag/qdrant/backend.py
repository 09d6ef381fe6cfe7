"""The Qdrant collection's side of the shared search pipeline: candidates and exact per-mode scores.

Qdrant finds the candidates (filters applied on the server before top-k); the per-mode scores are then
computed exactly as :class:`m3_rag.HybridStore` computes them, so fused rankings agree wherever the inputs
agree: dense and sparse from the candidates' stored vectors (float32 inner product, float64 lexical sum),
ColBERT MaxSim on the server (Qdrant sums over query tokens; divided here by their number, in float32).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..index.bm25_sparse import BM25_VECTOR
from ..search import Candidates, SearchBackend, SearchOptions
from ..search.engine_bm25 import EngineBm25
from ..search.pipeline import LEXICAL_MODES, exact_top
from ..types import Hit, M3Output
from .schema import PAYLOAD_ID, PAYLOAD_META, PAYLOAD_SEQ, PAYLOAD_TEXT

if TYPE_CHECKING:  # pragma: no cover
    from .store import QdrantHybridStore

__all__ = ["QdrantBackend"]



class _Restriction:
    def __init__(self, qfilter: Any, count: int) -> None:
        self.qfilter = qfilter
        self.count = count


def _faiss_dense(X: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Dense scores with FAISS's inner-product kernel, as HybridStore's first stage computes them (its float32
    rounding differs from numpy's BLAS in the last bit, enough to swap near-tied neighbours)."""
    import faiss

    index = faiss.IndexFlatIP(X.shape[1])
    index.add(np.ascontiguousarray(X, dtype=np.float32))
    D, I = index.search(np.asarray(q, dtype=np.float32)[None, :], len(X))
    out = np.empty(len(X), dtype=np.float32)
    out[I[0]] = D[0]
    return out


class QdrantBackend(EngineBm25, SearchBackend):
    """Candidates from a Qdrant collection; keys are point ids, ``seq`` is the payload's insertion number."""

    #: Qdrant breaks exact ties in its own order: fetch past each cut and re-rank by insertion order.
    tie_margin = 16

    def __init__(self, store: "QdrantHybridStore") -> None:
        self.s = store
        self.m = store._models
        self.encoder = store.encoder

    # -------------------------------------------------- restriction
    def restrict(self, opts: SearchOptions) -> _Restriction | None:
        qfilter = self.s._build_filter(opts.filter_spec, opts.ids)
        if qfilter is False:
            return _Restriction(None, 0)
        if qfilter is None:
            return None
        return _Restriction(qfilter, int(self.s.client.count(self.s.collection, count_filter=qfilter, exact=True).count))

    def count(self, restriction: _Restriction | None) -> int:
        return len(self.s) if restriction is None else restriction.count

    # -------------------------------------------------- helpers
    def _qvec(self, mode: str, q: M3Output) -> Any:
        if mode == "dense":
            return q.dense[0].astype(np.float32).tolist()  # type: ignore[index]
        if mode == "sparse":
            items = sorted((int(t), float(w)) for t, w in q.sparse[0].items())  # type: ignore[index]
            return self.m.SparseVector(indices=[t for t, _ in items], values=[w for _, w in items])
        if mode == "bm25":
            ids, counts = self.s._bm25.query(q.text[0])  # type: ignore[index]
            return self.m.SparseVector(indices=ids, values=counts)
        return np.asarray(q.colbert[0], dtype=np.float32).tolist()  # type: ignore[index]

    def _params(self, mode: str) -> Any:
        """Search params of a mode's request: bm25's IDF corpus (the live documents holding a bm25 vector)."""
        return self.s._bm25_search_params() if mode == "bm25" else None

    # -------------------------------------------------- bm25 engine calls (EngineBm25)
    def _bm25_query(self, vectors: Any, limit: int, flt: Any) -> list[list[Any]]:
        m = self.m
        params = self._params("bm25")
        reqs = [m.QueryRequest(query=m.SparseVector(indices=ids, values=vals), using=BM25_VECTOR, filter=flt,
                               limit=limit, with_payload=True, params=params) for ids, vals in vectors]
        return [list(r.points) for r in self.s.client.query_batch_points(self.s.collection, requests=reqs)]

    def _bm25_only(self, keys: list[Any]) -> Any:
        return self.m.Filter(must=[self.m.HasIdCondition(has_id=list(keys))])

    def _bm25_count(self) -> int:
        m = self.m
        flt = m.Filter(must=[m.HasVectorCondition(has_vector=BM25_VECTOR)])
        return int(self.s.client.count(self.s.collection, count_filter=flt, exact=True).count)

    @staticmethod
    def _flt(restriction: _Restriction | None) -> Any:
        return None if restriction is None else restriction.qfilter

    def _cands(self, points: list[Any], mode: str | None = None, scores: np.ndarray | None = None) -> Candidates:
        keys = np.empty(len(points), dtype=object)
        keys[:] = [p.id for p in points]
        seq = np.asarray([p.payload[PAYLOAD_SEQ] for p in points], dtype=np.int64)
        c = Candidates(keys, seq, {}, {})
        c.cache["points"] = {p.id: p for p in points}
        if mode is not None and scores is not None:
            c.scores[mode] = scores
        return c

    def _colbert_score(self, raw: np.ndarray, n_q: int) -> np.ndarray:
        return (np.asarray(raw, dtype=np.float32) / np.float32(n_q)).astype(np.float32)

    def _lexical(self, q_sparse: Mapping[int, float], points: list[Any]) -> np.ndarray:
        q_items = list(q_sparse.items())
        vals = []
        for p in points:
            sv = p.vector.get("sparse") if p.vector else None
            doc = {} if sv is None else dict(zip(sv.indices, sv.values))
            acc = 0.0
            for t, w in q_items:  # query-term order, float64: HybridStore's posting-list accumulation
                dw = doc.get(int(t))
                if dw is not None:
                    acc += float(np.float32(dw)) * float(w)
            vals.append(acc)
        return np.asarray(vals, dtype=np.float64)

    def _zero_fill(self, n: int, exclude: list[Any], qfilter: Any) -> list[Any]:
        """Documents without any sparse overlap score exactly 0; the first ``n`` in insertion order."""
        m = self.m
        flt = m.Filter(must=[qfilter] if qfilter is not None else [],
                       must_not=[m.HasIdCondition(has_id=list(exclude))] if exclude else None)
        points, _ = self.s.client.scroll(
            self.s.collection, scroll_filter=flt, limit=n, order_by=m.OrderBy(key=PAYLOAD_SEQ, direction=m.Direction.ASC),
            with_payload=True, with_vectors=["sparse"] if "sparse" in self.s._modes else False,
        )
        return list(points)

    # -------------------------------------------------- the pipeline interface
    def first_stage(self, mode: str, Q: M3Output, depth: int, restriction: Any, pad: bool) -> list[Candidates]:
        if mode == "bm25":
            return self._bm25_first_stage(Q, depth, restriction, pad)
        out = []
        qfilter = self._flt(restriction)
        for i in range(len(Q)):
            q = Q[i]
            res = list(self.s.client.query_points(
                self.s.collection, query=self._qvec(mode, q), using=mode, query_filter=qfilter, limit=depth,
                with_payload=True, with_vectors=[mode] if mode != "colbert" else False,
            ).points)
            if mode == "colbert":
                scores = self._colbert_score([p.score for p in res], len(q.colbert[0]))  # type: ignore[index]
            elif mode == "dense":
                X = np.asarray([p.vector["dense"] for p in res], dtype=np.float32)
                scores = _faiss_dense(X, q.dense[0]) if res else np.zeros(0, np.float32)  # type: ignore[index]
            else:
                scores = self._lexical(q.sparse[0], res)  # type: ignore[index]
                if pad and len(res) < depth:
                    fill = self._zero_fill(depth - len(res), [p.id for p in res], qfilter)
                    res += fill
                    scores = np.concatenate([scores, np.zeros(len(fill))])
            out.append(self._cands(res, mode, scores))
        return out

    def candidates(self, Q: M3Output, opts: SearchOptions, restriction: Any) -> list[Candidates]:
        """The union of the first stages per query (each cut by the tie rule), then one request that fetches the
        union with its dense/sparse vectors and, when ColBERT is searched, its MaxSim scores."""
        m = self.m
        out = []
        stages = {mode: exact_top(self, mode, Q, d, restriction, pad=(mode in LEXICAL_MODES and not opts.explicit_depths))
                  for mode, d in opts.depths.items()}
        vectors = [x for x in ("dense", "sparse") if x in opts.modes] or False
        for i in range(len(Q)):
            q = Q[i]
            ids = sorted({k for mode in opts.depths for k in stages[mode][i].keys.tolist()})
            if not ids:
                out.append(self._cands([]))
                continue
            only = m.Filter(must=[m.HasIdCondition(has_id=ids)])
            if "colbert" in opts.modes:
                pts = self.s.client.query_points(
                    self.s.collection, query=self._qvec("colbert", q), using="colbert", query_filter=only,
                    limit=len(ids), with_payload=True, with_vectors=vectors,
                ).points
            else:
                pts = self.s.client.retrieve(self.s.collection, ids, with_payload=True, with_vectors=vectors)
            pts = sorted(pts, key=lambda p: p.payload[PAYLOAD_SEQ])
            c = self._cands(pts)
            if "colbert" in opts.modes:
                c.scores["colbert"] = self._colbert_score([p.score for p in pts], len(q.colbert[0]))  # type: ignore[index]
            out.append(c)
        return out

    def score(self, mode: str, q: M3Output, cands: Candidates) -> np.ndarray:
        points = [cands.cache["points"][k] for k in cands.keys.tolist()]
        if mode == "dense":
            if not points:
                return np.zeros(0, dtype=np.float32)
            X = np.asarray([p.vector["dense"] for p in points], dtype=np.float32)
            return X @ np.asarray(q.dense[0], dtype=np.float32)  # type: ignore[index]
        if mode == "sparse":
            return self._lexical(q.sparse[0], points)  # type: ignore[index]
        if mode == "bm25":
            return self._bm25_scores(q, cands)
        only = self.m.Filter(must=[self.m.HasIdCondition(has_id=list(cands.keys.tolist()))])
        got = self.s.client.query_points(
            self.s.collection, query=self._qvec("colbert", q), using="colbert", query_filter=only,
            limit=len(points), with_payload=False,
        ).points
        by_id = {p.id: p.score for p in got}
        return self._colbert_score([by_id[k] for k in cands.keys.tolist()], len(q.colbert[0]))  # type: ignore[index]

    def hits(self, cands: Candidates, scores: np.ndarray, per_mode: Mapping[str, np.ndarray]) -> list[Hit]:
        pts = cands.cache["points"]
        scores_l = np.asarray(scores, dtype=np.float64).tolist()
        mode_l = {mo: np.asarray(v, dtype=np.float64).tolist() for mo, v in per_mode.items()}
        out = []
        for j, key in enumerate(cands.keys.tolist()):
            pl = pts[key].payload
            out.append(Hit(id=pl[PAYLOAD_ID], score=scores_l[j], text=pl.get(PAYLOAD_TEXT),
                           metadata=dict(pl.get(PAYLOAD_META) or {}), scores={mo: v[j] for mo, v in mode_l.items()}))
        return out

    def matched_terms(self, q_sparse: Mapping[int, float], cands: Candidates) -> list[list[tuple[int, float]]]:
        keys = list(cands.keys.tolist())
        vecs = {p.id: p.vector.get("sparse") for p in self.s.client.retrieve(self.s.collection, keys, with_vectors=["sparse"])}
        out = []
        for key in keys:
            sv = vecs.get(key)
            doc = {} if sv is None else dict(zip((int(t) for t in sv.indices), (float(w) for w in sv.values)))
            out.append([(int(t), float(qw) * doc[int(t)]) for t, qw in q_sparse.items() if int(t) in doc])
        return out
