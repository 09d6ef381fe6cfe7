"""8 searcher threads and 2 writer threads on every backend: no exception, no document returned by a search that
started after its delete returned, every score belonging to its id, and a consistent ``len``/``ids`` at the end.

Each backend runs ``M3RAG_STRESS_SECONDS`` seconds (default 10, 20 s for both, to keep CI short; the issue's probe ran 60)."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from m3_rag.store import HybridStore
from test_store import make_encoded, make_query

SECONDS = float(os.environ.get("M3RAG_STRESS_SECONDS", "10"))
N_SEARCHERS, N_WRITERS = 8, 2


def _hybrid():
    return HybridStore(colbert_dtype="fp32"), lambda s: None


def _qdrant():
    pytest.importorskip("qdrant_client")
    from m3_rag.qdrant import QdrantHybridStore

    return QdrantHybridStore(":memory:", "stress", show_progress=False, colbert_datatype="float32"), lambda s: s.close()


def _edge():
    pytest.importorskip("qdrant_edge")
    import shutil
    import tempfile

    from m3_rag import QdrantEdgeStore

    path = tempfile.mkdtemp(prefix="m3rag_stress_edge_")
    store = QdrantEdgeStore(path)

    def close(s):
        s.close()
        shutil.rmtree(path, ignore_errors=True)

    return store, close


@pytest.mark.parametrize("make", [_hybrid, _qdrant, _edge], ids=["HybridStore", "QdrantHybridStore-local", "QdrantEdgeStore"])
def test_searchers_and_writers(make):
    store, close = make()
    vectors: dict[str, np.ndarray] = {}
    deleted_at: dict[str, float] = {}
    live: set[str] = set()
    book = threading.Lock()
    errors: list[BaseException] = []
    stop = threading.Event()
    counts = {"searches": 0, "adds": 0, "deletes": 0}

    def add(prefix: str, n: int, seed: int) -> list[str]:
        enc = make_encoded(np.random.default_rng(seed), n)
        ids = [f"{prefix}-{i}" for i in range(n)]
        with book:
            for i, doc_id in enumerate(ids):
                vectors[doc_id] = enc.dense[i]
        store.add_encoded(enc, ids=ids, metadatas=[{"w": prefix} for _ in ids])
        with book:
            live.update(ids)
        return ids

    add("base", 60, 0)
    queries = [make_query(np.random.default_rng(100 + i)) for i in range(4)]

    def searcher(j: int) -> None:
        rng = np.random.default_rng(j)
        try:
            while not stop.is_set():
                q = queries[int(rng.integers(len(queries)))]
                modes = ("dense", ("dense", "sparse", "colbert"), "colbert")[int(rng.integers(3))]
                started = time.monotonic()
                hits = store.search_encoded(q, k=15, modes=modes)
                ids = [h.id for h in hits]
                assert len(ids) == len(set(ids))
                assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
                with book:
                    for h in hits:
                        gone = deleted_at.get(h.id)
                        assert gone is None or gone > started, f"{h.id} returned after its delete returned"
                        if "dense" in h.scores:
                            assert h.scores["dense"] == pytest.approx(float(vectors[h.id] @ q.dense[0]), abs=1e-4)
                    counts["searches"] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def writer(w: int) -> None:
        rng = np.random.default_rng(1000 + w)
        r = 0
        try:
            while not stop.is_set():
                ids = add(f"w{w}r{r}", 6, 10 * w + r)
                victims = ids[::2]
                with book:
                    old = sorted(x for x in live if x.startswith("base-") and int(x[5:]) % N_WRITERS == w)
                if old and rng.random() < 0.5:
                    victims.append(old[0])
                removed = store.delete(victims)
                now = time.monotonic()
                with book:
                    for x in victims:
                        deleted_at[x] = now
                    live.difference_update(victims)
                    counts["adds"] += 1
                    counts["deletes"] += 1
                assert removed == len(victims)
                r += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=searcher, args=(j,)) for j in range(N_SEARCHERS)]
    threads += [threading.Thread(target=writer, args=(w,)) for w in range(N_WRITERS)]
    for t in threads:
        t.start()
    time.sleep(SECONDS)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    try:
        assert not errors, repr(errors[0])
        assert counts["searches"] > 0 and counts["adds"] > 0
        assert len(store) == len(live)
        assert sorted(store.ids()) == sorted(live)
        assert len(store.search_encoded(queries[0], k=10**6, modes="dense")) == len(live)
    finally:
        close(store)


def test_server_client_takes_no_lock():
    qdrant_client = pytest.importorskip("qdrant_client")
    from m3_rag.qdrant import QdrantHybridStore

    assert QdrantHybridStore._is_local(qdrant_client.QdrantClient(location=":memory:"))
    # no server there: check_compatibility=False keeps the client from probing it (a warning that could
    # otherwise surface in a later test's warning capture)
    remote = qdrant_client.QdrantClient(url="http://127.0.0.1:9", check_compatibility=False)
    try:
        assert not QdrantHybridStore._is_local(remote)
    finally:
        remote.close()


@pytest.mark.parametrize("make", [_hybrid, _edge], ids=["HybridStore", "QdrantEdgeStore"])
def test_a_search_sees_a_delete_or_an_add_whole_never_half(make):
    """A batch of 40 near-duplicate documents is deleted and re-added in single calls while searches run: every
    search (candidates, rescoring and payloads) sees all 40 or none of them."""
    store, close = make()
    rng = np.random.default_rng(7)
    base = make_encoded(rng, 30)
    store.add_encoded(base, ids=[f"b{i}" for i in range(30)])
    q = make_query(np.random.default_rng(8))
    batch = make_encoded(np.random.default_rng(9), 40)
    batch.dense[:] = q.dense[0]  # the batch ranks first in dense, whatever else happens
    ids = [f"x{i}" for i in range(40)]
    store.add_encoded(batch, ids=ids)
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            while not stop.is_set():
                store.delete(ids)
                store.add_encoded(batch, ids=ids)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def searcher() -> None:
        try:
            while not stop.is_set():
                hits = store.search_encoded(q, k=100, modes=("dense", "sparse", "colbert"))
                seen.append(sum(h.id.startswith("x") for h in hits))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(min(SECONDS, 5))
    stop.set()
    for t in threads:
        t.join(timeout=120)
    try:
        assert not errors, repr(errors[0])
        assert seen and set(seen) <= {0, 40}, sorted(set(seen))
    finally:
        close(store)


def test_rwlock_is_reentrant_refuses_upgrades_and_prefers_writers():
    from m3_rag._rwlock import RWLock

    lock = RWLock()
    with lock.write():
        with lock.write():  # the writer re-enters
            with lock.read():
                pass
    with lock.read():
        with pytest.raises(RuntimeError, match="upgrade"):
            with lock.write():
                pass
    order: list[str] = []
    entered = threading.Event()

    def reader(name: str) -> None:
        with lock.read():
            order.append(name)

    def writer() -> None:
        entered.set()
        with lock.write():
            order.append("w")

    with lock.read():
        w = threading.Thread(target=writer)
        w.start()
        entered.wait()
        time.sleep(0.2)  # the writer is waiting now
        r = threading.Thread(target=reader, args=("r2",))
        r.start()
        time.sleep(0.2)
        with lock.read():  # a nested read by a holder is admitted even while a writer waits
            order.append("nested")
    w.join(5)
    r.join(5)
    assert order == ["nested", "w", "r2"]
