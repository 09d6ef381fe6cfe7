"""BM25 over stored document texts: the ``bm25`` mode, with scores equal to ``bm25s``'s and live statistics.

Documents are tokenised and stemmed at add time exactly like the BM25 reference row of ``m3-rag eval``
(``bm25s.tokenize``: lower-case, the regex ``(?u)\\b\\w\\w+\\b``, a stop-word list, the PyStemmer Snowball
stemmer of a configurable language). Term frequencies are kept per document (doc-major arrays); the
document frequency of every term and the total length are maintained incrementally over the *live*
documents, so IDF and the average document length are always those of the live corpus and scores stay
exact after add, upsert and delete.

Liveness (the one addition to :class:`~m3_rag.index.base.ModeIndex`): the store calls :meth:`BM25Index.discard`
with the slots it tombstones (delete, upsert's old row) so they stop counting in IDF and average length;
:meth:`compact` keeps the live statistics. ``allowed`` in :meth:`topk` remains a pure restriction (filters,
tombstones) and never changes the statistics: a filtered search scores like an unfiltered one.

Cost model (``bm25s`` is eager: it stores ``idf * tfc`` per posting at index time, so any change rebuilds the
whole index). Here an add costs tokenising plus ``O(new postings)``; a delete costs ``O(postings of the
deleted docs)``; the first query after a write rebuilds the term-major posting lists once, ``O(total postings)``
(a counting sort); a query then costs ``O(postings of its terms)`` (gather + ``np.bincount``), computing
``idf * tfc`` on the fly for the gathered postings only.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from .base import ModeIndex, topk_stable

__all__ = ["BM25Index", "BM25_VARIANTS", "Bm25Tokenizer", "check_bm25_options", "BM25_DEFAULTS"]

#: bm25s's scoring variants (its ``method``); ``"lucene"`` is bm25s's default.
BM25_VARIANTS = ("lucene", "robertson", "atire", "bm25l", "bm25+")
_TOKEN_PATTERN = r"(?u)\b\w\w+\b"
_PIP = 'pip install "m3-rag[bm25]"'
_STOPWORD_NAMES = {
    "english": "STOPWORDS_EN", "en": "STOPWORDS_EN", "english_plus": "STOPWORDS_EN_PLUS", "en_plus": "STOPWORDS_EN_PLUS",
    "german": "STOPWORDS_GERMAN", "de": "STOPWORDS_GERMAN", "dutch": "STOPWORDS_DUTCH", "nl": "STOPWORDS_DUTCH",
    "french": "STOPWORDS_FRENCH", "fr": "STOPWORDS_FRENCH", "spanish": "STOPWORDS_SPANISH", "es": "STOPWORDS_SPANISH",
    "portuguese": "STOPWORDS_PORTUGUESE", "pt": "STOPWORDS_PORTUGUESE", "italian": "STOPWORDS_ITALIAN",
    "it": "STOPWORDS_ITALIAN", "russian": "STOPWORDS_RUSSIAN", "ru": "STOPWORDS_RUSSIAN",
    "swedish": "STOPWORDS_SWEDISH", "sv": "STOPWORDS_SWEDISH", "norwegian": "STOPWORDS_NORWEGIAN",
    "no": "STOPWORDS_NORWEGIAN", "chinese": "STOPWORDS_CHINESE", "zh": "STOPWORDS_CHINESE",
    "turkish": "STOPWORDS_TURKISH", "tr": "STOPWORDS_TURKISH", "korean": "STOPWORDS_KOREAN", "ko": "STOPWORDS_KOREAN",
    "danish": "STOPWORDS_DANISH", "da": "STOPWORDS_DANISH",
}


def _import(name: str):
    try:
        return __import__(name)
    except ImportError as exc:
        raise ImportError(
            f"the bm25 mode needs bm25s and PyStemmer ({exc.name} is missing). Install them with: {_PIP}"
        ) from exc


#: bm25s's defaults, the store's ``bm25_*`` options: PyStemmer language, stop-word list, k1, b, variant.
BM25_DEFAULTS: dict[str, Any] = {"language": "english", "stopwords": "en", "k1": 1.5, "b": 0.75, "method": "lucene"}


def check_bm25_options(language: str | None = "english", stopwords: str | Sequence[str] | None = "en",
                       k1: float = 1.5, b: float = 0.75, method: str = "lucene") -> dict[str, Any]:
    """Validate a store's ``bm25_*`` options (the same errors in every store) and return them as a dict.

    Raises ``ValueError`` for an unknown PyStemmer language (naming the allowed ones), an unknown stop-word list,
    ``k1 <= 0``, ``b`` outside ``[0, 1]`` or an unknown variant (:data:`BM25_VARIANTS`); ``TypeError`` for
    non-numbers. Needs bm25s and PyStemmer (``ImportError`` with the install command otherwise)."""
    BM25Index(k1, b, method, language=language, stopwords=stopwords)  # every check lives in the constructor
    return {"language": language, "stopwords": stopwords if stopwords is None or isinstance(stopwords, str)
            else list(stopwords), "k1": float(k1), "b": float(b), "method": method}


class Bm25Tokenizer:
    """``bm25s.tokenize(texts, stopwords=..., stemmer=Stemmer.Stemmer(language), return_ids=False)``, one text at a time.

    Args:
        language: a PyStemmer language (``Stemmer.algorithms()``), or ``None`` for no stemming.
        stopwords: a bm25s stop-word list name (``"en"``, ``"german"``, ...), a sequence of words, or ``None``.
    """

    def __init__(self, language: str | None = "english", stopwords: str | Sequence[str] | None = "en") -> None:
        if language is not None:
            Stemmer = _import("Stemmer")
            if not isinstance(language, str) or language not in Stemmer.algorithms():
                raise ValueError(
                    f"unknown stemmer language {language!r}; allowed: {sorted(Stemmer.algorithms())} "
                    "(or None for no stemming)"
                )
            self._stem = Stemmer.Stemmer(language).stemWords
        else:
            self._stem = None
        if stopwords is None:
            words: tuple[str, ...] = ()
        elif isinstance(stopwords, str):
            if stopwords not in _STOPWORD_NAMES:
                raise ValueError(
                    f"unknown stop-word list {stopwords!r}; allowed: {sorted(_STOPWORD_NAMES)}, a list of words, or None"
                )
            words = tuple(getattr(_import("bm25s").stopwords, _STOPWORD_NAMES[stopwords]))
        else:
            words = tuple(stopwords)
            if not all(isinstance(w, str) for w in words):
                raise TypeError("stopwords must be a list name, a sequence of strings, or None")
        self.language = language
        self.stopwords = stopwords if (stopwords is None or isinstance(stopwords, str)) else list(words)
        self._stop = frozenset(words)
        self._split = re.compile(_TOKEN_PATTERN).findall
        self._stems: dict[str, str] = {}

    def split(self, texts: Sequence[str]) -> list[list[str]]:
        """Lower-cased words of each text, stop-words dropped (before stemming)."""
        split, stop = self._split, self._stop
        return [[w for w in split(t.lower()) if w not in stop] for t in texts]

    def stems_of(self, words: Sequence[str]) -> list[str]:
        """The stem of each word (identity without a stemmer)."""
        return list(words) if self._stem is None else self._stem(list(words))

    def __call__(self, texts: Sequence[str]) -> list[list[str]]:
        """Stems of each text (stop-words dropped, duplicates kept, in order)."""
        split = self.split(texts)
        if self._stem is None:
            return split
        seen: set[str] = set()
        for doc in split:
            seen.update(doc)
        new = sorted(seen.difference(self._stems))
        if new:
            self._stems.update(zip(new, self._stem(new)))
        stems = self._stems
        return [[stems[w] for w in doc] for doc in split]


class BM25Index(ModeIndex):
    """Term frequencies of stored texts, scored by BM25 with live IDF and average length.

    ``Q`` for :meth:`topk`/:meth:`score` is a list of query strings. Rows for :meth:`prepare` are document
    strings. Scores equal ``bm25s.BM25(k1=k1, b=b, delta=delta, method=variant).get_scores`` on a corpus of
    the live documents (float64 here, float32 in bm25s).

    Args:
        k1: term-frequency saturation, ``> 0`` (bm25s default 1.5).
        b: length normalisation in ``[0, 1]`` (default 0.75).
        variant: one of :data:`BM25_VARIANTS` (default ``"lucene"``, like bm25s).
        delta: the BM25L / BM25+ ``delta`` (``>= 0``, default 0.5; ignored by the other variants).
        language: PyStemmer language, or ``None`` (no stemming).
        stopwords: bm25s stop-word list name, word list, or ``None``.
    """

    mode: ClassVar[str] = "bm25"

    def __init__(
        self,
        k1: float = 1.5,
        b: float = 0.75,
        variant: str = "lucene",
        *,
        delta: float = 0.5,
        language: str | None = "english",
        stopwords: str | Sequence[str] | None = "en",
    ) -> None:
        for name, val in (("k1", k1), ("b", b), ("delta", delta)):
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not np.isfinite(val):
                raise TypeError(f"{name} must be a finite number; got {val!r}")
        if not k1 > 0:
            raise ValueError(f"k1 must be > 0; got {k1!r} (bm25s default: 1.5)")
        if not 0.0 <= b <= 1.0:
            raise ValueError(f"b must be in [0, 1]; got {b!r} (bm25s default: 0.75)")
        if delta < 0:
            raise ValueError(f"delta must be >= 0; got {delta!r} (bm25s default: 0.5)")
        if variant not in BM25_VARIANTS:
            raise ValueError(f"unknown BM25 variant {variant!r}; allowed: {list(BM25_VARIANTS)}")
        self.k1, self.b, self.delta, self.variant = float(k1), float(b), float(delta), variant
        self.tokenizer = Bm25Tokenizer(language, stopwords)
        self._vocab: dict[str, int] = {}  # stem -> term id
        self._word_term: dict[str, int] = {}  # word (before stemming) -> term id
        self._terms_list: list[str] = []
        # doc-major storage: slot s holds postings _terms[_indptr[s]:_indptr[s+1]] with counts _tfs[...]
        self._indptr = np.zeros(1, np.int64)
        self._terms = np.zeros(0, np.int32)
        self._tfs = np.zeros(0, np.float32)
        self._len = np.zeros(0, np.float64)  # document lengths (tokens after stop-words)
        self._alive = np.zeros(0, bool)
        self._df = np.zeros(0, np.int64)  # live document frequency per term
        self._n_live = 0
        self._total_len = 0.0
        self._inv: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # term-major cache

    # ------------------------------------------------------------------------------------------ state
    def __len__(self) -> int:
        return int(self._len.shape[0])

    @property
    def n_live(self) -> int:
        """Number of live documents (the ``N`` of IDF)."""
        return self._n_live

    @property
    def vocabulary(self) -> list[str]:
        """Stems by term id."""
        return list(self._terms_list)

    def settings(self) -> dict[str, Any]:
        """The scoring and tokenisation settings (JSON-safe)."""
        return {
            "k1": self.k1, "b": self.b, "variant": self.variant, "delta": self.delta,
            "language": self.tokenizer.language, "stopwords": self.tokenizer.stopwords,
        }

    # ------------------------------------------------------------------------------------------ writes
    def prepare(self, rows: Any) -> tuple[list[str], np.ndarray, dict[str, str], np.ndarray]:
        """Tokenise document strings: ``(all words, lengths, stems of unseen words, has-entry mask)``; changes nothing.

        A ``None`` row (a document stored without text) gets a slot with no bm25 entry: it never matches and
        does not count in IDF or the average length. Raises ``TypeError`` on any other non-string row."""
        if isinstance(rows, str) or not isinstance(rows, Sequence):
            raise TypeError(f"bm25 rows must be a sequence of strings; got {type(rows).__name__}")
        for i, t in enumerate(rows):
            if t is not None and not isinstance(t, str):
                raise TypeError(f"bm25 rows must be strings; row {i} is {type(t).__name__}")
        present = np.array([t is not None for t in rows], bool)
        words = self.tokenizer.split([t if t is not None else "" for t in rows])
        flat: list[str] = []
        for doc in words:
            flat.extend(doc)
        new = sorted(set(flat).difference(self._word_term))
        return (flat, np.array([len(d) for d in words], np.int64), dict(zip(new, self.tokenizer.stems_of(new))),
                present)

    def append(self, prepared: tuple[list[str], np.ndarray, dict[str, str], np.ndarray]) -> None:
        """Add tokenised documents as the next slots (live, except rows without text); new stems extend the
        vocabulary."""
        flat, lengths, new, present = prepared
        vocab, terms_list, word_term = self._vocab, self._terms_list, self._word_term
        for w, stem in new.items():
            t = vocab.get(stem)
            if t is None:
                t = vocab[stem] = len(terms_list)
                terms_list.append(stem)
            word_term[w] = t
        n_docs = lengths.shape[0]
        v = max(1, len(terms_list))
        doc_of = np.repeat(np.arange(n_docs, dtype=np.int64), lengths)
        tok = np.fromiter(map(word_term.__getitem__, flat), np.int64, count=len(flat))
        keys, tf = np.unique(doc_of * v + tok, return_counts=True)
        sizes = np.bincount(keys // v, minlength=n_docs).astype(np.int64)
        ids, counts = keys % v, tf
        lengths = lengths.astype(np.float64)
        new_terms = np.array(ids, np.int32)
        self._terms = np.concatenate([self._terms, new_terms])
        self._tfs = np.concatenate([self._tfs, np.array(counts, np.float32)])
        self._indptr = np.concatenate([self._indptr, self._indptr[-1] + np.cumsum(sizes)])
        self._len = np.concatenate([self._len, lengths])
        self._alive = np.concatenate([self._alive, present])
        df = np.zeros(len(terms_list), np.int64)
        df[: self._df.shape[0]] = self._df
        self._df = df + np.bincount(new_terms, minlength=len(terms_list))  # rows without text have no postings
        self._n_live += int(present.sum())
        self._total_len += float(lengths.sum())
        self._inv = None

    def _copy_state(self) -> None:
        # append grows the vocabulary dicts in place and replaces every array: copy the dicts
        self._vocab, self._terms_list, self._word_term = dict(self._vocab), list(self._terms_list), dict(self._word_term)

    def discarded(self, slots: np.ndarray) -> "BM25Index":
        """A copy of self with :meth:`discard` applied (self is unchanged): for all-or-nothing store mutations."""
        import copy

        out = copy.copy(self)
        out._alive, out._df = self._alive.copy(), self._df.copy()
        out._inv = None
        out.discard(slots)
        return out

    def discard(self, slots: np.ndarray) -> None:
        """Stop counting ``slots`` in IDF and average length (the store tombstoned them). Idempotent."""
        slots = np.unique(np.asarray(slots, np.int64))
        if slots.size and (slots[0] < 0 or slots[-1] >= len(self)):
            raise IndexError(f"bm25: slot out of range 0..{len(self) - 1}")
        slots = slots[self._alive[slots]]
        if not slots.size:
            return
        self._alive[slots] = False
        self._n_live -= int(slots.size)
        self._total_len -= float(self._len[slots].sum())
        pos = self._positions(slots)
        self._df -= np.bincount(self._terms[pos], minlength=self._df.shape[0])
        self._inv = None

    def _positions(self, slots: np.ndarray) -> np.ndarray:
        starts, ends = self._indptr[slots], self._indptr[slots + 1]
        sizes = ends - starts
        if not sizes.sum():
            return np.zeros(0, np.int64)
        offs = np.repeat(starts - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
        return np.arange(int(sizes.sum()), dtype=np.int64) + offs

    def compact(self, keep: np.ndarray) -> "BM25Index":
        """A new index of the sorted slots ``keep``; the vocabulary is kept; dead slots in ``keep`` stay dead."""
        keep = np.asarray(keep, np.int64)
        out = self._empty_like()
        pos = self._positions(keep)
        out._terms, out._tfs = self._terms[pos], self._tfs[pos]
        sizes = self._indptr[keep + 1] - self._indptr[keep]
        out._indptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        out._len, out._alive = self._len[keep].copy(), self._alive[keep].copy()
        out._recount()
        return out

    def _empty_like(self) -> "BM25Index":
        out = BM25Index.__new__(BM25Index)
        out.k1, out.b, out.delta, out.variant = self.k1, self.b, self.delta, self.variant
        out.tokenizer = self.tokenizer
        out._vocab, out._terms_list = dict(self._vocab), list(self._terms_list)
        out._word_term = dict(self._word_term)
        out._inv = None
        return out

    def _recount(self) -> None:
        live_pos = self._positions(np.flatnonzero(self._alive))
        self._df = np.bincount(self._terms[live_pos], minlength=len(self._terms_list)).astype(np.int64)
        self._n_live = int(self._alive.sum())
        self._total_len = float(self._len[self._alive].sum())

    # ------------------------------------------------------------------------------------------ scoring
    def _inverted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Term-major postings of live docs: ``(indptr over terms, doc slots, weights)`` where a posting's weight is
        its ``idf * (tfc - tfc0)`` under the current statistics (rebuilt after writes, which reset the cache)."""
        if self._inv is None:
            doc = np.repeat(np.arange(len(self), dtype=np.int32), np.diff(self._indptr))
            live = self._alive[doc]
            doc, terms, tfs = doc[live], self._terms[live], self._tfs[live]
            order = np.argsort(terms, kind="stable")  # docs stay ascending within each term
            doc, terms, tfs = doc[order], terms[order], tfs[order]
            indptr = np.zeros(len(self._terms_list) + 1, np.int64)
            np.cumsum(np.bincount(terms, minlength=len(self._terms_list)), out=indptr[1:])
            with np.errstate(divide="ignore", invalid="ignore"):
                idf = self._idf(self._df)
            weight = idf[terms] * (self._tfc(tfs.astype(np.float64), self._len[doc]) - self._tfc0())
            self._inv = (indptr, doc, weight)
        return self._inv

    def _idf(self, df: np.ndarray) -> np.ndarray:
        n, df = float(self._n_live), df.astype(np.float64)
        v = self.variant
        with np.errstate(divide="ignore"):
            if v == "lucene":
                return np.log(1.0 + (n - df + 0.5) / (df + 0.5))
            if v == "robertson":
                return np.log(np.maximum((n - df + 0.5) / (df + 0.5), 1.0))
            if v == "atire":
                return np.log(n / df)
            if v == "bm25l":
                return np.log((n + 1.0) / (df + 0.5))
            return np.log((n + 1.0) / df)  # bm25+

    def _tfc(self, tf: np.ndarray, length: np.ndarray) -> np.ndarray:
        k1, b, d = self.k1, self.b, self.delta
        avg = self._total_len / self._n_live if self._n_live else 1.0
        norm = 1.0 - b + b * length / avg if avg > 0 else np.ones_like(length)
        v = self.variant
        if v in ("lucene", "robertson"):
            return tf / (k1 * norm + tf)
        if v == "atire":
            return tf * (k1 + 1.0) / (tf + k1 * norm)
        if v == "bm25l":
            c = tf / norm
            return (k1 + 1.0) * (c + d) / (k1 + c + d)
        return (k1 + 1.0) * tf / (k1 * norm + tf) + d  # bm25+

    def _tfc0(self) -> float:
        """The score of an absent term (non-zero for BM25L and BM25+, which bm25s adds to every document)."""
        if self.variant == "bm25l":
            return (self.k1 + 1.0) * self.delta / (self.k1 + self.delta)
        if self.variant == "bm25+":
            return self.delta
        return 0.0

    def query_terms(self, Q: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query: ``(term ids, multiplicity)`` of its stems present in the vocabulary with a live document."""
        if isinstance(Q, str) or not isinstance(Q, Sequence):
            raise TypeError(f"bm25 queries must be a sequence of strings; got {type(Q).__name__}")
        for i, q in enumerate(Q):
            if not isinstance(q, str):
                raise TypeError(f"bm25 queries must be strings; query {i} is {type(q).__name__}")
        out = []
        for stems in self.tokenizer(Q):
            ids = [self._vocab[w] for w in stems if w in self._vocab]
            t, m = np.unique(np.array(ids, np.int64), return_counts=True)
            live = self._df[t] > 0
            out.append((t[live], m[live].astype(np.float64)))
        return out

    def _scores_sparse(self, terms: np.ndarray, mult: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """``(matched live slots ascending, their scores, the score of an unmatched slot)`` of one query."""
        base = float((mult * self._idf(self._df[terms])).sum() * self._tfc0()) if terms.size and self._tfc0() else 0.0
        if not terms.size:
            return np.zeros(0, np.int64), np.zeros(0, np.float64), base
        indptr, docs, weight = self._inverted()
        starts, ends = indptr[terms], indptr[terms + 1]
        if terms.size == 1:  # one posting list: already unique and ascending
            d = docs[starts[0]:ends[0]].astype(np.int64)
            return d, weight[starts[0]:ends[0]] * mult[0] + base, base
        sizes = ends - starts
        total = int(sizes.sum())
        offs = np.repeat(starts - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
        pos = np.arange(total, dtype=np.int64) + offs
        d = docs[pos]
        w = np.repeat(mult, sizes) * weight[pos]
        n = len(self)
        if total * 16 > n:  # dense accumulation: O(n) but no sort
            acc = np.bincount(d, weights=w, minlength=n)
            hit = np.zeros(n, bool)
            hit[d] = True
            u = np.flatnonzero(hit)
            return u, acc[u] + base, base
        u, inv = np.unique(d, return_inverse=True)
        return u.astype(np.int64), np.bincount(inv.reshape(-1), weights=w) + base, base

    def _scores_full(self, terms: np.ndarray, mult: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores over all slots, matched mask)."""
        n = len(self)
        u, sc, base = self._scores_sparse(terms, mult)
        scores = np.full(n, base, np.float64)
        matched = np.zeros(n, bool)
        scores[u] = sc
        matched[u] = True
        return scores, matched

    def sparse_scores(self, Q: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """Per query: ``(slots, scores, unmatched score)``: the live slots containing at least one query stem
        (ascending), their scores, and the score every other slot gets (0 except for BM25L/BM25+)."""
        return [self._scores_sparse(t, m) for t, m in self.query_terms(Q)]

    def full_scores(self, Q: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query: ``(scores over every slot, matched mask)`` (matched: the slot is live and contains at least
        one query stem). A query without a known stem matches nothing."""
        return [self._scores_full(t, m) for t, m in self.query_terms(Q)]

    def topk(self, Q: Sequence[str], k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` among allowed live slots that contain at least one query stem; ``-1``-padded.

        A query with no known stem after tokenisation matches nothing (all ``-1``), not an error.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive integer; got {k!r}")
        qt = self.query_terms(Q)
        out_s = np.zeros((len(qt), k), np.float64)
        out_i = np.full((len(qt), k), -1, np.int64)
        if allowed is not None:
            allowed = np.asarray(allowed, bool)
            if allowed.shape != (len(self),):
                raise ValueError(f"allowed must be a boolean mask of {len(self)} slots; got shape {allowed.shape}")
        for r, (t, m) in enumerate(qt):
            u, sc, _ = self._scores_sparse(t, m)  # live matched slots only
            if allowed is not None and u.size:
                keep = allowed[u]
                u, sc = u[keep], sc[keep]
            if not u.size:
                continue
            top = topk_stable(sc, min(k, u.size))  # ties: ascending index = ascending slot
            out_s[r, : top.size], out_i[r, : top.size] = sc[top], u[top]
        return out_s, out_i

    def score(self, Q: Sequence[str], slots: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Exact BM25 scores of query ``i`` against ``slots[i]`` (0 for an unmatched doc, except BM25L/BM25+)."""
        qt = self.query_terms(Q)
        if len(slots) != len(qt):
            raise ValueError(f"score: {len(qt)} queries but {len(slots)} slot arrays")
        out = []
        for (t, m), s in zip(qt, slots):
            out.append(self.lookup(self._scores_sparse(t, m), np.asarray(s, np.int64)))
        return out

    @staticmethod
    def lookup(sparse: tuple[np.ndarray, np.ndarray, float], slots: np.ndarray) -> np.ndarray:
        """The scores of ``slots`` from one query's :meth:`sparse_scores` entry."""
        u, sc, base = sparse
        slots = np.asarray(slots, np.int64)
        if not slots.size:
            return np.zeros(0, np.float64)
        idx = np.minimum(np.searchsorted(u, slots), max(u.size - 1, 0))
        found = (u[idx] == slots) if u.size else np.zeros(slots.shape, bool)
        return np.where(found, sc[idx] if u.size else 0.0, base)

    def explain(self, query: str, slot: int) -> dict[str, float]:
        """Matched stems of ``query`` in document ``slot`` and each one's contribution to its score."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a string; got {type(query).__name__}")
        if isinstance(slot, bool) or not isinstance(slot, (int, np.integer)) or not 0 <= slot < len(self):
            raise IndexError(f"slot must be in 0..{len(self) - 1}; got {slot!r}")
        t, m = self.query_terms([query])[0]
        lo, hi = self._indptr[slot], self._indptr[slot + 1]
        doc_tf = dict(zip(self._terms[lo:hi].tolist(), self._tfs[lo:hi].tolist()))
        hit = np.array([int(x) in doc_tf for x in t], bool)
        t, m = t[hit], m[hit]
        tf = np.array([doc_tf[int(x)] for x in t], np.float64)
        contrib = m * self._idf(self._df[t]) * (self._tfc(tf, np.full(t.size, self._len[slot])) - self._tfc0())
        return {self._terms_list[int(i)]: float(c) for i, c in zip(t, contrib)}

    # ------------------------------------------------------------------------------------------ io
    def rows(self, slots: np.ndarray) -> list[dict[str, int]]:
        """Stem -> term frequency of each slot (the stored texts themselves live in the store's records)."""
        out = []
        for s in np.asarray(slots, np.int64):
            lo, hi = self._indptr[s], self._indptr[s + 1]
            out.append({self._terms_list[int(t)]: int(f) for t, f in zip(self._terms[lo:hi], self._tfs[lo:hi])})
        return out

    def nbytes(self) -> int:
        arrs = [self._indptr, self._terms, self._tfs, self._len, self._alive, self._df]
        if self._inv is not None:
            arrs += list(self._inv)
        return int(sum(a.nbytes for a in arrs))

    def to_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Settings in ``meta``; postings, lengths, liveness and the vocabulary (fixed-width unicode) as arrays."""
        vocab = np.array(self._terms_list, dtype=f"<U{max([1] + [len(w) for w in self._terms_list])}")
        meta = {"format": 1, **self.settings(), "n_terms": len(self._terms_list)}
        arrays = {
            "bm25_indptr.npy": self._indptr, "bm25_terms.npy": self._terms, "bm25_tfs.npy": self._tfs,
            "bm25_len.npy": self._len, "bm25_alive.npy": self._alive, "bm25_vocab.npy": vocab,
        }
        return meta, arrays

    @classmethod
    def from_arrays(cls, meta: Mapping[str, Any], load: Any, n: int) -> "BM25Index":
        """Rebuild from :meth:`to_arrays`; ``load(name, dtype, ndim, rows=None, mmap=False)`` checks each array."""
        if meta.get("format") != 1:
            raise ValueError(f"bm25 index format {meta.get('format')!r} is not supported (expected 1)")
        out = cls(meta["k1"], meta["b"], meta["variant"], delta=meta["delta"], language=meta["language"],
                  stopwords=meta["stopwords"])
        out._indptr = load("bm25_indptr.npy", np.int64, 1, rows=n + 1)
        out._len = load("bm25_len.npy", np.float64, 1, rows=n)
        out._alive = load("bm25_alive.npy", np.bool_, 1, rows=n)
        out._terms = load("bm25_terms.npy", np.int32, 1)
        out._tfs = load("bm25_tfs.npy", np.float32, 1, rows=out._terms.shape[0])
        vocab = load("bm25_vocab.npy", None, 1, rows=int(meta["n_terms"]))
        if vocab.dtype.kind != "U":
            raise ValueError(f"bm25_vocab.npy must hold unicode strings; got dtype {vocab.dtype}")
        out._terms_list = [str(w) for w in vocab.tolist()]
        out._vocab = {w: i for i, w in enumerate(out._terms_list)}
        out._word_term = {}
        if len(out._vocab) != len(out._terms_list):
            raise ValueError("bm25 vocabulary has duplicate stems (corrupt file)")
        ip = out._indptr
        if ip[0] != 0 or ip[-1] != out._terms.shape[0] or np.any(np.diff(ip) < 0):
            raise ValueError("bm25 postings index is inconsistent (corrupt file)")
        if out._terms.size and (out._terms.min() < 0 or out._terms.max() >= len(out._terms_list)):
            raise ValueError("bm25 term ids out of vocabulary range (corrupt file)")
        out._recount()
        return out

