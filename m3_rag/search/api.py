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
        need = set(opts.modes)
        if need == {"bm25"}:  # BM25 reads the query text only: nothing to encode, no encoder needed
            if not queries:
                return []
            if len(self) == 0:
                return [[] for _ in queries]
            return self._search(M3Output(text=list(queries)), opts)
        if encoder is None:
            raise ValueError(
                f"search() with text needs an encoder: {self._ENCODER_HINT}, or encode the query yourself and call "
                "search_encoded()"
            )
        if not queries:
            return []
        if len(self) == 0:
            return [[] for _ in queries]
        encoded = encoder.encode_queries(
            queries, dense="dense" in need, sparse="sparse" in need, colbert="colbert" in need, show_progress_bar=False
        )
        encoded.text = list(queries)  # the bm25 mode's query side
        return self._search(encoded, opts)

    def _options(self, kwargs: Any) -> Any:  # pragma: no cover - every store defines it
        raise NotImplementedError

    def _search(self, queries: M3Output, opts: Any) -> list[list[Hit]]:  # pragma: no cover
        raise NotImplementedError

    def search_encoded(self, query: M3Output, *, query_text: str | None = None, **kwargs: Any) -> list[Hit]:
        """Search with a precomputed query: an :class:`M3Output` holding exactly one row; takes the same
        keyword arguments as ``search``. ``query_text``: the query's text, needed by the ``bm25`` mode (or set
        ``query.text``); ``M3Output(text=["..."])`` alone searches ``bm25`` without any vector."""
        if not isinstance(query, M3Output):
            raise TypeError(f"query must be an M3Output; got {type(query).__name__}")
        if query_text is not None and not isinstance(query_text, str):
            raise TypeError(f"query_text must be a str; got {type(query_text).__name__}")
        if len(query) != 1:
            raise ValueError(f"search_encoded needs an M3Output with exactly one row; got {len(query)} (use search_encoded_batch)")
        return self.search_encoded_batch(query, query_texts=None if query_text is None else [query_text], **kwargs)[0]

    def search_encoded_batch(self, queries: M3Output, *, query_texts: Sequence[str] | None = None,
                             **kwargs: Any) -> list[list[Hit]]:
        """:meth:`search_encoded` for every row of ``queries``; one result list per row. ``query_texts``: one
        text per row, for the ``bm25`` mode (or set ``queries.text``)."""
        if not isinstance(queries, M3Output):
            raise TypeError(f"queries must be an M3Output; got {type(queries).__name__}")
        if query_texts is not None:
            from dataclasses import replace

            from ..validation import check_queries

            texts = check_queries(query_texts)
            if len(texts) != len(queries):
                raise ValueError(f"got {len(texts)} query_texts for {len(queries)} query rows; pass one per row")
            queries = replace(queries, text=texts)
        return self._search(queries, self._options(kwargs))
