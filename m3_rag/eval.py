"""Evaluate dense, sparse, ColBERT and their fusions on BEIR-format collections, with trec_eval metrics.

Conventions (BEIR's, and documented here so the numbers can be reproduced elsewhere):

* A collection is a folder with ``corpus.jsonl`` (``{"_id", "title", "text"}``), ``queries.jsonl``
  (``{"_id", "text"}``) and ``qrels/<split>.tsv`` (``query-id <TAB> corpus-id <TAB> score``, one header line).
* A document's text is ``(title + " " + text).strip()``.
* Only queries that have at least one qrels row are scored (a row with score 0 counts: the query is judged).
  Queries without qrels are skipped and counted (:attr:`EvalReport.skipped_queries`).
* A document whose id equals the query's id is left out of that query's ranking (BEIR's ``ignore_identical_ids``;
  ``ignore_identical_ids=False`` / ``--keep-identical-ids`` keeps it, which matters on collections whose query and
  document ids are both plain numbers, such as CISI where 7 queries have their same-numbered document as relevant).
* Metrics follow ``trec_eval`` exactly (so they equal ``pytrec_eval`` / ``ir-measures`` to float precision):
  a run is ranked by score descending, ties broken by document id in *descending* string order;
  nDCG@10 uses linear gain (the qrels score) and ``log2(rank + 1)`` discount, with the ideal ranking also cut at 10;
  Recall@100 and MRR@10 count a document as relevant when its qrels score is >= 1. Every judged query counts
  in the mean; a query whose ranking is empty scores 0.

The grid is evaluated in one pass: documents are encoded once (and cached on disk in the
:class:`~m3_rag.store.HybridStore` format, keyed by the model and corpus fingerprints), queries are encoded
once, and every (modes, fusion) cell reuses both.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from ._jsonl import iter_jsonl
from .fusion import FUSIONS, fuse_weighted
from .types import MODES, STORE_MODES, M3Output

if TYPE_CHECKING:
    from .encoder import M3Encoder
    from .store import HybridStore

__all__ = [
    "DatasetError",
    "BeirDataset",
    "load_beir",
    "trec_ranking",
    "ndcg_at_k",
    "recall_at_k",
    "rr_at_k",
    "evaluate_run",
    "split_queries",
    "default_grid",
    "parse_modes",
    "EvalRow",
    "SweepResult",
    "EvalReport",
    "encode_corpus",
    "evaluate",
    "sweep_weights",
    "bm25_run",
    "format_table",
    "METRICS",
    "FUSIONS",
]

#: The metrics reported for every row, in order (names as they appear in the JSON output).
METRICS: tuple[str, ...] = ("ndcg@10", "recall@100", "mrr@10")
#: Depth of every run (Recall@100 needs 100 documents).
RUN_DEPTH = 100
#: Documents encoded per ``encode_documents`` call when building the eval index.
ENCODE_SLICE = 2048
#: Label of the BM25 reference row.
BM25 = "bm25"
DEFAULT_CACHE_DIR = Path(os.environ.get("M3_RAG_CACHE", Path.home() / ".cache" / "m3_rag")) / "eval"
_EVAL_EXTRA = 'pip install "m3-rag[eval]"'


class DatasetError(ValueError):
    """A BEIR collection file is missing or malformed; the message names the file and the line."""


# ---------------------------------------------------------------------------------------------- loading
@dataclass
class BeirDataset:
    """A loaded BEIR collection.

    Attributes:
        name: the folder name.
        corpus: document id -> text (``title + " " + text``, stripped), in file order.
        queries: query id -> text, judged queries only, in file order.
        qrels: query id -> {document id -> graded score}, for the judged queries.
        skipped_queries: ids of queries in ``queries.jsonl`` that have no qrels (not scored).
        split: the qrels split that was read.
    """

    name: str
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    skipped_queries: list[str] = field(default_factory=list)
    split: str = "test"

    @property
    def fingerprint(self) -> str:
        """A hash of the corpus ids and texts (the cache key of the encoded corpus)."""
        h = hashlib.sha256()
        for doc_id, text in self.corpus.items():
            h.update(doc_id.encode("utf-8", "surrogatepass"))
            h.update(b"\0")
            h.update(text.encode("utf-8", "surrogatepass"))
            h.update(b"\1")
        return h.hexdigest()[:16]


def _read_jsonl(path: Path, kind: str) -> Iterable[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise DatasetError(
            f"{path}: file not found. A BEIR collection folder needs corpus.jsonl, queries.jsonl and "
            f"qrels/<split>.tsv (missing the {kind})."
        )
    for lineno, obj in iter_jsonl(path, DatasetError, encoding="utf-8-sig"):
        if not isinstance(obj, dict):
            raise DatasetError(f"{path}, line {lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def _field_id(obj: Mapping[str, Any], path: Path, lineno: int) -> str:
    if "_id" not in obj:
        raise DatasetError(f'{path}, line {lineno}: the object has no "_id" field (keys: {sorted(obj)})')
    value = obj["_id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DatasetError(f'{path}, line {lineno}: "_id" must be a string or an integer; got {value!r}')
    return str(value)


def _field_str(obj: Mapping[str, Any], key: str, path: Path, lineno: int, *, required: bool) -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise DatasetError(f'{path}, line {lineno}: the object has no "{key}" field (keys: {sorted(obj)})')
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise DatasetError(f'{path}, line {lineno}: "{key}" must be a string; got {type(value).__name__} {value!r:.60}')
    return value


def _read_qrels(path: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """qid -> {docid -> (score, line)}; the last row wins for a repeated pair (as BEIR)."""
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.tsv")) if path.parent.is_dir() else []
        hint = f" Available splits: {available}." if available else ""
        raise DatasetError(f"{path}: file not found (the qrels of this split).{hint}")
    qrels: dict[str, dict[str, tuple[int, int]]] = {}
    with path.open(encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cols = line.split("\t") if "\t" in line else line.split()
            if len(cols) == 4:  # TREC format: qid iter docid rel
                cols = [cols[0], cols[2], cols[3]]
            if len(cols) != 3:
                raise DatasetError(
                    f"{path}, line {lineno}: expected 3 tab-separated columns (query-id, corpus-id, score); "
                    f"got {len(cols)}: {line!r:.80}"
                )
            qid, did, score_text = (c.strip() for c in cols)
            try:
                score = int(score_text)
            except ValueError:
                try:
                    as_float = float(score_text)
                except ValueError:
                    as_float = math.nan
                if lineno == 1 and not math.isfinite(as_float):
                    continue  # the header line (BEIR: "query-id  corpus-id  score")
                if math.isfinite(as_float) and as_float == int(as_float):
                    score = int(as_float)
                else:
                    raise DatasetError(
                        f"{path}, line {lineno}: the score must be an integer; got {score_text!r}"
                    ) from None
            if not qid or not did:
                raise DatasetError(f"{path}, line {lineno}: empty query-id or corpus-id: {line!r:.80}")
            qrels.setdefault(qid, {})[did] = (score, lineno)
    return qrels


def load_beir(path: str | os.PathLike[str], split: str = "test") -> BeirDataset:
    """Load a BEIR-format collection folder (see the module docstring for the conventions).

    Raises:
        DatasetError: a file is missing or malformed (the message names the file and line), the corpus
            is empty, or no query is judged. Qrels rows naming a query that ``queries.jsonl`` lacks are
            ignored with a ``UserWarning`` that gives their count and the first line.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder. Pass a BEIR collection folder (corpus.jsonl, queries.jsonl, qrels/).")
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string such as 'test'; got {split!r}")
    corpus_path = root / "corpus.jsonl"
    corpus: dict[str, str] = {}
    for lineno, obj in _read_jsonl(corpus_path, "corpus"):
        doc_id = _field_id(obj, corpus_path, lineno)
        if doc_id in corpus:
            raise DatasetError(f"{corpus_path}, line {lineno}: duplicate document id {doc_id!r}")
        title = _field_str(obj, "title", corpus_path, lineno, required=False)
        text = _field_str(obj, "text", corpus_path, lineno, required=not title)
        corpus[doc_id] = (title + " " + text).strip()
    if not corpus:
        raise DatasetError(f"{corpus_path}: the corpus holds no documents; nothing to evaluate.")

    queries_path = root / "queries.jsonl"
    all_queries: dict[str, str] = {}
    for lineno, obj in _read_jsonl(queries_path, "queries"):
        qid = _field_id(obj, queries_path, lineno)
        if qid in all_queries:
            raise DatasetError(f"{queries_path}, line {lineno}: duplicate query id {qid!r}")
        all_queries[qid] = _field_str(obj, "text", queries_path, lineno, required=True)

    qrels_path = root / "qrels" / f"{split}.tsv"
    raw = _read_qrels(qrels_path)
    unknown = {qid: min(line for _, line in docs.values()) for qid, docs in raw.items() if qid not in all_queries}
    if unknown:
        first = min(unknown, key=unknown.__getitem__)
        warnings.warn(
            f"{qrels_path}: {len(unknown)} judged query id(s) are not in {queries_path} and are ignored "
            f"(first: {first!r} at line {unknown[first]})",
            UserWarning,
            stacklevel=2,
        )
        raw = {qid: docs for qid, docs in raw.items() if qid not in unknown}
    if not raw:
        raise DatasetError(f"{qrels_path}: no judgements; nothing to score.")
    queries = {qid: text for qid, text in all_queries.items() if qid in raw}
    qrels = {qid: {did: score for did, (score, _) in raw[qid].items()} for qid in queries}
    skipped = [qid for qid in all_queries if qid not in raw]
    return BeirDataset(root.name, corpus, queries, qrels, skipped, split)


