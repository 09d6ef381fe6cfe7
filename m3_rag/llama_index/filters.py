"""LlamaIndex ``MetadataFilters`` as a ``metadata -> bool`` callable, which HybridStore applies before top-k.

Semantics per ``FilterOperator`` (``v`` = filter value, ``x`` = the document's metadata value):

=========================  ===============================================================================
``EQ`` / ``NE``            ``x == v`` / ``x != v``
``GT`` ``GTE`` ``LT``      ``x > v`` ...; values that cannot be compared (``"a" > 1``) do not match
``LTE``
``IN`` / ``NIN``           ``x in v`` / ``x not in v`` (``v`` a list)
``ANY`` / ``ALL``          some / every element of ``v`` is in ``x`` (``x`` a list; a scalar ``x`` acts as
                           the one-element list ``[x]``, as in Qdrant)
``CONTAINS``               ``v`` is an element of the list ``x``, or a substring of the string ``x`` (as the
                           HybridStore filter ``$contains``); other values do not match
``TEXT_MATCH``             ``v`` is a substring of the string ``x``
``TEXT_MATCH_INSENSITIVE`` the same, ignoring case
``IS_EMPTY``               ``x`` is missing, ``None``, ``""`` or an empty list
=========================  ===============================================================================

A key missing from a document (or ``None``) matches only ``NE``, ``NIN`` and ``IS_EMPTY``, as in
LlamaIndex's own ``SimpleVectorStore``. Conditions: ``AND`` (all match), ``OR`` (any matches), ``NOT`` (none
matches, LlamaIndex's meaning). ``MetadataFilters`` nest to any depth.
"""

from __future__ import annotations

from typing import Any, Callable, Collection, Mapping

from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters

__all__ = ["to_metadata_predicate", "SUPPORTED_OPERATORS", "SUPPORTED_CONDITIONS"]

Predicate = Callable[[Mapping[str, Any]], bool]

_LIST_OPERATORS = (FilterOperator.IN, FilterOperator.NIN, FilterOperator.ANY, FilterOperator.ALL)
_TEXT_OPERATORS = (FilterOperator.TEXT_MATCH, FilterOperator.TEXT_MATCH_INSENSITIVE)
_MISSING_MATCHES = (FilterOperator.NE, FilterOperator.NIN, FilterOperator.IS_EMPTY)
_MISSING = object()


def _as_list(x: Any) -> list[Any]:
    return list(x) if isinstance(x, (list, tuple, set, frozenset)) else [x]


def _compare(x: Any, v: Any, op: FilterOperator) -> bool:
    try:
        if op == FilterOperator.GT:
            return bool(x > v)
        if op == FilterOperator.GTE:
            return bool(x >= v)
        if op == FilterOperator.LT:
            return bool(x < v)
        return bool(x <= v)
    except TypeError:
        return False


def _match(op: FilterOperator, v: Any, x: Any) -> bool:
    if op == FilterOperator.IS_EMPTY:
        return x is _MISSING or x is None or x == "" or (isinstance(x, (list, tuple, set, dict)) and len(x) == 0)
    if x is _MISSING or x is None:
        return op in _MISSING_MATCHES
    if op == FilterOperator.EQ:
        return bool(x == v)
    if op == FilterOperator.NE:
        return bool(x != v)
    if op in (FilterOperator.GT, FilterOperator.GTE, FilterOperator.LT, FilterOperator.LTE):
        return _compare(x, v, op)
    if op == FilterOperator.IN:
        return x in v
    if op == FilterOperator.NIN:
        return x not in v
    if op == FilterOperator.ANY:
        xs = _as_list(x)
        return any(item in xs for item in v)
    if op == FilterOperator.ALL:
        xs = _as_list(x)
        return all(item in xs for item in v)
    if op == FilterOperator.CONTAINS:
        if isinstance(x, str):
            return isinstance(v, str) and v in x
        return isinstance(x, (list, tuple)) and v in x
    if op == FilterOperator.TEXT_MATCH:
        return isinstance(x, str) and v in x
    if op == FilterOperator.TEXT_MATCH_INSENSITIVE:
        return isinstance(x, str) and v.casefold() in x.casefold()
    raise AssertionError(op)  # unreachable: operators are validated when the predicate is built


