"""LlamaIndex integration on the tiny checkpoint: embedding, vector store, retriever, reranker, query engine."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Settings, StorageContext, VectorStoreIndex, load_index_from_storage  # noqa: E402
from llama_index.core.llms import MockLLM  # noqa: E402
from llama_index.core.query_engine import RetrieverQueryEngine  # noqa: E402
from llama_index.core.schema import Document, MetadataMode, NodeWithScore, TextNode  # noqa: E402
from llama_index.core.vector_stores.types import (  # noqa: E402
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

from m3_rag.store import HybridStore  # noqa: E402
from m3_rag.fusion import fuse  # noqa: E402
from m3_rag.llama_index import (  # noqa: E402
    SCORES_KEY,
    M3ColbertRerank,
    M3Embedding,
    M3Retriever,
    M3VectorStore,
)

TEXTS = [
    "The cat sat on the warm mat by the fire.",
    "Quantum computers use qubits to run certain algorithms faster.",
    "Paris is the capital of France and home of the Eiffel Tower.",
    "A recipe for bread: flour, water, salt and yeast.",
    "The stock market fell sharply after the bank announcement.",
    "Cats and dogs are the most popular pets in Europe.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar.",
    "The Tour de France is a cycling race held every July.",
    "Neural networks learn representations from large datasets.",
    "Bake the bread at 220 degrees for thirty minutes.",
    "東京は日本の首都です 🍣",
    "",
]
META = [
    {"topic": "pets", "year": 2020, "tags": ["cat", "home"], "lang": "en"},
    {"topic": "tech", "year": 2021, "tags": ["quantum"], "lang": "en"},
    {"topic": "travel", "year": 2019, "tags": ["france", "city"], "lang": "en"},
    {"topic": "food", "year": 2022, "tags": ["bread"], "lang": "en"},
    {"topic": "finance", "year": 2023, "tags": [], "lang": "en"},
    {"topic": "pets", "year": 2021, "tags": ["cat", "dog"], "lang": "en"},
    {"topic": "science", "year": 2018, "tags": ["plants"], "lang": "en"},
    {"topic": "sport", "year": 2019, "tags": ["france", "bike"], "lang": "en"},
    {"topic": "tech", "year": 2024, "tags": ["ml"], "lang": "en"},
    {"topic": "food", "year": 2020, "tags": ["bread", "oven"], "lang": "en"},
    {"topic": "travel", "year": 2024, "tags": ["japan"], "lang": "ja"},
    {"topic": "empty", "year": 2000, "tags": [], "lang": "none", "extra": "only here"},
]
QUERIES = ["cats on a mat", "bread baking in the oven", "France", "東京 🍣", ""]
N = len(TEXTS)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The tiny model runs ~30x faster with one thread on a busy machine (no thread spin-waiting)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _offline_settings():
    """Nothing may reach the network: a mock LLM and no default embedding model."""
    old_llm = Settings._llm
    Settings.llm = MockLLM()
    yield
    Settings._llm = old_llm


def make_nodes() -> list[TextNode]:
    return [
        TextNode(id_=f"n{i}", text=t, metadata=dict(m), excluded_embed_metadata_keys=["tags", "lang", "extra"])
        for i, (t, m) in enumerate(zip(TEXTS, META))
    ]


class EncodeSpy:
    """Records every M3Encoder.encode call (number of texts, heads, thread) on the shared tiny encoder."""

    def __init__(self, encoder, monkeypatch):
        self.calls: list[dict] = []
        real = encoder.encode

        def encode(texts, **kw):
            n = 1 if isinstance(texts, str) else len(texts)
            heads = tuple(h for h in ("dense", "sparse", "colbert") if kw.get(h, True))
            self.calls.append({"n": n, "heads": heads, "thread": threading.get_ident()})
            return real(texts, **kw)

        monkeypatch.setattr(encoder, "encode", encode)

    def reset(self):
        self.calls.clear()

    @property
    def heads(self) -> list[tuple[str, ...]]:
        return [c["heads"] for c in self.calls]


@pytest.fixture
def spy(tiny_encoder, monkeypatch):
    return EncodeSpy(tiny_encoder, monkeypatch)


@pytest.fixture
def embed(tiny_encoder):
    return M3Embedding(model=tiny_encoder)


@pytest.fixture(params=["hybrid", "qdrant-edge", "qdrant-local"])
def hs(request, tiny_encoder, tmp_path):
    """An empty store with the tiny encoder; the tests using it run on each of the three stores."""
    if request.param == "hybrid":
        yield HybridStore(tiny_encoder, show_progress=False)
        return
    if request.param == "qdrant-edge":
        pytest.importorskip("qdrant_edge")
        from m3_rag import QdrantEdgeStore

        store = QdrantEdgeStore(tmp_path / "edge", tiny_encoder, show_progress=False)
    else:
        pytest.importorskip("qdrant_client")
        from m3_rag import QdrantHybridStore

        store = QdrantHybridStore(":memory:", "li", tiny_encoder, show_progress=False)
    yield store
    store.close()


@pytest.fixture
def index(hs, embed):
    vs = M3VectorStore(store=hs)
    ctx = StorageContext.from_defaults(vector_store=vs)
    return VectorStoreIndex(make_nodes(), storage_context=ctx, embed_model=embed)


def ids_of(results) -> list[str]:
    return [r.node.node_id for r in results]


def hit_ids(hits) -> list[str]:
    return [h.id for h in hits]


def assert_same(results, hits):
    assert ids_of(results) == hit_ids(hits)
    np.testing.assert_allclose([r.score for r in results], [h.score for h in hits], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- packaging
def test_lazy_imports_and_missing_extra():
    code = (
        "import importlib, sys\n"
        "import m3_rag\n"
        "assert not [m for m in sys.modules if m.startswith('llama_index')], 'm3_rag imported llama_index'\n"
        "import m3_rag.llama_index as li\n"
        "assert not [m for m in sys.modules if m.startswith('llama_index.core')], 'eager llama_index.core import'\n"
        "assert set(li.__all__) >= {'M3Embedding', 'M3VectorStore', 'M3Retriever', 'M3ColbertRerank'}\n"
        "for m in [m for m in sys.modules if m.startswith(('m3_rag.llama_index', 'llama_index'))]:\n"
        "    del sys.modules[m]\n"
        "sys.modules['llama_index'] = None\n"
        "try:\n"
        "    importlib.import_module('m3_rag.llama_index')\n"
        "except ImportError as e:\n"
        "    assert 'pip install \"m3-rag[llama-index]\"' in str(e), str(e)\n"
        "else:\n"
        "    raise AssertionError('no ImportError without llama-index-core')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_names_resolve():
    import m3_rag.llama_index as li

    assert set(li.__all__) == {
        "M3Embedding", "M3VectorStore", "M3Retriever", "M3ColbertRerank", "to_metadata_predicate", "SCORES_KEY",
        "EXPLAIN_KEY",
    }
    for name in li.__all__:
        assert getattr(li, name) is not None
    with pytest.raises(AttributeError):
        li.NotAThing  # noqa: B018


# ---------------------------------------------------------------------------------------------- M3Embedding
def test_embedding_matches_encoder_and_batches(tiny_encoder, spy):
    emb = M3Embedding(model=tiny_encoder, embed_batch_size=4)
    q = emb.get_query_embedding("cats on a mat")
    ref = tiny_encoder.encode_queries("cats on a mat", sparse=False, colbert=False).dense[0]
    np.testing.assert_allclose(q, ref, rtol=1e-5, atol=1e-6)
    assert len(q) == tiny_encoder.dense_dim
    spy.reset()
    vecs = emb.get_text_embedding_batch(TEXTS)
    assert len(vecs) == N and all(len(v) == tiny_encoder.dense_dim for v in vecs)
    assert len(spy.calls) == 3 and [c["n"] for c in spy.calls] == [4, 4, 4]  # one encoder call per batch
    assert set(spy.heads) == {("dense",)}
    ref_docs = tiny_encoder.encode_documents(TEXTS, sparse=False, colbert=False).dense
    np.testing.assert_allclose(vecs, ref_docs, rtol=1e-4, atol=1e-5)


def test_embedding_is_lazy(tiny_ckpt):
    emb = M3Embedding(model=str(tiny_ckpt), encoder_kwargs={"device": "cpu"})
    assert not emb._lazy.loaded
    assert emb.model_name == str(tiny_ckpt)
    assert len(emb.get_text_embedding("hello")) == 32
    assert emb._lazy.loaded
    rerank = M3ColbertRerank(model=str(tiny_ckpt), top_n=1)
    assert not rerank._lazy.loaded and rerank.model == str(tiny_ckpt)
    nodes = [NodeWithScore(node=TextNode(text=t)) for t in TEXTS[:3]]
    assert len(rerank.postprocess_nodes(nodes, query_str="cat")) == 1 and rerank._lazy.loaded


def test_embedding_bad_model():
    with pytest.raises(TypeError, match="hub id"):
        M3Embedding(model=123)  # type: ignore[arg-type]


async def test_embedding_async_runs_off_the_event_loop(tiny_encoder, spy):
    emb = M3Embedding(model=tiny_encoder)
    loop_thread = threading.get_ident()
    q, docs = await asyncio.gather(emb.aget_query_embedding("hi"), emb.aget_text_embedding_batch(TEXTS[:3]))
    assert len(q) == tiny_encoder.dense_dim and len(docs) == 3
    assert spy.calls and all(c["thread"] != loop_thread for c in spy.calls)
    np.testing.assert_allclose(q, emb.get_query_embedding("hi"), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- construction
def test_vector_store_constructors(tiny_encoder, tiny_ckpt, hs):
    assert M3VectorStore(store=hs).client is hs
    vs = M3VectorStore(model=tiny_encoder, show_progress=False)
    assert vs.store.encoder is tiny_encoder and vs.stores_text and not vs.is_embedding_query
    assert M3VectorStore(model=str(tiny_ckpt)).store.encoder.dense_dim == 32
    with pytest.raises(ValueError, match="exactly one of model= .* or store="):
        M3VectorStore()
    with pytest.raises(ValueError, match="exactly one"):
        M3VectorStore(model=tiny_encoder, store=hs)
    with pytest.raises(TypeError, match="HybridStore"):
        M3VectorStore(store=object())
    with pytest.raises(ValueError, match="only apply with model="):
        M3VectorStore(store=hs, dense_index="hnsw")


def test_retriever_and_reranker_bad_args(hs, tiny_encoder, tmp_path):
    with pytest.raises(ValueError, match="similarity_top_k must be a positive int; got 0"):
        M3Retriever(store=hs, similarity_top_k=0)
    with pytest.raises(ValueError, match="unknown mode 'bm42'"):
        M3Retriever(store=hs, modes=("dense", "bm42"))
    with pytest.raises(ValueError, match="unknown fusion"):
        M3Retriever(store=hs, fusion="max")
    with pytest.raises(ValueError, match="top_n must be a positive int"):
        M3ColbertRerank(model=tiny_encoder, top_n=0)
    from m3_rag import M3Encoder
    from tiny_checkpoint import make_tiny_bert

    no_colbert = M3Encoder.from_pretrained(make_tiny_bert(tmp_path / "nc", with_colbert=False), device="cpu")
    with pytest.raises(ValueError, match="ColBERT head"):
        M3ColbertRerank(model=no_colbert)


# ---------------------------------------------------------------------------------------------- query modes
MODE_CASES = [
    # (retriever kwargs, HybridStore.search kwargs)
    ({}, {"modes": ("dense",)}),
    ({"vector_store_query_mode": "sparse"}, {"modes": ("sparse",)}),
    ({"vector_store_query_mode": "hybrid"}, {"modes": ("dense", "sparse")}),
    ({"vector_store_query_mode": "hybrid", "alpha": 0.7}, {"modes": ("dense", "sparse"), "weights": [0.7, 0.3]}),
    ({"vector_store_query_mode": "hybrid", "alpha": 1.0}, {"modes": ("dense", "sparse"), "weights": [1.0, 0.0]}),
    (
        {"vector_store_query_mode": "hybrid", "vector_store_kwargs": {"fusion": "rrf"}},
        {"modes": ("dense", "sparse"), "fusion": "rrf"},
    ),
    (
        {"vector_store_query_mode": "hybrid", "vector_store_kwargs": {"modes": ("dense", "sparse", "colbert")}},
        {"modes": ("dense", "sparse", "colbert")},
    ),
    (
        {
            "vector_store_query_mode": "hybrid",
            "vector_store_kwargs": {"modes": ("dense", "sparse", "colbert"), "fusion": "dbsf", "candidates": 3,
                                    "weights": {"dense": 1.0, "sparse": 2.0, "colbert": 1.0}},
        },
        {"modes": ("dense", "sparse", "colbert"), "fusion": "dbsf", "candidates": 3,
         "weights": {"dense": 1.0, "sparse": 2.0, "colbert": 1.0}},
    ),
    ({"vector_store_query_mode": "hybrid", "vector_store_kwargs": {"modes": "colbert"}}, {"modes": ("colbert",)}),
]


@pytest.mark.parametrize("li_kwargs, store_kwargs", MODE_CASES)
def test_query_modes_match_hybrid_store(index, hs, li_kwargs, store_kwargs):
    filters = MetadataFilters(filters=[MetadataFilter(key="year", operator=FilterOperator.GTE, value=2019)])
    for k in (3, 50):
        retriever = index.as_retriever(similarity_top_k=k, **li_kwargs)
        filtered = index.as_retriever(similarity_top_k=k, filters=filters, **li_kwargs)
        for q in QUERIES:
            assert_same(retriever.retrieve(q), hs.search(q, k=k, **store_kwargs))
            assert_same(filtered.retrieve(q), hs.search(q, k=k, filter={"year": {"$gte": 2019}}, **store_kwargs))


async def test_async_retrieval_through_the_index(index, hs):
    for mode, modes in (("default", ("dense",)), ("sparse", ("sparse",)), ("hybrid", ("dense", "sparse"))):
        got = await index.as_retriever(similarity_top_k=4, vector_store_query_mode=mode).aretrieve("bread")
        assert_same(got, hs.search("bread", k=4, modes=modes))
    response = await index.as_query_engine(llm=MockLLM(), similarity_top_k=2).aquery("bread")
    assert len(response.source_nodes) == 2


def test_per_mode_scores_exposed(index, hs):
    results = index.as_retriever(
        similarity_top_k=4, vector_store_query_mode="hybrid",
        vector_store_kwargs={"modes": ("dense", "sparse", "colbert"), "explain": True},
    ).retrieve("bread baking")
    hits = hs.search("bread baking", k=4)
    for r, h in zip(results, hits):
        assert set(r.node.metadata[SCORES_KEY]) == {"dense", "sparse", "colbert"}
        for mode in h.scores:
            assert r.node.metadata[SCORES_KEY][mode] == pytest.approx(h.scores[mode], abs=1e-6)
        assert SCORES_KEY not in r.node.get_content(metadata_mode=MetadataMode.LLM)
        assert SCORES_KEY not in r.node.get_content(metadata_mode=MetadataMode.EMBED)  # what the reranker encodes
        assert "m3_explain" in r.node.metadata
    # the node comes back as inserted (its own text and metadata, not the EMBED text)
    original = {n.node_id: n for n in make_nodes()}
    r0 = results[0].node
    assert r0.get_content() == original[r0.node_id].get_content()
    assert r0.metadata["topic"] == original[r0.node_id].metadata["topic"]


def test_hybrid_pool_sizes(index, hs):
    """hybrid_top_k / sparse_top_k: dense pool top-similarity_top_k, sparse pool top-sparse_top_k, fuse the union."""
    q = "cats and bread"
    retriever = index.as_retriever(
        similarity_top_k=3, sparse_top_k=2, hybrid_top_k=4, vector_store_query_mode="hybrid", alpha=0.6
    )
    got = retriever.retrieve(q)
    pool = list(dict.fromkeys(hit_ids(hs.search(q, k=3, modes="dense")) + hit_ids(hs.search(q, k=2, modes="sparse"))))
    dense = {h.id: h.score for h in hs.search(q, k=N, modes="dense")}
    sparse = {h.id: h.score for h in hs.search(q, k=N, modes="sparse")}
    fused = fuse("weighted", {"dense": np.array([dense[i] for i in pool]), "sparse": np.array([sparse.get(i, 0.0) for i in pool])},
                 {"dense": 0.6, "sparse": 0.4})
    order = sorted(range(len(pool)), key=lambda i: -fused[i])[:4]
    assert ids_of(got) == [pool[i] for i in order]
    np.testing.assert_allclose([r.score for r in got], [fused[i] for i in order], rtol=1e-5, atol=1e-6)
    # equal pool sizes are the store's own candidate pools
    same = index.as_retriever(similarity_top_k=3, sparse_top_k=3, hybrid_top_k=2, vector_store_query_mode="hybrid")
    assert_same(same.retrieve(q), hs.search(q, k=2, modes=("dense", "sparse"), candidates=3))
    explained = index.as_retriever(similarity_top_k=3, hybrid_top_k=2, vector_store_query_mode="hybrid",
                                   vector_store_kwargs={"modes": ("dense", "sparse", "colbert"), "explain": True}).retrieve(q)
    assert len(explained) == 2 and all("m3_explain" in r.node.metadata for r in explained)
    unexplained = index.as_retriever(similarity_top_k=3, hybrid_top_k=2, vector_store_query_mode="hybrid",
                                     vector_store_kwargs={"modes": ("dense", "colbert"), "explain": True}).retrieve(q)
    assert not any(r.node.metadata.get("m3_explain") for r in unexplained)  # explain only when sparse is searched
    # sparse mode honours sparse_top_k
    assert len(index.as_retriever(similarity_top_k=5, sparse_top_k=2, vector_store_query_mode="sparse").retrieve(q)) == 2


@pytest.mark.parametrize(
    "li_kwargs, heads",
    [
        ({}, [("dense",)]),
        ({"vector_store_query_mode": "sparse"}, [("sparse",)]),
        ({"vector_store_query_mode": "hybrid"}, [("dense", "sparse")]),
        ({"vector_store_query_mode": "hybrid", "sparse_top_k": 2, "hybrid_top_k": 2}, [("dense", "sparse")]),
        ({"vector_store_query_mode": "hybrid", "vector_store_kwargs": {"modes": "colbert"}}, [("colbert",)]),
        (
            {"vector_store_query_mode": "hybrid", "vector_store_kwargs": {"modes": ("dense", "sparse", "colbert")}},
            [("dense", "sparse", "colbert")],
        ),
    ],
)
def test_query_encoded_once_with_needed_heads(index, spy, li_kwargs, heads):
    retriever = index.as_retriever(similarity_top_k=3, **li_kwargs)
    spy.reset()
    retriever.retrieve("a cat and some bread")
    assert spy.heads == heads  # LlamaIndex's embed_model is not called: the store encodes the query once
    assert spy.calls[0]["n"] == 1


def test_m3_retriever_matches_store(hs, spy):
    hs.add(TEXTS, ids=[f"d{i}" for i in range(N)], metadatas=META)
    for kwargs in [
        {},
        {"modes": "sparse"},
        {"modes": ("dense", "colbert"), "fusion": "rrf"},
        {"modes": ("dense", "sparse", "colbert"), "fusion": "dbsf", "weights": [1, 1, 2], "candidates": 4},
    ]:
        retriever = M3Retriever(store=hs, similarity_top_k=4, **kwargs)
        for q in QUERIES:
            spy.reset()
            got = retriever.retrieve(q)
            assert len(spy.calls) == 1
            assert_same(got, hs.search(q, k=4, **kwargs))
            assert all(isinstance(r, NodeWithScore) and isinstance(r.node, TextNode) for r in got)
            assert all(set(r.node.metadata[SCORES_KEY]) == set(hs.search(q, k=1, **kwargs)[0].scores) for r in got)
    # plain records become TextNodes carrying the stored text and metadata
    top = M3Retriever(store=hs, similarity_top_k=1, node_ids=["d3"]).retrieve("bread")[0]
    assert top.node.node_id == "d3" and top.node.text == TEXTS[3] and top.node.metadata["topic"] == "food"


def test_m3_retriever_filters_and_async(hs):
    hs.add(TEXTS, ids=[f"d{i}" for i in range(N)], metadatas=META)
    li_filter = MetadataFilters(filters=[MetadataFilter(key="topic", operator=FilterOperator.IN, value=["pets", "food"])])
    expected = hit_ids(hs.search("cat", k=10, filter={"topic": {"$in": ["pets", "food"]}}))
    assert len(expected) == 4
    for f in (li_filter, {"topic": {"$in": ["pets", "food"]}}, lambda md: md.get("topic") in ("pets", "food")):
        assert ids_of(M3Retriever(store=hs, similarity_top_k=10, filters=f).retrieve("cat")) == expected
    got = asyncio.run(M3Retriever(store=hs, similarity_top_k=3).aretrieve("cat"))
    assert ids_of(got) == hit_ids(hs.search("cat", k=3))


# ---------------------------------------------------------------------------------------------- filters / ids
def _expected_ids(predicate) -> set[str]:
    return {f"n{i}" for i, m in enumerate(META) if predicate(m)}


FILTER_CASES = [
    (FilterOperator.EQ, "topic", "pets", lambda m: m["topic"] == "pets"),
    (FilterOperator.NE, "topic", "pets", lambda m: m["topic"] != "pets"),
    (FilterOperator.GT, "year", 2020, lambda m: m["year"] > 2020),
    (FilterOperator.GTE, "year", 2020, lambda m: m["year"] >= 2020),
    (FilterOperator.LT, "year", 2020, lambda m: m["year"] < 2020),
    (FilterOperator.LTE, "year", 2020, lambda m: m["year"] <= 2020),
    (FilterOperator.IN, "topic", ["food", "tech"], lambda m: m["topic"] in ("food", "tech")),
    (FilterOperator.NIN, "topic", ["food", "tech"], lambda m: m["topic"] not in ("food", "tech")),
    (FilterOperator.ANY, "tags", ["cat", "france"], lambda m: {"cat", "france"} & set(m["tags"])),
    (FilterOperator.ALL, "tags", ["bread", "oven"], lambda m: {"bread", "oven"} <= set(m["tags"])),
    (FilterOperator.CONTAINS, "tags", "france", lambda m: "france" in m["tags"]),
    (FilterOperator.TEXT_MATCH, "topic", "ec", lambda m: "ec" in m["topic"]),
    (FilterOperator.TEXT_MATCH_INSENSITIVE, "topic", "PET", lambda m: "pet" in m["topic"]),
    (FilterOperator.IS_EMPTY, "tags", None, lambda m: not m["tags"]),
    (FilterOperator.EQ, "extra", "only here", lambda m: m.get("extra") == "only here"),  # key missing elsewhere
    (FilterOperator.NE, "extra", "x", lambda m: True),  # missing key matches NE
    (FilterOperator.EQ, "no_such_key", 1, lambda m: False),
]


@pytest.mark.parametrize("op, key, value, predicate", FILTER_CASES, ids=[f"{c[0].name}-{c[1]}" for c in FILTER_CASES])
@pytest.mark.parametrize("mode", ["default", "sparse", "hybrid"])
def test_each_filter_operator(index, op, key, value, predicate, mode):
    filters = MetadataFilters(filters=[MetadataFilter(key=key, operator=op, value=value)])
    everything = index.as_retriever(similarity_top_k=50, filters=filters, vector_store_query_mode=mode).retrieve("cat")
    if mode == "sparse":  # sparse alone returns only nodes sharing a token with the query
        assert set(ids_of(everything)) <= _expected_ids(predicate) and all(r.score > 0 for r in everything)
        return
    assert set(ids_of(everything)) == _expected_ids(predicate)
    # applied before top-k: k=2 still returns 2 matching nodes when 2 or more match
    top2 = index.as_retriever(similarity_top_k=2, filters=filters, vector_store_query_mode=mode).retrieve("cat")
    assert ids_of(top2) == ids_of(everything)[:2]


EQUIVALENT_FILTERS = [
    (MetadataFilter(key="topic", value="pets"), {"topic": "pets"}),
    (MetadataFilter(key="topic", operator=FilterOperator.NE, value="pets"), {"topic": {"$ne": "pets"}}),
    (MetadataFilter(key="year", operator=FilterOperator.LT, value=2021), {"year": {"$lt": 2021}}),
    (MetadataFilter(key="topic", operator=FilterOperator.NIN, value=["tech"]), {"topic": {"$nin": ["tech"]}}),
    (MetadataFilter(key="tags", operator=FilterOperator.CONTAINS, value="cat"), {"tags": {"$contains": "cat"}}),
    (MetadataFilter(key="extra", operator=FilterOperator.EQ, value="only here"), {"extra": "only here"}),
    (
        MetadataFilters(filters=[MetadataFilter(key="topic", value="food"), MetadataFilter(key="year", value=2024)],
                        condition=FilterCondition.OR),
        {"$or": [{"topic": "food"}, {"year": 2024}]},
    ),
    (
        MetadataFilters(filters=[MetadataFilter(key="topic", value="food")], condition=FilterCondition.NOT),
        {"$not": {"topic": "food"}},
    ),
]


@pytest.mark.parametrize("li_filter, store_filter", EQUIVALENT_FILTERS)
def test_filters_agree_with_store_dict_filters(index, hs, li_filter, store_filter):
    filters = li_filter if isinstance(li_filter, MetadataFilters) else MetadataFilters(filters=[li_filter])
    for mode, modes in (("default", ("dense",)), ("sparse", ("sparse",)), ("hybrid", ("dense", "sparse"))):
        got = index.as_retriever(similarity_top_k=3, filters=filters, vector_store_query_mode=mode).retrieve("cat")
        assert_same(got, hs.search("cat", k=3, modes=modes, filter=store_filter))


def test_nested_filters(index):
    nested = MetadataFilters(
        filters=[
            MetadataFilters(
                filters=[MetadataFilter(key="topic", value="pets"), MetadataFilter(key="topic", value="food")],
                condition=FilterCondition.OR,
            ),
            MetadataFilters(filters=[MetadataFilter(key="year", value=2020)], condition=FilterCondition.NOT),
        ],
        condition=FilterCondition.AND,
    )
    got = index.as_retriever(similarity_top_k=50, filters=nested).retrieve("cat")
    assert set(ids_of(got)) == _expected_ids(lambda m: m["topic"] in ("pets", "food") and m["year"] != 2020)


def test_doc_ids_and_node_ids(hs, embed):
    docs = [Document(text=t, metadata=m, doc_id=f"doc{i}") for i, (t, m) in enumerate(zip(TEXTS[:6], META[:6]))]
    vs = M3VectorStore(store=hs)
    index = VectorStoreIndex.from_documents(docs, storage_context=StorageContext.from_defaults(vector_store=vs),
                                            embed_model=embed)
    by_doc = {n.ref_doc_id: n.node_id for n in vs.get_nodes()}
    got = index.as_retriever(similarity_top_k=10, doc_ids=["doc1", "doc4"]).retrieve("cat")
    assert set(ids_of(got)) == {by_doc["doc1"], by_doc["doc4"]}
    assert len(index.as_retriever(similarity_top_k=10, doc_ids=[]).retrieve("cat")) == 6  # empty: no restriction
    res = vs.query(VectorStoreQuery(query_str="cat", similarity_top_k=10, node_ids=[by_doc["doc2"]]))
    assert res.ids == [by_doc["doc2"]]
    res = vs.query(VectorStoreQuery(query_str="cat", similarity_top_k=10, node_ids=[]))
    assert len(res.ids) == 6


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "mode",
    [VectorStoreQueryMode.TEXT_SEARCH, VectorStoreQueryMode.SVM, VectorStoreQueryMode.SEMANTIC_HYBRID, "bogus"],
)
def test_unsupported_query_mode(index, mode):
    vs = index.vector_store
    with pytest.raises(
        ValueError, match=r"supported: DEFAULT \('default'\), SPARSE \('sparse'\), HYBRID \('hybrid'\), MMR \('mmr'\)"
    ):
        vs.query(VectorStoreQuery(query_str="cat", mode=mode))  # type: ignore[arg-type]


def test_bad_queries(index):
    vs = index.vector_store
    with pytest.raises(ValueError, match="similarity_top_k must be a positive int; got 0"):
        index.as_retriever(similarity_top_k=0).retrieve("cat")
    with pytest.raises(ValueError, match="similarity_top_k must be a positive int; got -1"):
        vs.query(VectorStoreQuery(query_str="cat", similarity_top_k=-1))
    with pytest.raises(ValueError, match="unknown vector_store_kwargs \\['colbert'\\]"):
        vs.query(VectorStoreQuery(query_str="cat", mode="hybrid"), colbert=True)
    with pytest.raises(ValueError, match="only apply to query mode HYBRID"):
        vs.query(VectorStoreQuery(query_str="cat"), modes="colbert")
    with pytest.raises(ValueError, match="alpha must be a number in \\[0, 1\\]"):
        vs.query(VectorStoreQuery(query_str="cat", mode="hybrid", alpha=1.5))
    with pytest.raises(ValueError, match="either alpha or"):
        vs.query(VectorStoreQuery(query_str="cat", mode="hybrid", alpha=0.5), weights=[1, 1])
    with pytest.raises(ValueError, match="pass vector_store_kwargs\\['weights'\\]"):
        vs.query(VectorStoreQuery(query_str="cat", mode="hybrid", alpha=0.5), modes=("dense", "colbert"))
    with pytest.raises(ValueError, match="needs query_str"):
        vs.query(VectorStoreQuery(query_str=None, mode="sparse"))
    with pytest.raises(ValueError, match="needs a list value"):
        vs.query(VectorStoreQuery(query_str="cat", filters=MetadataFilters(
            filters=[MetadataFilter(key="topic", operator=FilterOperator.IN, value="pets")])))


def test_dense_query_embedding_without_text(index, hs, embed):
    vec = embed.get_query_embedding("France")
    res = index.vector_store.query(VectorStoreQuery(query_embedding=vec, similarity_top_k=3))
    assert res.ids == hit_ids(hs.search("France", k=3, modes="dense"))


# ---------------------------------------------------------------------------------------------- MMR
def test_mmr_matches_simple_vector_store(index, hs, embed):
    """With the whole store as the pool, MMR picks and scores are SimpleVectorStore's, for any threshold."""
    simple = VectorStoreIndex(make_nodes(), embed_model=embed)
    for threshold in (0.0, 0.3, 0.5, 0.9, 1.0):
        kw = {"mmr_threshold": threshold}
        want = simple.as_retriever(vector_store_query_mode="mmr", similarity_top_k=5, vector_store_kwargs=kw)
        got = index.as_retriever(
            vector_store_query_mode="mmr", similarity_top_k=5, vector_store_kwargs={**kw, "mmr_prefetch_k": N}
        )
        for q in ("cats on a mat", "bread baking in the oven", "東京 🍣"):
            w, g = want.retrieve(q), got.retrieve(q)
            assert ids_of(g) == ids_of(w), (threshold, q)
            np.testing.assert_allclose([r.score for r in g], [r.score for r in w], rtol=1e-5, atol=1e-6)


