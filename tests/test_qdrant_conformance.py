"""Conformance of the requests QdrantHybridStore sends: qdrant-client's local mode vs the real engine (Qdrant Edge).

``QdrantHybridStore`` is run unchanged twice on the same synthetic BGE-M3-shaped collection: once on
``QdrantClient(":memory:")`` (qdrant-client's pure-Python re-implementation) and once on an Edge shard (Qdrant's
Rust engine in-process, through the test shim ``tests/qdrant_edge_client.py``). Every mode set x fusion x
filter and the server-fusion path must give the same ids in the same order and the same scores; the raw engine
responses are also compared request by request, and the differences found are pinned down as tests (they are
listed in docs/qdrant.md, "Local mode vs the real engine").
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("qdrant_client")
qe = pytest.importorskip("qdrant_edge")

from qdrant_client import models  # noqa: E402

from m3_rag import M3Output  # noqa: E402
from m3_rag import qdrant_edge_convert as cv  # noqa: E402
from m3_rag.qdrant import PAYLOAD_SEQ, QdrantHybridStore, to_qdrant_filter  # noqa: E402
from m3_rag.store import HybridStore  # noqa: E402

from qdrant_edge_client import EdgeBackedClient  # noqa: E402

N, D, C, V = 260, 48, 16, 120
MODE_SETS = [
    ("dense",), ("sparse",), ("colbert",), ("dense", "sparse"), ("dense", "colbert"), ("sparse", "colbert"),
    ("dense", "sparse", "colbert"),
]
FUSIONS = ("weighted", "rrf", "dbsf")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _synthetic(n: int, seed: int) -> M3Output:
    """BGE-M3-shaped rows: unit dense, sparse with 1-12 positive weights (Zipf-ish vocab), unit ColBERT tokens."""
    rng = np.random.default_rng(seed)
    dense = _unit(rng.standard_normal((n, D)))
    p = 1.0 / np.arange(1, V + 1)
    p /= p.sum()
    sparse = []
    for _ in range(n):
        toks = rng.choice(V, size=int(rng.integers(1, 13)), replace=False, p=p)
        sparse.append({int(t): float(np.float32(rng.uniform(0.01, 0.4))) for t in toks})
    colbert = [_unit(rng.standard_normal((int(rng.integers(2, 12)), C))) for _ in range(n)]
    return M3Output(dense=dense, sparse=sparse, colbert=colbert)


def _meta(i: int) -> dict:
    md = {"n": i, "parity": "even" if i % 2 == 0 else "odd", "score": i / 10, "tags": ["t%d" % (i % 3), "all"]}
    if i % 5 == 0:
        md["special"] = True
    if i % 7 == 0:
        md["note"] = None
    if i % 11 == 0:
        md["txt"] = "Hello World" if i % 2 else "hello world"
    return md


@pytest.fixture(scope="module")
def data():
    docs = _synthetic(N, 0)
    # exact ties: documents 7, 8 and 9 are copies of document 3 (every mode), 20 copies 21's sparse row
    for j in (7, 8, 9):
        docs.dense[j] = docs.dense[3]
        docs.sparse[j] = dict(docs.sparse[3])
        docs.colbert[j] = docs.colbert[3].copy()
    docs.sparse[20] = dict(docs.sparse[21])
    ids = [f"doc-{i}" for i in range(N)]
    texts = [f"text {i}" for i in range(N)]
    metas = [_meta(i) for i in range(N)]
    q = _synthetic(4, 1)
    # query 3 is document 3 itself: its top hits tie exactly in every mode
    q = M3Output(
        dense=np.vstack([q.dense[:3], docs.dense[3:4]]),
        sparse=q.sparse[:3] + [dict(docs.sparse[3])],
        colbert=q.colbert[:3] + [docs.colbert[3].copy()],
    )
    return ids, texts, metas, docs, q


@pytest.fixture(scope="module")
def stores(data, tmp_path_factory):
    ids, texts, metas, docs, _ = data
    # float32 ColBERT: with float16 storage the engine also rounds the query (test_float16_colbert_...)
    local = QdrantHybridStore(":memory:", "conf", show_progress=False, batch_size=100, colbert_datatype="float32")
    local.add_encoded(docs, ids=ids, texts=texts, metadatas=metas)
    edge = QdrantHybridStore(EdgeBackedClient(tmp_path_factory.mktemp("edge") / "shard"), "conf",
                             show_progress=False, batch_size=100, colbert_datatype="float32")
    edge.add_encoded(docs, ids=ids, texts=texts, metadatas=metas)
    hybrid = HybridStore(show_progress=False, colbert_dtype="fp32")
    hybrid.add_encoded(docs, ids=ids, texts=texts, metadatas=metas)
    yield local, edge, hybrid
    edge.client.close()


def _same(a, b, *, score_tol=1e-6):
    assert [h.id for h in a] == [h.id for h in b]
    for x, y in zip(a, b):
        assert x.metadata == y.metadata and x.text == y.text
        assert x.score == pytest.approx(y.score, abs=score_tol)
        assert set(x.scores) == set(y.scores)
        for m in x.scores:
            assert x.scores[m] == pytest.approx(y.scores[m], abs=score_tol)


# ------------------------------------------------------------------ QdrantHybridStore end to end, both engines
COMBOS = [(m, "weighted") for m in MODE_SETS[:3]] + [(m, f) for m in MODE_SETS[3:] for f in FUSIONS]


@pytest.mark.parametrize("modes,fusion", COMBOS, ids=["+".join(m) + "-" + f for m, f in COMBOS])
def test_store_search_same_on_local_mode_and_engine(stores, data, modes, fusion):
    local, edge, hybrid = stores
    q = data[4]
    for i in range(len(q)):
        for kw in ({"k": 10}, {"k": 4, "candidates": 15}, {"k": 10, "filter": {"parity": "even", "n": {"$gte": 30}}}):
            got_local = local.search_encoded(q[i], modes=modes, fusion=fusion, **kw)
            got_edge = edge.search_encoded(q[i], modes=modes, fusion=fusion, **kw)
            _same(got_local, got_edge)
            _same(hybrid.search_encoded(q[i], modes=modes, fusion=fusion, **kw), got_edge, score_tol=1e-5)


@pytest.mark.parametrize("fusion", ("rrf", "dbsf"))
@pytest.mark.parametrize("modes", MODE_SETS[3:], ids=lambda m: "+".join(m))
def test_server_fusion_same_on_local_mode_and_engine(stores, data, modes, fusion):
    local, edge, _ = stores
    q = data[4]
    for i in range(3):  # not the all-ties query: server fusion leaves ties to the engine (see the doc)
        for flt in (None, {"tags": {"$contains": "t1"}}):
            a = local.search_encoded(q[i], modes=modes, fusion=fusion, server_fusion=True, k=8, filter=flt)
            b = edge.search_encoded(q[i], modes=modes, fusion=fusion, server_fusion=True, k=8, filter=flt)
            _same(a, b)


FILTERS = [
    {"parity": "even"}, {"n": {"$gte": 40, "$lt": 100}}, {"score": {"$gt": 3.05}}, {"n": {"$in": [1, 2, 3, 500]}},
    {"parity": {"$ne": "even"}}, {"parity": {"$nin": ["even"]}}, {"note": None}, {"note": {"$exists": True}},
    {"note": {"$exists": False}}, {"txt": {"$contains": "lo w"}}, {"tags": {"$contains": "t1"}},
    {"$or": [{"parity": "even"}, {"n": 3}]}, {"$not": {"parity": "even"}}, {"n": 5}, {"n": 5.0}, {"score": 0.5},
    {"missing": 3}, {"missing": {"$ne": 3}},
]


@pytest.mark.parametrize("flt", FILTERS, ids=[str(f) for f in FILTERS])
def test_filters_select_the_same_points(stores, flt):
    local, edge, hybrid = stores
    f = to_qdrant_filter(flt)
    a = sorted(p.id for p in local.client.scroll("conf", scroll_filter=f, limit=10_000)[0])
    b = sorted(p.id for p in edge.client.scroll("conf", scroll_filter=f, limit=10_000)[0])
    assert a == b
    assert a or "missing" in flt


def test_bool_equality_is_lost_by_the_edge_binding(stores):
    """Known difference: qdrant-edge-py 0.9.0 turns ``MatchValue(True)`` into ``MatchValue(1)`` (a Python bool
    is extracted as an int), so a boolean equality filter matches nothing on Edge while local mode (and a
    server, which receives JSON ``true``) matches the flagged points. If this starts failing, the binding was
    fixed: update docs/qdrant.md."""
    local, edge, _ = stores
    assert qe.MatchValue(True).value == 1 and type(qe.MatchValue(True).value) is int
    f = to_qdrant_filter({"special": True})
    assert len(local.client.scroll("conf", scroll_filter=f, limit=10_000)[0]) == N // 5
    assert edge.client.scroll("conf", scroll_filter=f, limit=10_000)[0] == []


def test_delete_len_ids_and_zero_fill_scroll(data, tmp_path):
    ids, texts, metas, docs, q = data
    pair = []
    for client in (":memory:", EdgeBackedClient(tmp_path / "shard")):
        s = QdrantHybridStore(client, "conf", show_progress=False, batch_size=64)
        s.add_encoded(docs[:120], ids=ids[:120], texts=texts[:120], metadatas=metas[:120])
        assert s.delete(["doc-3", "doc-5", "nope"]) == 2
        s.add_encoded(docs[7:8], ids=["doc-7"], texts=["again"], metadatas=[{"n": 7}])  # upsert moves last
        pair.append(s)
    a, b = pair
    assert len(a) == len(b) == 118
    assert a.ids() == b.ids() and b.ids()[-1] == "doc-7"
    assert "doc-3" not in b and "doc-4" in b
    assert [r.text for r in b.get(["doc-7", "doc-4"])] == ["again", "text 4"]
    # a sparse query sharing a token with few documents: alone, only those come back; as a fusion first stage
    # the list is filled with zero scores in insertion order (the scroll below)
    rare = M3Output(sparse=[{V - 1: 1.0}])
    got = b.search_encoded(rare, modes="sparse", k=60)
    assert 0 < len(got) < 20 and all(h.score > 0 for h in got)
    _same(a.search_encoded(rare, modes="sparse", k=60), got)
    _same(a.search_encoded(q[0], modes=("dense", "sparse"), k=30, candidates=110),
          b.search_encoded(q[0], modes=("dense", "sparse"), k=30, candidates=110))
    b.client.close()


# ------------------------------------------------------------------ raw requests, response by response
def _raw(stores, data):
    local, edge, _ = stores
    q = data[4]
    qd = q.dense[0].tolist()
    items = sorted(q.sparse[0].items())
    qs = models.SparseVector(indices=[t for t, _ in items], values=[w for _, w in items])
    qc = q.colbert[0].tolist()
    return local.client, edge.client, qd, qs, qc


def _pairs(points):
    return [(p.id, p.score) for p in points]


def test_raw_scores_engine_float32_local_float64(stores, data):
    """Local mode scores in float64 (numpy over float32 inputs); the engine returns float32 scores. The ids
    agree; scores agree to ~1e-7 relative. QdrantHybridStore recomputes dense/sparse scores client-side, so its
    results do not depend on this; ColBERT is taken from the engine's MaxSim (float32 sum) -- see the doc."""
    lc, ec, qd, qs, qc = _raw(stores, data)
    for vec, using in ((qd, "dense"), (qs, "sparse"), (qc, "colbert")):
        a = _pairs(lc.query_points("conf", query=vec, using=using, limit=40).points)
        b = _pairs(ec.query_points("conf", query=vec, using=using, limit=40).points)
        _same_up_to_ties(a, b, tol=1e-6)
        assert all(float(np.float32(s)) == s for _, s in b)  # engine scores are float32 values
    assert any(float(np.float32(s)) != s for _, s in a)  # local-mode scores are not (float64)


