"""M3VectorStore: the langchain-tests vector store suite (fake and M3 embeddings), hybrid search, MMR, persistence."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.vectorstores import InMemoryVectorStore, VectorStore
from langchain_tests.integration_tests import VectorStoreIntegrationTests
from langchain_helpers import IDS, METADATAS, QUERIES, TEXTS, heads, one_torch_thread, spy_encode  # noqa: F401

from m3_rag.langchain import M3Embeddings, M3VectorStore
from m3_rag.langchain.vectorstore import m3_relevance
from m3_rag import HybridStore


# ---------------------------------------------------------------------------- langchain-tests standard suites
class TestM3VectorStoreFakeEmbeddingsStandard(VectorStoreIntegrationTests):
    """The suite as intended: the store around the suite's DeterministicFakeEmbedding (dense only)."""

    @pytest.fixture()
    def vectorstore(self) -> Iterator[VectorStore]:  # type: ignore[override]
        store = M3VectorStore(embedding=self.get_embeddings())
        try:
            yield store
        finally:
            store.delete()


class TestM3VectorStoreM3EmbeddingsStandard(VectorStoreIntegrationTests):
    """The same suite through the hybrid path: M3Embeddings on the tiny checkpoint, all three modes."""

    @pytest.fixture()
    def vectorstore(self, tiny_encoder) -> Iterator[VectorStore]:  # type: ignore[override]
        store = M3VectorStore(embedding=M3Embeddings(model=tiny_encoder))
        try:
            yield store
        finally:
            store.delete()


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", params=["hybrid", "qdrant-edge", "qdrant-local"])
def m3_vs(request, tiny_encoder, tmp_path_factory) -> Any:
    """An M3VectorStore over each of the three stores: the tests using it run on all of them."""
    store = None
    if request.param == "qdrant-edge":
        pytest.importorskip("qdrant_edge")
        from m3_rag import QdrantEdgeStore

        store = QdrantEdgeStore(tmp_path_factory.mktemp("lc-vs-edge") / "store", tiny_encoder, show_progress=False)
    elif request.param == "qdrant-local":
        pytest.importorskip("qdrant_client")
        from m3_rag import QdrantHybridStore

        store = QdrantHybridStore(":memory:", "lc", tiny_encoder, show_progress=False)
    vs = M3VectorStore(embedding=M3Embeddings(model=tiny_encoder), store=store)
    vs.add_texts(TEXTS, METADATAS, ids=IDS)
    yield vs
    if hasattr(store, "close"):
        store.close()


@pytest.fixture()
def fake() -> DeterministicFakeEmbedding:
    return DeterministicFakeEmbedding(size=16)


# ---------------------------------------------------------------------------- hybrid identity with the store
CONFIGS: list[dict[str, Any]] = [
    {},
    {"modes": ["sparse"]},
    {"modes": ["colbert"], "k": 3},
    {"modes": ["dense", "sparse"], "fusion": "rrf"},
    {"fusion": "dbsf", "weights": [1.0, 0.5, 2.0]},
    {"filter": {"topic": {"$in": ["cs", "food"]}}, "candidates": 3},
    {"k": 40},
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "defaults")
def test_search_and_as_retriever_match_hybridstore_search(m3_vs: M3VectorStore, cfg: dict[str, Any]) -> None:
    query = QUERIES[1]
    k = cfg.get("k", 4)
    rest = {key: v for key, v in cfg.items() if key != "k"}
    expected = m3_vs.store.search(query, **{"k": k, "modes": m3_vs.store.modes, **rest})
    pairs = m3_vs.similarity_search_with_score(query, k=k, **rest)
    assert [(d.id, s) for d, s in pairs] == [(h.id, h.score) for h in expected]
    assert [d.id for d in m3_vs.similarity_search(query, k=k, **rest)] == [h.id for h in expected]
    retriever = m3_vs.as_retriever(search_kwargs={"k": k, **rest})
    assert [d.id for d in retriever.invoke(query)] == [h.id for h in expected]
    # per-call overrides through the standard VectorStoreRetriever
    plain = m3_vs.as_retriever()
    assert [d.id for d in plain.invoke(query, k=k, **rest)] == [h.id for h in expected]


