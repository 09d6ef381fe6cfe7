"""Validate and translate query settings shared by ``M3VectorStore`` and ``M3Retriever`` (no search logic here)."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from llama_index.core.vector_stores.types import MetadataFilters

from .filters import to_metadata_predicate


def check_top_k(value: Any, name: str) -> int:
    """``value`` as a positive int, else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return value


def check_modes(modes: str | Sequence[str], name: str = "modes") -> tuple[str, ...]:
    """Normalise ``modes`` (a mode name or a sequence of them) to a tuple: the stores' own check
    (:func:`m3_rag.validation.check_modes`), its message prefixed with the argument's name."""
    from ..validation import check_modes as _check

    try:
        return _check(modes)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name}: {exc}") from exc


def store_filter(
    filters: MetadataFilters | Mapping[str, Any] | Callable[[Mapping[str, Any]], bool] | None,
) -> Mapping[str, Any] | Callable[[Mapping[str, Any]], bool] | None:
    """LlamaIndex ``MetadataFilters`` become a callable; the store's dict filters and callables pass through."""
    if filters is None or isinstance(filters, MetadataFilters):
        return to_metadata_predicate(filters)
    if isinstance(filters, Mapping) or callable(filters):
        return filters
    raise TypeError(
        "filters must be llama_index MetadataFilters, a HybridStore filter dict ({'year': {'$gte': 2020}}) or a "
        f"callable metadata -> bool; got {type(filters).__name__}"
    )
