"""HybridStore: an embedded in-memory index over BGE-M3's dense, sparse and ColBERT outputs.

Layout (every per-document array is indexed by an internal *slot*, assigned in insertion order):

* dense: FAISS, row ``i`` is slot ``i``: exact ``IndexFlatIP`` in blocks of <= 512 MB (so growing the
  index never copies more than one block), or one approximate ``IndexHNSWFlat``.
* sparse and ColBERT: a list of append-only *segments*, each covering a contiguous slot range.
  A segment holds the inverted index (a CSC matrix ``(docs, vocab)``: one posting list per token
  id) and the ColBERT token vectors packed contiguously with an offsets array (fp32, fp16 or
  int8 with one scale per token). New documents form a new segment; segments are merged
  LSM-style (a segment at least half the size of the one before it is merged into it), so a
  store holds O(log n) segments.
* delete marks slots dead (a tombstone mask). Dead slots are excluded from every search, before
  top-k, so they never surface. When more than a quarter of the slots are dead the store is
  compacted (arrays rewritten, FAISS index rebuilt), and ``save`` always writes a compact store.

Concurrency: a readers-writer lock; searches run in parallel, writes are exclusive. Encoding
(the model forward pass) runs outside the lock.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import shutil
import tempfile
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from .filters import compile_filter
from .fusion import DEFAULT_WEIGHTS, FUSIONS, fuse, resolve_weights
from .scoring import maxsim_packed, pack_colbert
from .types import MODES, Hit, M3Output, Record

__all__ = ["HybridStore", "DENSE_INDEXES", "COLBERT_DTYPES", "FORMAT_VERSION", "DEFAULT_WEIGHTS", "FUSIONS"]

#: Dense index kinds: exact inner product, or approximate HNSW graph.
DENSE_INDEXES: tuple[str, ...] = ("flat", "hnsw")
#: ColBERT storage types: bytes per value 4, 2 and 1 (+ a 4-byte scale per token).
COLBERT_DTYPES: tuple[str, ...] = ("fp32", "fp16", "int8")
#: Version of the on-disk layout written by :meth:`HybridStore.save`.
FORMAT_VERSION = 1
_FORMAT_NAME = "m3-rag.HybridStore"
_NP_DTYPES = {"fp32": np.float32, "fp16": np.float16, "int8": np.int8}
#: Compact when more than this fraction of the slots are dead.
_COMPACT_FRACTION = 0.25
#: A filter/ids restriction admitting at most this fraction of the docs is served by a direct
#: exact scan of the admitted rows instead of a FAISS search with an ID selector.
_GATHER_FRACTION = 0.25
_QUERY_CHUNK = 64


# ---------------------------------------------------------------------------------------- helpers
class _RWLock:
    """A writer-preferring readers-writer lock (not reentrant)."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _topk_stable(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, by descending score, ties by ascending index."""
    n = scores.shape[0]
    if k >= n:
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k - 1)[:k]
    thr = scores[part].min()
    above = np.flatnonzero(scores > thr)
    if len(above) < k:
        tied = np.flatnonzero(scores == thr)[: k - len(above)]
        sel = np.concatenate([above, tied])
    else:  # cannot happen unless NaN; keep the partition
        sel = part
    sel.sort()
    return sel[np.argsort(-scores[sel], kind="stable")]


def _check_ids_arg(ids: Any, name: str = "ids") -> list[str]:
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{name} must be a list of strings, not a single string; wrap it: [{ids!r:.40}]")
    if not isinstance(ids, Collection) and not isinstance(ids, np.ndarray):
        raise TypeError(f"{name} must be a list of strings; got {type(ids).__name__}")
    out = list(ids)
    for i, x in enumerate(out):
        if not isinstance(x, str):
            raise TypeError(f"{name}[{i}] must be a str; got {type(x).__name__} ({x!r:.40}). Convert ids with str().")
    return out


def check_modes(modes: Any) -> tuple[str, ...]:
    """Validate a ``modes`` argument (one mode name or a list of them) and return it as a tuple."""
    if isinstance(modes, str):
        modes = (modes,)
    if not isinstance(modes, (Sequence, set, frozenset)):
        raise TypeError(f"modes must be a mode name or a list of them ({', '.join(MODES)}); got {type(modes).__name__}")
    mode_t = tuple(modes)
    if not mode_t:
        raise ValueError(f"modes is empty; choose from {', '.join(MODES)}")
    for m in mode_t:
        if m not in MODES:
            raise ValueError(f"unknown mode {m!r}; modes are {', '.join(MODES)}")
    if len(set(mode_t)) != len(mode_t):
        raise ValueError(f"modes lists a mode twice: {mode_t}")
    return mode_t


def check_rows(
    n: int, ids: Sequence[str] | None, metadatas: Sequence[dict | None] | None
) -> tuple[list[str], list[dict]]:
    """Validate the ids and metadatas of ``n`` documents being added (shared by every store).

    Returns the ids (new random hex ids when ``ids`` is None) and JSON-normalised metadata dicts
    (``None`` becomes ``{}``). Raises ``TypeError``/``ValueError`` naming the bad row.
    """
    if ids is None:
        ids_list = [uuid.uuid4().hex for _ in range(n)]
    else:
        ids_list = _check_ids_arg(ids)
        if len(ids_list) != n:
            raise ValueError(f"got {len(ids_list)} ids for {n} documents; pass one id per document")
        if len(set(ids_list)) != n:
            seen: set[str] = set()
            dups = sorted({x for x in ids_list if x in seen or seen.add(x)})  # type: ignore[func-returns-value]
            raise ValueError(f"duplicate ids within one add: {dups[:10]}; each id may appear once per call")
    if metadatas is None:
        return ids_list, [{} for _ in range(n)]
    if isinstance(metadatas, Mapping) or not isinstance(metadatas, Sequence):
        raise TypeError(f"metadatas must be a list of dicts (one per document); got {type(metadatas).__name__}")
    if len(metadatas) != n:
        raise ValueError(f"got {len(metadatas)} metadatas for {n} documents; pass one dict per document")
    metas: list[dict] = []
    for i, md in enumerate(metadatas):
        if md is None:
            metas.append({})
            continue
        if not isinstance(md, Mapping):
            raise TypeError(f"metadatas[{i}] must be a dict; got {type(md).__name__}")
        for key in md:
            if not isinstance(key, str):
                raise TypeError(f"metadatas[{i}] keys must be strings; got {key!r}")
        try:
            metas.append(json.loads(json.dumps(dict(md), allow_nan=False)))
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"metadatas[{i}] must be JSON-serialisable (str/int/float/bool/None, lists, dicts; "
                f"no NaN): {exc}. Convert values (e.g. dates with .isoformat()) before adding."
            ) from exc
    return ids_list, metas


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: Target bytes per FAISS flat block: growing the index never copies more than one block.
_DENSE_BLOCK_BYTES = 512 << 20