async def test_async_search_matches(m3_vs: M3VectorStore) -> None:
    for cfg in CONFIGS[:5]:
        sync = m3_vs.similarity_search(QUERIES[0], **cfg)
        assert await m3_vs.asimilarity_search(QUERIES[0], **cfg) == sync
        assert await m3_vs.as_retriever(search_kwargs=cfg).ainvoke(QUERIES[0]) == sync


def test_documents_have_ids_and_unchanged_metadata(m3_vs: M3VectorStore) -> None:
    docs = m3_vs.similarity_search("capital", k=len(IDS))
    expected = dict(zip(IDS, zip(TEXTS, METADATAS)))
    assert sorted(d.id for d in docs) == sorted(IDS)
    for d in docs:
        assert (d.page_content, d.metadata) == expected[d.id]


@pytest.mark.parametrize(
    "call, expected",
    [
        (lambda vs: vs.similarity_search(QUERIES[0]), ("dense", "sparse", "colbert")),
        (lambda vs: vs.similarity_search(QUERIES[0], modes=["sparse"]), ("sparse",)),
        (lambda vs: vs.similarity_search_with_relevance_scores(QUERIES[0], modes=["dense", "colbert"]), ("dense", "colbert")),
        (lambda vs: vs.as_retriever(search_kwargs={"modes": "colbert"}).invoke(QUERIES[0]), ("colbert",)),
        (lambda vs: vs.max_marginal_relevance_search(QUERIES[0], k=2, fetch_k=5), ("dense",)),
    ],
    ids=["hybrid", "sparse", "relevance", "retriever", "mmr"],
)
def test_query_encoded_once_with_only_the_needed_heads(m3_vs: M3VectorStore, tiny_encoder, call, expected) -> None:
    with spy_encode(tiny_encoder) as calls:
        call(m3_vs)
    assert [(c["n"], heads(c)) for c in calls] == [(1, expected)]


def test_documents_encoded_once_per_add(tiny_encoder) -> None:
    vs = M3VectorStore(embedding=M3Embeddings(model=tiny_encoder))
    with spy_encode(tiny_encoder) as calls:
        vs.add_texts(["a", "b", "c"])
    assert [(c["n"], heads(c)) for c in calls] == [(3, ("dense", "sparse", "colbert"))]


# ---------------------------------------------------------------------------- dense-only (any LangChain Embeddings)
def test_generic_embeddings_match_inmemoryvectorstore(fake: DeterministicFakeEmbedding) -> None:
    ours = M3VectorStore.from_texts(TEXTS, fake, METADATAS, ids=IDS)
    ref = InMemoryVectorStore.from_texts(TEXTS, fake, METADATAS, ids=IDS)
    for q in QUERIES:
        got = ours.similarity_search_with_score(q, k=5)
        want = ref.similarity_search_with_score(q, k=5)
        assert [d.id for d, _ in got] == [d.id for d, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-5, atol=1e-6)
        assert [d.id for d in ours.max_marginal_relevance_search(q, k=3, fetch_k=6, lambda_mult=0.3)] == [
            d.id for d in ref.max_marginal_relevance_search(q, k=3, fetch_k=6, lambda_mult=0.3)
        ]
    vec = fake.embed_query(QUERIES[0])
    assert [d.id for d in ours.similarity_search_by_vector(vec, k=3)] == [
        d.id for d in ref.similarity_search_by_vector(vec, k=3)
    ]


def test_dense_only_store_refuses_sparse_and_colbert(fake: DeterministicFakeEmbedding) -> None:
    vs = M3VectorStore.from_texts(TEXTS, fake, ids=IDS)
    for modes in (["sparse"], "colbert", ["dense", "sparse"]):
        with pytest.raises(ValueError, match="dense vectors only.*M3Embeddings"):
            vs.similarity_search("q", modes=modes)
        with pytest.raises(ValueError, match="dense vectors only"):
            vs.as_retriever(search_kwargs={"modes": modes}).invoke("q")
    with pytest.raises(ValueError, match="dense vectors only"):
        M3VectorStore(embedding=fake, modes=["dense", "colbert"])
    assert len(vs.similarity_search("q", modes=["dense"], k=2)) == 2


