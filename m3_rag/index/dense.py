"""Dense index: FAISS exact inner product in blocks (``flat``) or one approximate HNSW graph (``hnsw``)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .base import ModeIndex, topk_stable

__all__ = ["DenseIndex", "DENSE_INDEXES"]

#: Dense index kinds: exact inner product, or approximate HNSW graph.
DENSE_INDEXES: tuple[str, ...] = ("flat", "hnsw")
#: Target bytes per FAISS flat block: growing the index never copies more than one block.
_DENSE_BLOCK_BYTES = 512 << 20
#: A restriction admitting at most this fraction of the slots is served by an exact scan of the admitted rows.
_GATHER_FRACTION = 0.25


class _FlatBlocks:
    """Exact inner-product index made of ``faiss.IndexFlatIP`` blocks of at most ``block_rows`` vectors.

    One contiguous FAISS index grows like a ``std::vector``: each reallocation copies every vector and
    briefly needs twice the memory. Blocks bound that to one block.
    """

    def __init__(self, d: int, block_rows: int | None = None) -> None:
        self.d = d
        self.block_rows = block_rows or max(8, (_DENSE_BLOCK_BYTES // (4 * d)) // 8 * 8)
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

    def truncate(self, n: int) -> None:
        """Drop every vector from row ``n`` on (the rollback of a failed :meth:`add`)."""
        import faiss

        keep_blocks = -(-n // self.block_rows) if n else 0
        del self.blocks[keep_blocks:]
        if self.blocks:
            last = self.blocks[-1]
            local = n - (len(self.blocks) - 1) * self.block_rows
            if int(last.ntotal) > local:
                last.remove_ids(faiss.IDSelectorRange(local, int(last.ntotal)))

    def view(self, j: int) -> np.ndarray:
        """Zero-copy view of block ``j``'s vectors (valid until the next write)."""
        import faiss

        b = self.blocks[j]
        n = int(b.ntotal)
        if n == 0:
            return np.zeros((0, self.d), dtype=np.float32)
        return faiss.rev_swig_ptr(b.get_xb(), n * self.d).reshape(n, self.d)

    def rows(self, slots: np.ndarray) -> np.ndarray:
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


