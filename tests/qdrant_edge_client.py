"""A test-only ``QdrantClient`` whose collection lives in a Qdrant Edge shard (the real Rust engine).

``EdgeBackedClient`` overrides exactly the client methods ``QdrantHybridStore`` calls and sends each request,
translated by ``m3_rag.qdrant_edge_convert``, to an ``EdgeShard``. ``QdrantHybridStore`` then runs unchanged
on the engine, so its requests (prefetch dense+sparse with a MaxSim rerank, server-side RRF/DBSF, filters,
zero-score fills ordered by the sequence index, delete) can be compared with qdrant-client's local mode.
Anything the shim does not translate raises ``TypeError``/``NotImplementedError``: nothing is dropped.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import qdrant_edge as qe
from qdrant_client import QdrantClient, models

from m3_rag import qdrant_edge_convert as cv


def _sid(pid: Any) -> Any:
    return str(pid) if isinstance(pid, uuid.UUID) else pid


def _vec_out(vec: Any) -> Any:
    """Edge vectors -> the shapes qdrant-client returns (``models.SparseVector`` for sparse)."""
    if not vec:
        return vec
    out = {}
    for name, v in vec.items():
        if isinstance(v, qe.SparseVector):
            out[name] = models.SparseVector(indices=list(v.indices), values=list(v.values))
        else:
            out[name] = v
    return out


def _point(p: Any) -> SimpleNamespace:
    return SimpleNamespace(
        id=_sid(p.id), score=getattr(p, "score", None), payload=p.payload, vector=_vec_out(p.vector)
    )


def _with_vector(v: Any) -> Any:
    return bool(v) if not isinstance(v, list) else v


class EdgeBackedClient(QdrantClient):
    """One collection, stored in an Edge shard under ``path``."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(location=":memory:")  # unused; keeps isinstance(client, QdrantClient) true
        self.edge_path = str(path)
        self.shard: Any = None
        self.collection: str | None = None

    # ------------------------------------------------------------------ schema
    def collection_exists(self, collection_name: str) -> bool:
        return self.shard is not None and collection_name == self.collection

    def create_collection(self, collection_name: str, vectors_config: Any, sparse_vectors_config: Any = None,
                          metadata: Any = None, **kw: Any) -> bool:
        if kw:
            raise NotImplementedError(f"create_collection options {sorted(kw)} are not translated")
        vectors = {}
        for name, p in vectors_config.items():
            dist = {models.Distance.DOT: qe.Distance.Dot, models.Distance.COSINE: qe.Distance.Cosine}[p.distance]
            mv = None
            if p.multivector_config is not None:
                mv = qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim)
            dt = qe.VectorStorageDatatype.Float16 if p.datatype == models.Datatype.FLOAT16 else None
            if p.quantization_config is not None:
                raise NotImplementedError("quantised collections are not translated by this test shim")
            vectors[name] = qe.EdgeVectorParams(size=p.size, distance=dist, multivector_config=mv, datatype=dt,
                                                on_disk=p.on_disk)
        sparse = None
        if sparse_vectors_config:
            sparse = {name: qe.EdgeSparseVectorParams() for name in sparse_vectors_config}
        self.shard = qe.EdgeShard.create(self.edge_path, qe.EdgeConfig(vectors=vectors, sparse_vectors=sparse))
        self.collection = collection_name
        return True

    def create_payload_index(self, collection_name: str, field_name: str, field_schema: Any = None, **kw: Any) -> Any:
        if not isinstance(field_schema, models.IntegerIndexParams):
            raise NotImplementedError(f"payload index schema {field_schema!r} is not translated")
        self.shard.update(qe.UpdateOperation.create_field_index(field_name, qe.PayloadSchemaType.Integer))

    def delete_collection(self, collection_name: str, **kw: Any) -> bool:
        raise NotImplementedError("delete_collection is not used by the conformance tests")

    def close(self, **kw: Any) -> None:
        if self.shard is not None:
            self.shard.close()
            self.shard = None
        super().close()

    # ------------------------------------------------------------------ writes
    def upload_points(self, collection_name: str, points: Any, **kw: Any) -> None:
        pts = [qe.Point(id=p.id, vector=cv.convert_vector(p.vector), payload=p.payload) for p in points]
        self.shard.update(qe.UpdateOperation.upsert_points(pts))

    def delete(self, collection_name: str, points_selector: Any, **kw: Any) -> Any:
        if not isinstance(points_selector, models.PointIdsList):
            raise NotImplementedError(f"points_selector {type(points_selector).__name__} is not translated")
        self.shard.update(qe.UpdateOperation.delete_points(list(points_selector.points)))

    # ------------------------------------------------------------------ reads
    def count(self, collection_name: str, count_filter: Any = None, exact: bool = True, **kw: Any) -> Any:
        return SimpleNamespace(count=self.shard.count(qe.CountRequest(filter=cv.convert_filter(count_filter), exact=exact)))

    def retrieve(self, collection_name: str, ids: Any, with_payload: Any = True, with_vectors: Any = False,
                 **kw: Any) -> list:
        return [_point(r) for r in self.shard.retrieve(list(ids), with_payload, _with_vector(with_vectors))]

    def scroll(self, collection_name: str, scroll_filter: Any = None, limit: int = 10, order_by: Any = None,
               offset: Any = None, with_payload: Any = True, with_vectors: Any = False, **kw: Any) -> tuple:
        req = qe.ScrollRequest(
            offset=offset, limit=limit, filter=cv.convert_filter(scroll_filter), with_payload=with_payload,
            with_vector=_with_vector(with_vectors), order_by=cv.convert_order_by(order_by) if order_by else None,
        )
        points, nxt = self.shard.scroll(req)
        return [_point(r) for r in points], _sid(nxt)

    @staticmethod
    def _query(query: Any, using: Any) -> Any:
        if query is None:
            return None
        if isinstance(query, (models.RrfQuery, models.FusionQuery)):
            return cv.convert_fusion(query)
        return cv.nearest(query, using)

    def _request(self, *, query: Any = None, using: Any = None, prefetch: Any = None, flt: Any = None,
                 limit: int = 10, with_payload: Any = False, with_vectors: Any = False) -> Any:
        if prefetch is not None and not isinstance(prefetch, list):
            prefetch = [prefetch]
        return qe.QueryRequest(
            limit=limit, query=self._query(query, using),
            prefetches=[cv.convert_prefetch(p) for p in prefetch] if prefetch else None,
            filter=cv.convert_filter(flt), with_payload=with_payload, with_vector=_with_vector(with_vectors),
        )

    def query_points(self, collection_name: str, query: Any = None, using: Any = None, prefetch: Any = None,
                     query_filter: Any = None, limit: int = 10, with_payload: Any = False, with_vectors: Any = False,
                     **kw: Any) -> Any:
        if kw:
            raise NotImplementedError(f"query_points options {sorted(kw)} are not translated")
        req = self._request(query=query, using=using, prefetch=prefetch, flt=query_filter, limit=limit,
                            with_payload=with_payload, with_vectors=with_vectors)
        return SimpleNamespace(points=[_point(p) for p in self.shard.query(req)])

    def query_batch_points(self, collection_name: str, requests: Any, **kw: Any) -> list:
        reqs = [
            self._request(query=r.query, using=r.using, prefetch=r.prefetch, flt=r.filter, limit=r.limit,
                          with_payload=r.with_payload, with_vectors=r.with_vector)
            for r in requests
        ]
        res = self.shard.query_batch(qe.QueryBatchRequest(reqs))
        return [SimpleNamespace(points=[_point(p) for p in pts]) for pts in res]
