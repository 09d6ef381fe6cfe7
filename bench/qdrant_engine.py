"""Qdrant Edge (the real engine, in-process) vs HybridStore vs qdrant-client local mode on BGE-M3-shaped data.

Each backend runs in its own subprocess (so RSS is its own) on the same synthetic data and queries:
dense 1024-d unit vectors, sparse ~``--nnz`` weights per document over a 250k vocabulary (Zipf-ish), ColBERT
``--tokens`` token vectors of ``--colbert-dim`` (BGE-M3 has 1024-d tokens; fewer/smaller here to keep memory
sane). Measured: add throughput (docs/s, batches of 1,000), search p50/p95 per mode and for the three-mode
hybrid, RSS growth, disk size, reopen time.

Edge is measured at the engine level with the requests QdrantHybridStore sends (single-mode ``Nearest``;
the hybrid = prefetch dense+sparse top-100 with a ColBERT MaxSim rerank of their union, returning payloads and
dense/sparse vectors), with ``SearchParams(exact=True)`` on dense; the client-side rescoring and fusion of the
m3-rag store on Edge (``QdrantEdgeStore``) are not included: ``bench/edge.py`` measures the stores end to end. Local mode is capped
(``--local-cap``, default 2,000 docs): its build is pure Python and takes minutes per thousand documents.
Edge runs ``optimize()`` (HNSW build) only up to 20,000 documents; above, it searches its unoptimised
segments (every search is exact either way: dense requests carry ``SearchParams(exact=True)``).

    python bench/qdrant_engine.py --docs 10000 --queries 30 --out bench/results/qdrant_edge.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VOCAB = 250_002
OPTIMIZE_MAX_DOCS = 20_000  # EdgeShard.optimize() (HNSW build) took 93 s at 10k on 2 cores; skipped above this


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def disk_mb(path: str) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total / 2**20


def make(n: int, seed: int, nnz: int, tokens: int, cdim: int, dim: int = 1024):
    from m3_rag import M3Output

    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((n, dim), dtype=np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    sparse = []
    for _ in range(n):
        k = max(1, int(rng.poisson(nnz)))
        toks = np.unique(np.minimum((rng.pareto(1.2, k) * 200).astype(np.int64), VOCAB - 1))
        sparse.append(dict(zip(toks.tolist(), rng.uniform(0.01, 0.3, len(toks)).astype(np.float32).tolist())))
    colbert = []
    for _ in range(n):
        t = rng.standard_normal((tokens, cdim), dtype=np.float32)
        colbert.append(t / np.linalg.norm(t, axis=1, keepdims=True))
    return M3Output(dense=dense, sparse=sparse, colbert=colbert)


def pct(ts: list[float]) -> dict:
    a = np.asarray(ts) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p95_ms": round(float(np.percentile(a, 95)), 3)}


# ------------------------------------------------------------------------------------------------ backends
def run_hybrid(docs, queries, workdir: str) -> dict:
    from m3_rag.store import HybridStore

    r0 = rss_mb()
    s = HybridStore(show_progress=False)
    t = time.perf_counter()
    for b in range(0, len(docs), 1000):
        s.add_encoded(docs[b:b + 1000], ids=[f"d{i}" for i in range(b, min(b + 1000, len(docs)))])
    add_s = time.perf_counter() - t
    out = {"add_docs_per_s": round(len(docs) / add_s, 1), "rss_growth_mb": round(rss_mb() - r0, 1)}
    for name, modes in (("dense", "dense"), ("sparse", "sparse"), ("colbert", "colbert"),
                        ("hybrid", ("dense", "sparse", "colbert"))):
        ts = []
        for i in range(len(queries)):
            t = time.perf_counter()
            s.search_encoded(queries[i], modes=modes, k=10)
            ts.append(time.perf_counter() - t)
        out[f"search_{name}"] = pct(ts)
    path = os.path.join(workdir, "hybrid")
    t = time.perf_counter()
    s.save(path)
    out["save_s"] = round(time.perf_counter() - t, 3)
    out["disk_mb"] = round(disk_mb(path), 1)
    t = time.perf_counter()
    HybridStore.load(path)
    out["reopen_s"] = round(time.perf_counter() - t, 3)
    return out


def _edge_points(qe, docs, start: int, stop: int) -> list:
    pts = []
    for i in range(start, stop):
        sp = docs.sparse[i]
        pts.append(qe.Point(
            id=i,
            vector={"dense": docs.dense[i].tolist(),
                    "sparse": qe.SparseVector(list(sp.keys()), list(sp.values())),
                    "colbert": docs.colbert[i].tolist()},
            payload={"m3_id": f"d{i}", "m3_seq": i},
        ))
    return pts


def run_edge(docs, queries, workdir: str) -> dict:
    import qdrant_edge as qe

    path = os.path.join(workdir, "edge")
    cdim = docs.colbert[0].shape[1]
    cfg = qe.EdgeConfig(
        vectors={
            "dense": qe.EdgeVectorParams(size=docs.dense.shape[1], distance=qe.Distance.Dot),
            "colbert": qe.EdgeVectorParams(
                size=cdim, distance=qe.Distance.Dot, datatype=qe.VectorStorageDatatype.Float16,
                multivector_config=qe.MultiVectorConfig(qe.MultiVectorComparator.MaxSim),
                hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000),
            ),
        },
        sparse_vectors={"sparse": qe.EdgeSparseVectorParams()},
    )
    r0 = rss_mb()
    shard = qe.EdgeShard.create(path, cfg)
    shard.update(qe.UpdateOperation.create_field_index("m3_seq", qe.PayloadSchemaType.Integer))
    t = time.perf_counter()
    for b in range(0, len(docs), 1000):
        shard.update(qe.UpdateOperation.upsert_points(_edge_points(qe, docs, b, min(b + 1000, len(docs)))))
        shard.flush()  # durable per batch, as the store will do
    add_s = time.perf_counter() - t
    out = {"add_docs_per_s": round(len(docs) / add_s, 1)}
    out["optimized"] = len(docs) <= OPTIMIZE_MAX_DOCS
    if out["optimized"]:  # builds the dense HNSW graph (searches below still send exact=True)
        t = time.perf_counter()
        shard.optimize()
        out["optimize_s"] = round(time.perf_counter() - t, 3)
    out["rss_growth_mb"] = round(rss_mb() - r0, 1)
    exact = qe.SearchParams(exact=True)

    def qv(i):
        q = queries
        sp = q.sparse[i]
        return q.dense[i].tolist(), qe.SparseVector(list(sp.keys()), list(sp.values())), q.colbert[i].tolist()

    def dense(i):
        d, _, _ = qv(i)
        return qe.QueryRequest(limit=26, query=qe.Query.Nearest(d, using="dense"), params=exact,
                               with_payload=True, with_vector=["dense"])

    def sparse(i):
        _, s, _ = qv(i)
        return qe.QueryRequest(limit=26, query=qe.Query.Nearest(s, using="sparse"), with_payload=True,
                               with_vector=["sparse"])

    def colbert(i):
        _, _, c = qv(i)
        return qe.QueryRequest(limit=26, query=qe.Query.Nearest(c, using="colbert"), with_payload=True)

    def hybrid(i):
        d, s, c = qv(i)
        pf = [qe.Prefetch(limit=100, query=qe.Query.Nearest(d, using="dense"), params=exact),
              qe.Prefetch(limit=100, query=qe.Query.Nearest(s, using="sparse"))]
        return qe.QueryRequest(limit=200, prefetches=pf, query=qe.Query.Nearest(c, using="colbert"),
                               with_payload=True, with_vector=["dense", "sparse"])

    def rrf(i):
        d, s, _ = qv(i)
        pf = [qe.Prefetch(limit=100, query=qe.Query.Nearest(d, using="dense"), params=exact),
              qe.Prefetch(limit=100, query=qe.Query.Nearest(s, using="sparse"))]
        return qe.QueryRequest(limit=10, prefetches=pf, query=qe.Fusion.Rrf(k=60), with_payload=True)

    for name, build in (("dense", dense), ("sparse", sparse), ("colbert", colbert), ("hybrid", hybrid),
                        ("dense_sparse_server_rrf", rrf)):
        ts = []
        for i in range(len(queries)):
            t = time.perf_counter()
            shard.query(build(i))
            ts.append(time.perf_counter() - t)
        out[f"search_{name}"] = pct(ts)
    shard.close()
    out["disk_mb"] = round(disk_mb(path), 1)
    t = time.perf_counter()
    again = qe.EdgeShard.load(path)
    out["reopen_s"] = round(time.perf_counter() - t, 3)
    assert again.count(qe.CountRequest(exact=True)) == len(docs)
    again.close()
    return out


def run_local(docs, queries, workdir: str) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    from m3_rag.qdrant import QdrantHybridStore

    path = os.path.join(workdir, "local")
    r0 = rss_mb()
    s = QdrantHybridStore(path, "bench", show_progress=False, batch_size=1000)
    t = time.perf_counter()
    s.add_encoded(docs, ids=[f"d{i}" for i in range(len(docs))])
    add_s = time.perf_counter() - t
    out = {"add_docs_per_s": round(len(docs) / add_s, 1), "rss_growth_mb": round(rss_mb() - r0, 1)}
    for name, modes in (("dense", "dense"), ("sparse", "sparse"), ("colbert", "colbert"),
                        ("hybrid", ("dense", "sparse", "colbert"))):
        ts = []
        for i in range(len(queries)):
            t = time.perf_counter()
            s.search_encoded(queries[i], modes=modes, k=10)
            ts.append(time.perf_counter() - t)
        out[f"search_{name}"] = pct(ts)
    s.close()
    out["disk_mb"] = round(disk_mb(path), 1)
    t = time.perf_counter()
    QdrantHybridStore(path, "bench", show_progress=False).close()
    out["reopen_s"] = round(time.perf_counter() - t, 3)
    return out


RUNNERS = {"hybrid": run_hybrid, "edge": run_edge, "local": run_local}


def child(args) -> None:
    import torch

    torch.set_num_threads(1)
    n = args.docs if args.backend != "local" else min(args.docs, args.local_cap)
    docs = make(n, 0, args.nnz, args.tokens, args.colbert_dim)
    queries = make(args.queries, 1, 20, 16, args.colbert_dim)
    workdir = tempfile.mkdtemp(prefix="bench_edge_")
    try:
        res = RUNNERS[args.backend](docs, queries, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    res["docs"] = n
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, nargs="+", default=[10_000])
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--nnz", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--colbert-dim", type=int, default=128)
    ap.add_argument("--local-cap", type=int, default=2000)
    ap.add_argument("--backends", nargs="+", default=["edge", "hybrid", "local"], choices=sorted(RUNNERS))
    ap.add_argument("--out", default="bench/results/qdrant_edge.json")
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.backend:
        args.docs = args.docs[0]
        child(args)
        return
    results: dict = {"settings": {k: v for k, v in vars(args).items() if k not in ("backend", "out")}, "runs": {}}
    for n in args.docs:
        for b in args.backends:
            cmd = [sys.executable, __file__, "--backend", b, "--docs", str(n), "--queries", str(args.queries),
                   "--nnz", str(args.nnz), "--tokens", str(args.tokens), "--colbert-dim", str(args.colbert_dim),
                   "--local-cap", str(args.local_cap)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                raise RuntimeError(f"backend {b} at {n} docs failed:\n{proc.stderr[-3000:]}")
            results["runs"][f"{b}@{n}"] = json.loads(line[0][7:])
            print(b, n, results["runs"][f"{b}@{n}"], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
