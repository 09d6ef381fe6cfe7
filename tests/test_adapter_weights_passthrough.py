"""Adapters never pick fusion weights: weights=None reaches the store, which decides (issue 18)."""

from __future__ import annotations

import pytest

from m3_rag.store import HybridStore


@pytest.fixture()
def spy_store(tiny_encoder, monkeypatch):
    hs = HybridStore(tiny_encoder, show_progress=False)
    hs.add(["cats on a mat", "bread in the oven", "Paris, France"], ids=["a", "b", "c"])
    calls: list[dict] = []
    search, search_encoded = hs.search, hs.search_encoded

    def spy(query, **kw):
        calls.append(kw)
        return search(query, **kw)

    def spy_encoded(query, **kw):
        calls.append(kw)
        return search_encoded(query, **kw)

    monkeypatch.setattr(hs, "search", spy)
    monkeypatch.setattr(hs, "search_encoded", spy_encoded)
    hs.calls = calls
    return hs


def test_langchain_adapters_pass_no_weights(spy_store):
    pytest.importorskip("langchain_core")
    from m3_rag.langchain import M3Retriever, M3VectorStore

    M3Retriever(store=spy_store, k=2).invoke("cats")
    M3VectorStore(store=spy_store).similarity_search("cats", k=2)
    M3VectorStore(store=spy_store).similarity_search("cats", k=2, fusion="rrf")
    assert len(spy_store.calls) == 3
    assert all(c.get("weights") is None for c in spy_store.calls)


def test_llama_index_adapters_pass_no_weights(spy_store):
    pytest.importorskip("llama_index.core")
    from llama_index.core import VectorStoreIndex

    from m3_rag.llama_index import M3Embedding, M3Retriever, M3VectorStore

    M3Retriever(store=spy_store, similarity_top_k=2).retrieve("cats")
    index = VectorStoreIndex.from_vector_store(M3VectorStore(store=spy_store), embed_model=M3Embedding(model=spy_store.encoder))
    index.as_retriever(vector_store_query_mode="hybrid", similarity_top_k=2).retrieve("cats")
    index.as_retriever(vector_store_query_mode="hybrid", similarity_top_k=2,
                       vector_store_kwargs={"modes": ("dense", "sparse", "colbert")}).retrieve("cats")
    assert len(spy_store.calls) == 3
    assert all(c.get("weights") is None for c in spy_store.calls)
    # alpha is the user's explicit choice and is passed on as weights
    index.as_retriever(vector_store_query_mode="hybrid", similarity_top_k=2, alpha=0.7).retrieve("cats")
    assert spy_store.calls[-1]["weights"] == {"dense": 0.7, "sparse": pytest.approx(0.3)}
