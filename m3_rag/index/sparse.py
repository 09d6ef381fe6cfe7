"""Sparse index: BGE-M3 lexical weights in an inverted index (one CSC matrix ``(docs, vocab)`` per segment)."""

from __future__ import annotations

import itertools
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from ._segments import Segments, ranges
from .base import ModeIndex

__all__ = ["SparseIndex", "sparse_matrix"]


def sparse_matrix(rows: Sequence[Mapping[int, float]], what: str = "sparse", dtype: Any = np.float32,
                  vocab_size: int | None = None) -> sp.csr_matrix:
    """Stack sparse weight dicts into a CSR matrix ``(len(rows), max_token_id + 1)``; validates ids and weights."""
    n = len(rows)
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=n)
    total = int(lengths.sum())
    try:
        keys_f = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.float64, count=total)
        vals = np.fromiter(itertools.chain.from_iterable(r.values() for r in rows), dtype=np.float64, count=total)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"{what}: every row must be a dict[int, float] (token id -> weight): {exc}") from exc
    limit = vocab_size if vocab_size is not None else 2**31 - 1
    if total:
        keys_ok = np.isfinite(keys_f) & (keys_f == np.floor(keys_f)) & (keys_f >= 0) & (keys_f < limit)
        if not np.all(keys_ok):
            bad = keys_f[~keys_ok]
            raise ValueError(
                f"{what}: token ids must be non-negative integers below {limit}; got {bad[:5].tolist()}"
            )
        if not np.all(np.isfinite(vals)):
            raise ValueError(f"{what}: weights must be finite numbers")
        if dtype == np.float32 and np.any(np.abs(vals) > np.finfo(np.float32).max):
            raise ValueError(f"{what}: weights exceed float32's range")
    keys = keys_f.astype(np.int64)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    vocab = int(keys.max()) + 1 if total else 1
    return sp.csr_matrix((vals.astype(dtype), keys.astype(np.int32), indptr), shape=(n, vocab))


def _concat(parts: list[sp.csc_matrix], keep: list[np.ndarray] | None) -> sp.csc_matrix:
    vocab = max(p.shape[1] for p in parts)
    mats = []
    for i, p in enumerate(parts):
        m = p.tocsr()
        if keep is not None:
            m = m[keep[i]]
        m.resize((m.shape[0], vocab))
        mats.append(m)
    out = sp.vstack(mats, format="csr").tocsc()
    out.indices = out.indices.astype(np.int32, copy=False)
    return out


