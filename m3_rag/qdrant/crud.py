"""Writing, reading and deleting the points of a QdrantHybridStore: upserts in batches, get, ids, export, clear."""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TypeVar

import numpy as np

from ..index.bm25_sparse import BM25_VECTOR, PAYLOAD_BM25_LEN
from ..index.pooling import pool_tokens
from ..types import M3Output, Record
from ..validation import check_encoded, check_ids, check_rows, check_texts
from .schema import PAYLOAD_COLBERT_EMPTY, PAYLOAD_ID, PAYLOAD_META, PAYLOAD_SEQ, PAYLOAD_TEXT, QdrantWriteError, point_id

if TYPE_CHECKING:  # pragma: no cover
    from ..encoder import M3Encoder

__all__ = ["CrudMixin", "serialised"]

_F = TypeVar("_F", bound=Callable[..., Any])


def serialised(fn: _F) -> _F:
    """Run the method under the store's ``_lock``: a re-entrant lock for a local-mode client (qdrant-client's
    local mode has no locking of its own), a no-op context for a server client (thread-safe by itself)."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return fn(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class CrudMixin:
    """Point-level reads and writes (part of QdrantHybridStore; relies on its schema state and settings)."""

    client: Any
    collection: str
    _models: Any
    _encoder: "M3Encoder | None"
    colbert_datatype: str
    colbert_pool_factor: int
    batch_size: int
    show_progress: bool
    max_retries: int
    _modes: tuple[str, ...]
    _dims: dict[str, int]
    _next_seq: int
    _seq_lock: threading.Lock
    _sparse_dim: int | None
    _declared: tuple[str, ...] | None
    _bm25: Any

    def _create(self, modes: Sequence[str], dims: Mapping[str, int]) -> None: ...  # SchemaMixin's

    def _bm25_ready(self) -> Any:
        """The bm25 encoder with its length statistics loaded (one payload scroll, once per store object)."""
        if not self._bm25.loaded:
            m = self._models
            pts = self._scroll(with_payload=[PAYLOAD_BM25_LEN], flt=m.Filter(must=[m.HasVectorCondition(has_vector=BM25_VECTOR)]))
            self._bm25.load(int((p.payload or {}).get(PAYLOAD_BM25_LEN, 0)) for p in pts)
        return self._bm25

    def _bm25_lengths(self, pids: list[str]) -> dict[str, int]:
        """Stored bm25 lengths of the points among ``pids`` that have a bm25 entry."""
        got = self.client.retrieve(self.collection, sorted(set(pids)), with_payload=[PAYLOAD_BM25_LEN])
        return {p.id: int(p.payload[PAYLOAD_BM25_LEN]) for p in got if (p.payload or {}).get(PAYLOAD_BM25_LEN) is not None}

    @serialised
    def _exists(self) -> bool:
        return bool(self._modes) and self.client.collection_exists(self.collection)

    @serialised
    def __len__(self) -> int:
        if not self._exists():
            return 0
        return int(self.client.count(self.collection, exact=True).count)

    @serialised
    def __contains__(self, id: object) -> bool:
        if not isinstance(id, str) or not self._exists():
            return False
        return bool(self.client.retrieve(self.collection, [point_id(id)], with_payload=False))

    def _scroll(self, *, with_payload: Any = True, with_vectors: Any = False, flt: Any = None) -> list[Any]:
        """All points (matching ``flt``); in insertion order when the payload includes the sequence number."""
        out: list[Any] = []
        offset = None
        while True:
            points, offset = self.client.scroll(
                self.collection,
                scroll_filter=flt,
                limit=max(self.batch_size, 256),
                offset=offset,
                with_payload=with_payload,
                with_vectors=with_vectors,
            )
            out.extend(points)
            if offset is None:
                break
        if with_payload is True or (isinstance(with_payload, list) and PAYLOAD_SEQ in with_payload):
            out.sort(key=lambda p: p.payload[PAYLOAD_SEQ])
        return out

    @serialised
    def ids(self) -> list[str]:
        """All document ids, in insertion order."""
        if not self._exists():
            return []
        return [p.payload[PAYLOAD_ID] for p in self._scroll(with_payload=[PAYLOAD_ID, PAYLOAD_SEQ])]

    # ------------------------------------------------------------------ writing
    def add(
        self,
        texts: Sequence[str],
        *,
        ids: Sequence[str] | None = None,
        metadatas: Sequence[dict] | None = None,
        batch_size: int = 32,
    ) -> list[str]:
        """Encode ``texts`` with the encoder and upsert them; returns the ids (generated UUID4 hex when not given)."""
        heads = self._modes or self._declared or (self._encoder.available_modes if self._encoder is not None else ())
        vector_heads = tuple(m for m in heads if m != "bm25")
        if self._encoder is None and (vector_heads or not heads):
            raise ValueError("QdrantHybridStore.add needs an encoder; pass encoder= or use add_encoded")
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not a single string; wrap it: add([text])")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str; got {type(t).__name__}")
        ids_l, metas = self._check_rows(len(texts), ids, metadatas)
        if not texts:
            return []
        if not vector_heads:  # a bm25-only collection: nothing to encode
            return self.add_encoded(M3Output(text=list(texts)), ids=ids_l, texts=texts, metadatas=metas)
        encoded = self._encoder.encode_documents(
            texts,
            dense="dense" in heads,
            sparse="sparse" in heads,
            colbert="colbert" in heads,
            batch_size=batch_size,
            show_progress_bar=self.show_progress and len(texts) > 256,
        )
        return self.add_encoded(encoded, ids=ids_l, texts=texts, metadatas=metas)

    @staticmethod
    def _check_rows(
        n: int, ids: Sequence[str] | None, metadatas: Sequence[dict] | None
    ) -> tuple[list[str], list[dict]]:
        return check_rows(n, ids, metadatas)  # the same validation and JSON normalisation as HybridStore

    def _colbert_rows(self, mats: list[np.ndarray]) -> tuple[list[list[list[float]]], list[bool]]:
        dim = self._dims["colbert"]
        out, empty = [], []
        for mat in mats:
            arr = np.asarray(mat, dtype=np.float32).reshape(-1, dim) if len(mat) else np.zeros((0, dim), np.float32)
            if self.colbert_pool_factor > 1 and arr.shape[0] > 1:
                arr = pool_tokens(arr, self.colbert_pool_factor)
            if self.colbert_datatype == "float16":
                arr = arr.astype(np.float16).astype(np.float32)
            if arr.shape[0] == 0:
                out.append(np.zeros((1, dim), dtype=np.float32).tolist())  # MaxSim with a zero vector scores 0
                empty.append(True)
            else:
                out.append(arr.tolist())
                empty.append(False)
        return out, empty

    @serialised
    def add_encoded(
        self,
        encoded: M3Output,
        *,
        ids: Sequence[str] | None = None,
        texts: Sequence[str | None] | None = None,
        metadatas: Sequence[dict] | None = None,
    ) -> list[str]:
        """Upsert pre-encoded documents in batches of ``batch_size``; returns their ids.

        The first call on a new collection creates it with the modes ``encoded`` holds (extra modes in later
        calls are ignored). Existing ids are replaced and move last in insertion order, as in ``HybridStore``.

        Raises:
            QdrantWriteError: when a batch fails after the client's retries; ``failed_ids`` lists every id not
                written (that batch and all later ones).
        """
        if not isinstance(encoded, M3Output):
            raise TypeError(f"encoded must be an M3Output; got {type(encoded).__name__}")
        n = len(encoded)
        ids_l, metas = self._check_rows(n, ids, metadatas)
        if texts is None:
            texts_l: list[str | None] = [None] * n
        else:
            texts_l = check_texts(texts, allow_none=True)  # the same checks (and messages) as HybridStore
            if len(texts_l) != n:
                raise ValueError(f"got {len(texts_l)} texts for {n} documents; pass one text (or None) per document")
        if n == 0:
            return []
        vector_modes = tuple(x for x in (self._modes or self._declared or encoded.modes) if x != "bm25")
        check_encoded(encoded, vector_modes, self._dims, sparse_dim=self._sparse_dim,
                      fp16_colbert=self.colbert_datatype == "float16")
        if not self._exists():
            dims = {}
            if encoded.dense is not None:
                dims["dense"] = int(encoded.dense.shape[1])
            if encoded.colbert is not None:
                widths = {int(np.asarray(c).shape[1]) for c in encoded.colbert if np.asarray(c).ndim == 2}
                if len(widths) != 1:
                    raise ValueError(f"colbert rows have inconsistent widths {sorted(widths)}")
                dims["colbert"] = widths.pop()
            self._create(self._declared or encoded.modes, dims)
        missing = [x for x in self._modes if x != "bm25" and x not in encoded.modes]
        if missing:
            raise ValueError(
                f"encoded lacks modes {missing} that collection {self.collection!r} holds {self._modes}; "
                "encode with those heads"
            )
        if "dense" in self._modes and encoded.dense.shape[1] != self._dims["dense"]:
            raise ValueError(
                f"dense vectors have dimension {encoded.dense.shape[1]}; collection {self.collection!r} holds "
                f"{self._dims['dense']}"
            )
        if "colbert" in self._modes:
            for i, c in enumerate(encoded.colbert):
                if len(c) and c.shape[1] != self._dims["colbert"]:
                    raise ValueError(
                        f"colbert row {i} has dimension {c.shape[1]}; collection {self.collection!r} holds "
                        f"{self._dims['colbert']}"
                    )
        bm25 = None
        if "bm25" in self._modes:  # the average length includes this write and drops the versions it replaces
            old = self._bm25_lengths([point_id(x) for x in ids_l])
            last = {point_id(x): j for j, x in enumerate(ids_l)}  # a repeated id: only its last row is stored
            vecs, lens = self._bm25_ready().documents(texts_l, replaced=list(old.values()))
            bm25 = (vecs, lens, old, last)
        # every written row gets the next sequence number: an upserted id moves last, as in HybridStore
        with self._seq_lock:
            seqs = list(range(self._next_seq, self._next_seq + n))
            self._next_seq += n
        self._upload(encoded, ids_l, texts_l, metas, list(range(n)), seqs, bm25)
        return ids_l

    def _upload(
        self,
        encoded: M3Output,
        ids: list[str],
        texts: list[str | None],
        metas: list[dict],
        rows: list[int],
        seqs: list[int],
        bm25: Any = None,
    ) -> None:
        from tqdm.auto import tqdm

        m = self._models
        batches = [list(range(s, min(s + self.batch_size, len(rows)))) for s in range(0, len(rows), self.batch_size)]
        show = self.show_progress and len(batches) > 1
        bar = tqdm(total=len(rows), desc="qdrant upsert", unit="doc", disable=not show)
        try:
            for b, batch in enumerate(batches):
                sel = [rows[j] for j in batch]
                colbert, empty = self._colbert_rows([encoded.colbert[i] for i in sel]) if "colbert" in self._modes else (None, None)
                points = []
                for pos, (j, i) in enumerate(zip(batch, sel)):
                    vec: dict[str, Any] = {}
                    if "dense" in self._modes:
                        vec["dense"] = encoded.dense[i].tolist()
                    if "sparse" in self._modes:
                        items = sorted((int(t), float(w)) for t, w in encoded.sparse[i].items())
                        vec["sparse"] = m.SparseVector(indices=[t for t, _ in items], values=[w for _, w in items])
                    if colbert is not None:
                        vec["colbert"] = colbert[pos]
                    payload = {PAYLOAD_ID: ids[i], PAYLOAD_SEQ: seqs[j], PAYLOAD_TEXT: texts[i], PAYLOAD_META: metas[i]}
                    if bm25 is not None and bm25[0][i] is not None:
                        vec[BM25_VECTOR] = m.SparseVector(indices=bm25[0][i][0], values=bm25[0][i][1])
                        payload[PAYLOAD_BM25_LEN] = bm25[1][i]
                    if empty is not None and empty[pos]:
                        payload[PAYLOAD_COLBERT_EMPTY] = True
                    points.append(m.PointStruct(id=point_id(ids[i]), vector=vec, payload=payload))
                try:
                    self.client.upload_points(
                        self.collection, points, batch_size=len(points), max_retries=self.max_retries, wait=True
                    )
                except Exception as exc:
                    failed = [ids[rows[j]] for later in batches[b:] for j in later]
                    shown = ", ".join(failed[:20]) + (f", ... ({len(failed)} in all)" if len(failed) > 20 else "")
                    raise QdrantWriteError(
                        f"upsert into Qdrant collection {self.collection!r} failed after {self.max_retries} retries "
                        f"({type(exc).__name__}: {exc}); {len(failed)} ids were not written: {shown}. "
                        "The earlier batches were written; retry add/add_encoded with the failed ids.",
                        failed,
                    ) from exc
                if bm25 is not None:  # the statistics follow what was written
                    vecs, lens, old, last = bm25
                    stored = [i for i in sel if last[point_id(ids[i])] == i]
                    self._bm25.added([lens[i] for i in stored if lens[i] is not None])
                    self._bm25.removed([old.pop(point_id(ids[i])) for i in sel if point_id(ids[i]) in old])
                bar.update(len(points))
        finally:
            bar.close()

    @serialised
    def refresh_bm25(self) -> int:
        """Rewrite every document's bm25 vector with the current average length (Qdrant keeps the one of each
        document's write): afterwards bm25 scores equal ``HybridStore``'s on the same documents, to float32. One
        pass over the stored texts, O(n); worth it after loading in many small batches. Returns the number of
        documents rewritten."""
        from ..index.bm25_sparse import NOT_HELD

        if not self._exists() or "bm25" not in self._modes:
            raise ValueError(NOT_HELD)
        m = self._models
        enc = self._bm25_ready()
        pts = self._scroll(with_payload=[PAYLOAD_TEXT, PAYLOAD_BM25_LEN],
                           flt=m.Filter(must=[m.HasVectorCondition(has_vector=BM25_VECTOR)]))
        for lo in range(0, len(pts), self.batch_size):
            part = pts[lo:lo + self.batch_size]
            vecs, _ = enc.documents([p.payload.get(PAYLOAD_TEXT) or "" for p in part],
                                    replaced=[int(p.payload[PAYLOAD_BM25_LEN]) for p in part])
            self.client.update_vectors(self.collection, points=[
                m.PointVectors(id=p.id, vector={BM25_VECTOR: m.SparseVector(indices=v[0], values=v[1])})
                for p, v in zip(part, vecs)], wait=True)
        return len(pts)

    @serialised
    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents by id; unknown ids are ignored. Returns how many were removed."""
        ids = check_ids(ids, ordered=False)
        pids = sorted({point_id(x) for x in ids})
        if not pids or not self._exists():
            return 0
        found = self.client.retrieve(self.collection, pids, with_payload=[PAYLOAD_BM25_LEN])
        if not found:
            return 0
        if "bm25" in self._modes:
            self._bm25_ready()
        self.client.delete(
            self.collection, points_selector=self._models.PointIdsList(points=[p.id for p in found]), wait=True
        )
        if "bm25" in self._modes:
            self._bm25.removed([int(p.payload[PAYLOAD_BM25_LEN]) for p in found
                                if (p.payload or {}).get(PAYLOAD_BM25_LEN) is not None])
        return len(found)

    @serialised
    def get(self, ids: Sequence[str]) -> list[Record]:
        """Stored records for the ids found, in the order asked."""
        ids = check_ids(ids)
        if not ids or not self._exists():
            return []
        pids = [point_id(x) for x in ids]
        found = {
            p.payload[PAYLOAD_ID]: p
            for p in self.client.retrieve(self.collection, sorted(set(pids)), with_payload=True)
        }
        return [self._record(found[x].payload) for x in ids if x in found]

    @staticmethod
    def _record(payload: Mapping[str, Any]) -> Record:
        return Record(id=payload[PAYLOAD_ID], text=payload.get(PAYLOAD_TEXT), metadata=dict(payload.get(PAYLOAD_META) or {}))

    @serialised
    def clear(self) -> None:
        """Delete every document: the collection is dropped and, like a fresh ``HybridStore``, the modes are
        forgotten. With an encoder the collection is recreated at once with the encoder's modes."""
        if self.client.collection_exists(self.collection):
            self.client.delete_collection(self.collection)
        self._modes, self._dims, self._next_seq = (), {}, 0
        if self._bm25 is not None:
            self._bm25.load(())
            if not self._bm25_declared:  # a reopened collection's bm25: forgotten with its modes
                self._bm25 = None
        if self._encoder is not None:
            self._create(self._declared or self._encoder.available_modes, self._encoder_dims(self._encoder))

    @serialised
    def export(
        self, ids: Sequence[str] | None = None
    ) -> tuple[list[str], M3Output, list[str | None], list[dict]]:
        """Everything stored (or the ``ids`` found, in that order), with vectors, for migration and MMR.

        ColBERT matrices come back as ``float32``; the sparse dicts map token id to weight.
        """
        if not self._exists():
            return [], M3Output(), [], []
        if ids is None:
            points = self._scroll(with_payload=True, with_vectors=True)
        else:
            if isinstance(ids, str):
                raise TypeError("ids must be a list of strings, not a single string")
            ids = list(ids)
            pids = [point_id(x) for x in ids]
            got = {p.payload[PAYLOAD_ID]: p for p in self.client.retrieve(self.collection, sorted(set(pids)), with_payload=True, with_vectors=True)}
            points = [got[x] for x in ids if x in got]
        out_ids = [p.payload[PAYLOAD_ID] for p in points]
        texts = [p.payload.get(PAYLOAD_TEXT) for p in points]
        metas = [dict(p.payload.get(PAYLOAD_META) or {}) for p in points]
        dense = sparse = colbert = None
        if "dense" in self._modes:
            dense = np.array([p.vector["dense"] for p in points], dtype=np.float32).reshape(len(points), self._dims["dense"])
        if "sparse" in self._modes:
            sparse = []
            for p in points:
                sv = p.vector.get("sparse")
                sparse.append({} if sv is None else {int(t): float(w) for t, w in zip(sv.indices, sv.values)})
        if "colbert" in self._modes:
            colbert = []
            for p in points:
                if p.payload.get(PAYLOAD_COLBERT_EMPTY):
                    colbert.append(np.zeros((0, self._dims["colbert"]), dtype=np.float32))
                else:
                    colbert.append(np.asarray(p.vector["colbert"], dtype=np.float32))
        bm25_only = dense is None and sparse is None and colbert is None  # the rows are the texts
        return out_ids, M3Output(dense=dense, sparse=sparse, colbert=colbert, text=list(texts) if bm25_only else None), texts, metas
