"""The bm25 mode on Qdrant (qdrant-client local mode) and Qdrant Edge vs HybridStore, measured.

Usage::

    python bench/bm25_engines.py [--datasets-dir ../shared/datasets] [--collections med cisi ...] [--batch 64]
                                 [--scale-docs 20000 100000] [--json bench/results/bm25_engines.json]

Quality, per shared collection (nDCG@10 of bm25 alone; score differences over each query's top 100):

* ``hybrid``: ``HybridStore(modes="bm25")``, one ``add`` (equals the bm25s reference row);
* ``qdrant_one_add`` / ``edge_one_add``: the engines, one ``add`` of the whole collection: the average length is
  the corpus's, so only float32 separates them from ``hybrid``;
* ``edge_batches``: Edge written in batches of ``--batch`` documents, each batch normalised with the running
  average length at its write (the documented difference); ``edge_batches_refreshed``: the same after
  ``refresh_bm25()`` (every vector rewritten with the current average length);
* ``edge_churn``: after the one-add store, 20% of the documents rewritten (upserted with another document's
  text) one batch at a time, in Edge and in a second HybridStore (``hybrid_churn``, the reference of this row):
  IDF stays live in both, the engine's untouched documents keep the average length of their first write.

Speed at each of ``--scale-docs`` (the bench/bm25.py corpus; top-10, one query at a time, same run): HybridStore
vs Edge, add throughput and query latency; local mode is measured at 2,000 documents only (it is a Python
re-implementation of Qdrant, not the engine). Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from minilm_m3_eval import COLLECTIONS, DATASETS, ndcg10, read_collection  # noqa: E402


def score_matrix(store, qtexts, doc_ids, depth=100):
    """Queries x documents: each query's top ``depth`` bm25 scores (0 elsewhere)."""
    col = {d: j for j, d in enumerate(doc_ids)}
    out = np.zeros((len(qtexts), len(doc_ids)))
    for i, q in enumerate(qtexts):
        for h in store.search(q, modes="bm25", k=depth):
            out[i, col[h.id]] = h.score
    return out


def compare(ref: np.ndarray, got: np.ndarray) -> dict:
    both = (ref > 0) & (got > 0)
    rel = np.abs(got[both] - ref[both]) / ref[both]
    top_ref = np.argsort(-ref, axis=1, kind="stable")[:, :10]
    top_got = np.argsort(-got, axis=1, kind="stable")[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_ref, top_got)])
    return {"max_rel_score_diff": float(rel.max()) if rel.size else 0.0,
            "median_rel_score_diff": float(np.median(rel)) if rel.size else 0.0,
            "top10_overlap": round(float(overlap), 4),
            "top10_identical_queries": round(float(np.mean([list(a) == list(b) for a, b in zip(top_ref, top_got)])), 4)}


