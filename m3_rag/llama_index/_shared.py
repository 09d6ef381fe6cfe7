"""Hand encoder outputs from one LlamaIndex component to another, so no text goes through the backbone twice.

Two hand-overs, both per ``M3Encoder`` object (components share them only when they share the encoder):

- **Nodes** (index build): ``VectorStoreIndex(nodes, embed_model=M3Embedding(...))`` first asks the embedding
  for every node's dense vector, then hands the nodes to ``M3VectorStore.add``, which needs sparse and ColBERT
  too. While an ``M3VectorStore`` over an encoder exists, ``M3Embedding`` over the same encoder computes the
  heads the store holds in the same forward pass and leaves the rows here; ``add`` takes (removes) the rows of
  its nodes and encodes only the texts it does not find.
- **Queries** (reranking): while an ``M3ColbertRerank`` over an encoder exists, ``M3VectorStore`` and
  ``M3Retriever`` compute the query's ColBERT vectors along with the heads they search and leave them here;
  the reranker uses them instead of encoding the query again.

Entries are keyed by the exact text and the effective ``max_length`` (the document or query default, capped at
the encoder's ``max_seq_length``), so a hit holds exactly what encoding that text again would give. Both caches
are bounded LRUs: the node cache by bytes (:data:`NODE_CACHE_BYTES`) and entries (:data:`NODE_CACHE_ENTRIES`),
the query cache by entries (:data:`QUERY_CACHE_ENTRIES`). An evicted row is simply encoded again.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any, Iterable, Sequence

import numpy as np

from ..encoder import DOCUMENT_MAX_LENGTH, QUERY_MAX_LENGTH, M3Encoder
from ..types import M3Output

__all__ = ["shared_for", "SharedEncodings", "NODE_CACHE_BYTES", "NODE_CACHE_ENTRIES", "QUERY_CACHE_ENTRIES"]

#: Most bytes of vectors the node cache holds (dense + sparse + ColBERT, float32).
NODE_CACHE_BYTES = 1 << 30
#: Most nodes the node cache holds (LlamaIndex inserts 2048 nodes per batch by default).
NODE_CACHE_ENTRIES = 8192
#: Most queries the query cache holds.
QUERY_CACHE_ENTRIES = 64
_HEADS = ("dense", "sparse", "colbert")


def _row_bytes(row: dict[str, Any]) -> int:
    size = 0
    for mode, value in row.items():
        if mode == "sparse":
            size += 16 * len(value) + 64
        else:
            size += int(value.nbytes)
    return size


class _LRU:
    """A thread-safe LRU of ``key -> {mode: value}`` bounded by entries and bytes."""

    def __init__(self, max_entries: int, max_bytes: int | None) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._data: OrderedDict[Any, tuple[dict[str, Any], int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return self._bytes

    def put(self, key: Any, row: dict[str, Any]) -> None:
        size = _row_bytes(row)
        if self.max_bytes is not None and size > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._data[key] = (row, size)
            self._bytes += size
            while len(self._data) > self.max_entries or (self.max_bytes is not None and self._bytes > self.max_bytes):
                _, (_, dropped) = self._data.popitem(last=False)
                self._bytes -= dropped

    def get(self, key: Any, *, pop: bool) -> dict[str, Any] | None:
        with self._lock:
            item = self._data.pop(key, None) if pop else self._data.get(key)
            if item is None:
                return None
            if pop:
                self._bytes -= item[1]
            else:
                self._data.move_to_end(key)
            return item[0]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0


def _rows(out: M3Output, modes: Iterable[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [{} for _ in range(len(out))]
    for mode in modes:
        values = getattr(out, mode)
        for i, row in enumerate(rows):
            row[mode] = values[i]
    return rows


def _output(rows: Sequence[dict[str, Any]], modes: Sequence[str]) -> M3Output:
    fields: dict[str, Any] = {}
    if "dense" in modes:
        fields["dense"] = np.stack([r["dense"] for r in rows]).astype(np.float32, copy=False)
    if "sparse" in modes:
        fields["sparse"] = [r["sparse"] for r in rows]
    if "colbert" in modes:
        fields["colbert"] = [r["colbert"] for r in rows]
    return M3Output(**fields)


class _WeakMembers:
    """Weak references to live objects (pydantic models are unhashable, so no ``WeakSet``)."""

    def __init__(self) -> None:
        self._refs: dict[int, weakref.ref] = {}
        self._lock = threading.Lock()

    def add(self, obj: Any) -> None:
        key = id(obj)

        def _drop(_ref: weakref.ref, key: int = key) -> None:
            with self._lock:
                if self._refs.get(key) is _ref:
                    del self._refs[key]

        with self._lock:
            self._refs[key] = weakref.ref(obj, _drop)

    def live(self) -> list[Any]:
        with self._lock:
            refs = list(self._refs.values())
        return [o for o in (r() for r in refs) if o is not None]


class SharedEncodings:
    """The node and query hand-over of one encoder (see the module docstring). Get it with :func:`shared_for`."""

    def __init__(self, encoder: M3Encoder) -> None:
        self._encoder_ref = weakref.ref(encoder)
        self.nodes = _LRU(NODE_CACHE_ENTRIES, NODE_CACHE_BYTES)
        self.queries = _LRU(QUERY_CACHE_ENTRIES, None)
        self._stores = _WeakMembers()
        self._rerankers = _WeakMembers()

    @property
    def encoder(self) -> M3Encoder:
        encoder = self._encoder_ref()
        if encoder is None:  # pragma: no cover - the registry drops us with the encoder
            raise RuntimeError("the encoder of this cache was garbage-collected")
        return encoder

    # ------------------------------------------------------------------ keys
    def doc_key(self, text: str) -> tuple[str, int]:
        return text, self.encoder._effective_max_length(None, DOCUMENT_MAX_LENGTH)

    def query_key(self, text: str) -> tuple[str, int]:
        return text, self.encoder._effective_max_length(None, QUERY_MAX_LENGTH)

    # ------------------------------------------------------------------ registration
    def register_store(self, store: Any) -> None:
        """``store`` (an ``M3VectorStore``) will consume node rows; it must have a ``wanted_heads()`` method."""
        self._stores.add(store)

    def register_reranker(self, reranker: Any) -> None:
        """A ColBERT reranker over this encoder exists: searches should leave the query's ColBERT vectors."""
        self._rerankers.add(reranker)

    def node_heads(self) -> tuple[str, ...]:
        """The heads live stores over this encoder need beyond dense (empty: nothing to hand over)."""
        wanted = set()
        for store in self._stores.live():
            wanted.update(store.wanted_heads())
        return tuple(m for m in _HEADS if m in wanted)

    @property
    def wants_query_colbert(self) -> bool:
        """Whether a live reranker over this encoder would use a query's ColBERT vectors."""
        return bool(self._rerankers.live())

    # ------------------------------------------------------------------ nodes
    def put_documents(self, texts: Sequence[str], out: M3Output, modes: Sequence[str]) -> None:
        """Leave the rows of ``texts`` (encoded with the document defaults) for a store's ``add``."""
        for text, row in zip(texts, _rows(out, modes)):
            self.nodes.put(self.doc_key(text), row)

    def take_documents(
        self, texts: Sequence[str], modes: Sequence[str], *, batch_size: int, show_progress: bool | None = None
    ) -> M3Output:
        """The rows of ``texts`` for ``modes``: cached rows are taken (removed), the others are encoded now."""
        rows: list[dict[str, Any] | None] = []
        for text in texts:
            row = self.nodes.get(self.doc_key(text), pop=True)
            rows.append(row if row is not None and all(m in row for m in modes) else None)
        missing = [i for i, r in enumerate(rows) if r is None]
        if missing:
            unique = list(dict.fromkeys(texts[i] for i in missing))
            fresh = self.encoder.encode_documents(
                unique,
                dense="dense" in modes,
                sparse="sparse" in modes,
                colbert="colbert" in modes,
                batch_size=batch_size,
                show_progress=show_progress,
            )
            by_text = dict(zip(unique, _rows(fresh, modes)))
            for i in missing:
                rows[i] = by_text[texts[i]]
        return _output(rows, modes)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ queries
    def put_query(self, text: str, colbert: np.ndarray) -> None:
        self.queries.put(self.query_key(text), {"colbert": colbert})

    def get_query_colbert(self, text: str) -> np.ndarray | None:
        row = self.queries.get(self.query_key(text), pop=False)
        return None if row is None else row["colbert"]


