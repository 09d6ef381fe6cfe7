"""HybridStore search benchmark on synthetic BGE-M3-shaped data; prints JSON.

Data (shape of BGE-M3 output):
  dense    1024-d, L2-normalised, clustered (1,000 centroids + noise) so HNSW sees realistic structure;
           queries are a random document plus noise.
  sparse   ~60 non-zeros per document over a 250,002-token vocabulary, token ids Zipf-distributed
           (exponent 1.1); queries ~20 terms from the same distribution.
  colbert  1024-d token vectors, ~100 per document (fewer where memory demands: said in the output).

Every target is reported as a ratio measured in the same run (the machine is shared and noisy).
Memory: each section frees its data before the next; keep a single process under ~8 GB.

  python bench/search.py --quick                          # smoke run, small sizes
  python bench/search.py --sections dense,hnsw,sparse,hybrid,colbert
  python bench/search.py --sections scaling --sizes 10000,100000
  python bench/search.py --sections scaling --sizes 1000000   # run once; ~6 GB
  python bench/search.py --markdown results.json > README_part.md   # render saved JSON results
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import sys
import time
from typing import Any, Callable

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from m3_rag import HybridStore, M3Output  # noqa: E402
from m3_rag.index.colbert import ColbertIndex  # noqa: E402

DIM = 1024
VOCAB = 250_002
DOC_TERMS = 60
QUERY_TERMS = 20
ZIPF_S = 1.1
N_CENTROIDS = 1000


# ----------------------------------------------------------------------------------------- data
class Synth:
    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        c = self.rng.standard_normal((N_CENTROIDS, DIM)).astype(np.float32)
        self.centroids = c / np.linalg.norm(c, axis=1, keepdims=True)
        p = 1.0 / np.arange(1, VOCAB + 1) ** ZIPF_S
        self.cdf = np.cumsum(p / p.sum())
        self.perm = self.rng.permutation(VOCAB)  # Zipf rank -> token id

    def dense(self, n: int, noise: float = 0.9) -> np.ndarray:
        x = self.centroids[self.rng.integers(0, N_CENTROIDS, n)]
        x = x + noise * self.rng.standard_normal((n, DIM)).astype(np.float32) / np.sqrt(DIM)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def sparse(self, n: int, terms: int) -> list[dict[int, float]]:
        ranks = np.searchsorted(self.cdf, self.rng.random((n, terms)))
        ids = self.perm[np.minimum(ranks, VOCAB - 1)]
        weights = self.rng.uniform(0.01, 0.35, (n, terms)).astype(np.float32)
        return [dict(zip(r, w)) for r, w in zip(ids.tolist(), weights.tolist())]

    def colbert(self, n: int, tokens: int) -> list[np.ndarray]:
        out = []
        for _ in range(n):
            t = max(1, int(self.rng.integers(tokens // 2, tokens * 3 // 2 + 1)))
            m = self.rng.standard_normal((t, DIM)).astype(np.float32)
            out.append(m / np.linalg.norm(m, axis=1, keepdims=True))
        return out

    def queries(self, n: int, docs_dense: np.ndarray | None, colbert_tokens: int = 0) -> M3Output:
        if docs_dense is not None:
            base = docs_dense[self.rng.integers(0, len(docs_dense), n)]
            q = base + 0.6 * self.rng.standard_normal((n, DIM)).astype(np.float32) / np.sqrt(DIM)
            dense = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
        else:
            dense = self.dense(n)
        return M3Output(
            dense=dense,
            sparse=self.sparse(n, QUERY_TERMS),
            colbert=[self.colbert(1, 32)[0] for _ in range(n)] if colbert_tokens else None,
        )


ADD_CPU_S: list[float] = []  # CPU seconds of the last build_store's adds (the machine is shared: wall time inflates)


def build_store(synth: Synth, n: int, *, colbert_tokens: int = 0, chunk: int = 20_000, **kwargs: Any) -> tuple[HybridStore, float, np.ndarray]:
    """Store with n docs added in chunks; returns (store, add seconds excluding generation, dense sample)."""
    store = HybridStore(**kwargs)
    add_s = 0.0
    cpu_s = 0.0
    sample = []
    if colbert_tokens:
        chunk = min(chunk, max(1, 400_000_000 // (colbert_tokens * DIM * 4)))  # <= ~400 MB fp32 per chunk
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        enc = M3Output(
            dense=synth.dense(m),
            sparse=synth.sparse(m, DOC_TERMS),
            colbert=synth.colbert(m, colbert_tokens) if colbert_tokens else None,
        )
        sample.append(enc.dense[: max(1, 2000 * m // n)].copy())  # a copy: a view would keep the whole chunk alive
        ids = [str(i) for i in range(start, start + m)]
        t0, c0 = time.perf_counter(), time.process_time()
        store.add_encoded(enc, ids=ids)
        add_s += time.perf_counter() - t0
        cpu_s += time.process_time() - c0
        del enc
    ADD_CPU_S[:] = [cpu_s]
    return store, add_s, np.concatenate(sample)


def dense_rows(store: HybridStore) -> np.ndarray:
    """The store's dense vectors in insertion order, through the public export (a copy)."""
    return store.export()[1].dense