def test_embeddings_property_and_store_checks(tiny_encoder, fake) -> None:
    emb = M3Embeddings(model=tiny_encoder)
    assert M3VectorStore(embedding=emb).embeddings is emb
    with pytest.raises(TypeError, match="Embeddings"):
        M3VectorStore(embedding="BAAI/bge-m3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not M3Embeddings"):
        M3VectorStore(embedding=fake, store=HybridStore(encoder=tiny_encoder))
    with pytest.raises(ValueError, match="has no encoder"):
        M3VectorStore(embedding=emb, store=HybridStore())


def test_construction_does_not_load_the_model(tiny_ckpt: Path) -> None:
    emb = M3Embeddings(model=tiny_ckpt, device="cpu")
    vs = M3VectorStore(embedding=emb, modes=["dense", "sparse"], fusion="rrf")
    assert not emb.is_loaded
    assert vs.as_retriever(search_kwargs={"k": 1}).invoke("x") == []  # empty: nothing to load for
    vs.add_texts(["hello world"], ids=["h"])
    assert emb.is_loaded and [d.id for d in vs.similarity_search("hello")] == ["h"]


# ---------------------------------------------------------------------------- writing
def test_upsert_by_ids_and_document_ids(tiny_encoder) -> None:
    vs = M3VectorStore(embedding=M3Embeddings(model=tiny_encoder))
    assert vs.add_documents([Document("one", id="a", metadata={"v": 1}), Document("two")])[0] == "a"
    assert len(vs.store) == 2
    vs.add_documents([Document("one, edited", id="a", metadata={"v": 2})])
    vs.add_texts(["three"], [{"v": 3}], ids=["c"])
    vs.add_texts(["three again"], [{"v": 4}], ids=["c"])
    assert len(vs.store) == 3
    assert vs.get_by_ids(["c", "a", "missing"]) == [
        Document("three again", id="c", metadata={"v": 4}),
        Document("one, edited", id="a", metadata={"v": 2}),
    ]
    ids = vs.add_documents([Document("x", id="ignored")], ids=["explicit"])  # ids= wins over Document.id
    assert ids == ["explicit"] and vs.get_by_ids(["ignored"]) == []
    assert vs.add_texts([]) == []


def test_delete(fake) -> None:
    vs = M3VectorStore.from_texts(TEXTS, fake, ids=IDS)
    assert vs.delete(["paris", "nope"]) is True
    assert "paris" not in {d.id for d in vs.similarity_search("Paris", k=20)}
    vs.delete()  # no ids: delete everything
    assert len(vs.store) == 0 and vs.similarity_search("x") == []


def test_from_documents_keeps_ids(fake) -> None:
    docs = [Document(t, id=i, metadata=m) for t, i, m in zip(TEXTS, IDS, METADATAS)]
    vs = M3VectorStore.from_documents(docs, fake, fusion="rrf")
    assert vs.fusion == "rrf"
    assert sorted(d.id for d in vs.get_by_ids(IDS)) == sorted(IDS)


async def test_async_writing_and_mmr(tiny_encoder) -> None:
    vs = M3VectorStore(embedding=M3Embeddings(model=tiny_encoder))
    ids = await vs.aadd_texts(TEXTS, METADATAS, ids=IDS)
    assert ids == IDS
    mmr = await vs.amax_marginal_relevance_search(QUERIES[0], k=3, fetch_k=6)
    assert [d.id for d in mmr] == [d.id for d in vs.max_marginal_relevance_search(QUERIES[0], k=3, fetch_k=6)]
    assert await vs.aget_by_ids(["rust"]) == vs.get_by_ids(["rust"])
    await vs.adelete(["rust"])
    assert vs.get_by_ids(["rust"]) == []