#: The operators :func:`to_metadata_predicate` understands (all of LlamaIndex's ``FilterOperator``).
SUPPORTED_OPERATORS: tuple[FilterOperator, ...] = tuple(FilterOperator)
#: The conditions that combine filters.
SUPPORTED_CONDITIONS: tuple[FilterCondition, ...] = (FilterCondition.AND, FilterCondition.OR, FilterCondition.NOT)


def _leaf(f: MetadataFilter) -> Predicate:
    op = FilterOperator(f.operator)
    if op not in SUPPORTED_OPERATORS:  # pragma: no cover - future LlamaIndex operators
        allowed = ", ".join(o.name for o in SUPPORTED_OPERATORS)
        raise ValueError(f"filter on {f.key!r}: operator {op!r} is not supported; supported: {allowed}")
    v = f.value
    if op in _LIST_OPERATORS and not isinstance(v, list):
        raise ValueError(
            f"filter on {f.key!r}: operator {op.name} needs a list value, e.g. value=[{v!r}]; got {type(v).__name__}"
        )
    if op in _TEXT_OPERATORS and not isinstance(v, str):
        raise ValueError(f"filter on {f.key!r}: operator {op.name} needs a string value; got {type(v).__name__} {v!r}")
    if op not in _LIST_OPERATORS and op != FilterOperator.IS_EMPTY and isinstance(v, list):
        raise ValueError(
            f"filter on {f.key!r}: operator {op.name} compares with a single value; got the list {v!r}. "
            "Use IN / NIN / ANY / ALL for lists."
        )
    key = f.key

    def predicate(metadata: Mapping[str, Any]) -> bool:
        return _match(op, v, metadata.get(key, _MISSING))

    return predicate


def _group(filters: MetadataFilters) -> Predicate:
    condition = FilterCondition(filters.condition or FilterCondition.AND)
    if condition not in SUPPORTED_CONDITIONS:  # pragma: no cover - future LlamaIndex conditions
        allowed = ", ".join(c.name for c in SUPPORTED_CONDITIONS)
        raise ValueError(f"filter condition {condition!r} is not supported; supported: {allowed}")
    parts = [_group(f) if isinstance(f, MetadataFilters) else _leaf(f) for f in filters.filters]
    if condition == FilterCondition.AND:
        return lambda md: all(p(md) for p in parts)
    if condition == FilterCondition.OR:
        return lambda md: any(p(md) for p in parts)
    return lambda md: not any(p(md) for p in parts)


def to_metadata_predicate(
    filters: MetadataFilters | None = None,
    *,
    doc_ids: Collection[str] | None = None,
    doc_id_key: str = "ref_doc_id",
) -> Predicate | None:
    """Compile LlamaIndex filters (and a ``doc_ids`` restriction) into one ``metadata -> bool`` callable.

    Args:
        filters: ``MetadataFilters``, nested to any depth; ``None`` or an empty list of filters means
            no condition.
        doc_ids: keep only documents whose ``metadata[doc_id_key]`` is one of these; ``None`` or an empty
            list means no restriction (LlamaIndex's convention).
        doc_id_key: the metadata key holding the source document id.

    Returns:
        The callable, or ``None`` when nothing restricts the search.

    Raises:
        TypeError: ``filters`` is not a ``MetadataFilters``.
        ValueError: an operator gets the wrong kind of value (e.g. ``IN`` with a scalar).
    """
    if filters is not None and not isinstance(filters, MetadataFilters):
        raise TypeError(
            f"filters must be llama_index.core.vector_stores.MetadataFilters; got {type(filters).__name__}. "
            "Wrap single filters: MetadataFilters(filters=[MetadataFilter(key=..., value=...)])"
        )
    checks: list[Predicate] = []
    if filters is not None and filters.filters:
        checks.append(_group(filters))
    if doc_ids:
        wanted = frozenset(doc_ids)
        checks.append(lambda md: md.get(doc_id_key) in wanted)
    if not checks:
        return None
    if len(checks) == 1:
        return checks[0]
    return lambda md: all(c(md) for c in checks)