# ---------------------------------------------------------------------------------------------- metrics
def trec_ranking(scores: Mapping[str, float]) -> list[str]:
    """Document ids ranked as ``trec_eval`` ranks them: score descending, ties by id descending.

    >>> trec_ranking({"a": 1.0, "b": 2.0, "c": 1.0})
    ['b', 'c', 'a']
    """
    by_id = sorted(scores, reverse=True)
    return sorted(by_id, key=lambda d: -float(scores[d]))  # stable: keeps the id order within ties


def ndcg_at_k(qrels: Mapping[str, int], ranking: Sequence[str], k: int = 10) -> float:
    """trec_eval's ``ndcg_cut_k``: linear gain, ``1/log2(rank+1)`` discount, ideal ranking cut at ``k``.

    >>> round(ndcg_at_k({"a": 2, "b": 1}, ["b", "a"], 10), 6)   # (1 + 2/log2(3)) / (2 + 1/log2(3))
    0.885465
    """
    dcg = sum(max(qrels.get(d, 0), 0) / math.log2(i + 2) for i, d in enumerate(ranking[:k]))
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(qrels: Mapping[str, int], ranking: Sequence[str], k: int = 100) -> float:
    """trec_eval's ``recall_k``: relevant (score >= 1) documents in the top ``k`` over all relevant ones."""
    relevant = {d for d, g in qrels.items() if g >= 1}
    if not relevant:
        return 0.0
    return sum(1 for d in ranking[:k] if d in relevant) / len(relevant)


