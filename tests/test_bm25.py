"""The bm25 per-mode index: hand-computed scores, parity with bm25s, live statistics, bad input, persistence."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

bm25s = pytest.importorskip("bm25s")
Stemmer = pytest.importorskip("Stemmer")

from m3_rag.index.bm25 import BM25_VARIANTS, BM25Index, Bm25Tokenizer  # noqa: E402


def _adi(datasets_dir: Path) -> tuple[list[str], list[str]]:
    folder = datasets_dir / "adi"
    docs = [json.loads(l) for l in open(folder / "corpus.jsonl", encoding="utf-8")]
    queries = [json.loads(l)["text"] for l in open(folder / "queries.jsonl", encoding="utf-8")]
    return [(d.get("title", "") + "\n" + d.get("text", "")).strip() for d in docs], queries


def _bm25s_scores(docs: list[str], queries: list[str], **kw) -> np.ndarray:
    st = Stemmer.Stemmer("english")
    r = bm25s.BM25(**kw)
    r.index(bm25s.tokenize(docs, stopwords="en", stemmer=st, show_progress=False), show_progress=False)
    qt = bm25s.tokenize(queries, stopwords="en", stemmer=st, return_ids=False, show_progress=False)
    return np.stack([r.get_scores(q) if q else np.zeros(len(docs), np.float32) for q in qt]).astype(np.float64)


def _ours(ix: BM25Index, queries: list[str], slots: np.ndarray) -> np.ndarray:
    return np.stack(ix.score(queries, [slots] * len(queries)))


def _index(docs, **kw) -> BM25Index:
    ix = BM25Index(**kw)
    ix.append(ix.prepare(docs))
    return ix


def test_hand_computed_example():
    docs = ["apple banana", "apple apple cherry", "durian"]
    ix = _index(docs, k1=1.2, b=0.5, language=None, stopwords=None)
    # N = 3, lengths 2, 3, 1 -> avgdl 2; query "apple": df = 2, lucene idf = ln(1 + 1.5 / 2.5)
    idf = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))

    def tfc(tf, dl):
        return tf / (1.2 * (1 - 0.5 + 0.5 * dl / 2) + tf)

    got = ix.score(["apple"], [np.arange(3)])[0]
    np.testing.assert_allclose(got, [idf * tfc(1, 2), idf * tfc(2, 3), 0.0], rtol=1e-12)
    s, i = ix.topk(["apple"], 5, None)
    assert i[0].tolist() == [1, 0, -1, -1, -1]
    np.testing.assert_allclose(s[0, :2], [idf * tfc(2, 3), idf * tfc(1, 2)], rtol=1e-12)
    assert ix.explain("apple durian", 1) == pytest.approx({"apple": idf * tfc(2, 3)})
    ex = ix.explain("apple apple durian", 2)  # repeated query terms count twice, like bm25s
    assert list(ex) == ["durian"]
    assert ix.explain("zebra", 0) == {}


def test_tokenizer_matches_bm25s(datasets_dir: Path):
    docs, queries = _adi(datasets_dir)
    st = Stemmer.Stemmer("english")
    ref = bm25s.tokenize(docs + queries + ["", "🙂 東京 Ünïcode's"], stopwords="en", stemmer=st,
                         return_ids=False, show_progress=False)
    assert Bm25Tokenizer("english", "en")(docs + queries + ["", "🙂 東京 Ünïcode's"]) == ref


@pytest.mark.parametrize("variant", BM25_VARIANTS)
def test_parity_with_bm25s(datasets_dir: Path, variant: str):
    docs, queries = _adi(datasets_dir)
    ref = _bm25s_scores(docs, queries, method=variant, k1=1.2, b=0.7)
    ours = _ours(_index(docs, variant=variant, k1=1.2, b=0.7), queries, np.arange(len(docs)))
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-5)
    assert np.abs(ref).max() > 1.0  # a real comparison


@pytest.mark.parametrize("variant", ["lucene", "bm25+"])
def test_add_upsert_delete_keep_exact_scores(datasets_dir: Path, variant: str):
    docs, queries = _adi(datasets_dir)
    ix = BM25Index(variant=variant)
    ix.append(ix.prepare(docs[:40]))
    ix.append(ix.prepare(docs[40:]))
    live = list(range(len(docs)))
    # delete 10 docs, "upsert" 5 more (tombstone old slot, append new text)
    ix.discard(np.arange(0, 20, 2))
    for s in range(0, 20, 2):
        live.remove(s)
    texts = {s: docs[s] for s in range(len(docs))}
    for j, s in enumerate([21, 23, 25, 27, 29]):
        ix.discard(np.array([s]))
        live.remove(s)
        texts[len(ix)] = docs[s] + " information retrieval system " * (j + 1)
        ix.append(ix.prepare([texts[len(ix)]]))
        live.append(len(ix) - 1)
    ix.discard(np.array([0, 2]))  # idempotent
    assert ix.n_live == len(live)
    slots = np.array(live)
    ref = _bm25s_scores([texts[s] for s in live], queries, method=variant)
    np.testing.assert_allclose(_ours(ix, queries, slots), ref, rtol=1e-6, atol=1e-5)
    # topk never returns dead slots and agrees with the reference order
    s, i = ix.topk(queries[:5], 10, None)
    assert not set(i[i >= 0].tolist()) & (set(range(len(ix))) - set(live))
    # compaction keeps the same scores
    c = ix.compact(slots)
    np.testing.assert_allclose(_ours(c, queries, np.arange(len(live))), ref, rtol=1e-6, atol=1e-5)
    assert ix.n_live == len(live)  # self unchanged


def test_topk_allowed_is_a_restriction_not_statistics(datasets_dir: Path):
    docs, queries = _adi(datasets_dir)
    ix = _index(docs)
    allowed = np.zeros(len(docs), bool)
    allowed[::3] = True
    full = _ours(ix, queries[:3], np.arange(len(docs)))
    s, i = ix.topk(queries[:3], 5, allowed)
    for r in range(3):
        sel = i[r][i[r] >= 0]
        assert allowed[sel].all()
        np.testing.assert_allclose(s[r, : sel.size], full[r, sel])
        cand = np.flatnonzero(allowed & (full[r] > 0))
        best = cand[np.argsort(-full[r, cand], kind="stable")][:5]
        assert sel.tolist() == best.tolist()


def test_empty_query_and_unknown_terms_give_empty_results():
    ix = _index(["the cat sat", "a dog ran"])
    for q in ["", "the and of", "zebra unicorn", "🙂"]:
        s, i = ix.topk([q], 3, None)
        assert (i == -1).all() and (s == 0).all()
        assert (ix.score([q], [np.arange(2)])[0] == 0).all()
    assert ix.score(["cat"], [np.zeros(0, np.int64)])[0].shape == (0,)
    empty = BM25Index()
    assert empty.topk(["cat"], 2, None)[1].tolist() == [[-1, -1]]


@pytest.mark.parametrize(
    "kw, exc, needle",
    [
        ({"k1": -0.1}, ValueError, "k1"),
        ({"b": 1.5}, ValueError, "b must be in [0, 1]"),
        ({"b": -0.01}, ValueError, "b must be in [0, 1]"),
        ({"k1": float("nan")}, TypeError, "k1"),
        ({"k1": "1.5"}, TypeError, "k1"),
        ({"delta": -1}, ValueError, "delta"),
        ({"variant": "okapi"}, ValueError, "lucene"),
        ({"language": "klingon"}, ValueError, "english"),
        ({"stopwords": "elvish"}, ValueError, "allowed"),
    ],
)
def test_bad_parameters(kw, exc, needle):
    with pytest.raises(exc, match=None) as ei:
        BM25Index(**kw)
    assert needle in str(ei.value)


def test_bad_rows_and_queries():
    ix = _index(["a cat"])
    with pytest.raises(TypeError, match="row 1"):
        ix.prepare(["ok", 3])
    with pytest.raises(TypeError):
        ix.prepare("not a list")
    with pytest.raises(TypeError, match="query 0"):
        ix.topk([None], 1, None)
    with pytest.raises(ValueError, match="k must be"):
        ix.topk(["cat"], 0, None)
    with pytest.raises(IndexError):
        ix.discard(np.array([5]))
    with pytest.raises(IndexError):
        ix.explain("cat", 3)
    assert len(ix) == 1 and ix.n_live == 1


def _loader(arrays):
    def load(name, dtype, ndim, rows=None, mmap=False):
        a = arrays[name]
        if (dtype is not None and a.dtype.kind != np.dtype(dtype).kind) or a.ndim != ndim or (rows is not None and a.shape[0] != rows):
            raise ValueError(f"bad array {name}")
        return a
    return load


def test_persistence_round_trip(datasets_dir: Path, tmp_path: Path):
    docs, queries = _adi(datasets_dir)
    ix = _index(docs, variant="atire", k1=1.1, b=0.6)
    ix.discard(np.array([3, 7]))
    ix.append(ix.prepare(["naïve façade 東京 " * 3]))
    meta, arrays = ix.to_arrays()
    meta = json.loads(json.dumps(meta))
    for name, a in arrays.items():  # through real .npy files, no pickle
        np.save(tmp_path / name, a, allow_pickle=False)
    loaded = {n: np.load(tmp_path / n, allow_pickle=False) for n in arrays}
    back = BM25Index.from_arrays(meta, _loader(loaded), len(ix))
    slots = np.arange(len(ix))
    np.testing.assert_array_equal(_ours(back, queries, slots), _ours(ix, queries, slots))
    assert back.n_live == ix.n_live and back.vocabulary == ix.vocabulary
    assert back.explain("façade", len(ix) - 1) == ix.explain("façade", len(ix) - 1)
    bad = dict(loaded)
    bad["bm25_terms.npy"] = loaded["bm25_terms.npy"] + 10**6
    with pytest.raises(ValueError, match="corrupt"):
        BM25Index.from_arrays(meta, _loader(bad), len(ix))
    with pytest.raises(ValueError, match="format"):
        BM25Index.from_arrays({**meta, "format": 99}, _loader(loaded), len(ix))


@pytest.mark.parametrize("variant", ["lucene", "atire", "bm25l"])
def test_explain_contributions_sum_to_score(datasets_dir: Path, variant: str):
    docs, queries = _adi(datasets_dir)
    ix = _index(docs, variant=variant)
    s, i = ix.topk(queries[:4], 3, None)
    for q, row_s, row_i in zip(queries[:4], s, i):
        for score, slot in zip(row_s, row_i):
            ex = ix.explain(q, int(slot))
            assert ex and all(isinstance(k, str) for k in ex)
            # BM25L/BM25+ add idf * tfc(0) of every query term to every document (as bm25s does)
            t, m = ix.query_terms([q])[0]
            const = float((m * ix._idf(ix._df[t])).sum() * ix._tfc0())
            assert sum(ex.values()) + const == pytest.approx(score, rel=1e-9)


def test_allowed_mask_must_cover_every_slot():
    ix = _index(["a cat", "a dog"])
    with pytest.raises(ValueError, match="2 slots"):
        ix.topk(["cat"], 1, np.ones(3, bool))