def _same_up_to_ties(a, b, *, tol):
    """Same ids with the same scores (to ``tol``); order equal except among exactly tied scores."""
    assert len(a) == len(b)
    sa, sb = dict(a), dict(b)
    common = set(sa) & set(sb)
    for x in common:
        assert sa[x] == pytest.approx(sb[x], abs=tol)
    np.testing.assert_allclose([s for _, s in a], [s for _, s in b], rtol=0, atol=tol)
    # ids may differ only where the score at that rank is tied: with a neighbour, or with points past the limit
    last = a[-1][1] if a else 0.0
    for x in set(sa) ^ set(sb):
        assert abs(sa.get(x, sb.get(x)) - last) <= tol
    for (ia, s), (ib, _) in zip(a, b):
        if ia != ib:
            assert sum(abs(t - s) <= tol for _, t in a) > 1 or abs(s - last) <= tol


def test_raw_rrf_uses_zero_based_ranks_on_both(stores, data):
    """Server RRF: score = sum_i w_i / (k + rank_i) with 0-based ranks (the top hit of one list scores 1/k),
    on local mode and on the engine alike; HybridStore's client-side RRF uses 1-based ranks (1/(k+1))."""
    lc, ec, qd, qs, _ = _raw(stores, data)
    pf = [models.Prefetch(query=qd, using="dense", limit=30), models.Prefetch(query=qs, using="sparse", limit=30)]
    for w in ([1.0, 1.0], [2.0, 0.5]):
        rq = models.RrfQuery(rrf=models.Rrf(k=60, weights=w))
        a = _pairs(lc.query_points("conf", prefetch=pf, query=rq, limit=20).points)
        b = _pairs(ec.query_points("conf", prefetch=pf, query=rq, limit=20).points)
        _same_up_to_ties(a, b, tol=1e-6)
    only_dense = ec.query_points("conf", prefetch=pf[:1], query=models.RrfQuery(rrf=models.Rrf(k=60)), limit=1).points
    assert only_dense[0].score == pytest.approx(1 / 60, rel=1e-6)


