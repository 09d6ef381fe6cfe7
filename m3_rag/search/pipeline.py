"""The one search pipeline every backend runs through.

options -> plan (first stages and their depths) -> candidates (from the backend) -> exact per-mode scores
(from the backend) -> fusion (:mod:`m3_rag.fusion`) -> stable top-k -> hits.

The tie rule, on every backend and at every cut (first-stage depth and final k): score descending, then
insertion order (``seq`` ascending). A backend whose engine breaks ties otherwise is asked for more than it
must return (``tie_margin``) and, when the last fetched score still ties the cut, asked again for twice as
many, until the cut is unambiguous.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..fusion import fuse
from ..types import Hit, M3Output
from .options import SearchOptions

__all__ = ["Candidates", "SearchBackend", "run", "LEXICAL_MODES", "BM25_EXPLAIN_PREFIX", "BM25_UNSUPPORTED",
           "NO_BM25_ENTRIES"]

#: The error when ``bm25`` is searched on a store none of whose searchable documents has a bm25 entry.
NO_BM25_ENTRIES = (
    "no searchable document of this store has a bm25 entry: bm25 indexes the document texts, and these documents "
    "were added without text (add_encoded(..., texts=None)). Add documents with texts, or search other modes"
)

#: Modes whose single-mode search returns only documents sharing a term with the query (score > 0), and whose
#: fusion first stage is padded with non-matching documents in insertion order.
LEXICAL_MODES = ("sparse", "bm25")
#: The prefix of BM25 stems in ``Hit.explain`` (sparse tokens have none).
BM25_EXPLAIN_PREFIX = "bm25:"
#: The ``NotImplementedError`` message of a backend without the bm25 mode.
BM25_UNSUPPORTED = "bm25 is not supported by this backend yet"
_QUERY_CHUNK = 64


@dataclass
class Candidates:
    """Documents of one query: backend ``keys``, insertion ``seq`` (the tie rule), and exact per-mode ``scores``
    known so far (each aligned with ``keys``). ``cache`` holds backend data reused within this search."""

    keys: np.ndarray
    seq: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, idx: np.ndarray | slice) -> "Candidates":
        return Candidates(self.keys[idx], self.seq[idx], {m: v[idx] for m, v in self.scores.items()}, self.cache)

    def ranked(self, mode: str) -> "Candidates":
        """Sorted by the tie rule on ``scores[mode]``."""
        return self.take(np.lexsort((self.seq, -np.asarray(self.scores[mode], dtype=np.float64))))


class SearchBackend(ABC):
    """What a store supplies to the pipeline: candidates and exact per-mode scores.

    A new backend implements the five abstract methods in one file; fusion, the tie rule, boundary
    handling, explain formatting and hit ordering come from :func:`run`.

    Mode ``"bm25"``: the query rows carry their texts in ``Q.text`` (one string per row; :func:`run` checks it
    is there). ``first_stage("bm25", ...)`` returns the documents matching at least one query stem (padded
    with non-matching ones in insertion order when ``pad``), ``score("bm25", q, cands)`` the exact BM25 of
    ``q.text[0]``; :meth:`matched_stems` serves ``explain``, :meth:`bm25_documents` the "no texts" error.
    A query with no stem after tokenisation matches nothing (an empty first stage, not an error).
    """

    #: Extra results fetched past a cut so that ties there are broken by the tie rule, not by the engine.
    tie_margin: int = 1
    #: Modes whose ``first_stage`` already cuts and orders by the tie rule itself (score descending, then
    #: insertion order), so the pipeline neither re-fetches past the cut nor re-sorts.
    tie_rule_modes: tuple[str, ...] = ()
    encoder: Any = None

    @abstractmethod
    def restrict(self, opts: SearchOptions) -> Any:
        """The backend's form of ``opts.filter``/``opts.ids``: ``None`` (every document) or an object whose
        ``count`` is the number of admitted documents."""

    @abstractmethod
    def count(self, restriction: Any) -> int:
        """Number of searchable documents under ``restriction``."""

    @abstractmethod
    def first_stage(self, mode: str, Q: M3Output, depth: int, restriction: Any, pad: bool) -> list[Candidates]:
        """Per query row, its top ``depth`` documents in ``mode`` (with ``scores[mode]``). ``pad``: documents
        scoring 0 fill the list up to ``depth`` in insertion order (lexical modes only)."""

    @abstractmethod
    def score(self, mode: str, q: M3Output, cands: Candidates) -> np.ndarray:
        """Exact ``mode`` scores of query row ``q`` (one row) against ``cands``."""

    @abstractmethod
    def hits(self, cands: Candidates, scores: np.ndarray, per_mode: Mapping[str, np.ndarray]) -> list[Hit]:
        """``Hit`` objects for ``cands`` in order, with their fused and per-mode scores."""

    def matched_terms(self, q_sparse: Mapping[int, float], cands: Candidates) -> list[list[tuple[int, float]]]:
        """Per candidate, the query's sparse tokens it shares: ``[(token id, q_w * d_w)]``."""
        raise NotImplementedError

    def matched_stems(self, query_text: str, cands: Candidates) -> list[dict[str, float]]:
        """Per candidate, the stems of ``query_text`` it contains: ``{stem: contribution to its bm25 score}``."""
        raise NotImplementedError(BM25_UNSUPPORTED)

    def bm25_documents(self) -> int | None:
        """How many live documents of the store have a bm25 entry (``None``: unknown; the pipeline then
        skips the check). :func:`run` raises ``ValueError`` when ``bm25`` is searched and this is 0."""
        return None

    def candidates(self, Q: M3Output, opts: SearchOptions, restriction: Any) -> list[Candidates]:
        """The candidate union per query row: every first stage's top list, in insertion order. Backends may
        override this to fetch the union in one engine request."""
        stages = {m: exact_top(self, m, Q, d, restriction, pad=(m in LEXICAL_MODES and not opts.explicit_depths))
                  for m, d in opts.depths.items()}
        return [union([stages[m][i] for m in opts.depths]) for i in range(len(Q))]


