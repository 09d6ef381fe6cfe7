"""The bm25 mode inside HybridStore and the search pipeline: parity with bm25s through add/delete/upsert,
fusion, explain, persistence, model defaults, bad input, and all-or-nothing mutations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

bm25s = pytest.importorskip("bm25s")
Stemmer = pytest.importorskip("Stemmer")

from m3_rag import HybridStore, M3Output  # noqa: E402
from m3_rag.fusion import fuse  # noqa: E402
from m3_rag.index.bm25 import BM25Index  # noqa: E402
from m3_rag.search.options import default_fusion, default_modes, default_weights, parse_options  # noqa: E402
from test_bm25 import _adi, _bm25s_scores as _bm25s  # noqa: E402  (the same corpus and bm25s reference)
from test_store import make_encoded, make_query  # noqa: E402


def _check_parity(store: HybridStore, live: dict[str, str], queries: list[str]) -> None:
    """Every query's bm25 top-k equals bm25s over exactly the live texts (scores to 1e-5, order by the tie rule)."""
    ids = list(live)
    ref = _bm25s(list(live.values()), queries)
    for q, row in zip(queries, ref):
        hits = store.search(q, modes="bm25", k=len(ids))
        got = {h.id: h.score for h in hits}
        want = {ids[j]: float(row[j]) for j in np.flatnonzero(row > 0)}
        assert got.keys() == want.keys()
        for doc_id, s in want.items():
            assert got[doc_id] == pytest.approx(s, abs=1e-5)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_store_scores_equal_bm25s_through_delete_and_upsert(datasets_dir: Path):
    docs, queries = _adi(datasets_dir)
    queries = queries[:12]
    store = HybridStore(modes="bm25")
    ids = [f"d{i}" for i in range(len(docs))]
    store.add(docs, ids=ids)
    live = dict(zip(ids, docs))
    _check_parity(store, live, queries)
    assert max(h.score for h in store.search(queries[0], modes="bm25")) > 1.0  # a real comparison
    # delete a few (no compaction), then many (compaction): IDF and average length follow
    store.delete(ids[:3])
    for i in ids[:3]:
        del live[i]
    _check_parity(store, live, queries)
    store.delete(ids[3:30])
    for i in ids[3:30]:
        del live[i]
    _check_parity(store, live, queries)
    # upsert: the old versions stop counting, the new ones go last
    new_texts = [docs[0], "information retrieval of retrieval systems", docs[40]]
    store.add(new_texts, ids=[ids[40], ids[41], "fresh"])
    for i, t in zip([ids[40], ids[41], "fresh"], new_texts):
        live.pop(i, None)
        live[i] = t
    assert store.ids() == list(live)
    _check_parity(store, live, queries)


def test_bm25_alone_needs_no_encoder_and_empty_query_is_empty():
    store = HybridStore(modes=("bm25",))
    store.add(["the quick brown fox", "lazy dogs sleep", "quick foxes"], ids=["a", "b", "c"])
    assert store.modes == ("bm25",)
    assert [h.id for h in store.search("quick fox", modes="bm25")] == ["c", "a"]
    assert [h.id for h in store.search("quick fox")] == ["c", "a"]  # the default modes of a bm25-only store
    assert store.search("", modes="bm25") == []
    assert store.search("the and of", modes="bm25") == []  # stop-words only: no term, no error
    assert store.search("zebra", modes="bm25") == []
    hits = store.search("quick", modes="bm25", explain=True)
    assert hits[0].explain == {"bm25:quick": pytest.approx(hits[0].score)}
    assert store.memory_bytes()["bm25"] > 0


def _hybrid_store(n: int = 30, seed: int = 0, texts: list | None = None) -> tuple[HybridStore, list[str]]:
    rng = np.random.default_rng(seed)
    words = ["apple", "banana", "cherry", "durian", "elder", "fig", "grape", "honeydew"]
    if texts is None:
        texts = [" ".join(rng.choice(words, size=int(rng.integers(2, 8)))) for _ in range(n)]
    store = HybridStore(modes=("dense", "sparse", "colbert", "bm25"))
    store.add_encoded(make_encoded(rng, n), ids=[f"d{i}" for i in range(n)], texts=texts)
    return store, texts


