"""QdrantHybridStore: the :class:`~m3_rag.store.HybridStore` contract over one Qdrant collection.

One point per document holds all three BGE-M3 outputs natively:

- ``"dense"``: a named dense vector (``dot`` by default -- M3 vectors are L2-normalised, so dot = cosine and
  the stored values stay bit-identical to the in-memory store's; ``cosine`` is available);
- ``"sparse"``: a sparse vector with **no** IDF modifier (M3 lexical weights are already learned);
- ``"colbert"``: a multivector compared with ``MAX_SIM`` (dot product per token pair), float16 by default,
  optionally on disk and/or scalar/binary quantised; no HNSW graph (it is only ever a reranker or brute force).

The payload holds the original string id (``m3_id``), an insertion sequence number (``m3_seq``: stable
tie-breaking and insertion order, as in ``HybridStore``), the ``text`` and the ``metadata`` dict.
Point ids are ``uuid5(M3_NAMESPACE, id)``: the same string id always maps to the same point.

Search (default, ``server_fusion=False``) reproduces ``HybridStore`` -- same candidates, same scores, same
fusion, same tie-breaking:

1. the first stages run on the server with the filter applied before top-k: the top ``candidates`` of dense and
   of sparse (ColBERT alone is brute force); the sparse stage is topped up with zero-score documents in
   insertion order when fewer than ``candidates`` documents share a token with the query, as ``HybridStore`` does;
2. in the same request, the candidate union is re-ranked with ColBERT ``MAX_SIM`` on the server
   (``prefetch`` dense+sparse, ``query`` on the multivector: one query), and returned with payloads and the
   dense/sparse vectors;
3. dense and sparse scores are computed client-side from those vectors exactly as ``HybridStore`` computes them
   (float32 inner product; float64 lexical sum), ColBERT = Qdrant's sum over query tokens / their number;
4. weighted/RRF/DBSF fusion over the candidate set with :mod:`m3_rag.fusion` (the same functions), top-k with
   ties broken by insertion order.

``server_fusion=True`` fuses RRF/DBSF on the server (``Prefetch`` + ``RrfQuery``/``FusionQuery``): less data
moved, but *approximate* relative to ``HybridStore``: Qdrant ranks documents within each prefetch list only and
gives nothing to a document missing from a list, its weighted RRF is ``1 / ((rank+1)/w + k - 1)`` rather than
``w / (k + rank)``, and its DBSF takes no weights. Only ``Hit.score`` differs: ``Hit.scores`` stay exact.

Where scores can still differ from ``HybridStore`` in the last float32 bit (which can swap near-exact ties):
single-mode dense search under a filter admitting <= 25% of the documents (``HybridStore`` then scores with
numpy over the admitted rows, this store with FAISS's kernel, as ``HybridStore`` does otherwise); ColBERT when
``HybridStore`` stores fp32 or int8 while this store holds float16 (pass ``colbert_datatype="float32"`` to match
fp32); and a server's approximate HNSW for the first stages (local mode is always exact).
"""

from __future__ import annotations

import threading
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Mapping, Sequence

import numpy as np

from ..validation import check_rows
from ..types import MODES, Hit, M3Output, Record
from ..search.api import EncodedSearchMixin

if TYPE_CHECKING:  # pragma: no cover
    from qdrant_client import QdrantClient

    from ..encoder import M3Encoder
    from ..store import HybridStore

__all__ = ["QdrantHybridStore", "QdrantWriteError", "point_id", "to_qdrant_filter", "M3_NAMESPACE"]

#: Namespace of the UUID5 point ids: ``point_id(doc_id) == str(uuid.uuid5(M3_NAMESPACE, doc_id))``.
M3_NAMESPACE = uuid.UUID("6a1f3c2e-8f0b-5d4e-9c71-3b2a1d0e4f59")

PAYLOAD_ID = "m3_id"
PAYLOAD_SEQ = "m3_seq"
PAYLOAD_TEXT = "text"
PAYLOAD_META = "metadata"
PAYLOAD_COLBERT_EMPTY = "m3_colbert_empty"
METADATA_KEY = "m3_rag"
FORMAT_VERSION = 1