def csr_from_dicts(rows: list[dict[int, float]], vocab: int = VOCAB) -> Any:
    """(n, vocab) CSR matrix of sparse weight dicts: the baseline's document-term matrix."""
    import scipy.sparse as sp

    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    cols = np.fromiter((t for r in rows for t in r), dtype=np.int64, count=int(indptr[-1]))
    vals = np.fromiter((w for r in rows for w in r.values()), dtype=np.float32, count=int(indptr[-1]))
    m = sp.csr_matrix((vals, cols, indptr), shape=(len(rows), vocab))
    m.sum_duplicates()
    return m


# ----------------------------------------------------------------------------------------- timing
def timeit(fn: Callable[[int], Any], n: int, warmup: int = 2) -> np.ndarray:
    for i in range(warmup):
        fn(i)
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out[i] = time.perf_counter() - t0
    return out


def paired(fns: dict[str, Callable[[int], Any]], n: int, rounds: int = 3) -> dict[str, np.ndarray]:
    """Time several functions interleaved (round-robin blocks) so machine load hits them alike."""
    res: dict[str, list[np.ndarray]] = {k: [] for k in fns}
    per = max(1, n // rounds)
    for r in range(rounds):
        for name, fn in fns.items():
            res[name].append(timeit(lambda i, fn=fn, r=r: fn(r * per + i), per, warmup=1))
    return {k: np.concatenate(v) for k, v in res.items()}


def ms(x: np.ndarray) -> dict[str, float]:
    return {"p50_ms": round(float(np.median(x)) * 1e3, 3), "p95_ms": round(float(np.percentile(x, 95)) * 1e3, 3)}


def rss_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)


# ----------------------------------------------------------------------------------------- sections
def bench_dense(n: int, nq: int) -> dict[str, Any]:
    import faiss

    synth = Synth(1)
    store, _, sample = build_store(synth, n, chunk=50_000)
    raw = faiss.IndexFlatIP(DIM)
    raw.add(dense_rows(store))
    qs = synth.queries(nq, sample)
    Q = qs.dense
    ql = list(qs)
    t = paired(
        {
            "store": lambda i: store.search_encoded(ql[i % nq], k=10, modes="dense"),
            "faiss": lambda i: raw.search(Q[i % nq : i % nq + 1], 10),
        },
        nq,
    )
    same = all(
        [h.id for h in store.search_encoded(qs[i], k=10, modes="dense")] == [str(j) for j in raw.search(Q[i : i + 1], 10)[1][0]]
        for i in range(min(nq, 10))
    )
    ratio = float(np.median(t["store"]) / np.median(t["faiss"]))
    return {
        "n_docs": n, "queries": nq, "store": ms(t["store"]), "raw_faiss_IndexFlatIP": ms(t["faiss"]),
        "ratio_store_over_faiss": round(ratio, 3), "target": "<= 1.2", "met": ratio <= 1.2, "same_results": same,
    }