def test_mmr_relevance_only_is_dense_order_and_low_threshold_diversifies(index, hs):
    vs = index.vector_store
    dense = hs.search("bread baking in the oven", k=4, modes="dense")
    res = vs.query(VectorStoreQuery(query_str="bread baking in the oven", similarity_top_k=4, mode="mmr",
                                    mmr_threshold=1.0))
    assert res.ids == hit_ids(dense)
    np.testing.assert_allclose(res.similarities, [h.score for h in dense], rtol=1e-5, atol=1e-6)
    # the dense score of each picked node stays available next to the MMR score
    for node, hit in zip(res.nodes, dense):
        assert node.metadata[SCORES_KEY]["dense"] == pytest.approx(hit.score, abs=1e-6)
    diverse = vs.query(VectorStoreQuery(query_str="bread baking in the oven", similarity_top_k=4, mode="mmr"),
                       mmr_threshold=0.0, mmr_prefetch_k=N)
    assert diverse.ids[0] == res.ids[0] and diverse.ids != res.ids


def test_mmr_pool_filters_and_bare_embedding(index, hs, embed):
    vs = index.vector_store
    # the pool is the top mmr_prefetch_k dense hits: a pool of k gives the dense top k (in MMR order)
    res = vs.query(VectorStoreQuery(query_str="France", similarity_top_k=3, mode="mmr"), mmr_prefetch_k=3)
    assert set(res.ids) == set(hit_ids(hs.search("France", k=3, modes="dense")))
    res = vs.query(VectorStoreQuery(query_str="France", similarity_top_k=3, mode="mmr"), mmr_prefetch_factor=1)
    assert set(res.ids) == set(hit_ids(hs.search("France", k=3, modes="dense")))
    pets = MetadataFilters(filters=[MetadataFilter(key="topic", value="pets")])
    res = vs.query(VectorStoreQuery(query_str="cats", similarity_top_k=10, mode="mmr", filters=pets))
    assert sorted(res.ids) == ["n0", "n5"]
    vec = embed.get_query_embedding("France")
    by_vector = vs.query(VectorStoreQuery(query_embedding=vec, similarity_top_k=4, mode="mmr"))
    by_text = vs.query(VectorStoreQuery(query_str="France", similarity_top_k=4, mode="mmr"))
    assert by_vector.ids == by_text.ids
    assert len(vs.query(VectorStoreQuery(query_str="x", similarity_top_k=50, mode="mmr")).ids) == N  # k > corpus