@pytest.mark.parametrize("fusion", ["weighted", "rrf", "dbsf"])
def test_bm25_fuses_like_any_mode(fusion: str):
    store, texts = _hybrid_store()
    q = make_query(np.random.default_rng(5))
    modes = ("dense", "sparse", "bm25")
    hits = store.search_encoded(q, query_text="apples and figs", modes=modes, fusion=fusion, k=30, candidates=30)
    assert len(hits) == 30 and all(set(h.scores) == set(modes) for h in hits)
    exact = {h.id: store.search_encoded(q, query_text="apples and figs", modes="bm25", k=30) for h in hits[:1]}
    bm25_scores = {h.id: h.score for h in next(iter(exact.values()))}
    for h in hits:  # every candidate is scored exactly in bm25 (0 when it has no query stem)
        assert h.scores["bm25"] == pytest.approx(bm25_scores.get(h.id, 0.0), abs=1e-9)
    opts = parse_options(store.modes, modes=modes, fusion=fusion)
    fused = fuse(fusion, {m: np.array([h.scores[m] for h in hits]) for m in modes}, opts.weights)
    np.testing.assert_allclose([h.score for h in hits], fused, rtol=1e-9)
    # explain (sparse explain needs an encoder, bm25's does not): bm25 stems prefixed, summing to the bm25 score
    hits = store.search_encoded(q, query_text="apples and figs", modes=("dense", "bm25"), fusion=fusion, k=30,
                                explain=True)
    for h in hits:
        stems = {k: v for k, v in h.explain.items() if k.startswith("bm25:")}
        assert sum(stems.values()) == pytest.approx(h.scores["bm25"], abs=1e-9)
        assert set(stems) <= {"bm25:appl", "bm25:fig"}
    assert any(k.startswith("bm25:") for h in hits for k in h.explain)


def test_bm25_is_a_first_stage():
    # the bm25-only matches must reach the candidates even when dense ranks them last
    rng = np.random.default_rng(3)
    n = 200
    texts = ["filler words here"] * n
    texts[150] = "zyzzyva unique"
    store = HybridStore(modes=("dense", "bm25"))
    store.add_encoded(make_encoded(rng, n, modes=("dense",)), ids=[str(i) for i in range(n)], texts=texts)
    q = make_query(rng, modes=("dense",))
    depths = parse_options(store.modes, modes=("dense", "bm25")).depths
    assert set(depths) == {"dense", "bm25"}
    dense_top = [h.id for h in store.search_encoded(q, modes="dense", k=10)]
    assert "150" not in dense_top
    hits = store.search_encoded(q, query_text="zyzzyva", modes=("dense", "bm25"), k=1, candidates=5,
                                weights={"dense": 0.1, "bm25": 1.0})
    assert [h.id for h in hits] == ["150"]  # reached the candidates through the bm25 first stage only


def test_texts_missing_or_partial():
    rng = np.random.default_rng(0)
    store = HybridStore(modes=("dense", "bm25"))
    store.add_encoded(make_encoded(rng, 5, modes=("dense",)), ids=list("abcde"))  # no texts: no bm25 entries
    q = make_query(rng, modes=("dense",))
    with pytest.raises(ValueError, match="has a bm25 entry"):
        store.search_encoded(q, query_text="apple", modes="bm25")
    with pytest.raises(ValueError, match="has a bm25 entry"):
        store.search_encoded(q, query_text="apple", modes=("dense", "bm25"))
    assert len(store.search_encoded(q, modes="dense")) == 5
    with pytest.raises(ValueError, match="needs the query text"):
        store.search_encoded(q, modes=("dense", "bm25"))
    # partial: rows without text never match and do not count in IDF
    store.add_encoded(make_encoded(rng, 2, modes=("dense",)), ids=["f", "g"], texts=["apple pie", None])
    hits = store.search_encoded(q, query_text="apple", modes="bm25", k=10)
    assert [h.id for h in hits] == ["f"]
    assert hits[0].score == pytest.approx(_bm25s(["apple pie"], ["apple"])[0, 0], abs=1e-6)
    fused = store.search_encoded(q, query_text="apple", modes=("dense", "bm25"), k=7)
    assert {h.id: h.scores["bm25"] for h in fused if h.id != "f"} == {i: 0.0 for i in "abcdeg"}