def bench_hnsw(n: int, nq: int, ef_values: list[int]) -> dict[str, Any]:
    synth = Synth(2)
    exact, _, sample = build_store(synth, n, chunk=50_000)
    vecs = dense_rows(exact)
    t0 = time.perf_counter()
    hnsw = HybridStore(dense_index="hnsw", hnsw_m=32)
    hnsw.add_encoded(M3Output(dense=vecs), ids=[str(i) for i in range(n)])
    build_s = time.perf_counter() - t0
    del vecs
    qs = synth.queries(nq, sample)
    ql = list(qs)
    truth = [[h.id for h in exact.search_encoded(ql[i], k=10, modes="dense")] for i in range(nq)]
    t_exact = timeit(lambda i: exact.search_encoded(ql[i % nq], k=10, modes="dense"), nq)
    rows = []
    for ef in ef_values:
        hnsw.hnsw_ef_search = ef
        got = [[h.id for h in hnsw.search_encoded(qs[i], k=10, modes="dense")] for i in range(nq)]
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, got)]))
        t = timeit(lambda i: hnsw.search_encoded(ql[i % nq], k=10, modes="dense"), nq)
        speedup = float(np.median(t_exact) / np.median(t))
        rows.append({"ef_search": ef, "recall_at_10": round(recall, 4), **ms(t), "speedup_vs_exact": round(speedup, 2),
                     "met": speedup >= 5 and recall >= 0.95})
    return {"n_docs": n, "queries": nq, "hnsw_m": 32, "ef_construction": hnsw.hnsw_ef_construction,
            "build_s": round(build_s, 1), "exact": ms(t_exact), "rows": rows,
            "target": ">= 5x faster than exact at recall@10 >= 0.95", "met": any(r["met"] for r in rows)}


def bench_sparse(n: int, nq: int) -> dict[str, Any]:
    import scipy.sparse as sp

    synth = Synth(3)
    store = HybridStore()
    docs = synth.sparse(n, DOC_TERMS)
    t0 = time.perf_counter()
    store.add_encoded(M3Output(sparse=docs), ids=[str(i) for i in range(n)])
    add_s = time.perf_counter() - t0
    D = csr_from_dicts(docs)  # (n, V) CSR
    del docs
    DT = D.T.tocsr()  # the baseline's prepared inverted index (V, n)
    qs = synth.sparse(nq, QUERY_TERMS)
    ql = [M3Output(sparse=[q]) for q in qs]
    Qs = [sp.csr_matrix((list(q.values()), ([0] * len(q), list(q.keys()))), shape=(1, VOCAB)) for q in qs]

    def baseline(i: int) -> np.ndarray:
        s = (Qs[i % nq] @ DT).toarray().ravel()
        top = np.argpartition(-s, 9)[:10]
        return top[np.argsort(-s[top])]

    def baseline_csr(i: int) -> np.ndarray:  # the literal q @ D.T with D stored as CSR
        s = (Qs[i % nq] @ D.T).toarray().ravel()
        top = np.argpartition(-s, 9)[:10]
        return top[np.argsort(-s[top])]

    t = paired({"store": lambda i: store.search_encoded(ql[i % nq], k=10, modes="sparse"),
                "baseline": baseline, "baseline_csr": baseline_csr}, nq)
    same = all([h.id for h in store.search_encoded(M3Output(sparse=[qs[i]]), k=10, modes="sparse")]
               == [str(j) for j in baseline(i)] for i in range(min(nq, 10)))
    ratio = float(np.median(t["baseline"]) / np.median(t["store"]))
    return {
        "n_docs": n, "queries": nq, "nnz_per_doc": round(D.nnz / n, 1), "add_s": round(add_s, 2),
        "store": ms(t["store"]), "baseline_q_at_DT_prepared_csr_argpartition": ms(t["baseline"]),
        "baseline_q_at_D.T_unprepared": ms(t["baseline_csr"]),
        "speed_ratio_baseline_over_store": round(ratio, 3), "target": ">= 1.0", "met": ratio >= 1.0, "same_results": same,
    }


