"""M3Retriever: the langchain-tests retriever suite, per-call overrides, identity with HybridStore.search, LCEL."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_tests.integration_tests import RetrieversIntegrationTests
from langchain_helpers import IDS, METADATAS, QUERIES, TEXTS, heads, one_torch_thread, spy_encode  # noqa: F401

from m3_rag import HybridStore
from m3_rag.langchain import M3Retriever

# Settings checked for identity with HybridStore.search (ids, order and scores).
CONFIGS: list[dict[str, Any]] = [
    {},
    {"modes": ["dense"]},
    {"modes": ["sparse"]},
    {"modes": ["colbert"]},
    {"modes": "sparse", "k": 2},
    {"modes": ["dense", "sparse"], "weights": [0.7, 0.3]},
    {"modes": ["dense", "colbert"], "fusion": "rrf"},
    {"fusion": "dbsf", "weights": {"dense": 1.0, "sparse": 2.0, "colbert": 0.5}},
    {"fusion": "rrf", "candidates": 2, "k": 3},
    {"filter": {"topic": "cs"}, "k": 3},
    {"filter": {"$or": [{"year": {"$gte": 2015}}, {"lang": "ja"}]}, "modes": ["sparse", "colbert"]},
    {"filter": lambda md: md["lang"] != "en"},
    {"k": 50},  # more than the corpus: every document, still in the store's order
]


@pytest.fixture(scope="module", params=["hybrid", "qdrant-edge", "qdrant-local"])
def store(request, tiny_encoder, tmp_path_factory) -> Any:
    """The same corpus in each of the three stores: every test below runs on all of them."""
    if request.param == "hybrid":
        s = HybridStore(encoder=tiny_encoder, show_progress=False)
    elif request.param == "qdrant-edge":
        pytest.importorskip("qdrant_edge")
        from m3_rag import QdrantEdgeStore

        s = QdrantEdgeStore(tmp_path_factory.mktemp("lc-edge") / "store", tiny_encoder, show_progress=False)
    else:
        pytest.importorskip("qdrant_client")
        from m3_rag import QdrantHybridStore

        s = QdrantHybridStore(":memory:", "lc", tiny_encoder, show_progress=False)
    s.add(TEXTS, ids=IDS, metadatas=METADATAS)
    yield s
    if hasattr(s, "close"):
        s.close()


def _store_kwargs(store: HybridStore, cfg: dict[str, Any], k: int = 4) -> dict[str, Any]:
    return {"k": k, "modes": store.modes, **cfg}


# ---------------------------------------------------------------------------- langchain-tests standard suite
class TestM3RetrieverStandard(RetrieversIntegrationTests):
    @pytest.fixture(autouse=True)
    def _store(self, store: HybridStore) -> None:
        self._filled = store

    @property
    def retriever_constructor(self) -> type[M3Retriever]:
        return M3Retriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"store": self._filled}

    @property
    def retriever_query_example(self) -> str:
        return "What is the capital of France?"


# ---------------------------------------------------------------------------- identity with the store
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "defaults")
def test_same_ids_order_and_scores_as_hybridstore_search(store: HybridStore, cfg: dict[str, Any]) -> None:
    query = QUERIES[1]
    expected = store.search(query, **_store_kwargs(store, cfg))
    assert expected, "the reference search returned nothing"
    per_call = M3Retriever(store=store).invoke(query, **cfg)
    as_fields = M3Retriever(store=store, **cfg).invoke(query)
    assert [d.id for d in per_call] == [h.id for h in expected]
    assert [d.id for d in as_fields] == [h.id for h in expected]
    scored = M3Retriever(store=store).with_scores(query, **cfg)
    assert [(d.id, s) for d, s in scored] == [(h.id, h.score) for h in expected]
    assert [(h.id, h.scores) for h in M3Retriever(store=store).hits(query, **cfg)] == [(h.id, h.scores) for h in expected]


async def test_ainvoke_and_per_call_overrides_match(store: HybridStore) -> None:
    retriever = M3Retriever(store=store, k=4)
    for cfg in CONFIGS[:9]:
        sync = retriever.invoke(QUERIES[0], **cfg)
        assert await retriever.ainvoke(QUERIES[0], **cfg) == sync
        assert [d.id for d, _ in await retriever.awith_scores(QUERIES[0], **cfg)] == [d.id for d in sync]
    assert len(await retriever.ainvoke(QUERIES[0], k=2, modes=["sparse"])) == 2


def test_documents_carry_id_and_unchanged_metadata(store: HybridStore) -> None:
    docs = M3Retriever(store=store, k=len(IDS)).invoke("capital")
    assert sorted(d.id for d in docs) == sorted(IDS)
    by_id = dict(zip(IDS, zip(TEXTS, METADATAS)))
    for d in docs:
        assert (d.page_content, d.metadata) == by_id[d.id]  # no score keys added by default
    docs[0].metadata["mutated"] = True  # a copy: the store is not affected
    assert "mutated" not in store.get([docs[0].id])[0].metadata


def test_include_scores_puts_them_in_a_metadata_copy(store: HybridStore) -> None:
    retriever = M3Retriever(store=store, k=3, include_scores=True)
    hits = retriever.hits(QUERIES[2])
    docs = retriever.invoke(QUERIES[2])
    for d, h in zip(docs, hits):
        assert d.metadata == {**h.metadata, "m3_score": h.score, "m3_scores": h.scores}
        assert set(d.metadata["m3_scores"]) == set(store.modes)
    assert "m3_score" not in M3Retriever(store=store, k=3).invoke(QUERIES[2])[0].metadata
    assert "m3_score" in M3Retriever(store=store, k=1).invoke(QUERIES[2], include_scores=True)[0].metadata


def test_include_scores_never_overwrites_user_metadata(tiny_encoder) -> None:
    s = HybridStore(encoder=tiny_encoder, show_progress=False)
    s.add(["a text"], ids=["a"], metadatas=[{"m3_score": "mine"}])
    with pytest.raises(ValueError, match="m3_score"):
        M3Retriever(store=s, include_scores=True).invoke("a text")
    assert M3Retriever(store=s).invoke("a text")[0].metadata == {"m3_score": "mine"}


# ---------------------------------------------------------------------------- one encoding per query
@pytest.mark.parametrize(
    "modes, expected",
    [
        (None, ("dense", "sparse", "colbert")),
        (["dense"], ("dense",)),
        (["sparse"], ("sparse",)),
        (["colbert"], ("colbert",)),
        (["dense", "colbert"], ("dense", "colbert")),
        (["sparse", "dense"], ("dense", "sparse")),
    ],
)
def test_query_encoded_once_with_only_the_needed_heads(store: HybridStore, tiny_encoder, modes, expected) -> None:
    retriever = M3Retriever(store=store, k=3)
    kwargs = {} if modes is None else {"modes": modes}
    with spy_encode(tiny_encoder) as calls:
        retriever.invoke(QUERIES[0], **kwargs)
    assert [(c["n"], heads(c)) for c in calls] == [(1, expected)]


async def test_async_query_encoded_once(store: HybridStore, tiny_encoder) -> None:
    with spy_encode(tiny_encoder) as calls:
        await M3Retriever(store=store).ainvoke(QUERIES[0], modes="sparse")
    assert [heads(c) for c in calls] == [("sparse",)]


# ---------------------------------------------------------------------------- LCEL (the README example)
def test_lcel_chain_retrieved_context_reaches_the_prompt(store: HybridStore) -> None:
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.language_models import FakeListChatModel
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnablePassthrough

    # --- as in the README -------------------------------------------------
    retriever = M3Retriever(store=store, k=2, modes=["dense", "sparse", "colbert"], fusion="rrf")

    def format_docs(docs: list[Document]) -> str:
        return "\n\n".join(f"[{d.id}] {d.page_content}" for d in docs)

    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer using only this context:\n{context}"), ("human", "{question}")]
    )
    llm = FakeListChatModel(responses=["Paris.", "Flour, water, salt and yeast."])
    chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | llm | StrOutputParser()
    # ----------------------------------------------------------------------

    class PromptSpy(BaseCallbackHandler):
        def __init__(self) -> None:
            self.prompts: list[str] = []

        def on_chat_model_start(self, serialized, messages, **kwargs) -> None:  # type: ignore[override]
            self.prompts.append("\n".join(m.content for m in messages[0]))

    spy = PromptSpy()
    question = "What is the capital of France?"
    assert chain.invoke(question, config={"callbacks": [spy]}) == "Paris."
    expected_docs = retriever.invoke(question)
    assert len(spy.prompts) == 1
    for d in expected_docs:  # the retrieved documents are in the prompt the model saw
        assert f"[{d.id}] {d.page_content}" in spy.prompts[0]
    assert question in spy.prompts[0]

    # batch: the retriever and the whole chain take several questions at once
    questions = ["What is the capital of France?", "how to bake bread"]
    batched = retriever.batch(questions)
    assert batched == [retriever.invoke(q) for q in questions]
    assert all(len(docs) == 2 for docs in batched)
    assert retriever.batch(questions, k=1) == [retriever.invoke(q, k=1) for q in questions]


async def test_lcel_abatch(store: HybridStore) -> None:
    retriever = M3Retriever(store=store, k=2)
    questions = QUERIES[:3]
    assert await retriever.abatch(questions) == [retriever.invoke(q) for q in questions]


# ---------------------------------------------------------------------------- bad input
def test_bad_input(store: HybridStore, tiny_encoder) -> None:
    retriever = M3Retriever(store=store)
    for bad_k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be a positive int"):
            M3Retriever(store=store, k=bad_k)
        with pytest.raises(ValueError, match="k must be a positive int"):
            retriever.invoke("q", k=bad_k)
    with pytest.raises(ValueError, match=r"unknown mode\(s\) \['bm42'\]"):
        M3Retriever(store=store, modes=["dense", "bm42"])
    with pytest.raises(ValueError, match="bm25"):
        retriever.invoke("q", modes=["bm25"])
    with pytest.raises(ValueError, match="unknown fusion"):
        retriever.invoke("q", fusion="max")
    with pytest.raises(ValueError, match="candidates"):
        M3Retriever(store=store, candidates=0)
    with pytest.raises(ValueError):
        retriever.invoke("q", filter={"year": {"$between": [1, 2]}})
    with pytest.raises(TypeError, match="filter must be"):
        retriever.invoke("q", filter="topic = cs")
    with pytest.raises(ValueError, match="weights"):
        retriever.invoke("q", modes=["dense", "sparse"], weights=[1.0])
    with pytest.raises(ValueError, match="weights"):
        M3Retriever(store=store, weights={"dense": 1.0, "bm42": 1.0})
    with pytest.raises(TypeError, match="query must be a str; got NoneType"):
        retriever.invoke(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['top_k'\]"):
        retriever.invoke("q", top_k=3)
    with pytest.raises(ValueError, match="needs a HybridStore with an encoder"):
        M3Retriever(store=HybridStore())


def test_empty_store_gives_no_documents(tiny_encoder) -> None:
    empty = HybridStore(encoder=tiny_encoder, show_progress=False)
    retriever = M3Retriever(store=empty, k=3)
    with spy_encode(tiny_encoder) as calls:
        assert retriever.invoke("anything") == []
        assert retriever.invoke("", modes=["sparse"]) == []
    assert calls == []  # nothing to search: the query is not even encoded
    with pytest.raises(ValueError, match="k must be"):
        retriever.invoke("q", k=0)  # validation still happens


def test_filter_matching_nothing_and_odd_queries(store: HybridStore) -> None:
    retriever = M3Retriever(store=store, k=3)
    assert retriever.invoke("q", filter={"topic": "nope"}) == []
    for odd in ("", "🍕🍕", "東京", "word " * 2000):
        docs = retriever.invoke(odd)
        assert len(docs) == 3 and all(isinstance(d, Document) for d in docs)
