"""``server_fusion=True`` for engine backends: the fusion request plan and the hits, shared by every Qdrant backend.

The engine fuses (Qdrant's ``Prefetch`` + RRF/DBSF); this module decides what is prefetched and how it is fused
(:func:`plan`), and turns the engine's fused points into hits whose per-mode ``Hit.scores`` are computed exactly
by the backend (:func:`hits_from_fused`). Approximate relative to :class:`m3_rag.HybridStore`: the engine ranks
documents within each prefetch list only, gives nothing to a document missing from a list, its weighted RRF is
``1 / ((rank+1)/w + k - 1)`` rather than ``w / (k + rank)``, and its DBSF takes no weights. Only ``Hit.score``
differs from the client-side pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..types import Hit, M3Output
from .options import SearchOptions
from .pipeline import SearchBackend, _explain, _explain_bm25

__all__ = ["FusionPlan", "wants_server_fusion", "plan", "hits_from_fused"]


@dataclass(frozen=True)
class FusionPlan:
    """What the engine is asked: prefetch ``stages`` (mode, limit); optionally ``rerank`` = (mode, limit), a
    prefetch ranking the union of the stages by that mode (ColBERT); then ``fusion`` (``"rrf"``/``"dbsf"``) of
    ``sources`` (the stages, then the rerank) with ``weights`` (RRF only), top ``k``."""

    stages: tuple[tuple[str, int], ...]
    rerank: tuple[str, int] | None
    fusion: str
    sources: tuple[str, ...]
    weights: tuple[float, ...]
    k: int


def wants_server_fusion(opts: SearchOptions, default: bool) -> bool:
    """Whether this search runs fused on the engine (``server_fusion`` option, else the store's ``default``);
    weighted fusion of several modes is refused: it is computed exactly client-side."""
    server = opts.extra.get("server_fusion")
    server = default if server is None else bool(server)
    if server and opts.fusion == "weighted" and len(opts.modes) > 1:
        raise ValueError("server_fusion=True supports fusion='rrf' or 'dbsf'; weighted fusion is computed exactly client-side")
    return server and opts.fusion in ("rrf", "dbsf") and len(opts.modes) > 1


def plan(opts: SearchOptions) -> FusionPlan:
    """The request plan of one fused search (``ValueError`` for DBSF with weights other than 1)."""
    stages = tuple((m, int(d)) for m, d in opts.depths.items())
    depth = max(opts.depths.values())
    rerank = None
    sources = [m for m, _ in stages]
    if "colbert" in opts.modes and "colbert" not in opts.depths:  # ColBERT ranks the dense+sparse candidates
        rerank = ("colbert", depth * len(stages))
        sources.append("colbert")
    weights = tuple(float(opts.weights[x]) for x in sources)
    if opts.fusion == "dbsf" and any(w != 1.0 for w in weights):
        raise ValueError("Qdrant's server-side DBSF takes no weights; use server_fusion=False for weighted DBSF")
    return FusionPlan(stages, rerank, opts.fusion, tuple(sources), weights, opts.k)


def hits_from_fused(backend: SearchBackend, q: M3Output, opts: SearchOptions, points: Sequence[Any], seq_key: str) -> list[Hit]:
    """Hits from the engine's fused ``points`` (each with ``score`` and ``payload``), ordered by the tie rule
    (fused score, then the insertion order in ``payload[seq_key]``), with every searched mode's score computed exactly by ``backend``."""
    if not points:
        return []
    ranked = sorted(points, key=lambda p: (-p.score, p.payload[seq_key]))
    cands = backend._cands(ranked)  # type: ignore[attr-defined]
    per_mode = {mode: backend.score(mode, q, cands) for mode in opts.modes}
    hits = backend.hits(cands, np.asarray([p.score for p in ranked], dtype=np.float64), per_mode)
    if opts.explain and "sparse" in opts.modes:
        _explain(backend, q.sparse[0], cands, hits)  # type: ignore[index]
    if opts.explain and "bm25" in opts.modes:
        _explain_bm25(backend, q.text[0], cands, hits)  # type: ignore[index]
    return hits