def rr_at_k(qrels: Mapping[str, int], ranking: Sequence[str], k: int = 10) -> float:
    """Reciprocal rank of the first relevant (score >= 1) document within the top ``k``, else 0."""
    for i, d in enumerate(ranking[:k]):
        if qrels.get(d, 0) >= 1:
            return 1.0 / (i + 1)
    return 0.0


def evaluate_run(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    *,
    per_query: bool = False,
) -> dict[str, float] | dict[str, dict[str, float]]:
    """nDCG@10, Recall@100 and MRR@10 of a run, averaged over every query in ``qrels``.

    Args:
        qrels: query id -> {document id -> graded score}.
        run: query id -> {document id -> score}; a query missing from the run scores 0.
        per_query: return ``{query id: {metric: value}}`` instead of the means.

    Returns:
        ``{"ndcg@10": ..., "recall@100": ..., "mrr@10": ...}`` (means), or the per-query values.
    """
    values: dict[str, dict[str, float]] = {}
    for qid, judged in qrels.items():
        ranking = trec_ranking(run.get(qid, {}))
        values[qid] = {
            "ndcg@10": ndcg_at_k(judged, ranking, 10),
            "recall@100": recall_at_k(judged, ranking, 100),
            "mrr@10": rr_at_k(judged, ranking, 10),
        }
    if per_query:
        return values
    if not values:
        return {m: 0.0 for m in METRICS}
    return {m: float(np.mean([v[m] for v in values.values()])) for m in METRICS}


