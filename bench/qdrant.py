"""HybridStore vs QdrantHybridStore (qdrant-client embedded local mode) on the same synthetic M3 vectors.

Prints one JSON object: build time, memory (RSS growth of a fresh process) and search latency p50/p95 per
mode/fusion for each backend, plus the top-10 agreement between the two. Each backend runs in its own
subprocess so the memory figures do not mix.

    python bench/qdrant.py --docs 5000 --queries 30

The vectors are random but shaped like real M3 output (L2-normalised dense and ColBERT rows, ~40 sparse
tokens per document from a 30k vocabulary); the model does not matter for index latency. Absolute numbers on a
shared machine are noisy: compare the ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

SETTINGS = [
    ("dense", ("dense",), "weighted", False),
    ("sparse", ("sparse",), "weighted", False),
    ("colbert", ("colbert",), "weighted", False),
    ("dense+sparse weighted", ("dense", "sparse"), "weighted", False),
    ("all weighted", ("dense", "sparse", "colbert"), "weighted", False),
    ("all rrf", ("dense", "sparse", "colbert"), "rrf", False),
    ("all dbsf", ("dense", "sparse", "colbert"), "dbsf", False),
    ("all rrf server_fusion", ("dense", "sparse", "colbert"), "rrf", True),
]


def make_data(n: int, seed: int, dense_dim: int, colbert_dim: int, tokens: int, vocab: int = 30000):
    from m3_rag import M3Output

    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n, dense_dim)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    sparse = []
    colbert = []
    for _ in range(n):
        nnz = int(rng.integers(10, 70))
        toks = rng.choice(vocab, size=nnz, replace=False)
        sparse.append({int(t): float(w) for t, w in zip(toks, rng.random(nnz).astype(np.float32) * 0.3)})
        c = rng.normal(size=(int(rng.integers(tokens // 2, tokens * 3 // 2)), colbert_dim)).astype(np.float32)
        colbert.append(c / np.linalg.norm(c, axis=1, keepdims=True))
    return M3Output(dense=dense, sparse=sparse, colbert=colbert)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_backend(args: argparse.Namespace) -> dict:
    from m3_rag.store import HybridStore
    from m3_rag.qdrant import QdrantHybridStore

    docs = make_data(args.docs, 0, args.dense_dim, args.colbert_dim, args.tokens)
    queries = make_data(args.queries, 1, args.dense_dim, args.colbert_dim, 16)
    ids = [f"doc{i}" for i in range(args.docs)]
    metas = [{"group": i % 10} for i in range(args.docs)]
    base = rss_mb()
    t0 = time.perf_counter()
    tmp = None
    if args.backend == "hybrid":
        store = HybridStore(show_progress=False)
    elif args.backend == "qdrant-memory":
        store = QdrantHybridStore(":memory:", "bench", show_progress=False)
    else:
        tmp = tempfile.mkdtemp(prefix="m3q_")
        store = QdrantHybridStore(tmp, "bench", show_progress=False)
    store.add_encoded(docs, ids=ids, metadatas=metas)
    build_s = time.perf_counter() - t0
    del docs
    import gc

    gc.collect()
    mem = rss_mb() - base
    out: dict = {"build_s": round(build_s, 3), "rss_growth_mb": round(mem, 1), "latency_ms": {}, "top10": {}}
    for name, modes, fusion, server in SETTINGS:
        kw = dict(k=10, modes=modes, fusion=fusion)
        if server:
            if args.backend == "hybrid":
                continue
            kw["server_fusion"] = True
        for i in range(min(2, args.queries)):  # warm-up
            store.search_encoded(queries[i], **kw)
        times, tops = [], []
        for i in range(args.queries):
            t = time.perf_counter()
            hits = store.search_encoded(queries[i], **kw)
            times.append((time.perf_counter() - t) * 1000)
            tops.append([h.id for h in hits])
        out["latency_ms"][name] = {
            "p50": round(float(np.percentile(times, 50)), 2),
            "p95": round(float(np.percentile(times, 95)), 2),
        }
        out["top10"][name] = tops
        t = time.perf_counter()
        for i in range(args.queries):
            store.search_encoded(queries[i], filter={"group": {"$in": [1, 2]}}, **kw)
        out["latency_ms"][name]["filtered_mean"] = round((time.perf_counter() - t) * 1000 / args.queries, 2)
    if tmp:
        du = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmp) for f in fs)
        out["disk_mb"] = round(du / 2**20, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=5000)
    p.add_argument("--queries", type=int, default=30)
    p.add_argument("--dense-dim", type=int, default=384)
    p.add_argument("--colbert-dim", type=int, default=128)
    p.add_argument("--tokens", type=int, default=48, help="mean ColBERT vectors per document")
    p.add_argument("--backends", default="hybrid,qdrant-memory,qdrant-path")
    p.add_argument("--backend", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.backend:
        print(json.dumps(run_backend(args)))
        return
    results = {}
    for backend in args.backends.split(","):
        cmd = [sys.executable, __file__, "--backend", backend] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("backend", "backends")
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[backend] = json.loads(proc.stdout.strip().splitlines()[-1])
    report: dict = {
        "config": {k: v for k, v in vars(args).items() if k != "backend"},
        "backends": {b: {k: v for k, v in r.items() if k != "top10"} for b, r in results.items()},
    }
    if "hybrid" in results:
        ref = results["hybrid"]["top10"]
        agree = {}
        for b, r in results.items():
            if b == "hybrid":
                continue
            agree[b] = {
                name: float(np.mean([a == h for a, h in zip(r["top10"][name], ref[name])]))
                for name in ref
            }
        report["identical_top10_fraction_vs_hybrid"] = agree
        ratios = {}
        for b in results:
            if b == "hybrid":
                continue
            ratios[b] = {
                name: round(results[b]["latency_ms"][name]["p50"] / max(ref_lat["p50"], 1e-9), 1)
                for name, ref_lat in results["hybrid"]["latency_ms"].items()
            }
        report["p50_latency_ratio_vs_hybrid"] = ratios
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
