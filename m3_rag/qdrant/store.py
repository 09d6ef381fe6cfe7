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

import contextlib
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Mapping, Sequence

from ..index.bm25 import BM25_DEFAULTS
from ..index.bm25_sparse import carry

from ..types import Hit, M3Output
from ..search.api import EncodedSearchMixin
from ..validation import check_sparse_dim
from .crud import CrudMixin, serialised
from .filters import to_qdrant_filter
from .schema import (  # noqa: F401  (re-exported)
    COLBERT_DATATYPES,
    COLBERT_QUANTIZATIONS,
    DENSE_DISTANCES,
    M3_NAMESPACE,
    PAYLOAD_ID,
    PAYLOAD_META,
    PAYLOAD_SEQ,
    PAYLOAD_TEXT,
    QdrantWriteError,
    SchemaMixin,
    _qdrant,
    point_id,
)

if TYPE_CHECKING:  # pragma: no cover
    from qdrant_client import QdrantClient

    from ..encoder import M3Encoder
    from ..store import HybridStore

__all__ = ["QdrantHybridStore", "QdrantWriteError", "point_id", "to_qdrant_filter", "M3_NAMESPACE"]


class QdrantHybridStore(SchemaMixin, CrudMixin, EncodedSearchMixin):
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
        colbert_pool_factor: pool each document's ColBERT tokens before upsert into at most ``ceil(n / factor)``
            Ward-cluster means, as ``HybridStore(colbert_pool_factor=)`` does (``1``: keep every token). Recorded in
            the collection metadata; an existing collection keeps the factor it was built with.
        sparse_dim: the vocabulary size bounding sparse token ids (default: the encoder's ``vocab_size``; any id
            below 2**31 - 1 without an encoder), as for ``HybridStore``.
        modes: the modes a new collection holds (default: the encoder's outputs, or those of the first
            ``add_encoded``). ``"bm25"`` must be declared here, e.g. ``modes=("dense", "colbert", "bm25")``.
        bm25_language, bm25_stopwords, bm25_k1, bm25_b, bm25_method: the ``bm25`` mode's settings, as for
            ``HybridStore`` (``bm25_method`` must be ``"lucene"``: the one variant Qdrant's IDF computes). Recorded in
            the collection metadata; an existing collection keeps its own (different values are refused).

    The ``bm25`` mode is a sparse vector ``"bm25"`` with Qdrant's IDF modifier: stems (bm25s + PyStemmer, as in
    ``HybridStore``) hashed to 32-bit ids, document values the BM25 term-frequency component with the average
    length of the live collection when the document was written, query values the stem counts; IDF is computed by
    Qdrant over the live documents holding a bm25 vector. See :mod:`m3_rag.index.bm25_sparse` for where scores can
    differ from ``HybridStore`` (the average length, float32, hash collisions). Documents written without a text
    have no bm25 vector.

    Thread safety: every call on a local-mode client (``":memory:"`` or a path) is serialised by a re-entrant
    lock, since qdrant-client's local mode has no locking of its own (encoding runs outside the lock). A server
    client is thread-safe by itself (each request is independent and Qdrant applies writes atomically per
    request), so no lock is taken there.
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
        colbert_pool_factor: int = 1,
        sparse_dim: int | None = None,
        modes: Sequence[str] | None = None,
        bm25_language: str | None = BM25_DEFAULTS["language"],
        bm25_stopwords: str | Sequence[str] | None = BM25_DEFAULTS["stopwords"],
        bm25_k1: float = BM25_DEFAULTS["k1"],
        bm25_b: float = BM25_DEFAULTS["b"],
        bm25_method: str = BM25_DEFAULTS["method"],
    ) -> None:
        from ..index.bm25_sparse import declare
        from ..index.pooling import check_pool_factor

        qdrant_client, models = _qdrant()
        self.colbert_pool_factor = check_pool_factor(colbert_pool_factor)
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
        self._sparse_dim = check_sparse_dim(sparse_dim, encoder)
        self._declared, self._bm25 = declare(modes, {"language": bm25_language, "stopwords": bm25_stopwords,
                                                     "k1": bm25_k1, "b": bm25_b, "method": bm25_method})
        self._bm25_declared = self._bm25 is not None
        if self._declared is not None and encoder is not None:
            lacking = [m for m in self._declared if m != "bm25" and m not in encoder.available_modes]
            if lacking:
                raise ValueError(f"modes {self._declared} include {lacking}, which the encoder does not compute")
        self.client, self._owns_client = self._make_client(qdrant_client, client_or_url_or_path)
        self._lock: Any = threading.RLock() if self._is_local(self.client) else contextlib.nullcontext()
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
            self._create(self._declared or encoder.available_modes, self._encoder_dims(encoder))
        elif self._declared is not None and all(m in ("sparse", "bm25") for m in self._declared):
            self._create(self._declared, {})

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _is_local(client: Any) -> bool:
        """Whether ``client`` runs qdrant-client's embedded local mode (no locking of its own)."""
        inner = getattr(client, "_client", None)
        return type(inner).__name__ == "QdrantLocal" or type(inner).__module__.startswith("qdrant_client.local")

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
        kwargs.setdefault("colbert_pool_factor", getattr(store, "colbert_pool_factor", 1))
        carry(store, kwargs)
        if "colbert_datatype" not in kwargs:
            dtype = getattr(store, "colbert_dtype", "fp16")
            kwargs["colbert_datatype"] = "float32" if dtype == "fp32" else "float16"
        q = cls(client_or_url_or_path, collection, **kwargs)
        if q._fingerprint is None:
            q._fingerprint = store.fingerprint
        if len(store) == 0:
            return q
        ids, encoded, texts, metadatas = store.export()
        pf, q.colbert_pool_factor = q.colbert_pool_factor, 1  # exported tokens are already pooled
        try:
            q.add_encoded(encoded, ids=ids, texts=texts, metadatas=metadatas)
        finally:
            q.colbert_pool_factor = pf
        return q

    def to_store(self, **store_kwargs: Any) -> "HybridStore":
        """Export this collection into a new in-memory ``HybridStore`` (same ids, order, texts, metadata, vectors).

        ``store_kwargs`` go to the ``HybridStore`` constructor (``encoder`` defaults to this store's encoder).
        """
        from ..store import HybridStore

        store_kwargs.setdefault("encoder", self._encoder)
        store_kwargs.setdefault("colbert_pool_factor", self.colbert_pool_factor)
        carry(self, store_kwargs)
        if "colbert_dtype" not in store_kwargs and "colbert" in self._modes:
            store_kwargs["colbert_dtype"] = "fp16" if self.colbert_datatype == "float16" else "fp32"
        store = HybridStore(**store_kwargs)
        if len(self) == 0:
            return store
        ids, encoded, texts, metadatas = self.export()
        store._add_exported(encoded, ids=ids, texts=texts, metadatas=metadatas)  # already pooled here
        return store

    def save(self, path: str | Path) -> None:
        """Write a snapshot of the collection as a ``HybridStore`` folder (``HybridStore.load`` reads it).

        Qdrant persists the collection itself (server, or local path mode); this is for moving a collection back to
        the in-memory store, or for code written against ``HybridStore.save`` (e.g. LlamaIndex's ``persist``).
        """
        self.to_store(show_progress=False).save(path)

    @serialised
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
    def bm25_options(self) -> dict[str, Any] | None:
        """The ``bm25`` mode's settings (``None`` when the collection does not hold bm25)."""
        return None if self._bm25 is None else dict(self._bm25.options)

    @property
    def sparse_dim(self) -> int | None:
        """The vocabulary size bounding sparse token ids (``None``: any id below 2**31 - 1)."""
        return self._sparse_dim

    @property
    def fingerprint(self) -> str | None:
        """The encoder fingerprint recorded in the collection metadata."""
        return self._fingerprint

    def __repr__(self) -> str:
        return f"QdrantHybridStore(collection={self.collection!r}, modes={self._modes}, size={len(self)})"

    # ------------------------------------------------------------------ search
    def search(self, query: str, **kwargs: Any) -> list[Hit]:
        """Encode ``query`` (only the heads the requested modes need) and search; see :meth:`search_encoded`."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a str; got {type(query).__name__}. Use search_batch for a list.")
        return self.search_batch([query], **kwargs)[0]

    _ENCODER_HINT = "open the collection with QdrantHybridStore(client_or_url_or_path, collection, encoder=...)"  # search_batch comes from EncodedSearchMixin

    # search_encoded / search_encoded_batch come from EncodedSearchMixin. Options are HybridStore's, plus
    # ``server_fusion``: run RRF/DBSF on the server (approximate, see the module docstring; ``None`` uses the
    # constructor default). Dict filters become Qdrant payload filters applied before top-k.
    def _options(self, kwargs: Mapping[str, Any]) -> Any:
        from ..search import parse_options

        from ..search.server_fusion import wants_server_fusion

        opts = parse_options(self._modes, encoder=self._encoder, extra_names=("server_fusion",), **kwargs)
        wants_server_fusion(opts, self.server_fusion)  # refuses weighted fusion on the server
        return opts

    @serialised
    def _search(self, queries: M3Output, opts: Any) -> list[list[Hit]]:
        from ..search import run
        from ..validation import check_query
        from .backend import QdrantBackend

        if len(queries) == 0:
            return []
        if not self._exists():
            return [[] for _ in range(len(queries))]
        check_query(queries, opts.modes, self._dims, self._sparse_dim)
        backend = QdrantBackend(self)
        from ..search.server_fusion import wants_server_fusion

        if wants_server_fusion(opts, self.server_fusion):
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

