"""BM25 index vs bm25s in the same run: indexing time and query throughput at ~100k documents.

Usage::

    python bench/bm25.py [--docs 100000] [--queries 500] [--datasets-dir ../shared/datasets] [--json bench/results/bm25.json]

Corpus: the six shared collections concatenated, then repeated with each copy's words shuffled and ~10%
dropped (seeded) until ``--docs`` documents. Queries: the collections' own queries. Both sides tokenise
with the same tokeniser (bm25s.tokenize, English stop-words, PyStemmer English). Timed:

* index: tokenise + build (bm25s: ``tokenize`` + ``BM25.index``, which precomputes ``idf * tfc`` per posting;
  ours: ``prepare`` + ``append`` + the term-major rebuild the first query pays);
* query: tokenise + top-10 of every query, one query at a time (bm25s ``retrieve(n_threads=1)``;
  ours ``BM25Index.topk``), after a warm-up query; and the same through the store
  (``HybridStore(modes="bm25").search(q, modes="bm25", k=10)``: the search pipeline, ``Hit`` objects with texts);
* update (ours only; bm25s has no update and must re-index): discard 1% of the docs + add 1% and answer
  one query (statistics recomputed, term-major lists rebuilt).

Prints JSON; ratios are only meaningful within one run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from minilm_m3_eval import COLLECTIONS, DATASETS, read_collection  # noqa: E402


def corpus(root: Path, n_docs: int, seed: int = 0) -> tuple[list[str], list[str]]:
    base, queries = [], []
    for name in COLLECTIONS:
        _, docs, _, qtexts, _ = read_collection(name, root)
        base += docs
        queries += qtexts
    rng = np.random.default_rng(seed)
    out = list(base)
    while len(out) < n_docs:
        for d in base:
            if len(out) >= n_docs:
                break
            w = d.split()
            keep = [w[i] for i in rng.permutation(len(w)) if rng.random() > 0.1]
            out.append(" ".join(keep))
    return out[:n_docs], queries


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--datasets-dir", type=Path, default=DATASETS)
    p.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "bm25.json")
    args = p.parse_args()

    import bm25s
    import Stemmer

    from m3_rag.index.bm25 import BM25Index

    docs, queries = corpus(args.datasets_dir, args.docs)
    queries = queries[: args.queries]
    st = Stemmer.Stemmer("english")

    t0 = time.perf_counter()
    ref = bm25s.BM25()
    ref.index(bm25s.tokenize(docs, stopwords="en", stemmer=st, show_progress=False), show_progress=False)
    t_ref_index = time.perf_counter() - t0

    t0 = time.perf_counter()
    ix = BM25Index()
    ix.append(ix.prepare(docs))
    ix.topk(["warm"], 1, None)  # pays the term-major build
    t_our_index = time.perf_counter() - t0

    def ref_query(q):
        toks = bm25s.tokenize([q], stopwords="en", stemmer=st, return_ids=False, show_progress=False)
        if not toks[0]:
            return None
        return ref.retrieve(toks, k=10, show_progress=False, n_threads=1)

    ref_query(queries[0])
    t0 = time.perf_counter()
    ref_res = [ref_query(q) for q in queries]
    t_ref_q = time.perf_counter() - t0

    ix.topk([queries[0]], 10, None)
    t0 = time.perf_counter()
    our_res = [ix.topk([q], 10, None) for q in queries]
    t_our_q = time.perf_counter() - t0

    # the same through the store and the search pipeline (HybridStore(modes="bm25").search: hits with texts)
    from m3_rag import HybridStore

    store = HybridStore(modes="bm25")
    store.add(docs, ids=[str(i) for i in range(len(docs))])
    store.search(queries[0], modes="bm25", k=10)
    t0 = time.perf_counter()
    for q in queries:
        store.search(q, modes="bm25", k=10)
    t_store_q = time.perf_counter() - t0
    del store

    agree, diff = 0, 0.0
    for r, (s, i) in zip(ref_res, our_res):
        if r is None:
            agree += int((i < 0).all())
            continue
        rd, rs = r
        agree += int(set(rd[0].tolist()) == set(i[0][i[0] >= 0].tolist()))
        diff = max(diff, float(np.abs(np.sort(rs[0])[::-1] - s[0][: rs.shape[1]]).max()))

    rng = np.random.default_rng(1)
    n_upd = max(1, args.docs // 100)
    t0 = time.perf_counter()
    ix.discard(rng.choice(len(ix), n_upd, replace=False))
    ix.append(ix.prepare(docs[:n_upd]))
    ix.topk([queries[0]], 10, None)
    t_upd = time.perf_counter() - t0

    out = {
        "docs": len(docs), "queries": len(queries), "postings": int(ix._terms.shape[0]),
        "index_s": {"bm25s": round(t_ref_index, 3), "m3_rag": round(t_our_index, 3)},
        "queries_per_s": {"bm25s": round(len(queries) / t_ref_q, 1), "m3_rag": round(len(queries) / t_our_q, 1)},
        "query_speedup_vs_bm25s": round(t_ref_q / t_our_q, 3),
        "store_queries_per_s": round(len(queries) / t_store_q, 1),
        "store_query_speedup_vs_bm25s": round(t_ref_q / t_store_q, 3),
        "index_speedup_vs_bm25s": round(t_ref_index / t_our_index, 3),
        "update_1pct_delete_plus_1pct_add_then_query_s": round(t_upd, 3),
        "top10_same_docs_fraction": round(agree / len(queries), 4),
        "top10_max_abs_score_diff": diff,
        "nbytes_m3_rag": ix.nbytes(),
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