# ---------------------------------------------------------------------------- MMR and relevance
def test_mmr_on_dense_vectors(m3_vs: M3VectorStore) -> None:
    query = QUERIES[0]
    dense_order = [h.id for h in m3_vs.store.search(query, k=6, modes="dense")]
    relevance_only = m3_vs.max_marginal_relevance_search(query, k=4, fetch_k=6, lambda_mult=1.0)
    assert [d.id for d in relevance_only] == dense_order[:4]
    diverse = m3_vs.max_marginal_relevance_search(query, k=4, fetch_k=6, lambda_mult=0.0)
    assert len(diverse) == 4 and diverse[0].id == dense_order[0] and {d.id for d in diverse} <= set(dense_order)
    cs_only = m3_vs.max_marginal_relevance_search(query, k=3, filter={"topic": "cs"})
    assert {d.metadata["topic"] for d in cs_only} == {"cs"}
    with pytest.raises(ValueError, match="lambda_mult"):
        m3_vs.max_marginal_relevance_search(query, lambda_mult=1.5)


def test_relevance_scores(m3_vs: M3VectorStore) -> None:
    query = QUERIES[2]
    for cfg in ({}, {"fusion": "rrf"}, {"fusion": "dbsf"}, {"modes": ["sparse"]}, {"fusion": "rrf", "weights": [2, 1, 1]}):
        pairs = m3_vs.similarity_search_with_relevance_scores(query, k=5, **cfg)
        scored = m3_vs.similarity_search_with_score(query, k=5, **cfg)
        assert [d.id for d, _ in pairs] == [d.id for d, _ in scored]
        assert all(0.0 <= r <= 1.0 for _, r in pairs)
        rel = [r for _, r in pairs]
        assert rel == sorted(rel, reverse=True)
    # weighted: the fused similarity itself, clipped; rrf: divided by its maximum sum(w) / 61
    assert m3_relevance(0.42) == 0.42 and m3_relevance(1.3) == 1.0 and m3_relevance(-0.2) == 0.0
    assert m3_relevance(3 / 61, fusion="rrf") == pytest.approx(1.0)
    assert m3_relevance(1 / 61, fusion="rrf", modes=["dense"], weights=[2.0]) == pytest.approx(0.5)
    assert m3_relevance(1.5, fusion="dbsf", modes=["dense", "sparse"]) == pytest.approx(0.75)
    # a document's own text is (nearly) a perfect match
    own = m3_vs.similarity_search_with_relevance_scores(TEXTS[4], k=1)[0]
    assert own[0].id == IDS[4] and own[1] > 0.9
    threshold = m3_vs.as_retriever(search_type="similarity_score_threshold", search_kwargs={"score_threshold": 0.9})
    assert IDS[4] in [d.id for d in threshold.invoke(TEXTS[4])]


async def test_async_relevance_scores_use_the_per_call_fusion(m3_vs: M3VectorStore) -> None:
    for cfg in ({}, {"fusion": "rrf"}, {"fusion": "dbsf", "modes": ["dense", "sparse"]}):
        sync = m3_vs.similarity_search_with_relevance_scores(QUERIES[0], k=3, **cfg)
        assert await m3_vs.asimilarity_search_with_relevance_scores(QUERIES[0], k=3, **cfg) == sync


def test_custom_relevance_fn(fake) -> None:
    vs = M3VectorStore.from_texts(TEXTS, fake, ids=IDS, relevance_score_fn=lambda s: (s + 1) / 2)
    pairs = vs.similarity_search_with_relevance_scores(QUERIES[0], k=3)
    scores = vs.similarity_search_with_score(QUERIES[0], k=3)
    assert [r for _, r in pairs] == pytest.approx([(s + 1) / 2 for _, s in scores])


# ---------------------------------------------------------------------------- persistence
def test_save_local_load_local_round_trip(m3_vs: M3VectorStore, tiny_encoder, tmp_path: Path) -> None:
    m3_vs.save_local(tmp_path / "idx")
    loaded = M3VectorStore.load_local(tmp_path / "idx", M3Embeddings(model=tiny_encoder), fusion="rrf")
    assert loaded.fusion == "rrf" and len(loaded.store) == len(IDS)
    for cfg in CONFIGS[:5]:
        got = loaded.similarity_search_with_score(QUERIES[3], **cfg)
        want = m3_vs.similarity_search_with_score(QUERIES[3], **{"fusion": "rrf", **cfg})  # loaded default: rrf
        assert [d for d, _ in got] == [d for d, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-6)
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.pickle"))