def test_raw_dbsf_float32_vs_float64(stores, data):
    lc, ec, qd, qs, qc = _raw(stores, data)
    pf = [models.Prefetch(query=qd, using="dense", limit=30), models.Prefetch(query=qs, using="sparse", limit=30)]
    dq = models.FusionQuery(fusion=models.Fusion.DBSF)
    a = _pairs(lc.query_points("conf", prefetch=pf, query=dq, limit=25).points)
    b = _pairs(ec.query_points("conf", prefetch=pf, query=dq, limit=25).points)
    assert [x for x, _ in a] == [x for x, _ in b]
    np.testing.assert_allclose([s for _, s in a], [s for _, s in b], rtol=0, atol=1e-6)


def test_raw_exact_ties_are_ordered_differently(stores, data):
    """With exact ties neither engine returns insertion order: local mode gives one fixed order (observed
    seq [8, 7, 3, 9]), the engine an order that changes from run to run (its segments are searched in
    parallel). QdrantHybridStore never relies on either: it fetches past the boundary and re-ranks by the stored
    insertion sequence, so both give doc-3, doc-7, doc-8, doc-9."""
    local, edge, _ = stores
    lc, ec, *_ = _raw(stores, data)
    q3 = data[4][3]
    raw_a = lc.query_points("conf", query=q3.dense[0].tolist(), using="dense", limit=4, with_payload=True).points
    raw_b = ec.query_points("conf", query=q3.dense[0].tolist(), using="dense", limit=4, with_payload=True).points
    assert sorted(p.payload[PAYLOAD_SEQ] for p in raw_a) == sorted(p.payload[PAYLOAD_SEQ] for p in raw_b) == [3, 7, 8, 9]
    for mode in ("dense", "colbert", ("dense", "colbert")):  # a self-match tops these (not sparse: a dot product)
        for s in (local, edge):
            assert [h.id for h in s.search_encoded(q3, modes=mode, k=4)] == ["doc-3", "doc-7", "doc-8", "doc-9"]