def test_mmr_bad_settings(index):
    vs = index.vector_store
    q = VectorStoreQuery(query_str="cat", mode="mmr")
    for kwargs, match in [
        ({"mmr_threshold": 1.5}, r"mmr_threshold must be a number in \[0, 1\]"),
        ({"mmr_threshold": "0.5"}, r"mmr_threshold must be a number"),
        ({"mmr_prefetch_k": 0}, r"mmr_prefetch_k'\] must be a positive int"),
        ({"mmr_prefetch_factor": 0.5}, r"mmr_prefetch_factor must be a number >= 1"),
        ({"mmr_prefetch_k": 5, "mmr_prefetch_factor": 2}, "either mmr_prefetch_k or mmr_prefetch_factor"),
        ({"modes": "colbert"}, "only apply to query mode HYBRID"),
    ]:
        with pytest.raises(ValueError, match=match):
            vs.query(q, **kwargs)
    with pytest.raises(ValueError, match="mmr_threshold given twice"):
        vs.query(VectorStoreQuery(query_str="cat", mode="mmr", mmr_threshold=0.2), mmr_threshold=0.7)
    with pytest.raises(ValueError, match="only apply to query mode MMR"):
        vs.query(VectorStoreQuery(query_str="cat"), mmr_threshold=0.5)
    with pytest.raises(ValueError, match="only apply to query mode MMR"):
        vs.query(VectorStoreQuery(query_str="cat", mode="hybrid", mmr_threshold=0.5))


