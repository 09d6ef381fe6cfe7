"""Pure numpy scoring functions with FlagEmbedding's formulas: lexical match, ColBERT MaxSim and dense inner product."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = [
    "lexical_score",
    "lexical_scores",
    "colbert_score",
    "colbert_scores",
    "maxsim_packed",
    "dense_scores",
    "pack_colbert",
]


def lexical_score(q_weights: Mapping[int, float], d_weights: Mapping[int, float]) -> float:
    """Lexical matching score of two sparse weight dicts.

    ``sum(q[t] * d[t] for t in q if t in d)``, as in FlagEmbedding's
    ``BGEM3FlagModel.compute_lexical_matching_score``.

    >>> lexical_score({1: 0.5, 2: 1.0}, {2: 0.3, 7: 9.0})
    0.3
    """
    if not isinstance(q_weights, Mapping) or not isinstance(d_weights, Mapping):
        raise TypeError("lexical_score expects two dict[int, float] mappings")
    if len(q_weights) > len(d_weights):  # iterate over the shorter one; the sum is symmetric
        q_weights, d_weights = d_weights, q_weights
    score = 0.0
    for token, weight in q_weights.items():
        other = d_weights.get(token)
        if other is not None:
            score += float(weight) * float(other)
    return score


def lexical_scores(q_weights: Mapping[int, float], docs: Sequence[Mapping[int, float]]) -> np.ndarray:
    """Lexical scores of one query against many documents: a ``float32`` array of shape ``(len(docs),)``."""
    return np.array([lexical_score(q_weights, d) for d in docs], dtype=np.float32)


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (tokens, dim) array; got shape {arr.shape}")
    return arr


def colbert_score(q_vecs: np.ndarray, d_vecs: np.ndarray) -> float:
    """ColBERT late-interaction score, as in FlagEmbedding's ``colbert_score``.

    ``q_vecs``: (m, d); ``d_vecs``: (n, d). Returns ``mean_i max_j q_i . d_j``.
    A document with no token vectors scores 0.

    >>> q = np.array([[1.0, 0.0], [0.0, 1.0]]); d = np.array([[1.0, 0.0], [0.6, 0.8]])
    >>> round(colbert_score(q, d), 6)   # (max(1, .6) + max(0, .8)) / 2
    0.9
    """
    q = _as_matrix(q_vecs, "q_vecs")
    d = _as_matrix(d_vecs, "d_vecs")
    if q.shape[0] == 0:
        raise ValueError("colbert_score: the query has no token vectors")
    if d.shape[1] != q.shape[1]:
        raise ValueError(f"colbert_score: dimension mismatch, query {q.shape[1]} vs document {d.shape[1]}")
    if d.shape[0] == 0:
        return 0.0
    return float((q @ d.T).max(axis=1).sum() / q.shape[0])


def pack_colbert(docs: Sequence[np.ndarray], dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Pack a list of (n_i, d) matrices into one contiguous ``(sum n_i, d)`` array plus ``offsets`` (len+1)."""
    if len(docs) == 0:
        return np.zeros((0, 0), dtype=dtype), np.zeros(1, dtype=np.int64)
    arrays = [np.asarray(d, dtype=dtype) for d in docs]
    dims = {a.shape[1] for a in arrays if a.ndim == 2 and a.shape[0] > 0}
    if len(dims) > 1:
        raise ValueError(f"pack_colbert: documents have different vector dimensions {sorted(dims)}")
    if not dims:  # only empty documents: keep their declared width when they have one
        dims = {a.shape[1] for a in arrays if a.ndim == 2} or {0}
    dim = max(dims)
    for i, a in enumerate(arrays):
        if a.size == 0:
            arrays[i] = a.reshape(0, dim)
        elif a.ndim != 2:
            raise ValueError(f"pack_colbert: document {i} must be a 2-D (tokens, dim) array; got shape {a.shape}")
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    return np.concatenate(arrays, axis=0), offsets