def test_order_by_needs_a_range_index_on_the_engine(tmp_path):
    """Local mode ignores payload indexes; the engine refuses ``order_by`` on a field without a range index.
    QdrantHybridStore creates one on its sequence field, which is why its zero-score fill works on a server."""
    shard = qe.EdgeShard.create(str(tmp_path / "s"), qe.EdgeConfig(vectors={"v": qe.EdgeVectorParams(size=2, distance=qe.Distance.Dot)}))
    shard.update(qe.UpdateOperation.upsert_points([qe.Point(id=1, vector={"v": [1.0, 0.0]}, payload={"s": 1})]))
    with pytest.raises(Exception, match="range index"):
        shard.scroll(qe.ScrollRequest(limit=5, order_by=qe.OrderBy("s")))
    shard.update(qe.UpdateOperation.create_field_index("s", qe.PayloadSchemaType.Integer))
    assert [r.id for r in shard.scroll(qe.ScrollRequest(limit=5, order_by=qe.OrderBy("s")))[0]] == [1]
    shard.close()


def test_converter_refuses_untranslated_objects():
    with pytest.raises(TypeError, match="geo_radius"):
        cv.convert_condition(models.FieldCondition(
            key="x", geo_radius=models.GeoRadius(center=models.GeoPoint(lon=0, lat=0), radius=1.0)))
    with pytest.raises(TypeError, match="expected a qdrant_client.models.Filter"):
        cv.convert_filter({"must": []})


