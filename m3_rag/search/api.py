"""The query half of the store API, shared by every store: validation, query encoding, then the store's own
``_options`` (parse) and ``_search`` (run the pipeline on its backend)."""

from __future__ import annotations

from typing import Any, Sequence

from ..types import Hit, M3Output

__all__ = ["EncodedSearchMixin"]


class EncodedSearchMixin:
    """``search_batch``, ``search_encoded`` and ``search_encoded_batch`` for a store defining ``encoder``,
    ``__len__``, ``_options(kwargs)`` and ``_search(queries, opts)``."""

    #: How to give this store an encoder, quoted when a text search has none.
    _ENCODER_HINT = "pass encoder= to the store"
    encoder: Any

    def __len__(self) -> int:  # pragma: no cover - every store defines it
        raise NotImplementedError

    def search_batch(self, queries: Sequence[str], **kwargs: Any) -> list[list[Hit]]:
        """Search several text queries, encoded in one call (only the heads the requested modes need);
        takes the same keyword arguments as ``search``, one hit list per query."""
        from ..validation import check_queries

        queries = check_queries(queries)
        opts = self._options(kwargs)
        encoder = self.encoder
        if encoder is None:
            raise ValueError(
                f"search() with text needs an encoder: {self._ENCODER_HINT}, or encode the query yourself and call "
                "search_encoded()"
            )
        if not queries:
            return []
        if len(self) == 0:
            return [[] for _ in queries]
        need = set(opts.modes)
        encoded = encoder.encode_queries(
            queries, dense="dense" in need, sparse="sparse" in need, colbert="colbert" in need, show_progress_bar=False
        )
        return self._search(encoded, opts)

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