def test_empty_index(tiny_encoder, embed):
    vs = M3VectorStore(model=tiny_encoder, show_progress=False)
    index = VectorStoreIndex.from_vector_store(vs, embed_model=embed)
    for mode in ("default", "sparse", "hybrid", "mmr"):
        assert index.as_retriever(vector_store_query_mode=mode).retrieve("anything") == []
    with pytest.raises(ValueError, match="similarity_top_k"):
        index.as_retriever(similarity_top_k=0).retrieve("anything")
    with pytest.raises(ValueError, match="unknown fusion 'max'"):  # settings are checked even when empty
        index.as_retriever(vector_store_query_mode="hybrid", vector_store_kwargs={"fusion": "max"}).retrieve("x")
    with pytest.raises(ValueError, match="candidates"):
        index.as_retriever(vector_store_query_mode="hybrid", vector_store_kwargs={"candidates": 0}).retrieve("x")
    response = index.as_query_engine(llm=MockLLM()).query("anything")
    assert response.source_nodes == []
    assert vs.get_nodes() == []


# ---------------------------------------------------------------------------------------------- CRUD
def test_insert_and_delete_through_the_index(hs, embed):
    vs = M3VectorStore(store=hs)
    index = VectorStoreIndex.from_vector_store(vs, embed_model=embed)
    index.insert(Document(text="Bread and butter for breakfast.", doc_id="bread-doc", metadata={"topic": "food"}))
    index.insert(Document(text="A grey cat sleeps all day.", doc_id="cat-doc", metadata={"topic": "pets"}))
    index.insert_nodes([TextNode(id_="loose", text="Trains run on rails.")])
    assert len(hs) == 3
    got = index.as_retriever(similarity_top_k=5).retrieve("cat")
    assert {r.node.ref_doc_id for r in got} == {"bread-doc", "cat-doc", None}
    # what the store holds is exactly what HybridStore.add of the EMBED texts holds
    twin = HybridStore(hs.encoder, show_progress=False)
    nodes = vs.get_nodes()
    twin.add([n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes], ids=[n.node_id for n in nodes])
    for mode in ("dense", "sparse", "colbert"):
        assert hit_ids(twin.search("cat", k=3, modes=mode)) == hit_ids(hs.search("cat", k=3, modes=mode))
    index.delete_ref_doc("cat-doc")
    assert len(hs) == 2
    assert "cat-doc" not in {r.node.ref_doc_id for r in index.as_retriever(similarity_top_k=5).retrieve("cat")}
    index.delete_nodes(["loose"])
    assert [n.ref_doc_id for n in vs.get_nodes()] == ["bread-doc"]
    index.delete_ref_doc("no-such-doc")  # unknown ids are ignored
    assert len(hs) == 1


