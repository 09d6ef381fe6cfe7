"""Sparse index: BGE-M3 lexical weights in an inverted index (one CSC matrix ``(docs, vocab)`` per segment)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from ._segments import Segments, ranges
from .base import ModeIndex

__all__ = ["SparseIndex", "sparse_arrays", "sparse_matrix"]


def sparse_arrays(rows: Sequence[Mapping[int, float]], what: str = "sparse", dtype: Any = np.float32,
                  vocab_size: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate sparse weight dicts and flatten them: ``(indptr, token ids int64, weights)`` (CSR parts)."""
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
        bad_types = {type(k) for r in rows for k in r} - {int, np.int64, np.int32, np.int16, np.int8, np.uint32,
                                                          np.uint16, np.uint8, np.uint64}
        if bad_types:
            raise TypeError(f"{what}: token ids must be ints; got {', '.join(sorted(t.__name__ for t in bad_types))}")
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
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    return indptr, keys_f.astype(np.int64), vals.astype(dtype)


def sparse_matrix(rows: Sequence[Mapping[int, float]], what: str = "sparse", dtype: Any = np.float32,
                  vocab_size: int | None = None) -> sp.csr_matrix:
    """Stack sparse weight dicts into a CSR matrix ``(len(rows), max_token_id + 1)``; validates ids and weights."""
    indptr, keys, vals = sparse_arrays(rows, what, dtype, vocab_size)
    vocab = int(keys.max()) + 1 if len(keys) else 1
    return sp.csr_matrix((vals, keys.astype(np.int32), indptr), shape=(len(rows), vocab))


