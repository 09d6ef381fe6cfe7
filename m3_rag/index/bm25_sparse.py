"""BM25 as sparse vectors for an engine with an IDF modifier (Qdrant, Qdrant Edge): the ``bm25`` mode there.

The engine scores ``sum over query terms of q_value * idf(term) * doc_value`` with Qdrant's IDF
``ln(1 + (N - df + 0.5) / (df + 0.5))`` -- bm25s's ``lucene`` IDF. So each document is stored as a sparse vector
whose values are the BM25 term-frequency component ``tf / (tf + k1 * (1 - b + b * len / avgdl))`` and each
query as the counts of its stems; the engine supplies IDF, computed over the live documents holding a bm25 vector
(``corpus`` restricted by :data:`HAS_BM25_VECTOR`-style filters, which the backends send).

Tokenising and stemming are :class:`~m3_rag.index.bm25.Bm25Tokenizer`'s (bm25s + PyStemmer), the same as
:class:`~m3_rag.index.bm25.BM25Index`. Stems become ids by a stable 32-bit hash (:func:`stem_id`, the first four
bytes of BLAKE2b), so no vocabulary has to be stored next to the collection.

Where the scores can differ from :class:`~m3_rag.HybridStore`'s (measured in ``bench/bm25.py engines``):

- the average length is the live corpus's *at the time each document was written* (the engine cannot rescale
  stored values); documents written in one call share the same value, which includes that call's documents.
  A store built in one ``add`` and not changed since scores exactly like ``HybridStore`` (to float32);
- the engine sums in float32 (``HybridStore`` in float64): ~1e-7 relative;
- two stems with the same 32-bit hash count as one term (for 100k distinct stems the chance that some pair
  collides is about 70%, but the pair is almost always two rare stems, and only a query holding one of them is
  affected);
- only the ``lucene`` variant exists (the engine's IDF is fixed).
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Sequence

import numpy as np

from .bm25 import BM25_DEFAULTS, Bm25Tokenizer, check_bm25_options

__all__ = ["BM25_VECTOR", "PAYLOAD_BM25_LEN", "Bm25SparseEncoder", "stem_id", "settings_mismatch", "declare", "reopen", "carry"]

#: The name of the sparse vector holding the bm25 mode.
BM25_VECTOR = "bm25"
#: The payload key holding a document's bm25 length (tokens after stop-words); absent without a bm25 entry.
PAYLOAD_BM25_LEN = "m3_bm25_len"
#: The error of bm25-only calls on a store without the mode.
NOT_HELD = "this store does not hold the bm25 mode; declare it when the store is made: modes=(..., 'bm25')"
#: How stems become sparse ids (recorded with the collection; a different scheme is refused on open).
HASH_SCHEME = "blake2b-32le"


def stem_id(stem: str) -> int:
    """The sparse id of a stem: the first 4 bytes of BLAKE2b(stem, UTF-8), little-endian (an unsigned 32-bit int)."""
    return int.from_bytes(hashlib.blake2b(stem.encode("utf-8"), digest_size=4).digest(), "little")


def settings_mismatch(stored: Any, wanted: dict[str, Any]) -> list[str]:
    """The ``bm25_*`` settings that differ between a collection's recorded ones and the constructor's."""
    if not isinstance(stored, dict):
        return ["bm25 settings (missing or malformed in the collection)"]
    return [f"bm25_{k}: stored {stored.get(k)!r}, given {v!r}" for k, v in wanted.items() if stored.get(k) != v]


class Bm25SparseEncoder:
    """Documents and queries of the ``bm25`` mode as engine sparse vectors, plus the running length statistics.

    Args: the store's ``bm25_*`` options (:func:`~m3_rag.index.bm25.check_bm25_options`); ``method`` must be
    ``"lucene"``, the one variant an IDF-modifier engine computes.

    The statistics (``total_len``, ``n_docs``: documents with a bm25 entry) are loaded once from the stored
    lengths (:meth:`load`) and kept up to date by the store (:meth:`added`, :meth:`removed`).
    """

    def __init__(self, language: str | None = BM25_DEFAULTS["language"],
                 stopwords: str | Sequence[str] | None = BM25_DEFAULTS["stopwords"],
                 k1: float = BM25_DEFAULTS["k1"], b: float = BM25_DEFAULTS["b"],
                 method: str = BM25_DEFAULTS["method"]) -> None:
        self.options = check_bm25_options(language, stopwords, k1, b, method)
        if method != "lucene":
            raise ValueError(
                f"bm25_method={method!r} is not available on Qdrant: its IDF modifier computes the lucene IDF "
                "ln(1 + (N - df + 0.5) / (df + 0.5)); use bm25_method='lucene', or HybridStore for other variants"
            )
        self.k1, self.b = float(k1), float(b)
        self.tokenizer = Bm25Tokenizer(language, stopwords)
        self._ids: dict[str, int] = {}
        self.total_len = 0.0
        self.n_docs = 0
        self.loaded = False

    def settings(self) -> dict[str, Any]:
        """What a collection records about its bm25 mode (checked on reopen)."""
        return dict(self.options, hash=HASH_SCHEME)

    # ------------------------------------------------------------------ statistics
    def load(self, lengths: Iterable[int]) -> None:
        """Set the statistics from the stored documents' bm25 lengths."""
        arr = np.fromiter((int(x) for x in lengths), dtype=np.int64)
        self.total_len, self.n_docs, self.loaded = float(arr.sum()), int(arr.size), True

    def added(self, lengths: Sequence[int]) -> None:
        self.total_len += float(sum(lengths))
        self.n_docs += len(lengths)

    def removed(self, lengths: Sequence[int]) -> None:
        self.total_len = max(0.0, self.total_len - float(sum(lengths)))
        self.n_docs = max(0, self.n_docs - len(lengths))

    # ------------------------------------------------------------------ vectors
    def _id(self, stem: str) -> int:
        t = self._ids.get(stem)
        if t is None:
            t = self._ids[stem] = stem_id(stem)
        return t

    def _counts(self, stems: Sequence[str]) -> tuple[list[int], list[float]]:
        acc: dict[int, float] = {}
        for s in stems:
            t = self._id(s)
            acc[t] = acc.get(t, 0.0) + 1.0
        items = sorted(acc.items())
        return [t for t, _ in items], [c for _, c in items]

    def documents(self, texts: Sequence[str | None], replaced: Sequence[int] = ()) -> tuple[
            list[tuple[list[int], list[float]] | None], list[int | None]]:
        """Per text: ``(ids, values)`` of its bm25 vector (``None`` for a ``None`` text) and its length.

        ``replaced``: the lengths of stored versions these documents replace (an upsert), which leave the average.
        The average length used is the live corpus's after this write: stored + these - replaced.
        """
        present = [t for t in texts if t is not None]
        stems = self.tokenizer(present)
        lens = [len(s) for s in stems]
        n = self.n_docs + len(lens) - len(replaced)
        total = self.total_len + sum(lens) - sum(replaced)
        avg = total / n if n > 0 else 1.0
        k1, b = self.k1, self.b
        out: list[tuple[list[int], list[float]] | None] = []
        out_len: list[int | None] = []
        it = iter(zip(stems, lens))
        for t in texts:
            if t is None:
                out.append(None)
                out_len.append(None)
                continue
            doc, length = next(it)
            ids, tf = self._counts(doc)
            norm = (1.0 - b + b * length / avg) if avg > 0 else 1.0
            out.append((ids, [float(np.float32(x / (x + k1 * norm))) for x in tf]))
            out_len.append(length)
        return out, out_len

    def query(self, text: str) -> tuple[list[int], list[float]]:
        """The query's sparse vector: stem ids and their counts (empty when no stem remains)."""
        return self._counts(self.tokenizer([text])[0])

    def query_stems(self, text: str) -> dict[int, tuple[str, float]]:
        """``{id: (stem, count)}`` of the query (stems sharing an id are joined with ``"|"``)."""
        out: dict[int, tuple[str, float]] = {}
        for s in self.tokenizer([text])[0]:
            t = self._id(s)
            name, c = out.get(t, (s, 0.0))
            if s not in name.split("|"):
                name = f"{name}|{s}"
            out[t] = (name, c + 1.0)
        return out


