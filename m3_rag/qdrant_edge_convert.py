"""Translate qdrant-client request objects (``qdrant_client.models``) into Qdrant Edge's (``qdrant_edge``).

``QdrantHybridStore`` builds its requests with ``qdrant_client.models``; Qdrant Edge (``qdrant-edge-py``, the
Rust engine in-process) has its own, mostly mirrored, classes. This module maps the subset m3-rag sends --
filters (``Filter``, ``FieldCondition`` with ``MatchValue``/``MatchAny``/``MatchExcept``/``MatchText``/
``MatchSubstring``/``Range``, ``IsNullCondition``, ``IsEmptyCondition``, ``HasIdCondition``), query vectors
(dense list, ``SparseVector``, multivector), ``Prefetch`` trees, ``Rrf``/``DBSF`` fusion and ``OrderBy`` -- so
the same request can run on qdrant-client's local mode and on the real engine. Anything else raises
``TypeError`` naming the object: nothing is dropped silently.

Needs both ``qdrant-client`` and ``qdrant-edge-py`` (``pip install "m3-rag[qdrant,qdrant-edge]"``).
"""

from __future__ import annotations

from typing import Any


def _edge() -> Any:
    try:
        import qdrant_edge
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            'Qdrant Edge support needs the qdrant-edge-py package: pip install "m3-rag[qdrant-edge]"'
        ) from exc
    return qdrant_edge


def _models() -> Any:
    try:
        from qdrant_client import models
    except ImportError as exc:  # pragma: no cover
        raise ImportError('this needs qdrant-client: pip install "m3-rag[qdrant]"') from exc
    return models


def _conds(items: Any) -> list[Any] | None:
    if items is None:
        return None
    if not isinstance(items, list):
        items = [items]
    return [convert_condition(c) for c in items]


def convert_filter(flt: Any) -> Any:
    """``qdrant_client.models.Filter`` (or ``None``) -> ``qdrant_edge.Filter`` (or ``None``)."""
    if flt is None:
        return None
    m, qe = _models(), _edge()
    if not isinstance(flt, m.Filter):
        raise TypeError(f"expected a qdrant_client.models.Filter; got {type(flt).__name__}")
    if flt.min_should is not None:
        raise TypeError("Filter.min_should is not translated to Qdrant Edge (m3-rag never sends it)")
    return qe.Filter(must=_conds(flt.must), should=_conds(flt.should), must_not=_conds(flt.must_not))


def _match(match: Any) -> Any:
    m, qe = _models(), _edge()
    if isinstance(match, m.MatchValue):
        return qe.MatchValue(match.value)
    if isinstance(match, m.MatchAny):
        return qe.MatchAny(list(match.any))
    if isinstance(match, m.MatchExcept):
        return qe.MatchExcept(list(match.except_))
    if isinstance(match, m.MatchText):
        return qe.MatchText(match.text)
    if isinstance(match, m.MatchSubstring):
        return qe.MatchSubstring(match.substring)
    raise TypeError(f"match type {type(match).__name__} is not translated to Qdrant Edge")


def convert_condition(cond: Any) -> Any:
    """One qdrant-client condition -> the Qdrant Edge condition."""
    m, qe = _models(), _edge()
    if isinstance(cond, m.Filter):
        return convert_filter(cond)
    if isinstance(cond, m.HasIdCondition):
        return qe.HasIdCondition(set(cond.has_id))
    if isinstance(cond, m.IsNullCondition):
        return qe.IsNullCondition(cond.is_null.key)
    if isinstance(cond, m.IsEmptyCondition):
        return qe.IsEmptyCondition(cond.is_empty.key)
    if isinstance(cond, m.FieldCondition):
        extra = [
            n for n in ("geo_bounding_box", "geo_radius", "geo_polygon", "values_count", "is_empty", "is_null")
            if getattr(cond, n, None) is not None
        ]
        if extra:
            raise TypeError(f"FieldCondition.{extra[0]} is not translated to Qdrant Edge")
        rng = None
        if cond.range is not None:
            if not isinstance(cond.range, m.Range):
                raise TypeError(f"range type {type(cond.range).__name__} is not translated to Qdrant Edge")
            r = cond.range
            rng = qe.RangeFloat(gte=r.gte, gt=r.gt, lte=r.lte, lt=r.lt)
        return qe.FieldCondition(
            key=cond.key, match=_match(cond.match) if cond.match is not None else None, range=rng
        )
    raise TypeError(f"condition type {type(cond).__name__} is not translated to Qdrant Edge")


def convert_vector(vec: Any) -> Any:
    """A query or stored vector: dense list, ``SparseVector`` or multivector (list of lists)."""
    m, qe = _models(), _edge()
    if isinstance(vec, m.SparseVector):
        return qe.SparseVector(list(map(int, vec.indices)), list(map(float, vec.values)))
    if isinstance(vec, dict):
        return {name: convert_vector(v) for name, v in vec.items()}
    if isinstance(vec, list):
        return vec
    raise TypeError(f"vector type {type(vec).__name__} is not translated to Qdrant Edge")


def nearest(vec: Any, using: str) -> Any:
    """``Query.Nearest`` on the named vector ``using``."""
    return _edge().Query.Nearest(convert_vector(vec), using=using)


def convert_fusion(q: Any) -> Any:
    """``RrfQuery``/``FusionQuery`` -> ``Fusion.Rrf(k, weights)``/``Fusion.Dbsf()``."""
    m, qe = _models(), _edge()
    if isinstance(q, m.RrfQuery):
        return qe.Fusion.Rrf(k=int(q.rrf.k if q.rrf.k is not None else 2), weights=q.rrf.weights)
    if isinstance(q, m.FusionQuery):
        if q.fusion == m.Fusion.DBSF:
            return qe.Fusion.Dbsf()
        if q.fusion == m.Fusion.RRF:
            return qe.Fusion.Rrf(k=2)  # qdrant-client/server default k for a bare RRF fusion query
    raise TypeError(f"fusion query {q!r} is not translated to Qdrant Edge")


def convert_prefetch(p: Any) -> Any:
    """``models.Prefetch`` (vector query or nested prefetches) -> ``qdrant_edge.Prefetch``."""
    m, qe = _models(), _edge()
    if not isinstance(p, m.Prefetch):
        raise TypeError(f"expected a qdrant_client.models.Prefetch; got {type(p).__name__}")
    sub = p.prefetch
    if sub is not None and not isinstance(sub, list):
        sub = [sub]
    query = None
    if p.query is not None:
        query = convert_fusion(p.query) if isinstance(p.query, (m.RrfQuery, m.FusionQuery)) else nearest(p.query, p.using)
    return qe.Prefetch(
        limit=int(p.limit), query=query, prefetches=[convert_prefetch(x) for x in sub] if sub else None,
        filter=convert_filter(p.filter), score_threshold=p.score_threshold,
    )


def convert_order_by(o: Any) -> Any:
    """``models.OrderBy`` -> ``qdrant_edge.OrderBy``."""
    m, qe = _models(), _edge()
    direction = None
    if o.direction is not None:
        direction = qe.Direction.Asc if o.direction == m.Direction.ASC else qe.Direction.Desc
    return qe.OrderBy(o.key, direction=direction, start_from=o.start_from)
