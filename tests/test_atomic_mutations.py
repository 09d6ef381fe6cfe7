"""Every HybridStore mutation is all or nothing: a failure injected at any step (a MemoryError while merging
segments, compacting, or appending each mode's rows) leaves the store exactly as before and usable."""

from __future__ import annotations

import numpy as np
import pytest

from m3_rag import M3Output
from m3_rag.index._segments import Segments
from m3_rag.index.colbert import ColbertIndex
from m3_rag.index.dense import DenseIndex, _FlatBlocks
from m3_rag.index.sparse import SparseIndex
from m3_rag.store import HybridStore
from test_store import make_encoded, make_query

ALL = ("dense", "sparse", "colbert")
QUERY_MODES = ("dense", "sparse", "colbert", ALL, ("dense", "sparse"))


def state(store: HybridStore, queries: list[M3Output]) -> dict:
    """Everything observable about a store: ids, len, records, memory and the results of several searches."""
    out = {"ids": store.ids(), "len": len(store), "memory": store.memory_bytes(), "modes": store.modes,
           "dense_dim": store.dense_dim, "colbert_dim": store.colbert_dim}
    out["records"] = [(r.id, r.text, r.metadata) for r in store.get(out["ids"])]
    res = []
    for q in queries:
        for modes in QUERY_MODES:
            if set((modes,) if isinstance(modes, str) else modes) <= set(store.modes):
                res.append([(h.id, round(h.score, 5)) for h in store.search_encoded(q, k=7, modes=modes)])
    out["search"] = res
    return out


def build(kind: str = "flat", dtype: str = "fp16", seed: int = 0) -> tuple[HybridStore, list[M3Output]]:
    rng = np.random.default_rng(seed)
    store = HybridStore(dense_index=kind, colbert_dtype=dtype)
    store.add_encoded(make_encoded(rng, 40), ids=[f"a{i}" for i in range(40)],
                      texts=[f"t{i}" for i in range(40)], metadatas=[{"i": i} for i in range(40)])
    return store, [make_query(rng) for _ in range(3)]


class Boom(MemoryError):
    pass


def boom(*args, **kwargs):
    raise Boom("injected")


