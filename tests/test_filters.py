"""Metadata filter language: every operator, missing keys, logical nesting, bad filters."""

import pytest

from m3_rag.filters import FILTER_OPERATORS, compile_filter, matches

DOC = {"year": 2010, "lang": "en", "tags": ["a", "b"], "title": "hello world", "score": 0.5, "none": None}


@pytest.mark.parametrize(
    "flt, expected",
    [
        ({}, True),
        ({"lang": "en"}, True),
        ({"lang": "fr"}, False),
        ({"none": None}, True),
        ({"missing": None}, False),
        ({"year": {"$eq": 2010}}, True),
        ({"year": {"$ne": 2010}}, False),
        ({"year": {"$gt": 2009}}, True),
        ({"year": {"$gt": 2010}}, False),
        ({"year": {"$gte": 2010}}, True),
        ({"year": {"$lt": 2010}}, False),
        ({"year": {"$lte": 2010}}, True),
        ({"year": {"$gt": 2000, "$lt": 2005}}, False),
        ({"year": {"$gt": 2000, "$lt": 2020}}, True),
        ({"lang": {"$in": ["en", "fr"]}}, True),
        ({"lang": {"$nin": ["en", "fr"]}}, False),
        ({"lang": {"$exists": True}}, True),
        ({"tags": {"$contains": "a"}}, True),
        ({"tags": {"$contains": "z"}}, False),
        ({"title": {"$contains": "world"}}, True),
        ({"year": {"$contains": 1}}, False),
        ({"lang": {"$gt": 1}}, False),  # incomparable types -> False, no error
        ({"tags": ["a", "b"]}, True),  # plain list value: equality
        # missing key: comparisons False, $ne/$nin True, $exists False
        ({"missing": {"$eq": 1}}, False),
        ({"missing": {"$gt": 1}}, False),
        ({"missing": {"$in": [1]}}, False),
        ({"missing": {"$ne": 1}}, True),
        ({"missing": {"$nin": [1]}}, True),
        ({"missing": {"$exists": True}}, False),
        ({"missing": {"$exists": False}}, True),
        ({"missing": {"$contains": "x"}}, False),
        # logical
        ({"lang": "en", "year": 2011}, False),
        ({"$and": [{"lang": "en"}, {"year": {"$gte": 2000}}]}, True),
        ({"$or": [{"lang": "fr"}, {"year": 2010}]}, True),
        ({"$or": [{"lang": "fr"}, {"year": 2011}]}, False),
        ({"$not": {"lang": "fr"}}, True),
        ({"$not": {"$or": [{"lang": "en"}, {"x": 1}]}}, False),
    ],
)
def test_operators(flt, expected):
    assert matches(flt, DOC) is expected


def test_all_documented_operators_are_covered():
    assert set(FILTER_OPERATORS) == {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$contains"}


def test_callable_and_none():
    assert compile_filter(None) is None
    pred = compile_filter(lambda md: md.get("year", 0) > 2000)
    assert pred(DOC) is True and pred({}) is False


@pytest.mark.parametrize(
    "flt, exc, match",
    [
        ({"year": {"$gtt": 1}}, ValueError, r"unknown operator '\$gtt'.*\$eq"),
        ({"$xor": []}, ValueError, "unknown logical operator"),
        ({"year": {"$in": 3}}, ValueError, r"\$in needs a list"),
        ({"year": {"$exists": "yes"}}, ValueError, r"\$exists needs True or False"),
        ({"$and": []}, ValueError, "non-empty list"),
        ({"$or": {"a": 1}}, ValueError, "non-empty list"),
        ({"$not": [1]}, TypeError, "must be a dict"),
        ({"year": {"$gt": 1, "plain": 2}}, ValueError, "mixes operators"),
        ({1: 2}, TypeError, "field names must be strings"),
        ("year=1", TypeError, "must be a dict"),
    ],
)
def test_bad_filters_raise_clear_errors(flt, exc, match):
    with pytest.raises(exc, match=match):
        compile_filter(flt)
