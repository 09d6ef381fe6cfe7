"""The bm25 mode through the LangChain and LlamaIndex adapters (they stay thin: same hits as the store)."""

from __future__ import annotations

import pytest

pytest.importorskip("bm25s")
pytest.importorskip("Stemmer")

from m3_rag import HybridStore  # noqa: E402

TEXTS = ["apple orchards in autumn", "banana bread recipe", "the apple cider press", "cherry blossoms in spring",
         "bananas and apples together"]


def test_langchain_accepts_bm25(tiny_encoder):
    pytest.importorskip("langchain_core")
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from m3_rag.langchain import M3Embeddings, M3Retriever, M3VectorStore

    # any LangChain embedding: dense + bm25 (the EnsembleRetriever(BM25Retriever, dense) use case in one store)
    vs = M3VectorStore(embedding=DeterministicFakeEmbedding(size=16), modes=["dense", "bm25"], fusion="rrf")
    vs.add_texts(TEXTS, ids=[str(i) for i in range(5)])
    assert vs.store.modes == ("dense", "bm25")
    docs = vs.similarity_search("apple", k=3, modes=["bm25"])
    assert [d.id for d in docs] == [h.id for h in vs.store.search_encoded(
        vs.store.export(["0"])[1], query_text="apple", modes="bm25", k=3)]
    assert {d.id for d in docs} == {"0", "2", "4"}
    assert len(vs.similarity_search("apple", k=5)) == 5  # the default modes: dense + bm25, RRF
    # M3: the store made on first use holds every head and bm25
    m3 = M3VectorStore(embedding=M3Embeddings(model=tiny_encoder), modes=["dense", "sparse", "bm25"])
    m3.add_texts(TEXTS, ids=[str(i) for i in range(5)])
    assert m3.store.modes == ("dense", "sparse", "colbert", "bm25")
    got = [(d.id, s) for d, s in m3.similarity_search_with_score("apple pie", k=4)]
    want = [(h.id, h.score) for h in m3.store.search("apple pie", k=4, modes=("dense", "sparse", "bm25"))]
    assert got == want
    r = M3Retriever(store=m3.store, modes=["bm25"], k=2)
    assert [d.id for d in r.invoke("cider")] == ["2"]


@pytest.mark.parametrize("sparse_mode", ["sparse", "bm25", "both"])
def test_llama_index_sparse_mode(tiny_encoder, sparse_mode: str):
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.types import VectorStoreQuery, VectorStoreQueryMode

    from m3_rag.llama_index import M3VectorStore

    vs = M3VectorStore(model=tiny_encoder, sparse_mode=sparse_mode, show_progress=False)
    assert ("bm25" in vs.client.modes) == (sparse_mode != "sparse")
    vs.add([TextNode(text=t, id_=str(i)) for i, t in enumerate(TEXTS)])
    res = vs.query(VectorStoreQuery(query_str="apple", similarity_top_k=5, mode=VectorStoreQueryMode.SPARSE))
    store: HybridStore = vs.client
    modes = {"sparse": ("sparse",), "bm25": ("bm25",), "both": ("sparse", "bm25")}[sparse_mode]
    want = store.search("apple", k=5, modes=modes, **({"fusion": "rrf"} if len(modes) > 1 else {}))
    assert res.ids == [h.id for h in want] and res.similarities == [h.score for h in want]
    if sparse_mode == "bm25":
        assert set(res.ids) == {"0", "2", "4"}
    hybrid = vs.query(VectorStoreQuery(query_str="apple", similarity_top_k=3, mode=VectorStoreQueryMode.HYBRID,
                                       alpha=0.5 if sparse_mode != "both" else None))
    lexical = modes
    want = store.search("apple", k=3, modes=("dense",) + lexical,
                        **({"weights": {"dense": 0.5, lexical[0]: 0.5}} if sparse_mode != "both" else {}))
    assert hybrid.ids == [h.id for h in want]
    with pytest.raises(ValueError, match="sparse_mode"):
        M3VectorStore(model=tiny_encoder, sparse_mode="splade")