def test_load_local_checks_the_embedding(m3_vs: M3VectorStore, fake, tmp_path: Path) -> None:
    from tiny_checkpoint import make_tiny_bert

    from m3_rag import M3Encoder

    m3_vs.save_local(tmp_path / "m3")
    with pytest.raises(ValueError, match="not M3Embeddings"):
        M3VectorStore.load_local(tmp_path / "m3", fake)
    other = M3Encoder.from_pretrained(make_tiny_bert(tmp_path / "other", seed=1), device="cpu")
    with pytest.raises(ValueError, match="fingerprint"):
        M3VectorStore.load_local(tmp_path / "m3", M3Embeddings(model=other))
    dense_only = M3VectorStore.from_texts(TEXTS, fake, ids=IDS)
    dense_only.save_local(tmp_path / "fake")
    again = M3VectorStore.load_local(tmp_path / "fake", fake, allow_dangerous_deserialization=False)
    assert [d.id for d in again.similarity_search(QUERIES[0])] == [d.id for d in dense_only.similarity_search(QUERIES[0])]


# ---------------------------------------------------------------------------- bad input
def test_bad_input(m3_vs: M3VectorStore, fake) -> None:
    for bad_k in (0, -3, 1.5):
        with pytest.raises(ValueError, match="k must be a positive int"):
            m3_vs.similarity_search("q", k=bad_k)
        with pytest.raises(ValueError, match="k must be a positive int"):
            m3_vs.max_marginal_relevance_search("q", k=bad_k)
    with pytest.raises(ValueError, match="unknown mode"):
        m3_vs.similarity_search("q", modes=["bm42"])
    with pytest.raises(ValueError, match="unknown mode"):
        m3_vs.as_retriever(search_kwargs={"modes": ["bm42"]}).invoke("q")
    with pytest.raises(ValueError, match="weights"):
        M3VectorStore(embedding=fake, weights=[1.0, 2.0])
    with pytest.raises(TypeError, match="query must be a str; got NoneType"):
        m3_vs.similarity_search(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['top_k'\]"):
        m3_vs.similarity_search("q", top_k=2)
    vs = M3VectorStore(embedding=fake)
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str; got NoneType"):
        vs.add_texts(["ok", None])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"metadatas\[0\] must be a dict; got str"):
        vs.add_texts(["ok"], ["topic=cs"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="2 metadatas for 1 texts"):
        vs.add_texts(["ok"], [{}, {}])
    with pytest.raises(TypeError, match=r"ids\[0\] must be a str"):
        vs.add_texts(["ok"], ids=[7])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="single str"):
        vs.add_texts("ok")
    with pytest.raises(TypeError, match="batch_size"):  # only M3Embeddings batches through the encoder
        vs.add_texts(["ok"], batch_size=8)
    assert len(vs.store) == 0  # nothing half-added


def test_empty_store_returns_nothing(tiny_encoder, fake) -> None:
    for vs in (M3VectorStore(embedding=M3Embeddings(model=tiny_encoder)), M3VectorStore(embedding=fake)):
        assert vs.similarity_search("q") == []
        assert vs.similarity_search_with_relevance_scores("q") == []
        assert vs.max_marginal_relevance_search("q") == []
        assert vs.as_retriever().invoke("q") == []
        assert vs.get_by_ids(["a"]) == []


def test_store_alone_is_enough(tiny_encoder) -> None:
    from m3_rag.store import HybridStore

    hs = HybridStore(tiny_encoder, show_progress=False)
    hs.add(["cats on a mat", "bread in the oven"], ids=["a", "b"])
    vs = M3VectorStore(store=hs)  # no embedding=: derived from the store's encoder
    assert isinstance(vs.embeddings, M3Embeddings) and vs.embeddings.encoder is tiny_encoder
    assert [d.id for d in vs.similarity_search("cats", k=2)] == [h.id for h in hs.search("cats", k=2)]
    with pytest.raises(TypeError, match="embedding= .* or store="):
        M3VectorStore()
    with pytest.raises(ValueError, match="HybridStore.load\\(path, encoder\\)"):
        M3VectorStore(store=HybridStore())
