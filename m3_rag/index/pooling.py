"""Token pooling of document ColBERT vectors at index time (Clavié et al., 2024, "Reducing the Footprint of
Multi-Vector Retrieval with Minimal Performance Impact via Token Pooling"; pylate's ``pool_embeddings_hierarchical``).

Each document's ``n`` token vectors are clustered by hierarchical Ward linkage (``scipy.cluster.hierarchy``)
into at most ``ceil(n / factor)`` groups (``fcluster(..., criterion="maxclust")``), and each group is stored
as the mean of its members. Queries are never pooled. Ward on Euclidean distances of unit vectors is Ward on
``2 - 2 cos``, i.e. it merges the most similar tokens first.

Pylate clusters the rows of the ``1 - cos`` distance matrix and keeps ``floor(n / factor)`` clusters; here the
token vectors themselves are clustered (the Ward criterion is defined on them) and ``ceil`` keeps at least
one vector and never drops a document's last odd token group.

``renormalize`` (default ``False``): the mean of unit vectors is shorter than 1 when its members disagree;
keeping that length down-weights a "blurred" cluster in MaxSim, which ``bench/colbert.py`` measured to be
as good as or better than renormalising (see ``docs/colbert_storage.md``).
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["pool_tokens", "check_pool_factor"]


def check_pool_factor(factor: object) -> int:
    """``factor`` as an int >= 1, or ``ValueError`` naming the bad value and what is allowed."""
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)):
        raise ValueError(
            f"colbert_pool_factor must be an integer >= 1 (1 = no pooling, 2 = about half the vectors); got {factor!r}"
        )
    if factor < 1:
        raise ValueError(f"colbert_pool_factor must be >= 1 (1 = no pooling); got {factor!r}")
    return int(factor)


@functools.lru_cache(maxsize=256)
def _upper(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, 1)


def _condensed_euclidean(x: np.ndarray) -> np.ndarray:
    """``scipy.spatial.distance.pdist(x)`` (float64) through one GEMM: ``|a|^2 + |b|^2 - 2 a.b``. About 2x faster
    than ``pdist`` at 100 x 1024 and, on a 300-document test, the same Ward clusters."""
    x64 = x.astype(np.float64)
    sq = np.einsum("ij,ij->i", x64, x64)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x64 @ x64.T)
    return np.sqrt(np.maximum(d2[_upper(x.shape[0])], 0.0))


def pool_tokens(mat: np.ndarray, factor: int, renormalize: bool = False) -> np.ndarray:
    """Pool one document's ``(n, d)`` token vectors into ``(m, d)`` float32 with ``m <= max(1, ceil(n/factor))``.

    ``factor=1`` (or ``n <= 1``) returns the vectors unchanged (as float32); a factor larger than ``n`` keeps
    one vector (the mean). ``renormalize=True`` scales each pooled vector to unit L2 norm.
    """
    factor = check_pool_factor(factor)
    x = np.asarray(mat, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"pool_tokens: expected a (n, d) matrix of token vectors; got shape {x.shape}")
    n = x.shape[0]
    if factor == 1 or n <= 1:
        return x.copy()
    k = max(1, math.ceil(n / factor))
    if k == 1:
        pooled = x.mean(axis=0, keepdims=True)
    else:
        from scipy.cluster.hierarchy import fcluster, linkage

        z = linkage(_condensed_euclidean(x), method="ward")
        labels = fcluster(z, t=k, criterion="maxclust")
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        starts = np.r_[0, np.nonzero(np.diff(sorted_labels))[0] + 1]
        sums = np.add.reduceat(x[order], starts, axis=0)
        counts = np.diff(np.r_[starts, n]).astype(np.float32)
        pooled = sums / counts[:, None]
    if renormalize:
        pooled = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return pooled.astype(np.float32, copy=False)
