"""The encoded-query half of the store API, shared by every store: validation, then the store's own
``_options`` (parse) and ``_search`` (run the pipeline on its backend)."""

from __future__ import annotations

from typing import Any

from ..types import Hit, M3Output

__all__ = ["EncodedSearchMixin"]


class EncodedSearchMixin:
    """``search_encoded`` and ``search_encoded_batch`` for a store defining ``_options(kwargs)`` and
    ``_search(queries, opts)``."""

    def _options(self, kwargs: Any) -> Any:  # pragma: no cover - every store defines it
        raise NotImplementedError

    def _search(self, queries: M3Output, opts: Any) -> list[list[Hit]]:  # pragma: no cover
        raise NotImplementedError

    def search_encoded(self, query: M3Output, **kwargs: Any) -> list[Hit]:
        """Search with a precomputed query: an :class:`M3Output` holding exactly one row; takes the same
        keyword arguments as ``search``."""
        if not isinstance(query, M3Output):
            raise TypeError(f"query must be an M3Output; got {type(query).__name__}")
        if len(query) != 1:
            raise ValueError(f"search_encoded needs an M3Output with exactly one row; got {len(query)} (use search_encoded_batch)")
        return self.search_encoded_batch(query, **kwargs)[0]

    def search_encoded_batch(self, queries: M3Output, **kwargs: Any) -> list[list[Hit]]:
        """:meth:`search_encoded` for every row of ``queries``; one result list per row."""
        if not isinstance(queries, M3Output):
            raise TypeError(f"queries must be an M3Output; got {type(queries).__name__}")
        return self._search(queries, self._options(kwargs))
