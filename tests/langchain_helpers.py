"""Shared pieces of the LangChain adapter tests: a small corpus and a spy that records encoder calls."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import pytest

from m3_rag import MODES

CORPUS: list[tuple[str, str, dict[str, Any]]] = [
    ("paris", "Paris is the capital and largest city of France.", {"topic": "geo", "year": 2001, "lang": "en"}),
    ("berlin", "Berlin is the capital of Germany and its largest city.", {"topic": "geo", "year": 2005, "lang": "en"}),
    ("tokyo", "東京は日本の首都です。Tokyo is the capital of Japan.", {"topic": "geo", "year": 2010, "lang": "ja"}),
    ("python", "Python is a programming language that lets you work quickly.", {"topic": "cs", "year": 1991, "lang": "en"}),
    ("rust", "Rust is a systems programming language focused on safety.", {"topic": "cs", "year": 2015, "lang": "en"}),
    ("bread", "To bake bread you need flour, water, salt and yeast.", {"topic": "food", "year": 2020, "lang": "en"}),
    ("pizza", "Pizza margherita: tomato, mozzarella, basil 🍕", {"topic": "food", "year": 2021, "lang": "it"}),
    ("faiss", "FAISS is a library for efficient similarity search of dense vectors.", {"topic": "cs", "year": 2017, "lang": "en"}),
    ("colbert", "ColBERT scores queries against documents with late interaction.", {"topic": "cs", "year": 2020, "lang": "en"}),
    ("empty", "", {"topic": "misc", "year": 2000, "lang": "en"}),
]
IDS = [c[0] for c in CORPUS]
TEXTS = [c[1] for c in CORPUS]
METADATAS = [c[2] for c in CORPUS]
QUERIES = ["What is the capital of France?", "programming language safety", "how to bake bread", "dense vector search"]


@contextmanager
def spy_encode(encoder: Any) -> Iterator[list[dict[str, Any]]]:
    """Record every ``encoder.encode`` call (also those made through ``encode_queries``/``encode_documents``).

    Each record holds the number of texts and the ``dense``/``sparse``/``colbert`` flags actually used.
    """
    calls: list[dict[str, Any]] = []
    original = encoder.encode

    def spy(texts: Any, **kwargs: Any) -> Any:
        record = {"n": 1 if isinstance(texts, str) else len(texts)}
        record.update({mode: bool(kwargs.get(mode, True)) for mode in MODES})
        calls.append(record)
        return original(texts, **kwargs)

    encoder.encode = spy
    try:
        yield calls
    finally:
        del encoder.encode


def heads(call: dict[str, Any]) -> tuple[str, ...]:
    """The heads (modes) one recorded call computed."""
    return tuple(m for m in MODES if call[m])


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread in these modules.

    On a shared, loaded CPU, torch's intra-op thread pool makes a tiny-model forward pass ~50x slower
    (0.5 s instead of 10 ms for one query) through thread contention; one thread keeps the tests fast.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
