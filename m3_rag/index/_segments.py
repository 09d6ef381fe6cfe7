"""Append-only segments over consecutive slot ranges, merged LSM-style (O(log n) segments per index)."""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

import numpy as np

__all__ = ["Segments", "ranges"]

T = TypeVar("T")


def ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(starts[i], starts[i] + lengths[i])`` for every i, vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    return np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(total, dtype=np.int64)


class Segments(Generic[T]):
    """Segments ``(start, n, data)``; a new segment at least half the size of the one before it is merged into it.

    ``concat(datas, keeps)`` builds one segment's data from consecutive ones (``keeps``: optional local rows of each).
    """

    def __init__(self, concat: Callable[[list[T], list[np.ndarray] | None], T]) -> None:
        self._concat = concat
        self.starts: list[int] = []
        self.sizes: list[int] = []
        self.data: list[T] = []

    def __len__(self) -> int:
        return sum(self.sizes)

    def copy_with(self, datas: list[T], sizes: list[int]) -> "Segments[T]":
        out: Segments[T] = Segments(self._concat)
        start = 0
        for d, n in zip(datas, sizes):
            out.starts.append(start)
            out.sizes.append(n)
            out.data.append(d)
            start += n
        return out

    def copy(self) -> "Segments[T]":
        """A copy sharing the (immutable) segment data."""
        return self.copy_with(list(self.data), list(self.sizes))

    def append(self, data: T, n: int) -> None:
        """Add ``n`` slots; merges happen here, so build the merged data before mutating (a failure changes nothing)."""
        starts, sizes, datas = list(self.starts), list(self.sizes), list(self.data)
        starts.append(len(self))
        sizes.append(n)
        datas.append(data)
        while len(sizes) >= 2 and 2 * sizes[-1] >= sizes[-2]:
            b, a = datas.pop(), datas.pop()
            nb, na = sizes.pop(), sizes.pop()
            starts.pop()
            datas.append(self._concat([a, b], None))
            sizes.append(na + nb)
        self.starts, self.sizes, self.data = starts, sizes, datas

    def of(self, slots: np.ndarray) -> np.ndarray:
        """Segment number of each slot."""
        return np.searchsorted(np.asarray(self.starts, dtype=np.int64), slots, side="right") - 1

    def compacted(self, keep: np.ndarray) -> "Segments[T]":
        """One segment holding only the sorted slots ``keep``."""
        if not self.data or len(keep) == 0:
            return Segments(self._concat)
        local = []
        for start, n in zip(self.starts, self.sizes):
            lo, hi = np.searchsorted(keep, [start, start + n])
            local.append(keep[lo:hi] - start)
        return self.copy_with([self._concat(self.data, local)], [len(keep)])

    def single(self) -> tuple[T | None, int]:
        """All data as one segment (merging if needed), without changing self."""
        if not self.data:
            return None, 0
        if len(self.data) == 1:
            return self.data[0], self.sizes[0]
        return self._concat(self.data, None), len(self)

    def items(self) -> Any:
        return zip(self.starts, self.sizes, self.data)
