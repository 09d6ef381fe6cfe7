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

import math
import threading
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, Mapping, Sequence

import numpy as np

from .fusion import FUSIONS, RRF_K
from .store import check_modes, check_rows
from .types import MODES, Hit, M3Output, Record

if TYPE_CHECKING:  # pragma: no cover
    from qdrant_client import QdrantClient

    from .encoder import M3Encoder
    from .store import HybridStore

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
_TIE_MARGIN = 16  # extra hits fetched in single-mode search so that exact ties are broken by insertion order


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


# ---------------------------------------------------------------------------------------------- filters
_COMPARISONS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$contains")
_LOGICAL = ("$and", "$or", "$not")


def _field_key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"filter field names must be non-empty strings; got {key!r}")
    if key.startswith("$"):
        raise ValueError(f"unknown filter operator {key!r}; logical operators are {', '.join(_LOGICAL)}")
    if '"' in key:
        raise ValueError(f"filter field {key!r} contains a double quote, which Qdrant payload paths cannot express")
    if all(c.isalnum() or c in "_-" for c in key):
        return f"{PAYLOAD_META}.{key}"
    return f'{PAYLOAD_META}."{key}"'


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _eq_condition(models: Any, key: str, value: Any) -> Any:
    """A condition true when the field equals ``value`` (numbers compare numerically, like Python)."""
    if value is None:
        return models.IsNullCondition(is_null=models.PayloadField(key=key))
    if isinstance(value, (bool, str)):
        return models.FieldCondition(key=key, match=models.MatchValue(value=value))
    if _is_number(value):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"filter on {key!r}: non-finite number {value!r} cannot be matched in Qdrant")
        return models.FieldCondition(key=key, range=models.Range(gte=value, lte=value))
    raise ValueError(
        f"filter on {key!r}: cannot translate equality with {type(value).__name__} value {value!r:.60} to a Qdrant "
        "payload filter; use str, int, float, bool or None values"
    )


def _any_of(models: Any, key: str, values: Any, op: str) -> Any:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"filter on {key!r}: {op} needs a list of values; got {values!r:.60}")
    values = list(values)
    if not values:
        return None  # matches nothing
    conds = [_eq_condition(models, key, v) for v in values]
    return conds[0] if len(conds) == 1 else models.Filter(should=conds)


def _never(models: Any) -> Any:
    # a filter that matches nothing: the empty HasId list
    return models.Filter(must=[models.HasIdCondition(has_id=[])])


def _range(models: Any, key: str, op: str, value: Any) -> Any:
    if not _is_number(value):
        raise ValueError(
            f"filter on {key!r}: {op} with {type(value).__name__} value {value!r:.60} is not translatable; Qdrant range "
            "conditions compare numbers only. Use a numeric field, or HybridStore for string ordering."
        )
    return models.FieldCondition(key=key, range=models.Range(**{op[1:]: value}))


def _field_filter(models: Any, field: str, cond: Any) -> Any:
    key = _field_key(field)
    if not isinstance(cond, Mapping) or not any(isinstance(op, str) and op.startswith("$") for op in cond):
        return _eq_condition(models, key, cond)  # a dict without operators is a value (untranslatable)
    if not cond:
        raise ValueError(f"filter on {field!r}: empty operator dict; use one of {', '.join(_COMPARISONS)}")
    parts = []
    for op, value in cond.items():
        if op not in _COMPARISONS:
            raise ValueError(f"unknown filter operator {op!r} on {field!r}; allowed: {', '.join(_COMPARISONS)}")
        if op == "$eq":
            parts.append(_eq_condition(models, key, value))
        elif op == "$ne":
            parts.append(models.Filter(must_not=[_eq_condition(models, key, value)]))
        elif op in ("$gt", "$gte", "$lt", "$lte"):
            parts.append(_range(models, key, op, value))
        elif op == "$in":
            c = _any_of(models, key, value, op)
            parts.append(_never(models) if c is None else c)
        elif op == "$nin":
            c = _any_of(models, key, value, op)
            if c is not None:
                parts.append(models.Filter(must_not=[c]))
        elif op == "$exists":
            if not isinstance(value, bool):
                raise ValueError(f"filter on {field!r}: $exists needs True or False; got {value!r}")
            # present = not empty, or explicitly null (IsEmpty is also true for null values)
            present = models.Filter(
                should=[
                    models.Filter(must_not=[models.IsEmptyCondition(is_empty=models.PayloadField(key=key))]),
                    models.IsNullCondition(is_null=models.PayloadField(key=key)),
                ]
            )
            parts.append(present if value else models.Filter(must_not=[present]))
        elif op == "$contains":
            if isinstance(value, str):
                # list fields: some element contains the string; string fields: substring
                parts.append(models.FieldCondition(key=key, match=models.MatchSubstring(substring=value)))
            else:
                parts.append(_eq_condition(models, key, value))  # list membership
    return parts[0] if len(parts) == 1 else models.Filter(must=parts)