def after(original, n_calls: list[int] | None = None):
    """Run the original (mutating in place), then fail: the worst case for an in-place append."""

    def wrapped(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise Boom("injected after the in-place write")

    return wrapped


def check_unchanged_then_usable(store: HybridStore, queries: list[M3Output], before: dict, seed: int = 5) -> None:
    assert state(store, queries) == before
    # still usable: a valid add, an upsert and a delete all work and are searchable
    rng = np.random.default_rng(seed)
    store.add_encoded(make_encoded(rng, 5), ids=[f"z{i}" for i in range(5)])
    store.add_encoded(make_encoded(rng, 1), ids=["a0"])
    assert store.delete(["a1"]) == 1
    assert len(store) == len(before["ids"]) + 5 - 1
    ids = store.ids()
    assert ids[-1] == "a0" and "a1" not in ids and ids[-6:-1] == [f"z{i}" for i in range(5)]
    for q in queries:
        hits = store.search_encoded(q, k=len(store) + 5, modes=ALL)
        assert sorted(h.id for h in hits) == sorted(ids)


# ------------------------------------------------------------------------------- add: each step fails
ADD_FAILURES = {
    "segment merge": lambda mp: mp.setattr(Segments, "append", lambda self, data, n: boom()),
    "sparse append": lambda mp: mp.setattr(SparseIndex, "append", boom),
    "colbert append": lambda mp: mp.setattr(ColbertIndex, "append", boom),
    "sparse append after write": lambda mp: mp.setattr(SparseIndex, "append", after(SparseIndex.append)),
    "colbert append after write": lambda mp: mp.setattr(ColbertIndex, "append", after(ColbertIndex.append)),
    "dense append": lambda mp: mp.setattr(DenseIndex, "append", boom),
    "dense append after write": lambda mp: mp.setattr(DenseIndex, "append", after(DenseIndex.append)),
    "flat block add after write": lambda mp: mp.setattr(_FlatBlocks, "add", after(_FlatBlocks.add)),
    "bookkeeping": lambda mp: mp.setattr(HybridStore, "_install", boom),
}


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
@pytest.mark.parametrize("where", sorted(ADD_FAILURES))
def test_failed_add_changes_nothing(monkeypatch, kind, where):
    if kind == "hnsw" and "flat" in where:
        pytest.skip("the HNSW index has no flat blocks")
    store, queries = build(kind)
    before = state(store, queries)
    rng = np.random.default_rng(1)
    enc = make_encoded(rng, 30)  # 30 >= 40 / 2: the new segment merges with the first
    with monkeypatch.context() as mp:
        ADD_FAILURES[where](mp)
        with pytest.raises(Boom):
            store.add_encoded(enc, ids=[f"b{i}" for i in range(25)] + [f"a{i}" for i in range(5)],
                              metadatas=[{"new": True}] * 30)
    check_unchanged_then_usable(store, queries, before)


def test_failed_add_into_multi_block_flat_index(monkeypatch):
    """The flat index spans several FAISS blocks; an add filling one block and opening another is rolled back."""
    monkeypatch.setattr("m3_rag.index.dense._DENSE_BLOCK_BYTES", 16 * 4 * 16)  # 16 rows per block
    store, queries = build()
    assert len(store._indexes["dense"]._index.blocks) == 3
    before = state(store, queries)
    calls = {"n": 0}
    original = _FlatBlocks.add

    def fail_on_second_block(self, x):
        import faiss

        real = faiss.IndexFlatIP

        class Failing(real):  # the block opened by this add fails when vectors are added
            def add(inner, v):  # noqa: N805
                raise Boom("block add")

        monkeypatch.setattr(faiss, "IndexFlatIP", Failing)
        try:
            original(self, x)
        finally:
            monkeypatch.setattr(faiss, "IndexFlatIP", real)
            calls["n"] += 1

    monkeypatch.setattr(_FlatBlocks, "add", fail_on_second_block)
    with pytest.raises(Boom):
        store.add_encoded(make_encoded(np.random.default_rng(2), 20), ids=[f"b{i}" for i in range(20)])
    monkeypatch.setattr(_FlatBlocks, "add", original)
    assert calls["n"] == 1
    check_unchanged_then_usable(store, queries, before)


@pytest.mark.parametrize("where", ["dense", "sparse", "colbert", "segments"])
def test_failed_compaction_during_add_changes_nothing(monkeypatch, where):
    store, queries = build()
    before = state(store, queries)
    rng = np.random.default_rng(3)
    target = {"dense": DenseIndex, "sparse": SparseIndex, "colbert": ColbertIndex}.get(where)
    with monkeypatch.context() as mp:
        if target is None:
            mp.setattr(Segments, "compacted", boom)
        else:
            mp.setattr(target, "extended_compacted", boom)
        with pytest.raises(Boom):  # upserting 20 of 40 ids kills a third of the slots: compaction is due
            store.add_encoded(make_encoded(rng, 20), ids=[f"a{i}" for i in range(20)])
    check_unchanged_then_usable(store, queries, before)


@pytest.mark.parametrize("where", ["dense", "sparse", "colbert", "segments", "bookkeeping"])
def test_failed_delete_changes_nothing(monkeypatch, where):
    store, queries = build()
    before = state(store, queries)
    with monkeypatch.context() as mp:
        if where == "segments":
            mp.setattr(Segments, "compacted", boom)
        elif where == "bookkeeping":
            mp.setattr(HybridStore, "_install", boom)
        else:
            mp.setattr({"dense": DenseIndex, "sparse": SparseIndex, "colbert": ColbertIndex}[where], "compact", boom)
        with pytest.raises(Boom):  # 15 of 40 deleted: compaction is due
            store.delete([f"a{i}" for i in range(10, 25)])
    check_unchanged_then_usable(store, queries, before)


def test_failed_small_delete_and_clear_change_nothing(monkeypatch):
    store, queries = build()
    before = state(store, queries)
    with monkeypatch.context() as mp:
        mp.setattr(HybridStore, "_install", boom)
        with pytest.raises(Boom):  # no compaction due: only the bookkeeping swap can fail
            store.delete(["a3"])
    assert state(store, queries) == before
    with monkeypatch.context() as mp:
        mp.setattr(HybridStore, "_reset", boom)
        with pytest.raises(Boom):
            store.clear()
    check_unchanged_then_usable(store, queries, before)


def test_failed_save_compaction_changes_nothing(monkeypatch, tmp_path):
    store, queries = build()
    store.delete(["a1", "a2"])
    before = state(store, queries)
    with monkeypatch.context() as mp:
        mp.setattr(ColbertIndex, "compact", boom)
        with pytest.raises(Boom):
            store.save(tmp_path / "s")
    assert not (tmp_path / "s").exists()
    assert state(store, queries) == before
    store.save(tmp_path / "s")  # saving compacts (fewer bytes); everything else is unchanged
    loaded = state(HybridStore.load(tmp_path / "s"), queries)
    assert loaded["memory"]["dense"] < before["memory"]["dense"]
    assert {k: v for k, v in loaded.items() if k != "memory"} == {k: v for k, v in before.items() if k != "memory"}


def test_failed_load_leaves_nothing_half_built(tmp_path, monkeypatch):
    store, queries = build()
    store.save(tmp_path / "s")
    with monkeypatch.context() as mp:
        mp.setattr(ColbertIndex, "from_arrays", boom)
        with pytest.raises(Boom):
            HybridStore.load(tmp_path / "s")
    assert state(HybridStore.load(tmp_path / "s"), queries) == state(store, queries)


def test_upsert_then_failure_keeps_old_version(monkeypatch):
    store, queries = build()
    with monkeypatch.context() as mp:
        mp.setattr(ColbertIndex, "append", boom)
        with pytest.raises(Boom):
            store.add_encoded(make_encoded(np.random.default_rng(9), 1), ids=["a5"], texts=["new"])
    assert store.get(["a5"])[0].text == "t5" and store.ids().index("a5") == 5


@pytest.mark.parametrize("bad", [
    M3Output(dense=np.zeros((1, 0), np.float32)),
    M3Output(dense=np.zeros((2, 0), np.float32), sparse=[{}, {}]),
    M3Output(colbert=[np.zeros((0, 0), np.float32)]),
    M3Output(colbert=[np.zeros((3, 0), np.float32)]),
])
def test_zero_dimension_is_refused_and_fixes_nothing(bad):
    store = HybridStore()
    with pytest.raises(ValueError, match="dimension must be a positive int"):
        store.add_encoded(bad)
    assert len(store) == 0 and store.modes == () and store.dense_dim is None and store.colbert_dim is None
    rng = np.random.default_rng(4)
    store.add_encoded(make_encoded(rng, 3), ids=["x", "y", "z"])
    assert store.dense_dim == 16 and len(store.search_encoded(make_query(rng), k=5)) == 3
    existing, queries = build()
    before = state(existing, queries)
    with pytest.raises(ValueError):
        existing.add_encoded(M3Output(dense=np.zeros((1, 0), np.float32), sparse=[{}], colbert=[np.zeros((1, 8))]))
    assert state(existing, queries) == before