def quality(args) -> dict:
    from m3_rag import HybridStore
    from m3_rag.qdrant import QdrantHybridStore
    from m3_rag.qdrant_edge import QdrantEdgeStore

    out = {}
    for name in args.collections:
        t0 = time.perf_counter()
        doc_ids, texts, qids, qtexts, qrels = read_collection(name, args.datasets_dir)
        rows = {}
        ref = HybridStore(modes="bm25", show_progress=False)
        ref.add(texts, ids=doc_ids)
        R = score_matrix(ref, qtexts, doc_ids)
        rows["hybrid"] = {"ndcg10": round(ndcg10(R, doc_ids, qids, qrels), 4)}
        with tempfile.TemporaryDirectory() as tmp:
            q = QdrantHybridStore(":memory:", "c", modes=("bm25",), show_progress=False, batch_size=512)
            q.add(texts, ids=doc_ids)
            M = score_matrix(q, qtexts, doc_ids)
            rows["qdrant_one_add"] = {"ndcg10": round(ndcg10(M, doc_ids, qids, qrels), 4), **compare(R, M)}
            q.close()
            e = QdrantEdgeStore(Path(tmp) / "one", modes=("bm25",), show_progress=False, durable=False)
            e.add(texts, ids=doc_ids)
            M = score_matrix(e, qtexts, doc_ids)
            rows["edge_one_add"] = {"ndcg10": round(ndcg10(M, doc_ids, qids, qrels), 4), **compare(R, M)}
            rng = np.random.default_rng(0)
            churn = rng.choice(len(doc_ids), size=len(doc_ids) // 5, replace=False)
            source = rng.permutation(len(doc_ids))
            ref2 = HybridStore(modes="bm25", show_progress=False)
            ref2.add(texts, ids=doc_ids)
            for lo in range(0, len(churn), args.batch):
                sel = churn[lo:lo + args.batch]
                for s in (e, ref2):
                    s.add([texts[source[j]] for j in sel], ids=[doc_ids[j] for j in sel])
            R2 = score_matrix(ref2, qtexts, doc_ids)
            M = score_matrix(e, qtexts, doc_ids)
            rows["hybrid_churn"] = {"ndcg10": round(ndcg10(R2, doc_ids, qids, qrels), 4)}
            rows["edge_churn"] = {"ndcg10": round(ndcg10(M, doc_ids, qids, qrels), 4), **compare(R2, M)}
            e.close()
            e = QdrantEdgeStore(Path(tmp) / "batches", modes=("bm25",), show_progress=False, durable=False)
            for lo in range(0, len(doc_ids), args.batch):
                e.add(texts[lo:lo + args.batch], ids=doc_ids[lo:lo + args.batch])
            M = score_matrix(e, qtexts, doc_ids)
            rows["edge_batches"] = {"ndcg10": round(ndcg10(M, doc_ids, qids, qrels), 4), **compare(R, M)}
            t = time.perf_counter()
            e.refresh_bm25()
            refresh_s = time.perf_counter() - t
            M = score_matrix(e, qtexts, doc_ids)
            rows["edge_batches_refreshed"] = {"ndcg10": round(ndcg10(M, doc_ids, qids, qrels), 4), **compare(R, M),
                                              "refresh_seconds": round(refresh_s, 3)}
            e.close()
        out[name] = {"docs": len(doc_ids), "queries": len(qids), "rows": rows}
        print(name, f"{time.perf_counter() - t0:.0f}s", json.dumps(rows), file=sys.stderr, flush=True)
    keys = list(next(iter(out.values()))["rows"])
    out["mean"] = {k: {f: float(np.mean([out[c]["rows"][k][f] for c in args.collections]))
                       for f in out[args.collections[0]]["rows"][k]} for k in keys}
    for k in keys:
        if "max_rel_score_diff" in out["mean"][k]:
            out["mean"][k]["max_rel_score_diff"] = max(out[c]["rows"][k]["max_rel_score_diff"] for c in args.collections)
    return out


def speed(args) -> dict:
    from bm25 import corpus  # bench/bm25.py's corpus: the six collections, repeated with shuffled words

    from m3_rag import HybridStore
    from m3_rag.qdrant import QdrantHybridStore
    from m3_rag.qdrant_edge import QdrantEdgeStore

    res = {}
    sizes = [(2000, ("hybrid", "edge", "qdrant_local"))] + [(n, ("hybrid", "edge")) for n in args.scale_docs]
    for n, kinds in sizes:
        docs, queries = corpus(args.datasets_dir, n)
        queries = queries[: args.queries]
        ids = [str(i) for i in range(len(docs))]
        row = {}
        with tempfile.TemporaryDirectory() as tmp:
            for kind in kinds:
                if kind == "hybrid":
                    s = HybridStore(modes="bm25", show_progress=False)
                elif kind == "edge":
                    s = QdrantEdgeStore(Path(tmp) / "e", modes=("bm25",), show_progress=False, durable=False)
                else:
                    s = QdrantHybridStore(":memory:", "c", modes=("bm25",), show_progress=False, batch_size=512)
                t = time.perf_counter()
                s.add(docs, ids=ids)
                add_s = time.perf_counter() - t
                s.search(queries[0], modes="bm25", k=10)  # warm-up (HybridStore builds its posting lists here)
                lat = []
                for q in queries:
                    t = time.perf_counter()
                    s.search(q, modes="bm25", k=10)
                    lat.append(time.perf_counter() - t)
                row[kind] = {"add_docs_per_s": round(len(docs) / add_s, 1),
                             "query_ms_p50": round(1000 * float(np.median(lat)), 3),
                             "query_ms_p95": round(1000 * float(np.percentile(lat, 95)), 3)}
                if hasattr(s, "close"):
                    s.close()
        for kind in kinds:
            if kind != "hybrid":
                row[kind]["query_p50_vs_hybrid"] = round(row[kind]["query_ms_p50"] / row["hybrid"]["query_ms_p50"], 2)
        res[str(len(docs))] = row
        print(len(docs), json.dumps(row), file=sys.stderr, flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets-dir", type=Path, default=DATASETS)
    ap.add_argument("--collections", nargs="+", default=list(COLLECTIONS))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--scale-docs", type=int, nargs="+", default=[20000, 100000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "bm25_engines.json")
    args = ap.parse_args()
    out = {"quality": quality(args)}
    if not args.skip_speed:
        out["speed"] = speed(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