def to_qdrant_filter(flt: Mapping[str, Any]) -> Any:
    """Translate a ``HybridStore`` metadata filter dict into a ``qdrant_client.models.Filter``.

    Supported: field equality ``{"a": 1}``; ``$eq $ne $gt $gte $lt $lte $in $nin $exists $contains``;
    ``$and``/``$or`` (lists of filters) and ``$not`` (one filter). Fields address ``metadata.<field>``.

    Differences from in-memory evaluation, all on odd data only: a condition on a list-valued field matches when
    any element matches (Qdrant semantics); ``$exists`` treats an empty list as absent; ``$gt``-style
    comparisons accept numbers only (Qdrant ranges are numeric); ``$contains`` with a string is a substring test
    (on a list field: of any element).

    Raises:
        TypeError: for a callable (not translatable; ``QdrantHybridStore.search`` evaluates callables
            client-side instead, see ``_build_filter``).
        ValueError: for unknown operators or untranslatable values.
    """
    _, models = _qdrant()
    if callable(flt) and not isinstance(flt, Mapping):
        raise TypeError(
            "QdrantHybridStore cannot send a Python callable filter to Qdrant; express it as a filter dict "
            '(e.g. {"year": {"$gte": 2020}}) or use HybridStore for callable filters'
        )
    if not isinstance(flt, Mapping):
        raise TypeError(f"filter must be a dict (or None); got {type(flt).__name__}")
    return _translate(models, flt)


def _translate(models: Any, flt: Mapping[str, Any]) -> Any:
    if not isinstance(flt, Mapping):
        raise TypeError(f"every sub-filter must be a dict; got {type(flt).__name__} ({flt!r:.60})")
    must: list[Any] = []
    for key, value in flt.items():
        if key in ("$and", "$or"):
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{key} needs a list of filter dicts; got {value!r:.60}")
            subs = [_translate(models, v) for v in value]
            if key == "$and":
                must.append(models.Filter(must=subs) if subs else models.Filter())
            else:
                must.append(models.Filter(should=subs) if subs else _never(models))
        elif key == "$not":
            must.append(models.Filter(must_not=[_translate(models, value)]))
        else:
            must.append(_field_filter(models, key, value))
    return models.Filter(must=must)