def test_bad_bm25_input():
    with pytest.raises(ValueError, match="unknown stemmer language 'klingon'.*english"):
        HybridStore(modes="bm25", bm25_language="klingon")
    for k1 in (0, -1.0):
        with pytest.raises(ValueError, match="k1 must be > 0"):
            HybridStore(modes="bm25", bm25_k1=k1)
    for b in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"b must be in \[0, 1\]"):
            HybridStore(modes="bm25", bm25_b=b)
    with pytest.raises(ValueError, match="variant"):
        HybridStore(modes="bm25", bm25_method="bm99")
    with pytest.raises(ValueError, match="does not hold bm25"):
        HybridStore(bm25_k1=1.2)
    store = HybridStore(modes=("dense", "bm25"))
    rng = np.random.default_rng(0)
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str or None"):
        store.add_encoded(make_encoded(rng, 2, modes=("dense",)), texts=["ok", 3])
    with pytest.raises(TypeError, match=r"texts\[0\] must be a str"):
        HybridStore(modes="bm25").add([b"bytes"])
    assert len(store) == 0
    store.add_encoded(make_encoded(rng, 2, modes=("dense",)), texts=["ok", "fine"])
    with pytest.raises(TypeError, match="query_text must be a str"):
        store.search_encoded(make_query(rng, modes=("dense",)), query_text=5, modes="bm25")
    with pytest.raises(ValueError, match="does not hold the bm25 mode"):
        HybridStore().search_encoded(make_query(rng), query_text="x", modes="bm25") if False else (
            _dense_store(rng).search_encoded(make_query(rng, modes=("dense",)), query_text="x", modes="bm25"))


def _dense_store(rng) -> HybridStore:
    s = HybridStore()
    s.add_encoded(make_encoded(rng, 3, modes=("dense",)), texts=["a", "b", "c"])
    return s


def test_persistence_round_trip(tmp_path: Path):
    store, texts = _hybrid_store(40)
    store.add_encoded(make_encoded(np.random.default_rng(9), 2), ids=["d1", "x"], texts=["fig fig fig", None])
    store.delete(["d2"])
    q = make_query(np.random.default_rng(4))
    before = store.search_encoded(q, query_text="fig grape", modes=("dense", "bm25"), k=10, explain=True)
    store.save(tmp_path / "s")
    header = json.loads((tmp_path / "s" / "store.json").read_text())
    assert header["format_version"] == 2 and header["modes"][-1] == "bm25" and header["format"] == "m3-rag.HybridStore"
    back = HybridStore.load(tmp_path / "s")
    assert back.modes == store.modes and back.bm25_options == store.bm25_options
    after = back.search_encoded(q, query_text="fig grape", modes=("dense", "bm25"), k=10, explain=True)
    assert [(h.id, h.score, h.explain) for h in after] == [(h.id, pytest.approx(h.score), h.explain) for h in before]
    # still live after loading: add and delete keep bm25 exact
    back.add_encoded(make_encoded(np.random.default_rng(1), 1), ids=["y"], texts=["grape"])
    assert "y" in [h.id for h in back.search_encoded(q, query_text="grape", modes="bm25", k=50)]
    # non-default options survive the round trip
    s2 = HybridStore(modes="bm25", bm25_language="german", bm25_stopwords=None, bm25_k1=1.2, bm25_b=0.5,
                     bm25_method="bm25+")
    s2.add(["Häuser und Bäume", "das Haus"])
    s2.save(tmp_path / "g")
    b2 = HybridStore.load(tmp_path / "g")
    assert b2.bm25_options == {"language": "german", "stopwords": None, "k1": 1.2, "b": 0.5, "method": "bm25+"}
    assert [(h.id, h.score) for h in b2.search("Haus", modes="bm25")] == [(h.id, h.score) for h in s2.search("Haus", modes="bm25")]


