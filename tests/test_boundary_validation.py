"""Validation at the boundary: the same bad input gets the same clear error from every store, for one query and
for a batch, and memory never grows with the largest sparse token id."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from m3_rag import M3Output
from m3_rag.store import HybridStore
from test_store import D, DC, make_encoded, make_query

ALL = ("dense", "sparse", "colbert")


def _memory() -> HybridStore:
    store = HybridStore()
    store.add_encoded(make_encoded(np.random.default_rng(0), 10), ids=[f"d{i}" for i in range(10)],
                      metadatas=[{"i": i, "tags": ["x"]} for i in range(10)])
    return store


def _qdrant():
    pytest.importorskip("qdrant_client")
    from m3_rag.qdrant import QdrantHybridStore

    store = QdrantHybridStore(":memory:", "c", show_progress=False)
    store.add_encoded(make_encoded(np.random.default_rng(0), 10), ids=[f"d{i}" for i in range(10)],
                      metadatas=[{"i": i, "tags": ["x"]} for i in range(10)])
    return store


@pytest.fixture(params=["memory", "qdrant"])
def store(request):
    s = _memory() if request.param == "memory" else _qdrant()
    yield s
    if request.param == "qdrant":
        s.close()


def _q(**parts) -> M3Output:
    q = make_query(np.random.default_rng(1))
    for k, v in parts.items():
        setattr(q, k, v)
    return q


BAD_QUERIES = [
    ({"sparse": [{-2: 1.0}]}, "sparse", ValueError, "non-negative"),
    ({"sparse": [{-1: 1.0}]}, "sparse", ValueError, "non-negative"),
    ({"sparse": [{2**70: 1.0}]}, "sparse", ValueError, "below"),
    ({"sparse": [{-100000: 1.0}]}, "sparse", ValueError, "non-negative"),
    ({"sparse": [{3: float("nan")}]}, "sparse", ValueError, "finite"),
    ({"sparse": [{3: None}]}, "sparse", ValueError, "finite"),
    ({"sparse": [{1.5: 1.0}]}, "sparse", TypeError, "ints"),
    ({"sparse": [{True: 1.0}]}, "sparse", TypeError, "ints"),
    ({"dense": np.full((1, D), np.nan, np.float32)}, "dense", ValueError, "NaN or infinity"),
    ({"dense": np.full((1, D), np.inf, np.float32)}, ALL, ValueError, "NaN or infinity"),
    ({"colbert": [np.full((2, DC), np.nan, np.float32)]}, "colbert", ValueError, "NaN or infinity"),
    ({"colbert": [np.full((2, DC), np.inf, np.float32)]}, ALL, ValueError, "NaN or infinity"),
    ({"dense": np.ones((1, D + 1), np.float32)}, "dense", ValueError, "dimension"),
]


@pytest.mark.parametrize("parts,modes,exc,msg", BAD_QUERIES)
def test_bad_query_refused_alike_for_single_and_batch(store, parts, modes, exc, msg):
    q = _q(**parts)
    with pytest.raises(exc, match=msg):
        store.search_encoded(q, k=3, modes=modes)
    with pytest.raises(exc, match=msg):
        store.search_encoded_batch(q, k=3, modes=modes)


def test_query_sparse_ids_bounded_by_sparse_dim():
    store = HybridStore(sparse_dim=60)
    store.add_encoded(make_encoded(np.random.default_rng(0), 5))
    assert store.sparse_dim == 60
    with pytest.raises(ValueError, match="below 60"):
        store.search_encoded(_q(sparse=[{60: 1.0}]), modes="sparse")
    with pytest.raises(ValueError, match="below 60"):
        store.add_encoded(M3Output(dense=np.ones((1, D), np.float32), sparse=[{70: 1.0}], colbert=[np.ones((1, DC))]))
    assert len(store) == 5
    with pytest.raises(ValueError, match="sparse_dim"):
        HybridStore(sparse_dim=0)


def test_sparse_dim_defaults_to_encoder_vocab(tiny_encoder):
    store = HybridStore(tiny_encoder)
    assert store.sparse_dim == tiny_encoder.vocab_size
    with pytest.raises(ValueError, match="differs"):
        HybridStore(tiny_encoder, sparse_dim=tiny_encoder.vocab_size + 1)


@pytest.mark.parametrize("bad,exc,msg", [
    ({"sparse": [{10: 1e39}]}, ValueError, "float32's range"),
    ({"colbert": [np.full((2, DC), 70000.0, np.float32)]}, ValueError, "float16's range"),
    ({"dense": np.full((1, D), np.nan, np.float32)}, ValueError, "NaN or infinity"),
    ({"colbert": [np.full((1, DC), np.inf, np.float32)]}, ValueError, "NaN or infinity"),
    ({"sparse": [{-1: 1.0}]}, ValueError, "non-negative"),
    ({"sparse": [{"3": 1.0}]}, TypeError, "ints"),
])
def test_values_that_do_not_fit_storage_refused_on_add(store, bad, exc, msg):
    enc = make_encoded(np.random.default_rng(2), 1)
    for k, v in bad.items():
        setattr(enc, k, v)
    before = store.ids()
    with pytest.raises(exc, match=msg):
        store.add_encoded(enc, ids=["new"])
    assert store.ids() == before


def test_fp32_colbert_store_accepts_large_values(tmp_path):
    store = HybridStore(colbert_dtype="fp32")
    enc = make_encoded(np.random.default_rng(2), 1)
    enc.colbert = [np.full((2, DC), 70000.0, np.float32)]
    store.add_encoded(enc, ids=["big"])
    store.save(tmp_path / "s")
    assert HybridStore.load(tmp_path / "s").export()[1].colbert[0].max() == 70000.0


def test_large_sparse_token_id_costs_no_memory(tmp_path):
    store = HybridStore()
    enc = make_encoded(np.random.default_rng(3), 2)
    enc.sparse = [{10**9: 1.0, 2**31 - 2: 0.5}, {3: 1.0}]
    t0 = time.perf_counter()
    store.add_encoded(enc, ids=["big", "small"])
    assert store.memory_bytes()["sparse"] < 1000
    hits = store.search_encoded(_q(sparse=[{10**9: 2.0, 3: 1.0}]), k=5, modes="sparse")
    assert [(h.id, h.score) for h in hits] == [("big", 2.0), ("small", 1.0)]
    store.save(tmp_path / "s")
    loaded = HybridStore.load(tmp_path / "s")
    assert loaded.memory_bytes()["sparse"] < 1000 and loaded.export()[1].sparse[0] == {10**9: 1.0, 2**31 - 2: 0.5}
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("weights,msg", [([1e308, 1e308], "finite sum"), ([float("nan"), 1], "finite"),
                                         ([0, 0], "positive sum"), ([-1, 2], ">= 0")])
def test_bad_weights(store, weights, msg):
    with pytest.raises(ValueError, match=msg):
        store.search_encoded(_q(), k=3, modes=("dense", "sparse"), weights=weights)


@pytest.mark.parametrize("field", ["ids", "texts", "metadatas", "metadata key"])
def test_lone_surrogates_refused(store, field):
    enc = make_encoded(np.random.default_rng(4), 1)
    kw = {"ids": ["\ud800"], "texts": ["a\udfffb"], "metadatas": [{"k": ["\ud800"]}],
          "metadata key": [{"\udc00": 1}]}
    name = "metadatas" if field == "metadata key" else field
    with pytest.raises(ValueError, match="not valid Unicode"):
        store.add_encoded(enc, **{name: kw[field]})
    assert len(store) == 10


def test_surrogates_refused_by_encoder_and_text_search(tiny_encoder):
    with pytest.raises(ValueError, match="not valid Unicode"):
        tiny_encoder.encode(["ok", "\ud800"])
    with pytest.raises(ValueError, match="not valid Unicode"):
        tiny_encoder.encode("\ud800")
    with pytest.raises(ValueError, match="not valid Unicode"):
        HybridStore(tiny_encoder).search("x\udc00")


def test_ids_ordered_sequence(store):
    enc = make_encoded(np.random.default_rng(5), 2)
    with pytest.raises(TypeError, match="ordered sequence"):
        store.add_encoded(enc, ids={"a", "b"})
    with pytest.raises(TypeError, match="ordered sequence"):
        store.get({"d1"})
    got = store.add_encoded(enc, ids=np.array(["a", "b"]))
    assert [type(x) for x in got] == [str, str]
    assert all(type(h.id) is str for h in store.search_encoded(_q(), k=12))
    assert store.delete({"a", "b"}) == 2  # order cannot matter for a delete
    assert len(store.search_encoded(_q(), k=5, ids={"d1", "d2"})) == 2


def test_k_capped_at_matching_documents(store):
    assert len(store.search_encoded(_q(), k=10**9)) == 10
    assert len(store.search_encoded(_q(), k=10**9, modes="dense", filter={"i": {"$lt": 3}})) == 3


def test_deep_filter_and_metadata_refused(store):
    f: dict = {"i": 1}
    for _ in range(2000):
        f = {"$and": [f]}
    with pytest.raises(ValueError, match="nests deeper"):
        store.search_encoded(_q(), k=3, filter=f)
    deep: dict = {}
    cur = deep
    for _ in range(3000):
        cur["a"] = {}
        cur = cur["a"]
    with pytest.raises(ValueError, match="nests deeper"):
        store.add_encoded(make_encoded(np.random.default_rng(6), 1), metadatas=[deep])
    ok: dict = {"i": 1}
    for _ in range(20):
        ok = {"$and": [ok]}
    assert [h.id for h in store.search_encoded(_q(), k=3, filter=ok)] == ["d1"]


def test_callable_filter_gets_read_only_view(store):
    def mutate(md):
        md["tags"].append("changed")
        return True

    def assign(md):
        md["i"] = 99
        return True

    store.search_encoded(_q(), k=3, filter=mutate)
    with pytest.raises(TypeError):
        store.search_encoded(_q(), k=3, filter=assign)
    assert store.get(["d1"])[0].metadata == {"i": 1, "tags": ["x"]}
    assert len(store.search_encoded(_q(), k=10, filter=lambda md: md["i"] < 4 and md == {"i": md["i"], "tags": ["x"]})) == 4


# ------------------------------------------------------------------------------------ load-side checks
def _saved(tmp_path, dtype="fp16"):
    store = HybridStore(colbert_dtype=dtype)
    store.add_encoded(make_encoded(np.random.default_rng(7), 5), ids=list("abcde"))
    store.save(tmp_path / "s")
    return tmp_path / "s"


def _edit_header(path, **changes):
    h = json.loads((path / "store.json").read_text())
    h.update(changes)
    (path / "store.json").write_text(json.dumps(h))


@pytest.mark.parametrize("changes,msg", [
    ({"files": []}, "files must be a non-empty object"),
    ({"files": {}}, "files must be a non-empty object"),
    ({"modes": []}, "no modes"),
    ({"modes": "dense"}, "modes must be a list"),
    ({"files": {"records.json": []}}, "malformed"),
])
def test_bad_header_refused_on_load(tmp_path, changes, msg):
    path = _saved(tmp_path)
    _edit_header(path, **changes)
    with pytest.raises(ValueError, match=msg):
        HybridStore.load(path)


def test_deep_header_json_refused(tmp_path):
    path = _saved(tmp_path)
    (path / "store.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ValueError, match="corrupt|nests"):
        HybridStore.load(path)
    path = _saved(tmp_path / "x")
    h = json.loads((path / "store.json").read_text())
    nested: list = []
    for _ in range(50):
        nested = [nested]
    h["extra"] = nested
    (path / "store.json").write_text(json.dumps(h))
    with pytest.raises(ValueError, match="nests deeper"):
        HybridStore.load(path)


def test_int8_scale_nan_refused_on_load(tmp_path):
    from m3_rag.persistence import sha256_file

    path = _saved(tmp_path, "int8")
    scale = np.load(path / "colbert_scale.npy")
    scale[0] = np.nan
    np.save(path / "colbert_scale.npy", scale)
    h = json.loads((path / "store.json").read_text())
    h["files"]["colbert_scale.npy"]["sha256"] = sha256_file(path / "colbert_scale.npy")
    (path / "store.json").write_text(json.dumps(h))
    with pytest.raises(ValueError, match="NaN or infinity"):
        HybridStore.load(path)


def test_sparse_ids_beyond_saved_sparse_dim_refused_on_load(tmp_path):
    store = HybridStore(sparse_dim=60)
    store.add_encoded(make_encoded(np.random.default_rng(8), 3), ids=list("abc"))
    store.save(tmp_path / "s")
    assert HybridStore.load(tmp_path / "s").sparse_dim == 60
    _edit_header(tmp_path / "s", sparse_dim=10)
    with pytest.raises(ValueError, match="token ids >= 10"):
        HybridStore.load(tmp_path / "s")


@pytest.mark.parametrize("bad", [
    M3Output(dense=np.zeros((1, 0), np.float32), sparse=[{}], colbert=[np.ones((1, DC), np.float32)]),
    M3Output(dense=np.ones((1, D), np.float32), sparse=[{}], colbert=[np.zeros((2, 0), np.float32)]),
])
def test_zero_dimensions_refused_by_every_store(store, bad):
    before = store.ids()
    with pytest.raises(ValueError, match="dimension"):
        store.add_encoded(bad, ids=["zero"])
    assert store.ids() == before


def test_zero_dense_dimension_on_a_fresh_qdrant_collection():
    pytest.importorskip("qdrant_client")
    from m3_rag.qdrant import QdrantHybridStore

    with QdrantHybridStore(":memory:", "fresh", show_progress=False) as q:
        with pytest.raises(ValueError, match="dense dimension must be a positive int"):
            q.add_encoded(M3Output(dense=np.zeros((1, 0), np.float32)))
        assert q.modes == () and len(q) == 0
        q.add_encoded(make_encoded(np.random.default_rng(0), 2), ids=["a", "b"])
        assert len(q) == 2 and q._dims["dense"] == D
