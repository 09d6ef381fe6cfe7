"""Fast CPU numeric paths for :class:`~m3_rag.encoder.M3Encoder`: torch dynamic int8 and ONNX Runtime.

* ``quantize="int8"`` on the torch backend: the backbone's ``nn.Linear`` layers are replaced by
  dynamically quantised int8 ones (``torch.ao.quantization.quantize_dynamic``, weights per output channel),
  except the FFN output projections, which stay fp32 like the three heads.
* ``backend="onnx"``: the backbone and all three heads are exported as one ONNX graph (inputs
  ``input_ids`` and ``attention_mask``; outputs the normalised dense vector, the ReLU sparse weight of every
  token and the normalised ColBERT vector of every token after CLS) and run with ONNX Runtime. With
  ``quantize="int8"`` the exported graph is quantised with ``onnxruntime.quantization.quantize_dynamic``.
  Post-processing (special-token dropping, max-merge, padding removal) is the torch path's own code.

The export is cached under ``$M3_RAG_ONNX_CACHE`` (default ``~/.cache/m3_rag/onnx``) in a folder named by
the checkpoint fingerprint and the export settings, written atomically, and validated on load against a
JSON sidecar (format version, fingerprint, settings, sha256 of the ``.onnx`` file); anything that does not
match is rebuilt with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

QUANTIZE_VALUES = (None, "int8")
BACKENDS = ("torch", "onnx")
ONNX_CACHE_ENV = "M3_RAG_ONNX_CACHE"
ONNX_FORMAT_VERSION = 1
ONNX_OPSET = 17
_MODEL_FILE = "model.onnx"
_META_FILE = "meta.json"

#: How many ONNX exports this process has run (tests use it to check the cache is reused).
EXPORT_COUNT = 0


class OnnxExportError(RuntimeError):
    """The checkpoint could not be exported to ONNX."""


def check_options(quantize: str | None, backend: str, device: torch.device) -> None:
    """Validate ``quantize``/``backend`` and refuse the CPU-only paths on a GPU device."""
    if quantize not in QUANTIZE_VALUES:
        raise ValueError(f"quantize must be one of {QUANTIZE_VALUES}; got {quantize!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if (quantize is not None or backend != "torch") and device.type != "cpu":
        raise ValueError(
            f"quantize={quantize!r} / backend={backend!r} are CPU-only paths, but the encoder would run on "
            f"{device.type!r}. Pass device='cpu', or keep quantize=None and backend='torch' on a GPU "
            "(use fp16 there instead)."
        )


def numeric_path(quantize: str | None, backend: str, fp16: bool) -> str:
    """The name of the numeric path: ``fp32``, ``fp16``, ``int8``, ``onnx-fp32`` or ``onnx-int8``."""
    prec = "int8" if quantize == "int8" else ("fp16" if fp16 else "fp32")
    return prec if backend == "torch" else f"onnx-{prec}"


def _int8_linear_names(backbone: torch.nn.Module) -> list[str]:
    """The ``nn.Linear`` layers that :func:`quantize_backbone_int8` converts: all but the FFN output projections.

    The FFN output projection (``<layer>.output.dense`` in BERT/XLM-R naming, not the attention's
    ``attention.output.dense``) reads the GELU activations, whose outliers per-batch int8 activation
    quantisation handles worst; keeping it fp32 halves the dense/ColBERT vector error on ``minilm-m3``.
    """
    names = []
    for name, mod in backbone.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        if name.endswith("output.dense") and not name.endswith("attention.output.dense"):
            continue
        names.append(name)
    return names


def quantize_backbone_int8(backbone: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantisation of the backbone's ``nn.Linear`` layers (weights int8, activations per batch).

    Weights are quantised per output channel (``per_channel_dynamic_qconfig``); the FFN output projections
    stay fp32 (see :func:`_int8_linear_names`). In place, one layer at a time: each fp32 ``Linear`` is
    swapped for its int8 version and freed, so the peak memory is the fp32 model's (plus one layer), never
    an fp32 and an int8 copy side by side.
    """
    import gc

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec = {name: per_channel_dynamic_qconfig for name in _int8_linear_names(backbone)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        out = quantize_dynamic(backbone, spec, dtype=torch.qint8, inplace=True)
    gc.collect()
    return out


def _require_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(
            'backend="onnx" needs ONNX Runtime, which is not installed. Install it with: pip install "m3-rag[onnx]"'
        ) from exc
    return onnxruntime


class _M3Graph(torch.nn.Module):
    """Backbone + heads as one module: the graph that is exported."""

    def __init__(self, backbone: torch.nn.Module, pooling: str, sparse: torch.nn.Module | None, colbert: torch.nn.Module | None):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.sparse = sparse
        self.colbert = colbert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state
        if self.pooling == "cls":
            vec = hidden[:, 0]
        else:
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            vec = (hidden * m).sum(dim=1) / m.sum(dim=1)
        outs = [torch.nn.functional.normalize(vec, dim=-1)]
        if self.sparse is not None:
            outs.append(torch.relu(self.sparse(hidden)).squeeze(-1))
        if self.colbert is not None:
            outs.append(torch.nn.functional.normalize(self.colbert(hidden[:, 1:]), dim=-1))
        return tuple(outs)


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The ONNX cache folder: ``cache_dir``, else ``$M3_RAG_ONNX_CACHE``, else ``~/.cache/m3_rag/onnx``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ONNX_CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "m3_rag" / "onnx"


def _sha256(path: Path) -> str:
    from .persistence import sha256_file

    return sha256_file(path)


class OnnxRunner:
    """Runs the exported graph with ONNX Runtime; ``run`` returns numpy arrays (dense, sparse, colbert)."""

    def __init__(self, session: Any, has_sparse: bool, has_colbert: bool, path: Path) -> None:
        self.session = session
        self.has_sparse = has_sparse
        self.has_colbert = has_colbert
        self.path = path
        self._names = ["dense"] + (["sparse"] if has_sparse else []) + (["colbert"] if has_colbert else [])

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(self._names, {"input_ids": input_ids, "attention_mask": attention_mask})
        return dict(zip(self._names, outs))


def _export(graph: _M3Graph, out_path: Path, names: list[str]) -> None:
    global EXPORT_COUNT
    ids = torch.tensor([[2, 5, 6, 7, 3], [2, 5, 6, 3, 0]], dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], dtype=torch.long)
    dynamic_axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "dense": {0: "batch"}}
    if "sparse" in names:
        dynamic_axes["sparse"] = {0: "batch", 1: "seq"}
    if "colbert" in names:
        dynamic_axes["colbert"] = {0: "batch", 1: "seq_minus_1"}
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                (ids, mask),
                str(out_path),
                input_names=["input_ids", "attention_mask"],
                output_names=names,
                dynamic_axes=dynamic_axes,
                opset_version=ONNX_OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:
        raise OnnxExportError(
            f"could not export this checkpoint ({type(graph.backbone).__name__}) to ONNX: {type(exc).__name__}: {exc}. "
            "The message above names the op or layer the exporter could not convert. Use backend='torch' "
            "(optionally with quantize='int8') for this checkpoint."
        ) from exc
    EXPORT_COUNT += 1


