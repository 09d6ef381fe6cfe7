"""Conversions at the LangChain boundary: search arguments in, ``Hit``/``Record`` -> ``Document`` out."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from langchain_core.documents import Document

from ..filters import compile_filter
from ..fusion import FUSIONS
from ..types import STORE_MODES as MODES, Hit, Record

__all__ = [
    "SCORE_KEY",
    "SCORES_KEY",
    "hit_to_document",
    "record_to_document",
    "check_k",
    "check_modes",
    "check_fusion",
    "check_candidates",
    "check_filter",
    "reject_unknown",
]

#: Metadata keys used when a retriever is asked to put scores into (a copy of) the metadata.
SCORE_KEY = "m3_score"
SCORES_KEY = "m3_scores"


def hit_to_document(hit: Hit, *, include_scores: bool = False) -> Document:
    """A ``Document`` with the hit's id, text and metadata (the stored metadata, unchanged).

    With ``include_scores=True`` the metadata copy also gets ``m3_score`` (fused score) and
    ``m3_scores`` (``{mode: exact score}``); a stored key of the same name is an error, never overwritten.
    """
    metadata = dict(hit.metadata)
    if include_scores:
        clash = [key for key in (SCORE_KEY, SCORES_KEY) if key in metadata]
        if clash:
            raise ValueError(
                f"document {hit.id!r} already has metadata key(s) {clash}, so include_scores=True would overwrite them. "
                "Use include_scores=False and read scores with M3Retriever.with_scores(...) or .hits(...) instead."
            )
        metadata[SCORE_KEY] = float(hit.score)
        metadata[SCORES_KEY] = {mode: float(s) for mode, s in hit.scores.items()}
    return Document(id=hit.id, page_content=hit.text or "", metadata=metadata)


def record_to_document(record: Record) -> Document:
    """A ``Document`` for a stored record (``get_by_ids``)."""
    return Document(id=record.id, page_content=record.text or "", metadata=dict(record.metadata))


def check_k(k: Any, name: str = "k") -> int:
    """``k`` if it is a positive int, else ``ValueError``."""
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise ValueError(f"{name} must be a positive int (the number of documents to return); got {k!r}")
    return k


def check_modes(modes: Any) -> tuple[str, ...] | None:
    """``None``, a mode name or a sequence of mode names, as a tuple; unknown names are a ``ValueError``."""
    if modes is None:
        return None
    items = (modes,) if isinstance(modes, str) else tuple(modes) if isinstance(modes, (list, tuple)) else None
    if items is None:
        raise TypeError(f"modes must be a mode name or a list of them from {MODES}; got {type(modes).__name__}")
    if not items:
        raise ValueError(f"modes must name at least one of {MODES}; got an empty {type(modes).__name__}")
    bad = [m for m in items if m not in MODES]
    if bad:
        raise ValueError(f"unknown mode(s) {bad}; modes must be among {MODES}")
    return items


def check_fusion(fusion: Any) -> str:
    """``fusion`` if it is one of ``FUSIONS``, else ``ValueError``."""
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; choose one of {FUSIONS}")
    return fusion


def check_candidates(candidates: Any) -> int | None:
    """``None`` or a positive int."""
    if candidates is not None and (not isinstance(candidates, int) or isinstance(candidates, bool) or candidates <= 0):
        raise ValueError(f"candidates must be None (default max(100, k)) or a positive int; got {candidates!r}")
    return candidates


def check_filter(filter: Any) -> Mapping[str, Any] | Callable[[dict], bool] | None:  # noqa: A002
    """``None``, a filter dict (validated with :func:`m3_rag.filters.compile_filter`) or a ``metadata -> bool`` callable."""
    if filter is not None and not isinstance(filter, Mapping) and not callable(filter):
        raise TypeError(
            f"filter must be None, a dict such as {{'year': {{'$gte': 2020}}}}, or a callable metadata -> bool; "
            f"got {type(filter).__name__}"
        )
    compile_filter(filter)  # raises on unknown operators / malformed operands, before any search
    return filter


def reject_unknown(kwargs: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    """``TypeError`` naming unknown keyword arguments and the accepted ones."""
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(f"{where} got unexpected keyword argument(s) {unknown}; accepted: {sorted(allowed)}")
