"""The bm25 mode on Qdrant (qdrant-client local mode) and Qdrant Edge (the real engine): the same hits and scores
as HybridStore where the average length agrees, live IDF through delete and upsert, fusion, explain,
persistence, migration and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bm25s")
pytest.importorskip("Stemmer")
pytest.importorskip("qdrant_client")
qe = pytest.importorskip("qdrant_edge")

from m3_rag import HybridStore  # noqa: E402
from m3_rag.index.bm25_sparse import Bm25SparseEncoder, stem_id  # noqa: E402
from m3_rag.qdrant import QdrantHybridStore  # noqa: E402
from m3_rag.qdrant_edge import QdrantEdgeStore  # noqa: E402
from m3_rag.search.pipeline import NO_BM25_ENTRIES  # noqa: E402
from test_store import make_encoded, make_query  # noqa: E402

WORDS = ("retrieval systems information indexing queries documents library catalog search engines ranking "
         "relevance feedback boolean vector probabilistic model evaluation precision recall users thesaurus "
         "classification citation abstract journals science computer language automatic analysis").split()


def _corpus(n: int = 120, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(WORDS) + 1)  # Zipf-like: common and rare terms, varied lengths
    p /= p.sum()
    docs = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 40)), p=p)) for _ in range(n)]
    docs[5] = ""  # a text with no stem: a bm25 entry of length 0 (counts in N, matches nothing)
    docs[7] = "The retrieving of retrieved documents, RETRIEVAL!"  # stemming and case
    return docs


QUERIES = ["information retrieval systems", "boolean queries for library catalog", "precision and recall",
           "thesaurus", "the of and", "citation citation abstract", "automatic indexing of journals"]


def _engine(kind: str, tmp_path: Path, **kw):
    if kind == "qdrant":
        return QdrantHybridStore(":memory:", "c", show_progress=False, **kw)
    return QdrantEdgeStore(tmp_path / "edge", show_progress=False, **kw)


def _compare(ref: HybridStore, eng, queries=QUERIES, rel=1e-5, **search) -> None:
    for q in queries:
        want = ref.search(q, modes="bm25", k=1000, **search)
        got = eng.search(q, modes="bm25", k=1000, **search)
        # the same documents with the same scores; the order may differ only inside float32 ties (the engine's
        # float32 sums can split an exact float64 tie by one ulp, in a run-dependent order)
        ref_scores = {h.id: h.score for h in want}
        assert {h.id for h in got} == ref_scores.keys(), q
        np.testing.assert_allclose([h.score for h in got], [ref_scores[h.id] for h in got], rtol=rel)
        in_order = [ref_scores[h.id] for h in got]
        assert all(a >= b * (1 - 1e-6) for a, b in zip(in_order, in_order[1:])), q
        exact = sum(a.id == b.id for a, b in zip(got, want))
        assert exact >= 0.8 * len(want), q  # ties are the exception


@pytest.fixture(params=["qdrant", "edge"])
def kind(request) -> str:
    return request.param


def test_one_add_equals_hybridstore(kind: str, tmp_path: Path):
    docs = _corpus()
    ids = [f"d{i}" for i in range(len(docs))]
    ref = HybridStore(modes="bm25")
    ref.add(docs, ids=ids)
    eng = _engine(kind, tmp_path, modes=("bm25",))  # bm25 alone needs no encoder
    eng.add(docs, ids=ids)
    _compare(ref, eng)
    assert eng.search("the of and", modes="bm25") == []  # no stem after tokenisation: empty, not an error
    assert eng.search("zzzunknownzzz", modes="bm25") == []
    assert max(h.score for h in eng.search("thesaurus", modes="bm25")) > 0.5  # a rarer term: a real comparison
    # explain: the matched stems and their contributions, as HybridStore's
    for q in QUERIES[:3]:
        for a, b in zip(ref.search(q, modes="bm25", explain=True), eng.search(q, modes="bm25", explain=True)):
            assert a.explain.keys() == b.explain.keys()
            np.testing.assert_allclose(list(b.explain.values()), [a.explain[k] for k in b.explain], rtol=1e-5)
            assert sum(b.explain.values()) == pytest.approx(b.score, rel=1e-5)


def test_idf_is_live_through_delete_and_upsert(kind: str, tmp_path: Path):
    # b=0: no length normalisation, so only N and df can differ -- they must follow every write exactly
    docs = _corpus(seed=1)
    ids = [f"d{i}" for i in range(len(docs))]
    ref = HybridStore(modes="bm25", bm25_b=0.0)
    eng = _engine(kind, tmp_path, modes=("bm25",), bm25_b=0.0)
    for lo in range(0, len(docs), 40):  # several writes
        ref.add(docs[lo:lo + 40], ids=ids[lo:lo + 40])
        eng.add(docs[lo:lo + 40], ids=ids[lo:lo + 40])
    _compare(ref, eng)
    for s in (ref, eng):
        assert s.delete(ids[:25] + ["unknown"]) == 25
        s.add(["thesaurus thesaurus citation", docs[3]], ids=[ids[40], "fresh"])  # an upsert and a new id
    _compare(ref, eng)


def test_average_length_is_fixed_at_write_time(kind: str, tmp_path: Path):
    """With b > 0 the engine keeps each document's length normalisation from when it was written: documents
    added in later batches see the running average, so scores drift from HybridStore's live average -- the
    documented difference. Rankings stay close; a rewrite in one add restores exact scores."""
    docs = _corpus(200, seed=2)
    ids = [f"d{i}" for i in range(len(docs))]
    ref = HybridStore(modes="bm25")
    ref.add(docs, ids=ids)
    eng = _engine(kind, tmp_path, modes=("bm25",))
    eng.add(docs[:20], ids=ids[:20])  # a short first batch: its average length differs from the corpus's
    eng.add(docs[20:], ids=ids[20:])
    diffs = []
    for q in QUERIES:
        want = {h.id: h.score for h in ref.search(q, modes="bm25", k=1000)}
        got = {h.id: h.score for h in eng.search(q, modes="bm25", k=1000)}
        assert got.keys() == want.keys()  # the same documents match
        diffs += [abs(got[k] - want[k]) / want[k] for k in want]
    assert 1e-4 < max(diffs) < 0.5  # differs, but not wildly
    assert eng.refresh_bm25() == len(docs)  # every vector rewritten with the current average length...
    _compare(ref, eng)  # ...gives HybridStore's scores again
    assert eng.delete(ids[:10]) == 10 and ref.delete(ids[:10]) == 10
    eng.refresh_bm25()
    _compare(ref, eng)


def test_hybrid_fusion_and_first_stage(kind: str, tmp_path: Path):
    rng = np.random.default_rng(3)
    docs = _corpus(80, seed=3)
    ids = [f"d{i}" for i in range(len(docs))]
    enc = make_encoded(rng, len(docs))
    ref = HybridStore(modes=("dense", "sparse", "colbert", "bm25"), colbert_dtype="fp32")
    ref.add_encoded(enc, ids=ids, texts=docs)
    eng = _engine(kind, tmp_path, modes=("dense", "sparse", "colbert", "bm25"), colbert_datatype="float32")
    eng.add_encoded(enc, ids=ids, texts=docs)
    q = make_query(rng)
    for fusion in ("weighted", "rrf", "dbsf"):
        for modes in (("dense", "bm25"), ("dense", "sparse", "colbert", "bm25"), ("colbert", "bm25")):
            kw = dict(query_text="retrieval of library documents", modes=modes, fusion=fusion, k=15, candidates=20)
            want, got = ref.search_encoded(q, **kw), eng.search_encoded(q, **kw)
            assert [h.id for h in got] == [h.id for h in want], (fusion, modes)
            for a, b in zip(want, got):
                assert b.scores.keys() == a.scores.keys()
                for m in modes:
                    assert b.scores[m] == pytest.approx(a.scores[m], rel=1e-4, abs=1e-6), (fusion, modes, m)
    # explain merges sparse tokens and bm25 stems, as HybridStore does
    hits = eng.search_encoded(q, query_text="retrieval of library documents", modes=("dense", "bm25"), k=5, explain=True)
    assert any(k.startswith("bm25:") for h in hits for k in h.explain)
    # server_fusion=True: the engine fuses a bm25 prefetch too; per-mode scores stay exact
    hits = eng.search_encoded(q, query_text="retrieval of library documents", modes=("dense", "bm25"), fusion="rrf",
                              k=10, server_fusion=True)
    exact = {h.id: h.scores for h in ref.search_encoded(q, query_text="retrieval of library documents",
                                                         modes=("dense", "bm25"), fusion="rrf", k=80, candidates=80)}
    assert len(hits) == 10
    for h in hits:
        assert h.scores["bm25"] == pytest.approx(exact[h.id]["bm25"], rel=1e-5, abs=1e-9)


def test_documents_without_text(kind: str, tmp_path: Path):
    rng = np.random.default_rng(4)
    eng = _engine(kind, tmp_path, modes=("dense", "bm25"))
    eng.add_encoded(make_encoded(rng, 4, modes=("dense",)), ids=list("abcd"))  # no texts: no bm25 entries
    q = make_query(rng, modes=("dense",))
    with pytest.raises(ValueError, match="bm25 entry"):
        eng.search_encoded(q, query_text="anything", modes="bm25")
    assert NO_BM25_ENTRIES
    assert len(eng.search_encoded(q, modes="dense", k=3)) == 3  # other modes unaffected
    eng.add_encoded(make_encoded(rng, 2, modes=("dense",)), ids=["e", "f"], texts=["retrieval systems", None])
    hits = eng.search_encoded(q, query_text="retrieval", modes="bm25")
    assert [h.id for h in hits] == ["e"]
    hits = eng.search_encoded(q, query_text="retrieval", modes=("dense", "bm25"), k=6)
    assert {h.id: h.scores["bm25"] for h in hits}["a"] == 0.0


def test_reopen_and_migration(tmp_path: Path):
    docs = _corpus(60, seed=5)
    ids = [f"d{i}" for i in range(len(docs))]
    ref = HybridStore(modes="bm25", bm25_k1=1.2)
    ref.add(docs, ids=ids)
    # HybridStore -> Edge keeps the bm25 mode and settings, same scores
    edge = QdrantEdgeStore.from_store(ref, tmp_path / "e", show_progress=False)
    assert edge.modes == ("bm25",) and edge.bm25_options["k1"] == 1.2
    _compare(ref, edge)
    edge.close()
    with pytest.raises(ValueError, match="bm25_k1"):
        QdrantEdgeStore(tmp_path / "e", modes="bm25", bm25_k1=2.0)
    import json

    header = json.loads((tmp_path / "e" / "m3_rag_edge.json").read_text())
    assert header["format_version"] == 2 and header["bm25"]["k1"] == 1.2  # a bm25 store's header is version 2
    edge = QdrantEdgeStore(tmp_path / "e", show_progress=False)  # the recorded settings
    _compare(ref, edge)
    edge.add(["thesaurus of science"], ids=["new"])  # the reopened store's running average length is loaded
    assert edge._bm25.n_docs == 61 and edge._bm25.total_len == ref._indexes["bm25"]._total_len + 2
    back = edge.to_store()
    assert back.modes == ("bm25",) and back.bm25_options["k1"] == 1.2
    edge.close()
    # a Qdrant collection on disk (local mode path): reopen checks the settings too
    q = QdrantHybridStore.from_store(ref, str(tmp_path / "q"), "c", show_progress=False)
    _compare(ref, q)
    q.close()
    with pytest.raises(ValueError, match="bm25_k1"):
        QdrantHybridStore(str(tmp_path / "q"), "c", modes="bm25")
    q = QdrantHybridStore(str(tmp_path / "q"), "c", show_progress=False)
    assert q.modes == ("bm25",)
    _compare(ref, q)
    q.close()


def test_bad_input(kind: str, tmp_path: Path):
    with pytest.raises(ValueError, match="lucene"):
        _engine(kind, tmp_path, modes=("bm25",), bm25_method="robertson")
    with pytest.raises(ValueError, match="unknown stemmer language"):
        _engine(kind, tmp_path, modes=("bm25",), bm25_language="klingon")
    with pytest.raises(ValueError, match="k1"):
        _engine(kind, tmp_path, modes=("bm25",), bm25_k1=0)
    with pytest.raises(ValueError, match="b must be"):
        _engine(kind, tmp_path, modes=("bm25",), bm25_b=1.5)
    with pytest.raises(ValueError, match="does not hold bm25"):
        _engine(kind, tmp_path, bm25_k1=1.2)  # bm25 options without the mode
    with pytest.raises(ValueError, match="unknown mode"):
        _engine(kind, tmp_path, modes=("bm26",))
    eng = _engine(kind, tmp_path, modes=("bm25",))
    with pytest.raises(TypeError):
        eng.add(["fine", 3])  # type: ignore[list-item]
    assert len(eng) == 0  # nothing written
    eng.add(["retrieval"], ids=["a"])
    with pytest.raises(ValueError):
        eng.search("retrieval", modes="bm25", k=0)
    with pytest.raises(ValueError, match="holds no"):
        eng.search("retrieval", modes="dense")
    assert [h.id for h in eng.search("retrieval", modes="bm25", k=50)] == ["a"]  # k above the corpus size


def test_store_without_bm25_refuses_it(kind: str, tmp_path: Path):
    rng = np.random.default_rng(6)
    eng = _engine(kind, tmp_path)
    eng.add_encoded(make_encoded(rng, 3, modes=("dense",)), ids=list("abc"), texts=["x", "y", "z"])
    with pytest.raises(ValueError, match="does not hold the bm25 mode"):
        eng.refresh_bm25()
    with pytest.raises(ValueError, match="bm25"):
        eng.search_encoded(make_query(rng, modes=("dense",)), query_text="x", modes="bm25")


def test_sparse_encoder_units():
    enc = Bm25SparseEncoder()
    assert stem_id("retriev") == stem_id("retriev") and 0 <= stem_id("retriev") < 2**32
    vecs, lens = enc.documents(["retrieval retrieval systems", None, ""])
    assert lens == [3, None, 0] and vecs[1] is None and vecs[2] == ([], [])
    ids, vals = vecs[0]
    assert ids == sorted(ids) and len(ids) == 2
    # the lucene tf component with avgdl = (3 + 0) / 2 documents with text
    norm = 1 - 0.75 + 0.75 * 3 / 1.5
    want = {stem_id("retriev"): 2 / (2 + 1.5 * norm), stem_id("system"): 1 / (1 + 1.5 * norm)}
    for t, v in zip(ids, vals):
        assert v == pytest.approx(want[t], rel=1e-6)
    assert enc.query("retrieval of retrieval") == ([stem_id("retriev")], [2.0])
    assert enc.query("the of") == ([], [])


def test_langchain_retriever_over_engine_bm25(kind: str, tmp_path: Path):
    pytest.importorskip("langchain_core")
    from m3_rag.langchain import M3Retriever

    eng = _engine(kind, tmp_path, modes=("bm25",))
    eng.add(["retrieval of documents", "cooking recipes", "document retrieval systems"], ids=["a", "b", "c"],
            metadatas=[{"x": 1}, {}, {}])
    docs = M3Retriever(store=eng, k=2).invoke("retrieval system")  # bm25 alone: no encoder needed
    assert [d.page_content for d in docs] == ["document retrieval systems", "retrieval of documents"]
    assert docs[1].metadata == {"x": 1}
    assert M3Retriever(store=eng, k=2).invoke("the of") == []
