"""HybridStore: exactness against a naive per-document reference, mutations, filters, persistence,
thread safety and bad input. Most tests use synthetic M3Outputs; text-level tests use ``tiny_encoder``."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from m3_rag import Hit, M3Output
from m3_rag.filters import compile_filter
from m3_rag.fusion import fuse, resolve_weights
from m3_rag.scoring import colbert_score, lexical_score
from m3_rag.store import HybridStore

D, DC, VOCAB = 16, 8, 60


def make_encoded(rng: np.random.Generator, n: int, modes=("dense", "sparse", "colbert"), empty_sparse=False) -> M3Output:
    dense = sparse = colbert = None
    if "dense" in modes:
        dense = rng.normal(size=(n, D)).astype(np.float32)
        dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    if "sparse" in modes:
        sparse = []
        for _ in range(n):
            k = 0 if empty_sparse else int(rng.integers(0, 8))
            terms = rng.choice(VOCAB, size=k, replace=False)
            sparse.append({int(t): float(rng.random()) for t in terms})
    if "colbert" in modes:
        colbert = []
        for _ in range(n):
            m = rng.normal(size=(int(rng.integers(1, 7)), DC)).astype(np.float32)
            colbert.append(m / np.linalg.norm(m, axis=1, keepdims=True))
    return M3Output(dense=dense, sparse=sparse, colbert=colbert)


def make_query(rng: np.random.Generator, modes=("dense", "sparse", "colbert")) -> M3Output:
    q = make_encoded(rng, 1, modes)
    if q.sparse is not None and not q.sparse[0]:
        q.sparse[0][int(rng.integers(0, VOCAB))] = 0.7
    return q


class Reference:
    """The naive model of the store: an ordered dict of documents scored one by one."""

    def __init__(self) -> None:
        self.docs: dict[str, dict] = {}

    def add(self, enc: M3Output, ids, metadatas=None):
        for i, doc_id in enumerate(ids):
            self.docs.pop(doc_id, None)  # an upsert goes last
            self.docs[doc_id] = {
                "dense": None if enc.dense is None else enc.dense[i],
                "sparse": None if enc.sparse is None else enc.sparse[i],
                "colbert": None if enc.colbert is None else enc.colbert[i],
                "meta": {} if metadatas is None else metadatas[i],
            }

    def delete(self, ids):
        for doc_id in ids:
            self.docs.pop(doc_id, None)

    def score(self, mode, q: M3Output, doc) -> float:
        if mode == "dense":
            return float(np.dot(q.dense[0].astype(np.float64), doc["dense"].astype(np.float64)))
        if mode == "sparse":
            return lexical_score(q.sparse[0], doc["sparse"])
        return colbert_score(q.colbert[0], doc["colbert"])

    def search(self, q, *, k=10, modes=("dense", "sparse", "colbert"), weights=None, fusion="weighted",
               candidates=None, filter=None, ids=None):
        modes = (modes,) if isinstance(modes, str) else tuple(modes)
        pred = compile_filter(filter)
        allowed = [d for d in self.docs if (pred is None or pred(self.docs[d]["meta"])) and (ids is None or d in ids)]
        scores = {m: np.array([self.score(m, q, self.docs[d]) for d in allowed]) for m in modes}
        if len(modes) == 1:
            order = np.argsort(-scores[modes[0]], kind="stable")[:k]
            if modes[0] == "sparse":  # sparse alone: only documents sharing a token with the query
                order = order[scores["sparse"][order] > 0]
            return [(allowed[i], scores[modes[0]][i], {modes[0]: scores[modes[0]][i]}) for i in order]
        c = max(candidates or 100, k)
        cand = set()
        for m in modes:
            if m != "colbert":
                cand.update(np.argsort(-scores[m], kind="stable")[:c].tolist())
        cand = sorted(cand)
        per_mode = {m: scores[m][cand] for m in modes}
        fused = fuse(fusion, per_mode, resolve_weights(modes, weights, fusion))
        order = np.argsort(-fused, kind="stable")[:k]
        return [(allowed[cand[i]], fused[i], {m: per_mode[m][i] for m in modes}) for i in order]


def assert_same(hits: list[Hit], ref, atol=1e-5):
    assert [h.id for h in hits] == [r[0] for r in ref]
    for h, (_, score, scores) in zip(hits, ref):
        assert h.score == pytest.approx(score, abs=atol)
        assert set(h.scores) == set(scores)
        for m, v in scores.items():
            assert h.scores[m] == pytest.approx(v, abs=atol), m


@pytest.fixture(scope="module")
def populated():
    """A fp32 store built in several adds (several segments), with upserts and deletes, plus its reference."""
    rng = np.random.default_rng(0)
    store, ref = HybridStore(colbert_dtype="fp32"), Reference()
    n = 0
    for size in (60, 25, 40, 7, 3):
        enc = make_encoded(rng, size)
        ids = [f"d{n + i}" for i in range(size)]
        metas = [{"group": (n + i) % 4, "even": (n + i) % 2 == 0} for i in range(size)]
        store.add_encoded(enc, ids=ids, metadatas=metas)
        ref.add(enc, ids, metas)
        n += size
    # upserts of existing ids, then deletes (below the compaction threshold: tombstones stay)
    enc = make_encoded(rng, 5)
    up = ["d3", "d50", "d70", "d100", "d131"]
    metas = [{"group": 9, "even": False}] * 5
    store.add_encoded(enc, ids=up, metadatas=metas)
    ref.add(enc, up, metas)
    gone = ["d0", "d10", "d61", "d99", "nope"]
    assert store.delete(gone) == 4
    ref.delete(gone)
    # tombstones present: the dense index still holds the dead rows (compaction has not run)
    assert store.memory_bytes()["dense"] > len(store) * D * 4
    return store, ref


MODE_SETS = ["dense", "sparse", "colbert", ("dense", "sparse"), ("dense", "colbert"), ("sparse", "colbert"),
             ("dense", "sparse", "colbert")]


@pytest.mark.parametrize("modes", MODE_SETS)
@pytest.mark.parametrize("fusion", ["weighted", "rrf", "dbsf"])
def test_matches_bruteforce_reference(populated, modes, fusion):
    store, ref = populated
    rng = np.random.default_rng(hash((str(modes), fusion)) % 2**32)
    for _ in range(3):
        q = make_query(rng)
        hits = store.search_encoded(q, k=7, modes=modes, fusion=fusion, candidates=12)
        assert_same(hits, ref.search(q, k=7, modes=modes, fusion=fusion, candidates=12))
        assert all(h.metadata == ref.docs[h.id]["meta"] for h in hits)


@pytest.mark.parametrize(
    "flt",
    [{"group": 2}, {"even": True}, {"group": {"$in": [1, 9]}}, lambda md: md.get("group") == 3, {"group": 42}],
)
@pytest.mark.parametrize("modes", ["dense", "sparse", "colbert", ("dense", "sparse", "colbert")])
def test_filter_applies_before_topk(populated, flt, modes):
    store, ref = populated
    rng = np.random.default_rng(7)
    q = make_query(rng)
    hits = store.search_encoded(q, k=10, modes=modes, filter=flt, candidates=10)
    expected = ref.search(q, k=10, modes=modes, filter=flt, candidates=10)
    assert_same(hits, expected)
    n_match = sum(compile_filter(flt)(d["meta"]) for d in ref.docs.values())
    if modes == "sparse":  # sparse alone returns only documents sharing a token with the query
        assert len(hits) <= min(10, n_match) and all(h.score > 0 for h in hits)
    else:
        assert len(hits) == min(10, n_match)


def test_ids_restriction(populated):
    store, ref = populated
    q = make_query(np.random.default_rng(3))
    allowed = {"d1", "d2", "d3", "d77", "d0", "unknown"}  # d0 is deleted
    for modes in ("dense", "sparse", ("dense", "sparse", "colbert")):
        hits = store.search_encoded(q, k=10, modes=modes, ids=allowed)
        assert_same(hits, ref.search(q, k=10, modes=modes, ids=allowed))
        if modes == "sparse":  # only documents sharing a token with the query
            assert {h.id for h in hits} <= {"d1", "d2", "d3", "d77"}
        else:
            assert {h.id for h in hits} == {"d1", "d2", "d3", "d77"}
    assert store.search_encoded(q, ids=[]) == []
    both = store.search_encoded(q, k=10, ids=allowed, filter={"group": 9})
    assert [h.id for h in both] == ["d3"]


def test_batch_equals_single(populated):
    store, _ = populated
    rng = np.random.default_rng(11)
    qs = M3Output.concat([make_query(rng) for _ in range(5)])
    for modes in ("dense", "sparse", "colbert", ("dense", "sparse", "colbert")):
        batch = store.search_encoded_batch(qs, k=5, modes=modes, filter={"even": False})
        for i in range(5):
            single = store.search_encoded(qs[i], k=5, modes=modes, filter={"even": False})
            assert [h.id for h in single] == [h.id for h in batch[i]]
            np.testing.assert_allclose([h.score for h in single], [h.score for h in batch[i]], atol=1e-6)


def test_candidate_scores_are_exact_not_zero_filled():
    rng = np.random.default_rng(5)
    store, ref = HybridStore(colbert_dtype="fp32"), Reference()
    enc = make_encoded(rng, 300)
    ids = [str(i) for i in range(300)]
    store.add_encoded(enc, ids=ids)
    ref.add(enc, ids)
    q = make_query(rng)
    hits = store.search_encoded(q, k=20, candidates=5)
    # with 5 candidates per mode, most hits come from one list only, yet every mode score is exact
    for h in hits:
        for m in ("dense", "sparse", "colbert"):
            assert h.scores[m] == pytest.approx(ref.score(m, q, ref.docs[h.id]), abs=1e-5)
    assert len(hits) == 20  # candidates is raised to k
    small = store.search_encoded(q, k=3, candidates=5)
    assert len(small) == 3 and all(len(h.scores) == 3 for h in small)


def test_k_larger_than_corpus_and_empty_store():
    rng = np.random.default_rng(1)
    store = HybridStore()
    q = make_query(rng)
    assert store.search_encoded(q) == []
    assert store.search_encoded_batch(M3Output.concat([q, q])) == [[], []]
    store.add_encoded(make_encoded(rng, 4), ids=list("abcd"))
    for modes in ("dense", "sparse", "colbert", ("dense", "sparse", "colbert")):
        got = sorted(h.id for h in store.search_encoded(q, k=50, modes=modes))
        if modes == "sparse":  # only documents sharing a token with the query
            assert set(got) <= set("abcd")
        else:
            assert got == list("abcd")


def test_sparse_zero_scores_tie_by_insertion_order():
    rng = np.random.default_rng(2)
    store = HybridStore()
    enc = make_encoded(rng, 6, empty_sparse=True)
    store.add_encoded(enc, ids=["f", "e", "d", "c", "b", "a"])
    q = make_query(rng)
    # sparse alone: no document shares a token with the query, so nothing comes back (no zero-score padding)
    assert store.search_encoded(q, k=4, modes="sparse") == []
    # as a fusion first stage the sparse list is padded with zero-score documents in insertion order
    hits = store.search_encoded(q, k=6, modes=("dense", "sparse"), candidates=4, fusion="rrf")
    assert {h.id for h in hits} == {"f", "e", "d", "c", "b", "a"} - set() or len(hits) == 6
    assert all(h.scores["sparse"] == 0.0 for h in hits)


def test_delete_leaves_no_ghosts_and_compacts():
    rng = np.random.default_rng(4)
    store, ref = HybridStore(colbert_dtype="fp32"), Reference()
    enc = make_encoded(rng, 80)
    ids = [f"x{i}" for i in range(80)]
    store.add_encoded(enc, ids=ids)
    ref.add(enc, ids)
    q = make_query(rng)
    for modes in ("dense", "sparse", "colbert", ("dense", "sparse", "colbert")):
        top = store.search_encoded(q, k=3, modes=modes)[0].id
        assert store.delete([top]) == 1
        ref.delete([top])
        assert top not in store and top not in [h.id for h in store.search_encoded(q, k=80, modes=modes)]
    bytes_before = store.memory_bytes()
    victims = ids[:40]
    store.delete(victims)
    ref.delete(victims)
    # compacted: dead slots are gone from every index
    assert len(store) == len(ref.docs)
    assert store.memory_bytes()["dense"] == len(store) * D * 4 < bytes_before["dense"]
    assert store.memory_bytes()["colbert"] < bytes_before["colbert"]
    for modes in MODE_SETS:
        assert_same(store.search_encoded(q, k=80, modes=modes), ref.search(q, k=80, modes=modes))
    store.delete(store.ids())
    assert len(store) == 0 and store.search_encoded(q) == []
    assert store.modes == ("dense", "sparse", "colbert")  # modes survive deleting everything
    store.add_encoded(make_encoded(rng, 2), ids=["n1", "n2"])
    assert sorted(h.id for h in store.search_encoded(q, k=5)) == ["n1", "n2"]


def test_upsert_replaces_and_moves_to_end():
    rng = np.random.default_rng(6)
    store = HybridStore()
    store.add_encoded(make_encoded(rng, 3), ids=["a", "b", "c"], texts=["A", "B", "C"], metadatas=[{"v": 1}] * 3)
    new = make_encoded(rng, 1)
    store.add_encoded(new, ids=["a"], texts=["A2"], metadatas=[{"v": 2}])
    assert len(store) == 3
    assert store.ids() == ["b", "c", "a"]
    rec = store.get(["a", "zzz", "b"])
    assert [(r.id, r.text, r.metadata) for r in rec] == [("a", "A2", {"v": 2}), ("b", "B", {"v": 1})]
    top = store.search_encoded(M3Output(dense=new.dense), k=1, modes="dense")[0]
    assert top.id == "a" and top.score == pytest.approx(1.0, abs=1e-5)


def test_export_round_trip_and_int8_dequantised():
    rng = np.random.default_rng(8)
    enc = make_encoded(rng, 30)
    src = HybridStore(colbert_dtype="int8")
    src.add_encoded(enc, ids=[str(i) for i in range(30)], texts=[f"t{i}" for i in range(30)],
                    metadatas=[{"i": i} for i in range(30)])
    src.delete(["3"])
    ids, out, texts, metas = src.export()
    assert ids == [str(i) for i in range(30) if i != 3] and texts[0] == "t0" and metas[1] == {"i": 1}
    assert out.colbert[0].dtype == np.float32
    np.testing.assert_allclose(out.colbert[0], enc.colbert[0], atol=0.01)
    np.testing.assert_allclose(out.dense, np.delete(enc.dense, 3, axis=0))
    assert out.sparse[0] == pytest.approx(enc.sparse[0])
    dst = HybridStore(colbert_dtype="int8")
    dst.add_encoded(out, ids=ids, texts=texts, metadatas=metas)
    q = make_query(rng)
    a, b = src.search_encoded(q, k=10), dst.search_encoded(q, k=10)
    assert [h.id for h in a] == [h.id for h in b]
    sub = src.export(["5", "missing", "1"])
    assert sub[0] == ["5", "1"] and len(sub[1]) == 2


@pytest.mark.parametrize("dtype, atol", [("fp16", 2e-3), ("int8", 1.5e-2)])
def test_colbert_storage_dtypes_close_to_fp32(dtype, atol):
    rng = np.random.default_rng(9)
    enc = make_encoded(rng, 50)
    ids = [str(i) for i in range(50)]
    exact, approx = HybridStore(colbert_dtype="fp32"), HybridStore(colbert_dtype=dtype)
    exact.add_encoded(enc, ids=ids)
    approx.add_encoded(enc, ids=ids)
    q = make_query(rng)
    a = {h.id: h.scores["colbert"] for h in exact.search_encoded(q, k=50, modes="colbert")}
    b = {h.id: h.scores["colbert"] for h in approx.search_encoded(q, k=50, modes="colbert")}
    assert a.keys() == b.keys()
    assert max(abs(a[i] - b[i]) for i in a) < atol
    per_token = approx.memory_bytes()["colbert"] / sum(len(m) for m in enc.colbert)
    assert per_token < exact.memory_bytes()["colbert"] / sum(len(m) for m in enc.colbert)


def test_hnsw_recall_filters_and_deletes():
    rng = np.random.default_rng(10)
    enc = make_encoded(rng, 400, modes=("dense",))
    ids = [str(i) for i in range(400)]
    metas = [{"g": i % 10} for i in range(400)]
    flat, hnsw = HybridStore(), HybridStore(dense_index="hnsw", hnsw_m=16)
    flat.add_encoded(enc, ids=ids, metadatas=metas)
    hnsw.add_encoded(enc, ids=ids, metadatas=metas)
    recall = []
    for _ in range(10):
        q = make_query(rng, ("dense",))
        a = {h.id for h in flat.search_encoded(q, k=10, modes="dense")}
        b = {h.id for h in hnsw.search_encoded(q, k=10, modes="dense")}
        recall.append(len(a & b) / 10)
        # a selective filter is served exactly
        fa = [h.id for h in flat.search_encoded(q, k=5, modes="dense", filter={"g": 3})]
        assert [h.id for h in hnsw.search_encoded(q, k=5, modes="dense", filter={"g": 3})] == fa
    assert np.mean(recall) >= 0.9
    # a broad filter goes through the graph with an ID selector: every hit passes it, k hits come back
    broad = hnsw.search_encoded(q, k=10, modes="dense", filter={"g": {"$lt": 5}})
    assert len(broad) == 10 and all(int(h.id) % 10 < 5 for h in broad)
    top = hnsw.search_encoded(q, k=1, modes="dense")[0].id
    hnsw.delete([top])
    assert top not in [h.id for h in hnsw.search_encoded(q, k=400, modes="dense")]
    assert len(hnsw.search_encoded(q, k=400, modes="dense")) == 399
    hnsw.delete(ids[:200])  # compaction rebuilds the graph
    assert len(hnsw) == 400 - len(set(ids[:200]) | {top})
    assert hnsw.memory_bytes()["dense"] == len(hnsw) * (D * 4 + hnsw.hnsw_m * 2 * 4)
    assert all(int(h.id) >= 200 for h in hnsw.search_encoded(q, k=50, modes="dense"))


def test_partial_modes_store():
    rng = np.random.default_rng(12)
    store = HybridStore()
    store.add_encoded(make_encoded(rng, 10, modes=("dense", "sparse")), ids=[str(i) for i in range(10)])
    assert store.modes == ("dense", "sparse")
    q = make_query(rng)
    with pytest.raises(ValueError, match=r"holds no \['colbert'\]"):
        store.search_encoded(q)
    assert len(store.search_encoded(q, modes=("dense", "sparse"), k=3)) == 3
    # extra outputs in later adds are ignored; missing ones are an error
    store.add_encoded(make_encoded(rng, 2), ids=["x", "y"])
    with pytest.raises(ValueError, match="no 'sparse' output"):
        store.add_encoded(make_encoded(rng, 2, modes=("dense",)), ids=["z", "w"])


def test_bad_input():
    rng = np.random.default_rng(13)
    store = HybridStore()
    enc = make_encoded(rng, 3)
    q = make_query(rng)
    store.add_encoded(enc, ids=["a", "b", "c"])
    for k in (0, -1, 1.5, True, "3", None):
        with pytest.raises(ValueError, match="k must be a positive int"):
            store.search_encoded(q, k=k)
    with pytest.raises(ValueError, match="unknown mode 'bm42'"):
        store.search_encoded(q, modes="bm42")
    with pytest.raises(ValueError, match="modes is empty"):
        store.search_encoded(q, modes=())
    with pytest.raises(ValueError, match="twice"):
        store.search_encoded(q, modes=("dense", "dense"))
    with pytest.raises(ValueError, match="2 value"):
        store.search_encoded(q, modes=("dense",), weights=[1, 2])
    with pytest.raises(ValueError, match="not searched"):
        store.search_encoded(q, modes=("dense",), weights={"dense": 1, "sparse": 1})
    with pytest.raises(ValueError, match="unknown fusion"):
        store.search_encoded(q, fusion="max")
    with pytest.raises(ValueError, match="candidates"):
        store.search_encoded(q, candidates=0)
    with pytest.raises(TypeError, match="unknown search option"):
        store.search_encoded(q, top_k=3)
    with pytest.raises(ValueError, match="exactly one row"):
        store.search_encoded(M3Output.concat([q, q]))
    with pytest.raises(TypeError, match="M3Output"):
        store.search_encoded([0.1] * D)
    with pytest.raises(ValueError, match="no 'colbert' output"):
        store.search_encoded(M3Output(dense=q.dense, sparse=q.sparse))
    with pytest.raises(ValueError, match="dense dimension 5"):
        store.search_encoded(M3Output(dense=np.ones((1, 5), np.float32)), modes="dense")
    with pytest.raises(ValueError, match="ColBERT dimension 3"):
        store.search_encoded(M3Output(colbert=[np.ones((2, 3), np.float32)]), modes="colbert")
    with pytest.raises(TypeError, match="ids must be a list of strings, not a single string"):
        store.search_encoded(q, ids="a")
    with pytest.raises(TypeError, match=r"ids\[0\] must be a str"):
        store.search_encoded(q, ids=[1])
    with pytest.raises(ValueError, match="unknown operator"):
        store.search_encoded(q, filter={"a": {"$bad": 1}})
    with pytest.raises(ValueError, match="needs an encoder"):
        store.search_encoded(q, explain=True)
    with pytest.raises(ValueError, match="needs an encoder"):
        store.search("hello")
    with pytest.raises(ValueError, match="needs an encoder"):
        store.add(["hello"])
    # adding
    with pytest.raises(ValueError, match="duplicate ids within one add: \\['a'\\]"):
        store.add_encoded(enc, ids=["a", "b2", "a"])
    with pytest.raises(ValueError, match="got 2 ids for 3"):
        store.add_encoded(enc, ids=["a", "b"])
    with pytest.raises(ValueError, match="got 2 texts for 3"):
        store.add_encoded(enc, texts=["a", "b"])
    with pytest.raises(ValueError, match="got 1 metadatas for 3"):
        store.add_encoded(enc, metadatas=[{}])
    with pytest.raises(TypeError, match=r"ids\[1\] must be a str"):
        store.add_encoded(enc, ids=["a", 2, "c"])
    with pytest.raises(TypeError, match="not a single string"):
        store.add_encoded(enc[0], ids="a")
    with pytest.raises(TypeError, match="JSON-serialisable"):
        store.add_encoded(enc[0], metadatas=[{"when": object()}])
    with pytest.raises(TypeError, match="JSON-serialisable"):
        store.add_encoded(enc[0], metadatas=[{"x": float("nan")}])
    with pytest.raises(TypeError, match="keys must be strings"):
        store.add_encoded(enc[0], metadatas=[{1: "x"}])
    with pytest.raises(ValueError, match="dense dimension 4"):
        store.add_encoded(M3Output(dense=np.ones((1, 4), np.float32), sparse=[{}], colbert=[np.ones((1, DC))]))
    with pytest.raises(ValueError, match="ColBERT dimensions"):
        store.add_encoded(M3Output(dense=enc.dense[:1], sparse=[{}], colbert=[np.ones((1, 3))]))
    with pytest.raises(ValueError, match="token ids must be non-negative"):
        store.add_encoded(M3Output(dense=enc.dense[:1], sparse=[{-1: 1.0}], colbert=enc.colbert[:1]))
    with pytest.raises(TypeError, match="M3Output"):
        store.add_encoded({"dense": enc.dense})
    assert HybridStore().add_encoded(M3Output(dense=np.zeros((0, 4), np.float32))) == []
    assert len(store) == 3 and store.ids() == ["a", "b", "c"]  # failed adds changed nothing
    with pytest.raises(ValueError, match="dense_index"):
        HybridStore(dense_index="ivf")
    with pytest.raises(ValueError, match="colbert_dtype"):
        HybridStore(colbert_dtype="bf16")
    with pytest.raises(TypeError, match="ids must be a list"):
        store.delete("a")


def test_concurrent_search_and_writes_stay_consistent():
    rng = np.random.default_rng(14)
    store = HybridStore(colbert_dtype="fp32")
    vectors: dict[str, np.ndarray] = {}
    lock = threading.Lock()

    def add(prefix: str, n: int) -> None:
        enc = make_encoded(np.random.default_rng(abs(hash(prefix)) % 2**32), n)
        ids = [f"{prefix}-{i}" for i in range(n)]
        with lock:
            for i, doc_id in enumerate(ids):
                vectors[doc_id] = enc.dense[i]
        store.add_encoded(enc, ids=ids)

    add("base", 150)
    queries = [make_query(rng) for _ in range(4)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                for q in queries:
                    for modes in ("dense", ("dense", "sparse", "colbert")):
                        hits = store.search_encoded(q, k=20, modes=modes)
                        ids = [h.id for h in hits]
                        assert len(ids) == len(set(ids)) and len(ids) == 20
                        assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
                        with lock:
                            for h in hits:  # the score belongs to this id's vector: no slot mix-ups
                                assert h.scores["dense"] == pytest.approx(float(vectors[h.id] @ q.dense[0]), abs=1e-5)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def writer() -> None:
        try:
            for r in range(12):
                add(f"w{r}", 15)
                store.delete([f"w{r}-{i}" for i in range(0, 15, 2)] + [f"base-{r * 5 + j}" for j in range(5)])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    w = threading.Thread(target=writer)
    for t in readers:
        t.start()
    w.start()
    w.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors[0]
    assert len(store) == 150 - 60 + 12 * 7


# --------------------------------------------------------------------------------------- persistence
def _store_for_save(dtype="fp16", dense_index="flat") -> tuple[HybridStore, M3Output]:
    rng = np.random.default_rng(15)
    store = HybridStore(colbert_dtype=dtype, dense_index=dense_index)
    store.add_encoded(make_encoded(rng, 40), ids=[f"s{i}" for i in range(40)],
                      texts=[f"text {i} ✓ 中文" for i in range(40)], metadatas=[{"i": i, "tags": ["x"]} for i in range(40)])
    store.add_encoded(make_encoded(rng, 10), ids=[f"t{i}" for i in range(10)])
    store.delete(["s1", "s2"])
    return store, make_query(rng)


@pytest.mark.parametrize("dtype, dense_index", [("fp16", "flat"), ("int8", "hnsw"), ("fp32", "flat")])
def test_save_load_round_trip(tmp_path, dtype, dense_index):
    store, q = _store_for_save(dtype, dense_index)
    before = store.search_encoded(q, k=10)
    store.save(tmp_path / "idx")
    loaded = HybridStore.load(tmp_path / "idx")
    assert loaded.ids() == store.ids() and loaded.modes == store.modes
    assert loaded.colbert_dtype == dtype and loaded.dense_index == dense_index
    after = loaded.search_encoded(q, k=10)
    assert [(h.id, h.text, h.metadata) for h in after] == [(h.id, h.text, h.metadata) for h in before]
    np.testing.assert_allclose([h.score for h in after], [h.score for h in before], atol=1e-6)
    header = json.loads((tmp_path / "idx" / "store.json").read_text())
    assert header["format_version"] == 1 and header["count"] == 48
    assert not list(tmp_path.glob(".idx*"))  # no temporary folders left behind
    loaded.add_encoded(make_encoded(np.random.default_rng(0), 3), ids=["n1", "n2", "n3"])
    assert len(loaded) == 51
    loaded.save(tmp_path / "idx")  # overwrite an existing index
    assert len(HybridStore.load(tmp_path / "idx")) == 51


def test_save_empty_and_partial_stores(tmp_path):
    HybridStore().save(tmp_path / "empty")
    assert len(HybridStore.load(tmp_path / "empty")) == 0
    s = HybridStore()
    s.add_encoded(make_encoded(np.random.default_rng(1), 5, modes=("sparse",)), ids=list("abcde"))
    s.save(tmp_path / "sp")
    t = HybridStore.load(tmp_path / "sp")
    assert t.modes == ("sparse",)
    q = make_query(np.random.default_rng(2), ("sparse",))
    assert [h.id for h in t.search_encoded(q, k=5, modes="sparse")] == [h.id for h in s.search_encoded(q, k=5, modes="sparse")]


def test_crash_mid_save_keeps_old_index(tmp_path, monkeypatch):
    store, q = _store_for_save()
    store.save(tmp_path / "idx")
    expected = [h.id for h in HybridStore.load(tmp_path / "idx").search_encoded(q, k=5)]
    store.add_encoded(make_encoded(np.random.default_rng(3), 5), ids=[f"new{i}" for i in range(5)])
    calls = {"n": 0}
    real_save = np.save

    def failing_save(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full (simulated)")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError, match="simulated"):
        store.save(tmp_path / "idx")
    monkeypatch.undo()
    old = HybridStore.load(tmp_path / "idx")
    assert len(old) == 48 and [h.id for h in old.search_encoded(q, k=5)] == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_save_refuses_to_clobber_other_folders(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        HybridStore().save(tmp_path / "docs")
    assert (tmp_path / "docs" / "thesis.tex").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        HybridStore().save(tmp_path / "file")


@pytest.mark.parametrize(
    "damage, match",
    [
        ("truncate:dense.npy", "truncated"),
        ("flip:colbert_tokens.npy", "checksum"),
        ("flip:records.json", "checksum"),
        ("delete:sparse_data.npy", "missing"),
        ("header:garbage", "corrupt"),
        ("header:version", "format version 99"),
        ("header:count", "rows|entries"),
        ("header:shape", "expected"),
        ("header:modes", "unknown modes"),
    ],
)
def test_damaged_index_gives_clear_value_error(tmp_path, damage, match):
    store, _ = _store_for_save()
    folder = tmp_path / "idx"
    store.save(folder)
    kind, name = damage.split(":")
    header_path = folder / "store.json"
    header = json.loads(header_path.read_text())
    if kind == "truncate":
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    elif kind == "flip":
        data = bytearray((folder / name).read_bytes())
        data[-3] ^= 0xFF
        (folder / name).write_bytes(bytes(data))
    elif kind == "delete":
        (folder / name).unlink()
    elif name == "garbage":
        header_path.write_text("{not json")
    else:
        if name == "version":
            header["format_version"] = 99
        elif name == "count":
            header["count"] = 7
        elif name == "shape":
            header["files"]["dense.npy"]["shape"] = [48, 99]
        elif name == "modes":
            header["modes"] = ["dense", "bm42"]
        header_path.write_text(json.dumps(header))
    with pytest.raises(ValueError, match=match):
        HybridStore.load(folder)
    with pytest.raises(FileNotFoundError):
        HybridStore.load(tmp_path / "nowhere")


class _FakeEncoder:
    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        self.dense_dim, self.colbert_dim = D, DC

    def encode_queries(self, *a, **k):  # pragma: no cover - never called here
        raise AssertionError


def test_load_refuses_a_different_encoder(tmp_path):
    rng = np.random.default_rng(16)
    store = HybridStore(_FakeEncoder("aaaa"))
    store.add_encoded(make_encoded(rng, 5), ids=list("abcde"))
    store.save(tmp_path / "idx")
    assert json.loads((tmp_path / "idx" / "store.json").read_text())["fingerprint"] == "aaaa"
    assert len(HybridStore.load(tmp_path / "idx", _FakeEncoder("aaaa"))) == 5
    with pytest.raises(ValueError, match="fingerprint aaaa.*fingerprint bbbb"):
        HybridStore.load(tmp_path / "idx", _FakeEncoder("bbbb"))
    loaded = HybridStore.load(tmp_path / "idx")
    assert loaded.fingerprint == "aaaa" and loaded.encoder is None


# --------------------------------------------------------------------------------------- text level
TEXTS = [
    "The cat sat on the mat.",
    "Dogs chase cats in the garden.",
    "Quantum computing uses qubits.",
    "机器学习是人工智能的一个分支。",
    "Emoji party 🎉🎉 tonight!",
    "",
    "The stock market fell sharply today. " * 40,
]


@pytest.fixture(scope="module")
def text_store(tiny_encoder):
    store = HybridStore(tiny_encoder, colbert_dtype="fp32")
    ids = store.add(TEXTS, metadatas=[{"i": i} for i in range(len(TEXTS))])
    return store, ids


def test_text_add_and_search_match_encoded(text_store, tiny_encoder):
    store, ids = text_store
    assert store.modes == tiny_encoder.available_modes and len(store) == len(TEXTS)
    assert store.fingerprint == tiny_encoder.fingerprint
    q = tiny_encoder.encode_queries("cats on mats")
    ref = Reference()
    ref.add(tiny_encoder.encode_documents(TEXTS), ids, [{"i": i} for i in range(len(TEXTS))])
    for modes in ("dense", "sparse", "colbert", ("dense", "sparse", "colbert")):
        hits = store.search("cats on mats", k=4, modes=modes)
        assert_same(hits, ref.search(q, k=4, modes=modes), atol=1e-4)
        assert hits[0].text in TEXTS
    for weird in ("", "🎉", "机器"):
        assert len(store.search(weird, k=3)) == 3
    batch = store.search_batch(["cats on mats", "qubits", ""], k=3, modes=("dense", "sparse"))
    singles = [store.search(t, k=3, modes=("dense", "sparse")) for t in ["cats on mats", "qubits", ""]]
    assert [[h.id for h in r] for r in batch] == [[h.id for h in r] for r in singles]
    with pytest.raises(TypeError, match="query must be a str"):
        store.search(["a"])
    with pytest.raises(TypeError, match="texts must be a list"):
        store.add("a single string")


def test_search_encodes_only_needed_heads(text_store, monkeypatch):
    store, _ = text_store
    seen = []
    real = store.encoder.encode_queries

    def spy(texts, **kwargs):
        seen.append({m: kwargs[m] for m in ("dense", "sparse", "colbert")})
        return real(texts, **kwargs)

    monkeypatch.setattr(store.encoder, "encode_queries", spy)
    store.search("x", modes="dense")
    store.search("x", modes=("dense", "colbert"), explain=True)
    store.search_batch(["x", "y", "z"], modes="sparse")
    assert seen == [
        {"dense": True, "sparse": False, "colbert": False},
        {"dense": True, "sparse": False, "colbert": True},  # explain applies only when sparse is searched
        {"dense": False, "sparse": True, "colbert": False},
    ]


def test_explain_gives_token_strings_and_contributions(text_store, tiny_encoder):
    store, ids = text_store
    hits = store.search("The cat sat on the mat", k=3, modes="sparse", explain=True)
    q = tiny_encoder.encode_queries("The cat sat on the mat").sparse[0]
    docs = tiny_encoder.encode_documents(TEXTS).sparse
    for h in hits:
        d = docs[ids.index(h.id)]
        matched = {t: q[t] * d[t] for t in q if t in d}
        expected: dict[str, float] = {}
        for name, c in zip(tiny_encoder.decode_tokens(list(matched)), matched.values()):
            expected[name] = expected.get(name, 0.0) + c
        assert h.explain == pytest.approx(expected, abs=1e-5)
        assert sum(h.explain.values()) == pytest.approx(h.scores["sparse"], abs=1e-4)
        assert all(isinstance(t, str) for t in h.explain)
    assert hits[0].explain  # the top hit shares tokens with the query
    assert store.search("cat", k=2, modes="dense")[0].explain is None


def test_flat_index_in_blocks_matches_reference(tmp_path, monkeypatch):
    """Small FAISS blocks (24 vectors) so search, filters, deletes, compaction and save/load cross blocks."""
    import m3_rag.index.dense as dense_mod

    monkeypatch.setattr(dense_mod, "_DENSE_BLOCK_BYTES", 24 * 4 * D)
    rng = np.random.default_rng(21)
    store, ref = HybridStore(colbert_dtype="fp32"), Reference()
    for start, size in ((0, 30), (30, 50), (80, 7)):
        enc = make_encoded(rng, size)
        ids = [f"b{i}" for i in range(start, start + size)]
        metas = [{"g": i % 3} for i in range(start, start + size)]
        store.add_encoded(enc, ids=ids, metadatas=metas)
        ref.add(enc, ids, metas)
    victims = ["b1", "b25", "b47", "b50", "b86"]
    store.delete(victims)
    ref.delete(victims)
    q = make_query(rng)
    for flt in (None, {"g": 1}, {"g": {"$in": [0, 2]}}):
        for modes in ("dense", ("dense", "sparse", "colbert")):
            assert_same(store.search_encoded(q, k=12, modes=modes, filter=flt, candidates=15),
                        ref.search(q, k=12, modes=modes, filter=flt, candidates=15))
    batch = store.search_encoded_batch(M3Output.concat([q, make_query(rng)]), k=30, modes="dense")
    assert [h.id for h in batch[0]] == [r[0] for r in ref.search(q, k=30, modes="dense")]
    ids, out, _, _ = store.export()
    np.testing.assert_allclose(out.dense, np.stack([ref.docs[i]["dense"] for i in ids]))
    store.save(tmp_path / "idx")
    loaded = HybridStore.load(tmp_path / "idx")
    assert loaded.memory_bytes()["dense"] == 82 * D * 4  # compacted on save
    assert_same(loaded.search_encoded(q, k=12), ref.search(q, k=12))
    store.delete([f"b{i}" for i in range(60)])  # compaction rebuilds the blocks
    ref.delete([f"b{i}" for i in range(60)])
    assert store.memory_bytes()["dense"] == len(store) * D * 4 and len(store) == len(ref.docs)
    assert_same(store.search_encoded(q, k=40, modes="dense"), ref.search(q, k=40, modes="dense"))