def declare(modes: Any, options: dict[str, Any]) -> tuple[tuple[str, ...] | None, "Bm25SparseEncoder | None"]:
    """A store's ``modes=`` and ``bm25_*`` arguments: ``(declared modes in canonical order or None, the bm25
    encoder when bm25 is declared)``. ``bm25_*`` options other than the defaults without bm25 are refused, as in
    ``HybridStore``."""
    from ..types import STORE_MODES
    from ..validation import check_modes

    declared = None if modes is None else tuple(m for m in STORE_MODES if m in check_modes(modes))
    if declared is not None and "bm25" in declared:
        return declared, Bm25SparseEncoder(**options)
    changed = sorted(f"bm25_{k}" for k, v in options.items() if v != BM25_DEFAULTS[k])
    if changed:
        raise ValueError(f"{', '.join(changed)} given but the store does not hold bm25: pass modes=(..., 'bm25')")
    return declared, None


def reopen(stored: Any, declared: "Bm25SparseEncoder | None", where: str) -> "Bm25SparseEncoder":
    """The bm25 encoder of an existing collection from its recorded settings; ``declared`` (the constructor's,
    when it asked for bm25) must agree with them."""
    keys = ("language", "stopwords", "k1", "b", "method")
    if not isinstance(stored, dict) or any(k not in stored for k in keys) or stored.get("hash") != HASH_SCHEME:
        raise ValueError(
            f"{where} holds a bm25 vector but its recorded bm25 settings are missing or malformed ({stored!r:.200}); "
            f"this m3_rag hashes stems with {HASH_SCHEME!r}. Re-index into a new collection."
        )
    if declared is not None:
        diff = settings_mismatch(stored, declared.settings())
        if diff:
            raise ValueError(f"{where} was built with other bm25 settings: {'; '.join(diff)}. Omit the bm25_* "
                             "arguments to use the stored ones, or re-index.")
        return declared
    return Bm25SparseEncoder(**{k: stored[k] for k in keys})


def carry(source: Any, kwargs: dict[str, Any]) -> None:
    """Migration keeps the bm25 mode: the target store declares the source's modes and bm25 settings (unless
    ``kwargs`` names its own ``modes``)."""
    if "bm25" not in tuple(getattr(source, "modes", ()) or ()) or "modes" in kwargs:
        return
    kwargs["modes"] = tuple(source.modes)
    for k, v in (getattr(source, "bm25_options", None) or {}).items():
        kwargs.setdefault(f"bm25_{k}", v)
