"""Unit tests for m3_rag.llama_index.filters: LlamaIndex MetadataFilters compiled to a metadata predicate."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.vector_stores.types import (  # noqa: E402
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

from m3_rag.llama_index.filters import to_metadata_predicate  # noqa: E402

DOCS = {
    "a": {"year": 2020, "author": "Ann Lee", "tags": ["x", "y"], "score": 0.5, "note": ""},
    "b": {"year": 2021, "author": "bob", "tags": ["y"], "score": 1.5},
    "c": {"year": 2019, "author": "Carl", "tags": [], "score": None},
    "d": {"year": "unknown", "author": "ann smith", "tags": "x"},
    "e": {},
}


def run(filters: MetadataFilters | None, **kw) -> set[str]:
    pred = to_metadata_predicate(filters, **kw)
    if pred is None:
        return set(DOCS)
    return {k for k, md in DOCS.items() if pred(md)}


def one(key: str, op: FilterOperator, value) -> MetadataFilters:
    return MetadataFilters(filters=[MetadataFilter(key=key, operator=op, value=value)])


@pytest.mark.parametrize(
    "key, op, value, expected",
    [
        ("year", FilterOperator.EQ, 2020, {"a"}),
        ("year", FilterOperator.NE, 2020, {"b", "c", "d", "e"}),  # missing key matches NE
        ("year", FilterOperator.GT, 2019, {"a", "b"}),  # "unknown" > 2019 cannot compare: no match
        ("year", FilterOperator.GTE, 2020, {"a", "b"}),
        ("year", FilterOperator.LT, 2020, {"c"}),
        ("year", FilterOperator.LTE, 2020, {"a", "c"}),
        ("author", FilterOperator.IN, ["bob", "Carl"], {"b", "c"}),
        ("author", FilterOperator.NIN, ["bob", "Carl"], {"a", "d", "e"}),
        ("tags", FilterOperator.ANY, ["x", "z"], {"a", "d"}),  # scalar "x" acts as ["x"]
        ("tags", FilterOperator.ALL, ["x", "y"], {"a"}),
        ("tags", FilterOperator.CONTAINS, "y", {"a", "b"}),
        ("author", FilterOperator.CONTAINS, "nn", {"a", "d"}),  # substring of a string, as HybridStore's $contains
        ("year", FilterOperator.CONTAINS, 2020, set()),  # a number contains nothing
        ("author", FilterOperator.TEXT_MATCH, "nn", {"a", "d"}),
        ("author", FilterOperator.TEXT_MATCH, "ann", {"d"}),
        ("author", FilterOperator.TEXT_MATCH_INSENSITIVE, "ANN", {"a", "d"}),
        ("tags", FilterOperator.IS_EMPTY, None, {"c", "e"}),
        ("score", FilterOperator.IS_EMPTY, None, {"c", "d", "e"}),  # None and missing are empty
        ("note", FilterOperator.IS_EMPTY, None, {"a", "b", "c", "d", "e"}),  # "" is empty
        ("missing", FilterOperator.EQ, 1, set()),
        ("missing", FilterOperator.NIN, [1], set(DOCS)),
        ("score", FilterOperator.GT, 1.0, {"b"}),  # None never compares
    ],
)
def test_each_operator(key, op, value, expected):
    assert run(one(key, op, value)) == expected


def test_every_llama_index_operator_is_covered():
    from m3_rag.llama_index.filters import SUPPORTED_OPERATORS

    assert set(SUPPORTED_OPERATORS) == set(FilterOperator)


def test_conditions_and_nesting():
    year_2020 = MetadataFilter(key="year", value=2020)
    bob = MetadataFilter(key="author", value="bob")
    assert run(MetadataFilters(filters=[year_2020, bob], condition=FilterCondition.OR)) == {"a", "b"}
    assert run(MetadataFilters(filters=[year_2020, bob], condition=FilterCondition.AND)) == set()
    assert run(MetadataFilters(filters=[year_2020, bob], condition=FilterCondition.NOT)) == {"c", "d", "e"}
    nested = MetadataFilters(
        filters=[
            MetadataFilter(key="tags", operator=FilterOperator.CONTAINS, value="y"),
            MetadataFilters(filters=[year_2020], condition=FilterCondition.NOT),
        ],
        condition=FilterCondition.AND,
    )
    assert run(nested) == {"b"}
    deep = MetadataFilters(
        filters=[nested, MetadataFilters(filters=[MetadataFilter(key="author", value="Carl")])],
        condition=FilterCondition.OR,
    )
    assert run(deep) == {"b", "c"}


def test_doc_ids_and_empty_inputs():
    docs = {k: dict(md, ref_doc_id=k.upper()) for k, md in DOCS.items()}
    pred = to_metadata_predicate(None, doc_ids=["A", "C"])
    assert {k for k, md in docs.items() if pred(md)} == {"a", "c"}
    assert to_metadata_predicate(None) is None
    assert to_metadata_predicate(MetadataFilters(filters=[])) is None
    assert to_metadata_predicate(None, doc_ids=[]) is None  # empty list: no restriction


@pytest.mark.parametrize(
    "op, value, match",
    [
        (FilterOperator.IN, "bob", "needs a list value"),
        (FilterOperator.ANY, 3, "needs a list value"),
        (FilterOperator.TEXT_MATCH, 3, "needs a string value"),
        (FilterOperator.EQ, ["a", "b"], "Use IN / NIN / ANY / ALL"),
    ],
)
def test_bad_values_are_named(op, value, match):
    with pytest.raises(ValueError, match=match):
        to_metadata_predicate(one("author", op, value))


def test_not_metadata_filters():
    with pytest.raises(TypeError, match="MetadataFilters"):
        to_metadata_predicate({"year": 2020})  # type: ignore[arg-type]
