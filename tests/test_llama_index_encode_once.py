"""LlamaIndex runs the backbone once per node and once per query: M3Embedding hands the store's heads to
M3VectorStore.add, and the retriever hands the query's ColBERT vectors to M3ColbertRerank."""

from __future__ import annotations

import gc

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import StorageContext, VectorStoreIndex  # noqa: E402
from llama_index.core.llms import MockLLM  # noqa: E402
from llama_index.core.query_engine import RetrieverQueryEngine  # noqa: E402
from llama_index.core.schema import MetadataMode, TextNode  # noqa: E402

from m3_rag import M3Encoder  # noqa: E402
from m3_rag.llama_index import M3ColbertRerank, M3Embedding, M3Retriever, M3VectorStore  # noqa: E402
from m3_rag.llama_index import _shared  # noqa: E402
from m3_rag.store import HybridStore  # noqa: E402

TEXTS = [
    "The cat sat on the warm mat by the fire.",
    "Quantum computers use qubits to run certain algorithms faster.",
    "Paris is the capital of France and home of the Eiffel Tower.",
    "A recipe for bread: flour, water, salt and yeast.",
    "The stock market fell sharply after the bank announcement.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar.",
    "東京は日本の首都です 🍣",
    "",
    "The cat sat on the warm mat by the fire.",  # same text as node 0: both get the same vectors
]


@pytest.fixture()
def encoder(tiny_ckpt):
    """A fresh encoder per test (the hand-over is per encoder object), counting the texts its backbone runs."""
    import torch

    torch.set_num_threads(1)
    enc = M3Encoder.from_pretrained(tiny_ckpt, device="cpu")
    forward = enc.backbone.forward
    enc.rows = []  # type: ignore[attr-defined]

    def counting(*args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        enc.rows.append(int(ids.shape[0]))  # type: ignore[attr-defined]
        return forward(*args, **kwargs)

    enc.backbone.forward = counting
    return enc


def nodes() -> list[TextNode]:
    return [
        TextNode(id_=f"n{i}", text=t, metadata={"topic": f"t{i % 3}", "year": 2000 + i, "secret": "x"},
                 excluded_embed_metadata_keys=["secret"])
        for i, t in enumerate(TEXTS)
    ]


def reference(encoder: M3Encoder, texts: list[str]) -> HybridStore:
    ref = HybridStore(encoder, show_progress=False)
    ref.add(texts, ids=[f"n{i}" for i in range(len(texts))])
    return ref


def assert_same_rows(store: HybridStore, ref: HybridStore) -> None:
    ids, got, texts, _ = store.export(ref.ids())
    rids, want, rtexts, _ = ref.export(ref.ids())
    assert ids == rids and texts == rtexts
    np.testing.assert_allclose(got.dense, want.dense, atol=1e-6)
    for a, b in zip(got.sparse, want.sparse):
        assert a.keys() == b.keys()
        np.testing.assert_allclose([a[t] for t in a], [b[t] for t in a], atol=1e-6)
    for a, b in zip(got.colbert, want.colbert):
        np.testing.assert_allclose(a, b, atol=1e-3)  # stored as fp16


def test_index_build_runs_the_backbone_once_per_node(encoder):
    vector_store = M3VectorStore(store=HybridStore(encoder, show_progress=False))
    ns = nodes()
    VectorStoreIndex(ns, storage_context=StorageContext.from_defaults(vector_store=vector_store),
                     embed_model=M3Embedding(model=encoder))
    assert sum(encoder.rows) == len(ns)  # the embedding's pass served the store: no second encoding
    assert len(_shared.shared_for(encoder).nodes) == 0  # every handed-over row was taken
    # the store holds exactly what HybridStore.add of the same (embedding-view) texts holds
    texts = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in ns]
    assert "secret" not in texts[0] and "topic" in texts[0]
    encoder.rows.clear()
    assert_same_rows(vector_store.store, reference(encoder, texts))


def test_without_a_store_the_embedding_runs_the_dense_head_only(encoder, monkeypatch):
    calls = []
    real = encoder.encode_documents

    def spy(texts, **kw):
        calls.append((kw.get("sparse"), kw.get("colbert")))
        return real(texts, **kw)

    monkeypatch.setattr(encoder, "encode_documents", spy)
    emb = M3Embedding(model=encoder)
    emb.get_text_embedding_batch(["a text", "another"])
    assert calls == [(False, False)]
    assert len(_shared.shared_for(encoder).nodes) == 0
    store = M3VectorStore(model=encoder)
    calls.clear()
    emb.get_text_embedding_batch(["a text"])
    assert calls == [(True, True)]  # the live store holds all three heads
    del store
    gc.collect()
    calls.clear()
    emb.get_text_embedding_batch(["a third"])
    assert calls == [(False, False)]  # the store is gone: nothing to hand over