def test_float16_colbert_engine_rounds_the_query_too(data, tmp_path):
    """Local mode emulates float16 ColBERT storage by rounding the *documents* only (exactly what HybridStore's
    fp16 codec does), so QdrantHybridStore(colbert_datatype="float16") matched HybridStore bit for bit there. The
    engine rounds the *query* tokens to float16 as well before the float32 MaxSim, so on a server (and on Edge)
    ColBERT scores differ from HybridStore's by ~1e-4 relative -- enough to reorder near-ties."""
    ids, texts, metas, docs, q = data
    local = QdrantHybridStore(":memory:", "c", show_progress=False, colbert_datatype="float16")
    edge = QdrantHybridStore(EdgeBackedClient(tmp_path / "s"), "c", show_progress=False, colbert_datatype="float16")
    for s in (local, edge):
        s.add_encoded(docs, ids=ids)
    Q = q.colbert[0]
    worst = 0.0
    for a, b in zip(local.search_encoded(q[0], modes="colbert", k=5), edge.search_encoded(q[0], modes="colbert", k=5)):
        Dm = docs.colbert[int(a.id.split("-")[1])].astype(np.float16).astype(np.float32)
        docs_only = float(np.float32((Q @ Dm.T).max(1).sum()) / np.float32(len(Q)))
        q16 = Q.astype(np.float16).astype(np.float32)
        both = float(np.float32((q16 @ Dm.T).max(1).sum()) / np.float32(len(Q)))
        assert a.scores["colbert"] == pytest.approx(docs_only, abs=1e-7)
        if a.id == b.id:
            assert b.scores["colbert"] == pytest.approx(both, abs=1e-6)
            worst = max(worst, abs(a.scores["colbert"] - b.scores["colbert"]))
    assert worst > 1e-6
    edge.client.close()