def test_store_without_bm25_still_saves_version_1(tmp_path: Path):
    store = HybridStore()
    store.add_encoded(make_encoded(np.random.default_rng(0), 3), texts=["a", "b", "c"])
    store.save(tmp_path / "s")
    assert json.loads((tmp_path / "s" / "store.json").read_text())["format_version"] == 1


def _fake_encoder(**attrs):
    class E:
        pass

    e = E()
    for k, v in attrs.items():
        setattr(e, k, v)
    return e


def test_model_defaults_for_mode_sets():
    enc = _fake_encoder(
        fusion_weights={"dense": 1.0, "sparse": 0.3, "colbert": 5.0},
        fusion_weights_by_modes={"dense+bm25": {"dense": 1.0, "bm25": 0.05}},
        default_modes=("dense", "colbert", "bm25"), default_fusion="rrf",
    )
    assert default_weights(enc, ("dense", "bm25"))["bm25"] == 0.05
    assert default_weights(enc, ("dense", "sparse"))["sparse"] == 0.3
    assert default_weights(None, ("bm25",))["bm25"] == 0.02
    # the model's recommendation applies as a whole, when the store holds all of its modes
    assert default_modes(enc, ("dense", "sparse", "colbert", "bm25")) == ("dense", "colbert", "bm25")
    assert default_fusion(enc, ("dense", "sparse", "colbert", "bm25")) == "rrf"
    opts = parse_options(("dense", "sparse", "colbert", "bm25"), encoder=enc)
    assert opts.modes == ("dense", "colbert", "bm25") and opts.fusion == "rrf"
    # otherwise the store's own M3 modes, weighted (the recommendation without bm25 is not a tested choice)
    assert default_modes(enc, ("dense", "sparse", "bm25")) == ("dense", "sparse", "bm25")
    assert default_fusion(enc, ("dense", "sparse", "bm25")) == "weighted"
    assert default_modes(enc, ("sparse",)) == ("dense", "sparse", "colbert")  # M3 modes: as before (not held: an error)
    assert default_modes(enc, None) == ("dense", "colbert", "bm25") and default_fusion(None) == "weighted"
    opts = parse_options(("dense", "sparse", "bm25"), encoder=enc)
    assert opts.modes == ("dense", "sparse", "bm25") and opts.fusion == "weighted"
    opts = parse_options(("dense", "bm25"), encoder=enc, fusion="weighted")
    assert dict(opts.weights) == {"dense": 1.0, "bm25": 0.05}