def test_misses_are_encoded_and_nothing_is_stale(encoder):
    vector_store = M3VectorStore(store=HybridStore(encoder, show_progress=False))
    emb = M3Embedding(model=encoder)
    ns = nodes()
    texts = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in ns]
    emb.get_text_embedding_batch(texts[:4])  # only the first four are handed over
    encoder.rows.clear()
    vector_store.add(ns)
    assert sum(encoder.rows) == len(set(texts[4:]))  # only the misses are encoded (duplicates once)
    encoder.rows.clear()
    assert_same_rows(vector_store.store, reference(encoder, texts))
    # a node whose text changed after embedding is encoded from its new text, not served the old row
    emb.get_text_embedding_batch(["old text"])
    vector_store.add([TextNode(id_="changed", text="new text")])
    got = vector_store.store.export(["changed"])[1].dense[0]
    want = encoder.encode_documents(["new text"]).dense[0]
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_the_cache_is_bounded(encoder, monkeypatch):
    monkeypatch.setattr(_shared, "NODE_CACHE_ENTRIES", 3)
    vector_store = M3VectorStore(store=HybridStore(encoder, show_progress=False))
    shared = _shared.shared_for(encoder)
    ns = nodes()
    VectorStoreIndex(ns, storage_context=StorageContext.from_defaults(vector_store=vector_store),
                     embed_model=M3Embedding(model=encoder, embed_batch_size=2))
    assert len(shared.nodes) == 0
    texts = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in ns]
    # 9 rows embedded, at most 3 kept: the evicted ones were encoded again, the result is the same
    assert sum(encoder.rows) > len(ns)
    encoder.rows.clear()
    assert_same_rows(vector_store.store, reference(encoder, texts))
    # bytes bound: a row larger than the budget is not kept
    shared.nodes.max_bytes = 10
    shared.put_documents(["x"], encoder.encode_documents(["x"]), ("dense", "sparse", "colbert"))
    assert len(shared.nodes) == 0 and shared.nodes.nbytes == 0


# ------------------------------------------------------------------------------------------------ queries
def _build(encoder):
    store = HybridStore(encoder, show_progress=False)
    vector_store = M3VectorStore(store=store)
    ns = nodes()
    index = VectorStoreIndex(ns, storage_context=StorageContext.from_defaults(vector_store=vector_store),
                             embed_model=M3Embedding(model=encoder))
    encoder.rows.clear()
    return store, index


@pytest.mark.parametrize("mode", ["hybrid", "default", "sparse"])
def test_reranker_reuses_the_query_colbert_vectors(encoder, mode):
    store, index = _build(encoder)
    rerank = M3ColbertRerank(model=encoder, top_n=3)
    retriever = index.as_retriever(similarity_top_k=5, vector_store_query_mode=mode)
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM(), node_postprocessors=[rerank])
    response = engine.query("cats on a mat")
    retrieved = retriever.retrieve("cats on a mat")
    encoder.rows.clear()
    engine.query("cats on a mat")
    # one pass for the query (retriever), one per retrieved node (reranker); no second query pass
    assert sum(encoder.rows) == 1 + len(retrieved)
    # the scores are those of a reranker that encodes the query itself
    fresh = encoder.encode_queries(["cats on a mat"], dense=False, sparse=False, colbert=True).colbert[0]
    docs = encoder.encode_documents([n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in retrieved],
                                    dense=False, sparse=False, colbert=True)
    from m3_rag.scoring import colbert_scores

    want = sorted(colbert_scores(fresh, docs.colbert).tolist(), reverse=True)[:3]
    np.testing.assert_allclose([n.score for n in response.source_nodes], want, atol=1e-5)
    # the retrieval itself is unchanged: same hits as without a reranker
    del engine, rerank
    gc.collect()
    assert not _shared.shared_for(encoder).wants_query_colbert
    assert [n.node.node_id for n in retriever.retrieve("cats on a mat")] == [n.node.node_id for n in retrieved]


def test_m3_retriever_hands_over_the_query_and_keeps_its_hits(encoder):
    store, _ = _build(encoder)
    retriever = M3Retriever(store=store, similarity_top_k=4, modes=("dense", "sparse"), explain=True)
    before = [(n.node.node_id, n.score, n.node.metadata.get("m3_explain")) for n in retriever.retrieve("bread")]
    rerank = M3ColbertRerank(model=encoder, top_n=2)
    after = retriever.retrieve("bread")
    assert [(n.node.node_id, n.score, n.node.metadata.get("m3_explain")) for n in after] == before
    encoder.rows.clear()
    rerank.postprocess_nodes(after, query_str="bread")
    assert sum(encoder.rows) == len(after)  # the query's ColBERT vectors came from the retriever's pass
    encoder.rows.clear()
    rerank.postprocess_nodes(after, query_str="a query the retriever never saw")
    assert sum(encoder.rows) == 1 + len(after)