DENSE_DISTANCES = ("cosine", "dot")
COLBERT_QUANTIZATIONS = (None, "scalar", "binary")
COLBERT_DATATYPES = ("float32", "float16")


class QdrantWriteError(RuntimeError):
    """An upsert failed part-way. ``failed_ids`` lists the ids that were not written."""

    def __init__(self, message: str, failed_ids: list[str]) -> None:
        super().__init__(message)
        self.failed_ids = failed_ids


def _qdrant() -> tuple[Any, Any]:
    try:
        import qdrant_client
        from qdrant_client import models
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            'QdrantHybridStore needs qdrant-client: pip install "m3-rag[qdrant]"'
        ) from exc
    return qdrant_client, models


def point_id(doc_id: str) -> str:
    """The Qdrant point id of a document id: a deterministic UUID5 string."""
    if not isinstance(doc_id, str):
        raise TypeError(f"document ids must be str; got {type(doc_id).__name__} ({doc_id!r:.50})")
    return str(uuid.uuid5(M3_NAMESPACE, doc_id))


from .filters import to_qdrant_filter  # noqa: E402


class QdrantHybridStore(EncodedSearchMixin):
    """The ``HybridStore`` API over a Qdrant collection holding dense, sparse and ColBERT vectors.

    Args:
        client_or_url_or_path: a ready ``QdrantClient``; a server URL (``"http://host:6333"``); ``":memory:"``
            (embedded, in memory); or a folder path (embedded local mode, persisted on disk).
        collection: the collection name. It is created on first use with the modes of ``encoder`` (or of the
            first ``add_encoded``). An existing collection is validated and refused if its vectors do not match.
        encoder: an ``M3Encoder`` for ``add``/``search``; optional for ``add_encoded``/``search_encoded``.
        dense_distance: ``"dot"`` (default) or ``"cosine"``: identical rankings for M3's L2-normalised vectors;
            ``dot`` keeps the stored vectors unchanged (``cosine`` renormalises them).
        colbert_on_disk: keep the ColBERT multivectors on disk (memory-mapped) on a server.
        colbert_quantization: ``None`` (default), ``"scalar"`` (int8, 4x smaller, ``always_ram``) or ``"binary"``
            (32x smaller) quantisation of the ColBERT vectors on a server. Quantised search on a server rescoring
            with the originals is the Qdrant default; local mode ignores quantisation (exact scores).
        colbert_datatype: ``"float16"`` (default; what ``HybridStore(colbert_dtype="fp16")`` stores, so scores
            match) or ``"float32"``. With float16 the vectors are rounded to float16 before upload, so local mode
            and a server hold the same values.
        batch_size: points per upsert request.
        show_progress: show a tqdm bar while upserting more than one batch (and the encoder's bar in ``add``).
        max_retries: retries per upsert batch on a server (``QdrantClient.upload_points``).
        server_fusion: default for ``search(..., server_fusion=)``; see the module docstring.
    """

    def __init__(
        self,
        client_or_url_or_path: "QdrantClient | str | Path",
        collection: str,
        encoder: "M3Encoder | None" = None,
        *,
        dense_distance: str = "dot",
        colbert_on_disk: bool = False,
        colbert_quantization: str | None = None,
        colbert_datatype: str = "float16",
        batch_size: int = 256,
        show_progress: bool = True,
        max_retries: int = 3,
        server_fusion: bool = False,
    ) -> None:
        qdrant_client, models = _qdrant()
        self._models = models
        if dense_distance not in DENSE_DISTANCES:
            raise ValueError(f"dense_distance must be one of {DENSE_DISTANCES}; got {dense_distance!r}")
        if colbert_quantization not in COLBERT_QUANTIZATIONS:
            raise ValueError(f"colbert_quantization must be one of {COLBERT_QUANTIZATIONS}; got {colbert_quantization!r}")
        if colbert_datatype not in COLBERT_DATATYPES:
            raise ValueError(f"colbert_datatype must be one of {COLBERT_DATATYPES}; got {colbert_datatype!r}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0; got {max_retries!r}")
        if not isinstance(collection, str) or not collection:
            raise ValueError(f"collection must be a non-empty string; got {collection!r}")
        self.client, self._owns_client = self._make_client(qdrant_client, client_or_url_or_path)
        self.collection = collection
        self._encoder = encoder
        self.dense_distance = dense_distance
        self.colbert_on_disk = bool(colbert_on_disk)
        self.colbert_quantization = colbert_quantization
        self.colbert_datatype = colbert_datatype
        self.batch_size = batch_size
        self.show_progress = bool(show_progress)
        self.max_retries = max_retries
        self.server_fusion = bool(server_fusion)
        self._modes: tuple[str, ...] = ()
        self._dims: dict[str, int] = {}
        self._fingerprint: str | None = encoder.fingerprint if encoder is not None else None
        self._next_seq = 0
        self._seq_lock = threading.Lock()
        if self.client.collection_exists(collection):
            self._load_existing()
        elif encoder is not None:
            self._create(encoder.available_modes, self._encoder_dims(encoder))

    @staticmethod
    def _encoder_dims(encoder: "M3Encoder") -> dict[str, int]:
        dims = {"dense": int(encoder.dense_dim)}
        if encoder.colbert_dim is not None:
            dims["colbert"] = int(encoder.colbert_dim)
        return dims

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _make_client(qdrant_client: Any, target: Any) -> tuple[Any, bool]:
        if isinstance(target, qdrant_client.QdrantClient):
            return target, False
        if isinstance(target, Path):
            return qdrant_client.QdrantClient(path=str(target)), True
        if isinstance(target, str):
            if target == ":memory:":
                return qdrant_client.QdrantClient(location=":memory:"), True
            if target.startswith(("http://", "https://")):
                return qdrant_client.QdrantClient(url=target), True
            if target:
                return qdrant_client.QdrantClient(path=target), True
        raise TypeError(
            "client_or_url_or_path must be a QdrantClient, a URL ('http://localhost:6333'), ':memory:' or a folder "
            f"path; got {type(target).__name__} ({target!r:.60})"
        )

    def _colbert_params(self, dim: int) -> Any:
        m = self._models
        quant = None
        if self.colbert_quantization == "scalar":
            quant = m.ScalarQuantization(scalar=m.ScalarQuantizationConfig(type=m.ScalarType.INT8, always_ram=True))
        elif self.colbert_quantization == "binary":
            quant = m.BinaryQuantization(binary=m.BinaryQuantizationConfig(always_ram=True))
        return m.VectorParams(
            size=dim,
            distance=m.Distance.DOT,
            multivector_config=m.MultiVectorConfig(comparator=m.MultiVectorComparator.MAX_SIM),
            on_disk=self.colbert_on_disk or None,
            quantization_config=quant,
            datatype=m.Datatype.FLOAT16 if self.colbert_datatype == "float16" else None,
            # candidates are always prefetched by dense/sparse; an HNSW graph over token vectors is wasted work
            hnsw_config=m.HnswConfigDiff(m=0),
        )

    def _create(self, modes: Sequence[str], dims: Mapping[str, int]) -> None:
        m = self._models
        modes = tuple(x for x in MODES if x in modes)
        if not modes:
            raise ValueError("cannot create a collection with no modes; the encoded input holds no dense/sparse/colbert")
        vectors: dict[str, Any] = {}
        if "dense" in modes:
            dist = m.Distance.COSINE if self.dense_distance == "cosine" else m.Distance.DOT
            vectors["dense"] = m.VectorParams(size=int(dims["dense"]), distance=dist)
        if "colbert" in modes:
            vectors["colbert"] = self._colbert_params(int(dims["colbert"]))
        sparse = {"sparse": m.SparseVectorParams(modifier=None)} if "sparse" in modes else None
        meta = {
            METADATA_KEY: {
                "format_version": FORMAT_VERSION,
                "modes": list(modes),
                "fingerprint": self._fingerprint,
                "colbert_datatype": self.colbert_datatype,
            }
        }
        self.client.create_collection(
            self.collection, vectors_config=vectors, sparse_vectors_config=sparse, metadata=meta
        )
        with warnings.catch_warnings():  # local mode warns that payload indexes are a no-op there
            warnings.filterwarnings("ignore", message="Payload indexes have no effect")
            # a range index on the insertion sequence: ordered scrolls (ids(), zero-score fill) on a server
            self.client.create_payload_index(
                self.collection,
                PAYLOAD_SEQ,
                field_schema=m.IntegerIndexParams(type=m.IntegerIndexType.INTEGER, lookup=False, range=True),
            )
        self._modes = modes
        self._dims = {k: int(v) for k, v in dims.items() if k in modes}
        self._next_seq = 0

    def _mismatch(self, what: str, expected: Any, actual: Any, fix: str) -> ValueError:
        return ValueError(
            f"Qdrant collection {self.collection!r} does not match this QdrantHybridStore: {what} expected "
            f"{expected!r}, found {actual!r}. {fix}"
        )

    def _load_existing(self) -> None:
        m = self._models
        info = self.client.get_collection(self.collection)
        params = info.config.params
        vectors = params.vectors if isinstance(params.vectors, Mapping) else {}
        sparse = params.sparse_vectors or {}
        other = "Use another collection name, or delete this collection first."
        if params.vectors is not None and not isinstance(params.vectors, Mapping):
            raise self._mismatch("vectors", "named vectors dense/colbert", "one unnamed vector", other)
        modes: list[str] = []
        dims: dict[str, int] = {}
        unknown = sorted((set(vectors) - {"dense", "colbert"}) | (set(sparse) - {"sparse"}))
        if unknown:
            raise self._mismatch("vector names", ["dense", "sparse", "colbert"], unknown, other)
        if "dense" in vectors:
            p = vectors["dense"]
            want = m.Distance.COSINE if self.dense_distance == "cosine" else m.Distance.DOT
            if p.distance != want:
                raise self._mismatch(
                    "dense distance", want.value, p.distance.value,
                    f"Pass dense_distance={p.distance.value.lower()!r}, or use another collection name.",
                )
            if p.multivector_config is not None:
                raise self._mismatch("dense vector kind", "single vector", "multivector", other)
            modes.append("dense")
            dims["dense"] = int(p.size)
        if "sparse" in sparse:
            mod = sparse["sparse"].modifier
            if mod not in (None, m.Modifier.NONE):
                raise self._mismatch(
                    "sparse modifier", None, getattr(mod, "value", mod),
                    "M3 lexical weights are learned and must not be IDF-rescaled. " + other,
                )
            modes.append("sparse")
        if "colbert" in vectors:
            p = vectors["colbert"]
            mv = p.multivector_config
            if mv is None or mv.comparator != m.MultiVectorComparator.MAX_SIM:
                raise self._mismatch(
                    "colbert multivector comparator", "max_sim",
                    None if mv is None else mv.comparator.value, other,
                )
            if p.distance != m.Distance.DOT:
                raise self._mismatch("colbert distance", "Dot", p.distance.value, other)
            modes.append("colbert")
            dims["colbert"] = int(p.size)
        if not modes:
            raise self._mismatch("vectors", ["dense", "sparse", "colbert"], [], other)
        enc = self._encoder
        if enc is not None:
            if "dense" in dims and dims["dense"] != enc.dense_dim:
                raise self._mismatch("dense dimension", enc.dense_dim, dims["dense"], "Use the encoder that built it. " + other)
            if "colbert" in dims and dims["colbert"] != enc.colbert_dim:
                raise self._mismatch("colbert dimension", enc.colbert_dim, dims["colbert"], "Use the encoder that built it. " + other)
            missing = [x for x in modes if x not in enc.available_modes]
            if missing:
                raise self._mismatch("encoder modes", modes, list(enc.available_modes), "Use an encoder with these heads.")
        meta = ((info.config.metadata or {}).get(METADATA_KEY)) or {}
        stored_fp = meta.get("fingerprint")
        if enc is not None and stored_fp is not None and stored_fp != enc.fingerprint:
            raise self._mismatch(
                "encoder fingerprint", enc.fingerprint, stored_fp,
                "The collection was built with a different model; search it with that model or re-index.",
            )
        if stored_fp is not None:
            self._fingerprint = stored_fp
        if meta.get("colbert_datatype") in COLBERT_DATATYPES:
            self.colbert_datatype = meta["colbert_datatype"]
        self._modes = tuple(x for x in MODES if x in modes)
        self._dims = dims
        last, _ = self.client.scroll(
            self.collection,
            limit=1,
            order_by=m.OrderBy(key=PAYLOAD_SEQ, direction=m.Direction.DESC),
            with_payload=[PAYLOAD_SEQ],
        )
        self._next_seq = int(last[0].payload[PAYLOAD_SEQ]) + 1 if last else 0

    @classmethod
    def from_store(
        cls,
        store: "HybridStore",
        client_or_url_or_path: "QdrantClient | str | Path",
        collection: str,
        **kwargs: Any,
    ) -> "QdrantHybridStore":
        """Copy a ``HybridStore`` (vectors, texts, metadata, ids, order) into a Qdrant collection, without re-encoding.

        ``kwargs`` go to the constructor; the store's encoder is reused unless ``encoder=`` is given.
        """
        kwargs.setdefault("encoder", store.encoder)
        if "colbert_datatype" not in kwargs:
            dtype = getattr(store, "colbert_dtype", "fp16")
            kwargs["colbert_datatype"] = "float32" if dtype == "fp32" else "float16"
        q = cls(client_or_url_or_path, collection, **kwargs)
        if q._fingerprint is None:
            q._fingerprint = store.fingerprint
        if len(store) == 0:
            return q
        ids, encoded, texts, metadatas = store.export()
        q.add_encoded(encoded, ids=ids, texts=texts, metadatas=metadatas)
        return q

    def to_store(self, **store_kwargs: Any) -> "HybridStore":
        """Export this collection into a new in-memory ``HybridStore`` (same ids, order, texts, metadata, vectors).

        ``store_kwargs`` go to the ``HybridStore`` constructor (``encoder`` defaults to this store's encoder).
        """
        from ..store import HybridStore

        store_kwargs.setdefault("encoder", self._encoder)
        if "colbert_dtype" not in store_kwargs and "colbert" in self._modes:
            store_kwargs["colbert_dtype"] = "fp16" if self.colbert_datatype == "float16" else "fp32"
        store = HybridStore(**store_kwargs)
        if len(self) == 0:
            return store
        ids, encoded, texts, metadatas = self.export()
        store.add_encoded(encoded, ids=ids, texts=texts, metadatas=metadatas)
        return store

    def save(self, path: str | Path) -> None:
        """Write a snapshot of the collection as a ``HybridStore`` folder (``HybridStore.load`` reads it).

        Qdrant persists the collection itself (server, or local path mode); this is for moving a collection back to
        the in-memory store, or for code written against ``HybridStore.save`` (e.g. LlamaIndex's ``persist``).
        """
        self.to_store(show_progress=False).save(path)

    def close(self, close_client: bool | None = None) -> None:
        """Release the client.

        Ownership rule: a client this store created (from a URL, ``":memory:"`` or a path) is closed; a
        ``QdrantClient`` you passed in stays open for you to reuse, unless ``close_client=True``. Closing is
        needed before the same local path can be opened again (local mode locks its folder).
        """
        if close_client if close_client is not None else self._owns_client:
            self.client.close()

    def __enter__(self) -> "QdrantHybridStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ properties
    @property
    def encoder(self) -> "M3Encoder | None":
        """The encoder used by ``add`` and ``search`` (``None`` for pre-encoded use only)."""
        return self._encoder

    @property
    def modes(self) -> tuple[str, ...]:
        """The modes the collection holds (empty until the collection exists)."""
        return self._modes

    @property
    def fingerprint(self) -> str | None:
        """The encoder fingerprint recorded in the collection metadata."""
        return self._fingerprint

    def __repr__(self) -> str:
        return f"QdrantHybridStore(collection={self.collection!r}, modes={self._modes}, size={len(self)})"

    def _exists(self) -> bool:
        return bool(self._modes) and self.client.collection_exists(self.collection)

    def __len__(self) -> int:
        if not self._exists():
            return 0
        return int(self.client.count(self.collection, exact=True).count)

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
        if self._encoder is None:
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
        heads = self._modes or self._encoder.available_modes
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
            if self.colbert_datatype == "float16":
                arr = arr.astype(np.float16).astype(np.float32)
            if arr.shape[0] == 0:
                out.append(np.zeros((1, dim), dtype=np.float32).tolist())  # MaxSim with a zero vector scores 0
                empty.append(True)
            else:
                out.append(arr.tolist())
                empty.append(False)
        return out, empty

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
            if isinstance(texts, str):
                raise TypeError("texts must be a list of strings, not a single string")
            texts_l = list(texts)
            if len(texts_l) != n:
                raise ValueError(f"got {len(texts_l)} texts for {n} documents; pass one text (or None) per document")
            for i, t in enumerate(texts_l):
                if t is not None and not isinstance(t, str):
                    raise TypeError(f"texts[{i}] must be a str or None; got {type(t).__name__}")
        if n == 0:
            return []
        if not self._exists():
            dims = {}
            if encoded.dense is not None:
                dims["dense"] = int(encoded.dense.shape[1])
            if encoded.colbert is not None:
                widths = {int(np.asarray(c).shape[1]) for c in encoded.colbert if np.asarray(c).ndim == 2}
                if len(widths) != 1:
                    raise ValueError(f"colbert rows have inconsistent widths {sorted(widths)}")
                dims["colbert"] = widths.pop()
            self._create(encoded.modes, dims)
        missing = [x for x in self._modes if x not in encoded.modes]
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
        # every written row gets the next sequence number: an upserted id moves last, as in HybridStore
        with self._seq_lock:
            seqs = list(range(self._next_seq, self._next_seq + n))
            self._next_seq += n
        self._upload(encoded, ids_l, texts_l, metas, list(range(n)), seqs)
        return ids_l

    def _upload(
        self,
        encoded: M3Output,
        ids: list[str],
        texts: list[str | None],
        metas: list[dict],
        rows: list[int],
        seqs: list[int],
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
                bar.update(len(points))
        finally:
            bar.close()

    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents by id; unknown ids are ignored. Returns how many were removed."""
        if isinstance(ids, str):
            raise TypeError("ids must be a list of strings, not a single string; wrap it: delete([id])")
        pids = sorted({point_id(x) for x in ids})
        if not pids or not self._exists():
            return 0
        found = self.client.retrieve(self.collection, pids, with_payload=False)
        if not found:
            return 0
        self.client.delete(
            self.collection, points_selector=self._models.PointIdsList(points=[p.id for p in found]), wait=True
        )
        return len(found)

    def get(self, ids: Sequence[str]) -> list[Record]:
        """Stored records for the ids found, in the order asked."""
        if isinstance(ids, str):
            raise TypeError("ids must be a list of strings, not a single string; wrap it: get([id])")
        ids = list(ids)
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

    def clear(self) -> None:
        """Delete every document: the collection is dropped and, like a fresh ``HybridStore``, the modes are
        forgotten. With an encoder the collection is recreated at once with the encoder's modes."""
        if self.client.collection_exists(self.collection):
            self.client.delete_collection(self.collection)
        self._modes, self._dims, self._next_seq = (), {}, 0
        if self._encoder is not None:
            self._create(self._encoder.available_modes, self._encoder_dims(self._encoder))

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
        return out_ids, M3Output(dense=dense, sparse=sparse, colbert=colbert), texts, metas

    # ------------------------------------------------------------------ search
    def search(self, query: str, **kwargs: Any) -> list[Hit]:
        """Encode ``query`` (only the heads the requested modes need) and search; see :meth:`search_encoded`."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a str; got {type(query).__name__}. Use search_batch for a list.")
        return self.search_batch([query], **kwargs)[0]

    def search_batch(self, queries: Sequence[str], **kwargs: Any) -> list[list[Hit]]:
        """:meth:`search` for several queries, encoded in one call."""
        from ..validation import check_queries

        queries = check_queries(queries)
        opts = self._options(kwargs)
        if self._encoder is None:
            raise ValueError("search needs an encoder; pass encoder= to QdrantHybridStore or use search_encoded")
        if not queries:
            return []
        if not self._exists():
            return [[] for _ in queries]
        need = set(opts.modes)
        encoded = self._encoder.encode_queries(
            queries, dense="dense" in need, sparse="sparse" in need, colbert="colbert" in need, show_progress_bar=False
        )
        return self._search(encoded, opts)


    # search_encoded / search_encoded_batch come from EncodedSearchMixin. Options are HybridStore's, plus
    # ``server_fusion``: run RRF/DBSF on the server (approximate, see the module docstring; ``None`` uses the
    # constructor default). Dict filters become Qdrant payload filters applied before top-k.
    def _options(self, kwargs: Mapping[str, Any]) -> Any:
        from ..search import parse_options

        opts = parse_options(self._modes, encoder=self._encoder, extra_names=("server_fusion",), **kwargs)
        server = opts.extra.get("server_fusion")
        server = self.server_fusion if server is None else bool(server)
        if server and opts.fusion == "weighted" and len(opts.modes) > 1:
            raise ValueError("server_fusion=True supports fusion='rrf' or 'dbsf'; weighted fusion is computed exactly client-side")
        return opts

    def _search(self, queries: M3Output, opts: Any) -> list[list[Hit]]:
        from ..search import run
        from ..validation import check_query
        from .backend import QdrantBackend

        if len(queries) == 0:
            return []
        if not self._exists():
            return [[] for _ in range(len(queries))]
        check_query(queries, opts.modes, self._dims)
        backend = QdrantBackend(self)
        server = opts.extra.get("server_fusion")
        server = self.server_fusion if server is None else bool(server)
        if server and opts.fusion in ("rrf", "dbsf") and len(opts.modes) > 1:
            from .server_fusion import search_server_fusion

            return [search_server_fusion(self, backend, queries[i], opts) for i in range(len(queries))]
        return run(backend, queries, opts)

    def _build_filter(self, flt: Any, ids: Collection[str] | None) -> Any:
        """A Qdrant ``Filter``, ``None`` for no restriction, or ``False`` when nothing can match.

        A dict filter is translated to a payload filter. A callable cannot run on the server: it is evaluated
        client-side over every stored metadata dict (one payload scroll per search), and the matching ids are
        sent as a ``HasIdCondition`` -- exact and still applied before top-k, but O(collection size) per search.
        """
        from ..filters import compile_filter

        m = self._models
        must = []
        pids: list[str] | None = None
        if ids is not None:
            if isinstance(ids, str):
                raise TypeError("ids must be a collection of strings, not a single string")
            pids = sorted({point_id(x) for x in ids})
            if not pids:
                return False
        if flt is not None:
            pred = compile_filter(flt)  # the same validation (and error messages) as HybridStore
            if callable(flt) and not isinstance(flt, Mapping):
                scope = m.Filter(must=[m.HasIdCondition(has_id=pids)]) if pids is not None else None
                points = self._scroll(with_payload=[PAYLOAD_META], flt=scope)
                pids = sorted(p.id for p in points if pred((p.payload or {}).get(PAYLOAD_META) or {}))
                if not pids:
                    return False
            else:
                must.append(to_qdrant_filter(flt))
        if pids is not None:
            must.append(m.HasIdCondition(has_id=pids))
        return m.Filter(must=must) if must else None
