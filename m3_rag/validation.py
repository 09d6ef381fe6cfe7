"""Input checks shared by every store and adapter, so the same bad input gets the same error everywhere."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any, Collection, Mapping, Sequence

import numpy as np

from .types import MODES, M3Output

__all__ = ["check_ids", "check_modes", "check_rows", "check_texts", "check_k", "check_query", "check_queries"]


def check_ids(ids: Any, name: str = "ids") -> list[str]:
    """An ordered sequence of ``str`` ids (numpy strings become ``str``); raises ``TypeError`` otherwise."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{name} must be a list of strings, not a single string; wrap it: [{ids!r:.40}]")
    if not isinstance(ids, Collection) and not isinstance(ids, np.ndarray):
        raise TypeError(f"{name} must be a list of strings; got {type(ids).__name__}")
    out = list(ids)
    for i, x in enumerate(out):
        if not isinstance(x, str):
            raise TypeError(f"{name}[{i}] must be a str; got {type(x).__name__} ({x!r:.40}). Convert ids with str().")
    return [str(x) for x in out]  # numpy strings become plain str


def check_modes(modes: Any) -> tuple[str, ...]:
    """Validate a ``modes`` argument (one mode name or a list of them) and return it as a tuple."""
    if isinstance(modes, str):
        modes = (modes,)
    if not isinstance(modes, (Sequence, set, frozenset)):
        raise TypeError(f"modes must be a mode name or a list of them ({', '.join(MODES)}); got {type(modes).__name__}")
    mode_t = tuple(modes)
    if not mode_t:
        raise ValueError(f"modes is empty; choose from {', '.join(MODES)}")
    for m in mode_t:
        if m not in MODES:
            raise ValueError(f"unknown mode {m!r}; modes are {', '.join(MODES)}")
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


_INT_TYPES = (int, np.integer)
_FLOAT_TYPES = (float, int, np.floating, np.integer)


def _plain_sparse_row(row: Any) -> bool:
    """Fast path: a dict of non-negative int token ids below 2**31 - 1 to finite numbers (no numpy round-trip)."""
    if not isinstance(row, dict):
        return False
    for t, w in row.items():
        if (not isinstance(t, _INT_TYPES) or isinstance(t, bool) or not 0 <= t < 2**31 - 1
                or not isinstance(w, _FLOAT_TYPES) or isinstance(w, bool) or not math.isfinite(w)):
            return False
    return True


def check_query(q: M3Output, need: Sequence[str], dims: Mapping[str, int | None]) -> None:
    """The query rows hold every mode in ``need`` with the store's dimensions and finite values."""
    for mode in need:
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
        if not all(_plain_sparse_row(r) for r in q.sparse):  # type: ignore[union-attr]
            from .index.sparse import sparse_arrays

            sparse_arrays(q.sparse, "query.sparse", np.float64)  # type: ignore[arg-type]  # the precise error  # type: ignore[arg-type]
