"""The fast CPU paths of M3Encoder: ONNX Runtime (fp32 parity with torch and FlagEmbedding fixtures),
torch / ONNX int8 (close to fp32, same shapes and order), the ONNX export cache and bad input."""

from __future__ import annotations

import builtins
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from m3_rag import M3Encoder, M3Output
from m3_rag import fast
from tiny_checkpoint import make_tiny_bert, make_tiny_xlmr

FIXTURES = Path(__file__).parent / "fixtures"
ONNX_TOL = 1e-4
#: Smallest cosine between an int8 vector and its fp32 one on the tiny checkpoints (measured ~0.999).
INT8_MIN_COS = 0.99
TEXTS = ["hello world", "", "x", "retrieval " * 80, "😀 emoji and 中文 text", "a b a b a b repeated repeated", "short"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fast")
    out = {}
    for name, builder in (("bert", make_tiny_bert), ("xlmr", make_tiny_xlmr)):
        meta = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
        out[name] = builder(root / name, **meta["build_kwargs"])
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx_cache")


def _fixture(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    meta = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    with np.load(FIXTURES / f"{name}.npz", allow_pickle=False) as npz:
        return meta, {k: npz[k] for k in npz.files}


def _unpack(arrays: dict[str, np.ndarray], key: str) -> list[np.ndarray]:
    off = arrays[f"{key}_offsets"]
    return [arrays[key][off[i] : off[i + 1]] for i in range(len(off) - 1)]


def _assert_close(a: M3Output, b: M3Output, tol: float) -> None:
    np.testing.assert_allclose(a.dense, b.dense, atol=tol, rtol=0)
    assert a.sparse is not None and b.sparse is not None and a.colbert is not None and b.colbert is not None
    for x, y in zip(a.sparse, b.sparse):
        assert sorted(x) == sorted(y)
        assert all(isinstance(k, int) for k in x)
        for k in x:
            assert abs(x[k] - y[k]) <= tol
    for x, y in zip(a.colbert, b.colbert):
        assert x.shape == y.shape and x.dtype == np.float32
        np.testing.assert_allclose(x, y, atol=tol, rtol=0)


@pytest.mark.parametrize("name", ("bert", "xlmr"))
def test_onnx_fp32_matches_torch_and_flagembedding(name: str, ckpts: dict[str, Path], cache: Path) -> None:
    meta, ref = _fixture(name)
    torch_enc = M3Encoder.from_pretrained(ckpts[name], device="cpu")
    onnx_enc = M3Encoder.from_pretrained(ckpts[name], backend="onnx", onnx_cache_dir=cache)
    assert onnx_enc.numeric_path == "onnx-fp32" and torch_enc.numeric_path == "fp32"
    assert onnx_enc.fingerprint == torch_enc.fingerprint
    for texts, max_len, key in ((meta["queries"], meta["query_max_length"], "q"), (meta["documents"], meta["document_max_length"], "d")):
        o = onnx_enc.encode(texts, max_length=max_len, batch_size=3)
        t = torch_enc.encode(texts, max_length=max_len, batch_size=3)
        _assert_close(o, t, ONNX_TOL)
        np.testing.assert_allclose(o.dense, ref[f"{key}_dense"], atol=ONNX_TOL, rtol=0)
        for got, want in zip(o.colbert, _unpack(ref, f"{key}_colbert")):
            np.testing.assert_allclose(got, want, atol=ONNX_TOL, rtol=0)
        for got, want in zip(o.sparse, meta[f"{key}_sparse"]):
            assert sorted(got) == sorted(int(k) for k in want)
    # odd texts, and one batch vs many batches give the same numbers
    _assert_close(onnx_enc.encode(TEXTS, batch_size=2), torch_enc.encode(TEXTS), ONNX_TOL)
    _assert_close(onnx_enc.encode(TEXTS, batch_size=1), onnx_enc.encode(TEXTS, batch_size=32), 1e-5)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.mark.parametrize("name", ("bert", "xlmr"))
@pytest.mark.parametrize("backend", ("torch", "onnx"))
def test_int8_close_to_fp32(name: str, backend: str, ckpts: dict[str, Path], cache: Path) -> None:
    ref = M3Encoder.from_pretrained(ckpts[name], device="cpu").encode(TEXTS)
    enc = M3Encoder.from_pretrained(ckpts[name], quantize="int8", backend=backend, onnx_cache_dir=cache)
    assert enc.numeric_path == ("int8" if backend == "torch" else "onnx-int8")
    out = enc.encode(TEXTS, batch_size=3)
    assert out.dense.shape == ref.dense.shape and out.dense.dtype == np.float32
    assert _cos(out.dense, ref.dense).min() > INT8_MIN_COS
    assert not np.allclose(out.dense, ref.dense, atol=1e-6)  # really a different numeric path
    for got, want in zip(out.colbert, ref.colbert):
        assert got.shape == want.shape and got.dtype == np.float32
        assert _cos(got, want).min() > INT8_MIN_COS
    for got, want in zip(out.sparse, ref.sparse):
        common = set(got) & set(want)
        assert len(common) >= 0.8 * max(len(want), 1) or not want
        assert all(abs(got[k] - want[k]) < 0.05 for k in common)


def test_torch_int8_quantises_the_backbone_not_the_heads(ckpts: dict[str, Path]) -> None:
    enc = M3Encoder.from_pretrained(ckpts["bert"], quantize="int8")
    fp32 = sorted(n for n, m in enc.backbone.named_modules() if type(m) is torch.nn.Linear)
    # only the FFN output projections stay fp32; attention (incl. its output projection) and FFN input are int8
    assert fp32 and all(n.endswith(".output.dense") and ".attention." not in n for n in fp32), fp32
    int8 = [(n, m) for n, m in enc.backbone.named_modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert any(n.endswith("attention.output.dense") for n, _ in int8) and any(n.endswith("intermediate.dense") for n, _ in int8)
    assert all(m.weight().qscheme() == torch.per_channel_affine for _, m in int8)  # weights per output channel
    assert type(enc.colbert_linear) is torch.nn.Linear and type(enc.sparse_linear) is torch.nn.Linear
    assert enc.fingerprint == M3Encoder.from_pretrained(ckpts["bert"]).fingerprint


def test_int8_quantises_in_place_without_a_second_copy() -> None:
    """The fp32 Linear layers are swapped one by one in the same module (no fp32 + int8 copies side by side)."""
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    first = model[0]
    out = fast.quantize_backbone_int8(model)
    assert out is model and model[0] is not first
    assert not any(type(m) is torch.nn.Linear for m in model.modules())  # every fp32 Linear was replaced
    x = torch.randn(3, 64)
    assert out(x).shape == (3, 8)


def test_onnx_cache_reused_rebuilt_on_corruption_and_on_checkpoint_change(ckpts: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    before = fast.EXPORT_COUNT
    a = M3Encoder.from_pretrained(ckpts["bert"], backend="onnx", onnx_cache_dir=cache)
    assert fast.EXPORT_COUNT == before + 1
    first = a.encode(TEXTS)
    (folder,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    mtime = (folder / "model.onnx").stat().st_mtime_ns
    M3Encoder.from_pretrained(ckpts["bert"], backend="onnx", onnx_cache_dir=cache)
    assert fast.EXPORT_COUNT == before + 1  # reused
    assert (folder / "model.onnx").stat().st_mtime_ns == mtime
    # corrupt the model file: detected by the sha256 sidecar, rebuilt with a warning
    with open(folder / "model.onnx", "r+b") as f:
        f.seek(200)
        f.write(b"\x00garbage\x00")
    with pytest.warns(UserWarning, match="rebuilding"):
        b = M3Encoder.from_pretrained(ckpts["bert"], backend="onnx", onnx_cache_dir=cache)
    assert fast.EXPORT_COUNT == before + 2
    _assert_close(b.encode(TEXTS), first, 1e-6)
    # a stale sidecar (other fingerprint) is not trusted either
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "fingerprint": "0" * 16}))
    with pytest.warns(UserWarning, match="fingerprint"):
        M3Encoder.from_pretrained(ckpts["bert"], backend="onnx", onnx_cache_dir=cache)
    (folder / "meta.json").write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable"):
        M3Encoder.from_pretrained(ckpts["bert"], backend="onnx", onnx_cache_dir=cache)
    assert fast.EXPORT_COUNT == before + 4
    # a changed checkpoint has another fingerprint: a new export, with its own numbers
    other = make_tiny_bert(tmp_path / "other", seed=7)
    c = M3Encoder.from_pretrained(other, backend="onnx", onnx_cache_dir=cache)
    assert fast.EXPORT_COUNT == before + 5
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 2
    assert np.abs(c.encode(TEXTS).dense - first.dense).max() > 1e-2


def test_onnx_cache_dir_from_env(ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fast.ONNX_CACHE_ENV, str(tmp_path / "envcache"))
    M3Encoder.from_pretrained(ckpts["xlmr"], backend="onnx")
    assert any((p / "model.onnx").exists() for p in (tmp_path / "envcache").iterdir())


def test_bad_options(ckpts: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"quantize must be one of \(None, 'int8'\); got 'int4'"):
        M3Encoder.from_pretrained(ckpts["bert"], quantize="int4")
    with pytest.raises(ValueError, match=r"backend must be one of \('torch', 'onnx'\); got 'tensorrt'"):
        M3Encoder.from_pretrained(ckpts["bert"], backend="tensorrt")
    with pytest.raises(ValueError, match="CPU-only|cuda"):  # refused by the device check or by the int8 path
        M3Encoder.from_pretrained(ckpts["bert"], quantize="int8", device="cuda")
    with pytest.raises(ValueError, match="CPU-only|device"):
        M3Encoder.from_pretrained(ckpts["bert"], backend="onnx", device="meta")
    with pytest.raises(ValueError, match="num_threads"):
        M3Encoder.from_pretrained(ckpts["bert"], num_threads=0)


def test_missing_onnxruntime_names_the_extra(ckpts: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def fake_import(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r'pip install "m3-rag\[onnx\]"'):
        M3Encoder.from_pretrained(ckpts["bert"], backend="onnx")


def test_export_failure_is_wrapped(ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_export(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("Exporting the operator 'aten::weird_op' to ONNX opset version 17 is not supported")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with pytest.raises(fast.OnnxExportError, match="aten::weird_op.*backend='torch'"):
        M3Encoder.from_pretrained(ckpts["bert"], backend="onnx", onnx_cache_dir=tmp_path)
    assert not [p for p in tmp_path.iterdir()]  # no half-written cache entry left behind


def test_num_threads_and_missing_heads(tmp_path: Path, cache: Path) -> None:
    path = make_tiny_bert(tmp_path / "dense_only", with_sparse=False, with_colbert=False)
    enc = M3Encoder.from_pretrained(path, backend="onnx", num_threads=1, onnx_cache_dir=cache)
    assert enc.available_modes == ("dense",)
    ref = M3Encoder.from_pretrained(path).encode(TEXTS, sparse=False, colbert=False)
    np.testing.assert_allclose(enc.encode(TEXTS, sparse=False, colbert=False).dense, ref.dense, atol=ONNX_TOL, rtol=0)
    assert enc._onnx.session.get_session_options().intra_op_num_threads == 1
    M3Encoder.from_pretrained(path, num_threads=1)
    assert torch.get_num_threads() == 1


def test_cli_index_int8_then_search_onnx(ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """`m3-rag index --quantize int8` and `search --backend onnx` on the same index (same model fingerprint)."""
    from m3_rag.cli import build_parser, main

    monkeypatch.setenv(fast.ONNX_CACHE_ENV, str(tmp_path / "cache"))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("cats sit on mats")
    (tmp_path / "in" / "b.txt").write_text("rockets fly to the moon")
    model = str(ckpts["bert"])
    assert main(["index", str(tmp_path / "in"), "--out", str(tmp_path / "idx"), "--model", model, "--quantize", "int8"]) == 0
    assert main(["search", str(tmp_path / "idx"), "cats sit", "--model", model, "--backend", "onnx", "--json"]) == 0
    assert "a.txt" in capsys.readouterr().out
    for cmd in ("index", "search", "eval"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([cmd, "x", "y", "--backend", "tensorrt"] if cmd == "search" else [cmd, "x", "--quantize", "int4"])