class _FlatBlocks:
    """Exact inner-product index made of ``faiss.IndexFlatIP`` blocks of at most ``block_rows`` vectors.

    One contiguous FAISS index grows like a ``std::vector``: each reallocation copies every vector and
    briefly needs twice the memory (a 1M x 1024 store would peak near 12 GB). Blocks bound that to one
    block. A store that fits in one block (131,072 vectors at 1024-d) searches with one FAISS call.
    """

    def __init__(self, d: int, block_rows: int | None = None) -> None:
        self.d = d
        self.block_rows = block_rows or max(8, (_DENSE_BLOCK_BYTES // (4 * d)) // 8 * 8)
        if self.block_rows % 8:
            raise ValueError("block_rows must be a multiple of 8 (bitmaps are sliced per block)")
        self.blocks: list[Any] = []

    @property
    def ntotal(self) -> int:
        return sum(int(b.ntotal) for b in self.blocks)

    def add(self, x: np.ndarray) -> None:
        import faiss

        pos = 0
        while pos < len(x):
            if not self.blocks or self.blocks[-1].ntotal >= self.block_rows:
                self.blocks.append(faiss.IndexFlatIP(self.d))
            block = self.blocks[-1]
            m = min(self.block_rows - int(block.ntotal), len(x) - pos)
            block.add(np.ascontiguousarray(x[pos : pos + m], dtype=np.float32))
            pos += m

    def view(self, j: int) -> np.ndarray:
        """Zero-copy view of block ``j``'s vectors (valid until the next write)."""
        import faiss

        b = self.blocks[j]
        n = int(b.ntotal)
        if n == 0:
            return np.zeros((0, self.d), dtype=np.float32)
        return faiss.rev_swig_ptr(b.get_xb(), n * self.d).reshape(n, self.d)

    def rows(self, slots: np.ndarray) -> np.ndarray:
        """The vectors of ``slots`` (a copy), shape ``(len(slots), d)``."""
        slots = np.asarray(slots, dtype=np.int64)
        if len(self.blocks) == 1:
            return self.view(0)[slots]
        out = np.empty((len(slots), self.d), dtype=np.float32)
        which = slots // self.block_rows
        for j in np.unique(which).tolist():
            sel = which == j
            out[sel] = self.view(j)[slots[sel] - j * self.block_rows]
        return out

    def search(self, Q: np.ndarray, k: int, bitmap: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of each query over every block (optionally only the slots set in ``bitmap``)."""
        import faiss

        if len(self.blocks) == 1 and bitmap is None:
            return self.blocks[0].search(Q, k)
        Ds, Is = [], []
        for j, b in enumerate(self.blocks):
            kk = min(k, int(b.ntotal))
            start = j * self.block_rows
            if bitmap is None:
                D, I = b.search(Q, kk)
            else:
                sub = np.ascontiguousarray(bitmap[start // 8 : (start + int(b.ntotal) + 7) // 8])
                if not sub.any():
                    continue
                sel = faiss.IDSelectorBitmap(len(sub), faiss.swig_ptr(sub))
                D, I = b.search(Q, kk, params=faiss.SearchParameters(sel=sel))
            Ds.append(np.where(I >= 0, D, -np.inf))
            Is.append(np.where(I >= 0, I + start, -1))
        nq = len(Q)
        if not Ds:
            return np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)
        D = np.concatenate(Ds, axis=1)
        I = np.concatenate(Is, axis=1)
        if D.shape[1] < k:
            D = np.pad(D, ((0, 0), (0, k - D.shape[1])), constant_values=-np.inf)
            I = np.pad(I, ((0, 0), (0, k - I.shape[1])), constant_values=-1)
        order = np.argsort(-D, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(D, order, axis=1).astype(np.float32), np.take_along_axis(I, order, axis=1)


@dataclass
class _Segment:
    """Sparse + ColBERT data of the slots ``[start, start + n)``."""

    start: int
    n: int
    sparse: sp.csc_matrix | None = None  # (n, vocab): column t = posting list of token t
    tokens: np.ndarray | None = None  # (T, d_colbert) in the store's ColBERT dtype
    offsets: np.ndarray | None = None  # (n + 1,) int64, local
    scale: np.ndarray | None = None  # (T,) float32 for int8

    @property
    def stop(self) -> int:
        return self.start + self.n


def _sparse_matrix(rows: Sequence[Mapping[int, float]], what: str = "sparse", dtype: Any = np.float32) -> sp.csr_matrix:
    """Stack sparse weight dicts into a CSR matrix ``(len(rows), max_token_id + 1)``."""
    n = len(rows)
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=n)
    total = int(lengths.sum())
    try:
        keys_f = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.float64, count=total)
        vals = np.fromiter(itertools.chain.from_iterable(r.values() for r in rows), dtype=np.float64, count=total)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what}: every row must be a dict[int, float] (token id -> weight): {exc}") from exc
    keys = keys_f.astype(np.int64)
    if total:
        if not np.array_equal(keys, keys_f) or keys.min() < 0 or keys.max() >= 2**31 - 1:
            bad = keys_f[(keys != keys_f) | (keys < 0)]
            raise ValueError(f"{what}: token ids must be non-negative integers; got {bad[:5].tolist()}")
        if not np.all(np.isfinite(vals)):
            raise ValueError(f"{what}: weights must be finite numbers")
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    vocab = int(keys.max()) + 1 if total else 1
    return sp.csr_matrix((vals.astype(dtype), keys.astype(np.int32), indptr), shape=(n, vocab))


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(starts[i], starts[i] + lengths[i])`` for every i, vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    return np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(total, dtype=np.int64)


def _quantize_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8 quantisation: ``x ~= q * scale[:, None]``."""
    amax = np.abs(x).max(axis=1) if x.shape[0] else np.zeros(0, dtype=np.float32)
    scale = (amax / 127.0).astype(np.float32)
    scale[scale == 0] = 1.0
    q = np.rint(x / scale[:, None]).clip(-127, 127).astype(np.int8)
    return q, scale


# ---------------------------------------------------------------------------------------- store
class HybridStore:
    """An in-memory index holding any subset of BGE-M3's dense, sparse and ColBERT outputs.

    Args:
        encoder: an :class:`m3_rag.M3Encoder` for text input (``add``/``search``); without one,
            use ``add_encoded``/``search_encoded`` with precomputed :class:`M3Output` rows.
        dense_index: ``"flat"`` (exact inner product, ``faiss.IndexFlatIP``) or ``"hnsw"``
            (``faiss.IndexHNSWFlat``: approximate, much faster on large corpora; see the README
            for the measured recall/speed trade-off). Filters admitting <= 25% of the docs are
            always served exactly.
        hnsw_m: HNSW graph degree (memory ~ ``2 * hnsw_m * 4`` bytes/doc on top of the vectors).
        hnsw_ef_search: HNSW search beam width (raised to the number of results wanted).
        hnsw_ef_construction: HNSW build beam width.
        colbert_dtype: ColBERT storage type: ``"fp16"`` (default, 2 bytes/value), ``"fp32"`` or
            ``"int8"`` (1 byte/value + a float32 scale per token).
        show_progress: show the encoder's progress bar for large ``add`` calls.

    The modes the store holds are fixed by the first add (a subset of :data:`m3_rag.MODES`).
    Document ids are strings; an existing id is upserted (the new version goes last in insertion
    order). Duplicate ids within one add raise ``ValueError``.
    """

    def __init__(
        self,
        encoder: Any | None = None,
        *,
        dense_index: str = "flat",
        hnsw_m: int = 32,
        hnsw_ef_search: int = 128,
        hnsw_ef_construction: int = 80,
        colbert_dtype: str = "fp16",
        show_progress: bool = True,
    ) -> None:
        if dense_index not in DENSE_INDEXES:
            raise ValueError(f"dense_index must be one of {', '.join(DENSE_INDEXES)}; got {dense_index!r}")
        if colbert_dtype not in COLBERT_DTYPES:
            raise ValueError(f"colbert_dtype must be one of {', '.join(COLBERT_DTYPES)}; got {colbert_dtype!r}")
        for name, val in (("hnsw_m", hnsw_m), ("hnsw_ef_search", hnsw_ef_search), ("hnsw_ef_construction", hnsw_ef_construction)):
            if not isinstance(val, int) or isinstance(val, bool) or val <= 0:
                raise ValueError(f"{name} must be a positive int; got {val!r}")
        if encoder is not None and not hasattr(encoder, "encode_queries"):
            raise TypeError(f"encoder must be an m3_rag.M3Encoder; got {type(encoder).__name__}")
        self._encoder = encoder
        self.dense_index = dense_index
        self.hnsw_m = hnsw_m
        self.hnsw_ef_search = hnsw_ef_search
        self.hnsw_ef_construction = hnsw_ef_construction
        self.colbert_dtype = colbert_dtype
        self.show_progress = bool(show_progress)
        self._saved_fingerprint: str | None = None
        self._lock = _RWLock()
        self._reset()

    def _reset(self) -> None:
        self._modes: tuple[str, ...] | None = None
        self._dense_dim: int | None = None
        self._colbert_dim: int | None = None
        self._index: Any = None
        self._segments: list[_Segment] = []
        self._slot_ids: list[str] = []
        self._texts: list[str | None] = []
        self._metas: list[dict] = []
        self._alive = np.zeros(0, dtype=bool)
        self._id_to_slot: dict[str, int] = {}
        self._alive_bitmap: np.ndarray | None = None  # packed alive mask when slots are dead

    # ------------------------------------------------------------------ info
    @property
    def encoder(self) -> Any | None:
        """The encoder used for text input, or ``None``."""
        return self._encoder

    @property
    def modes(self) -> tuple[str, ...]:
        """The modes this store holds (empty until the first add)."""
        return self._modes or ()

    @property
    def fingerprint(self) -> str | None:
        """The encoder fingerprint recorded with the index (``None`` without an encoder)."""
        if self._encoder is not None:
            return self._encoder.fingerprint
        return self._saved_fingerprint

    @property
    def dense_dim(self) -> int | None:
        """Dense vector dimension (``None`` until dense vectors are added)."""
        return self._dense_dim

    @property
    def colbert_dim(self) -> int | None:
        """ColBERT vector dimension (``None`` until ColBERT vectors are added)."""
        return self._colbert_dim

    def __len__(self) -> int:
        return len(self._id_to_slot)

    def __contains__(self, id: object) -> bool:
        return isinstance(id, str) and id in self._id_to_slot

    def __repr__(self) -> str:
        return (
            f"HybridStore(docs={len(self)}, modes={self.modes}, dense_index={self.dense_index!r}, "
            f"colbert_dtype={self.colbert_dtype!r})"
        )

    def ids(self) -> list[str]:
        """All document ids, in insertion order (an upserted id counts as inserted at its upsert)."""
        with self._lock.read():
            alive = self._alive
            return [self._slot_ids[i] for i in np.flatnonzero(alive)]

    def memory_bytes(self) -> dict[str, int]:
        """Approximate bytes held per component (dense, sparse, colbert), excluding Python objects."""
        with self._lock.read():
            out = {"dense": 0, "sparse": 0, "colbert": 0}
            if self._index is not None:
                out["dense"] = int(self._index.ntotal) * int(self._dense_dim or 0) * 4
                if self.dense_index == "hnsw":
                    out["dense"] += int(self._index.ntotal) * self.hnsw_m * 2 * 4
            for seg in self._segments:
                if seg.sparse is not None:
                    out["sparse"] += seg.sparse.data.nbytes + seg.sparse.indices.nbytes + seg.sparse.indptr.nbytes
                if seg.tokens is not None:
                    out["colbert"] += seg.tokens.nbytes + seg.offsets.nbytes  # type: ignore[union-attr]
                    out["colbert"] += 0 if seg.scale is None else seg.scale.nbytes
            return out

    # ------------------------------------------------------------------ adding
    def add(
        self,
        texts: Sequence[str],
        *,
        ids: Sequence[str] | None = None,
        metadatas: Sequence[dict | None] | None = None,
        batch_size: int = 32,
    ) -> list[str]:
        """Encode ``texts`` and add them; returns the ids (generated as uuid4 hex when absent).

        Only the heads the store holds are computed (a fresh store computes every head the
        encoder has). Existing ids are upserted.
        """
        if self._encoder is None:
            raise ValueError(
                "add() needs an encoder: build the store with HybridStore(encoder=M3Encoder.from_pretrained(...)), "
                "or encode yourself and call add_encoded()"
            )
        if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a list of strings; got {type(texts).__name__}")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str; got {type(t).__name__} ({t!r:.40})")
        ids_list, metas = self._check_rows(len(texts), ids, texts, metadatas)
        if not texts:
            return []
        modes = self._modes or tuple(self._encoder.available_modes)
        encoded = self._encoder.encode_documents(
            texts,
            dense="dense" in modes,
            sparse="sparse" in modes,
            colbert="colbert" in modes,
            batch_size=batch_size,
            show_progress_bar=None if self.show_progress else False,
        )
        return self._add_checked(encoded, ids_list, texts, metas)

    def add_encoded(
        self,
        encoded: M3Output,
        *,
        ids: Sequence[str] | None = None,
        texts: Sequence[str | None] | None = None,
        metadatas: Sequence[dict | None] | None = None,
    ) -> list[str]:
        """Add precomputed rows. The first add fixes the store's modes (``encoded.modes``); later
        adds must hold at least those modes (extra ones are ignored). Returns the ids."""
        if not isinstance(encoded, M3Output):
            raise TypeError(f"encoded must be an M3Output; got {type(encoded).__name__}")
        n = len(encoded)
        if texts is not None:
            if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
                raise TypeError(f"texts must be a list of strings (or None); got {type(texts).__name__}")
            texts = list(texts)
            for i, t in enumerate(texts):
                if t is not None and not isinstance(t, str):
                    raise TypeError(f"texts[{i}] must be a str or None; got {type(t).__name__}")
        ids_list, metas = self._check_rows(n, ids, texts, metadatas)
        if n == 0:
            return []
        return self._add_checked(encoded, ids_list, texts if texts is not None else [None] * n, metas)

    def _check_rows(
        self, n: int, ids: Sequence[str] | None, texts: Sequence[Any] | None, metadatas: Sequence[dict | None] | None
    ) -> tuple[list[str], list[dict]]:
        if texts is not None and len(texts) != n:
            raise ValueError(f"got {len(texts)} texts for {n} encoded rows; pass one text per row")
        return check_rows(n, ids, metadatas)

    def _check_encoded(self, encoded: M3Output, modes: tuple[str, ...], what: str) -> None:
        for mode in modes:
            if getattr(encoded, mode) is None:
                raise ValueError(
                    f"{what} has no {mode!r} output but the store holds {modes}; encode with {mode}=True"
                )
        if "dense" in modes:
            d = encoded.dense.shape[1]  # type: ignore[union-attr]
            if self._dense_dim is not None and d != self._dense_dim:
                raise ValueError(f"{what}: dense dimension {d} does not match the store's {self._dense_dim}")
            if not np.all(np.isfinite(encoded.dense)):
                raise ValueError(f"{what}: dense vectors contain NaN or infinity")
        if "colbert" in modes:
            dims = {int(m.shape[1]) for m in encoded.colbert if m.shape[0] > 0}  # type: ignore[union-attr]
            if self._colbert_dim is not None:
                dims.add(self._colbert_dim)
            if len(dims) > 1:
                raise ValueError(f"{what}: ColBERT dimensions {sorted(dims)} differ (store: {self._colbert_dim})")

    def _add_checked(self, encoded: M3Output, ids: list[str], texts: Sequence[str | None], metas: list[dict]) -> list[str]:
        if not isinstance(encoded, M3Output):
            raise TypeError(f"encoded must be an M3Output; got {type(encoded).__name__}")
        n = len(encoded)
        if n != len(ids):
            raise ValueError(f"the encoder returned {n} rows for {len(ids)} texts")
        modes = self._modes or encoded.modes
        if not modes:
            raise ValueError("encoded holds no output (dense, sparse and colbert are all None)")
        self._check_encoded(encoded, modes, "encoded")
        # Build the new segment outside the lock: conversion is the expensive part of an add.
        colbert_dim = self._colbert_dim
        built = self._build_segment(encoded, modes, colbert_dim)
        with self._lock.write():
            if self._modes is not None and (tuple(modes) != self._modes or colbert_dim != self._colbert_dim):
                # another thread fixed the modes or dimensions meanwhile: check and rebuild against them
                modes, colbert_dim = self._modes, self._colbert_dim
                self._check_encoded(encoded, modes, "encoded")
                built = self._build_segment(encoded, modes, colbert_dim)
            seg_sparse, tokens, offsets, scale, colbert_dim = built
            dense = encoded.dense if "dense" in modes else None
            if self._modes is None:
                self._modes = tuple(modes)
            if dense is not None:
                if self._dense_dim is None:
                    self._dense_dim = int(dense.shape[1])
                elif dense.shape[1] != self._dense_dim:
                    raise ValueError(f"encoded: dense dimension {dense.shape[1]} does not match the store's {self._dense_dim}")
            if colbert_dim is not None:
                self._colbert_dim = colbert_dim
            self._delete_locked([i for i in ids if i in self._id_to_slot], compact=False)
            start = len(self._slot_ids)
            if dense is not None:
                if self._index is None:
                    self._index = self._new_dense_index()
                self._index.add(dense)
            self._segments.append(_Segment(start, n, seg_sparse, tokens, offsets, scale))
            self._merge_segments()
            self._slot_ids.extend(ids)
            self._texts.extend(texts)
            self._metas.extend(metas)
            self._alive = np.concatenate([self._alive, np.ones(n, dtype=bool)])
            for j, doc_id in enumerate(ids):
                self._id_to_slot[doc_id] = start + j
            self._after_mutation()
        return ids

    def _build_segment(self, encoded: M3Output, modes: Sequence[str], colbert_dim: int | None) -> tuple[Any, ...]:
        """Convert rows to segment arrays: (sparse CSC, tokens, offsets, scale, colbert_dim)."""
        seg_sparse = _sparse_matrix(encoded.sparse, "encoded.sparse").tocsc() if "sparse" in modes else None  # type: ignore[arg-type]
        tokens = offsets = scale = None
        if "colbert" in modes:
            mats = encoded.colbert
            if colbert_dim is None:
                colbert_dim = next((int(m.shape[1]) for m in mats if m.shape[0] > 0), int(mats[0].shape[1]))  # type: ignore[index]
            mats = [m if m.shape[0] else np.zeros((0, colbert_dim), np.float32) for m in mats]  # type: ignore[union-attr]
            for m in mats:
                if not np.all(np.isfinite(m)):
                    raise ValueError("encoded: ColBERT vectors contain NaN or infinity")
            packed, offsets = pack_colbert(mats, np.float32)
            packed = packed.reshape(-1, colbert_dim)
            if self.colbert_dtype == "int8":
                tokens, scale = _quantize_int8(packed)
            else:
                tokens = packed.astype(_NP_DTYPES[self.colbert_dtype], copy=False)
        return seg_sparse, tokens, offsets, scale, colbert_dim

    def _new_dense_index(self) -> Any:
        import faiss

        d = int(self._dense_dim)  # type: ignore[arg-type]
        if self.dense_index == "flat":
            return _FlatBlocks(d)
        index = faiss.IndexHNSWFlat(d, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.hnsw_ef_construction
        index.hnsw.efSearch = self.hnsw_ef_search
        return index

    def _merge_segments(self) -> None:
        segs = self._segments
        while len(segs) >= 2 and 2 * segs[-1].n >= segs[-2].n:
            b = segs.pop()
            a = segs.pop()
            segs.append(self._concat_segments([a, b]))

    @staticmethod
    def _concat_segments(parts: list[_Segment], keep: list[np.ndarray] | None = None) -> _Segment:
        """One segment from consecutive ``parts``; ``keep`` optionally selects local rows of each."""
        start = parts[0].start
        sparse = None
        if parts[0].sparse is not None:
            vocab = max(p.sparse.shape[1] for p in parts)  # type: ignore[union-attr]
            mats = []
            for i, p in enumerate(parts):
                m = p.sparse.tocsr()  # type: ignore[union-attr]
                if keep is not None:
                    m = m[keep[i]]
                m.resize((m.shape[0], vocab))
                mats.append(m)
            sparse = sp.vstack(mats, format="csr").tocsc()
            sparse.indices = sparse.indices.astype(np.int32, copy=False)
        tokens = offsets = scale = None
        if parts[0].tokens is not None:
            tok_list, len_list, scale_list = [], [], []
            for i, p in enumerate(parts):
                off = p.offsets
                lengths = np.diff(off)  # type: ignore[arg-type]
                if keep is None:
                    tok_list.append(p.tokens)
                    len_list.append(lengths)
                    if p.scale is not None:
                        scale_list.append(p.scale)
                else:
                    rows = keep[i]
                    idx = _ranges(off[rows], lengths[rows])  # type: ignore[index]
                    tok_list.append(p.tokens[idx])
                    len_list.append(lengths[rows])
                    if p.scale is not None:
                        scale_list.append(p.scale[idx])
            tokens = np.concatenate(tok_list, axis=0)
            lengths = np.concatenate(len_list)
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            scale = np.concatenate(scale_list) if scale_list else None
        n = sum(p.n for p in parts) if keep is None else sum(len(k) for k in keep)
        return _Segment(start, n, sparse, tokens, offsets, scale)

    # ------------------------------------------------------------------ delete / get
    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents by id; unknown ids are ignored. Returns the number removed."""
        ids_list = _check_ids_arg(ids)
        with self._lock.write():
            return self._delete_locked(ids_list, compact=True)

    def _delete_locked(self, ids: list[str], *, compact: bool) -> int:
        removed = 0
        for doc_id in ids:
            slot = self._id_to_slot.pop(doc_id, None)
            if slot is None:
                continue
            self._alive[slot] = False
            self._texts[slot] = None
            self._metas[slot] = {}
            removed += 1
        if removed and compact:
            self._after_mutation()
        return removed

    def _after_mutation(self) -> None:
        n_slots = len(self._slot_ids)
        n_dead = n_slots - len(self._id_to_slot)
        if n_dead and n_dead > _COMPACT_FRACTION * n_slots:
            self._compact()
            n_dead = 0
        self._alive_bitmap = np.packbits(self._alive, bitorder="little") if n_dead else None

    def _compact(self) -> None:
        """Rewrite every array without the dead slots (and rebuild the FAISS index)."""
        keep = np.flatnonzero(self._alive)
        if len(keep) == len(self._slot_ids):
            return
        if len(keep) == 0:
            modes, dd, cd = self._modes, self._dense_dim, self._colbert_dim
            self._reset()
            self._modes, self._dense_dim, self._colbert_dim = modes, dd, cd
            return
        if self._index is not None:
            vectors = self._dense_rows(keep)
            self._index = self._new_dense_index()
            self._index.add(vectors)
            del vectors
        if self._segments:
            local = []
            for seg in self._segments:
                lo, hi = np.searchsorted(keep, [seg.start, seg.stop])
                local.append(keep[lo:hi] - seg.start)
            seg = self._concat_segments(self._segments, local)
            seg.start = 0
            self._segments = [seg]
        self._slot_ids = [self._slot_ids[i] for i in keep]
        self._texts = [self._texts[i] for i in keep]
        self._metas = [self._metas[i] for i in keep]
        self._alive = np.ones(len(keep), dtype=bool)
        self._id_to_slot = {doc_id: i for i, doc_id in enumerate(self._slot_ids)}
        self._alive_bitmap = None

    def clear(self) -> None:
        """Remove every document and forget the modes and dimensions (the store is fresh again)."""
        with self._lock.write():
            self._reset()

    def get(self, ids: Sequence[str]) -> list[Record]:
        """Records of the ids found, in the order asked (unknown ids are skipped)."""
        ids_list = _check_ids_arg(ids)
        with self._lock.read():
            out = []
            for doc_id in ids_list:
                slot = self._id_to_slot.get(doc_id)
                if slot is not None:
                    out.append(Record(doc_id, self._texts[slot], copy.deepcopy(self._metas[slot])))
            return out

    def export(
        self, ids: Sequence[str] | None = None
    ) -> tuple[list[str], M3Output, list[str | None], list[dict]]:
        """Everything stored for ``ids`` (default: all, in insertion order; unknown ids skipped).

        Returns ``(ids, M3Output, texts, metadatas)``; ColBERT vectors come back as float32
        (int8 storage dequantised).
        """
        with self._lock.read():
            if ids is None:
                slots = np.flatnonzero(self._alive)
            else:
                wanted = _check_ids_arg(ids)
                slots = np.array([self._id_to_slot[i] for i in wanted if i in self._id_to_slot], dtype=np.int64)
            out_ids = [self._slot_ids[s] for s in slots]
            texts = [self._texts[s] for s in slots]
            metas = [copy.deepcopy(self._metas[s]) for s in slots]
            modes = self._modes or ()
            dense = sparse = colbert = None
            if "dense" in modes:
                dense = self._dense_rows(slots) if len(slots) else np.zeros((0, self._dense_dim or 0), np.float32)
            if "sparse" in modes:
                sparse = self._sparse_rows(slots)
            if "colbert" in modes:
                colbert = [self._colbert_matrix(int(s)) for s in slots]
            return out_ids, M3Output(dense=dense, sparse=sparse, colbert=colbert), texts, metas

    # ------------------------------------------------------------------ low-level accessors
    def _dense_view(self) -> np.ndarray:
        """All dense vectors as one (ntotal, d) array: a zero-copy view (valid until the next write)
        for HNSW and single-block flat indexes, a copy otherwise."""
        import faiss

        index = self._index
        d = int(self._dense_dim or 0)
        if index is None or index.ntotal == 0:
            return np.zeros((0, d), dtype=np.float32)
        if isinstance(index, _FlatBlocks):
            if len(index.blocks) == 1:
                return index.view(0)
            return np.concatenate([index.view(j) for j in range(len(index.blocks))])
        flat = faiss.downcast_index(index.storage)
        return faiss.rev_swig_ptr(flat.get_xb(), int(index.ntotal) * d).reshape(int(index.ntotal), d)

    def _dense_rows(self, slots: np.ndarray) -> np.ndarray:
        """The dense vectors of ``slots`` (a copy)."""
        if isinstance(self._index, _FlatBlocks):
            return self._index.rows(slots)
        return self._dense_view()[slots]

    def _segment_of(self, slots: np.ndarray) -> np.ndarray:
        starts = np.fromiter((s.start for s in self._segments), dtype=np.int64, count=len(self._segments))
        return np.searchsorted(starts, slots, side="right") - 1

    def _sparse_rows(self, slots: np.ndarray) -> list[dict[int, float]]:
        out: list[dict[int, float]] = []
        seg_of = self._segment_of(slots)
        csr_cache: dict[int, sp.csr_matrix] = {}
        for s, g in zip(slots.tolist(), seg_of.tolist()):
            seg = self._segments[g]
            m = csr_cache.get(g)
            if m is None:
                m = csr_cache[g] = seg.sparse.tocsr()  # type: ignore[union-attr]
            a, b = m.indptr[s - seg.start], m.indptr[s - seg.start + 1]
            out.append(dict(zip(m.indices[a:b].tolist(), m.data[a:b].tolist())))
        return out

    def _colbert_matrix(self, slot: int) -> np.ndarray:
        seg = self._segments[int(self._segment_of(np.array([slot]))[0])]
        a, b = seg.offsets[slot - seg.start], seg.offsets[slot - seg.start + 1]  # type: ignore[index]
        mat = seg.tokens[a:b].astype(np.float32)  # type: ignore[index]
        if seg.scale is not None:
            mat *= seg.scale[a:b, None]
        return mat

    # ------------------------------------------------------------------ scoring kernels
    def _sparse_full(self, q_rows: Sequence[Mapping[int, float]]) -> np.ndarray:
        """Exact lexical scores of each query against every slot: ``(nq, n_slots)`` float64."""
        n_slots = len(self._slot_ids)
        nq = len(q_rows)
        out = np.zeros((nq, n_slots), dtype=np.float64)
        if nq == 1:
            q = q_rows[0]
            if not q:
                return out
            terms = np.fromiter(q.keys(), dtype=np.int64, count=len(q))
            weights = np.fromiter(q.values(), dtype=np.float64, count=len(q))
            for seg in self._segments:
                sel = terms < seg.sparse.shape[1]  # type: ignore[union-attr]
                t, w = terms[sel], weights[sel]
                indptr = seg.sparse.indptr  # type: ignore[union-attr]
                starts, ends = indptr[t], indptr[t + 1]
                lengths = ends - starts
                total = int(lengths.sum())
                if total == 0:
                    continue
                pos = _ranges(starts, lengths)  # every posting of every query term
                rows = seg.sparse.indices[pos]  # type: ignore[union-attr]
                vals = seg.sparse.data[pos] * np.repeat(w, lengths)  # type: ignore[union-attr]
                out[0, seg.start : seg.stop] = np.bincount(rows, weights=vals, minlength=seg.n)
            return out
        qm = _sparse_matrix(q_rows, "query.sparse", np.float64)
        for seg in self._segments:
            vocab = seg.sparse.shape[1]  # type: ignore[union-attr]
            qs = qm[:, :vocab] if qm.shape[1] >= vocab else sp.csr_matrix((qm.data, qm.indices, qm.indptr), shape=(nq, vocab))
            prod = qs @ seg.sparse.T  # type: ignore[union-attr]  # (nq, n) via the posting lists
            out[:, seg.start : seg.stop] = prod.toarray()
        return out

    def _colbert_scores(self, q: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Exact MaxSim of one query against ``slots`` (sorted or not)."""
        out = np.zeros(len(slots), dtype=np.float32)
        if len(slots) == 0:
            return out
        seg_of = self._segment_of(slots)
        for g in np.unique(seg_of).tolist():
            seg = self._segments[g]
            where = np.flatnonzero(seg_of == g)
            local = slots[where] - seg.start
            full = len(local) == seg.n and seg.n > 0 and local[0] == 0 and bool(np.all(np.diff(local) == 1))
            out[where] = maxsim_packed(q, seg.tokens, seg.offsets, None if full else local, scale=seg.scale)  # type: ignore[arg-type]
        return out

    def _dense_topk(self, Q: np.ndarray, k: int, allowed: np.ndarray | None, n_allowed: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` dense hits of each query among the allowed slots: (scores, slots), ``-1`` padded."""
        import faiss

        index = self._index
        n_slots = int(index.ntotal)
        if allowed is not None and n_allowed <= _GATHER_FRACTION * n_slots:
            slots = np.flatnonzero(allowed)
            sims = Q @ self._dense_rows(slots).T  # (nq, m)
            kk = min(k, len(slots))
            D = np.full((len(Q), k), -np.inf, dtype=np.float32)
            I = np.full((len(Q), k), -1, dtype=np.int64)
            for i in range(len(Q)):
                top = _topk_stable(sims[i], kk)
                D[i, :kk], I[i, :kk] = sims[i, top], slots[top]
            return D, I
        bitmap = None
        if allowed is not None:
            bitmap = np.packbits(allowed, bitorder="little")
        elif self._alive_bitmap is not None:
            bitmap = self._alive_bitmap
        if isinstance(index, _FlatBlocks):
            return index.search(Q, k, bitmap)
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(self.hnsw_ef_search, k)
        if bitmap is not None:
            sel = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
            params.sel = sel
        return index.search(Q, k, params=params)

    # ------------------------------------------------------------------ search API
    def search(
        self,
        query: str,
        *,
        k: int = 10,
        modes: Sequence[str] | str = ("dense", "sparse", "colbert"),
        weights: Sequence[float] | Mapping[str, float] | None = None,
        fusion: str = "weighted",
        candidates: int | None = None,
        filter: Mapping[str, Any] | Callable[[dict], bool] | None = None,
        ids: Collection[str] | None = None,
        explain: bool = False,
    ) -> list[Hit]:
        """Search with a text query (encoded once, computing only the heads ``modes`` need).

        Args:
            query: the query text (an empty string is searched as is).
            k: how many hits (a positive int); fewer when fewer documents match.
            modes: the modes to search, a subset of the modes the store holds (or one mode name).
            weights: per-mode weights, a sequence aligned with ``modes`` or a dict mode -> weight.
                Default: :data:`m3_rag.fusion.DEFAULT_WEIGHTS` for ``weighted``, 1.0 for ``rrf``/``dbsf``.
            fusion: ``"weighted"``, ``"rrf"`` or ``"dbsf"`` (see :mod:`m3_rag.fusion`).
            candidates: per first-stage mode, how many top documents enter the candidate set
                (default ``max(100, k)``; never fewer than ``k``). Dense and sparse are first-stage;
                ColBERT is first-stage (brute force) only when searched alone, and otherwise
                rescores the candidates. Every candidate is scored exactly in every mode.
            filter: a metadata filter dict (see :mod:`m3_rag.filters`) or a callable
                ``metadata -> bool``, applied before top-k.
            ids: restrict the search to these ids (``None``: no restriction).
            explain: fill ``Hit.explain`` with the matched sparse tokens ``{token: q_w * d_w}``.

        Single-mode searches return the exact top-k over the filtered corpus (approximate for
        ``dense_index="hnsw"``). Sparse top-k includes zero-score documents when fewer than ``k``
        documents share a token with the query (ties by insertion order).
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be a str; got {type(query).__name__}. Use search_batch for a list.")
        return self.search_batch([query], k=k, modes=modes, weights=weights, fusion=fusion, candidates=candidates,
                                 filter=filter, ids=ids, explain=explain)[0]

    def search_batch(self, queries: Sequence[str], **kwargs: Any) -> list[list[Hit]]:
        """:meth:`search` for many queries: one encoder call, and dense/sparse matrix products
        across queries. Takes the same keyword arguments."""
        if isinstance(queries, (str, bytes)) or not isinstance(queries, Sequence):
            raise TypeError(f"queries must be a list of strings; got {type(queries).__name__}. Use search() for one.")
        queries = list(queries)
        for i, q in enumerate(queries):
            if not isinstance(q, str):
                raise TypeError(f"queries[{i}] must be a str; got {type(q).__name__}")
        opts = self._check_options(**kwargs)
        if self._encoder is None:
            raise ValueError(
                "search() with text needs an encoder: build the store with HybridStore(encoder=...), "
                "or encode the query yourself and call search_encoded()"
            )
        if not queries:
            return []
        if len(self) == 0:
            return [[] for _ in queries]
        need = set(opts["modes"]) | ({"sparse"} if opts["explain"] else set())
        encoded = self._encoder.encode_queries(
            queries, dense="dense" in need, sparse="sparse" in need, colbert="colbert" in need, show_progress_bar=False
        )
        return self._search(encoded, opts)

    def search_encoded(self, query: M3Output, **kwargs: Any) -> list[Hit]:
        """:meth:`search` with a precomputed query: an :class:`M3Output` holding exactly one row."""
        if not isinstance(query, M3Output):
            raise TypeError(f"query must be an M3Output; got {type(query).__name__}")
        if len(query) != 1:
            raise ValueError(f"search_encoded needs an M3Output with exactly one row; got {len(query)} (use search_encoded_batch)")
        return self.search_encoded_batch(query, **kwargs)[0]

    def search_encoded_batch(self, queries: M3Output, **kwargs: Any) -> list[list[Hit]]:
        """:meth:`search_encoded` for every row of ``queries``; one result list per row."""
        if not isinstance(queries, M3Output):
            raise TypeError(f"queries must be an M3Output; got {type(queries).__name__}")
        opts = self._check_options(**kwargs)
        return self._search(queries, opts)

    _OPTION_NAMES = ("k", "modes", "weights", "fusion", "candidates", "filter", "ids", "explain")

    def _check_options(
        self,
        k: int = 10,
        modes: Sequence[str] | str = ("dense", "sparse", "colbert"),
        weights: Sequence[float] | Mapping[str, float] | None = None,
        fusion: str = "weighted",
        candidates: int | None = None,
        filter: Mapping[str, Any] | Callable[[dict], bool] | None = None,
        ids: Collection[str] | None = None,
        explain: bool = False,
        **unknown: Any,
    ) -> dict[str, Any]:
        if unknown:
            raise TypeError(f"unknown search option(s) {sorted(unknown)}; valid: {', '.join(self._OPTION_NAMES)}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"k must be a positive int; got {k!r}")
        if k <= 0:
            raise ValueError(f"k must be a positive int; got {k}")
        modes = check_modes(modes)
        if self._modes is not None:
            missing = [m for m in modes if m not in self._modes]
            if missing:
                raise ValueError(
                    f"this store holds no {missing} vectors (it holds {self._modes}); search modes={self._modes} "
                    "or add documents with those outputs to a new store"
                )
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
        w = resolve_weights(modes, weights, fusion)
        if candidates is not None and (isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer)) or candidates <= 0):
            raise ValueError(f"candidates must be a positive int or None; got {candidates!r}")
        pred = compile_filter(filter) if not (isinstance(filter, Mapping) and not filter) else None
        id_set = None
        if ids is not None:
            id_set = set(_check_ids_arg(ids))
        if explain:
            if self._encoder is None:
                raise ValueError("explain=True needs an encoder to turn token ids into strings; pass encoder= to the store")
            if self._modes is not None and "sparse" not in self._modes:
                raise ValueError(f"explain=True needs sparse vectors but this store holds {self._modes}")
        return {
            "k": int(k),
            "modes": modes,
            "weights": w,
            "fusion": fusion,
            "candidates": max(int(candidates) if candidates is not None else 100, int(k)),
            "filter": pred,
            "ids": id_set,
            "explain": bool(explain),
        }

    def _allowed(self, pred: Callable[[dict], bool] | None, id_set: set[str] | None) -> np.ndarray | None:
        """Mask of the searchable slots, or ``None`` for "every live slot" with no restriction."""
        if pred is None and id_set is None:
            return None
        mask = np.zeros(len(self._slot_ids), dtype=bool)
        if id_set is not None:
            slots = [self._id_to_slot[i] for i in id_set if i in self._id_to_slot]
            if pred is None:
                mask[slots] = True
                return mask
            metas = self._metas
            mask[[s for s in slots if pred(metas[s])]] = True
            return mask
        metas = self._metas
        for s in np.flatnonzero(self._alive).tolist():
            if pred(metas[s]):
                mask[s] = True
        return mask

    def _search(self, queries: M3Output, opts: dict[str, Any]) -> list[list[Hit]]:
        modes: tuple[str, ...] = opts["modes"]
        nq = len(queries)
        if nq == 0:
            return []
        with self._lock.read():
            if len(self._id_to_slot) == 0 or self._modes is None:
                return [[] for _ in range(nq)]
            need = modes + (("sparse",) if opts["explain"] and "sparse" not in modes else ())
            self._check_query(queries, need)
            allowed = self._allowed(opts["filter"], opts["ids"])
            n_allowed = len(self._id_to_slot) if allowed is None else int(allowed.sum())
            if n_allowed == 0:
                return [[] for _ in range(nq)]
            k = min(opts["k"], n_allowed)
            results: list[list[Hit]] = []
            for lo in range(0, nq, _QUERY_CHUNK):
                chunk = queries[lo : lo + _QUERY_CHUNK] if nq > _QUERY_CHUNK else queries
                if len(modes) == 1:
                    results.extend(self._search_single(chunk, modes[0], k, allowed, n_allowed, opts))
                else:
                    results.extend(self._search_hybrid(chunk, modes, k, allowed, n_allowed, opts))
            return results

    def _check_query(self, q: M3Output, need: tuple[str, ...]) -> None:
        for mode in need:
            if getattr(q, mode) is None:
                raise ValueError(f"the query has no {mode!r} output but modes {need} need it; encode it with {mode}=True")
        if "dense" in need and q.dense.shape[1] != self._dense_dim:  # type: ignore[union-attr]
            raise ValueError(f"query dense dimension {q.dense.shape[1]} does not match the store's {self._dense_dim}")  # type: ignore[union-attr]
        if "colbert" in need:
            for i, m in enumerate(q.colbert):  # type: ignore[union-attr]
                if m.shape[0] == 0:
                    raise ValueError(f"query {i} has no ColBERT token vectors")
                if m.shape[1] != self._colbert_dim:
                    raise ValueError(f"query ColBERT dimension {m.shape[1]} does not match the store's {self._colbert_dim}")

    def _masked(self, scores: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
        if allowed is not None:
            scores[~allowed] = -np.inf
        elif self._alive_bitmap is not None:
            scores[~self._alive] = -np.inf
        return scores

    def _search_single(
        self, q: M3Output, mode: str, k: int, allowed: np.ndarray | None, n_allowed: int, opts: dict[str, Any]
    ) -> list[list[Hit]]:
        out = []
        if mode == "dense":
            D, I = self._dense_topk(q.dense, k, allowed, n_allowed)  # type: ignore[arg-type]
            for i in range(len(q)):
                ok = I[i] >= 0
                slots, scores = I[i][ok], D[i][ok]
                order = np.lexsort((slots, -scores))
                out.append(self._hits(q, i, slots[order], scores[order], {"dense": scores[order]}, opts))
            return out
        if mode == "sparse":
            full = self._sparse_full(q.sparse)  # type: ignore[arg-type]
            for i in range(len(q)):
                s = self._masked(full[i], allowed)
                top = _topk_stable(s, k)
                out.append(self._hits(q, i, top, s[top], {"sparse": s[top]}, opts))
            return out
        # ColBERT alone: brute force over every allowed document
        slots_all = np.flatnonzero(self._alive if allowed is None else allowed)
        for i in range(len(q)):
            s = self._colbert_scores(q.colbert[i], slots_all)  # type: ignore[index]
            top = _topk_stable(s, k)
            out.append(self._hits(q, i, slots_all[top], s[top], {"colbert": s[top]}, opts))
        return out

    def _search_hybrid(
        self, q: M3Output, modes: tuple[str, ...], k: int, allowed: np.ndarray | None, n_allowed: int, opts: dict[str, Any]
    ) -> list[list[Hit]]:
        n_cand = min(opts["candidates"], n_allowed)
        dense_I = sparse_full = None
        if "dense" in modes:
            _, dense_I = self._dense_topk(q.dense, n_cand, allowed, n_allowed)  # type: ignore[arg-type]
        if "sparse" in modes:
            sparse_full = self._sparse_full(q.sparse)  # type: ignore[arg-type]
        out = []
        for i in range(len(q)):
            parts = []
            if dense_I is not None:
                parts.append(dense_I[i][dense_I[i] >= 0])
            if sparse_full is not None:
                s = self._masked(sparse_full[i], allowed)
                parts.append(_topk_stable(s, n_cand))
            cand = np.unique(np.concatenate(parts))  # sorted: insertion order
            per_mode: dict[str, np.ndarray] = {}
            for mode in modes:
                if mode == "dense":
                    per_mode["dense"] = self._dense_rows(cand) @ q.dense[i]  # type: ignore[index]
                elif mode == "sparse":
                    per_mode["sparse"] = sparse_full[i][cand]  # type: ignore[index]
                else:
                    per_mode["colbert"] = self._colbert_scores(q.colbert[i], cand)  # type: ignore[index]
            fused = fuse(opts["fusion"], per_mode, opts["weights"])
            top = _topk_stable(fused, k)
            out.append(self._hits(q, i, cand[top], fused[top], {m: v[top] for m, v in per_mode.items()}, opts))
        return out

    def _hits(
        self, q: M3Output, i: int, slots: np.ndarray, scores: np.ndarray, per_mode: Mapping[str, np.ndarray], opts: dict[str, Any]
    ) -> list[Hit]:
        slots_l = slots.tolist()
        scores_l = np.asarray(scores, dtype=np.float64).tolist()
        mode_l = {m: np.asarray(v, dtype=np.float64).tolist() for m, v in per_mode.items()}
        hits = []
        for j, s in enumerate(slots_l):
            hits.append(
                Hit(
                    id=self._slot_ids[s],
                    score=scores_l[j],
                    text=self._texts[s],
                    metadata=copy.deepcopy(self._metas[s]) if self._metas[s] else {},
                    scores={m: v[j] for m, v in mode_l.items()},
                    explain=self._explain(q.sparse[i], s) if opts["explain"] else None,  # type: ignore[index]
                )
            )
        return hits

    def _explain(self, q: Mapping[int, float], slot: int) -> dict[str, float]:
        """Matched sparse tokens of one document: ``{token string: q_w * d_w}``, largest first."""
        seg = self._segments[int(self._segment_of(np.array([slot]))[0])]
        m = seg.sparse
        local = slot - seg.start
        matched: list[tuple[int, float]] = []
        for t, qw in q.items():
            if t >= m.shape[1]:  # type: ignore[union-attr]
                continue
            a, b = m.indptr[t], m.indptr[t + 1]  # type: ignore[union-attr]
            rows = m.indices[a:b]  # type: ignore[union-attr]
            j = int(np.searchsorted(rows, local))
            if j < len(rows) and rows[j] == local:
                matched.append((int(t), float(qw) * float(m.data[a + j])))  # type: ignore[union-attr]
        if not matched:
            return {}
        names = self._encoder.decode_tokens([t for t, _ in matched])  # type: ignore[union-attr]
        out: dict[str, float] = {}
        for name, (_, c) in zip(names, matched):
            out[name] = out.get(name, 0.0) + c
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the store to the folder ``path`` atomically (npy arrays + JSON, no pickle).

        The files are written to a temporary sibling folder, fsynced, then swapped in by rename:
        a crash leaves the previous index intact. An existing folder at ``path`` is replaced only
        if it holds a saved HybridStore (or is empty).
        """
        path = Path(path)
        parent = path.parent
        parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            if not path.is_dir():
                raise ValueError(f"cannot save to {path}: it is a file, not a folder")
            if any(path.iterdir()) and not (path / "store.json").is_file():
                raise ValueError(
                    f"refusing to overwrite {path}: the folder is not empty and holds no store.json "
                    "(choose an empty or new folder)"
                )
        with self._lock.write():
            self._compact()
            if len(self._segments) > 1:
                self._segments = [self._concat_segments(self._segments)]
            self._alive_bitmap = None
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=parent))
            try:
                self._write_files(tmp)
                _fsync_dir(tmp)
                if path.exists():
                    old = parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
                    os.rename(path, old)
                    os.rename(tmp, path)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.rename(tmp, path)
                _fsync_dir(parent)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise

    def _write_files(self, folder: Path) -> None:
        files: dict[str, dict[str, Any]] = {}

        def put(name: str, arr: np.ndarray) -> None:
            arr = np.ascontiguousarray(arr)
            target = folder / name
            with open(target, "wb") as f:
                np.save(f, arr, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            files[name] = {
                "sha256": _sha256_file(target),
                "bytes": target.stat().st_size,
                "shape": list(arr.shape),
                "dtype": arr.dtype.str,
            }

        def put_blocks(name: str, blocks: list[np.ndarray], shape: tuple[int, int]) -> None:
            """Write row blocks as one float32 .npy without concatenating them in memory."""
            target = folder / name
            with open(target, "wb") as f:
                np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
                for block in blocks:
                    f.write(np.ascontiguousarray(block, dtype="<f4").data)
                f.flush()
                os.fsync(f.fileno())
            files[name] = {"sha256": _sha256_file(target), "bytes": target.stat().st_size, "shape": list(shape), "dtype": "<f4"}

        def put_json(name: str, obj: Any) -> None:
            target = folder / name
            data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
            with open(target, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

        modes = self._modes or ()
        n = len(self._slot_ids)
        seg = self._segments[0] if self._segments else None
        if "dense" in modes:
            if self.dense_index == "flat":
                index = self._index if self._index is not None else self._new_dense_index()
                put_blocks("dense.npy", [index.view(j) for j in range(len(index.blocks))], (n, int(self._dense_dim)))
            else:
                import faiss

                put("dense_hnsw.npy", faiss.serialize_index(self._index if self._index is not None else self._new_dense_index()))
        if "sparse" in modes:
            m = seg.sparse.tocsr() if seg is not None else sp.csr_matrix((0, 1), dtype=np.float32)  # type: ignore[union-attr]
            put("sparse_indptr.npy", m.indptr.astype(np.int64))
            put("sparse_indices.npy", m.indices.astype(np.int32))
            put("sparse_data.npy", m.data.astype(np.float32))
        if "colbert" in modes:
            dtype = _NP_DTYPES[self.colbert_dtype]
            put("colbert_tokens.npy", seg.tokens if seg is not None else np.zeros((0, self._colbert_dim or 0), dtype))  # type: ignore[arg-type]
            put("colbert_offsets.npy", seg.offsets if seg is not None else np.zeros(1, np.int64))  # type: ignore[arg-type]
            if self.colbert_dtype == "int8":
                put("colbert_scale.npy", seg.scale if seg is not None else np.zeros(0, np.float32))  # type: ignore[arg-type]
        put_json("records.json", {"ids": self._slot_ids, "texts": self._texts, "metadatas": self._metas})
        header = {
            "format": _FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "modes": list(modes),
            "count": n,
            "dense_dim": self._dense_dim,
            "colbert_dim": self._colbert_dim,
            "colbert_dtype": self.colbert_dtype,
            "dense_index": self.dense_index,
            "hnsw_m": self.hnsw_m,
            "hnsw_ef_search": self.hnsw_ef_search,
            "hnsw_ef_construction": self.hnsw_ef_construction,
            "sparse_nnz": int(seg.sparse.nnz) if seg is not None and seg.sparse is not None else 0,
            "colbert_tokens": int(seg.tokens.shape[0]) if seg is not None and seg.tokens is not None else 0,
            "files": files,
        }
        with open(folder / "store.json", "w", encoding="utf-8") as f:
            json.dump(header, f, indent=1)
            f.flush()
            os.fsync(f.fileno())

    @classmethod
    def load(cls, path: str | os.PathLike[str], encoder: Any | None = None, *, show_progress: bool = True) -> "HybridStore":
        """Load a store written by :meth:`save`.

        Raises ``ValueError`` when the encoder's fingerprint differs from the one recorded, and
        when any file is missing, truncated, tampered with (checksums) or inconsistent.
        """
        path = Path(path)
        header_path = path / "store.json"
        if not header_path.is_file():
            raise FileNotFoundError(f"no saved HybridStore at {path}: {header_path} does not exist")
        try:
            header = json.loads(header_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{header_path} is corrupt: {exc}") from exc
        if not isinstance(header, dict) or header.get("format") != _FORMAT_NAME:
            raise ValueError(f"{header_path} is not a HybridStore header (format {header.get('format') if isinstance(header, dict) else None!r})")
        version = header.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{path} has format version {version!r}; this m3_rag reads version {FORMAT_VERSION}. Upgrade m3_rag or re-index.")
        try:
            return cls._from_header(path, header, encoder, show_progress)
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"{header_path} is malformed or inconsistent: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def _from_header(cls, path: Path, header: dict[str, Any], encoder: Any | None, show_progress: bool) -> "HybridStore":
        saved_fp = header["fingerprint"]
        if encoder is not None and saved_fp is not None and encoder.fingerprint != saved_fp:
            raise ValueError(
                f"the index at {path} was built with a model of fingerprint {saved_fp}, but the encoder given has "
                f"fingerprint {encoder.fingerprint} ({getattr(encoder, 'name', '?')}). Load it with the same model, "
                "or re-index the documents with this one."
            )
        modes = tuple(header["modes"])
        if any(m not in MODES for m in modes):
            raise ValueError(f"{path}/store.json lists unknown modes {modes}")
        store = cls(
            encoder,
            dense_index=header["dense_index"],
            hnsw_m=header["hnsw_m"],
            hnsw_ef_search=header["hnsw_ef_search"],
            hnsw_ef_construction=header.get("hnsw_ef_construction", 80),
            colbert_dtype=header["colbert_dtype"],
            show_progress=show_progress,
        )
        store._saved_fingerprint = saved_fp
        files: dict[str, dict[str, Any]] = header["files"]
        n = header["count"]
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"{path}/store.json: count must be a non-negative int; got {n!r}")

        def verified(name: str) -> Path:
            meta = files.get(name)
            if meta is None:
                raise ValueError(f"{path}/store.json does not list {name}; the index is incomplete")
            fp = path / name
            if not fp.is_file():
                raise ValueError(f"{fp} is missing; the saved index is incomplete")
            size = fp.stat().st_size
            if size != meta["bytes"]:
                raise ValueError(f"{fp} has {size} bytes, expected {meta['bytes']}: the file is truncated or was modified")
            if _sha256_file(fp) != meta["sha256"]:
                raise ValueError(f"{fp} fails its checksum: the file is corrupt or was modified")
            return fp

        def arr(name: str, dtype: Any, ndim: int, shape0: int | None = None, mmap: bool = False) -> np.ndarray:
            fp = verified(name)
            try:
                a = np.load(fp, allow_pickle=False, mmap_mode="r" if mmap else None)
            except Exception as exc:  # numpy raises several types for a bad header
                raise ValueError(f"{fp} is not a valid .npy file: {exc}") from exc
            meta = files[name]
            if a.dtype != np.dtype(dtype) or a.dtype.str != meta["dtype"] or a.ndim != ndim or list(a.shape) != meta["shape"]:
                raise ValueError(
                    f"{fp}: expected a {ndim}-D {np.dtype(dtype)} array of shape {meta['shape']}; "
                    f"got {a.dtype} {a.shape}"
                )
            if shape0 is not None and a.shape[0] != shape0:
                raise ValueError(f"{fp}: expected {shape0} rows for {n} documents; got {a.shape[0]}")
            return a

        rec_path = verified("records.json")
        try:
            records = json.loads(rec_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{rec_path} is corrupt: {exc}") from exc
        ids, texts, metas = records["ids"], records["texts"], records["metadatas"]
        if not (isinstance(ids, list) and isinstance(texts, list) and isinstance(metas, list)) or not (len(ids) == len(texts) == len(metas) == n):
            raise ValueError(f"{rec_path}: ids/texts/metadatas must be lists of {n} entries")
        if not all(isinstance(i, str) for i in ids) or len(set(ids)) != n:
            raise ValueError(f"{rec_path}: ids must be unique strings")
        if not all(t is None or isinstance(t, str) for t in texts) or not all(isinstance(m, dict) for m in metas):
            raise ValueError(f"{rec_path}: texts must be strings or null and metadatas objects")

        dense_index = None
        dense_dim = header["dense_dim"]
        if "dense" in modes:
            import faiss

            if not isinstance(dense_dim, int) or dense_dim <= 0:
                raise ValueError(f"{path}/store.json: dense_dim must be a positive int; got {dense_dim!r}")
            store._dense_dim = dense_dim
            if store.dense_index == "flat":
                dense = arr("dense.npy", np.float32, 2, n, mmap=True)
                if dense.shape[1] != dense_dim:
                    raise ValueError(f"{path}/dense.npy has dimension {dense.shape[1]}, expected {dense_dim}")
                dense_index = _FlatBlocks(dense_dim)
                step = dense_index.block_rows
                for lo in range(0, n, step):  # block by block: never a second full copy in memory
                    chunk = np.array(dense[lo : lo + step])
                    if not np.all(np.isfinite(chunk)):
                        raise ValueError(f"{path}/dense.npy holds NaN or infinity")
                    dense_index.add(chunk)
                del dense
            else:
                raw = arr("dense_hnsw.npy", np.uint8, 1)
                try:
                    dense_index = faiss.deserialize_index(raw)
                except RuntimeError as exc:
                    raise ValueError(f"{path}/dense_hnsw.npy is not a valid FAISS index: {exc}") from exc
                if dense_index.ntotal != n or dense_index.d != dense_dim:
                    raise ValueError(f"{path}/dense_hnsw.npy holds {dense_index.ntotal} x {dense_index.d}; expected {n} x {dense_dim}")
            if encoder is not None and encoder.dense_dim != dense_dim:
                raise ValueError(f"the index has dense dimension {dense_dim} but the encoder produces {encoder.dense_dim}")
        seg = _Segment(0, n)
        if "sparse" in modes:
            indptr = arr("sparse_indptr.npy", np.int64, 1, n + 1)
            indices = arr("sparse_indices.npy", np.int32, 1)
            data = arr("sparse_data.npy", np.float32, 1)
            nnz = header["sparse_nnz"]
            if indptr[0] != 0 or indptr[-1] != len(indices) or len(indices) != len(data) or len(data) != nnz or np.any(np.diff(indptr) < 0):
                raise ValueError(f"{path}: sparse arrays are inconsistent (indptr/indices/data lengths do not agree)")
            if len(indices) and indices.min() < 0:
                raise ValueError(f"{path}/sparse_indices.npy holds negative token ids")
            if not np.all(np.isfinite(data)):
                raise ValueError(f"{path}/sparse_data.npy holds NaN or infinity")
            vocab = int(indices.max()) + 1 if len(indices) else 1
            seg.sparse = sp.csr_matrix((data, indices, indptr), shape=(n, vocab)).tocsc()
            seg.sparse.indices = seg.sparse.indices.astype(np.int32, copy=False)
        if "colbert" in modes:
            cdim = header["colbert_dim"]
            if not isinstance(cdim, int) or cdim <= 0:
                raise ValueError(f"{path}/store.json: colbert_dim must be a positive int; got {cdim!r}")
            store._colbert_dim = cdim
            tokens = arr("colbert_tokens.npy", _NP_DTYPES[store.colbert_dtype], 2)
            offsets = arr("colbert_offsets.npy", np.int64, 1, n + 1)
            if tokens.shape[1] != cdim or tokens.shape[0] != header["colbert_tokens"]:
                raise ValueError(f"{path}/colbert_tokens.npy has shape {tokens.shape}; expected ({header['colbert_tokens']}, {cdim})")
            if offsets[0] != 0 or offsets[-1] != tokens.shape[0] or np.any(np.diff(offsets) < 0):
                raise ValueError(f"{path}/colbert_offsets.npy is inconsistent with the token array")
            seg.tokens, seg.offsets = tokens, offsets
            if store.colbert_dtype == "int8":
                seg.scale = arr("colbert_scale.npy", np.float32, 1, tokens.shape[0])
            elif not np.all(np.isfinite(tokens[: min(len(tokens), 1 << 16)])):
                raise ValueError(f"{path}/colbert_tokens.npy holds NaN or infinity")
            if encoder is not None and encoder.colbert_dim is not None and encoder.colbert_dim != cdim:
                raise ValueError(f"the index has ColBERT dimension {cdim} but the encoder produces {encoder.colbert_dim}")
        store._modes = modes or None
        store._index = dense_index
        store._segments = [seg] if n and ("sparse" in modes or "colbert" in modes) else []
        store._slot_ids = ids
        store._texts = texts
        store._metas = metas
        store._alive = np.ones(n, dtype=bool)
        store._id_to_slot = {doc_id: i for i, doc_id in enumerate(ids)}
        return store