def test_store_crud_and_async(tiny_encoder):
    vs = M3VectorStore(model=tiny_encoder, show_progress=False)
    nodes = make_nodes()
    assert vs.add(nodes) == [n.node_id for n in nodes]
    assert [n.node_id for n in vs.get_nodes(["n3", "n1", "zz"])] == ["n3", "n1"]
    pets = MetadataFilters(filters=[MetadataFilter(key="topic", value="pets")])
    assert [n.node_id for n in vs.get_nodes(filters=pets)] == ["n0", "n5"]
    assert vs.get_nodes(["n1"], filters=pets) == []
    got = vs.get_nodes(["n2"])[0]
    assert got.get_content() == TEXTS[2] and got.metadata == META[2]
    vs.delete_nodes(filters=pets)
    assert len(vs.store) == N - 2
    vs.delete_nodes(["n1"], filters=pets)  # n1 is not a pet: kept
    assert "n1" in vs.store
    vs.delete_nodes([])
    assert len(vs.store) == N - 2
    with pytest.raises(ValueError, match="clear"):
        vs.delete_nodes()
    # a huge text is truncated by the encoder, not rejected
    huge = TextNode(id_="huge", text="lorem ipsum dolor " * 4000, metadata={"topic": "huge"})
    vs.add([huge])
    res = vs.query(VectorStoreQuery(query_str="lorem ipsum", similarity_top_k=1, mode="hybrid",
                                    filters=MetadataFilters(filters=[MetadataFilter(key="topic", value="huge")])))
    assert res.ids == ["huge"] and res.nodes[0].get_content() == huge.text
    vs.delete_nodes(["huge"])
    # upsert keeps one copy
    vs.add([TextNode(id_="n1", text="replaced text", metadata={"topic": "new"})])
    assert vs.get_nodes(["n1"])[0].get_content() == "replaced text" and len(vs.store) == N - 2

    async def run():
        await vs.async_add([TextNode(id_="a1", text="async node", metadata={"topic": "async"})])
        assert [n.node_id for n in await vs.aget_nodes(["a1"])] == ["a1"]
        res = await vs.aquery(VectorStoreQuery(query_str="async node", similarity_top_k=1, mode="sparse"))
        assert res.ids == ["a1"]
        await vs.adelete_nodes(["a1"])
        assert await vs.aget_nodes(["a1"]) == []
        await vs.aclear()

    asyncio.run(run())
    assert len(vs.store) == 0


