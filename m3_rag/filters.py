"""Metadata filters: a small Mongo-style dict language (or a callable) compiled to a predicate.

The same semantics are used by :class:`m3_rag.HybridStore` and mirrored by the Qdrant store.

Grammar::

    filter     := {field: value, ...}              # every entry must hold (implicit $and)
                | {"$and": [filter, ...]} | {"$or": [filter, ...]} | {"$not": filter}
    value      := scalar / list / dict without "$" keys   -> equality
                | {op: operand, ...}                      -> every operator must hold
    op         := $eq $ne $gt $gte $lt $lte $in $nin $exists $contains

Rules:

* Fields are top-level metadata keys (no dotted paths).
* A missing field makes every comparison False, except ``$ne`` and ``$nin`` (True) and
  ``{"$exists": False}`` (True).
* An ordering comparison between values that cannot be ordered (``"a" > 1``) is False, not an error.
* ``$contains`` holds when the field is a string holding the operand as a substring, or a
  list/tuple holding the operand as an element.
* Equality is Python equality (``1 == 1.0``).
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Mapping

__all__ = ["FILTER_OPERATORS", "LOGICAL_OPERATORS", "compile_filter", "matches"]

#: Field operators, in the order of the docs.
FILTER_OPERATORS: tuple[str, ...] = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$contains")
#: Logical operators, allowed only as top-level keys of a filter dict.
LOGICAL_OPERATORS: tuple[str, ...] = ("$and", "$or", "$not")

#: The deepest nesting of dicts and lists accepted in a filter (``ValueError`` beyond).
FILTER_MAX_DEPTH = 100

Predicate = Callable[[Mapping[str, Any]], bool]
_MISSING = object()
_ORDER = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}


def _ordered(op: Callable[[Any, Any], bool], operand: Any) -> Callable[[Any], bool]:
    def test(value: Any) -> bool:
        if value is _MISSING:
            return False
        try:
            return bool(op(value, operand))
        except TypeError:
            return False

    return test


def _contains(operand: Any) -> Callable[[Any], bool]:
    def test(value: Any) -> bool:
        if isinstance(value, str):
            return isinstance(operand, str) and operand in value
        if isinstance(value, (list, tuple)):
            return operand in value
        return False

    return test


def _operator_test(op: str, operand: Any, field: str) -> Callable[[Any], bool]:
    if op == "$eq":
        return lambda v: v is not _MISSING and v == operand
    if op == "$ne":
        return lambda v: v is _MISSING or v != operand
    if op in _ORDER:
        return _ordered(_ORDER[op], operand)
    if op in ("$in", "$nin"):
        if not isinstance(operand, (list, tuple, set, frozenset)):
            raise ValueError(
                f"filter on {field!r}: {op} needs a list of values; got {type(operand).__name__} ({operand!r:.60})"
            )
        values = list(operand)
        if op == "$in":
            return lambda v: v is not _MISSING and v in values
        return lambda v: v is _MISSING or v not in values
    if op == "$exists":
        if not isinstance(operand, bool):
            raise ValueError(f"filter on {field!r}: $exists needs True or False; got {operand!r:.60}")
        return (lambda v: v is not _MISSING) if operand else (lambda v: v is _MISSING)
    if op == "$contains":
        return _contains(operand)
    raise ValueError(
        f"filter on {field!r}: unknown operator {op!r}; allowed field operators: {', '.join(FILTER_OPERATORS)}"
    )


def _field_predicate(field: str, spec: Any) -> Predicate:
    if isinstance(spec, Mapping) and spec and any(isinstance(k, str) and k.startswith("$") for k in spec):
        if not all(isinstance(k, str) and k.startswith("$") for k in spec):
            raise ValueError(
                f"filter on {field!r} mixes operators and plain keys: {list(spec)}; "
                "use only operators ({'$gt': 1}) or only a value to compare for equality"
            )
        tests = [_operator_test(op, operand, field) for op, operand in spec.items()]
        if len(tests) == 1:
            test = tests[0]
            return lambda md: test(md.get(field, _MISSING))
        return lambda md: all(t(md.get(field, _MISSING)) for t in tests)
    value = spec
    return lambda md: (v := md.get(field, _MISSING)) is not _MISSING and v == value


def _compile(spec: Any, where: str) -> Predicate:
    if not isinstance(spec, Mapping):
        raise TypeError(f"{where} must be a dict; got {type(spec).__name__} ({spec!r:.60})")
    preds: list[Predicate] = []
    for key, value in spec.items():
        if not isinstance(key, str):
            raise TypeError(f"{where}: field names must be strings; got {key!r}")
        if key in ("$and", "$or"):
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"{where}: {key} needs a non-empty list of filters; got {value!r:.60}")
            subs = [_compile(s, f"{where}.{key}[{i}]") for i, s in enumerate(value)]
            if key == "$and":
                preds.append(lambda md, subs=subs: all(p(md) for p in subs))
            else:
                preds.append(lambda md, subs=subs: any(p(md) for p in subs))
        elif key == "$not":
            sub = _compile(value, f"{where}.$not")
            preds.append(lambda md, sub=sub: not sub(md))
        elif key.startswith("$"):
            raise ValueError(
                f"{where}: unknown logical operator {key!r}; allowed: {', '.join(LOGICAL_OPERATORS)} "
                f"(field operators such as $gt go inside a field: {{'year': {{'$gt': 2000}}}})"
            )
        else:
            preds.append(_field_predicate(key, value))
    if not preds:
        return lambda md: True
    if len(preds) == 1:
        return preds[0]
    return lambda md: all(p(md) for p in preds)


def compile_filter(filter: Mapping[str, Any] | Callable[[dict], bool] | None) -> Predicate | None:
    """Validate a filter and return a predicate ``metadata -> bool`` (``None`` for no filter).

    A callable is returned wrapped so its result is converted to ``bool`` and it receives a read-only view of
    the metadata (:func:`m3_rag.validation.readonly_metadata`). A dict nested deeper than
    :data:`FILTER_MAX_DEPTH` raises ``ValueError``. A dict is checked
    fully up front: unknown operators and malformed operands raise ``ValueError``/``TypeError``
    even when no document would reach them.

    >>> pred = compile_filter({"year": {"$gte": 2000}, "lang": {"$in": ["en", "fr"]}})
    >>> pred({"year": 2010, "lang": "en"}), pred({"year": 1999, "lang": "en"}), pred({"lang": "en"})
    (True, False, False)
    """
    if filter is None:
        return None
    from .validation import check_depth, readonly_metadata

    if callable(filter) and not isinstance(filter, Mapping):
        fn = filter
        return lambda md: bool(fn(readonly_metadata(md)))  # the callable cannot change the stored metadata
    check_depth(filter, "filter", limit=FILTER_MAX_DEPTH)
    return _compile(filter, "filter")


def matches(filter: Mapping[str, Any] | Callable[[dict], bool] | None, metadata: Mapping[str, Any]) -> bool:
    """Whether ``metadata`` passes ``filter`` (``None`` passes everything)."""
    pred = compile_filter(filter)
    return True if pred is None else pred(metadata)