@dataclass
class _Seg:
    """One segment: ``terms`` (sorted unique token ids) and a CSC matrix ``(docs, len(terms))`` over them.

    The columns are the segment's own tokens, so memory is O(non-zeros) whatever the largest token id.
    """

    terms: np.ndarray  # int64, sorted unique
    m: sp.csc_matrix

    @classmethod
    def from_csr(cls, csr: sp.csr_matrix) -> "_Seg":
        """Compress a CSR matrix over raw token ids (``indices``) to the segment's own columns."""
        terms, local = np.unique(np.asarray(csr.indices, dtype=np.int64), return_inverse=True)
        m = sp.csr_matrix((csr.data, local.astype(np.int32).reshape(-1), csr.indptr), shape=(csr.shape[0], len(terms)))
        m = m.tocsc()
        m.indices = m.indices.astype(np.int32, copy=False)
        return cls(terms, m)

    def columns(self, token_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(present mask, local column)`` of each token id."""
        pos = np.searchsorted(self.terms, token_ids)
        pos_c = np.minimum(pos, max(len(self.terms) - 1, 0))
        present = (pos < len(self.terms)) & (self.terms[pos_c] == token_ids) if len(self.terms) else np.zeros(len(token_ids), bool)
        return present, pos_c

    def raw_csr(self, union: np.ndarray | None = None) -> sp.csr_matrix:
        """The rows as CSR over raw token ids (``union``: over the columns of a sorted superset of terms)."""
        m = self.m.tocsr()
        cols = self.terms[m.indices] if union is None else np.searchsorted(union, self.terms)[m.indices]
        width = (int(self.terms[-1]) + 1 if len(self.terms) else 1) if union is None else len(union)
        return sp.csr_matrix((m.data, cols.astype(np.int32 if union is not None else np.int64), m.indptr),
                             shape=(m.shape[0], width))

    def nbytes(self) -> int:
        return self.terms.nbytes + self.m.data.nbytes + self.m.indices.nbytes + self.m.indptr.nbytes


def _concat(parts: list[_Seg], keep: list[np.ndarray] | None) -> _Seg:
    union = np.unique(np.concatenate([p.terms for p in parts]))
    mats = []
    for i, p in enumerate(parts):
        m = p.raw_csr(union)
        if keep is not None:
            m = m[keep[i]]
        mats.append(m)
    out = sp.vstack(mats, format="csr").tocsc()
    out.indices = out.indices.astype(np.int32, copy=False)
    return _Seg(union, out)


class SparseIndex(ModeIndex):
    """Lexical weights ``{token id: weight}``; score = ``sum_t q_t * d_t`` over shared tokens (FlagEmbedding's).

    Args:
        vocab_size: largest token id + 1 accepted (``None``: any id below 2**31 - 1). Memory is O(non-zeros):
            each segment indexes only the tokens it holds, so a large token id costs no more than a small one.
    """

    mode = "sparse"

    def __init__(self, vocab_size: int | None = None) -> None:
        self.vocab_size = vocab_size
        self._segs: Segments[_Seg] = Segments(_concat)

    def __len__(self) -> int:
        return len(self._segs)

    def prepare(self, rows: Any) -> _Seg:
        return _Seg.from_csr(sparse_matrix(rows, "sparse", vocab_size=self.vocab_size))

    def _copy_state(self) -> None:
        self._segs = self._segs.copy()

    def append(self, prepared: _Seg) -> None:
        self._segs.append(prepared, prepared.m.shape[0])

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
            for start, n, seg in self._segs.items():
                m = seg.m
                present, cols = seg.columns(terms)
                t, w = cols[present], weights[present]
                starts, ends = m.indptr[t], m.indptr[t + 1]
                lengths = ends - starts
                if int(lengths.sum()) == 0:
                    continue
                pos = ranges(starts, lengths)  # every posting of every query term
                vals = m.data[pos] * np.repeat(w, lengths)
                out[0, start : start + n] = np.bincount(m.indices[pos], weights=vals, minlength=n)
            return out
        qm = sparse_matrix(Q, "query.sparse", np.float64)
        q_rows = np.repeat(np.arange(nq), np.diff(qm.indptr))
        q_terms = np.asarray(qm.indices, dtype=np.int64)
        for start, n, seg in self._segs.items():
            present, cols = seg.columns(q_terms)
            qs = sp.csr_matrix((qm.data[present], (q_rows[present], cols[present])), shape=(nq, len(seg.terms)))
            out[:, start : start + n] = (qs @ seg.m.T).toarray()
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
                m = csr[g] = self._segs.data[g].raw_csr()
            a, b = m.indptr[s - self._segs.starts[g]], m.indptr[s - self._segs.starts[g] + 1]
            out.append(dict(zip(m.indices[a:b].tolist(), m.data[a:b].tolist())))
        return out

    def matched(self, q: Mapping[int, float], slot: int) -> list[tuple[int, float]]:
        """The query tokens document ``slot`` shares: ``[(token id, q_w * d_w)]`` in query order."""
        g = int(self._segs.of(np.array([slot]))[0])
        seg = self._segs.data[g]
        m = seg.m
        local = slot - self._segs.starts[g]
        out: list[tuple[int, float]] = []
        for t, qw in q.items():
            present, col = seg.columns(np.array([t], dtype=np.int64))
            if not present[0]:
                continue
            a, b = m.indptr[col[0]], m.indptr[col[0] + 1]
            rows = m.indices[a:b]
            j = int(np.searchsorted(rows, local))
            if j < len(rows) and rows[j] == local:
                out.append((int(t), float(qw) * float(m.data[a + j])))
        return out

    def nbytes(self) -> int:
        return sum(seg.nbytes() for seg in self._segs.data)

    def to_arrays(self) -> tuple[dict[str, Any], dict[str, Any]]:
        seg, n = self._segs.single()
        csr = seg.raw_csr() if seg is not None else sp.csr_matrix((0, 1), dtype=np.float32)
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
        if n:  # memory O(non-zeros): the segment's columns are the token ids it holds, not 0 .. max id
            out._segs.append(_Seg.from_csr(sp.csr_matrix((data, indices, indptr), shape=(n, limit))), n)
        return out
