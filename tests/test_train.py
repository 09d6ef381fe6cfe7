"""m3_rag.train: batch scoring against hand-computed values, BGE-M3 losses, and a short training run
on the tiny checkpoint (the loss goes down and the saved checkpoint loads)."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from m3_rag import M3Encoder
from m3_rag.scoring import colbert_score, lexical_score
from m3_rag.train import (
    M3Heads,
    TrainConfig,
    bm25_matrix,
    lexical_matrix,
    load_pairs,
    m3_losses,
    maxsim_matrix,
    register_cli,
    train_heads,
)

WORDS = (
    "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river mountain forest ocean "
    "engine wheel signal copper silver carbon oxygen planet comet violin guitar piano"
).split()


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread avoids waiting on a second busy core."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ws = rng.sample(WORDS, 7)
        out.append((" ".join(ws[:2]), " ".join(ws)))
    return out


# ------------------------------------------------------------------------------------------ scoring
def test_lexical_matrix_matches_lexical_score_by_hand():
    q_ids = torch.tensor([[5, 6, 6], [7, 0, 0]])
    q_w = torch.tensor([[0.5, 0.2, 0.4], [1.0, 0.0, 0.0]])
    p_ids = torch.tensor([[6, 9], [5, 7]])
    p_w = torch.tensor([[0.3, 2.0], [0.1, 0.5]])
    got = lexical_matrix(q_ids, q_w, p_ids, p_w)
    # query 0 = {5: .5, 6: .4 (max of .2, .4)}; passage 0 = {6: .3, 9: 2}; passage 1 = {5: .1, 7: .5}
    expected = [[0.4 * 0.3, 0.5 * 0.1], [0.0, 1.0 * 0.5]]
    assert torch.allclose(got, torch.tensor(expected), atol=1e-6)
    assert got[0, 0].item() == pytest.approx(lexical_score({5: 0.5, 6: 0.4}, {6: 0.3, 9: 2.0}))


def test_maxsim_matrix_matches_scoring_colbert_score_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(2, 3, 4, generator=g), dim=-1)
    p = torch.nn.functional.normalize(torch.randn(2, 5, 4, generator=g), dim=-1)
    q_mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    p_mask = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    got = maxsim_matrix(q, q_mask, p, p_mask)
    for a in range(2):
        for b in range(2):
            qa = q[a][q_mask[a] > 0].numpy()
            pb = p[b][p_mask[b] > 0].numpy()
            assert got[a, b].item() == pytest.approx(colbert_score(qa, pb), abs=1e-5)


def test_bm25_matrix_prefers_rare_matches():
    # token 9 occurs in every passage (idf 0 here), token 4 is rare
    idf = torch.zeros(10)
    idf[4] = 2.0
    q_ids = torch.tensor([[4, 9]])
    q_mask = torch.ones(1, 2)
    p_ids = torch.tensor([[9, 9, 1], [4, 9, 1]])
    p_mask = torch.ones(2, 3)
    s = bm25_matrix(q_ids, q_mask, p_ids, p_mask, idf, avg_len=3.0)
    assert s[0, 0].item() == 0.0
    # tf 1 at average length: idf * (k1 + 1) / (1 + k1) = idf
    assert s[0, 1].item() == pytest.approx(2.0)


def test_colbert_head_starts_as_identity_so_training_starts_at_zero_shot_maxsim():
    heads = M3Heads(8)
    states = torch.randn(3, 6, 8)
    mask = torch.ones(3, 6)
    vecs, vmask = heads.colbert_vectors(states, mask)
    assert torch.allclose(vecs, torch.nn.functional.normalize(states[:, 1:], dim=-1))
    assert vmask.shape == (3, 5)
    narrow = M3Heads(8, colbert_dim=4)
    narrow.init_colbert_pca(torch.randn(50, 8))
    assert narrow.colbert.weight.shape == (4, 8)


def test_sparse_weights_ignore_special_ids_and_padding():
    heads = M3Heads(4, unused_token_ids=[101, 0])
    with torch.no_grad():
        heads.sparse.weight.zero_()
        heads.sparse.bias.fill_(0.5)
    ids = torch.tensor([[101, 7, 102, 0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = heads.token_weights(torch.randn(1, 4, 4), ids, mask)
    assert w.tolist() == [[0.0, 0.5, 0.5, 0.0]]


def test_m3_losses_reward_the_diagonal():
    eye = torch.eye(4)
    good = {"dense": eye * 0.5, "sparse": eye * 0.5, "colbert": eye * 0.5}
    bad = {"dense": 0.5 - eye * 0.5, "sparse": 0.5 - eye * 0.5, "colbert": 0.5 - eye * 0.5}
    w = {"dense": 1.0, "sparse": 0.3, "colbert": 1.0}
    lg, lb = m3_losses(good, w, 0.05), m3_losses(bad, w, 0.05)
    assert lg["total"] < 0.1 < lb["total"]
    for key in ("inter", "dense", "sparse", "colbert", "dense_distill", "sparse_distill", "colbert_distill"):
        assert torch.isfinite(lg[key]) and key in lb
    with_lex = m3_losses(good, w, 0.05, lexical_teacher=eye * 10)
    assert "sparse_lexical" in with_lex and with_lex["total"] > lg["total"]


# ------------------------------------------------------------------------------------------ inputs
def test_load_pairs_formats_and_errors(tmp_path: Path):
    f = tmp_path / "pairs.jsonl"
    f.write_text(
        json.dumps({"query": "q1", "pos": ["p1", "p1b"], "neg": ["n"]}) + "\n\n" + json.dumps({"query": "q2", "positive": "p2"}) + "\n"
    )
    assert load_pairs(f) == [("q1", "p1"), ("q2", "p2")]
    assert load_pairs(f, limit=1) == [("q1", "p1")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_pairs(bad)
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_pairs(bad)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"batch_size": 1}, "batch_size"), ({"lr": 0}, "lr"), ({"device": "tpu"}, "device"),
     ({"weights": {"dense": 1.0}}, "weights"), ({"max_steps": 0}, "max_steps"),
     ({"colbert_anchor": -1.0}, "colbert_anchor"), ({"colbert_interpolation": 1.5}, "colbert_interpolation"), ({"lexical_weight": "1"}, "lexical_weight"),
     ({"sparse_drop_special_tokens": "yes"}, "sparse_drop_special_tokens")],
)
def test_train_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_train_heads_rejects_bad_pairs(tiny_ckpt: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="at least 2 pairs"):
        train_heads(tiny_ckpt, [("q", "p")], tmp_path / "out", TrainConfig(show_progress=False))
    with pytest.raises(TypeError, match=r"pairs\[1\]"):
        train_heads(tiny_ckpt, [("q", "p"), ("q", 3)], tmp_path / "out", TrainConfig(show_progress=False))


# ------------------------------------------------------------------------------------------ training
def test_training_lowers_the_loss_and_the_checkpoint_loads(tiny_ckpt: Path, tiny_encoder: M3Encoder, tmp_path: Path):
    pairs = _pairs(48)
    cfg = TrainConfig(epochs=12, batch_size=16, lr=5e-3, show_progress=False, max_query_length=16, max_passage_length=16)
    out = tmp_path / "ckpt"
    report = train_heads(tiny_ckpt, pairs, out, cfg, heldout=_pairs(16, seed=1), cache_dir=tmp_path / "cache")
    assert report["steps"] == 36
    assert report["loss_last"]["total"] < report["loss_first"]["total"]
    assert report["loss_last"]["colbert"] < report["loss_first"]["colbert"]
    assert set(report["heldout_after"]) >= {"dense", "sparse", "colbert", "zero_shot_maxsim", "fused", "bm25_tokens"}
    assert json.loads((out / "train_report.json").read_text())["steps"] == 36
    for name in ("sparse_linear.pt", "colbert_linear.pt", "1_Pooling/config.json", "sentence_bert_config.json", "config.json"):
        assert (out / name).exists(), name
    enc = M3Encoder.from_pretrained(out, device="cpu")
    assert enc.available_modes == ("dense", "sparse", "colbert")
    assert enc.colbert_dim == enc.dense_dim == 32
    texts = ["alpha beta", "river mountain forest"]
    got, ref = enc.encode(texts), tiny_encoder.encode(texts, sparse=False, colbert=False)
    np.testing.assert_allclose(got.dense, ref.dense, atol=1e-6)  # the frozen backbone is untouched
    assert all(len(w) > 0 for w in got.sparse)
    # the cache is reused: a second run does not rebuild it
    stamp = (tmp_path / "cache" / "train" / "passages" / "states.npy").stat().st_mtime_ns
    train_heads(tiny_ckpt, pairs, tmp_path / "ckpt2", TrainConfig(max_steps=1, batch_size=16, show_progress=False,
                max_query_length=16, max_passage_length=16), cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache" / "train" / "passages" / "states.npy").stat().st_mtime_ns == stamp


def test_bundle_layout_and_fp16_weights(tiny_ckpt: Path, tmp_path: Path):
    out = tmp_path / "bundle"
    train_heads(tiny_ckpt, _pairs(16), out, TrainConfig(max_steps=2, batch_size=8, show_progress=False),
                cache_dir=tmp_path / "cache", backbone_ref=str(tiny_ckpt), weights_dtype=torch.float16)
    meta = json.loads((out / "m3_model.json").read_text())
    assert meta["backbone"] == str(tiny_ckpt) and meta["colbert_dim"] == 32
    assert not (out / "config.json").exists()
    state = torch.load(out / "colbert_linear.pt", weights_only=True)
    assert state["weight"].dtype == torch.float16


def test_export_declares_the_sparse_special_token_rule_it_was_trained_with(tiny_ckpt: Path, tiny_encoder: M3Encoder,
                                                                          tmp_path: Path, monkeypatch):
    import m3_rag.train as train_mod

    seen: list[set[int]] = []

    class RecordingHeads(train_mod.M3Heads):
        def __init__(self, hidden, colbert_dim=None, unused_token_ids=()):
            seen.append({int(t) for t in unused_token_ids})
            super().__init__(hidden, colbert_dim, unused_token_ids)

    monkeypatch.setattr(train_mod, "M3Heads", RecordingHeads)
    special = set(tiny_encoder.tokenizer.all_special_ids)
    sep = tiny_encoder.tokenizer.sep_token_id
    assert sep in special and sep not in tiny_encoder.unused_token_ids  # FlagEmbedding's rule keeps [SEP]
    cfg = dict(max_steps=2, batch_size=8, show_progress=False, max_query_length=16, max_passage_length=16)

    bundle = tmp_path / "bundle"
    report = train_heads(tiny_ckpt, _pairs(16), bundle, TrainConfig(**cfg), cache_dir=tmp_path / "cache",
                         backbone_ref="python:some_pkg/model")
    assert report["config"]["sparse_drop_special_tokens"] is True
    meta = json.loads((bundle / "m3_model.json").read_text())
    assert meta["sparse_drop_special_tokens"] is True and meta["backbone"] == "python:some_pkg/model"

    full = tmp_path / "full"
    train_heads(tiny_ckpt, _pairs(16), full, TrainConfig(**cfg), cache_dir=tmp_path / "cache")
    assert json.loads((full / "m3_model.json").read_text()) == {"sparse_drop_special_tokens": True}
    enc = M3Encoder.from_pretrained(full, device="cpu")
    assert special <= enc.unused_token_ids
    weights = enc.encode(["alpha beta river"], dense=False, colbert=False).sparse[0]
    assert weights and not special & set(weights)
    assert special <= seen[-1]  # the heads were trained with the rule the checkpoint declares

    keep = tmp_path / "keep"
    train_heads(tiny_ckpt, _pairs(16), keep, TrainConfig(sparse_drop_special_tokens=False, **cfg),
                cache_dir=tmp_path / "cache")
    assert json.loads((keep / "m3_model.json").read_text()) == {"sparse_drop_special_tokens": False}
    assert sep not in M3Encoder.from_pretrained(keep, device="cpu").unused_token_ids
    assert sep not in seen[-1]


def test_colbert_anchor_holds_the_head_near_the_identity(tiny_ckpt: Path, tmp_path: Path):
    def drift(anchor: float) -> float:
        out = tmp_path / f"anchor{anchor}"
        cfg = TrainConfig(max_steps=6, batch_size=8, lr=2e-2, colbert_anchor=anchor, show_progress=False,
                          max_query_length=16, max_passage_length=16)
        report = train_heads(tiny_ckpt, _pairs(16), out, cfg, cache_dir=tmp_path / "cache")
        assert ("colbert_anchor" in report["loss_last"]) == (anchor > 0)
        w = torch.load(out / "colbert_linear.pt", weights_only=True)["weight"].float()
        return float((w - torch.eye(w.shape[0])).abs().max())

    free, held = drift(0.0), drift(100.0)
    assert free > 0.02
    assert held < free / 4, (held, free)


def test_colbert_interpolation_scales_the_move_from_the_identity(tiny_ckpt: Path, tmp_path: Path):
    def head(alpha: float) -> dict[str, torch.Tensor]:
        out = tmp_path / f"interp{alpha}"
        cfg = TrainConfig(max_steps=4, batch_size=8, lr=2e-2, colbert_interpolation=alpha, show_progress=False,
                          max_query_length=16, max_passage_length=16)
        train_heads(tiny_ckpt, _pairs(16), out, cfg, cache_dir=tmp_path / "cache")
        return torch.load(out / "colbert_linear.pt", weights_only=True)

    full, half, none = head(1.0), head(0.5), head(0.0)
    eye = torch.eye(full["weight"].shape[0])
    torch.testing.assert_close(half["weight"] - eye, 0.5 * (full["weight"] - eye), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(half["bias"], 0.5 * full["bias"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(none["weight"], eye)
    assert float((full["weight"] - eye).abs().max()) > 0.02


def test_unfrozen_backbone_is_trained_and_saved(tiny_ckpt: Path, tiny_encoder: M3Encoder, tmp_path: Path):
    out = tmp_path / "unfrozen"
    cfg = TrainConfig(max_steps=3, batch_size=8, backbone_lr=1e-2, unfreeze=True, show_progress=False,
                      max_query_length=16, max_passage_length=16)
    train_heads(tiny_ckpt, _pairs(16), out, cfg)
    assert (out / "model.safetensors").exists()
    enc = M3Encoder.from_pretrained(out, device="cpu")
    a = enc.encode(["alpha beta"], sparse=False, colbert=False).dense
    b = tiny_encoder.encode(["alpha beta"], sparse=False, colbert=False).dense
    assert not np.allclose(a, b, atol=1e-4)


def test_cli_registers_train_heads(tiny_ckpt: Path, tmp_path: Path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"query": q, "pos": [p]}) + "\n" for q, p in _pairs(16)))
    parser = argparse.ArgumentParser(prog="m3-rag")
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train-heads", "--model", str(tiny_ckpt), "--data", str(data), "--out", str(tmp_path / "o"),
                              "--max-steps", "2", "--batch-size", "8", "--no-progress", "--cache-dir", str(tmp_path / "c")])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2
    assert M3Encoder.from_pretrained(tmp_path / "o").available_modes == ("dense", "sparse", "colbert")
    assert json.loads((tmp_path / "o" / "m3_model.json").read_text())["sparse_drop_special_tokens"] is True
    args = parser.parse_args(["train-heads", "--model", str(tiny_ckpt), "--data", str(data), "--out", str(tmp_path / "k"),
                              "--max-steps", "1", "--batch-size", "8", "--no-progress", "--cache-dir", str(tmp_path / "c"),
                              "--sparse-keep-special-tokens"])
    assert args.func(args) == 0
    assert json.loads((tmp_path / "k" / "m3_model.json").read_text())["sparse_drop_special_tokens"] is False
    with pytest.raises(SystemExit):
        parser.parse_args(["train-heads", "--model", "x", "--data", str(data), "--out", "o", "--device", "tpu"])
