"""Input checks shared by every store and adapter, so the same bad input gets the same error everywhere."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any, Collection, Mapping, Sequence

import numpy as np

from .types import STORE_MODES, M3Output

__all__ = [
    "check_ids", "check_modes", "check_rows", "check_texts", "check_k", "check_query", "check_queries", "check_utf8",
    "check_depth", "check_encoded", "check_sparse_dim", "readonly_metadata", "MAX_DEPTH",
]

#: The deepest nesting accepted in metadata, filters and saved JSON headers (beyond it: ``ValueError``).
MAX_DEPTH = 64


def check_utf8(s: str, what: str) -> str:
    """``s`` unchanged if it encodes as UTF-8; a lone surrogate (``"\\ud800"``) raises ``ValueError``."""
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{what} is not valid Unicode text: {exc.reason} at position {exc.start} "
                f"({s[max(0, exc.start - 10):exc.start + 10]!r}); lone surrogates cannot be stored or saved"
            ) from None
    return s


def check_depth(obj: Any, what: str, limit: int = MAX_DEPTH) -> None:
    """Raise ``ValueError`` when dicts/lists in ``obj`` nest deeper than ``limit`` (checked without recursion)."""
    stack = [(obj, 1)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, Mapping):
            children: Any = x.values()
        elif isinstance(x, (list, tuple)):
            children = x
        else:
            continue
        if d > limit:
            raise ValueError(f"{what} nests deeper than {limit} levels; flatten it")
        stack.extend((c, d + 1) for c in children)


def _check_strings(obj: Any, what: str) -> None:
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            check_utf8(x, what)
        elif isinstance(x, Mapping):
            for k, v in x.items():
                if isinstance(k, str):
                    check_utf8(k, f"{what} key {k!r:.40}")
                stack.append(v)
        elif isinstance(x, (list, tuple)):
            stack.extend(x)


def readonly_metadata(md: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only view of a stored metadata dict for callable filters: a ``MappingProxyType`` over it when
    every value is a scalar, else over a deep copy (the filter cannot change what is stored)."""
    import copy
    import types

    if any(isinstance(v, (dict, list)) for v in md.values()):
        md = copy.deepcopy(md)
    return types.MappingProxyType(md)  # type: ignore[arg-type]


def check_ids(ids: Any, name: str = "ids", ordered: bool = True) -> list[str]:
    """An ordered sequence of ``str`` ids (numpy strings become ``str``); raises ``TypeError`` otherwise.

    ``ordered=False`` also accepts a set (where order cannot matter: ``delete``, a search restriction).
    """
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{name} must be a list of strings, not a single string; wrap it: [{ids!r:.40}]")
    if isinstance(ids, Mapping) or (ordered and isinstance(ids, (set, frozenset))):
        raise TypeError(
            f"{name} must be an ordered sequence of strings (a list or tuple); got {type(ids).__name__}, whose order "
            "is arbitrary. Pass a list, e.g. sorted(ids)."
        )
    if not isinstance(ids, Collection) and not isinstance(ids, np.ndarray):
        raise TypeError(f"{name} must be a list of strings; got {type(ids).__name__}")
    out = list(ids)
    for i, x in enumerate(out):
        if not isinstance(x, str):
            raise TypeError(f"{name}[{i}] must be a str; got {type(x).__name__} ({x!r:.40}). Convert ids with str().")
        check_utf8(x, f"{name}[{i}]")
    return [str(x) for x in out]  # numpy strings become plain str


def check_modes(modes: Any) -> tuple[str, ...]:
    """Validate a ``modes`` argument (one mode name or a list of them) and return it as a tuple."""
    if isinstance(modes, str):
        modes = (modes,)
    if not isinstance(modes, (Sequence, set, frozenset)):
        raise TypeError(f"modes must be a mode name or a list of them ({', '.join(STORE_MODES)}); got {type(modes).__name__}")
    mode_t = tuple(modes)
    if not mode_t:
        raise ValueError(f"modes is empty; choose from {', '.join(STORE_MODES)}")
    for m in mode_t:
        if m not in STORE_MODES:
            raise ValueError(f"unknown mode {m!r}; modes are {', '.join(STORE_MODES)}")
    if len(set(mode_t)) != len(mode_t):
        raise ValueError(f"modes lists a mode twice: {mode_t}")
    return mode_t