# ---------------------------------------------------------------------------------------------- store
class QdrantHybridStore:
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
        from .store import HybridStore

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

    def close(self) -> None:
        """Close the client if this store created it (needed before reopening a local path)."""
        if self._owns_client:
            self.client.close()

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
            raise TypeError(f"query must be a str; got {type(query).__name__}")
        return self.search_batch([query], **kwargs)[0]

    def search_batch(self, queries: Sequence[str], **kwargs: Any) -> list[list[Hit]]:
        """:meth:`search` for several queries, encoded in one call."""
        if isinstance(queries, str):
            raise TypeError("queries must be a list of strings; for one query use search()")
        queries = list(queries)
        for i, q in enumerate(queries):
            if not isinstance(q, str):
                raise TypeError(f"queries[{i}] must be a str; got {type(q).__name__}")
        if self._encoder is None:
            raise ValueError("search needs an encoder; pass encoder= to QdrantHybridStore or use search_encoded")
        modes = self._resolve_modes(kwargs.get("modes", MODES))
        self._check_common(kwargs)
        if not queries:
            return []
        if not self._exists():
            return [[] for _ in queries]
        need = set(modes) | ({"sparse"} if kwargs.get("explain") else set())
        encoded = self._encoder.encode_queries(
            queries, dense="dense" in need, sparse="sparse" in need, colbert="colbert" in need, show_progress_bar=False
        )
        return self.search_encoded_batch(encoded, **kwargs)

    def search_encoded_batch(self, queries: M3Output, **kwargs: Any) -> list[list[Hit]]:
        """:meth:`search_encoded` for every row of ``queries``."""
        if not isinstance(queries, M3Output):
            raise TypeError(f"queries must be an M3Output; got {type(queries).__name__}")
        return [self.search_encoded(queries[i], **kwargs) for i in range(len(queries))]

    def search_encoded(
        self,
        query: M3Output,
        *,
        k: int = 10,
        modes: str | Sequence[str] = MODES,
        weights: Sequence[float] | Mapping[str, float] | None = None,
        fusion: str = "weighted",
        candidates: int | None = None,
        filter: Mapping[str, Any] | Callable[[dict], bool] | None = None,
        ids: Collection[str] | None = None,
        explain: bool = False,
        server_fusion: bool | None = None,
    ) -> list[Hit]:
        """Search with an encoded query (one row); same semantics as ``HybridStore.search_encoded``.

        Args:
            k: number of hits. modes: a mode or modes to search. weights: per-mode weights (sequence aligned with
                ``modes`` or a dict). fusion: ``"weighted"``, ``"rrf"`` or ``"dbsf"``. candidates: first-stage
                depth per mode (default ``max(100, k)``). filter: a metadata filter dict (translated to a Qdrant
                payload filter, applied on the server before top-k; callables raise ``TypeError``).
                ids: restrict to these document ids. explain: fill ``Hit.explain`` with matched sparse tokens.
            server_fusion: run RRF/DBSF on the server (approximate; see the module docstring). ``None`` uses the
                constructor default.
        """
        if not isinstance(query, M3Output):
            raise TypeError(f"query must be an M3Output; got {type(query).__name__}")
        if len(query) != 1:
            raise ValueError(f"search_encoded takes a query with exactly one row; got {len(query)} (use search_encoded_batch)")
        mode_t = self._resolve_modes(modes)
        self._check_common({"k": k, "fusion": fusion, "candidates": candidates})
        k = int(k)
        candidates = None if candidates is None else int(candidates)
        w = self._resolve_weights(mode_t, weights, fusion)
        missing = [x for x in mode_t if x not in query.modes]
        if missing:
            raise ValueError(f"the query lacks the {missing} output(s) needed for modes {mode_t}; encode it with those heads")
        if explain and "sparse" not in self._modes:
            raise ValueError("explain=True needs sparse vectors in the store")
        if explain and (self._encoder is None or query.sparse is None):
            raise ValueError("explain=True needs an encoder (for token strings) and a sparse query")
        qfilter = self._build_filter(filter, ids)
        if qfilter is False or not self._exists():
            return []
        server = self.server_fusion if server_fusion is None else bool(server_fusion)
        if server and fusion == "weighted" and len(mode_t) > 1:
            raise ValueError("server_fusion=True supports fusion='rrf' or 'dbsf'; weighted fusion is computed exactly client-side")
        qvec = self._query_vectors(query, mode_t)
        q_sparse = query.sparse[0] if query.sparse is not None else None
        n_colbert_q = int(np.asarray(query.colbert[0]).shape[0]) if "colbert" in mode_t else 1
        if len(mode_t) == 1:
            hits = self._search_single(mode_t[0], qvec, q_sparse, k, qfilter, n_colbert_q)
        elif server and fusion in ("rrf", "dbsf"):
            hits = self._search_server_fusion(mode_t, w, fusion, qvec, q_sparse, k, candidates, qfilter, n_colbert_q)
        else:
            hits = self._search_exact(mode_t, w, fusion, qvec, q_sparse, k, candidates, qfilter, n_colbert_q)
        if explain:
            self._explain(hits, query.sparse[0])
        return hits

    # -------------------------------------------------- validation helpers
    def _resolve_modes(self, modes: Any) -> tuple[str, ...]:
        mode_t = check_modes(modes)  # the same rules and messages as HybridStore
        if self._modes:
            absent = [x for x in mode_t if x not in self._modes]
            if absent:
                raise ValueError(
                    f"mode(s) {absent} not held by collection {self.collection!r}, which holds {self._modes}; "
                    "search those modes only"
                )
        return mode_t

    @staticmethod
    def _check_common(kw: Mapping[str, Any]) -> None:
        k = kw.get("k", 10)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive int; got {k!r}")
        fusion = kw.get("fusion", "weighted")
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; allowed: {', '.join(FUSIONS)}")
        cand = kw.get("candidates")
        if cand is not None and (isinstance(cand, bool) or not isinstance(cand, (int, np.integer)) or cand <= 0):
            raise ValueError(f"candidates must be a positive int or None; got {cand!r}")

    @staticmethod
    def _resolve_weights(
        modes: tuple[str, ...], weights: Sequence[float] | Mapping[str, float] | None, fusion: str
    ) -> dict[str, float]:
        from .fusion import resolve_weights

        return resolve_weights(modes, weights, fusion)

    def _build_filter(self, flt: Any, ids: Collection[str] | None) -> Any:
        """A Qdrant ``Filter``, ``None`` for no restriction, or ``False`` when nothing can match.

        A dict filter is translated to a payload filter. A callable cannot run on the server: it is evaluated
        client-side over every stored metadata dict (one payload scroll per search), and the matching ids are
        sent as a ``HasIdCondition`` -- exact and still applied before top-k, but O(collection size) per search.
        """
        from .filters import compile_filter

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

    def _query_vectors(self, query: M3Output, modes: tuple[str, ...]) -> dict[str, Any]:
        m = self._models
        out: dict[str, Any] = {}
        if "dense" in modes:
            d = query.dense[0]
            if d.shape[0] != self._dims["dense"]:
                raise ValueError(f"query dense dimension {d.shape[0]} != collection dimension {self._dims['dense']}")
            out["dense"] = d.astype(np.float32).tolist()
        if "sparse" in modes:
            items = sorted((int(t), float(w)) for t, w in query.sparse[0].items())
            out["sparse"] = m.SparseVector(indices=[t for t, _ in items], values=[w for _, w in items])
        if "colbert" in modes:
            c = np.asarray(query.colbert[0], dtype=np.float32)
            if c.shape[0] == 0:
                raise ValueError("the query has no ColBERT token vectors")
            if c.shape[1] != self._dims["colbert"]:
                raise ValueError(f"query colbert dimension {c.shape[1]} != collection dimension {self._dims['colbert']}")
            out["colbert"] = c.tolist()
        return out

    # -------------------------------------------------- search paths
    # Scores: Qdrant finds the candidates; the per-mode scores are then computed exactly as HybridStore computes
    # them, so fused rankings agree to the last bit wherever the inputs agree: dense and sparse from the
    # candidates' stored vectors (returned with the same request; float32 inner product, float64 lexical sum),
    # ColBERT MaxSim on the server (Qdrant sums over query tokens; divided here by their number, in float32).
    def _score_colbert(self, raw: float, n_q: int) -> float:
        return float(np.float32(raw) / np.float32(n_q))

    def _rescore(self, points: Sequence[Any], modes: Sequence[str], qvec: dict[str, Any], q_sparse: Mapping[int, float] | None) -> dict[str, np.ndarray]:
        """Exact dense/sparse scores of ``points`` (which carry those vectors), as HybridStore computes them."""
        out: dict[str, np.ndarray] = {}
        if "dense" in modes:
            if points:
                X = np.asarray([p.vector["dense"] for p in points], dtype=np.float32)
                out["dense"] = X @ np.asarray(qvec["dense"], dtype=np.float32)
            else:
                out["dense"] = np.zeros(0, dtype=np.float32)
        if "sparse" in modes:
            q_items = list((q_sparse or {}).items())
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
            out["sparse"] = np.asarray(vals, dtype=np.float64)
        return out

    @staticmethod
    def _faiss_dense(points: Sequence[Any], q: Sequence[float]) -> np.ndarray:
        """Dense scores with FAISS's inner-product kernel: HybridStore's single-mode dense search uses it, and its
        float32 rounding differs from numpy's BLAS in the last bit (enough to swap near-tied neighbours)."""
        import faiss

        X = np.ascontiguousarray([p.vector["dense"] for p in points], dtype=np.float32)
        index = faiss.IndexFlatIP(X.shape[1])
        index.add(X)
        D, I = index.search(np.asarray([q], dtype=np.float32), len(points))
        out = np.empty(len(points), dtype=np.float32)
        out[I[0]] = D[0]
        return out

    def _hit(self, payload: Mapping[str, Any], score: float, scores: dict[str, float]) -> Hit:
        return Hit(
            id=payload[PAYLOAD_ID],
            score=float(score),
            text=payload.get(PAYLOAD_TEXT),
            metadata=dict(payload.get(PAYLOAD_META) or {}),
            scores=scores,
        )

    def _search_single(
        self, mode: str, qvec: dict[str, Any], q_sparse: Mapping[int, float] | None, k: int, qfilter: Any, n_q: int
    ) -> list[Hit]:
        res = self.client.query_points(
            self.collection, query=qvec[mode], using=mode, query_filter=qfilter, limit=k + _TIE_MARGIN,
            with_payload=True, with_vectors=[mode] if mode != "colbert" else False,
        ).points
        if mode == "colbert":
            scores = np.asarray([self._score_colbert(p.score, n_q) for p in res], dtype=np.float32)
        elif mode == "dense" and res:
            scores = self._faiss_dense(res, qvec["dense"])
        else:
            scores = self._rescore(res, (mode,), qvec, q_sparse)[mode]
        scored = sorted(
            ((float(s), p.payload) for s, p in zip(scores.tolist(), res)), key=lambda t: (-t[0], t[1][PAYLOAD_SEQ])
        )
        if mode == "sparse" and len(scored) < k:
            scored += self._zero_fill(k - len(scored), [p.id for p in res], qfilter)
        return [self._hit(pl, s, {mode: s}) for s, pl in scored[:k]]

    def _zero_fill(self, n: int, exclude: list[Any], qfilter: Any) -> list[tuple[float, Mapping[str, Any]]]:
        """Documents without any sparse overlap score exactly 0; take the first ``n`` in insertion order."""
        m = self._models
        must = [qfilter] if qfilter is not None else []
        flt = m.Filter(must=must, must_not=[m.HasIdCondition(has_id=list(exclude))] if exclude else None)
        points, _ = self.client.scroll(
            self.collection, scroll_filter=flt, limit=n,
            order_by=m.OrderBy(key=PAYLOAD_SEQ, direction=m.Direction.ASC), with_payload=True,
        )
        return [(0.0, p.payload) for p in points]

    def _first_stages(self, modes: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(x for x in ("dense", "sparse") if x in modes) or ("colbert",)

    def _candidate_prefetch(
        self, modes: tuple[str, ...], qvec: dict[str, Any], depth: int, qfilter: Any
    ) -> list[Any]:
        m = self._models
        return [m.Prefetch(query=qvec[f], using=f, limit=depth, filter=qfilter) for f in self._first_stages(modes)]

    def _search_exact(
        self,
        modes: tuple[str, ...],
        weights: dict[str, float],
        fusion: str,
        qvec: dict[str, Any],
        q_sparse: Mapping[int, float] | None,
        k: int,
        candidates: int | None,
        qfilter: Any,
        n_q: int,
    ) -> list[Hit]:
        """HybridStore's multi-mode search with Qdrant doing the retrieval; fusion client-side.

        Usually one batched request: a query whose prefetches are the first stages (top ``candidates`` of dense
        and sparse, filtered) and which rescores their union with ColBERT MaxSim -- the "prefetch dense+sparse,
        ColBERT rerank" query -- (or with dense when ColBERT is not searched), returning every candidate with its
        payload and dense/sparse vectors for exact scoring. Like ``HybridStore``, the sparse first stage is topped
        up with zero-score documents (in insertion order) when fewer than ``candidates`` documents share a token
        with the query; the enlarged candidate set is then fetched with a second request.
        """
        from .fusion import fuse

        m = self._models
        depth = max(candidates if candidates is not None else 100, k)
        stages = self._first_stages(modes)
        anchor = "colbert" if "colbert" in modes else "dense"
        vectors = [x for x in ("dense", "sparse") if x in modes] or False
        requests = [
            m.QueryRequest(
                prefetch=self._candidate_prefetch(modes, qvec, depth, qfilter), query=qvec[anchor], using=anchor,
                filter=qfilter, limit=depth * len(stages), with_payload=True, with_vector=vectors,
            )
        ]
        if "sparse" in stages:  # the sparse first stage alone: is it short of `depth` documents?
            requests.append(m.QueryRequest(query=qvec["sparse"], using="sparse", filter=qfilter, limit=depth, with_payload=False))
        responses = self.client.query_batch_points(self.collection, requests=requests)
        points = list(responses[0].points)
        if "sparse" in stages and len(responses[1].points) < depth:
            matched = [p.id for p in responses[1].points]
            fill = self._zero_fill(depth - len(matched), matched, qfilter)
            union = {p.id for p in points}
            extra = sorted({point_id(pl[PAYLOAD_ID]) for _, pl in fill} - union)
            if extra:
                only = m.Filter(must=[m.HasIdCondition(has_id=sorted(union) + extra)])
                points = self.client.query_points(
                    self.collection, query=qvec[anchor], using=anchor, query_filter=only, limit=len(union) + len(extra),
                    with_payload=True, with_vectors=vectors,
                ).points
        if not points:
            return []
        points.sort(key=lambda p: p.payload[PAYLOAD_SEQ])  # candidates in insertion order
        score_arrays: dict[str, np.ndarray] = self._rescore(points, modes, qvec, q_sparse)
        if "colbert" in modes:
            score_arrays["colbert"] = np.asarray([self._score_colbert(p.score, n_q) for p in points], dtype=np.float32)
        score_arrays = {mode: score_arrays[mode] for mode in modes}
        fused = np.asarray(fuse(fusion, score_arrays, weights), dtype=np.float64)
        top = np.argsort(-fused, kind="stable")[:k]
        return [
            self._hit(points[i].payload, fused[i], {mode: float(score_arrays[mode][i]) for mode in modes}) for i in top
        ]

    def _search_server_fusion(
        self,
        modes: tuple[str, ...],
        weights: dict[str, float],
        fusion: str,
        qvec: dict[str, Any],
        q_sparse: Mapping[int, float] | None,
        k: int,
        candidates: int | None,
        qfilter: Any,
        n_q: int,
    ) -> list[Hit]:
        """RRF/DBSF fused on the server (approximate, see the module docstring); the per-mode scores of the
        top-k are then computed exactly, as in :meth:`_search_exact`."""
        m = self._models
        depth = max(candidates if candidates is not None else 100, k)
        stages = self._first_stages(modes)
        prefetch = self._candidate_prefetch(modes, qvec, depth, qfilter)
        sources = list(prefetch)
        src_modes = list(stages)
        if "colbert" in modes and "colbert" not in stages:  # ColBERT ranks the dense+sparse candidates
            sources.append(
                m.Prefetch(prefetch=prefetch, query=qvec["colbert"], using="colbert", limit=depth * len(stages))
            )
            src_modes.append("colbert")
        if fusion == "rrf":
            q = m.RrfQuery(rrf=m.Rrf(k=RRF_K, weights=[weights[x] for x in src_modes]))
        else:
            if any(weights[x] != 1.0 for x in src_modes):
                raise ValueError("Qdrant's server-side DBSF takes no weights; use server_fusion=False for weighted DBSF")
            q = m.FusionQuery(fusion=m.Fusion.DBSF)
        res = self.client.query_points(
            self.collection, prefetch=sources, query=q, query_filter=qfilter, limit=k, with_payload=True,
            with_vectors=[x for x in ("dense", "sparse") if x in modes] or False,
        ).points
        if not res:
            return []
        ranked = sorted(res, key=lambda p: (-p.score, p.payload[PAYLOAD_SEQ]))
        exact = self._rescore(ranked, modes, qvec, q_sparse)
        if "colbert" in modes:
            only = m.Filter(must=[m.HasIdCondition(has_id=[p.id for p in ranked])])
            got = self.client.query_points(
                self.collection, query=qvec["colbert"], using="colbert", query_filter=only, limit=len(ranked), with_payload=False
            ).points
            by_id = {p.id: self._score_colbert(p.score, n_q) for p in got}
            exact["colbert"] = np.asarray([by_id[p.id] for p in ranked], dtype=np.float32)
        return [
            self._hit(p.payload, p.score, {mode: float(exact[mode][i]) for mode in modes}) for i, p in enumerate(ranked)
        ]

    def _explain(self, hits: list[Hit], q_sparse: Mapping[int, float]) -> None:
        """``Hit.explain``: matched sparse tokens ``{token string: q_w * d_w}``, largest first (as HybridStore)."""
        if not hits:
            return
        pids = [point_id(h.id) for h in hits]
        vecs = {p.id: p.vector.get("sparse") for p in self.client.retrieve(self.collection, pids, with_vectors=["sparse"])}
        for h, pid in zip(hits, pids):
            sv = vecs.get(pid)
            doc = {} if sv is None else dict(zip((int(t) for t in sv.indices), (float(w) for w in sv.values)))
            matched = [(int(t), float(qw) * doc[int(t)]) for t, qw in q_sparse.items() if int(t) in doc]
            if not matched:
                h.explain = {}
                continue
            names = self._encoder.decode_tokens([t for t, _ in matched])  # type: ignore[union-attr]
            out: dict[str, float] = {}
            for name, (_, c) in zip(names, matched):
                out[name] = out.get(name, 0.0) + c
            h.explain = dict(sorted(out.items(), key=lambda kv: -kv[1]))