def union(parts: Sequence[Candidates]) -> Candidates:
    """One candidate set from several of the same query, sorted by insertion order; scores kept where known
    for every member."""
    seq = np.concatenate([p.seq for p in parts])
    keys = np.concatenate([p.keys for p in parts])
    useq, first = np.unique(seq, return_index=True)
    cache: dict[str, Any] = {}
    for p in parts:
        cache.update(p.cache)
    return Candidates(keys[first], useq, {}, cache)


def exact_top(backend: SearchBackend, mode: str, Q: M3Output, depth: int, restriction: Any, pad: bool) -> list[Candidates]:
    """Per query, the top ``depth`` by the tie rule, asking the backend past the cut as long as the cut ties."""
    if mode in backend.tie_rule_modes:
        return backend.first_stage(mode, Q, depth, restriction, pad)
    ask = depth + backend.tie_margin
    out = []
    for i, c in enumerate(backend.first_stage(mode, Q, ask, restriction, pad)):
        c, n = c.ranked(mode), ask
        while len(c) >= n and len(c) > depth and c.scores[mode][depth - 1] == c.scores[mode][-1]:
            n *= 2
            c = backend.first_stage(mode, Q[i], n, restriction, pad)[0].ranked(mode)
        out.append(c.take(slice(0, depth)))
    return out


def _explain(backend: SearchBackend, q_sparse: Mapping[int, float], cands: Candidates, hits: list[Hit]) -> None:
    for h, matched in zip(hits, backend.matched_terms(q_sparse, cands)):
        if not matched:
            h.explain = {}
            continue
        names = backend.encoder.decode_tokens([t for t, _ in matched])
        agg: dict[str, float] = {}
        for name, (_, c) in zip(names, matched):
            agg[name] = agg.get(name, 0.0) + c
        h.explain = dict(sorted(agg.items(), key=lambda kv: -kv[1]))