_KILL_CHILD = r"""
import sys, numpy as np, qdrant_edge as qe
path = sys.argv[1]
rng = np.random.default_rng(0)
cfg = qe.EdgeConfig(vectors={"v": qe.EdgeVectorParams(size=32, distance=qe.Distance.Dot)},
                    sparse_vectors={"s": qe.EdgeSparseVectorParams()})
shard = qe.EdgeShard.create(path, cfg)
b = 0
while True:
    pts = [qe.Point(id=b * 100 + i, vector={"v": rng.standard_normal(32).tolist(), "s": qe.SparseVector([1, 5], [0.1, 0.2])},
                    payload={"batch": b}) for i in range(100)]
    shard.update(qe.UpdateOperation.upsert_points(pts))
    shard.flush()
    print(b, flush=True)
    b += 1
"""


def test_engine_keeps_every_acknowledged_batch_after_sigkill(tmp_path):
    """What an Edge backend relies on for "durable when the call returns": a process upserting in batches
    (update + flush, then print) is killed with SIGKILL after 8 acknowledgements; the shard reopens with
    every acknowledged batch, each complete, and stays writable."""
    import os
    import signal
    import subprocess
    import sys

    path = str(tmp_path / "shard")
    proc = subprocess.Popen([sys.executable, "-c", _KILL_CHILD, path], stdout=subprocess.PIPE, text=True)
    acked = -1
    try:
        for line in proc.stdout:
            acked = int(line)
            if acked >= 7:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert acked == 7
    shard = qe.EdgeShard.load(path)
    try:
        n = shard.count(qe.CountRequest(exact=True))
        assert n >= 800 and n % 100 == 0  # whole batches only
        for b in range(8):
            f = qe.Filter(must=[qe.FieldCondition(key="batch", match=qe.MatchValue(b))])
            assert shard.count(qe.CountRequest(filter=f, exact=True)) == 100
        shard.update(qe.UpdateOperation.upsert_points([qe.Point(id=10**6, vector={"v": [0.0] * 32})]))
        assert shard.count(qe.CountRequest(exact=True)) == n + 1
    finally:
        shard.close()


@pytest.fixture(scope="module")
def edge_store(data, tmp_path_factory):
    from m3_rag import QdrantEdgeStore

    ids, texts, metas, docs, _ = data
    s = QdrantEdgeStore(tmp_path_factory.mktemp("edge_store") / "s", batch_size=100)
    s.add_encoded(docs, ids=ids, texts=texts, metadatas=metas)
    yield s
    s.close()


@pytest.mark.parametrize("fusion", ("rrf", "dbsf"))
@pytest.mark.parametrize("modes", MODE_SETS[3:], ids=lambda m: "+".join(m))
def test_edge_store_server_fusion_sends_the_same_request(stores, edge_store, data, modes, fusion):
    """QdrantEdgeStore(server_fusion=True) builds the request QdrantHybridStore sends, natively: on the same engine
    the results are identical, and they equal local mode's."""
    local, edge, _ = stores
    q = data[4]
    for i in range(3):
        for flt in (None, {"tags": {"$contains": "t1"}}):
            want = edge.search_encoded(q[i], modes=modes, fusion=fusion, server_fusion=True, k=8, filter=flt)
            got = edge_store.search_encoded(q[i], modes=modes, fusion=fusion, server_fusion=True, k=8, filter=flt)
            _same(want, got)
            _same(local.search_encoded(q[i], modes=modes, fusion=fusion, server_fusion=True, k=8, filter=flt), got)
    with pytest.raises(ValueError, match="server_fusion"):
        edge_store.search_encoded(q[0], fusion="weighted", server_fusion=True)
    with pytest.raises(ValueError, match="DBSF takes no weights"):
        edge_store.search_encoded(q[0], fusion="dbsf", weights=[1, 2, 1], server_fusion=True)
