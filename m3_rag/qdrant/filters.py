"""Metadata filter dicts (:mod:`m3_rag.filters` syntax) translated to Qdrant payload filters."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

__all__ = ["to_qdrant_filter"]

PAYLOAD_META = "metadata"


def _qdrant_models() -> Any:
    try:
        from qdrant_client import models
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError('Qdrant filters need qdrant-client: pip install "m3-rag[qdrant]"') from exc
    return models


# ---------------------------------------------------------------------------------------------- filters
_COMPARISONS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$contains")
_LOGICAL = ("$and", "$or", "$not")


def _field_key(key: str) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"filter field names must be non-empty strings; got {key!r}")
    if key.startswith("$"):
        raise ValueError(f"unknown filter operator {key!r}; logical operators are {', '.join(_LOGICAL)}")
    if '"' in key:
        raise ValueError(f"filter field {key!r} contains a double quote, which Qdrant payload paths cannot express")
    if all(c.isalnum() or c in "_-" for c in key):
        return f"{PAYLOAD_META}.{key}"
    return f'{PAYLOAD_META}."{key}"'


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _eq_condition(models: Any, key: str, value: Any) -> Any:
    """A condition true when the field equals ``value`` (numbers compare numerically, like Python)."""
    if value is None:
        return models.IsNullCondition(is_null=models.PayloadField(key=key))
    if isinstance(value, (bool, str)):
        return models.FieldCondition(key=key, match=models.MatchValue(value=value))
    if _is_number(value):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"filter on {key!r}: non-finite number {value!r} cannot be matched in Qdrant")
        return models.FieldCondition(key=key, range=models.Range(gte=value, lte=value))
    raise ValueError(
        f"filter on {key!r}: cannot translate equality with {type(value).__name__} value {value!r:.60} to a Qdrant "
        "payload filter; use str, int, float, bool or None values"
    )


def _any_of(models: Any, key: str, values: Any, op: str) -> Any:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"filter on {key!r}: {op} needs a list of values; got {values!r:.60}")
    values = list(values)
    if not values:
        return None  # matches nothing
    conds = [_eq_condition(models, key, v) for v in values]
    return conds[0] if len(conds) == 1 else models.Filter(should=conds)


def _never(models: Any) -> Any:
    # a filter that matches nothing: the empty HasId list
    return models.Filter(must=[models.HasIdCondition(has_id=[])])


def _range(models: Any, key: str, op: str, value: Any) -> Any:
    if not _is_number(value):
        raise ValueError(
            f"filter on {key!r}: {op} with {type(value).__name__} value {value!r:.60} is not translatable; Qdrant range "
            "conditions compare numbers only. Use a numeric field, or HybridStore for string ordering."
        )
    return models.FieldCondition(key=key, range=models.Range(**{op[1:]: value}))


def _field_filter(models: Any, field: str, cond: Any) -> Any:
    key = _field_key(field)
    if not isinstance(cond, Mapping) or not any(isinstance(op, str) and op.startswith("$") for op in cond):
        return _eq_condition(models, key, cond)  # a dict without operators is a value (untranslatable)
    if not cond:
        raise ValueError(f"filter on {field!r}: empty operator dict; use one of {', '.join(_COMPARISONS)}")
    parts = []
    for op, value in cond.items():
        if op not in _COMPARISONS:
            raise ValueError(f"unknown filter operator {op!r} on {field!r}; allowed: {', '.join(_COMPARISONS)}")
        if op == "$eq":
            parts.append(_eq_condition(models, key, value))
        elif op == "$ne":
            parts.append(models.Filter(must_not=[_eq_condition(models, key, value)]))
        elif op in ("$gt", "$gte", "$lt", "$lte"):
            parts.append(_range(models, key, op, value))
        elif op == "$in":
            c = _any_of(models, key, value, op)
            parts.append(_never(models) if c is None else c)
        elif op == "$nin":
            c = _any_of(models, key, value, op)
            if c is not None:
                parts.append(models.Filter(must_not=[c]))
        elif op == "$exists":
            if not isinstance(value, bool):
                raise ValueError(f"filter on {field!r}: $exists needs True or False; got {value!r}")
            # present = not empty, or explicitly null (IsEmpty is also true for null values)
            present = models.Filter(
                should=[
                    models.Filter(must_not=[models.IsEmptyCondition(is_empty=models.PayloadField(key=key))]),
                    models.IsNullCondition(is_null=models.PayloadField(key=key)),
                ]
            )
            parts.append(present if value else models.Filter(must_not=[present]))
        elif op == "$contains":
            if isinstance(value, str):
                # list fields: some element contains the string; string fields: substring
                parts.append(models.FieldCondition(key=key, match=models.MatchSubstring(substring=value)))
            else:
                parts.append(_eq_condition(models, key, value))  # list membership
    return parts[0] if len(parts) == 1 else models.Filter(must=parts)


def to_qdrant_filter(flt: Mapping[str, Any]) -> Any:
    """Translate a ``HybridStore`` metadata filter dict into a ``qdrant_client.models.Filter``.

    Supported: field equality ``{"a": 1}``; ``$eq $ne $gt $gte $lt $lte $in $nin $exists $contains``;
    ``$and``/``$or`` (lists of filters) and ``$not`` (one filter). Fields address ``metadata.<field>``.

    Differences from in-memory evaluation, all on odd data only: a condition on a list-valued field matches when
    any element matches (Qdrant semantics); ``$exists`` treats an empty list as absent; ``$gt``-style
    comparisons accept numbers only (Qdrant ranges are numeric); ``$contains`` with a string is a substring test
    (on a list field: of any element).

    Raises:
        TypeError: for a callable (not translatable; ``QdrantHybridStore.search`` evaluates callables
            client-side instead, see ``_build_filter``).
        ValueError: for unknown operators or untranslatable values.
    """
    models = _qdrant_models()
    if callable(flt) and not isinstance(flt, Mapping):
        raise TypeError(
            "QdrantHybridStore cannot send a Python callable filter to Qdrant; express it as a filter dict "
            '(e.g. {"year": {"$gte": 2020}}) or use HybridStore for callable filters'
        )
    if not isinstance(flt, Mapping):
        raise TypeError(f"filter must be a dict (or None); got {type(flt).__name__}")
    return _translate(models, flt)


def _translate(models: Any, flt: Mapping[str, Any]) -> Any:
    if not isinstance(flt, Mapping):
        raise TypeError(f"every sub-filter must be a dict; got {type(flt).__name__} ({flt!r:.60})")
    must: list[Any] = []
    for key, value in flt.items():
        if key in ("$and", "$or"):
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{key} needs a list of filter dicts; got {value!r:.60}")
            subs = [_translate(models, v) for v in value]
            if key == "$and":
                must.append(models.Filter(must=subs) if subs else models.Filter())
            else:
                must.append(models.Filter(should=subs) if subs else _never(models))
        elif key == "$not":
            must.append(models.Filter(must_not=[_translate(models, value)]))
        else:
            must.append(_field_filter(models, key, value))
    return models.Filter(must=must)


# ---------------------------------------------------------------------------------------------- store
