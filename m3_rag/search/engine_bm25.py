"""The ``bm25`` mode of an engine backend (Qdrant, Qdrant Edge): first stage, scores and explain, all from engine
queries on the ``bm25`` sparse vector (:mod:`m3_rag.index.bm25_sparse`), the engine applying IDF.

A backend mixes in :class:`EngineBm25` and supplies four small engine calls: :meth:`EngineBm25._bm25_query`
(batched sparse queries), :meth:`EngineBm25._bm25_only` (a filter admitting only some keys),
:meth:`EngineBm25._bm25_count` (documents holding a bm25 vector) and ``_zero_fill`` (non-matching documents in
insertion order). Scores are the engine's: ``HybridStore`` agrees where the average length agrees (see
:mod:`m3_rag.index.bm25_sparse`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..types import M3Output
from .pipeline import Candidates

__all__ = ["EngineBm25"]


class EngineBm25:
    """Mixin for a :class:`~m3_rag.search.SearchBackend` over an engine holding the ``bm25`` sparse vector.

    Needs ``self.s._bm25`` (a :class:`~m3_rag.index.bm25_sparse.Bm25SparseEncoder`), ``self._flt``,
    ``self._cands`` and ``self._zero_fill(n, exclude, flt)`` from the backend."""

    s: Any

    # ------------------------------------------------------------------ engine calls (the backend's)
    def _bm25_query(self, vectors: Sequence[tuple[list[int], list[float]]], limit: int, flt: Any) -> list[list[Any]]:
        """Per sparse query vector, the engine's top ``limit`` points (``.id``, ``.score``, ``.payload``)."""
        raise NotImplementedError

    def _bm25_only(self, keys: list[Any]) -> Any:
        """A filter admitting exactly ``keys``."""
        raise NotImplementedError

    def _bm25_count(self) -> int:
        """Live documents holding a bm25 vector."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the pipeline's bm25 calls
    def _bm25_first_stage(self, Q: M3Output, depth: int, restriction: Any, pad: bool) -> list[Candidates]:
        enc = self.s._bm25
        flt = self._flt(restriction)  # type: ignore[attr-defined]
        vecs = [enc.query(Q.text[i]) for i in range(len(Q))]  # type: ignore[index]
        runnable = [i for i, v in enumerate(vecs) if v[0]]  # no stem: no candidates (not an error)
        answers: dict[int, list[Any]] = {i: [] for i in range(len(Q))}
        if runnable:
            for i, res in zip(runnable, self._bm25_query([vecs[i] for i in runnable], depth, flt)):
                answers[i] = [p for p in res if p.score > 0]
        out = []
        for i in range(len(Q)):
            res = answers[i]
            scores = np.asarray([float(p.score) for p in res], dtype=np.float64)
            if pad and len(res) < depth:
                fill = self._zero_fill(depth - len(res), [p.id for p in res], flt)  # type: ignore[attr-defined]
                res = res + list(fill)
                scores = np.concatenate([scores, np.zeros(len(fill))])
            out.append(self._cands(res, "bm25", scores))  # type: ignore[attr-defined]
        return out

    def _bm25_scores(self, q: M3Output, cands: Candidates) -> np.ndarray:
        keys = cands.keys.tolist()
        vec = self.s._bm25.query(q.text[0])  # type: ignore[index]
        if not keys or not vec[0]:
            return np.zeros(len(keys), dtype=np.float64)
        by_id = {p.id: float(p.score) for p in self._bm25_query([vec], len(keys), self._bm25_only(keys))[0]}
        return np.asarray([by_id.get(k, 0.0) for k in keys], dtype=np.float64)

    def matched_stems(self, query_text: str, cands: Candidates) -> list[dict[str, float]]:
        """Per candidate ``{stem: contribution}``: one engine query per query stem, restricted to the candidates."""
        keys = cands.keys.tolist()
        out: list[dict[str, float]] = [{} for _ in keys]
        stems = list(self.s._bm25.query_stems(query_text).items())
        if not keys or not stems:
            return out
        pos = {k: j for j, k in enumerate(keys)}
        res = self._bm25_query([([t], [c]) for t, (_, c) in stems], len(keys), self._bm25_only(keys))
        for (_, (name, _)), pts in zip(stems, res):
            for p in pts:
                if p.score > 0 and p.id in pos:
                    out[pos[p.id]][name] = float(p.score)
        return [dict(sorted(d.items(), key=lambda kv: -kv[1])) for d in out]

    def bm25_documents(self) -> int | None:
        return self._bm25_count()
