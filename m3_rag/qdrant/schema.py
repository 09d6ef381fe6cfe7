"""The Qdrant collection layout of a QdrantHybridStore: payload keys, point ids, creating and validating it.

One point per document: named vectors ``dense`` (dot or cosine) and ``colbert`` (a ``MAX_SIM`` multivector, no
HNSW graph), a sparse vector ``sparse`` with no IDF modifier, and a payload holding the string id, the insertion
sequence number, the text and the metadata. The collection metadata records the format version, the modes, the
encoder fingerprint and the ColBERT datatype, checked when an existing collection is opened.
"""

from __future__ import annotations

import uuid
import warnings
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..index.bm25_sparse import BM25_VECTOR
from ..types import STORE_MODES

if TYPE_CHECKING:  # pragma: no cover
    from ..encoder import M3Encoder

__all__ = [
    "M3_NAMESPACE", "PAYLOAD_ID", "PAYLOAD_SEQ", "PAYLOAD_TEXT", "PAYLOAD_META", "PAYLOAD_COLBERT_EMPTY",
    "METADATA_KEY", "FORMAT_VERSION", "DENSE_DISTANCES", "COLBERT_QUANTIZATIONS", "COLBERT_DATATYPES",
    "QdrantWriteError", "point_id", "SchemaMixin",
]

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


class SchemaMixin:
    """Creating the collection for a set of modes and validating an existing one (part of QdrantHybridStore).

    Uses the store's ``client``, ``collection``, ``_models``, ``_encoder``, ``dense_distance``, ``colbert_*``
    settings, and sets ``_modes``, ``_dims``, ``_fingerprint``, ``_next_seq``.
    """

    client: Any
    collection: str
    _models: Any
    _encoder: "M3Encoder | None"
    dense_distance: str
    colbert_on_disk: bool
    colbert_quantization: str | None
    colbert_datatype: str
    colbert_pool_factor: int
    _modes: tuple[str, ...]
    _dims: dict[str, int]
    _fingerprint: str | None
    _next_seq: int
    _bm25: Any
    _bm25_declared: bool

    def _bm25_search_params(self) -> Any:
        """IDF over the live documents holding a bm25 vector (the engine's global IDF may count deleted points)."""
        m = self._models
        corpus = m.Filter(must=[m.HasVectorCondition(has_vector=BM25_VECTOR)])
        return m.SearchParams(idf=m.IdfCorpusParams(corpus=corpus))

    @staticmethod
    def _encoder_dims(encoder: "M3Encoder") -> dict[str, int]:
        dims = {"dense": int(encoder.dense_dim)}
        if encoder.colbert_dim is not None:
            dims["colbert"] = int(encoder.colbert_dim)
        return dims

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
        modes = tuple(x for x in STORE_MODES if x in modes)
        if not modes:
            raise ValueError("cannot create a collection with no modes; the encoded input holds no dense/sparse/colbert")
        if "bm25" in modes and self._bm25 is None:
            raise ValueError("the bm25 mode must be declared: QdrantHybridStore(..., modes=(..., 'bm25'))")
        vectors: dict[str, Any] = {}
        if "dense" in modes:
            dist = m.Distance.COSINE if self.dense_distance == "cosine" else m.Distance.DOT
            vectors["dense"] = m.VectorParams(size=int(dims["dense"]), distance=dist)
        if "colbert" in modes:
            vectors["colbert"] = self._colbert_params(int(dims["colbert"]))
        sparse: dict[str, Any] = {}
        if "sparse" in modes:
            sparse["sparse"] = m.SparseVectorParams(modifier=None)
        if "bm25" in modes:  # documents hold the BM25 tf component; the engine multiplies the query by IDF
            sparse[BM25_VECTOR] = m.SparseVectorParams(modifier=m.Modifier.IDF)
        meta = {
            METADATA_KEY: {
                "format_version": FORMAT_VERSION,
                "modes": list(modes),
                "fingerprint": self._fingerprint,
                "colbert_datatype": self.colbert_datatype,
                "colbert_pool_factor": self.colbert_pool_factor,
                **({"bm25": self._bm25.settings()} if "bm25" in modes else {}),
            }
        }
        self.client.create_collection(
            self.collection, vectors_config=vectors, sparse_vectors_config=sparse or None, metadata=meta
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
        if self._bm25 is not None:
            self._bm25.load(())

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
        unknown = sorted((set(vectors) - {"dense", "colbert"}) | (set(sparse) - {"sparse", BM25_VECTOR}))
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
        meta = ((info.config.metadata or {}).get(METADATA_KEY)) or {}
        if BM25_VECTOR in sparse:
            if sparse[BM25_VECTOR].modifier != m.Modifier.IDF:
                raise self._mismatch("bm25 modifier", "idf", getattr(sparse[BM25_VECTOR].modifier, "value", None), other)
            from ..index.bm25_sparse import reopen

            self._bm25 = reopen(meta.get("bm25"), self._bm25 if self._bm25_declared else None,
                                f"Qdrant collection {self.collection!r}")
            modes.append("bm25")
        elif self._bm25 is not None and self._bm25_declared:
            raise self._mismatch("modes", "with bm25", "without bm25", other)
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
            missing = [x for x in modes if x != "bm25" and x not in enc.available_modes]
            if missing:
                raise self._mismatch("encoder modes", modes, list(enc.available_modes), "Use an encoder with these heads.")
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
        pf = meta.get("colbert_pool_factor", 1)
        if isinstance(pf, int) and not isinstance(pf, bool) and pf >= 1:
            self.colbert_pool_factor = pf
        self._modes = tuple(x for x in STORE_MODES if x in modes)
        self._dims = dims
        last, _ = self.client.scroll(
            self.collection,
            limit=1,
            order_by=m.OrderBy(key=PAYLOAD_SEQ, direction=m.Direction.DESC),
            with_payload=[PAYLOAD_SEQ],
        )
        self._next_seq = int(last[0].payload[PAYLOAD_SEQ]) + 1 if last else 0