def bench_hybrid(n: int, nq: int, colbert_tokens: int, colbert_dtype: str) -> dict[str, Any]:
    """Full dense+sparse+colbert search vs the raw component searches over the same candidates."""
    import faiss

    from m3_rag.fusion import fuse_weighted

    synth = Synth(4)
    store, add_s, sample = build_store(synth, n, colbert_tokens=colbert_tokens, colbert_dtype=colbert_dtype)
    qs = synth.queries(nq, sample, colbert_tokens=32)
    # the raw components over one copy of the same data: FAISS flat, a prepared (V, n) CSR, one ColbertIndex
    # exported in slices: the decoded float32 ColBERT rows of 100k documents would not fit beside the store
    raw = faiss.IndexFlatIP(DIM)
    col = ColbertIndex(DIM, colbert_dtype)
    dense_parts, sparse_rows = [], []
    all_ids = store.ids()
    for lo in range(0, n, 5_000):
        _, part, _, _ = store.export(all_ids[lo : lo + 5_000])
        dense_parts.append(part.dense)
        sparse_rows.extend(part.sparse)
        col.append(col.prepare(part.colbert))
        del part
    raw_vectors = np.concatenate(dense_parts)
    del dense_parts
    raw.add(raw_vectors)
    DT = csr_from_dicts(sparse_rows).T.tocsr()
    del sparse_rows
    gc.collect()
    import scipy.sparse as sp

    Qs = [sp.csr_matrix((list(q.values()), ([0] * len(q), list(q.keys()))), shape=(1, VOCAB)) for q in qs.sparse]

    def raw_search(i: int) -> list[int]:
        i %= nq
        _, I = raw.search(qs.dense[i : i + 1], 100)
        s = (Qs[i] @ DT).toarray().ravel().astype(np.float64)
        top_s = np.argpartition(-s, 99)[:100]
        cand = np.union1d(I[0], top_s)
        d = raw_vectors[cand] @ qs.dense[i]
        c = col.score([qs.colbert[i]], [cand])[0]
        f = fuse_weighted({"dense": d, "sparse": s[cand], "colbert": c})
        top = np.argsort(-f, kind="stable")[:10]
        return cand[top].tolist()

    ql = list(qs)
    t = paired({"store": lambda i: store.search_encoded(ql[i % nq], k=10), "raw": raw_search}, nq)
    same = all([h.id for h in store.search_encoded(qs[i], k=10)] == [str(j) for j in raw_search(i)] for i in range(min(nq, 5)))
    overhead = float(np.median(t["store"]) / np.median(t["raw"]) - 1)
    mem = store.memory_bytes()
    return {
        "n_docs": n, "queries": nq, "colbert_tokens_per_doc": colbert_tokens, "colbert_dtype": colbert_dtype,
        "add_s": round(add_s, 1), "store": ms(t["store"]), "raw_components": ms(t["raw"]),
        "overhead": round(overhead, 3), "target": "<= 0.25", "met": overhead <= 0.25, "same_results": same,
        "memory_gb": {k: round(v / 1e9, 3) for k, v in mem.items()}, "max_rss_gb": rss_gb(),
    }