class DenseIndex(ModeIndex):
    """L2-normalised dense vectors scored by inner product (FAISS).

    Args:
        dim: vector dimension (> 0).
        kind: ``"flat"`` (exact) or ``"hnsw"`` (approximate; restrictions admitting <= 25% of the slots are
            still served exactly).
        hnsw_m, hnsw_ef_search, hnsw_ef_construction: HNSW graph degree and beam widths.
    """

    mode = "dense"

    def __init__(self, dim: int, kind: str = "flat", *, hnsw_m: int = 32, hnsw_ef_search: int = 128,
                 hnsw_ef_construction: int = 80) -> None:
        if kind not in DENSE_INDEXES:
            raise ValueError(f"dense_index must be one of {', '.join(DENSE_INDEXES)}; got {kind!r}")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(f"dense dimension must be a positive int; got {dim!r}")
        self.dim = int(dim)
        self.kind = kind
        self.hnsw_m = hnsw_m
        self.hnsw_ef_search = hnsw_ef_search
        self.hnsw_ef_construction = hnsw_ef_construction
        self._index = self._new()

    def _new(self) -> Any:
        import faiss

        if self.kind == "flat":
            return _FlatBlocks(self.dim)
        index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.hnsw_ef_construction
        index.hnsw.efSearch = self.hnsw_ef_search
        return index

    def _like(self) -> "DenseIndex":
        return DenseIndex(self.dim, self.kind, hnsw_m=self.hnsw_m, hnsw_ef_search=self.hnsw_ef_search,
                          hnsw_ef_construction=self.hnsw_ef_construction)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def prepare(self, rows: Any) -> np.ndarray:
        x = np.ascontiguousarray(rows, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            got = x.shape[1] if x.ndim == 2 else x.shape
            raise ValueError(f"dense dimension {got} does not match the store's {self.dim}")
        if not np.all(np.isfinite(x)):
            raise ValueError("dense vectors contain NaN or infinity")
        return x

    def append(self, prepared: np.ndarray) -> None:
        if len(prepared):
            self._index.add(prepared)

    def compact(self, keep: np.ndarray) -> "DenseIndex":
        out = self._like()
        if len(keep):
            out._index.add(self.rows(keep))
        return out

    def extended(self, prepared: np.ndarray) -> "DenseIndex":
        """A new index (a copy of every vector: FAISS indexes grow in place); the store instead appends the
        dense rows last with :meth:`append_or_rollback`."""
        return self.extended_compacted(prepared, np.arange(len(self) + len(prepared), dtype=np.int64))

    def extended_compacted(self, prepared: np.ndarray, keep: np.ndarray) -> "DenseIndex":
        out = self._like()
        keep = np.asarray(keep, dtype=np.int64)
        n = len(self)
        old, new = keep[keep < n], keep[keep >= n] - n
        if len(old):
            out._index.add(self.rows(old))
        if len(new):
            out._index.add(np.ascontiguousarray(prepared[new]))
        return out

    def _rollback(self, n: int) -> None:
        if isinstance(self._index, _FlatBlocks):
            self._index.truncate(n)
            return
        # FAISS HNSW cannot drop vertices: rebuild the graph from the first n stored vectors
        rows = np.array(self.view()[:n])
        self._index = self._new()
        if n:
            self._index.add(rows)

    def view(self) -> np.ndarray:
        """All vectors ``(len, dim)``: zero-copy when the index is one block or HNSW (valid until the next write)."""
        import faiss

        index = self._index
        if index.ntotal == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if isinstance(index, _FlatBlocks):
            if len(index.blocks) == 1:
                return index.view(0)
            return np.concatenate([index.view(j) for j in range(len(index.blocks))])
        flat = faiss.downcast_index(index.storage)
        return faiss.rev_swig_ptr(flat.get_xb(), int(index.ntotal) * self.dim).reshape(int(index.ntotal), self.dim)

    def rows(self, slots: np.ndarray) -> np.ndarray:
        if isinstance(self._index, _FlatBlocks):
            return self._index.rows(slots)
        return self.view()[np.asarray(slots, dtype=np.int64)]

    def topk(self, Q: Any, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        Q = np.ascontiguousarray(Q, dtype=np.float32)
        n_slots = len(self)
        if allowed is not None and int(allowed.sum()) <= _GATHER_FRACTION * n_slots:
            slots = np.flatnonzero(allowed)
            sims = Q @ self.rows(slots).T
            kk = min(k, len(slots))
            D = np.full((len(Q), k), -np.inf, dtype=np.float32)
            I = np.full((len(Q), k), -1, dtype=np.int64)
            for i in range(len(Q)):
                top = topk_stable(sims[i], kk)
                D[i, :kk], I[i, :kk] = sims[i, top], slots[top]
            return D, I
        bitmap = None if allowed is None else np.packbits(allowed, bitorder="little")
        if isinstance(self._index, _FlatBlocks):
            return self._index.search(Q, k, bitmap)
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(self.hnsw_ef_search, k)
        if bitmap is not None:
            params.sel = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
        return self._index.search(Q, k, params=params)

    def score(self, Q: Any, slots: Sequence[np.ndarray]) -> list[np.ndarray]:
        Q = np.asarray(Q, dtype=np.float32)
        return [self.rows(s) @ Q[i] for i, s in enumerate(slots)]

    def nbytes(self) -> int:
        n = len(self) * self.dim * 4
        return n + (len(self) * self.hnsw_m * 2 * 4 if self.kind == "hnsw" else 0)

    def settings(self) -> dict[str, Any]:
        return {"dense_dim": self.dim, "dense_index": self.kind, "hnsw_m": self.hnsw_m,
                "hnsw_ef_search": self.hnsw_ef_search, "hnsw_ef_construction": self.hnsw_ef_construction}

    def to_arrays(self) -> tuple[dict[str, Any], dict[str, Any]]:
        import faiss

        if self.kind == "flat":
            blocks = [self._index.view(j) for j in range(len(self._index.blocks))]
            return self.settings(), {"dense.npy": ("blocks", blocks, (len(self), self.dim))}
        return self.settings(), {"dense_hnsw.npy": faiss.serialize_index(self._index)}

    @classmethod
    def from_arrays(cls, meta: Mapping[str, Any], load: Any, n: int) -> "DenseIndex":
        import faiss

        dim = meta["dense_dim"]
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dense_dim must be a positive int; got {dim!r}")
        out = cls(dim, meta["dense_index"], hnsw_m=meta["hnsw_m"], hnsw_ef_search=meta["hnsw_ef_search"],
                  hnsw_ef_construction=meta.get("hnsw_ef_construction", 80))
        if out.kind == "flat":
            dense = load("dense.npy", np.float32, 2, rows=n, mmap=True)
            if dense.shape[1] != dim:
                raise ValueError(f"dense.npy has dimension {dense.shape[1]}, expected {dim}")
            step = out._index.block_rows
            for lo in range(0, n, step):  # block by block: never a second full copy in memory
                chunk = np.array(dense[lo : lo + step])
                if not np.all(np.isfinite(chunk)):
                    raise ValueError("dense.npy holds NaN or infinity")
                out._index.add(chunk)
            return out
        raw = load("dense_hnsw.npy", np.uint8, 1)
        try:
            out._index = faiss.deserialize_index(np.array(raw))
        except RuntimeError as exc:
            raise ValueError(f"dense_hnsw.npy is not a valid FAISS index: {exc}") from exc
        if out._index.ntotal != n or out._index.d != dim:
            raise ValueError(f"dense_hnsw.npy holds {out._index.ntotal} x {out._index.d}; expected {n} x {dim}")
        return out
