"""Score fusion over a candidate set: pure numpy functions, one per method.

Every function takes ``scores``, a mapping ``mode -> float array (n,)`` holding the exact score of
each of the same ``n`` candidates in that mode, and returns the fused ``float64`` array ``(n,)``
(higher is better). Candidates come in insertion order, so a stable sort of the result breaks ties
by insertion order.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from .types import STORE_MODES

__all__ = [
    "FUSIONS",
    "DEFAULT_WEIGHTS",
    "DEFAULT_BM25_WEIGHT",
    "RRF_K",
    "fuse",
    "fuse_weighted",
    "fuse_rrf",
    "fuse_dbsf",
    "rrf_ranks",
    "dbsf_normalize",
    "resolve_weights",
]

#: Fusion methods accepted by ``search(fusion=...)``.
FUSIONS: tuple[str, ...] = ("weighted", "rrf", "dbsf")
#: FlagEmbedding's ``compute_score`` default weights (dense, sparse, colbert).
DEFAULT_WEIGHTS: dict[str, float] = {"dense": 0.4, "sparse": 0.2, "colbert": 0.4}
#: The weighted-fusion weight of ``bm25`` when neither the caller nor the model gives one. Raw BM25 scores are
#: unbounded (the top hit of a short query typically scores 5-30, against cosine similarities in [0, 1]), so
#: the default keeps BM25 on the scale of the other modes' 0.2-0.4; prefer the model's recommended weights
#: (``fusion_weights_by_modes``) or a rank-based fusion (``rrf``) when mixing BM25 with the M3 modes.
DEFAULT_BM25_WEIGHT: float = 0.02


def _default_weight(mode: str) -> float:
    return DEFAULT_BM25_WEIGHT if mode == "bm25" else DEFAULT_WEIGHTS[mode]
#: The RRF constant of Cormack et al. (2009).
RRF_K = 60


def _check(scores: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    if not scores:
        raise ValueError("fusion needs the scores of at least one mode")
    arrays = {m: np.asarray(s, dtype=np.float64).reshape(-1) for m, s in scores.items()}
    sizes = {m: a.shape[0] for m, a in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"fusion: every mode must score the same candidates; got sizes {sizes}")
    return arrays, next(iter(sizes.values()))


def _weights_for(arrays: Mapping[str, np.ndarray], weights: Mapping[str, float] | None, default: float | None) -> dict[str, float]:
    if weights is None:
        if default is None:
            return {m: _default_weight(m) for m in arrays}
        return {m: default for m in arrays}
    missing = [m for m in arrays if m not in weights]
    if missing:
        raise ValueError(f"fusion: no weight for mode(s) {missing}; weights given for {list(weights)}")
    return {m: float(weights[m]) for m in arrays}


def fuse_weighted(scores: Mapping[str, np.ndarray], weights: Mapping[str, float] | None = None) -> np.ndarray:
    """Weighted mean of the raw scores: ``sum_i w_i * s_i / sum_i w_i``.

    FlagEmbedding's ``BGEM3FlagModel.compute_score`` semantics; default weights
    :data:`DEFAULT_WEIGHTS` (dense 0.4, sparse 0.2, colbert 0.4).

    >>> fuse_weighted({"dense": [0.5, 0.1], "sparse": [0.2, 0.4]}, {"dense": 0.4, "sparse": 0.2}).round(6)
    array([0.4, 0.2])
    """
    arrays, n = _check(scores)
    w = _weights_for(arrays, weights, None)
    total = sum(w.values())
    if not total > 0:
        raise ValueError(f"weighted fusion needs weights with a positive sum; got {w}")
    out = np.zeros(n, dtype=np.float64)
    for m, a in arrays.items():
        out += w[m] * a
    return out / total


def rrf_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks by descending score; tied scores share the best rank ("competition" ranking).

    >>> rrf_ranks(np.array([0.3, 0.9, 0.3, 0.1]))
    array([2, 1, 2, 4])
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size == 0:
        return np.zeros(0, dtype=np.int64)
    sorted_desc = -np.sort(-s)
    # rank = 1 + number of scores strictly greater
    return np.searchsorted(-sorted_desc, -s, side="left").astype(np.int64) + 1


def fuse_rrf(
    scores: Mapping[str, np.ndarray], weights: Mapping[str, float] | None = None, *, k: int = RRF_K
) -> np.ndarray:
    """Reciprocal rank fusion: ``sum_i w_i / (k + rank_i)`` with ``k = 60`` and weights 1.0 by default.

    ``rank_i`` is the 1-based rank of the candidate among all candidates by mode-``i`` score
    (:func:`rrf_ranks`: ties share the best rank).

    >>> fuse_rrf({"dense": [0.9, 0.5], "sparse": [0.1, 0.7]}).round(6)   # 1/61 + 1/62 for both
    array([0.032522, 0.032522])
    """
    if not isinstance(k, (int, float)) or isinstance(k, bool) or k < 0:
        raise ValueError(f"rrf constant k must be a non-negative number; got {k!r}")
    arrays, n = _check(scores)
    w = _weights_for(arrays, weights, 1.0)
    out = np.zeros(n, dtype=np.float64)
    for m, a in arrays.items():
        out += w[m] / (k + rrf_ranks(a))
    return out


def dbsf_normalize(scores: np.ndarray) -> np.ndarray:
    """Distribution-based normalisation (Qdrant's DBSF): map ``[mean - 3 std, mean + 3 std]`` to ``[0, 1]``.

    ``std`` is the sample standard deviation (``ddof=1``), as Qdrant computes it. Scores are not
    clipped. Fewer than 2 scores, or all equal, give 0.5.

    >>> dbsf_normalize(np.array([1.0, 2.0, 3.0])).round(6)   # mean 2, std 1 -> limits -1 and 5
    array([0.333333, 0.5     , 0.666667])
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size < 2:
        return np.full(s.shape, 0.5)
    mean = s.mean()
    std = s.std(ddof=1)
    lo, hi = mean - 3.0 * std, mean + 3.0 * std
    if not hi > lo:
        return np.full(s.shape, 0.5)
    return (s - lo) / (hi - lo)


def fuse_dbsf(scores: Mapping[str, np.ndarray], weights: Mapping[str, float] | None = None) -> np.ndarray:
    """Distribution-based score fusion: ``sum_i w_i * dbsf_normalize(s_i)`` (weights 1.0 by default).

    >>> fuse_dbsf({"dense": [1.0, 2.0, 3.0], "sparse": [0.0, 0.0, 5.0]}).round(6)
    array([0.737108, 0.903775, 1.359117])
    """
    arrays, n = _check(scores)
    w = _weights_for(arrays, weights, 1.0)
    out = np.zeros(n, dtype=np.float64)
    for m, a in arrays.items():
        out += w[m] * dbsf_normalize(a)
    return out


def fuse(method: str, scores: Mapping[str, np.ndarray], weights: Mapping[str, float] | None = None) -> np.ndarray:
    """Dispatch to :func:`fuse_weighted`, :func:`fuse_rrf` or :func:`fuse_dbsf` by name."""
    if method == "weighted":
        return fuse_weighted(scores, weights)
    if method == "rrf":
        return fuse_rrf(scores, weights)
    if method == "dbsf":
        return fuse_dbsf(scores, weights)
    raise ValueError(f"unknown fusion {method!r}; choose one of {', '.join(FUSIONS)}")


def resolve_weights(
    modes: Sequence[str], weights: Sequence[float] | Mapping[str, float] | None, fusion: str = "weighted"
) -> dict[str, float]:
    """Validate ``weights`` for ``modes`` and return ``{mode: weight}``.

    ``weights`` is ``None`` (defaults: :data:`DEFAULT_WEIGHTS` for ``weighted``, 1.0 each for
    ``rrf``/``dbsf``), a sequence aligned with ``modes``, or a dict whose keys are exactly ``modes``.
    Weights must be finite and >= 0; for ``weighted`` their sum must be positive.
    """
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
    modes = list(modes)
    if weights is None:
        return {m: (_default_weight(m) if fusion == "weighted" else 1.0) for m in modes}
    if isinstance(weights, Mapping):
        keys = list(weights)
        unknown = [k for k in keys if k not in STORE_MODES]
        if unknown:
            raise ValueError(f"weights has unknown mode(s) {unknown}; modes are {', '.join(STORE_MODES)}")
        extra = [k for k in keys if k not in modes]
        missing = [m for m in modes if m not in weights]
        if extra or missing:
            raise ValueError(
                f"weights keys {keys} do not match the searched modes {modes}"
                + (f": no weight for {missing}" if missing else "")
                + (f": {extra} not searched (add them to modes or drop them from weights)" if extra else "")
            )
        values = {m: weights[m] for m in modes}
    elif isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence) and not isinstance(weights, np.ndarray):
        raise TypeError(
            f"weights must be a sequence aligned with modes or a dict mode -> weight; got {type(weights).__name__}"
        )
    else:
        seq = list(np.asarray(weights, dtype=object).reshape(-1)) if isinstance(weights, np.ndarray) else list(weights)
        if len(seq) != len(modes):
            raise ValueError(
                f"weights has {len(seq)} value(s) but {len(modes)} mode(s) are searched ({modes}); "
                "give one weight per mode, in the same order, or a dict mode -> weight"
            )
        values = dict(zip(modes, seq))
    out: dict[str, float] = {}
    for m, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"weight for {m!r} must be a number; got {v!r}")
        f = float(v)
        if not math.isfinite(f) or f < 0:
            raise ValueError(f"weight for {m!r} must be finite and >= 0; got {v!r}")
        out[m] = f
    if fusion == "weighted" and not sum(out.values()) > 0:
        raise ValueError(f"weighted fusion needs weights with a positive sum; got {out}")
    if not math.isfinite(sum(out.values())):
        raise ValueError(f"weights must have a finite sum (scale them down, e.g. to sum to 1); got {out}")
    return out
