"""QdrantEdgeStore (Qdrant's engine in-process) against HybridStore: parity, persistence, bad input, a real
SIGKILL, and migration between the three stores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

qe = pytest.importorskip("qdrant_edge")

from m3_rag import M3Output  # noqa: E402
from m3_rag.qdrant_edge import SIDECAR, QdrantEdgeStore, StoreLockedError, to_edge_filter  # noqa: E402
from m3_rag.store import HybridStore  # noqa: E402

N, D, C, V = 260, 48, 16, 120
MODE_SETS = [
    ("dense",), ("sparse",), ("colbert",), ("dense", "sparse"), ("dense", "colbert"), ("sparse", "colbert"),
    ("dense", "sparse", "colbert"),
]
FUSIONS = ("weighted", "rrf", "dbsf")
COMBOS = [(m, "weighted") for m in MODE_SETS[:3]] + [(m, f) for m in MODE_SETS[3:] for f in FUSIONS]
REPO = Path(__file__).resolve().parents[1]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def synthetic(n: int, seed: int, d: int = D, c: int = C) -> M3Output:
    """BGE-M3-shaped rows: unit dense, 1-12 positive sparse weights (Zipf-ish vocabulary), unit ColBERT tokens."""
    rng = np.random.default_rng(seed)
    dense = _unit(rng.standard_normal((n, d)))
    p = 1.0 / np.arange(1, V + 1)
    p /= p.sum()
    sparse = []
    for _ in range(n):
        toks = rng.choice(V, size=int(rng.integers(1, 13)), replace=False, p=p)
        sparse.append({int(t): float(np.float32(rng.uniform(0.01, 0.4))) for t in toks})
    colbert = [_unit(rng.standard_normal((int(rng.integers(2, 12)), c))) for _ in range(n)]
    return M3Output(dense=dense, sparse=sparse, colbert=colbert)


def meta(i: int) -> dict:
    md = {"n": i, "parity": "even" if i % 2 == 0 else "odd", "score": i / 10, "tags": ["t%d" % (i % 3), "all"]}
    if i % 5 == 0:
        md["special"] = True
    if i % 10 == 1:
        md["special"] = False
    if i % 7 == 0:
        md["note"] = None
    return md


@pytest.fixture(scope="module")
def data():
    docs = synthetic(N, 0)
    # exact ties: documents 7, 8 and 9 copy document 3 in every mode; 20 copies 21's sparse row
    for j in (7, 8, 9):
        docs.dense[j] = docs.dense[3]
        docs.sparse[j] = dict(docs.sparse[3])
        docs.colbert[j] = docs.colbert[3].copy()
    docs.sparse[20] = dict(docs.sparse[21])
    ids = [f"doc-{i}" for i in range(N)]
    texts = [f"text {i}" for i in range(N)]
    metas = [meta(i) for i in range(N)]
    q = synthetic(4, 1)
    # query 3 is document 3 itself: its top hits tie exactly in every mode
    q = M3Output(dense=np.vstack([q.dense[:3], docs.dense[3:4]]), sparse=q.sparse[:3] + [dict(docs.sparse[3])],
                 colbert=q.colbert[:3] + [docs.colbert[3].copy()])
    return ids, texts, metas, docs, q


@pytest.fixture(scope="module")
def pair(data, tmp_path_factory):
    ids, texts, metas, docs, _ = data
    hybrid = HybridStore(show_progress=False, colbert_dtype="fp32")
    hybrid.add_encoded(docs, ids=ids, texts=texts, metadatas=metas)
    edge = QdrantEdgeStore(tmp_path_factory.mktemp("edge") / "store", batch_size=64)
    edge.add_encoded(docs[:100], ids=ids[:100], texts=texts[:100], metadatas=metas[:100])  # two calls, three segments
    edge.add_encoded(docs[100:], ids=ids[100:], texts=texts[100:], metadatas=metas[100:])
    yield hybrid, edge
    edge.close()


def same(a, b, tol=1e-5):
    assert [h.id for h in a] == [h.id for h in b]
    for x, y in zip(a, b):
        assert x.text == y.text and x.metadata == y.metadata
        assert x.score == pytest.approx(y.score, abs=tol)
        assert set(x.scores) == set(y.scores)
        for m in x.scores:
            assert x.scores[m] == pytest.approx(y.scores[m], abs=tol)


# ------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("modes,fusion", COMBOS, ids=["+".join(m) + "-" + f for m, f in COMBOS])
def test_same_hits_as_hybridstore(pair, data, modes, fusion):
    hybrid, edge = pair
    q = data[4]
    for i in range(len(q)):
        for kw in ({"k": 10}, {"k": 4, "candidates": 15}, {"k": 1}, {"k": 300},
                   {"k": 10, "filter": {"parity": "even", "n": {"$gte": 30}}},
                   {"k": 6, "candidates": {modes[0]: 7}}):
            same(hybrid.search_encoded(q[i], modes=modes, fusion=fusion, **kw),
                 edge.search_encoded(q[i], modes=modes, fusion=fusion, **kw))


def test_ties_follow_insertion_order(pair, data):
    hybrid, edge = pair
    q = data[4][3]  # document 3 itself: 3, 7, 8 and 9 tie exactly in every mode
    group = ["doc-3", "doc-7", "doc-8", "doc-9"]
    for modes in MODE_SETS:
        got = [h.id for h in edge.search_encoded(q, modes=modes, k=N)]
        pos = [got.index(x) for x in group]
        assert pos == list(range(pos[0], pos[0] + 4)), (modes, got)  # adjacent, in insertion order
        assert got == [h.id for h in hybrid.search_encoded(q, modes=modes, k=N)]
        # the cut falls inside the tie: the earliest inserted win
        cut = pos[0] + 2
        assert [h.id for h in edge.search_encoded(q, modes=modes, k=cut)][-2:] == ["doc-3", "doc-7"]
        if "sparse" not in modes:
            assert pos[0] == 0  # doc 3 is its own nearest neighbour


def test_batch_equals_single_and_hybridstore(pair, data):
    hybrid, edge = pair
    q = data[4]
    for kw in ({"k": 5}, {"k": 7, "modes": "sparse"}, {"k": 3, "fusion": "rrf", "modes": ("dense", "colbert")}):
        batch = edge.search_encoded_batch(q, **kw)
        for i in range(len(q)):
            same(batch[i], edge.search_encoded(q[i], **kw))
            same(batch[i], hybrid.search_encoded(q[i], **kw))


FILTERS = [
    {"parity": "even"}, {"n": {"$gte": 40, "$lt": 100}}, {"score": {"$gt": 3.05}}, {"n": {"$in": [1, 2, 3, 500]}},
    {"parity": {"$ne": "even"}}, {"parity": {"$nin": ["even"]}}, {"note": None}, {"note": {"$exists": True}},
    {"note": {"$exists": False}}, {"tags": {"$contains": "t1"}}, {"parity": {"$contains": "dd"}},
    {"$or": [{"parity": "even"}, {"n": 3}]}, {"$not": {"parity": "even"}}, {"n": 5}, {"n": 5.0},
    {"missing": 3}, {"missing": {"$ne": 3}}, {"n": {"$in": []}},
    # booleans: evaluated client-side (qdrant-edge-py 0.9.0 turns MatchValue(True) into MatchValue(1))
    {"special": True}, {"special": False}, {"special": {"$ne": True}}, {"special": {"$in": [True]}},
    {"$or": [{"special": True}, {"n": {"$lt": 3}}]},
    # not expressible as a Qdrant payload filter: evaluated client-side, with HybridStore's semantics
    {"tags": ["t1", "all"]}, {"parity": {"$gt": "f"}}, {"tags": {"$contains": "all"}, "parity": {"$lte": "even"}},
]


@pytest.mark.parametrize("flt", FILTERS, ids=[str(f) for f in FILTERS])
def test_filters_match_hybridstore(pair, data, flt):
    hybrid, edge = pair
    q = data[4]
    for modes in (("dense",), ("sparse",), ("dense", "sparse", "colbert")):
        a = hybrid.search_encoded(q[0], modes=modes, k=300, filter=flt)
        b = edge.search_encoded(q[0], modes=modes, k=300, filter=flt)
        same(a, b)
    n_match = sum(1 for m in data[2] if __import__("m3_rag").filters.matches(flt, m))
    assert len(edge.search_encoded(q[0], modes="dense", k=300, filter=flt)) == n_match


def test_metadata_indexes_keep_filter_results(pair, data, tmp_path):
    ids, texts, metas, docs, q = data
    hybrid, _ = pair
    with QdrantEdgeStore(tmp_path / "s") as e:
        with pytest.raises(ValueError, match="needs documents first"):
            e.index_metadata("n", "number")
        e.add_encoded(docs, ids=ids, texts=texts, metadatas=metas)
        for field, kind in (("n", "number"), ("score", "number"), ("parity", "keyword"), ("tags", "keyword"),
                            ("note", "keyword")):
            e.index_metadata(field, kind)
        with pytest.raises(ValueError, match="kind must be"):
            e.index_metadata("n", "int")
        assert {"metadata.n", "metadata.parity"} <= set(e._shard.info().payload_schema)
        for flt in FILTERS:
            for modes in (("dense",), ("dense", "sparse", "colbert")):
                same(hybrid.search_encoded(q[1], modes=modes, k=300, filter=flt),
                     e.search_encoded(q[1], modes=modes, k=300, filter=flt))


def test_bool_filters_are_evaluated_client_side():
    assert to_edge_filter({"special": True}) is None
    assert to_edge_filter({"$or": [{"n": 1}, {"flag": {"$in": [False]}}]}) is None
    assert isinstance(to_edge_filter({"n": 1, "parity": "odd"}), qe.Filter)


def test_callable_filter_and_ids(pair, data):
    hybrid, edge = pair
    q = data[4][1]
    for kw in ({"filter": lambda m: m["n"] % 3 == 0}, {"ids": ["doc-5", "doc-50", "doc-3", "nope"]}, {"ids": []},
               {"ids": ["doc-4", "doc-5", "doc-6"], "filter": {"parity": "odd"}},
               {"ids": ["doc-4", "doc-5", "doc-10"], "filter": lambda m: m.get("special") is True}):
        for modes in (("dense",), ("sparse",), ("colbert",), ("dense", "sparse", "colbert")):
            same(hybrid.search_encoded(q, modes=modes, k=20, **kw), edge.search_encoded(q, modes=modes, k=20, **kw))


def test_sparse_zero_fill_and_rare_tokens(pair, data):
    hybrid, edge = pair
    rare = M3Output(sparse=[{V - 1: 1.0}], dense=data[4].dense[:1], colbert=data[4].colbert[:1])
    got = edge.search_encoded(rare, modes="sparse", k=60)
    assert len(got) < 60 and all(h.score > 0 for h in got)
    same(hybrid.search_encoded(rare, modes="sparse", k=60), got)
    for kw in ({"k": 30, "candidates": 110}, {"k": 30}, {"k": 5, "filter": {"parity": "odd"}}):
        same(hybrid.search_encoded(rare, modes=("dense", "sparse"), **kw),
             edge.search_encoded(rare, modes=("dense", "sparse"), **kw))
    nothing = M3Output(sparse=[{}], dense=data[4].dense[:1], colbert=data[4].colbert[:1])  # empty sparse query
    assert edge.search_encoded(nothing, modes="sparse", k=5) == []
    same(hybrid.search_encoded(nothing, k=5), edge.search_encoded(nothing, k=5))


def test_weights_and_depths(pair, data):
    hybrid, edge = pair
    q = data[4][2]
    for kw in ({"weights": [1.0, 0.0, 2.0]}, {"weights": {"dense": 0.1, "sparse": 3.0, "colbert": 1.0}},
               {"fusion": "rrf", "weights": [2, 1, 1]}, {"candidates": {"sparse": 40}},
               {"candidates": {"dense": 3, "sparse": 5}, "k": 8}):
        same(hybrid.search_encoded(q, k=8, **{k: v for k, v in kw.items() if k != "k"}),
             edge.search_encoded(q, k=8, **{k: v for k, v in kw.items() if k != "k"}))


# ------------------------------------------------------------------------------------------ CRUD
def test_crud_upsert_delete_get_order(data, tmp_path):
    ids, texts, metas, docs, q = data
    h = HybridStore(show_progress=False, colbert_dtype="fp32")
    with QdrantEdgeStore(tmp_path / "s") as e:
        assert len(e) == 0 and e.ids() == [] and e.get(["x"]) == [] and e.modes == ()
        assert e.search_encoded(q[0]) == [] and e.delete(["x"]) == 0 and e.export()[0] == []
        for s in (h, e):
            s.add_encoded(docs[:50], ids=ids[:50], texts=texts[:50], metadatas=metas[:50])
            assert s.delete(["doc-3", "doc-5", "nope", "doc-3"]) == 2
            s.add_encoded(docs[7:8], ids=["doc-7"], texts=["again"], metadatas=[{"n": 7}])  # upsert moves last
        assert e.ids() == h.ids() and e.ids()[-1] == "doc-7" and len(e) == len(h) == 48
        assert "doc-3" not in e and "doc-4" in e and 4 not in e
        assert e.get(["doc-7", "nope", "doc-4", "doc-7"]) == h.get(["doc-7", "nope", "doc-4", "doc-7"])
        a, b = h.export(), e.export()
        assert a[0] == b[0] and a[2] == b[2] and a[3] == b[3]
        np.testing.assert_array_equal(a[1].dense, b[1].dense)
        assert a[1].sparse == b[1].sparse
        for x, y in zip(a[1].colbert, b[1].colbert):
            np.testing.assert_array_equal(x, y)
        assert e.export(["doc-9", "nope", "doc-1"])[0] == ["doc-9", "doc-1"]
        for modes in MODE_SETS:
            same(h.search_encoded(q[0], modes=modes, k=48), e.search_encoded(q[0], modes=modes, k=48))
        e.clear()
        assert len(e) == 0 and e.modes == () and not (tmp_path / "s" / SIDECAR).exists()
        e.add_encoded(M3Output(dense=docs.dense[:3]), ids=["a", "b", "c"])  # other modes after clear
        assert e.modes == ("dense",) and len(e) == 3


def test_empty_rows_score_zero(tmp_path):
    enc = M3Output(dense=_unit(np.ones((3, 4))), sparse=[{}, {1: 0.5}, {}],
                   colbert=[np.zeros((0, 4), np.float32), _unit(np.ones((2, 4))), _unit(np.ones((1, 4)))])
    h = HybridStore(show_progress=False, colbert_dtype="fp32")
    h.add_encoded(enc, ids=["a", "b", "c"])
    with QdrantEdgeStore(tmp_path / "s") as e:
        e.add_encoded(enc, ids=["a", "b", "c"])
        q = M3Output(dense=_unit(np.ones((1, 4))), sparse=[{1: 1.0}], colbert=[_unit(np.ones((1, 4)))])
        for modes in MODE_SETS:
            same(h.search_encoded(q, modes=modes, k=3), e.search_encoded(q, modes=modes, k=3))
        assert e.export()[1].colbert[0].shape == (0, 4) and e.export()[1].sparse[0] == {}


# ------------------------------------------------------------------------------------------ persistence
class FakeEncoder:
    def __init__(self, fingerprint: str, dense_dim: int = D, colbert_dim: int = C) -> None:
        self.fingerprint = fingerprint
        self.dense_dim, self.colbert_dim = dense_dim, colbert_dim
        self.available_modes = ("dense", "sparse", "colbert")

    def encode_queries(self, *a, **k):  # pragma: no cover - never called here
        raise AssertionError


def test_reopen_keeps_everything_and_continues_the_order(data, tmp_path):
    ids, texts, metas, docs, q = data
    path = tmp_path / "s"
    e = QdrantEdgeStore(path, FakeEncoder("aaaa"))
    e.add_encoded(docs[:80], ids=ids[:80], texts=texts[:80], metadatas=metas[:80])
    e.delete(["doc-0"])
    before = [e.search_encoded(q[i], k=10) for i in range(len(q))]
    e.close()
    assert e.fingerprint == "aaaa" and json.loads((path / SIDECAR).read_text())["fingerprint"] == "aaaa"
    with pytest.raises(RuntimeError, match="is closed"):
        len(e)
    e = QdrantEdgeStore(path)  # no encoder: the recorded fingerprint is kept
    assert len(e) == 79 and e.modes == ("dense", "sparse", "colbert") and e.fingerprint == "aaaa"
    for i in range(len(q)):
        same(before[i], e.search_encoded(q[i], k=10))
    e.add_encoded(docs[:1], ids=["doc-1"])  # an upsert after reopen still moves last
    assert e.ids()[-1] == "doc-1" and e.ids()[0] == "doc-2"
    e.close()
    with QdrantEdgeStore(path, FakeEncoder("aaaa")) as e2:
        assert len(e2) == 79


def test_reopen_refuses_a_different_model_like_hybridstore(data, tmp_path):
    ids, _, _, docs, _ = data
    with QdrantEdgeStore(tmp_path / "e", FakeEncoder("aaaa")) as e:
        e.add_encoded(docs[:5], ids=ids[:5])
    h = HybridStore(FakeEncoder("aaaa"))
    h.add_encoded(docs[:5], ids=ids[:5])
    h.save(tmp_path / "h")
    with pytest.raises(ValueError) as he:
        HybridStore.load(tmp_path / "h", FakeEncoder("bbbb"))
    with pytest.raises(ValueError) as ee:
        QdrantEdgeStore(tmp_path / "e", FakeEncoder("bbbb"))
    assert str(ee.value) == str(he.value).replace(str(tmp_path / "h"), str(tmp_path / "e"))
    assert "fingerprint aaaa" in str(ee.value) and "fingerprint bbbb" in str(ee.value)
    # an encoder with other dimensions is refused too, with HybridStore.load's message
    with pytest.raises(ValueError) as he:
        HybridStore.load(tmp_path / "h", FakeEncoder("aaaa", dense_dim=D + 1))
    with pytest.raises(ValueError) as ee:
        QdrantEdgeStore(tmp_path / "e", FakeEncoder("aaaa", dense_dim=D + 1))
    assert str(ee.value) == str(he.value)
    with pytest.raises(ValueError, match="colbert_datatype='float32'"):
        QdrantEdgeStore(tmp_path / "e", colbert_datatype="float16")
    with QdrantEdgeStore(tmp_path / "e", colbert_datatype="float32") as e:  # the stored value is accepted
        assert len(e) == 5


# ------------------------------------------------------------------------------------------ storage options
def test_float16_colbert_is_close_not_equal(data, tmp_path):
    ids, texts, metas, docs, q = data
    h16 = HybridStore(show_progress=False)  # fp16 default
    h16.add_encoded(docs, ids=ids)
    with QdrantEdgeStore(tmp_path / "s", colbert_datatype="float16") as e:
        e.add_encoded(docs, ids=ids)
        for i in range(3):
            a = {x.id: x.scores["colbert"] for x in h16.search_encoded(q[i], modes="colbert", k=20)}
            b = {x.id: x.scores["colbert"] for x in e.search_encoded(q[i], modes="colbert", k=20)}
            common = set(a) & set(b)
            assert len(common) >= 15
            assert max(abs(a[d] - b[d]) for d in common) < 2e-3  # the engine rounds the query to float16 too
        # stored token values are HybridStore's fp16 values
        np.testing.assert_array_equal(e.export(["doc-4"])[1].colbert[0], h16.export(["doc-4"])[1].colbert[0])


@pytest.mark.parametrize("opts", [{"colbert_on_disk": True}, {"colbert_quantization": "scalar"},
                                  {"colbert_quantization": "binary"}], ids=str)
def test_storage_options_keep_exact_scores(pair, data, tmp_path, opts):
    ids, texts, metas, docs, q = data
    hybrid, _ = pair
    with QdrantEdgeStore(tmp_path / "s", **opts) as e:
        e.add_encoded(docs, ids=ids, texts=texts, metadatas=metas)
        for i in range(len(q)):
            same(hybrid.search_encoded(q[i], k=10), e.search_encoded(q[i], k=10))
            same(hybrid.search_encoded(q[i], modes="colbert", k=10), e.search_encoded(q[i], modes="colbert", k=10))
    with QdrantEdgeStore(tmp_path / "s") as e:
        assert all(getattr(e, k) == v for k, v in opts.items())


def test_optimize_then_exact_search_unchanged(pair, data, tmp_path):
    ids, texts, metas, docs, q = data
    hybrid, _ = pair
    with QdrantEdgeStore(tmp_path / "s", batch_size=50) as e:
        e.add_encoded(docs, ids=ids, texts=texts, metadatas=metas)
        e.delete(ids[:20])
        e.optimize()
        h = HybridStore(show_progress=False, colbert_dtype="fp32")
        h.add_encoded(docs[20:], ids=ids[20:], texts=texts[20:], metadatas=metas[20:])
        for i in range(len(q)):
            same(h.search_encoded(q[i], k=10), e.search_encoded(q[i], k=10))
    # exact=False lets the engine use HNSW where it built one (none at this size: still the exact answer)
    with QdrantEdgeStore(tmp_path / "s", exact=False, hnsw_ef=64) as e:
        for i in range(len(q)):
            same(h.search_encoded(q[i], k=10), e.search_encoded(q[i], k=10))
    with pytest.raises(ValueError, match="hnsw_ef"):
        QdrantEdgeStore(tmp_path / "s", hnsw_ef=0)


# ------------------------------------------------------------------------------------------ bad input
def test_bad_paths(tmp_path, data):
    ids, _, _, docs, _ = data
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        QdrantEdgeStore(f)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a QdrantEdgeStore directory: it holds other files"):
        QdrantEdgeStore(other)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]  # nothing written
    bare = tmp_path / "bare"
    shard = qe.EdgeShard.create(str(bare), qe.EdgeConfig(vectors={"v": qe.EdgeVectorParams(size=4, distance=qe.Distance.Dot)}))
    shard.close()
    with pytest.raises(ValueError, match="a bare Qdrant Edge shard"):
        QdrantEdgeStore(bare)
    with pytest.raises(TypeError, match="path must be a directory path"):
        QdrantEdgeStore(3)
    # a corrupt or tampered header
    with QdrantEdgeStore(tmp_path / "s") as e:
        e.add_encoded(docs[:3], ids=ids[:3])
    header = json.loads((tmp_path / "s" / SIDECAR).read_text())
    (tmp_path / "s" / SIDECAR).write_text("{not json")
    with pytest.raises(ValueError, match="is corrupt"):
        QdrantEdgeStore(tmp_path / "s")
    (tmp_path / "s" / SIDECAR).write_text(json.dumps(dict(header, dims={"dense": D + 2, "colbert": C})))
    with pytest.raises(ValueError, match="does not match"):
        QdrantEdgeStore(tmp_path / "s")
    (tmp_path / "s" / SIDECAR).write_text(json.dumps(dict(header, modes=["dense", "colbert"])))
    with pytest.raises(ValueError, match="does not match"):
        QdrantEdgeStore(tmp_path / "s")
    (tmp_path / "s" / SIDECAR).write_text(json.dumps(dict(header, format_version=99)))
    with pytest.raises(ValueError, match="format version 99"):
        QdrantEdgeStore(tmp_path / "s")
    (tmp_path / "s" / SIDECAR).write_text(json.dumps(header))
    with QdrantEdgeStore(tmp_path / "s") as e:
        assert len(e) == 3


def test_other_sizes_and_modes_are_refused_like_hybridstore(data, tmp_path):
    ids, _, _, docs, _ = data
    with QdrantEdgeStore(tmp_path / "s") as e:
        e.add_encoded(docs[:3], ids=ids[:3])
    h = HybridStore()
    h.add_encoded(docs[:3], ids=ids[:3])
    with QdrantEdgeStore(tmp_path / "s") as e:  # after a reopen
        for bad in (M3Output(dense=np.ones((1, D + 1), np.float32), sparse=[{}], colbert=[np.ones((1, C), np.float32)]),
                    M3Output(dense=docs.dense[:1], sparse=[{}], colbert=[np.ones((1, C + 2), np.float32)]),
                    M3Output(dense=docs.dense[:1], colbert=docs.colbert[:1])):
            with pytest.raises(ValueError) as he:
                h.add_encoded(bad, ids=["z"])
            with pytest.raises(ValueError) as ee:
                e.add_encoded(bad, ids=["z"])
            assert str(ee.value) == str(he.value)
        assert len(e) == 3 and "z" not in e


def _errors(fn_h, fn_e):
    with pytest.raises(Exception) as he:
        fn_h()
    with pytest.raises(Exception) as ee:
        fn_e()
    a, b = str(he.value), str(ee.value)
    if "needs an encoder:" in a:  # the hint that follows names the store's own constructor
        a, b = a.split(":")[0], b.split(":")[0]
    b = b.replace(", server_fusion", "")  # the Edge store takes one option more (server_fusion), listed last
    assert type(ee.value) is type(he.value) and a == b, (he.value, ee.value)


def test_hybridstore_bad_input_gets_the_same_errors(data, tmp_path):
    ids, _, _, docs, q = data
    h = HybridStore()
    h.add_encoded(docs[:3], ids=["a", "b", "c"])
    with QdrantEdgeStore(tmp_path / "s") as e:
        e.add_encoded(docs[:3], ids=["a", "b", "c"])
        q0 = q[0]
        calls = [lambda s, k=k: s.search_encoded(q0, k=k) for k in (0, -1, 1.5, True, "3", None)] + [
            lambda s: s.search_encoded(q0, modes="bm25"),
            lambda s: s.search_encoded(q0, modes=()),
            lambda s: s.search_encoded(q0, modes=("dense", "dense")),
            lambda s: s.search_encoded(q0, modes=("dense",), weights=[1, 2]),
            lambda s: s.search_encoded(q0, modes=("dense",), weights={"dense": 1, "sparse": 1}),
            lambda s: s.search_encoded(q0, fusion="max"),
            lambda s: s.search_encoded(q0, candidates=0),
            lambda s: s.search_encoded(q0, top_k=3),
            lambda s: s.search_encoded(M3Output.concat([q0, q0])),
            lambda s: s.search_encoded([0.1] * D),
            lambda s: s.search_encoded(M3Output(dense=q0.dense, sparse=q0.sparse)),
            lambda s: s.search_encoded(M3Output(dense=np.ones((1, 5), np.float32)), modes="dense"),
            lambda s: s.search_encoded(M3Output(dense=np.full((1, D), np.nan, np.float32)), modes="dense"),
            lambda s: s.search_encoded(M3Output(colbert=[np.ones((2, 3), np.float32)]), modes="colbert"),
            lambda s: s.search_encoded(q0, ids="a"),
            lambda s: s.search_encoded(q0, ids=[1]),
            lambda s: s.search_encoded(q0, filter={"a": {"$bad": 1}}),
            lambda s: s.search_encoded(q0, filter={"$xor": []}),
            lambda s: s.search_encoded(q0, filter=3),
            lambda s: s.search_encoded(q0, explain=True),
            lambda s: s.search("hello"),
            lambda s: s.search(["hello"]),
            lambda s: s.search_batch("hello"),
            lambda s: s.add(["hello"]),
            lambda s: s.add_encoded(docs[:3], ids=["a", "b2", "a"]),
            lambda s: s.add_encoded(docs[:3], ids=["a", "b"]),
            lambda s: s.add_encoded(docs[:3], texts=["a", "b"]),
            lambda s: s.add_encoded(docs[:3], texts=["a", 2, "c"]),
            lambda s: s.add_encoded(docs[:3], metadatas=[{}]),
            lambda s: s.add_encoded(docs[:3], ids=["a", 2, "c"]),
            lambda s: s.add_encoded(docs[:1], ids="a"),
            lambda s: s.add_encoded(docs[:1], metadatas=[{"when": object()}]),
            lambda s: s.add_encoded(docs[:1], metadatas=[{"x": float("nan")}]),
            lambda s: s.add_encoded(docs[:1], metadatas=[{1: "x"}]),
            lambda s: s.add_encoded(docs[:1], metadatas={"a": 1}),
            lambda s: s.add_encoded(M3Output(dense=np.ones((1, 4), np.float32), sparse=[{}], colbert=[np.ones((1, C))])),
            lambda s: s.add_encoded(M3Output(dense=docs.dense[:1], sparse=[{}], colbert=[np.ones((1, 3))])),
            lambda s: s.add_encoded(M3Output(dense=docs.dense[:1], sparse=[{-1: 1.0}], colbert=docs.colbert[:1])),
            lambda s: s.add_encoded(M3Output(dense=docs.dense[:1], sparse=[{1: float("inf")}], colbert=docs.colbert[:1])),
            lambda s: s.add_encoded(M3Output(dense=np.full((1, D), np.nan, np.float32), sparse=[{}], colbert=docs.colbert[:1])),
            lambda s: s.add_encoded(M3Output(dense=docs.dense[:1], sparse=[{}], colbert=[np.full((1, C), np.inf, np.float32)])),
            lambda s: s.add_encoded({"dense": docs.dense}),
            lambda s: s.delete("a"),
            lambda s: s.delete([1]),
            lambda s: s.get("a"),
            lambda s: s.export("a"),
        ]
        for call in calls:
            _errors(lambda: call(h), lambda: call(e))
        assert e.ids() == ["a", "b", "c"] and len(e) == 3  # failed calls changed nothing
        with pytest.raises(ValueError, match="colbert_datatype"):
            QdrantEdgeStore(tmp_path / "x", colbert_datatype="bf16")
        with pytest.raises(ValueError, match="colbert_quantization"):
            QdrantEdgeStore(tmp_path / "x", colbert_quantization="pq")
        with pytest.raises(ValueError, match="batch_size"):
            QdrantEdgeStore(tmp_path / "x", batch_size=0)
    # a fresh store: a failed first add creates nothing
    with QdrantEdgeStore(tmp_path / "fresh") as e:
        bad = M3Output(dense=np.full((1, D), np.nan, np.float32))
        _errors(lambda: HybridStore().add_encoded(bad), lambda: e.add_encoded(bad))
        assert e.modes == () and not (tmp_path / "fresh" / SIDECAR).exists()
        assert e.add_encoded(M3Output(dense=np.zeros((0, 4), np.float32))) == []


def test_two_openers_get_a_clear_error(data, tmp_path):
    ids, _, _, docs, _ = data
    path = tmp_path / "s"
    e = QdrantEdgeStore(path)
    e.add_encoded(docs[:4], ids=ids[:4])
    with pytest.raises(StoreLockedError, match="already open"):
        QdrantEdgeStore(path)  # same process
    code = textwrap.dedent(f"""
        import sys
        from m3_rag.qdrant_edge import QdrantEdgeStore, StoreLockedError
        try:
            QdrantEdgeStore({str(path)!r})
        except StoreLockedError as exc:
            print("locked:", exc)
        else:
            print("opened")
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.startswith("locked:"), out.stdout + out.stderr
    e.close()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.strip() == "opened", out.stdout + out.stderr
    with QdrantEdgeStore(path) as again:  # nothing was damaged by the refused openers
        assert len(again) == 4