def check_rows(
    n: int, ids: Sequence[str] | None, metadatas: Sequence[dict | None] | None
) -> tuple[list[str], list[dict]]:
    """Validate the ids and metadatas of ``n`` documents being added (shared by every store).

    Returns the ids (new random hex ids when ``ids`` is None) and JSON-normalised metadata dicts
    (``None`` becomes ``{}``). Raises ``TypeError``/``ValueError`` naming the bad row.
    """
    if ids is None:
        ids_list = [uuid.uuid4().hex for _ in range(n)]
    else:
        ids_list = check_ids(ids)
        if len(ids_list) != n:
            raise ValueError(f"got {len(ids_list)} ids for {n} documents; pass one id per document")
        if len(set(ids_list)) != n:
            seen: set[str] = set()
            dups = sorted({x for x in ids_list if x in seen or seen.add(x)})  # type: ignore[func-returns-value]
            raise ValueError(f"duplicate ids within one add: {dups[:10]}; each id may appear once per call")
    if metadatas is None:
        return ids_list, [{} for _ in range(n)]
    if isinstance(metadatas, Mapping) or not isinstance(metadatas, Sequence):
        raise TypeError(f"metadatas must be a list of dicts (one per document); got {type(metadatas).__name__}")
    if len(metadatas) != n:
        raise ValueError(f"got {len(metadatas)} metadatas for {n} documents; pass one dict per document")
    metas: list[dict] = []
    for i, md in enumerate(metadatas):
        if md is None:
            metas.append({})
            continue
        if not isinstance(md, Mapping):
            raise TypeError(f"metadatas[{i}] must be a dict; got {type(md).__name__}")
        for key in md:
            if not isinstance(key, str):
                raise TypeError(f"metadatas[{i}] keys must be strings; got {key!r}")
        check_depth(md, f"metadatas[{i}]")
        _check_strings(md, f"metadatas[{i}]")
        try:
            metas.append(json.loads(json.dumps(dict(md), allow_nan=False)))
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"metadatas[{i}] must be JSON-serialisable (str/int/float/bool/None, lists, dicts; "
                f"no NaN): {exc}. Convert values (e.g. dates with .isoformat()) before adding."
            ) from exc
    return ids_list, metas


def check_texts(texts: Any, name: str = "texts", allow_none: bool = False) -> list[Any]:
    """A list of strings (``None`` entries allowed when ``allow_none``); raises ``TypeError`` naming the bad row."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise TypeError(f"{name} must be a list of strings; got {type(texts).__name__}")
    out = list(texts)
    for i, t in enumerate(out):
        if t is None and allow_none:
            continue
        if not isinstance(t, str):
            kind = "a str or None" if allow_none else "a str"
            raise TypeError(f"{name}[{i}] must be {kind}; got {type(t).__name__} ({t!r:.40})")
        check_utf8(t, f"{name}[{i}]")
    return out


def check_k(k: Any, name: str = "k") -> int:
    """A positive int."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"{name} must be a positive int; got {k!r}")
    return int(k)


def check_queries(queries: Any) -> list[str]:
    """A list of query strings (for ``search_batch``)."""
    if isinstance(queries, (str, bytes)) or not isinstance(queries, Sequence):
        raise TypeError(f"queries must be a list of strings; got {type(queries).__name__}. Use search() for one.")
    return check_texts(queries, "queries")


def check_sparse_dim(sparse_dim: Any, encoder: Any | None) -> int | None:
    """The vocabulary size bounding sparse token ids: ``sparse_dim`` (a positive int) or the encoder's
    ``vocab_size``; ``None`` (any id below 2**31 - 1) for an encoder-less store without ``sparse_dim``."""
    vocab = getattr(encoder, "vocab_size", None) if encoder is not None else None
    if sparse_dim is None:
        return int(vocab) if isinstance(vocab, (int, np.integer)) and vocab > 0 else None
    if isinstance(sparse_dim, bool) or not isinstance(sparse_dim, (int, np.integer)) or not 0 < sparse_dim <= 2**31 - 1:
        raise ValueError(f"sparse_dim must be a positive int <= 2**31 - 1 (the vocabulary size); got {sparse_dim!r}")
    if isinstance(vocab, (int, np.integer)) and vocab > 0 and int(vocab) != int(sparse_dim):
        raise ValueError(f"sparse_dim={sparse_dim} differs from the encoder's vocabulary size {vocab}; omit sparse_dim")
    return int(sparse_dim)


#: Largest finite float16 value (ColBERT values above it cannot be stored in fp16).
FP16_MAX = float(np.finfo(np.float16).max)


