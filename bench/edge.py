"""The three m3-rag stores end to end: QdrantEdgeStore vs HybridStore vs QdrantHybridStore (qdrant-client local mode).

Unlike ``bench/qdrant_engine.py`` (the engine's raw requests), this measures the public store API -- what a user gets:
``add_encoded`` (batches of ``--batch`` documents; the Edge store flushes before each call returns), and
``search_encoded`` with the full pipeline (candidates, exact per-mode rescoring, fusion, tie rule, hits with
payloads). Each store runs in its own subprocess on the same synthetic BGE-M3-shaped data (dense 1024-d unit
vectors; ~``--nnz`` sparse weights per document over a 250k vocabulary, Zipf-ish; ``--tokens`` ColBERT tokens of
``--colbert-dim``); queries have 20 sparse weights and 16 ColBERT tokens. Measured: add throughput, search p50/p95
per single mode and for the three-mode hybrid (weighted and RRF), RSS growth, disk size, reopen time (+ first
search after reopen). Local mode is capped (``--local-cap``): its pure-Python build runs at ~30 docs/s.

    python bench/edge.py --docs 10000 100000 --colbert-dim 1024 --tokens 16 --local-cap 10000 \
        --queries 20 --out bench/results/edge_store_1024.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


from qdrant_engine import disk_mb, make  # noqa: E402  (the same synthetic BGE-M3-shaped data)

VOCAB = 250_002
SEARCHES = (("dense", "dense", "weighted"), ("sparse", "sparse", "weighted"), ("colbert", "colbert", "weighted"),
            ("hybrid_weighted", ("dense", "sparse", "colbert"), "weighted"),
            ("hybrid_rrf", ("dense", "sparse", "colbert"), "rrf"))


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pct(ts: list[float]) -> dict:
    a = np.asarray(ts) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p95_ms": round(float(np.percentile(a, 95)), 2)}


class Docs:
    """The synthetic corpus, generated batch by batch (the same rows for every backend: one seed per batch), so
    a 100k x 1024-d corpus never sits in memory twice; generation time is excluded from the add timing."""

    def __init__(self, n: int, args) -> None:
        self.n, self.args = n, args

    def __len__(self) -> int:
        return self.n

    def batch(self, b: int):
        a = self.args
        return make(min(a.batch, self.n - b), 10_000 + b // a.batch, a.nnz, a.tokens, a.colbert_dim)


def measure(store, docs: Docs, queries, batch: int) -> tuple[dict, list]:
    r0 = rss_mb()
    add_s = 0.0
    for b in range(0, len(docs), batch):
        rows = docs.batch(b)
        t = time.perf_counter()
        store.add_encoded(rows, ids=[f"d{i}" for i in range(b, min(b + batch, len(docs)))],
                          metadatas=[{"n": i, "even": i % 2 == 0} for i in range(b, min(b + batch, len(docs)))])
        add_s += time.perf_counter() - t
        del rows
    out: dict = {"add_docs_per_s": round(len(docs) / add_s, 1), "add_s": round(add_s, 2),
                 "rss_growth_mb": round(rss_mb() - r0, 1)}
    tops = []
    for name, modes, fusion in SEARCHES:
        ts = []
        for i in range(len(queries)):
            t = time.perf_counter()
            hits = store.search_encoded(queries[i], modes=modes, fusion=fusion, k=10)
            ts.append(time.perf_counter() - t)
            tops.append([h.id for h in hits])
        out[f"search_{name}"] = pct(ts)
    ts = []
    for i in range(len(queries)):
        t = time.perf_counter()
        store.search_encoded(queries[i], k=10, filter={"n": {"$lt": len(docs) // 2}})
        ts.append(time.perf_counter() - t)
    out["search_hybrid_filtered"] = pct(ts)
    return out, tops


def run_hybrid(docs, queries, workdir: str, args) -> dict:
    from m3_rag.store import HybridStore

    s = HybridStore(show_progress=False, colbert_dtype="fp32")
    out, tops = measure(s, docs, queries, args.batch)
    path = os.path.join(workdir, "hybrid")
    t = time.perf_counter()
    s.save(path)
    out["save_s"] = round(time.perf_counter() - t, 3)
    out["disk_mb"] = round(disk_mb(path), 1)
    t = time.perf_counter()
    again = HybridStore.load(path)
    out["reopen_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    again.search_encoded(queries[0], k=10)
    out["first_search_after_reopen_s"] = round(time.perf_counter() - t, 3)
    out["top10"] = tops
    return out


def run_edge(docs, queries, workdir: str, args) -> dict:
    from m3_rag.qdrant_edge import QdrantEdgeStore

    path = os.path.join(workdir, "edge")
    s = QdrantEdgeStore(path, batch_size=256, colbert_datatype=args.edge_colbert)
    out, tops = measure(s, docs, queries, args.batch)
    s.close()
    out["disk_mb"] = round(disk_mb(path), 1)
    t = time.perf_counter()
    again = QdrantEdgeStore(path)
    out["reopen_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    again.search_encoded(queries[0], k=10)
    out["first_search_after_reopen_s"] = round(time.perf_counter() - t, 3)
    assert len(again) == len(docs)
    again.close()
    out["top10"] = tops
    return out


def run_local(docs, queries, workdir: str, args) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    from m3_rag.qdrant import QdrantHybridStore

    path = os.path.join(workdir, "local")
    s = QdrantHybridStore(path, "bench", show_progress=False, batch_size=1000, colbert_datatype="float32")
    out, tops = measure(s, docs, queries, args.batch)
    s.close()
    out["disk_mb"] = round(disk_mb(path), 1)
    t = time.perf_counter()
    again = QdrantHybridStore(path, "bench", show_progress=False)
    out["reopen_s"] = round(time.perf_counter() - t, 3)
    again.close()
    out["top10"] = tops
    return out


RUNNERS = {"hybrid": run_hybrid, "edge": run_edge, "local": run_local}


def child(args) -> None:
    import torch

    torch.set_num_threads(1)
    n = args.docs if args.backend != "local" else min(args.docs, args.local_cap)
    docs = Docs(n, args)
    queries = make(args.queries, 1, 20, 16, args.colbert_dim)
    workdir = tempfile.mkdtemp(prefix="bench_edge_store_")
    try:
        res = RUNNERS[args.backend](docs, queries, workdir, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    res["docs"] = n
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, nargs="+", default=[10_000])
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--batch", type=int, default=1000, help="documents per add_encoded call")
    ap.add_argument("--nnz", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--colbert-dim", type=int, default=128)
    ap.add_argument("--edge-colbert", default="float32", choices=("float32", "float16"))
    ap.add_argument("--local-cap", type=int, default=2000)
    ap.add_argument("--backends", nargs="+", default=["edge", "hybrid", "local"], choices=sorted(RUNNERS))
    ap.add_argument("--out", default="bench/results/edge_store.json")
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.backend:
        args.docs = args.docs[0]
        child(args)
        return
    out_path = Path(args.out)
    results: dict = json.loads(out_path.read_text()) if out_path.exists() else {"runs": {}}
    results["settings"] = {k: v for k, v in vars(args).items() if k not in ("backend", "out", "docs", "backends")}
    for n in args.docs:
        for b in args.backends:
            cmd = [sys.executable, __file__, "--backend", b, "--docs", str(n)] + [
                f"--{k.replace('_', '-')}={v}" for k, v in results["settings"].items()]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                raise RuntimeError(f"backend {b} at {n} docs failed:\n{proc.stderr[-3000:]}")
            res = json.loads(line[0][7:])
            results["runs"][f"{b}@{n}"] = res
            print(b, n, {k: v for k, v in res.items() if k != "top10"}, flush=True)
        ref = results["runs"].get(f"hybrid@{n}", {}).get("top10")
        for b in args.backends:
            run = results["runs"][f"{b}@{n}"]
            if ref is not None and b != "hybrid" and run["docs"] == n:
                run["same_top10_as_hybrid"] = sum(a == x for a, x in zip(ref, run["top10"])) / len(ref)
    for run in results["runs"].values():
        run.pop("top10", None)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