def load_onnx(
    backbone: torch.nn.Module,
    *,
    pooling: str,
    sparse: torch.nn.Module | None,
    colbert: torch.nn.Module | None,
    fingerprint: str,
    quantize: str | None,
    num_threads: int | None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> OnnxRunner:
    """Export (or reuse the cached export of) backbone + heads and open an ONNX Runtime session."""
    ort = _require_onnxruntime()
    names = ["dense"] + (["sparse"] if sparse is not None else []) + (["colbert"] if colbert is not None else [])
    settings = {
        "format_version": ONNX_FORMAT_VERSION,
        "opset": ONNX_OPSET,
        "pooling": pooling,
        "outputs": names,
        "quantize": quantize,
        "torch": torch.__version__.split("+")[0],
    }
    key = hashlib.sha256(json.dumps({"fingerprint": fingerprint, **settings}, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_root(cache_dir) / f"{fingerprint}-{key}"
    model_path = folder / _MODEL_FILE
    meta_path = folder / _META_FILE
    opts = ort.SessionOptions()
    if num_threads is not None:
        opts.intra_op_num_threads = int(num_threads)
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

    def _open() -> Any:
        return ort.InferenceSession(str(model_path), sess_options=opts, providers=["CPUExecutionProvider"])

    problem = _validate(model_path, meta_path, fingerprint, settings)
    if problem is None:
        try:
            return OnnxRunner(_open(), sparse is not None, colbert is not None, model_path)
        except Exception as exc:  # a file that passes the checksum but ORT rejects (e.g. other ORT version)
            problem = f"ONNX Runtime cannot open it ({type(exc).__name__}: {exc})"
    if folder.exists():
        warnings.warn(f"the cached ONNX export in {folder} is not usable ({problem}); rebuilding it", stacklevel=3)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        graph = _M3Graph(backbone, pooling, sparse, colbert).eval()
        fp32_path = tmp / "fp32.onnx"
        _export(graph, fp32_path, names)
        final = tmp / _MODEL_FILE
        if quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(fp32_path), str(final), weight_type=QuantType.QInt8)
            fp32_path.unlink()
        else:
            fp32_path.rename(final)
        meta = {**settings, "fingerprint": fingerprint, "sha256": _sha256(final)}
        (tmp / _META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
        for leftover in tmp.iterdir():  # the exporter may write external-data files; keep none
            if leftover.name not in (_MODEL_FILE, _META_FILE):
                raise OnnxExportError(f"the ONNX export wrote an unexpected file {leftover.name}; model too large for one file?")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return OnnxRunner(_open(), sparse is not None, colbert is not None, model_path)


def _validate(model_path: Path, meta_path: Path, fingerprint: str, settings: dict[str, Any]) -> str | None:
    """``None`` when the cached export matches; else the reason it does not."""
    if not model_path.exists() or not meta_path.exists():
        return "missing files"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return f"unreadable {meta_path.name}: {exc}"
    if not isinstance(meta, dict):
        return f"{meta_path.name} is not a JSON object"
    if meta.get("fingerprint") != fingerprint:
        return f"fingerprint {meta.get('fingerprint')!r} != {fingerprint!r}"
    for k, v in settings.items():
        if meta.get(k) != v:
            return f"setting {k}={meta.get(k)!r}, expected {v!r}"
    if meta.get("sha256") != _sha256(model_path):
        return "sha256 of model.onnx does not match its sidecar (corrupt or modified file)"
    return None