class SparseIndex(ModeIndex):
    """Lexical weights ``{token id: weight}``; score = ``sum_t q_t * d_t`` over shared tokens (FlagEmbedding's).

    Args:
        vocab_size: largest token id + 1 accepted (``None``: any id below 2**31 - 1).
    """

    mode = "sparse"

    def __init__(self, vocab_size: int | None = None) -> None:
        self.vocab_size = vocab_size
        self._segs: Segments[sp.csc_matrix] = Segments(_concat)

    def __len__(self) -> int:
        return len(self._segs)

    def prepare(self, rows: Any) -> sp.csc_matrix:
        return sparse_matrix(rows, "sparse", vocab_size=self.vocab_size).tocsc()

    def _copy_state(self) -> None:
        self._segs = self._segs.copy()

    def append(self, prepared: sp.csc_matrix) -> None:
        self._segs.append(prepared, prepared.shape[0])

    def compact(self, keep: np.ndarray) -> "SparseIndex":
        out = SparseIndex(self.vocab_size)
        out._segs = self._segs.compacted(keep)
        return out

    def full_scores(self, Q: Sequence[Mapping[int, float]]) -> np.ndarray:
        """Exact lexical scores of each query against every slot: ``(nq, len)`` float64."""
        n_slots = len(self)
        nq = len(Q)
        out = np.zeros((nq, n_slots), dtype=np.float64)
        if nq == 1:
            q = Q[0]
            if not q:
                return out
            terms = np.fromiter(q.keys(), dtype=np.int64, count=len(q))
            weights = np.fromiter(q.values(), dtype=np.float64, count=len(q))
            for start, n, m in self._segs.items():
                sel = terms < m.shape[1]
                t, w = terms[sel], weights[sel]
                starts, ends = m.indptr[t], m.indptr[t + 1]
                lengths = ends - starts
                if int(lengths.sum()) == 0:
                    continue
                pos = ranges(starts, lengths)  # every posting of every query term
                vals = m.data[pos] * np.repeat(w, lengths)
                out[0, start : start + n] = np.bincount(m.indices[pos], weights=vals, minlength=n)
            return out
        qm = sparse_matrix(Q, "query.sparse", np.float64)
        for start, n, m in self._segs.items():
            vocab = m.shape[1]
            qs = qm[:, :vocab] if qm.shape[1] >= vocab else sp.csr_matrix((qm.data, qm.indices, qm.indptr), shape=(nq, vocab))
            out[:, start : start + n] = (qs @ m.T).toarray()
        return out

    def topk(self, Q: Any, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        from .base import topk_stable

        full = self.full_scores(Q)
        D = np.full((len(Q), k), -np.inf)
        I = np.full((len(Q), k), -1, dtype=np.int64)
        for i in range(len(Q)):
            s = full[i]
            if allowed is not None:
                s[~allowed] = -np.inf
            top = topk_stable(s, k)
            top = top[np.isfinite(s[top])]
            D[i, : len(top)], I[i, : len(top)] = s[top], top
        return D, I

    def score(self, Q: Any, slots: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self.full_scores([Q[i]])[0][s] for i, s in enumerate(slots)]

    def rows(self, slots: np.ndarray) -> list[dict[int, float]]:
        out: list[dict[int, float]] = []
        seg_of = self._segs.of(slots)
        csr: dict[int, sp.csr_matrix] = {}
        for s, g in zip(np.asarray(slots).tolist(), seg_of.tolist()):
            m = csr.get(g)
            if m is None:
                m = csr[g] = self._segs.data[g].tocsr()
            a, b = m.indptr[s - self._segs.starts[g]], m.indptr[s - self._segs.starts[g] + 1]
            out.append(dict(zip(m.indices[a:b].tolist(), m.data[a:b].tolist())))
        return out

    def matched(self, q: Mapping[int, float], slot: int) -> list[tuple[int, float]]:
        """The query tokens document ``slot`` shares: ``[(token id, q_w * d_w)]`` in query order."""
        g = int(self._segs.of(np.array([slot]))[0])
        m = self._segs.data[g]
        local = slot - self._segs.starts[g]
        out: list[tuple[int, float]] = []
        for t, qw in q.items():
            if t >= m.shape[1]:
                continue
            a, b = m.indptr[t], m.indptr[t + 1]
            rows = m.indices[a:b]
            j = int(np.searchsorted(rows, local))
            if j < len(rows) and rows[j] == local:
                out.append((int(t), float(qw) * float(m.data[a + j])))
        return out

    def nbytes(self) -> int:
        return sum(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes for m in self._segs.data)

    def to_arrays(self) -> tuple[dict[str, Any], dict[str, Any]]:
        m, n = self._segs.single()
        csr = m.tocsr() if m is not None else sp.csr_matrix((0, 1), dtype=np.float32)
        meta = {"sparse_nnz": int(csr.nnz)}
        return meta, {
            "sparse_indptr.npy": csr.indptr.astype(np.int64),
            "sparse_indices.npy": csr.indices.astype(np.int32),
            "sparse_data.npy": csr.data.astype(np.float32),
        }

    @classmethod
    def from_arrays(cls, meta: Mapping[str, Any], load: Any, n: int, vocab_size: int | None = None) -> "SparseIndex":
        indptr = load("sparse_indptr.npy", np.int64, 1, rows=n + 1)
        indices = load("sparse_indices.npy", np.int32, 1)
        data = load("sparse_data.npy", np.float32, 1)
        nnz = meta["sparse_nnz"]
        if indptr[0] != 0 or indptr[-1] != len(indices) or len(indices) != len(data) or len(data) != nnz or np.any(np.diff(indptr) < 0):
            raise ValueError("sparse arrays are inconsistent (indptr/indices/data lengths do not agree)")
        if len(indices) and indices.min() < 0:
            raise ValueError("sparse_indices.npy holds negative token ids")
        limit = vocab_size if vocab_size is not None else 2**31 - 1
        if len(indices) and int(indices.max()) >= limit:
            raise ValueError(f"sparse_indices.npy holds token ids >= {limit}")
        if not np.all(np.isfinite(data)):
            raise ValueError("sparse_data.npy holds NaN or infinity")
        out = cls(vocab_size)
        if n:
            vocab = int(indices.max()) + 1 if len(indices) else 1
            m = sp.csr_matrix((data, indices, indptr), shape=(n, vocab)).tocsc()
            m.indices = m.indices.astype(np.int32, copy=False)
            out._segs.append(m, n)
        return out