# ---------------------------------------------------------------------------------------------- persistence
def test_persist_round_trip_through_storage_context(index, hs, tiny_encoder, embed, tmp_path):
    index.storage_context.persist(persist_dir=str(tmp_path))
    saved = tmp_path / "default__vector_store.json"
    assert saved.is_dir()
    assert not [p for p in saved.rglob("*") if p.suffix in (".pkl", ".pickle")]
    vs = M3VectorStore.from_persist_dir(str(tmp_path), model=tiny_encoder)
    ctx = StorageContext.from_defaults(persist_dir=str(tmp_path), vector_store=vs)
    loaded = load_index_from_storage(ctx, embed_model=embed)
    for mode in ("default", "sparse", "hybrid"):
        for q in QUERIES[:3]:
            a = index.as_retriever(similarity_top_k=5, vector_store_query_mode=mode).retrieve(q)
            b = loaded.as_retriever(similarity_top_k=5, vector_store_query_mode=mode).retrieve(q)
            assert ids_of(a) == ids_of(b)
            np.testing.assert_allclose([r.score for r in a], [r.score for r in b], rtol=1e-3, atol=1e-3)
    assert [n.get_content() for n in vs.get_nodes()] == [n.get_content() for n in index.vector_store.get_nodes()]


def test_persist_path_round_trip_and_errors(tiny_encoder, tmp_path):
    vs = M3VectorStore(model=tiny_encoder, show_progress=False)
    vs.add(make_nodes())
    path = tmp_path / "store"
    vs.persist(str(path))
    back = M3VectorStore.from_persist_path(str(path), model=tiny_encoder)
    q = VectorStoreQuery(query_str="bread", similarity_top_k=4, mode="hybrid")
    assert back.query(q).ids == vs.query(q).ids
    with pytest.raises(ValueError, match="needs model="):
        M3VectorStore.from_persist_path(str(path))
    with pytest.raises(ValueError, match="fingerprint"):
        from m3_rag import M3Encoder
        from tiny_checkpoint import make_tiny_bert

        other = M3Encoder.from_pretrained(make_tiny_bert(tmp_path / "other", seed=1), device="cpu")
        M3VectorStore.from_persist_path(str(path), model=other)
    with pytest.raises(ValueError, match="no M3VectorStore saved"):
        M3VectorStore.from_persist_path(str(tmp_path / "missing"), model=tiny_encoder)
    import fsspec

    with pytest.raises(ValueError, match="local filesystem only"):
        vs.persist(str(path), fs=fsspec.filesystem("memory"))