def bench_colbert(n: int, nq: int, tokens: int) -> dict[str, Any]:
    """ColBERT storage types: bytes/token, MaxSim speed over 100 candidates, fused-score error vs fp32."""
    synth = Synth(5)
    enc = M3Output(dense=synth.dense(n), sparse=synth.sparse(n, DOC_TERMS), colbert=synth.colbert(n, tokens))
    n_tokens = sum(len(m) for m in enc.colbert)
    ids = [str(i) for i in range(n)]
    qs = synth.queries(nq, enc.dense, colbert_tokens=32)
    stores = {}
    for dt in ("fp32", "fp16", "int8"):
        s = HybridStore(colbert_dtype=dt)
        s.add_encoded(enc, ids=ids)
        stores[dt] = s
    del enc
    gc.collect()
    ref = [store_hits for store_hits in stores["fp32"].search_encoded_batch(qs, k=10)]
    out: dict[str, Any] = {"n_docs": n, "tokens_per_doc": round(n_tokens / n, 1), "queries": nq, "dtypes": {}}
    rng = np.random.default_rng(0)
    cands = [np.sort(rng.choice(n, 100, replace=False)) for _ in range(nq)]
    for dt, s in stores.items():
        idx = ColbertIndex(DIM, dt)  # the store's ColBERT component alone, for the MaxSim timing
        idx.append(idx.prepare(s.export()[1].colbert))
        bytes_per_token = (s.memory_bytes()["colbert"] - 8 * (n + 1)) / n_tokens  # minus the int64 offsets
        t = timeit(lambda i: idx.score([qs.colbert[i % nq]], [cands[i % nq]]), nq)
        hits = s.search_encoded_batch(qs, k=10)
        col_err, fused_err, overlap = [], [], []
        for a, b in zip(ref, hits):
            ref_by_id = {h.id: h for h in a}
            for h in b:
                if h.id in ref_by_id:
                    col_err.append(abs(h.scores["colbert"] - ref_by_id[h.id].scores["colbert"]))
                    fused_err.append(abs(h.score - ref_by_id[h.id].score))
            overlap.append(len(set(ref_by_id) & {h.id for h in b}) / 10)
        per_doc_100 = 100 * bytes_per_token
        out["dtypes"][dt] = {
            "bytes_per_token": round(bytes_per_token, 1),
            "maxsim_100_candidates": ms(t),
            "max_abs_colbert_score_error_vs_fp32": float(f"{max(col_err):.3g}"),
            "max_abs_fused_score_error_vs_fp32": float(f"{max(fused_err):.3g}"),
            "top10_overlap_with_fp32": round(float(np.mean(overlap)), 4),
            "docs_of_100_tokens_in_24GB": int(24e9 // (per_doc_100 + DIM * 4 + DOC_TERMS * 8)),
        }
    return out


def bench_scaling(sizes: list[int], nq: int) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        synth = Synth(6)
        rss0 = rss_gb()
        store, add_s, sample = build_store(synth, n, chunk=50_000)
        qs = synth.queries(nq, sample)
        ql = list(qs)
        mem = store.memory_bytes()
        row: dict[str, Any] = {
            "n_docs": n, "add_s": round(add_s, 2), "add_docs_per_s": int(n / add_s),
            "add_cpu_s": round(ADD_CPU_S[0], 2), "add_docs_per_cpu_s": int(n / ADD_CPU_S[0]),
            "bytes_per_doc": int(sum(mem.values()) / n),
            "bytes_per_doc_by_mode": {k: int(v / n) for k, v in mem.items() if v},
            "max_rss_gb": rss_gb(), "rss_before_gb": rss0,
        }
        for label, modes in (("dense", "dense"), ("sparse", "sparse"), ("dense+sparse", ("dense", "sparse"))):
            t = timeit(lambda i, modes=modes: store.search_encoded(ql[i % nq], k=10, modes=modes), nq, warmup=1)
            row[label] = ms(t)
        t = timeit(lambda i: store.search_encoded_batch(qs, k=10, modes=("dense", "sparse")), 2, warmup=0)
        row["dense+sparse_batch_per_query_ms"] = round(float(np.median(t)) / nq * 1e3, 3)
        rows.append(row)
        del store, sample, qs, ql
        gc.collect()
    return rows


def bench_throughput(n: int) -> dict[str, Any]:
    synth = Synth(7)
    chunk = 20_000
    encs = [M3Output(dense=synth.dense(min(chunk, n - s)), sparse=synth.sparse(min(chunk, n - s), DOC_TERMS)) for s in range(0, n, chunk)]
    ids = [[str(i) for i in range(s, s + chunk)] for s in range(0, n, chunk)]
    store = HybridStore()
    t0, c0 = time.perf_counter(), time.process_time()
    for e, e_ids in zip(encs, ids):
        store.add_encoded(e, ids=e_ids[: len(e)])
    s = time.perf_counter() - t0
    cpu = time.process_time() - c0
    rate, cpu_rate = n / s, n / cpu
    # CPU time counts the work of every thread this process ran; on a machine shared by many jobs the wall
    # time also counts time spent waiting for a core.
    return {"n_docs": n, "modes": ["dense", "sparse"], "chunk": chunk, "seconds": round(s, 2), "cpu_seconds": round(cpu, 2),
            "docs_per_s": int(rate), "docs_per_cpu_s": int(cpu_rate), "load_avg_after": os.getloadavg(),
            "target": ">= 20000", "met_wall": rate >= 20000, "met_cpu": cpu_rate >= 20000}


# ----------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000", help="scaling-table sizes (comma-separated)")
    ap.add_argument("--sections", default="dense,hnsw,sparse,hybrid,colbert,scaling,throughput")
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--markdown", metavar="JSON", help="render saved JSON results (one object per line) as markdown")
    args = ap.parse_args()
    if args.markdown:
        print(render_markdown(args.markdown))
        return
    q = 12 if args.quick else args.queries
    big = 5_000 if args.quick else 100_000
    small = 1_000 if args.quick else 10_000
    sections = args.sections.split(",")
    header = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
              "quick": args.quick}

    def emit(key: str, value: Any, t0: float) -> None:
        """One JSON line per section, flushed at once, so partial runs keep their results."""
        line = {key: value, **header, "section_wall_s": round(time.time() - t0, 1), "max_rss_gb": rss_gb()}
        print(json.dumps(line, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)), flush=True)

    for section in sections:
        t0 = time.time()
        if section == "dense":
            emit("dense_only", bench_dense(big, q), t0)
        elif section == "hnsw":
            emit("hnsw", bench_hnsw(big, q, [16, 32, 64, 128, 256]), t0)
        elif section == "sparse":
            emit("sparse_only", bench_sparse(big, q), t0)
        elif section == "hybrid":
            # 100k x 100 tokens x 1024-d is 20 GB in fp16: the 100k run keeps 16 tokens/doc in int8 (~1.7 GB)
            rows = [bench_hybrid(small, q, 100 if not args.quick else 20, "fp16")]
            gc.collect()
            rows.append(bench_hybrid(big, q, 16, "int8"))
            emit("hybrid", rows, t0)
        elif section == "colbert":
            emit("colbert_storage", bench_colbert(2_000 if not args.quick else 300, q, 100 if not args.quick else 30), t0)
        elif section == "scaling":
            sizes = [int(x) for x in args.sizes.split(",")] if not args.quick else [1_000, 5_000]
            emit("scaling", bench_scaling(sizes, q), t0)
        elif section == "throughput":
            emit("add_encoded_throughput", bench_throughput(big), t0)
        else:
            raise SystemExit(f"unknown section {section!r}; choose from dense,hnsw,sparse,hybrid,colbert,scaling,throughput")
        gc.collect()


