"""``server_fusion=True``: RRF or DBSF fused by Qdrant itself (``Prefetch`` + ``RrfQuery``/``FusionQuery``).

Approximate relative to :class:`m3_rag.HybridStore`: Qdrant ranks documents within each prefetch list only,
gives nothing to a document missing from a list, its weighted RRF is ``1 / ((rank+1)/w + k - 1)`` rather
than ``w / (k + rank)``, and its DBSF takes no weights. Only ``Hit.score`` differs: ``Hit.scores`` are
computed exactly by the same backend the pipeline uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..fusion import RRF_K
from ..types import Hit, M3Output
from .schema import PAYLOAD_SEQ

if TYPE_CHECKING:  # pragma: no cover
    from ..search import SearchOptions
    from .backend import QdrantBackend
    from .store import QdrantHybridStore

__all__ = ["search_server_fusion"]


def search_server_fusion(store: "QdrantHybridStore", backend: "QdrantBackend", q: M3Output, opts: "SearchOptions") -> list[Hit]:
    """One query row fused on the server; per-mode scores of the top-k recomputed exactly."""
    m = store._models
    restriction = backend.restrict(opts)
    if restriction is not None and restriction.count == 0:
        return []
    qfilter = backend._flt(restriction)
    stages = list(opts.depths)
    depth = max(opts.depths.values())
    prefetch = [m.Prefetch(query=backend._qvec(f, q), using=f, limit=opts.depths[f], filter=qfilter) for f in stages]
    sources, src_modes = list(prefetch), list(stages)
    if "colbert" in opts.modes and "colbert" not in stages:  # ColBERT ranks the dense+sparse candidates
        sources.append(m.Prefetch(prefetch=prefetch, query=backend._qvec("colbert", q), using="colbert", limit=depth * len(stages)))
        src_modes.append("colbert")
    if opts.fusion == "rrf":
        fq = m.RrfQuery(rrf=m.Rrf(k=RRF_K, weights=[opts.weights[x] for x in src_modes]))
    else:
        if any(opts.weights[x] != 1.0 for x in src_modes):
            raise ValueError("Qdrant's server-side DBSF takes no weights; use server_fusion=False for weighted DBSF")
        fq = m.FusionQuery(fusion=m.Fusion.DBSF)
    res = store.client.query_points(
        store.collection, prefetch=sources, query=fq, query_filter=qfilter, limit=opts.k, with_payload=True,
        with_vectors=[x for x in ("dense", "sparse") if x in opts.modes] or False,
    ).points
    if not res:
        return []
    ranked = sorted(res, key=lambda p: (-p.score, p.payload[PAYLOAD_SEQ]))
    cands = backend._cands(ranked)
    per_mode = {mode: backend.score(mode, q, cands) for mode in opts.modes}
    hits = backend.hits(cands, np.asarray([p.score for p in ranked], dtype=np.float64), per_mode)
    if opts.explain and "sparse" in opts.modes:
        from ..search.pipeline import _explain

        _explain(backend, q.sparse[0], cands, hits)  # type: ignore[index]
    return hits