def split_queries(query_ids: Sequence[str], dev_fraction: float = 0.5, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split query ids deterministically into (dev, test), by a hash of ``seed`` and the id.

    The same ids always give the same split, independent of their order. ``dev_fraction`` of the
    queries (rounded, at least one each side when there are two or more) go to dev.
    """
    if not isinstance(dev_fraction, (int, float)) or not 0.0 < float(dev_fraction) < 1.0:
        raise ValueError(f"dev_fraction must be a number strictly between 0 and 1; got {dev_fraction!r}")
    ids = list(dict.fromkeys(query_ids))
    if len(ids) < 2:
        raise ValueError(f"a dev/test split needs at least 2 queries; got {len(ids)}")
    ranked = sorted(ids, key=lambda q: hashlib.sha256(f"{seed}:{q}".encode()).hexdigest())
    n_dev = min(max(1, round(len(ids) * float(dev_fraction))), len(ids) - 1)
    dev = set(ranked[:n_dev])
    return [q for q in ids if q in dev], [q for q in ids if q not in dev]


# ---------------------------------------------------------------------------------------------- grid
def parse_modes(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``"dense+sparse"`` or ``["dense", "sparse"]`` -> ``("dense", "sparse")`` in canonical order; ``"all"`` = the
    three M3 modes. ``bm25`` (the store's BM25 mode over the document texts) may be part of a set:
    ``"dense+sparse+colbert+bm25"``."""
    parts = spec.replace(",", "+").split("+") if isinstance(spec, str) else list(spec)
    parts = [p.strip().lower() for p in parts if p.strip()]
    if parts == ["all"]:
        return MODES
    bad = [p for p in parts if p not in STORE_MODES]
    if bad or not parts:
        raise ValueError(
            f"unknown mode(s) {bad or spec!r}; allowed: {', '.join(STORE_MODES)}, joined with '+' (e.g. dense+sparse) "
            "or 'all'"
        )
    return tuple(m for m in STORE_MODES if m in parts)


def default_grid(available: Sequence[str]) -> list[tuple[str, ...]]:
    """Each single mode, dense+sparse, and all three, restricted to the modes ``available``."""
    have = [m for m in MODES if m in available]
    grid: list[tuple[str, ...]] = [(m,) for m in have]
    for combo in (("dense", "sparse"), MODES):
        if all(m in have for m in combo) and combo not in grid:
            grid.append(combo)
    return grid


@dataclass
class EvalRow:
    """One row of results: a set of modes and a fusion (``None`` for a single mode or BM25)."""

    modes: tuple[str, ...]
    fusion: str | None
    metrics: dict[str, float]
    seconds: float = 0.0
    #: the run itself (query id -> {document id -> score}), for per-query analysis; not in the JSON
    run: dict[str, dict[str, float]] | None = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"modes", "fusion", "ndcg@10", "recall@100", "mrr@10"}``."""
        return {"modes": list(self.modes), "fusion": self.fusion, **{m: self.metrics[m] for m in METRICS}}

    @property
    def label(self) -> str:
        return "+".join(self.modes)


@dataclass
class SweepResult:
    """Outcome of :func:`sweep_weights`.

    Attributes:
        modes: the fused modes.
        best_weights: mode -> weight with the best nDCG@10 on the tuning queries.
        tune_ndcg: that best nDCG@10 on the tuning queries.
        test_ndcg: nDCG@10 of ``best_weights`` on the held-out queries (``None`` without a split).
        default_test_ndcg: nDCG@10 of the default weights on the same held-out (or tuning) queries.
        n_tune, n_test: numbers of tuning and held-out queries.
        same_queries: ``True`` when tuned and scored on the same queries (the score is optimistic).
        table: every weight setting tried, as ``(weights, tune nDCG@10)``.
    """

    modes: tuple[str, ...]
    best_weights: dict[str, float]
    tune_ndcg: float
    test_ndcg: float | None
    default_weights: dict[str, float]
    default_test_ndcg: float
    n_tune: int
    n_test: int
    same_queries: bool
    table: list[tuple[dict[str, float], float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "modes": list(self.modes),
            "best_weights": self.best_weights,
            "tune_ndcg@10": self.tune_ndcg,
            "test_ndcg@10": self.test_ndcg,
            "default_weights": self.default_weights,
            "default_test_ndcg@10": self.default_test_ndcg,
            "n_tune_queries": self.n_tune,
            "n_test_queries": self.n_test,
            "tuned_on_scored_queries": self.same_queries,
        }


@dataclass
class EvalReport:
    """Everything :func:`evaluate` measured on one collection."""

    dataset: str
    model: str
    rows: list[EvalRow]
    n_docs: int
    n_queries: int
    skipped_queries: list[str]
    split: str = "test"
    sweep: SweepResult | None = None
    cached: bool = False
    encode_seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        """``{"dataset", "model", "results": [...]}`` (plus ``"sweep"`` when a sweep was run)."""
        out: dict[str, Any] = {
            "dataset": self.dataset,
            "model": self.model,
            "results": [r.as_dict() for r in self.rows],
        }
        if self.sweep is not None:
            out["sweep"] = self.sweep.as_dict()
        return out


def _store_cls() -> type["HybridStore"]:
    from .store import HybridStore

    return HybridStore


def _cache_entries(cache_root: Path, prefix: str) -> list[tuple[Path, tuple[str, ...]]]:
    if not cache_root.is_dir():
        return []
    out = []
    for p in sorted(cache_root.glob(prefix + "*")):
        info = p / "m3_eval_cache.json"
        if p.is_dir() and info.is_file():
            try:
                modes = tuple(json.loads(info.read_text())["modes"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            out.append((p, modes))
    return out


def encode_corpus(
    dataset: BeirDataset,
    encoder: "M3Encoder",
    modes: Sequence[str],
    *,
    cache_dir: str | os.PathLike[str] | None = DEFAULT_CACHE_DIR,
    batch_size: int = 32,
    max_length: int | None = None,
    show_progress: bool = True,
    colbert_storage: str = "fp16",
    colbert_pool_factor: int = 1,
) -> tuple["HybridStore", bool]:
    """A :class:`HybridStore` holding the corpus encoded in ``modes``, from the disk cache when possible.

    ``colbert_storage`` and ``colbert_pool_factor`` are the store's ColBERT options; a setting other than the
    defaults (fp16, no pooling) is part of the cache key, so each setting is encoded and cached apart.

    ``bm25`` in ``modes`` adds the store's BM25 mode over the corpus texts (bm25s's defaults: English stemmer and
    stop-words, k1 1.5, b 0.75). A cached entry holding the vector modes but not bm25 is reused (its vectors
    re-added to a store that also holds bm25) when its ColBERT storage is lossless (fp16/fp32).

    The cache folder is ``<cache_dir>/<dataset>-<key>-<modes>``, where ``key`` hashes the encoder
    fingerprint, the corpus fingerprint and ``max_length``; any cached entry holding a superset of
    ``modes`` is reused. ``cache_dir=None`` disables the cache.

    Returns:
        ``(store, from_cache)``.
    """
    HybridStore = _store_cls()
    modes = tuple(m for m in STORE_MODES if m in modes)
    missing = [m for m in modes if m != "bm25" and m not in encoder.available_modes]
    if missing:
        raise ValueError(
            f"the model {encoder.name!r} cannot produce mode(s) {missing}; it has {list(encoder.available_modes)}. "
            "Drop them from the grid (--modes) or use a checkpoint with those heads."
        )
    settings = f"{encoder.fingerprint}:{dataset.fingerprint}:{max_length}:{encoder.max_seq_length}:{encoder.fp16}"
    path_name = getattr(encoder, "numeric_path", "fp32")
    if path_name not in ("fp32", "fp16"):  # int8 / ONNX encodings are cached apart (fp32 keys unchanged)
        settings += f":{path_name}"
        if path_name == "int8":  # the int8 recipe changed (per-channel weights, FFN outputs fp32): a new key
            settings += ":int8-pc-ffn32"
    if "colbert" in modes and (colbert_storage, colbert_pool_factor) != ("fp16", 1):  # default keys unchanged
        settings += f":colbert={colbert_storage}/pool{colbert_pool_factor}"
    key = hashlib.sha256(settings.encode()).hexdigest()[:16]
    prefix = f"{dataset.name}-{key}-"
    root = Path(cache_dir).expanduser() if cache_dir is not None else None
    vector_modes = tuple(m for m in modes if m != "bm25")
    ids = list(dataset.corpus)
    if root is not None:
        for path, held in _cache_entries(root, prefix):
            if set(modes) <= set(held):
                try:
                    return HybridStore.load(path, encoder=encoder, show_progress=show_progress), True
                except (OSError, ValueError) as exc:  # a damaged entry is rebuilt, and said so
                    warnings.warn(f"ignoring the unreadable eval cache {path}: {exc}", stacklevel=2)
        if "bm25" in modes and colbert_storage in ("fp16", "fp32"):
            for path, held in _cache_entries(root, prefix):
                if set(vector_modes) <= set(held) and "bm25" not in held:
                    try:
                        cached = HybridStore.load(path, encoder=encoder, show_progress=show_progress)
                    except (OSError, ValueError):
                        continue
                    c_ids, c_enc, _, _ = cached.export()
                    if sorted(c_ids) != sorted(ids):
                        continue
                    store = HybridStore(encoder, show_progress=False, colbert_storage=colbert_storage,
                                        colbert_pool_factor=colbert_pool_factor,
                                        modes=tuple(m for m in cached.modes) + ("bm25",))
                    store._add_exported(c_enc, ids=c_ids, texts=[dataset.corpus[i] for i in c_ids])
                    return store, True
    from ._progress import tqdm

    kwargs: dict[str, Any] = {} if max_length is None else {"max_length": max_length}
    store = HybridStore(encoder, show_progress=False, colbert_storage=colbert_storage, colbert_pool_factor=colbert_pool_factor,
                        modes=modes)
    with tqdm(total=len(ids), desc=f"encode {dataset.name}", unit="doc", disable=not show_progress) as bar:
        # slices bound the float32 ColBERT vectors held before the store packs them
        for start in range(0, len(ids), ENCODE_SLICE):
            part = ids[start : start + ENCODE_SLICE]
            encoded = encoder.encode_documents(
                [dataset.corpus[i] for i in part],
                dense="dense" in modes,
                sparse="sparse" in modes,
                colbert="colbert" in modes,
                batch_size=batch_size,
                show_progress=False,
                **kwargs,
            ) if vector_modes else M3Output(text=[dataset.corpus[i] for i in part])
            store.add_encoded(encoded, ids=part, texts=[dataset.corpus[i] for i in part] if "bm25" in modes else None)
            bar.update(len(part))
    if root is not None:
        path = root / (prefix + "+".join(modes))
        root.mkdir(parents=True, exist_ok=True)
        store.save(path)
        (path / "m3_eval_cache.json").write_text(
            json.dumps(
                {
                    "modes": list(modes),
                    "model": encoder.name,
                    "model_fingerprint": encoder.fingerprint,
                    "dataset": dataset.name,
                    "corpus_fingerprint": dataset.fingerprint,
                    "max_length": max_length,
                },
                indent=1,
            )
        )
    return store, False


def _hits_to_run(hits: Sequence[Any], qid: str | None, depth: int) -> dict[str, float]:
    run: dict[str, float] = {}
    for h in hits:
        if h.id == qid:
            continue
        run[h.id] = float(h.score)
        if len(run) >= depth:
            break
    return run


def _search_runs(
    store: "HybridStore",
    queries: M3Output,
    qids: Sequence[str],
    modes: tuple[str, ...],
    fusion: str,
    *,
    candidates: int,
    depth: int = RUN_DEPTH,
    ignore_identical_ids: bool = True,
    weights: Mapping[str, float] | None = None,
) -> dict[str, dict[str, float]]:
    # one more than the depth, so the run is still `depth` long after the query's own id is left out
    kwargs: dict[str, Any] = {"k": depth + 1, "modes": modes}
    if len(modes) > 1:
        kwargs.update(fusion=fusion, candidates=max(candidates, depth + 1))
        if weights is not None and fusion == "weighted" and all(m in weights for m in modes):
            kwargs["weights"] = {m: weights[m] for m in modes}
        # else: the store's defaults, the model's recommended weights for this mode set (fusion_weights_by_modes)
    results = store.search_encoded_batch(queries, **kwargs)
    return {
        qid: _hits_to_run(hits, qid if ignore_identical_ids else None, depth) for qid, hits in zip(qids, results)
    }


def bm25_run(
    dataset: BeirDataset,
    *,
    depth: int = RUN_DEPTH,
    k1: float = 1.5,
    b: float = 0.75,
    show_progress: bool = False,
    ignore_identical_ids: bool = True,
) -> dict[str, dict[str, float]]:
    """The BM25 reference run: ``bm25s`` (Lucene variant, ``k1=1.5, b=0.75``), English stop-words and
    the PyStemmer English (Snowball) stemmer. Documents with score 0 (no query term) are not returned.

    Raises:
        ImportError: ``bm25s`` or ``PyStemmer`` is missing; the message gives the pip command.
    """
    try:
        import bm25s
        import Stemmer
    except ImportError as exc:
        raise ImportError(
            f"the BM25 reference row needs bm25s and PyStemmer ({exc.name} is missing). Install them with: "
            f"{_EVAL_EXTRA}   (or skip the row: --no-bm25 / bm25=False)"
        ) from exc
    stemmer = Stemmer.Stemmer("english")
    ids = list(dataset.corpus)
    corpus_tokens = bm25s.tokenize(
        [dataset.corpus[i] for i in ids], stopwords="en", stemmer=stemmer, show_progress=show_progress
    )
    retriever = bm25s.BM25(k1=k1, b=b)
    retriever.index(corpus_tokens, show_progress=show_progress)
    qids = list(dataset.queries)
    run: dict[str, dict[str, float]] = {}
    k = min(depth + 1, len(ids))
    q_tokens = bm25s.tokenize(
        [dataset.queries[q] for q in qids], stopwords="en", stemmer=stemmer, show_progress=show_progress,
        return_ids=False,
    )
    for qid, tokens in zip(qids, q_tokens):
        if not tokens:
            run[qid] = {}
            continue
        docs, scores = retriever.retrieve([tokens], k=k, show_progress=False, n_threads=1)
        row: dict[str, float] = {}
        for idx, score in zip(docs[0].tolist(), scores[0].tolist()):
            doc_id = ids[int(idx)]
            if score > 0 and not (ignore_identical_ids and doc_id == qid) and len(row) < depth:
                row[doc_id] = float(score)
        run[qid] = row
    return run


def _weight_grid(n: int, step: float) -> list[tuple[float, ...]]:
    """Weight vectors on the simplex with the given step (all non-negative, summing to 1)."""
    if not isinstance(step, (int, float)) or not 0.0 < float(step) <= 0.5:
        raise ValueError(f"sweep step must be a number in (0, 0.5]; got {step!r}")
    units = round(1.0 / float(step))
    if abs(units * float(step) - 1.0) > 1e-9:
        raise ValueError(f"sweep step must divide 1 evenly (0.05, 0.1, 0.2, 0.25, ...); got {step!r}")
    out = []
    for combo in itertools.product(range(units + 1), repeat=n):
        if sum(combo) == units:
            out.append(tuple(round(c / units, 6) for c in combo))
    return out


def sweep_weights(
    store: "HybridStore",
    queries: M3Output,
    qids: Sequence[str],
    qrels: Mapping[str, Mapping[str, int]],
    modes: Sequence[str],
    *,
    step: float = 0.1,
    dev_fraction: float | None = 0.5,
    seed: int = 0,
    candidates: int = 100,
    ignore_identical_ids: bool = True,
) -> SweepResult:
    """Grid-search the ``weighted`` fusion weights over the simplex, maximising nDCG@10.

    Each query's candidates (the union of the first-stage top-``candidates``, scored exactly in every mode)
    are fetched once; each weight setting then only re-fuses them (``sum w_i s_i / sum w_i``), exactly as
    :meth:`HybridStore.search` with ``fusion="weighted"`` would.

    Args:
        queries: the encoded queries, one row per id in ``qids``.
        dev_fraction: tune on this fraction of the queries (:func:`split_queries`) and score the best weights
            on the rest. ``None`` tunes and scores on all queries and warns that the score is optimistic.

    Returns:
        A :class:`SweepResult`.
    """
    modes = tuple(m for m in STORE_MODES if m in modes)
    if len(modes) < 2:
        raise ValueError(f"a weight sweep needs at least two modes; got {list(modes)}")
    qids = list(qids)
    if dev_fraction is None:
        tune_ids, test_ids = qids, qids
        warnings.warn(
            "fusion weights are tuned and scored on the same queries, so the reported nDCG@10 is optimistic; "
            "use a dev/test split (dev_fraction=0.5, CLI --dev-fraction) for an honest estimate",
            UserWarning,
            stacklevel=2,
        )
    else:
        tune_ids, test_ids = split_queries(qids, dev_fraction, seed)
    # The store's candidate set (as in evaluate's grid): the union of the top-`cand` of each first-stage mode
    # (dense, sparse), each candidate then scored exactly in every mode.
    cand = max(candidates, RUN_DEPTH + 1)
    first_stage = [m for m in modes if m in ("dense", "sparse", "bm25")]
    pools = {m: store.search_encoded_batch(queries, k=cand, modes=m) for m in first_stage}
    per_query: dict[str, tuple[list[str], np.ndarray]] = {}
    for i, qid in enumerate(qids):
        union = [
            d
            for d in dict.fromkeys(h.id for m in first_stage for h in pools[m][i])
            if not (ignore_identical_ids and d == qid)
        ]
        mat = np.zeros((len(union), len(modes)), dtype=np.float64)
        if union:
            for j, m in enumerate(modes):
                hits = store.search_encoded(queries[i], k=len(union), modes=m, ids=union)
                exact = {h.id: h.score for h in hits}
                mat[:, j] = [exact.get(d, 0.0) for d in union]  # sparse alone omits non-matching documents (score 0)
        per_query[qid] = (union, mat)

    def score(weights: Sequence[float], ids: Sequence[str]) -> float:
        w = dict(zip(modes, weights))
        total = 0.0
        for qid in ids:
            cand, mat = per_query[qid]
            fused = fuse_weighted({m: mat[:, j] for j, m in enumerate(modes)}, w)
            order = np.lexsort((np.arange(len(cand)), -fused))[:RUN_DEPTH]
            run = {cand[i]: float(fused[i]) for i in order}
            total += ndcg_at_k(qrels[qid], trec_ranking(run), 10)
        return total / len(ids) if ids else 0.0

    table = [(dict(zip(modes, w)), score(w, tune_ids)) for w in _weight_grid(len(modes), step)]
    best_weights, best = max(table, key=lambda t: t[1])  # first maximum wins: deterministic
    from .search.options import default_weights

    dw = default_weights(None)
    defaults = {m: float(dw[m]) for m in modes}
    return SweepResult(
        modes=modes,
        best_weights=best_weights,
        tune_ndcg=best,
        test_ndcg=None if dev_fraction is None else score([best_weights[m] for m in modes], test_ids),
        default_weights=defaults,
        default_test_ndcg=score([defaults[m] for m in modes], test_ids),
        n_tune=len(tune_ids),
        n_test=len(test_ids),
        same_queries=dev_fraction is None,
        table=table,
    )


def evaluate(
    dataset: BeirDataset | str | os.PathLike[str],
    encoder: "M3Encoder",
    *,
    grid: Sequence[Sequence[str] | str] | None = None,
    fusions: Sequence[str] = FUSIONS,
    split: str = "test",
    bm25: bool = True,
    sweep: bool = False,
    sweep_step: float = 0.1,
    dev_fraction: float | None = 0.5,
    candidates: int = 100,
    cache_dir: str | os.PathLike[str] | None = DEFAULT_CACHE_DIR,
    batch_size: int = 32,
    show_progress: bool = True,
    model_name: str | None = None,
    ignore_identical_ids: bool = True,
    colbert_storage: str = "fp16",
    colbert_pool_factor: int = 1,
) -> EvalReport:
    """Evaluate a grid of modes and fusions (plus BM25) on one BEIR collection in one pass.

    Args:
        dataset: a :class:`BeirDataset` or a collection folder (loaded with :func:`load_beir`).
        encoder: the model.
        grid: mode sets such as ``["dense", "dense+sparse"]``; default :func:`default_grid` of the encoder's modes,
            plus the model's recommended modes (``default_modes`` in its ``m3_model.json``, e.g. ``minilm-m3``'s
            dense+colbert+bm25), evaluated also with its recommended ``default_fusion``.
            A single mode gives one row (fusion ``None``); a set of two or more gives one row per fusion.
        fusions: the fusion methods for multi-mode sets (subset of :data:`FUSIONS`). ``weighted`` rows use
            the model's recommended weights for that exact mode set (``fusion_weights_by_modes`` in its
            ``m3_model.json``), else its ``fusion_weights`` (``minilm-m3`` declares them), else FlagEmbedding's
            defaults (dense 0.4, sparse 0.2, colbert 0.4; bm25 :data:`m3_rag.fusion.DEFAULT_BM25_WEIGHT`).
            A set may hold ``bm25``, the store's BM25 mode (``dense+sparse+colbert+bm25``).
        bm25: add the BM25 reference row (needs ``pip install "m3-rag[eval]"``).
        sweep: also run :func:`sweep_weights` over the largest mode set of the grid.
        dev_fraction: the sweep's dev share (``None``: tune on all queries, with a warning).
        candidates: first-stage depth of multi-mode search (>= 100, the run depth).
        cache_dir: where encoded corpora are cached (``None`` disables the cache).
        model_name: the name reported (default ``encoder.name``).
        ignore_identical_ids: leave the document whose id equals the query id out of that query's ranking
            (BEIR's convention). On collections whose query and document ids are both plain numbers
            (Cranfield, CISI, MED...) that document is an unrelated one that happens to share the number;
            ``False`` keeps it.
        colbert_storage: the store's ColBERT codec (``fp32``, ``fp16``, ``int8``, ``binary``, ``pq``).
        colbert_pool_factor: index-time ColBERT token pooling (``1``: none); see :mod:`m3_rag.index.pooling`.

    Returns:
        An :class:`EvalReport`; rows are in grid order, BM25 last.
    """
    ds = dataset if isinstance(dataset, BeirDataset) else load_beir(dataset, split)
    sets = default_grid(encoder.available_modes) if grid is None else [parse_modes(g) for g in grid]
    model_default: tuple[tuple[str, ...], str] | None = None
    declared = getattr(encoder, "default_modes", None)
    if grid is None and declared:  # the model's recommended modes and fusion: one more row
        from .search.options import default_fusion

        dm = tuple(m for m in STORE_MODES if m in declared)
        if all(m == "bm25" or m in encoder.available_modes for m in dm) and len(dm) > 1:
            model_default = (dm, default_fusion(encoder, dm))
            if dm not in sets:
                sets.append(dm)
    if not sets:
        raise ValueError("the grid is empty; give at least one mode set such as 'dense'")
    fusions = [fusions] if isinstance(fusions, str) else list(fusions)
    bad = [f for f in fusions if f not in FUSIONS]
    if bad or not fusions:
        raise ValueError(f"unknown fusion(s) {bad or fusions!r}; allowed: {', '.join(FUSIONS)}")
    if not isinstance(candidates, int) or candidates < RUN_DEPTH:
        raise ValueError(f"candidates must be an int >= {RUN_DEPTH} (the run depth); got {candidates!r}")
    needed = tuple(m for m in STORE_MODES if any(m in s for s in sets))
    t0 = time.perf_counter()
    store, cached = encode_corpus(
        ds, encoder, needed, cache_dir=cache_dir, batch_size=batch_size, show_progress=show_progress,
        colbert_storage=colbert_storage, colbert_pool_factor=colbert_pool_factor,
    )
    qids = list(ds.queries)
    q_enc = encoder.encode_queries(
        [ds.queries[q] for q in qids],
        dense="dense" in needed,
        sparse="sparse" in needed,
        colbert="colbert" in needed,
        batch_size=batch_size,
        show_progress=show_progress and len(qids) > 256,
    ) if any(m != "bm25" for m in needed) else M3Output(text=[ds.queries[q] for q in qids])
    q_enc.text = [ds.queries[q] for q in qids]  # the bm25 mode's query side
    encode_seconds = time.perf_counter() - t0
    rows: list[EvalRow] = []
    for modes in sets:
        row_fusions = (None,) if len(modes) == 1 else list(fusions)
        if model_default is not None and modes == model_default[0] and model_default[1] not in row_fusions:
            row_fusions.append(model_default[1])  # the model's own fusion for its recommended modes
        for fusion in row_fusions:
            t = time.perf_counter()
            run = _search_runs(
                store, q_enc, qids, modes, fusion or "weighted", candidates=candidates,
                ignore_identical_ids=ignore_identical_ids,
            )
            rows.append(EvalRow(modes, fusion, evaluate_run(ds.qrels, run), time.perf_counter() - t, run))  # type: ignore[arg-type]
    if bm25:
        t = time.perf_counter()
        run = bm25_run(ds, ignore_identical_ids=ignore_identical_ids)
        rows.append(EvalRow((BM25,), None, evaluate_run(ds.qrels, run), time.perf_counter() - t, run))  # type: ignore[arg-type]
    sweep_result = None
    if sweep:
        largest = max(sets, key=len)
        sweep_result = sweep_weights(
            store, q_enc, qids, ds.qrels, largest, step=sweep_step, dev_fraction=dev_fraction, candidates=candidates,
            ignore_identical_ids=ignore_identical_ids,
        )
    return EvalReport(
        dataset=ds.name,
        model=model_name or encoder.name,
        rows=rows,
        n_docs=len(ds.corpus),
        n_queries=len(qids),
        skipped_queries=list(ds.skipped_queries),
        split=ds.split,
        sweep=sweep_result,
        cached=cached,
        encode_seconds=encode_seconds,
    )


def format_table(report: EvalReport) -> str:
    """A fixed-width text table of the report, with the query counts and the sweep, for terminals."""
    w = max([22] + [len(r.label) for r in report.rows])  # "dense+sparse+colbert+bm25" is 25 wide
    head = f"{'modes':<{w}} {'fusion':<9} {'nDCG@10':>8} {'R@100':>8} {'MRR@10':>8}"
    lines = [
        f"{report.dataset} ({report.split}): {report.n_docs} docs, {report.n_queries} judged queries"
        f" ({len(report.skipped_queries)} without qrels skipped); model {report.model}"
        f"{' (corpus from cache)' if report.cached else ''}",
        head,
        "-" * len(head),
    ]
    for r in report.rows:
        lines.append(
            f"{r.label:<{w}} {r.fusion or '-':<9} {r.metrics['ndcg@10']:>8.4f} {r.metrics['recall@100']:>8.4f}"
            f" {r.metrics['mrr@10']:>8.4f}"
        )
    s = report.sweep
    if s is not None:
        weights = ", ".join(f"{m}={w:g}" for m, w in s.best_weights.items())
        lines.append("")
        lines.append(f"weight sweep ({'+'.join(s.modes)}, weighted): best {weights}")
        if s.same_queries:
            lines.append(
                f"  nDCG@10 {s.tune_ndcg:.4f} on the {s.n_tune} queries it was tuned on (optimistic!); "
                f"default weights {s.default_test_ndcg:.4f}"
            )
        else:
            lines.append(
                f"  tuned on {s.n_tune} dev queries (nDCG@10 {s.tune_ndcg:.4f}); on the {s.n_test} test queries: "
                f"best {s.test_ndcg:.4f} vs default weights {s.default_test_ndcg:.4f}"
            )
    return "\n".join(lines)