def test_m3_model_json_keys(tiny_ckpt: Path, tmp_path: Path):
    import shutil

    from m3_rag import M3Encoder

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    meta = {"fusion_weights": {"dense": 1.0, "sparse": 0.5, "colbert": 2.0, "bm25": 0.1},
            "fusion_weights_by_modes": {"dense+sparse+colbert+bm25": {"dense": 1, "sparse": 0.2, "colbert": 3,
                                                                      "bm25": 0.04}},
            "default_modes": ["bm25", "dense"], "default_fusion": "dbsf"}
    (ckpt / "m3_model.json").write_text(json.dumps(meta))
    enc = M3Encoder.from_pretrained(ckpt, device="cpu")
    assert enc.fusion_weights["bm25"] == 0.1
    assert enc.fusion_weights_by_modes == {"dense+sparse+colbert+bm25": {"dense": 1.0, "sparse": 0.2, "colbert": 3.0,
                                                                         "bm25": 0.04}}
    assert enc.default_modes == ("dense", "bm25") and enc.default_fusion == "dbsf"
    store = HybridStore(enc, modes=("dense", "sparse", "colbert", "bm25"))
    store.add(["apple pie recipe", "banana bread", "cherry tart"], ids=["a", "b", "c"])
    hits = store.search("apple")
    assert set(hits[0].scores) == {"dense", "bm25"}
    assert store.search("apple", modes=("dense", "sparse", "colbert", "bm25"), fusion="weighted", k=1)[0].scores
    w = parse_options(store.modes, encoder=enc, modes=store.modes, fusion="weighted").weights
    assert dict(w) == {"dense": 1.0, "sparse": 0.2, "colbert": 3.0, "bm25": 0.04}
    for bad, match in (({"default_fusion": "max"}, "default_fusion"), ({"default_modes": ["bm99"]}, "default_modes"),
                       ({"fusion_weights_by_modes": {"bm25+dense": {"dense": 1, "bm25": 1}}}, "order"),
                       ({"fusion_weights_by_modes": {"dense+bm25": {"dense": 1}}}, "exactly"),
                       ({"fusion_weights": {"dense": -1}}, "fusion_weights")):
        (ckpt / "m3_model.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match):
            M3Encoder.from_pretrained(ckpt, device="cpu")


class Boom(MemoryError):
    pass


def _state(store: HybridStore) -> list:
    q = make_query(np.random.default_rng(7))
    return [store.ids(), [(h.id, h.score) for h in store.search_encoded(q, query_text="fig apple grape",
                                                                       modes="bm25", k=50)],
            store._indexes["bm25"].n_live, store._indexes["bm25"]._total_len]


@pytest.mark.parametrize("where", ["append", "recount", "dense"])
def test_failed_mutations_change_bm25_nothing(monkeypatch, where: str):
    store, _ = _hybrid_store(40)
    before = _state(store)
    rng = np.random.default_rng(1)

    def boom(*a, **k):
        raise Boom("injected")

    with monkeypatch.context() as mp:
        if where == "append":
            original = BM25Index.append

            def after(self, *a, **k):  # mutate, then fail
                original(self, *a, **k)
                raise Boom("injected")
            mp.setattr(BM25Index, "append", after)
        elif where == "recount":
            mp.setattr(BM25Index, "_recount", boom)
        else:
            from m3_rag.index.dense import DenseIndex
            mp.setattr(DenseIndex, "append", boom)
        n_up = 20 if where == "recount" else 5  # 20 upserts of 40: compaction during the add
        with pytest.raises(Boom):  # an upsert plus new rows
            store.add_encoded(make_encoded(rng, n_up + 3), ids=[f"d{i}" for i in range(n_up)] + ["n1", "n2", "n3"],
                              texts=["fig"] * (n_up + 3))
        if where == "recount":
            with pytest.raises(Boom):  # a delete large enough to compact
                store.delete([f"d{i}" for i in range(20)])
    assert _state(store) == before
    store.delete(["d0"])  # a small delete (no compaction) builds a new bm25 index: the old one is untouched
    assert store._indexes["bm25"].n_live == before[2] - 1


def test_empty_declared_store_round_trip(tmp_path: Path):
    HybridStore(modes=("dense", "bm25"), bm25_k1=1.2).save(tmp_path / "e")
    back = HybridStore.load(tmp_path / "e")
    assert back.modes == ("dense", "bm25") and back.bm25_options["k1"] == 1.2 and len(back) == 0
    back.add_encoded(make_encoded(np.random.default_rng(0), 2, modes=("dense",)), ids=["a", "b"],
                     texts=["hello world", "other"])
    assert [h.id for h in back.search_encoded(M3Output(text=["hello"]), modes="bm25")] == ["a"]