def test_read_only_directory(data, tmp_path):
    import tempfile

    ids, _, _, docs, _ = data
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            with pytest.raises(PermissionError, match="not writable"):
                QdrantEdgeStore(ro)
        finally:
            ro.chmod(0o755)
        return
    # root ignores permission bits: open the store as an unprivileged user in a child process
    base = Path(tempfile.mkdtemp(prefix="m3edge-ro-"))
    try:
        base.chmod(0o755)
        with QdrantEdgeStore(base / "s") as e:
            e.add_encoded(docs[:3], ids=ids[:3])
        for p in [base / "s", *(base / "s").rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        code = textwrap.dedent(f"""
            import fcntl, os
            import m3_rag.persistence, m3_rag.qdrant.store, qdrant_edge  # the engine too: it loads lazily
            from m3_rag.qdrant_edge import QdrantEdgeStore
            os.setgid(65534); os.setuid(65534)  # imports first: the interpreter's files may be root-only
            try:
                QdrantEdgeStore({str(base / "s")!r})
            except PermissionError as exc:
                print("refused:", exc)
            else:
                print("opened")
        """)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert out.stdout.startswith("refused:") and "not writable" in out.stdout, out.stdout + out.stderr
        with QdrantEdgeStore(base / "s") as e:
            assert len(e) == 3
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


# ------------------------------------------------------------------------------------------ durability
_KILL_CHILD = r"""
import sys
sys.path.insert(0, sys.argv[2])
from test_qdrant_edge import synthetic
from m3_rag.qdrant_edge import QdrantEdgeStore
store = QdrantEdgeStore(sys.argv[1], batch_size=40)
b = 0
while True:
    docs = synthetic(BATCH, b)
    print("start", b, flush=True)
    store.add_encoded(docs, ids=[f"b{b}-{i}" for i in range(BATCH)], metadatas=[{"batch": b}] * BATCH)
    print("acked", b, flush=True)
    b += 1
"""
BATCH = 1200  # documents per add call: 30 engine updates of 40 points


def test_sigkill_mid_add_keeps_every_acknowledged_batch(tmp_path):
    """A child adds 1,200-document batches (30 engine updates each) and prints after every returned call; it is
    killed with SIGKILL half a second into the third add. The store reopens with every acknowledged batch complete
    and correct, exactly a whole-update prefix of the interrupted one, and stays writable and searchable."""
    import time

    path = tmp_path / "s"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", _KILL_CHILD.replace("BATCH", str(BATCH)), str(path),
                             str(Path(__file__).parent)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stdout:
            if line.split() == ["start", "2"]:  # the third add has started: kill it in the middle
                time.sleep(0.1)
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    rest = proc.stdout.read().split()  # every acknowledgement printed before the kill
    acked = max([1] + [int(b) for w, b in zip(rest[::2], rest[1::2]) if w == "acked"])
    assert acked >= 1, proc.stderr.read()
    with QdrantEdgeStore(path) as e:
        n = len(e)
        for b in range(acked + 1):
            want = [f"b{b}-{i}" for i in range(BATCH)]
            got_ids, got, _, metas = e.export(want)
            assert got_ids == want and all(m == {"batch": b} for m in metas)
            ref = synthetic(BATCH, b)
            np.testing.assert_array_equal(got.dense, ref.dense)
            assert got.sparse == [{t: float(np.float32(w)) for t, w in r.items()} for r in ref.sparse]
            for x, y in zip(got.colbert, ref.colbert):
                np.testing.assert_array_equal(x, y)
        ids = e.ids()
        done = (acked + 1) * BATCH
        assert ids[:done] == [f"b{b}-{i}" for b in range(acked + 1) for i in range(BATCH)]
        partial = ids[done:]  # the interrupted add: a prefix made of whole engine updates
        assert partial == [f"b{acked + 1}-{i}" for i in range(len(partial))]
        assert len(partial) % 40 == 0 and len(partial) <= BATCH  # all of it when killed after the last update
        assert n == done + len(partial)
        print(f"acknowledged adds: {acked + 1}; documents of the interrupted add present: {len(partial)}/{BATCH}")
        hit = e.search_encoded(synthetic(1, 1)[0:1], k=1)[0]
        assert hit.id == "b1-0" and hit.scores["dense"] == pytest.approx(1.0, abs=1e-5)
        e.add_encoded(synthetic(1, 99), ids=["after"])
        assert len(e) == n + 1 and e.ids()[-1] == "after"


# ------------------------------------------------------------------------------------------ migration
def test_migration_in_every_direction_without_reencoding(pair, data, tmp_path):
    pytest.importorskip("qdrant_client")
    from m3_rag.qdrant import QdrantHybridStore

    hybrid, _ = pair
    q = data[4]
    e1 = QdrantEdgeStore.from_store(hybrid, tmp_path / "e1")  # HybridStore -> Edge
    assert e1.colbert_datatype == "float32"
    qd = QdrantHybridStore.from_store(e1, ":memory:", "c", show_progress=False)  # Edge -> QdrantHybridStore
    assert qd.colbert_datatype == "float32"
    e2 = QdrantEdgeStore.from_store(qd, tmp_path / "e2")  # QdrantHybridStore -> Edge
    back = e2.to_store()  # Edge -> HybridStore
    h2 = qd.to_store()  # QdrantHybridStore -> HybridStore
    for s in (e1, qd, e2, back, h2):
        assert s.ids() == hybrid.ids()
    ref = hybrid.export()
    for s in (e1, e2, back):
        got = s.export()
        assert got[0] == ref[0] and got[2] == ref[2] and got[3] == ref[3]
        np.testing.assert_array_equal(got[1].dense, ref[1].dense)
        for x, y in zip(got[1].colbert, ref[1].colbert):
            np.testing.assert_array_equal(x, y)
    for i in range(len(q)):
        for kw in ({"k": 10}, {"k": 5, "fusion": "rrf"}, {"k": 5, "modes": "sparse"}):
            want = hybrid.search_encoded(q[i], **kw)
            for s in (e1, e2, back, qd):
                same(want, s.search_encoded(q[i], **kw))
    e2.save(tmp_path / "snap")  # a HybridStore folder
    same(hybrid.search_encoded(q[0]), HybridStore.load(tmp_path / "snap").search_encoded(q[0]))
    e1.close()
    e2.close()
    e3 = QdrantEdgeStore.from_store(hybrid, tmp_path / "e4")
    with pytest.raises(StoreLockedError):
        QdrantEdgeStore.from_store(hybrid, tmp_path / "e4")
    e3.close()


# ------------------------------------------------------------------------------------------ text level
TEXTS = ["The cat sat on the mat.", "Dogs chase cats in the garden.", "Quantum computing uses qubits.",
         "机器学习是人工智能的一个分支。", "Emoji party 🎉🎉 tonight!", "", "The stock market fell sharply today. " * 40]


def test_text_add_search_and_explain_match_hybridstore(tiny_encoder, tmp_path):
    h = HybridStore(tiny_encoder, colbert_dtype="fp32", show_progress=False)
    ids = h.add(TEXTS, metadatas=[{"i": i} for i in range(len(TEXTS))])
    with QdrantEdgeStore(tmp_path / "s", tiny_encoder, show_progress=False) as e:
        assert e.add(TEXTS, ids=ids, metadatas=[{"i": i} for i in range(len(TEXTS))]) == ids
        assert e.modes == tiny_encoder.available_modes and e.fingerprint == tiny_encoder.fingerprint
        for query in ("cats on mats", "", "🎉", "机器"):
            for modes in ("dense", "sparse", "colbert", ("dense", "sparse", "colbert")):
                same(h.search(query, k=4, modes=modes), e.search(query, k=4, modes=modes))
        a = h.search("The cat sat on the mat", k=3, modes=("sparse", "dense"), explain=True)
        b = e.search("The cat sat on the mat", k=3, modes=("sparse", "dense"), explain=True)
        assert [x.explain for x in a] == [pytest.approx(x.explain) for x in b] and b[0].explain
        assert e.search("cat", k=2, modes="dense")[0].explain is None
        batch = e.search_batch(["cats on mats", "qubits"], k=3)
        assert [[x.id for x in r] for r in batch] == [[x.id for x in r] for r in h.search_batch(["cats on mats", "qubits"], k=3)]
    with QdrantEdgeStore(tmp_path / "s", tiny_encoder) as e:  # reopen with the same model
        same(h.search("qubits", k=3), e.search("qubits", k=3))


def test_concurrent_searches_and_writes(data, tmp_path):
    import threading

    ids, texts, metas, docs, q = data
    errors: list[BaseException] = []
    with QdrantEdgeStore(tmp_path / "s", batch_size=32) as e:
        e.add_encoded(docs[:40], ids=ids[:40], metadatas=metas[:40])
        stop = threading.Event()

        def reader() -> None:
            try:
                while not stop.is_set():
                    for hits in e.search_encoded_batch(q, k=5, filter={"parity": "even"}):
                        assert all(h.metadata["parity"] == "even" for h in hits) and len(hits) == 5
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            for lo in range(40, N, 44):
                e.add_encoded(docs[lo : lo + 44], ids=ids[lo : lo + 44], metadatas=metas[lo : lo + 44])
                e.delete(ids[lo - 10 : lo - 8])
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not errors, errors
        assert e.ids() == [x for x in ids if x not in {ids[lo - 10] for lo in range(40, N, 44)} | {ids[lo - 9] for lo in range(40, N, 44)}]


def test_crash_before_the_shard_existed_reopens_empty(data, tmp_path):
    import shutil

    ids, _, _, docs, q = data
    with QdrantEdgeStore(tmp_path / "s") as e:
        e.add_encoded(docs[:2], ids=ids[:2])
    shutil.rmtree(tmp_path / "s" / "shard")  # as if killed after the header was written, before create returned
    with QdrantEdgeStore(tmp_path / "s") as e:
        assert len(e) == 0 and e.modes == ("dense", "sparse", "colbert")
        e.add_encoded(docs[:3], ids=ids[:3])
        assert e.ids() == ids[:3] and e.search_encoded(q[0], k=1)
    half = tmp_path / "t"
    half.mkdir()
    (half / f".{SIDECAR}.tmp").write_text("{")  # killed while writing the header: the directory is still empty
    with QdrantEdgeStore(half) as e:
        assert len(e) == 0 and e.modes == ()
