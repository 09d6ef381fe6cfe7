"""Validate and translate query settings shared by ``M3VectorStore`` and ``M3Retriever`` (no search logic here)."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from llama_index.core.vector_stores.types import MetadataFilters

from ..types import MODES
from .filters import to_metadata_predicate


def check_top_k(value: Any, name: str) -> int:
    """``value`` as a positive int, else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return value


def check_modes(modes: str | Sequence[str], name: str = "modes") -> tuple[str, ...]:
    """Normalise ``modes`` (a mode name or a sequence of them) to a tuple, validating each name."""
    items = (modes,) if isinstance(modes, str) else tuple(modes)
    if not items:
        raise ValueError(f"{name} must name at least one of {MODES}; got an empty sequence")
    for m in items:
        if m not in MODES:
            raise ValueError(f"{name}: unknown mode {m!r}; choose from {MODES}")
    if len(set(items)) != len(items):
        raise ValueError(f"{name} lists a mode twice: {items}")
    return items


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