def _explain_bm25(backend: SearchBackend, query_text: str, cands: Candidates, hits: list[Hit]) -> None:
    for h, stems in zip(hits, backend.matched_stems(query_text, cands)):
        merged = dict(h.explain or {})
        merged.update((BM25_EXPLAIN_PREFIX + stem, float(c)) for stem, c in stems.items())
        h.explain = dict(sorted(merged.items(), key=lambda kv: -kv[1]))


def _finish(backend: SearchBackend, q: M3Output, c: Candidates, fused: np.ndarray, opts: SearchOptions) -> list[Hit]:
    hits = backend.hits(c, fused, {m: c.scores[m] for m in opts.modes})
    if opts.explain and "sparse" in opts.modes and hits:
        _explain(backend, q.sparse[0], c, hits)  # type: ignore[index]
    if opts.explain and "bm25" in opts.modes and hits:
        _explain_bm25(backend, q.text[0], c, hits)  # type: ignore[index]
    return hits


def _single(backend: SearchBackend, Q: M3Output, k: int, restriction: Any, opts: SearchOptions) -> list[list[Hit]]:
    mode = opts.modes[0]
    out = []
    for i, c in enumerate(exact_top(backend, mode, Q, k, restriction, pad=False)):
        if mode in LEXICAL_MODES:
            c = c.take(np.flatnonzero(np.asarray(c.scores[mode]) > 0))
        out.append(_finish(backend, Q[i], c, c.scores[mode], opts))
    return out


def _hybrid(backend: SearchBackend, Q: M3Output, k: int, restriction: Any, opts: SearchOptions) -> list[list[Hit]]:
    out = []
    for i, c in enumerate(backend.candidates(Q, opts, restriction)):
        q = Q[i]
        for mode in opts.modes:
            if mode not in c.scores:
                c.scores[mode] = backend.score(mode, q, c)
        fused = np.asarray(fuse(opts.fusion, {m: c.scores[m] for m in opts.modes}, opts.weights), dtype=np.float64)
        c.scores["_fused"] = fused
        top = c.ranked("_fused").take(slice(0, k))
        out.append(_finish(backend, q, top, top.scores.pop("_fused"), opts))
    return out


def run(backend: SearchBackend, Q: M3Output, opts: SearchOptions) -> list[list[Hit]]:
    """Search every row of ``Q`` (already checked against the store) with ``opts``; one hit list per row."""
    nq = len(Q)
    if nq == 0:
        return []
    if "bm25" in opts.modes and Q.text is None:
        raise ValueError(
            "mode 'bm25' needs the query text: search() with a text query, or pass query_text= to search_encoded "
            "(query_texts= to search_encoded_batch)"
        )
    restriction = backend.restrict(opts)
    n_allowed = backend.count(restriction)
    if n_allowed == 0:
        return [[] for _ in range(nq)]
    if "bm25" in opts.modes and backend.bm25_documents() == 0:
        raise ValueError(NO_BM25_ENTRIES)
    k = min(opts.k, n_allowed)
    opts_k = opts
    if not opts.explicit_depths and any(d > n_allowed for d in opts.depths.values()):
        # depths never exceed the searchable documents
        opts_k = _replace_depths(opts, {m: min(d, n_allowed) for m, d in opts.depths.items()})
    step = _single if len(opts.modes) == 1 else _hybrid
    results: list[list[Hit]] = []
    for lo in range(0, nq, _QUERY_CHUNK):
        results.extend(step(backend, Q[lo : lo + _QUERY_CHUNK] if nq > _QUERY_CHUNK else Q, k, restriction, opts_k))
    return results


def _replace_depths(opts: SearchOptions, depths: Mapping[str, int]) -> SearchOptions:
    from dataclasses import replace

    return replace(opts, depths=dict(depths))
