"""``server_fusion=True`` on a Qdrant collection: the plan of :mod:`m3_rag.search.server_fusion` as one
``query_points`` request (``Prefetch`` + ``RrfQuery``/``FusionQuery``). See that module for how it differs from
the client-side pipeline (only ``Hit.score`` does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..fusion import RRF_K
from ..search.server_fusion import hits_from_fused, plan
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
    p = plan(opts)
    prefetch = [m.Prefetch(query=backend._qvec(f, q), using=f, limit=lim, filter=qfilter, params=backend._params(f))
                for f, lim in p.stages]
    sources = list(prefetch)
    if p.rerank is not None:
        mode, lim = p.rerank
        sources.append(m.Prefetch(prefetch=prefetch, query=backend._qvec(mode, q), using=mode, limit=lim))
    if p.fusion == "rrf":
        fq = m.RrfQuery(rrf=m.Rrf(k=RRF_K, weights=list(p.weights)))
    else:
        fq = m.FusionQuery(fusion=m.Fusion.DBSF)
    res = store.client.query_points(
        store.collection, prefetch=sources, query=fq, query_filter=qfilter, limit=p.k, with_payload=True,
        with_vectors=[x for x in ("dense", "sparse") if x in opts.modes] or False,
    ).points
    return hits_from_fused(backend, q, opts, res, PAYLOAD_SEQ)