def maxsim_packed(
    q_vecs: np.ndarray,
    tokens: np.ndarray,
    offsets: np.ndarray,
    doc_idx: np.ndarray | None = None,
    *,
    scale: np.ndarray | float | None = None,
    chunk_tokens: int = 65536,
) -> np.ndarray:
    """MaxSim scores of one query against documents stored contiguously.

    Args:
        q_vecs: (m, d) query token vectors.
        tokens: (T, d) document token vectors, fp32/fp16/int8; document ``i`` owns rows
            ``offsets[i]:offsets[i+1]``.
        offsets: (N+1,) int64 row offsets.
        doc_idx: which documents to score (default: all), shape (k,).
        scale: for int8 storage, the per-token dequantisation scale, shape (T,) (or a scalar).
        chunk_tokens: how many token rows to multiply at once (bounds memory).

    Returns:
        ``float32`` array (k,): ``mean_i max_{j in doc} q_i . t_j``; documents with no tokens score 0.
    """
    q = _as_matrix(q_vecs, "q_vecs")
    if q.shape[0] == 0:
        raise ValueError("maxsim: the query has no token vectors")
    offsets = np.asarray(offsets, dtype=np.int64)
    n_docs = len(offsets) - 1
    if n_docs < 0 or (len(offsets) and offsets[0] != 0) or np.any(np.diff(offsets) < 0):
        raise ValueError("maxsim: offsets must start at 0 and be non-decreasing, one more than the documents")
    if tokens.ndim != 2 or (len(tokens) and tokens.shape[1] != q.shape[1]):
        raise ValueError(f"maxsim: tokens must have shape (T, {q.shape[1]}); got {tokens.shape}")
    if n_docs >= 0 and len(offsets) and offsets[-1] > len(tokens):
        raise ValueError(f"maxsim: offsets end at {offsets[-1]} but tokens has only {len(tokens)} rows")
    if scale is not None and not np.isscalar(scale) and np.shape(scale) != (len(tokens),):
        raise ValueError(f"maxsim: scale must be a scalar or have shape ({len(tokens)},); got {np.shape(scale)}")
    if doc_idx is None:
        idx = np.arange(n_docs, dtype=np.int64)
    else:
        idx = np.asarray(doc_idx, dtype=np.int64).reshape(-1)
        bad = idx[(idx < 0) | (idx >= n_docs)]
        if len(bad):
            raise ValueError(f"maxsim: doc_idx {bad[:5].tolist()} out of range for {n_docs} documents (0..{n_docs - 1})")
    out = np.zeros(len(idx), dtype=np.float32)
    if len(idx) == 0:
        return out
    starts = offsets[idx]
    ends = offsets[idx + 1]
    lengths = ends - starts
    nonempty = np.nonzero(lengths > 0)[0]
    if len(nonempty) == 0:
        return out
    qt = np.ascontiguousarray(q.T)
    contiguous = doc_idx is None or bool(np.all(np.diff(idx) == 1))
    # Walk the selected documents in groups whose total token count fits in one chunk.
    pos = 0
    while pos < len(nonempty):
        end = pos
        total = 0
        while end < len(nonempty) and (end == pos or total + lengths[nonempty[end]] <= chunk_tokens):
            total += int(lengths[nonempty[end]])
            end += 1
        sel = nonempty[pos:end]
        if contiguous:
            block = tokens[starts[sel[0]] : ends[sel[-1]]]
            blk_scale = None if scale is None or np.isscalar(scale) else scale[starts[sel[0]] : ends[sel[-1]]]
        else:
            rows = np.concatenate([np.arange(starts[i], ends[i]) for i in sel])
            block = tokens[rows]
            blk_scale = None if scale is None or np.isscalar(scale) else scale[rows]
        sims = block.astype(np.float32, copy=False) @ qt  # (tokens, m)
        if scale is not None:
            sims *= (np.float32(scale) if np.isscalar(scale) else blk_scale[:, None])  # type: ignore[index]
        seg = np.zeros(len(sel), dtype=np.int64)
        np.cumsum(lengths[sel][:-1], out=seg[1:])
        maxes = np.maximum.reduceat(sims, seg, axis=0)  # (docs, m)
        out[sel] = maxes.sum(axis=1) / np.float32(q.shape[0])
        pos = end
    return out


def colbert_scores(q_vecs: np.ndarray, docs: Sequence[np.ndarray]) -> np.ndarray:
    """MaxSim scores of one query against many documents: a ``float32`` array of shape ``(len(docs),)``."""
    if len(docs) == 0:
        return np.zeros(0, dtype=np.float32)
    q = _as_matrix(q_vecs, "q_vecs")
    for i, d in enumerate(docs):
        d = np.asarray(d)
        if d.ndim != 2 or (d.shape[0] and d.shape[1] != q.shape[1]):
            raise ValueError(f"colbert_scores: document {i} has shape {d.shape}, expected (n, {q.shape[1]})")
    tokens, offsets = pack_colbert([np.asarray(d, dtype=np.float32).reshape(len(d), q.shape[1]) for d in docs])
    return maxsim_packed(q, tokens, offsets)


def dense_scores(q_vec: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """Inner products of one dense query vector (d,) with a (n, d) matrix, as ``float32`` (n,)."""
    q = np.asarray(q_vec, dtype=np.float32).reshape(-1)
    d = np.asarray(docs, dtype=np.float32)
    if d.ndim != 2 or d.shape[1] != q.shape[0]:
        raise ValueError(f"dense_scores: documents must have shape (n, {q.shape[0]}); got {d.shape}")
    return d @ q