# ---------------------------------------------------------------------------------------------- reranker / engine
def test_colbert_rerank_after_any_retriever(tiny_encoder, embed, spy):
    """Rerank the output of LlamaIndex's own SimpleVectorStore retriever (not ours)."""
    plain = VectorStoreIndex(make_nodes(), embed_model=embed)  # SimpleVectorStore
    candidates = plain.as_retriever(similarity_top_k=6).retrieve("bread in the oven")
    rerank = M3ColbertRerank(model=tiny_encoder, top_n=3)
    spy.reset()
    out = rerank.postprocess_nodes(candidates, query_str="bread in the oven")
    assert spy.heads == [("colbert",), ("colbert",)]  # query once, the node texts once
    q = tiny_encoder.encode_queries("bread in the oven", dense=False, sparse=False).colbert[0]
    texts = [c.node.get_content(metadata_mode=MetadataMode.EMBED) for c in candidates]
    d = tiny_encoder.encode_documents(texts, dense=False, sparse=False).colbert
    from m3_rag import colbert_score

    ref = sorted(((colbert_score(q, d[i]), candidates[i].node.node_id) for i in range(len(candidates))),
                 key=lambda t: -t[0])[:3]
    assert ids_of(out) == [i for _, i in ref]
    np.testing.assert_allclose([o.score for o in out], [s for s, _ in ref], rtol=1e-5, atol=1e-6)
    assert rerank.postprocess_nodes([], query_str="x") == []
    with pytest.raises(ValueError, match="needs the query"):
        rerank.postprocess_nodes(candidates)
    assert len(asyncio.run(rerank.apostprocess_nodes(candidates, query_str="bread"))) == 3


def test_query_engine_end_to_end(index, hs, tiny_encoder):
    rerank = M3ColbertRerank(model=tiny_encoder, top_n=2)
    retriever = index.as_retriever(
        similarity_top_k=5, vector_store_query_mode="hybrid", alpha=0.5,
        filters=MetadataFilters(filters=[MetadataFilter(key="lang", value="en")]),
    )
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM(), node_postprocessors=[rerank])
    response = engine.query("bread baking")
    assert isinstance(response.response, str)
    first_stage = hs.search("bread baking", k=5, modes=("dense", "sparse"), weights=[0.5, 0.5], filter={"lang": "en"})
    direct = rerank.postprocess_nodes(retriever.retrieve("bread baking"), query_str="bread baking")
    assert {h.id for h in first_stage} >= set(ids_of(response.source_nodes))
    assert ids_of(response.source_nodes) == ids_of(direct) and len(direct) == 2
    # and directly over a HybridStore with M3Retriever, async
    engine2 = RetrieverQueryEngine.from_args(M3Retriever(store=hs, similarity_top_k=4), llm=MockLLM(),
                                             node_postprocessors=[rerank])
    response2 = asyncio.run(engine2.aquery("cats"))
    assert len(response2.source_nodes) == 2
