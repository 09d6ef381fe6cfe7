"""QdrantHybridStore against qdrant-client's embedded local mode (":memory:" and a folder), compared with HybridStore."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("qdrant_client")

from qdrant_client import QdrantClient, models  # noqa: E402

from m3_rag import M3Output  # noqa: E402
from m3_rag.qdrant import QdrantHybridStore, QdrantWriteError, point_id, to_qdrant_filter  # noqa: E402
from m3_rag.store import HybridStore  # noqa: E402

MODE_SETS = [
    ("dense",),
    ("sparse",),
    ("colbert",),
    ("dense", "sparse"),
    ("dense", "colbert"),
    ("sparse", "colbert"),
    ("dense", "sparse", "colbert"),
]
FUSIONS = ("weighted", "rrf", "dbsf")


def _load_beir(folder: Path, n_docs: int | None = None, n_queries: int = 8) -> tuple[list[str], list[str], list[str]]:
    ids, texts = [], []
    with open(folder / "corpus.jsonl") as f:
        for line in f:
            row = json.loads(line)
            ids.append(str(row["_id"]))
            texts.append(((row.get("title") or "") + " " + (row.get("text") or "")).strip())
            if n_docs and len(ids) >= n_docs:
                break
    queries = []
    with open(folder / "queries.jsonl") as f:
        for line in f:
            queries.append(json.loads(line)["text"])
            if len(queries) >= n_queries:
                break
    return ids, texts, queries


def _meta(i: int) -> dict:
    md = {"n": i, "parity": "even" if i % 2 == 0 else "odd", "score": i / 10, "tags": ["t%d" % (i % 3), "all"]}
    if i % 5 == 0:
        md["special"] = True
    if i % 7 == 0:
        md["note"] = None
    return md


@pytest.fixture(scope="module")
def med(tiny_encoder, datasets_dir):
    """The first 130 MED documents (more than the 100 default candidates) and 4 queries, encoded once."""
    ids, texts, queries = _load_beir(datasets_dir / "med", n_docs=130, n_queries=4)
    docs = tiny_encoder.encode_documents(texts, batch_size=64, max_length=160)
    q = tiny_encoder.encode_queries(queries)
    metas = [_meta(i) for i in range(len(ids))]
    return ids, texts, metas, docs, q


@pytest.fixture(scope="module")
def pair(tiny_encoder, med):
    """The same MED collection in a HybridStore and in a QdrantHybridStore (":memory:")."""
    ids, texts, metas, docs, _ = med
    hybrid = HybridStore(tiny_encoder, show_progress=False)
    hybrid.add_encoded(docs, ids=ids, texts=texts, metadatas=metas)
    qdrant = QdrantHybridStore(":memory:", "med", tiny_encoder, show_progress=False, batch_size=128)
    qdrant.add_encoded(docs, ids=ids, texts=texts, metadatas=metas)
    return hybrid, qdrant


def _assert_same(h_hits, q_hits, *, fused_rtol=1e-4):
    assert [h.id for h in q_hits] == [h.id for h in h_hits]
    for a, b in zip(h_hits, q_hits):
        assert b.text == a.text and b.metadata == a.metadata
        assert set(b.scores) == set(a.scores)
        for mode in a.scores:
            assert b.scores[mode] == pytest.approx(a.scores[mode], rel=1e-4, abs=1e-5)
        assert b.score == pytest.approx(a.score, rel=fused_rtol, abs=1e-5)


# ------------------------------------------------------------------------------------------------ parity
COMBOS = [(m, "weighted") for m in MODE_SETS[:3]] + [(m, f) for m in MODE_SETS[3:] for f in FUSIONS]


@pytest.mark.parametrize("modes,fusion", COMBOS, ids=["+".join(m) + "-" + f for m, f in COMBOS])
def test_same_topk_as_hybridstore(pair, med, modes, fusion):
    hybrid, qdrant = pair
    q = med[4]
    for i in range(len(q)):
        for kw in ({"k": 10}, {"k": 5, "candidates": 20}):
            _assert_same(
                hybrid.search_encoded(q[i], modes=modes, fusion=fusion, **kw),
                qdrant.search_encoded(q[i], modes=modes, fusion=fusion, **kw),
            )


def test_text_search_weights_and_batch(pair, med):
    hybrid, qdrant = pair
    _, _, _, _, _ = med
    queries = ["diseases of the heart", "renal failure in children", "🙂 emoji and 中文 query", ""]
    for weights in (None, {"dense": 1.0, "sparse": 0.0, "colbert": 2.0}):
        for hq, hh in zip(qdrant.search_batch(queries, k=7, weights=weights), hybrid.search_batch(queries, k=7, weights=weights)):
            _assert_same(hh, hq)


def test_k_larger_than_corpus_and_sparse_zero_fill(pair, med):
    hybrid, qdrant = pair
    q = med[4][0]
    for modes in (("sparse",), ("dense", "sparse"), ("dense",)):
        h = hybrid.search_encoded(q, k=1000, modes=modes, filter={"n": {"$lt": 30}})
        got = qdrant.search_encoded(q, k=1000, modes=modes, filter={"n": {"$lt": 30}})
        assert len(got) == 30
        _assert_same(h, got)


FILTERS = [
    {"parity": "even"},
    {"n": {"$gte": 50, "$lt": 120}},
    {"score": {"$gt": 3.5}},
    {"n": {"$in": [1, 2, 3, 40, 41, 300]}},
    {"parity": {"$nin": ["odd"]}},
    {"parity": {"$ne": "odd"}, "special": True},
    {"special": {"$exists": False}},
    {"note": {"$exists": True}},
    {"note": None},
    {"tags": {"$contains": "t1"}},
    {"parity": {"$contains": "dd"}},
    {"$or": [{"n": {"$lt": 10}}, {"tags": {"$contains": "t2"}, "parity": "odd"}]},
    {"$and": [{"n": {"$gte": 100}}, {"$not": {"parity": "even"}}]},
    {"$not": {"n": {"$in": [0, 1, 2]}}},
    {"missing_key": {"$ne": 3}},
    {"missing_key": 3},
    {"n": 7.0},
]


@pytest.mark.parametrize("flt", FILTERS, ids=[json.dumps(f) for f in FILTERS])
def test_filters_match_hybridstore(pair, med, flt):
    hybrid, qdrant = pair
    q = med[4][1]
    for modes, fusion in ((("dense", "sparse", "colbert"), "weighted"), (("sparse",), "weighted"), (("dense", "sparse"), "rrf")):
        h = hybrid.search_encoded(q, k=8, modes=modes, fusion=fusion, filter=flt)
        _assert_same(h, qdrant.search_encoded(q, k=8, modes=modes, fusion=fusion, filter=flt))
    # a callable is evaluated client-side before top-k: same result as the equivalent dict
    from m3_rag.filters import compile_filter

    pred = compile_filter(flt)
    _assert_same(
        hybrid.search_encoded(q, k=8, filter=flt),
        qdrant.search_encoded(q, k=8, filter=lambda md: pred(md)),
    )


def test_ids_restriction(pair, med):
    hybrid, qdrant = pair
    ids = med[0]
    q = med[4][2]
    subset = ids[10:60:3] + ["no-such-id"]
    for modes in (("dense",), ("dense", "sparse", "colbert")):
        h = hybrid.search_encoded(q, k=5, modes=modes, ids=subset, filter={"parity": "odd"})
        _assert_same(h, qdrant.search_encoded(q, k=5, modes=modes, ids=subset, filter={"parity": "odd"}))
    assert qdrant.search_encoded(q, k=5, ids=[]) == []


def test_filter_translation_shapes():
    f = to_qdrant_filter({"a": 1, "b": {"$in": ["x", "y"]}, "$not": {"c": True}})
    assert isinstance(f, models.Filter) and len(f.must) == 3
    assert f.must[0].key == "metadata.a" and f.must[0].range == models.Range(gte=1, lte=1)
    assert to_qdrant_filter({"a.b": "x"}).must[0].key == 'metadata."a.b"'
    with pytest.raises(TypeError, match="callable"):
        to_qdrant_filter(lambda md: True)
    with pytest.raises(ValueError, match="numbers only"):
        to_qdrant_filter({"a": {"$gt": "m"}})
    with pytest.raises(ValueError, match="cannot translate equality"):
        to_qdrant_filter({"a": [1, 2]})


def test_server_fusion_is_approximate_but_exact_per_mode(pair, med):
    hybrid, qdrant = pair
    q = med[4][3]
    for fusion in ("rrf", "dbsf"):
        hits = qdrant.search_encoded(q, k=10, fusion=fusion, server_fusion=True)
        assert len(hits) == 10
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        exact = {h.id: h for h in hybrid.search_encoded(q, k=130, fusion=fusion, candidates=130)}
        for h in hits:  # per-mode scores are exact even when the fused score is Qdrant's
            for mode, s in h.scores.items():
                assert s == pytest.approx(exact[h.id].scores[mode], rel=1e-4, abs=1e-5)
    with pytest.raises(ValueError, match="server_fusion"):
        qdrant.search_encoded(q, fusion="weighted", server_fusion=True)


def test_explain_matches_hybridstore(pair):
    hybrid, qdrant = pair
    h = hybrid.search("heart disease treatment", k=3, explain=True)
    got = qdrant.search("heart disease treatment", k=3, explain=True)
    assert [x.id for x in got] == [x.id for x in h]
    for a, b in zip(h, got):
        assert b.explain.keys() == a.explain.keys()
        for tok in a.explain:
            assert b.explain[tok] == pytest.approx(a.explain[tok], rel=1e-5)


# ------------------------------------------------------------------------------------------------ writing
def _synthetic(n: int, seed: int = 0, dense_dim: int = 8, colbert_dim: int = 4) -> M3Output:
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n, dense_dim)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    sparse = [{int(t): float(rng.random()) for t in rng.choice(30, size=3, replace=False)} for _ in range(n)]
    colbert = []
    for _ in range(n):
        c = rng.normal(size=(int(rng.integers(1, 5)), colbert_dim)).astype(np.float32)
        colbert.append(c / np.linalg.norm(c, axis=1, keepdims=True))
    return M3Output(dense=dense, sparse=sparse, colbert=colbert)


def test_upsert_delete_get_and_order():
    store = QdrantHybridStore(":memory:", "w", show_progress=False, batch_size=3)
    assert len(store) == 0 and store.modes == () and store.search_encoded(_synthetic(1), k=3) == []
    enc = _synthetic(7)
    ids = store.add_encoded(enc, ids=[f"d{i}" for i in range(7)], texts=[f"t{i}" for i in range(7)])
    assert ids == [f"d{i}" for i in range(7)] and len(store) == 7 and store.modes == ("dense", "sparse", "colbert")
    # upsert: same id replaced, count unchanged, it moves last in insertion order (as in HybridStore)
    store.add_encoded(_synthetic(1, seed=5), ids=["d2"], texts=["new"], metadatas=[{"v": 2}])
    assert len(store) == 7 and store.ids() == ["d0", "d1", "d3", "d4", "d5", "d6", "d2"]
    assert store.get(["d2", "nope", "d0"])[0].text == "new" and [r.id for r in store.get(["d2", "nope", "d0"])] == ["d2", "d0"]
    assert store.get(["d2"])[0].metadata == {"v": 2}
    assert "d3" in store and "nope" not in store
    assert store.delete(["d3", "d3", "nope"]) == 1 and "d3" not in store and len(store) == 6
    store.add_encoded(_synthetic(2, seed=9), ids=["x", "d3"])
    assert store.ids() == ["d0", "d1", "d4", "d5", "d6", "d2", "x", "d3"]
    with pytest.raises(ValueError, match="duplicate ids"):
        store.add_encoded(_synthetic(2), ids=["y", "y"])
    # exported vectors are the stored ones (colbert rounded to float16 by default)
    eids, out, texts, metas = store.export(["d0", "gone", "d1"])
    assert eids == ["d0", "d1"] and texts == ["t0", "t1"]
    np.testing.assert_allclose(out.dense, enc.dense[:2], atol=1e-6)
    assert out.sparse[0] == pytest.approx(enc.sparse[0])
    np.testing.assert_array_equal(out.colbert[1], enc.colbert[1].astype(np.float16).astype(np.float32))
    store.clear()  # like HybridStore.clear: empty, and the modes are forgotten (no encoder to recreate them)
    assert len(store) == 0 and store.ids() == [] and store.modes == ()
    store.add_encoded(M3Output(dense=_synthetic(1).dense), ids=["only-dense"])
    assert store.modes == ("dense",)


def test_string_ids_map_to_uuid5_and_payload_keeps_original():
    client = QdrantClient(":memory:")
    store = QdrantHybridStore(client, "ids", show_progress=False)
    odd_ids = ["", "🙂 emoji", "中文", "a" * 500]
    store.add_encoded(_synthetic(4), ids=odd_ids, texts=["", None, "x", "y"], metadatas=[{}, None, {"k": "v"}, {}])
    assert point_id("doc-1") == point_id("doc-1") != point_id("doc-2")
    rec = client.retrieve("ids", [point_id("🙂 emoji")], with_payload=True)[0]
    assert rec.payload["m3_id"] == "🙂 emoji" and rec.payload["text"] is None
    assert [r.id for r in store.get(odd_ids)] == odd_ids
    assert [r.text for r in store.get(odd_ids)] == ["", None, "x", "y"]


def test_empty_colbert_and_sparse_rows_score_zero():
    store = QdrantHybridStore(":memory:", "e", show_progress=False)
    enc = _synthetic(3)
    enc.colbert[1] = np.zeros((0, 4), dtype=np.float32)
    enc.sparse[2] = {}
    store.add_encoded(enc, ids=["a", "b", "c"])
    q = _synthetic(1, seed=3)
    hits = {h.id: h for h in store.search_encoded(q, k=3, modes="colbert")}
    assert hits["b"].scores["colbert"] == 0.0
    hits = {h.id: h for h in store.search_encoded(q, k=3, modes=("dense", "sparse"))}
    assert hits["c"].scores["sparse"] == 0.0
    _, out, _, _ = store.export()
    assert out.colbert[1].shape == (0, 4) and out.sparse[2] == {}


def test_partial_failure_reports_unwritten_ids():
    class Flaky(QdrantClient):
        calls = 0

        def upload_points(self, *args, **kwargs):
            Flaky.calls += 1
            if Flaky.calls == 2:
                raise ConnectionError("boom")
            return super().upload_points(*args, **kwargs)

    store = QdrantHybridStore(Flaky(":memory:"), "f", show_progress=False, batch_size=2)
    ids = [f"d{i}" for i in range(5)]
    with pytest.raises(QdrantWriteError, match="boom") as err:
        store.add_encoded(_synthetic(5), ids=ids)
    assert err.value.failed_ids == ["d2", "d3", "d4"]
    assert "d2, d3, d4" in str(err.value)
    assert store.ids() == ["d0", "d1"]


def test_bad_input_errors():
    store = QdrantHybridStore(":memory:", "bad", show_progress=False)
    with pytest.raises(ValueError, match="needs an encoder"):
        store.add(["x"])
    store.add_encoded(_synthetic(3), ids=["a", "b", "c"])
    q = _synthetic(1)
    with pytest.raises(ValueError, match="k must be"):
        store.search_encoded(q, k=0)
    with pytest.raises(ValueError, match="unknown mode"):
        store.search_encoded(q, modes=("dense", "bm42"))
    with pytest.raises(ValueError, match="unknown fusion"):
        store.search_encoded(q, fusion="max")
    with pytest.raises(ValueError, match="unknown filter operator|unknown operator"):
        store.search_encoded(q, filter={"a": {"$regex": "x"}})
    with pytest.raises(ValueError, match="2 ids for 3"):
        store.add_encoded(_synthetic(3), ids=["a", "b"])
    with pytest.raises(TypeError, match="JSON"):
        store.add_encoded(_synthetic(1), ids=["z"], metadatas=[{"x": object()}])
    with pytest.raises(ValueError, match="dimension"):
        store.add_encoded(_synthetic(1, dense_dim=5), ids=["z"])
    with pytest.raises(ValueError, match="has no .sparse. output"):
        store.add_encoded(M3Output(dense=_synthetic(1).dense), ids=["z"])
    with pytest.raises(TypeError, match="QdrantClient, a URL"):
        QdrantHybridStore(42, "x")
    with pytest.raises(ValueError, match="dense_distance"):
        QdrantHybridStore(":memory:", "x", dense_distance="euclid")
    dense_only = QdrantHybridStore(":memory:", "d", show_progress=False)
    dense_only.add_encoded(M3Output(dense=_synthetic(2).dense), ids=["a", "b"])
    with pytest.raises(ValueError, match="holds no"):
        dense_only.search_encoded(q, modes=("dense", "sparse"))


# ------------------------------------------------------------------------------------------------ validation
def test_existing_collection_is_validated(tiny_encoder):
    client = QdrantClient(":memory:")
    QdrantHybridStore(client, "ok", tiny_encoder, show_progress=False)
    QdrantHybridStore(client, "ok", tiny_encoder, show_progress=False)  # same config: accepted
    with pytest.raises(ValueError, match=r"collection 'ok'.*dense distance.*dense_distance='dot'"):
        QdrantHybridStore(client, "ok", tiny_encoder, dense_distance="cosine")
    client.create_collection(
        "idf",
        vectors_config={"dense": models.VectorParams(size=tiny_encoder.dense_dim, distance=models.Distance.DOT)},
        sparse_vectors_config={"sparse": models.SparseVectorParams(modifier=models.Modifier.IDF)},
    )
    with pytest.raises(ValueError, match=r"'idf'.*sparse modifier.*idf"):
        QdrantHybridStore(client, "idf", tiny_encoder)
    client.create_collection("dim", vectors_config={"dense": models.VectorParams(size=7, distance=models.Distance.DOT)})
    with pytest.raises(ValueError, match=r"'dim'.*dense dimension expected 32, found 7"):
        QdrantHybridStore(client, "dim", tiny_encoder)
    client.create_collection(
        "nomax",
        vectors_config={"colbert": models.VectorParams(size=24, distance=models.Distance.DOT)},
    )
    with pytest.raises(ValueError, match=r"'nomax'.*max_sim"):
        QdrantHybridStore(client, "nomax", tiny_encoder)
    client.create_collection("plain", vectors_config=models.VectorParams(size=32, distance=models.Distance.COSINE))
    with pytest.raises(ValueError, match="one unnamed vector"):
        QdrantHybridStore(client, "plain", tiny_encoder)


def test_collection_config_and_fingerprint(tiny_encoder, tiny_ckpt, tmp_path):
    client = QdrantClient(":memory:")
    QdrantHybridStore(client, "cfg", tiny_encoder, colbert_on_disk=True, colbert_quantization="scalar")
    params = client.get_collection("cfg").config.params
    cb = params.vectors["colbert"]
    assert cb.multivector_config.comparator == models.MultiVectorComparator.MAX_SIM
    assert cb.size == tiny_encoder.colbert_dim and cb.on_disk is True and cb.quantization_config is not None
    assert params.sparse_vectors["sparse"].modifier in (None, models.Modifier.NONE)
    assert params.vectors["dense"].size == tiny_encoder.dense_dim
    # a collection built by another model is refused
    from m3_rag import M3Encoder
    from tiny_checkpoint import make_tiny_bert

    other = M3Encoder.from_pretrained(make_tiny_bert(tmp_path / "other", seed=1), device="cpu")
    assert other.fingerprint != tiny_encoder.fingerprint
    with pytest.raises(ValueError, match="fingerprint"):
        QdrantHybridStore(client, "cfg", other)


# ------------------------------------------------------------------------------------------------ migration, persistence
def test_migration_both_ways(pair, med, tiny_encoder):
    hybrid, _ = pair
    q = med[4]
    moved = QdrantHybridStore.from_store(hybrid, ":memory:", "moved", show_progress=False)
    assert moved.ids() == hybrid.ids() and moved.fingerprint == hybrid.fingerprint
    for modes in (("dense", "sparse", "colbert"), ("sparse",)):
        _assert_same(hybrid.search_encoded(q[0], k=10, modes=modes), moved.search_encoded(q[0], k=10, modes=modes))
    back = moved.to_store(show_progress=False)
    assert back.ids() == hybrid.ids()
    assert back.get(["5"]) == hybrid.get(["5"])
    for fusion in FUSIONS:
        _assert_same(hybrid.search_encoded(q[1], k=10, fusion=fusion), back.search_encoded(q[1], k=10, fusion=fusion))


def test_path_mode_persists_across_reopen(tiny_encoder, tmp_path):
    path = tmp_path / "qdrant"
    texts = ["the heart pumps blood", "kidney stones hurt", "a note on lungs", "🙂 ok", "中文文本"]
    store = QdrantHybridStore(path, "docs", tiny_encoder, show_progress=False)
    store.add(texts, ids=[f"d{i}" for i in range(5)], metadatas=[{"i": i} for i in range(5)])
    before = store.search("blood and heart", k=3)
    store.close()
    again = QdrantHybridStore(str(path), "docs", tiny_encoder, show_progress=False)
    assert again.ids() == [f"d{i}" for i in range(5)]
    after = again.search("blood and heart", k=3)
    assert [h.id for h in after] == [h.id for h in before]
    assert [h.score for h in after] == pytest.approx([h.score for h in before])
    again.add(["appended later"], ids=["new"])
    assert again.ids()[-1] == "new"  # insertion order continues after reopening
    again.close()


# ------------------------------------------------------------------------------------------------ adapters
def test_llama_index_adapter_accepts_qdrant_store(pair):
    pytest.importorskip("llama_index.core")
    from llama_index.core.vector_stores.types import (
        FilterOperator,
        MetadataFilter,
        MetadataFilters,
        VectorStoreQuery,
        VectorStoreQueryMode,
    )

    from m3_rag.llama_index import M3VectorStore

    hybrid, qdrant = pair
    filters = MetadataFilters(filters=[MetadataFilter(key="n", value=200, operator=FilterOperator.LT)])
    for mode, kwargs in (
        (VectorStoreQueryMode.DEFAULT, {}),
        (VectorStoreQueryMode.SPARSE, {}),
        (VectorStoreQueryMode.HYBRID, {"modes": ("dense", "sparse", "colbert"), "fusion": "rrf"}),
        (VectorStoreQueryMode.MMR, {"mmr_threshold": 0.3}),
    ):
        query = VectorStoreQuery(query_str="chronic kidney disease", similarity_top_k=6, mode=mode, filters=filters)
        a = M3VectorStore(store=hybrid).query(query, **kwargs)
        b = M3VectorStore(store=qdrant).query(query, **kwargs)
        assert b.ids == a.ids
        assert b.similarities == pytest.approx(a.similarities, rel=1e-4, abs=1e-5)
    from m3_rag.llama_index import M3Retriever

    for fusion in FUSIONS:
        a = M3Retriever(hybrid, 5, fusion=fusion, filters=filters).retrieve("blood pressure")
        b = M3Retriever(qdrant, 5, fusion=fusion, filters=filters).retrieve("blood pressure")
        assert [n.node.node_id for n in b] == [n.node.node_id for n in a]
        assert [n.score for n in b] == pytest.approx([n.score for n in a], rel=1e-4, abs=1e-5)


def test_langchain_retriever_accepts_qdrant_store(pair):
    pytest.importorskip("langchain_core")
    from m3_rag.langchain import M3Retriever

    hybrid, qdrant = pair
    for fusion in FUSIONS:
        a = M3Retriever(store=hybrid, k=5, fusion=fusion, filter={"parity": "odd"}).invoke("blood pressure")
        b = M3Retriever(store=qdrant, k=5, fusion=fusion, filter={"parity": "odd"}).invoke("blood pressure")
        assert [d.id for d in b] == [d.id for d in a]
        assert [d.page_content for d in b] == [d.page_content for d in a]


def test_close_honours_client_ownership(tmp_path):
    from qdrant_client import QdrantClient

    path = tmp_path / "local"
    client = QdrantClient(path=str(path))
    store = QdrantHybridStore(client, "own", show_progress=False)
    store.add_encoded(_synthetic(3), ids=["a", "b", "c"])
    store.close()  # a client passed in stays open
    assert client.collection_exists("own")
    QdrantHybridStore(client, "own").close(close_client=True)  # explicitly closed: the path can be reopened
    with QdrantHybridStore(path, "own") as reopened:  # created from a path: owned, closed on exit
        assert len(reopened) == 3
    again = QdrantHybridStore(path, "own")
    assert again.ids() == ["a", "b", "c"]
    again.close()


# ------------------------------------------------------------------------------------------------ exact ties
def test_exact_ties_same_order_as_hybridstore_at_every_cut(tiny_encoder):
    """25 documents with one text (identical rows, so every mode ties exactly) among 15 others, one of them
    re-upserted so that it moves last: at every k, and past the backend's fetch margin (16), both stores return
    the same ids in the same order, and tied documents come in insertion order."""
    unique = ["heat transfer in a laminar boundary layer"] + [f"other passage {i} on pressure and flow" for i in range(15)]
    enc = tiny_encoder.encode_documents(unique, show_progress_bar=False)
    rows = [0 if i % 3 != 2 else 1 + i // 3 for i in range(40)]  # 0 = the duplicated text
    rows = [r if r < len(unique) else 0 for r in rows]
    docs = M3Output(dense=enc.dense[rows], sparse=[dict(enc.sparse[r]) for r in rows], colbert=[enc.colbert[r].copy() for r in rows])
    ids = [f"d{i:02d}" for i in range(40)]
    dup_ids = [ids[i] for i, r in enumerate(rows) if r == 0]
    assert len(dup_ids) >= 25
    hybrid = HybridStore(tiny_encoder, show_progress=False)
    qdrant = QdrantHybridStore(":memory:", "ties", tiny_encoder, show_progress=False, batch_size=16)
    for store in (hybrid, qdrant):
        store.add_encoded(docs, ids=ids, texts=[unique[r] for r in rows])
        store.add_encoded(docs[0:1], ids=[ids[0]], texts=[unique[0]])  # d00 moves last
    order = dup_ids[1:] + [dup_ids[0]]  # insertion order of the tied documents after the upsert
    for modes, fusion in COMBOS:
        for k in (1, 2, 3, 7, 24, 30):
            a = hybrid.search(unique[0], k=k, modes=modes, fusion=fusion)
            b = qdrant.search(unique[0], k=k, modes=modes, fusion=fusion)
            assert [h.id for h in b] == [h.id for h in a], (modes, fusion, k)
            tied = [h.id for h in a if h.id in dup_ids]
            assert tied == order[: len(tied)], (modes, fusion, k)
            assert len(tied) == min(k, len(order)), (modes, fusion, k)