def check_encoded(enc: M3Output, need: Sequence[str], dims: Mapping[str, int | None], *,
                  sparse_dim: int | None = None, fp16_colbert: bool = False, what: str = "encoded") -> None:
    """Rows being added: every mode in ``need`` present, dimensions > 0 and equal to ``dims`` (where known),
    finite values that fit the storage type (float32; float16 ColBERT when ``fp16_colbert``), sparse token
    ids non-negative ints below ``sparse_dim``. Raises ``ValueError``/``TypeError``; shared by every store."""
    for mode in need:
        if getattr(enc, mode) is None:
            raise ValueError(f"{what} has no {mode!r} output but the store holds {tuple(need)}; encode with {mode}=True")
    if "dense" in need:
        d = int(enc.dense.shape[1])  # type: ignore[union-attr]
        if d <= 0:
            raise ValueError(f"dense dimension must be a positive int; got {d}")
        if dims.get("dense") is not None and d != dims["dense"]:
            raise ValueError(f"dense dimension {d} does not match the store's {dims['dense']}")
        if not np.all(np.isfinite(enc.dense)):
            raise ValueError(f"{what}: dense vectors contain NaN or infinity (or values beyond float32's range)")
    if "colbert" in need:
        width = dims.get("colbert")
        for i, m in enumerate(enc.colbert):  # type: ignore[union-attr]
            if m.shape[0] == 0:
                continue
            if m.shape[1] <= 0:
                raise ValueError(f"ColBERT dimension must be a positive int; got {m.shape[1]}")
            if width is not None and m.shape[1] != width:
                raise ValueError(f"ColBERT dimensions {m.shape[1]} and {width} differ (the store holds {width})")
            width = m.shape[1]
            if not np.all(np.isfinite(m)):
                raise ValueError(f"{what}: ColBERT vectors of row {i} contain NaN or infinity (or values beyond float32's range)")
            if fp16_colbert and m.size and float(np.abs(m).max()) > FP16_MAX:
                raise ValueError(
                    f"{what}: ColBERT values of row {i} exceed float16's range (65504); store them as float32"
                )
        if width is None and enc.colbert and enc.colbert[0].shape[1] <= 0:  # type: ignore[index]
            raise ValueError("ColBERT dimension must be a positive int; got 0")
    if "sparse" in need:
        from .index.sparse import sparse_matrix

        sparse_matrix(enc.sparse, f"{what}.sparse", np.float32, vocab_size=sparse_dim)  # type: ignore[arg-type]



_INT_TYPES = (int, np.integer)
_FLOAT_TYPES = (float, int, np.floating, np.integer)


def _plain_sparse_row(row: Any, limit: int) -> bool:
    """Fast path: a dict of non-negative int token ids below ``limit`` to finite numbers (no numpy round-trip)."""
    if not isinstance(row, dict):
        return False
    for t, w in row.items():
        if (not isinstance(t, _INT_TYPES) or isinstance(t, bool) or not 0 <= t < limit
                or not isinstance(w, _FLOAT_TYPES) or isinstance(w, bool) or not math.isfinite(w)):
            return False
    return True


def check_query(q: M3Output, need: Sequence[str], dims: Mapping[str, int | None], sparse_dim: int | None = None) -> None:
    """The query rows hold every mode in ``need`` with the store's dimensions and finite values; sparse token
    ids are non-negative ints below ``sparse_dim`` (the same checks for one query and for a batch). ``bm25``
    needs the query texts (``q.text``)."""
    for mode in need:
        if mode == "bm25":
            if q.text is None:
                raise ValueError(
                    "mode 'bm25' needs the query text: search() with a text query, or pass query_text= to "
                    "search_encoded (query_texts= to search_encoded_batch)"
                )
            continue
        if getattr(q, mode) is None:
            raise ValueError(f"the query has no {mode!r} output but modes {tuple(need)} need it; encode it with {mode}=True")
    if "dense" in need:
        if q.dense.shape[1] != dims.get("dense"):  # type: ignore[union-attr]
            raise ValueError(f"query dense dimension {q.dense.shape[1]} does not match the store's {dims.get('dense')}")  # type: ignore[union-attr]
        if not np.all(np.isfinite(q.dense)):
            raise ValueError("the query's dense vector contains NaN or infinity")
    if "colbert" in need:
        for i, m in enumerate(q.colbert):  # type: ignore[union-attr]
            if m.shape[0] == 0:
                raise ValueError(f"query {i} has no ColBERT token vectors")
            if m.shape[1] != dims.get("colbert"):
                raise ValueError(f"query ColBERT dimension {m.shape[1]} does not match the store's {dims.get('colbert')}")
            if not np.all(np.isfinite(m)):
                raise ValueError(f"query {i}'s ColBERT vectors contain NaN or infinity")
    if "sparse" in need:
        limit = sparse_dim if sparse_dim is not None else 2**31 - 1
        if not all(_plain_sparse_row(r, limit) for r in q.sparse):  # type: ignore[union-attr]
            from .index.sparse import sparse_arrays

            sparse_arrays(q.sparse, "query.sparse", np.float64, vocab_size=sparse_dim)  # type: ignore[arg-type]  # the precise error