def render_markdown(path: str) -> str:
    """Tables for the README from JSON lines written by earlier runs (later lines override earlier keys)."""
    res: dict[str, Any] = {}
    scaling: dict[int, dict] = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                obj = json.loads(line)
                for row in obj.pop("scaling", []):
                    scaling[row["n_docs"]] = row
                res.update(obj)
    out = []
    if "dense_only" in res:
        d = res["dense_only"]
        out += ["| Dense-only top-10 | docs | store p50 | raw IndexFlatIP p50 | ratio (target <= 1.2) |", "|---|---|---|---|---|",
                f"| flat | {d['n_docs']:,} | {d['store']['p50_ms']} ms | {d['raw_faiss_IndexFlatIP']['p50_ms']} ms | **{d['ratio_store_over_faiss']}x** |", ""]
    if "hnsw" in res:
        h = res["hnsw"]
        out += [f"HNSW (M={h['hnsw_m']}, efConstruction={h['ef_construction']}, build {h['build_s']} s for {h['n_docs']:,} docs; exact p50 {h['exact']['p50_ms']} ms):", "",
                "| efSearch | recall@10 | p50 | speed-up vs exact |", "|---|---|---|---|"]
        out += [f"| {r['ef_search']} | {r['recall_at_10']} | {r['p50_ms']} ms | {r['speedup_vs_exact']}x |" for r in h["rows"]] + [""]
    if "sparse_only" in res:
        s = res["sparse_only"]
        out += ["| Sparse-only top-10 | docs | unique tokens/doc | store p50 | scipy `q @ D.T` (prepared CSR) + argpartition p50 | same, D.T not prepared | speed ratio vs prepared (target >= 1.0) |", "|---|---|---|---|---|---|---|",
                f"| inverted index | {s['n_docs']:,} | {s['nnz_per_doc']} | {s['store']['p50_ms']} ms | {s['baseline_q_at_DT_prepared_csr_argpartition']['p50_ms']} ms | {s['baseline_q_at_D.T_unprepared']['p50_ms']} ms | **{s['speed_ratio_baseline_over_store']}x** |", ""]
    if "hybrid" in res:
        out += ["| Hybrid dense+sparse+colbert (k=10, 100 candidates/mode) | docs | ColBERT | store p50 / p95 | raw components p50 / p95 | overhead (target <= 25%) | memory dense / sparse / colbert | max RSS |", "|---|---|---|---|---|---|---|---|"]
        for h in res["hybrid"]:
            m = h["memory_gb"]
            out.append(f"| weighted | {h['n_docs']:,} | {h['colbert_tokens_per_doc']} tok/doc {h['colbert_dtype']} | {h['store']['p50_ms']} / {h['store']['p95_ms']} ms | {h['raw_components']['p50_ms']} / {h['raw_components']['p95_ms']} ms | **{h['overhead'] * 100:.1f}%** | {m['dense']} / {m['sparse']} / {m['colbert']} GB | {h['max_rss_gb']} GB |")
        out.append("")
    if "colbert_storage" in res:
        c = res["colbert_storage"]
        out += [f"ColBERT storage ({c['n_docs']:,} docs, {c['tokens_per_doc']} tokens/doc, 1024-d):", "",
                "| dtype | bytes/token | MaxSim over 100 candidates p50 | max fused-score error vs fp32 | max ColBERT-score error | top-10 overlap with fp32 | docs x 100 tokens in 24 GB |",
                "|---|---|---|---|---|---|---|"]
        for dt, r in c["dtypes"].items():
            out.append(f"| {dt} | {r['bytes_per_token']} | {r['maxsim_100_candidates']['p50_ms']} ms | {r['max_abs_fused_score_error_vs_fp32']} | {r['max_abs_colbert_score_error_vs_fp32']} | {r['top10_overlap_with_fp32']} | {r['docs_of_100_tokens_in_24GB']:,} |")
        out.append("")
    if scaling:
        out += ["| docs (dense+sparse) | add time (wall / CPU) | add docs/s (wall / CPU) | bytes/doc (dense + sparse) | max RSS | dense p50 | sparse p50 | dense+sparse p50 | batched dense+sparse per query |", "|---|---|---|---|---|---|---|---|---|"]
        for n in sorted(scaling):
            r = scaling[n]
            cpu_t = f" / {r['add_cpu_s']} s" if "add_cpu_s" in r else ""
            cpu_r = f" / {r['add_docs_per_cpu_s']:,}" if "add_docs_per_cpu_s" in r else ""
            by = r.get("bytes_per_doc_by_mode", {})
            out.append(f"| {n:,} | {r['add_s']} s{cpu_t} | {r['add_docs_per_s']:,}{cpu_r} | {r['bytes_per_doc']:,} ({by.get('dense', 0):,} + {by.get('sparse', 0):,}) | {r['max_rss_gb']} GB | {r['dense']['p50_ms']} ms | {r['sparse']['p50_ms']} ms | {r['dense+sparse']['p50_ms']} ms | {r['dense+sparse_batch_per_query_ms']} ms |")
        out.append("")
    if "add_encoded_throughput" in res:
        t = res["add_encoded_throughput"]
        cpu = f", **{t['docs_per_cpu_s']:,} docs per CPU-second** ({t['cpu_seconds']} CPU-s)" if "docs_per_cpu_s" in t else ""
        out += [f"`add_encoded` throughput (dense+sparse, {t['n_docs']:,} docs in chunks of {t.get('chunk', 20000):,}): "
                f"{t['docs_per_s']:,} docs/s wall ({t['seconds']} s){cpu}; target >= 20,000 docs/s.", ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