_REGISTRY: "weakref.WeakKeyDictionary[M3Encoder, SharedEncodings]" = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()


def shared_for(encoder: M3Encoder) -> SharedEncodings:
    """The hand-over of ``encoder`` (created on first use; lives as long as the encoder)."""
    with _REGISTRY_LOCK:
        shared = _REGISTRY.get(encoder)
        if shared is None:
            shared = _REGISTRY[encoder] = SharedEncodings(encoder)
        return shared


def search_with_query_handover(store: Any, query_str: str, settings: dict[str, Any]) -> list[Any]:
    """``store.search(query_str, **settings)``; when a reranker over the store's encoder exists, the query is
    encoded here (the searched heads plus ColBERT, one pass), its ColBERT vectors are left for the reranker and
    the store searches the encoded query (same hits as ``store.search``)."""
    encoder = getattr(store, "encoder", None)
    if not isinstance(encoder, M3Encoder) or "colbert" not in encoder.available_modes:
        return store.search(query_str, **settings)
    shared = shared_for(encoder)
    if not shared.wants_query_colbert or not callable(getattr(store, "search_encoded", None)) or len(store) == 0:
        return store.search(query_str, **settings)
    modes = settings.get("modes") or tuple(store.modes)
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    need = set(modes) | ({"sparse"} if settings.get("explain") else set())
    encoded = encoder.encode_queries(
        [query_str], dense="dense" in need, sparse="sparse" in need, colbert=True, show_progress=False
    )
    shared.put_query(query_str, encoded.colbert[0])  # type: ignore[index]
    if "colbert" not in need:
        encoded = M3Output(dense=encoded.dense, sparse=encoded.sparse)
    return store.search_encoded(encoded, query_text=query_str, **settings)
