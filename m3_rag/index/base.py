"""The one small, batch-first protocol every per-mode index implements.

An index holds one mode's data for a run of *slots* ``0 .. len(index)-1`` (one slot per stored document,
in insertion order). The store owns the slot bookkeeping (ids, records, tombstones); an index only
stores rows, drops slots on :meth:`ModeIndex.compact`, finds top-k and scores candidates exactly.

Writes come in two steps so a store can do the expensive part outside its write lock and change
nothing when a step fails: :meth:`prepare` converts and validates rows into a *prepared* object
(no state changes), and :meth:`append` adds prepared rows (cheap; must not fail on valid input).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

__all__ = ["ModeIndex", "topk_stable"]


def topk_stable(scores: np.ndarray, k: int) -> np.ndarray:
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


class ModeIndex(ABC):
    """One retrieval mode's rows over the slots ``0 .. len(self)-1``.

    Queries are batch-first: ``Q`` is the mode's part of an :class:`m3_rag.M3Output` with one row per query
    (dense: a ``(nq, d)`` array; sparse: a list of ``{token_id: weight}``; ColBERT: a list of ``(m_i, d)``
    arrays; BM25: a list of query strings). ``allowed`` is a boolean mask over the slots (``None``: every slot).
    """

    #: The mode name (a member of :data:`m3_rag.MODES`).
    mode: ClassVar[str]

    @abstractmethod
    def __len__(self) -> int:
        """Number of slots held (live or dead: the store tracks tombstones)."""

    @abstractmethod
    def prepare(self, rows: Any) -> Any:
        """Convert and validate ``rows`` for :meth:`append`; raises ``ValueError``/``TypeError``, changes nothing."""

    @abstractmethod
    def append(self, prepared: Any) -> None:
        """Add prepared rows as the next slots."""

    @abstractmethod
    def compact(self, keep: np.ndarray) -> "ModeIndex":
        """A new index holding only the sorted slots ``keep`` (renumbered ``0 .. len(keep)-1``); self is unchanged."""

    def extended(self, prepared: Any) -> "ModeIndex":
        """A new index holding self's slots then the prepared rows; self is unchanged.

        The default copies the index shallowly and appends; indexes whose :meth:`append` mutates shared
        storage in place (FAISS) override it or are appended last by the store with :meth:`append_or_rollback`.
        """
        out = copy.copy(self)
        out._copy_state()
        out.append(prepared)
        return out

    def _copy_state(self) -> None:
        """Make the state a shallow copy shares with self independent (called on the copy by :meth:`extended`)."""

    def extended_compacted(self, prepared: Any, keep: np.ndarray) -> "ModeIndex":
        """``self.extended(prepared).compact(keep)`` (``keep`` in the extended numbering); self is unchanged."""
        return self.extended(prepared).compact(keep)

    def append_or_rollback(self, prepared: Any) -> None:
        """:meth:`append` in place; on any failure the index is left as before and the error re-raised."""
        before = len(self)
        try:
            self.append(prepared)
        except BaseException:
            self._rollback(before)
            raise

    def _rollback(self, n: int) -> None:
        """Restore the state of ``n`` slots after a failed :meth:`append` (override for in-place indexes)."""
        if len(self) != n:
            raise RuntimeError(f"{type(self).__name__} cannot roll back a failed append")

    @abstractmethod
    def topk(self, Q: Any, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of each query among the allowed slots: ``(scores (nq, k), slots (nq, k))``, slots ``-1``-padded,
        sorted by descending score. The score is this mode's exact score."""

    @abstractmethod
    def score(self, Q: Any, slots: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Exact scores of query ``i`` against ``slots[i]``, one array per query."""

    @abstractmethod
    def rows(self, slots: np.ndarray) -> Any:
        """The stored rows of ``slots`` in the mode's ``M3Output`` form (for export and migration)."""

    @abstractmethod
    def nbytes(self) -> int:
        """Approximate bytes held (arrays only)."""

    @abstractmethod
    def to_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(meta, arrays)`` for persistence: JSON-safe settings and plain arrays (file name -> array)."""

    @classmethod
    @abstractmethod
    def from_arrays(cls, meta: Mapping[str, Any], load: Any, n: int) -> "ModeIndex":
        """Rebuild from :meth:`to_arrays` output. ``load(name, dtype, ndim, rows=None, mmap=False)`` returns a
        verified array (checksum, dtype, shape) or raises ``ValueError``; ``n`` is the number of slots."""
