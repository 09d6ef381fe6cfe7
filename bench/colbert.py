"""ColBERT storage at scale: codecs (fp32, fp16, int8, binary, pq) x token pooling, measured.

Usage::

    python bench/minilm_m3_eval.py cache --cache-dir /tmp/m3cache          # backbone token states, once
    python bench/colbert.py quality --cache-dir /tmp/m3cache [--collections med cranfield ...]
    python bench/colbert.py latency                                          # 200 candidates, 1024-d, fp16 vs others
    python bench/colbert.py scale --docs 10000                               # synthetic three-mode corpus

``quality``: nDCG@10 of ColBERT alone (brute force MaxSim over every document, as the store's single-mode
ColBERT search does) and of all three modes fused with the model's recommended weights (``m3_model.json``
``fusion_weights``), for each codec x pool factor (1, 2, 3; pooled with and without renormalisation), against
fp32 unpooled on the same documents. ``minilm-m3``'s ColBERT is 384-d; bytes per raw (unpooled) token are
given at 384-d and for the 1024-d equivalent (same bits per dimension; PQ with the same sub-vector size).
Every subcommand prints JSON and merges it into ``bench/results/colbert.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
RESULTS = REPO / "bench" / "results" / "colbert.json"

#: (label, codec name, kwargs as a function of the dimension)
CODEC_GRID = [
    ("fp32", "fp32", lambda d: {}),
    ("fp16", "fp16", lambda d: {}),
    ("int8", "int8", lambda d: {}),
    ("binary", "binary", lambda d: {"scale": "mean_abs"}),
    ("binary-l2", "binary", lambda d: {"scale": "l2"}),
    ("binary-noscale", "binary", lambda d: {"scale": "none"}),
    ("pq-d/16", "pq", lambda d: {"m": d // 16}),
    ("pq-d/8", "pq", lambda d: {"m": d // 8}),
    ("opq-d/16", "pq", lambda d: {"m": d // 16, "opq": True}),
]


def save(section: str, value) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[section] = value
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=1))


def make(label: str, dim: int):
    from m3_rag.index.codecs import make_codec

    for lab, name, kw in CODEC_GRID:
        if lab == label:
            return make_codec(name, **kw(dim))
    raise KeyError(label)


def bytes_1024(label: str) -> float:
    return make(label, 1024).bytes_per_token(1024)


def pack(docs):
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in docs], out=offsets[1:])
    return np.concatenate(docs).astype(np.float32), offsets


def encode_all(codec, tokens: np.ndarray, seed: int = 0):
    if codec.trained:
        rng = np.random.default_rng(seed)
        sample = tokens[rng.choice(len(tokens), min(len(tokens), 65536), replace=False)]
        codec.fit(sample)
    return codec.encode(tokens)


# ------------------------------------------------------------------------------------------ quality
def colbert_vectors(cache, w, b):
    out = []
    for i in range(len(cache)):
        h = cache.token_states(i)[1:] @ w.T + b
        out.append((h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)).astype(np.float32))
    return out


def _row_sims(codec, parts, sl: slice, qt: np.ndarray, dim: int) -> np.ndarray:
    """Similarities of stored token rows ``sl`` to every query token (columns of ``qt``), with the same math
    as the codec's own ``maxsim`` (fp32/fp16/int8: ``maxsim_packed``; binary: ``signs @ q`` then the per-token
    scale; pq: its reconstruction dotted with the query, which equals the lookup-table sum of its ADC)."""
    from m3_rag.index.codecs import BinaryCodec, Int8Codec, PQCodec, _FloatCodec

    if isinstance(codec, _FloatCodec):
        return parts["tokens"][sl].astype(np.float32, copy=False) @ qt
    if isinstance(codec, Int8Codec):
        out = parts["tokens"][sl].astype(np.float32) @ qt
        out *= parts["scale"][sl][:, None]
        return out
    if isinstance(codec, BinaryCodec):
        out = codec._signs(parts["tokens"][sl], dim) @ qt
        s = codec._scales(parts, sl, dim)
        out *= s if np.isscalar(s) else s[:, None]
        return out
    if isinstance(codec, PQCodec):
        return codec.decode(parts, sl) @ qt
    raise TypeError(f"no batched MaxSim for {codec!r}")


def maxsim_all(codec, parts, offsets: np.ndarray, queries, dim: int, chunk_tokens: int = 8192) -> np.ndarray:
    """``(n_queries, n_docs)`` MaxSim of every query against every document over a codec's stored tokens:
    ``minilm_m3_eval.maxsim_all`` (one GEMM per chunk of documents against all query tokens stacked, a segmented
    max, each query's mean over its own token columns) with the codec's own row similarities (:func:`_row_sims`).
    Same numbers as ``codec.maxsim(q, parts, offsets, None)`` per query, to float rounding."""
    import minilm_m3_eval as ev

    return ev.maxsim_all(queries, None, offsets, chunk_tokens,
                         row_sims=lambda a, b, qt: _row_sims(codec, parts, slice(a, b), qt, dim))


def cmd_quality(args) -> None:
    import minilm_m3_eval as ev
    from m3_rag.encoder import resolve_model_path
    from m3_rag.index.pooling import pool_tokens
    from m3_rag.train import TokenStateCache

    ev.CACHE = args.cache_dir
    _, heads = resolve_model_path("minilm-m3")
    weights = json.loads((Path(heads) / "m3_model.json").read_text())["fusion_weights"]
    sw, sb, cw, cb = ev.load_heads("minilm-m3")
    unused, vocab = ev.token_space()
    per = {}
    for name in args.collections:
        t0 = time.perf_counter()
        doc_ids, _, qids, _, qrels = ev.read_collection(name, args.datasets_dir)
        dq, dd = TokenStateCache(args.cache_dir / name / "queries"), TokenStateCache(args.cache_dir / name / "docs")
        dense = np.asarray(dq.dense) @ np.asarray(dd.dense).T
        sparse = (ev.sparse_matrix(dq, sw, sb, unused, vocab) @ ev.sparse_matrix(dd, sw, sb, unused, vocab).T).toarray()
        qv, dv = colbert_vectors(dq, cw, cb), colbert_vectors(dd, cw, cb)
        raw_tokens = sum(len(x) for x in dv)
        dim = dv[0].shape[1]
        rows = {}
        for factor in args.pool_factors:
            for renorm in ((False,) if factor == 1 else (False, True)):
                tp = time.perf_counter()
                pooled = dv if factor == 1 else [pool_tokens(x, factor, renormalize=renorm) for x in dv]
                pool_s = time.perf_counter() - tp
                tokens, offsets = pack(pooled)
                for label, _, _ in CODEC_GRID:
                    if label not in args.codecs:
                        continue
                    codec = make(label, dim)
                    parts = encode_all(codec, tokens)
                    cmat = maxsim_all(codec, parts, offsets, qv, dim)
                    fused = weights["dense"] * dense + weights["sparse"] * sparse + weights["colbert"] * cmat
                    key = f"{label}|pool{factor}{'+renorm' if renorm else ''}"
                    rows[key] = {
                        "colbert": round(ev.ndcg10(cmat, doc_ids, qids, qrels), 4),
                        "fused": round(ev.ndcg10(fused, doc_ids, qids, qrels), 4),
                        "vectors_per_raw_token": round(len(tokens) / raw_tokens, 4),
                        "bytes_per_raw_token_384": round(codec.bytes_per_token(dim) * len(tokens) / raw_tokens, 2),
                        "bytes_per_raw_token_1024": round(bytes_1024(label) * len(tokens) / raw_tokens, 2),
                        "pool_seconds": round(pool_s, 2),
                    }
        per[name] = {"docs": len(doc_ids), "queries": len(qids), "raw_tokens": raw_tokens, "rows": rows}
        print(name, f"{time.perf_counter() - t0:.0f}s", json.dumps(rows["fp32|pool1"]), file=sys.stderr, flush=True)
    keys = list(next(iter(per.values()))["rows"])
    mean = {}
    for k in keys:
        m = {f: float(np.mean([per[c]["rows"][k][f] for c in per])) for f in ("colbert", "fused")}
        ref = {f: float(np.mean([per[c]["rows"]["fp32|pool1"][f] for c in per])) for f in ("colbert", "fused")}
        mean[k] = {
            "colbert": round(m["colbert"], 4), "fused": round(m["fused"], 4),
            "colbert_rel_change": round((m["colbert"] - ref["colbert"]) / ref["colbert"], 4),
            "fused_delta": round(m["fused"] - ref["fused"], 4),
            "bytes_per_raw_token_1024": round(float(np.mean([per[c]["rows"][k]["bytes_per_raw_token_1024"] for c in per])), 2),
            "bytes_per_raw_token_384": round(float(np.mean([per[c]["rows"][k]["bytes_per_raw_token_384"] for c in per])), 2),
        }
    out = {"model": "minilm-m3", "fusion_weights": weights, "collections": list(per), "mean": mean, "per_collection": per}
    save("quality", out)
    print(json.dumps(out))


# ------------------------------------------------------------------------------------------ latency
def synthetic_docs(rng, n_docs: int, tokens: int, dim: int, dtype=np.float16):
    """Unit-norm token vectors with some per-document structure (documents are mixtures of a few topics)."""
    out = np.empty((n_docs * tokens, dim), dtype=dtype)
    topics = rng.standard_normal((64, dim)).astype(np.float32)
    for s in range(0, n_docs, 200):
        e = min(n_docs, s + 200)
        n = (e - s) * tokens
        x = topics[rng.integers(0, 64, n)] + 1.5 * rng.standard_normal((n, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s * tokens : e * tokens] = x
    return out


def cmd_latency(args) -> None:
    rng = np.random.default_rng(0)
    dim, tpd = args.dim, args.tokens
    tokens16 = synthetic_docs(rng, args.docs, tpd, dim)
    offsets = np.arange(0, (args.docs + 1) * tpd, tpd, dtype=np.int64)
    q = synthetic_docs(rng, 1, 32, dim, np.float32)
    cands = [np.sort(rng.choice(args.docs, args.candidates, replace=False)) for _ in range(args.reps)]
    res = {}
    for label in args.codecs:
        codec = make(label, dim)
        if codec.trained:
            codec.fit(tokens16[rng.choice(len(tokens16), 65536, replace=False)].astype(np.float32))
        parts = {}
        for s in range(0, len(tokens16), 100_000):  # encode in chunks (fp32 copies stay small)
            for k, v in codec.encode(tokens16[s : s + 100_000].astype(np.float32)).items():
                parts.setdefault(k, []).append(v)
        parts = {k: np.concatenate(v) for k, v in parts.items()}
        codec.maxsim(q, parts, offsets, cands[0])  # warm-up
        times = []
        for c in cands:
            t = time.perf_counter()
            codec.maxsim(q, parts, offsets, c)
            times.append(time.perf_counter() - t)
        res[label] = {"median_ms": round(1000 * float(np.median(times)), 3),
                      "bytes_per_token": codec.bytes_per_token(dim)}
        del parts
    for r in res.values():
        r["vs_fp16"] = round(r["median_ms"] / res["fp16"]["median_ms"], 3) if "fp16" in res else None
    out = {"dim": dim, "tokens_per_doc": tpd, "docs": args.docs, "candidates": args.candidates, "query_tokens": 32,
           "reps": args.reps, "codecs": res}
    save("latency", out)
    print(json.dumps(out))


# ------------------------------------------------------------------------------------------ scale
def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def cmd_scale(args) -> None:
    """One ``HybridStore`` holding ``--docs`` synthetic BGE-M3-shaped documents in all three modes: ColBERT
    (``--tokens`` x ``--dim`` per document, stored with ``colbert_storage=--codec`` and ``colbert_pool_factor``),
    1024-d dense (FAISS flat, float32) and sparse (100 weights per document over a 250k vocabulary), added with
    ``add_encoded`` in chunks. Token vectors are drawn from a bank of 65,536 random unit vectors (gathered, so a
    billion-float corpus is cheap to generate; every document still pools 100 distinct vectors). Reports the peak
    RSS of this process, ``memory_bytes()``, add throughput (generation excluded) and hybrid search p50/p95
    (``search_encoded``, three modes, weighted, k=10, 32 query tokens)."""
    from m3_rag import HybridStore, M3Output

    rng = np.random.default_rng(0)
    dim, tpd, n, chunk = args.dim, args.tokens, args.docs, args.chunk
    bank = rng.standard_normal((65_536, dim), dtype=np.float32)
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)

    def rows(m: int) -> M3Output:
        dense = rng.standard_normal((m, 1024), dtype=np.float32)
        dense /= np.linalg.norm(dense, axis=1, keepdims=True)
        cols = rng.integers(0, 250_000, (m, 100))
        vals = rng.random((m, 100), dtype=np.float32) * 0.3
        sparse = [dict(zip(c.tolist(), v.tolist())) for c, v in zip(cols, vals)]
        tok = bank[rng.integers(0, len(bank), m * tpd)].reshape(m, tpd, dim)
        return M3Output(dense=dense, sparse=sparse, colbert=list(tok))

    store = HybridStore(colbert_storage=args.codec, colbert_pool_factor=args.pool_factor, show_progress=False)
    if store.colbert_dtype == "pq":
        raise SystemExit("scale: pq trains on the first add; use binary/int8/fp16 here")
    add_s, growth = 0.0, []
    t_all = time.perf_counter()
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        batch = rows(e - s)
        t = time.perf_counter()
        store.add_encoded(batch, ids=[f"d{i}" for i in range(s, e)])
        add_s += time.perf_counter() - t
        del batch
        if e in args.checkpoints or e == n:
            growth.append({"docs": e, "add_docs_per_s": round(e / add_s, 1), "rss_gb": round(rss_gb(), 3),
                           "memory_bytes": store.memory_bytes()})
            print(json.dumps(growth[-1]), file=sys.stderr, flush=True)
    lat = []
    for i in range(args.queries + 2):
        q = rows(1)
        qc = bank[rng.integers(0, len(bank), 32)]
        q = M3Output(dense=q.dense, sparse=[dict(list(q.sparse[0].items())[:16])], colbert=[qc])
        t = time.perf_counter()
        store.search_encoded(q, k=10, modes=("dense", "sparse", "colbert"))
        if i >= 2:  # two warm-ups
            lat.append(time.perf_counter() - t)
    mem = store.memory_bytes()
    out = {"docs": n, "tokens_per_doc": tpd, "dim": dim, "codec": args.codec, "pool_factor": args.pool_factor,
           "memory_bytes": mem, "memory_gb_total": round(sum(mem.values()) / 1e9, 3),
           "colbert_bytes_per_raw_token": round(mem["colbert"] / (n * tpd), 2),
           "peak_rss_gb": round(rss_gb(), 3), "add_seconds": round(add_s, 1), "wall_seconds": round(time.perf_counter() - t_all, 1),
           "add_docs_per_s": round(n / add_s, 1), "growth": growth,
           "hybrid_search_ms_p50": round(1000 * float(np.percentile(lat, 50)), 2),
           "hybrid_search_ms_p95": round(1000 * float(np.percentile(lat, 95)), 2),
           "load_avg_1m_at_end": round(os.getloadavg()[0], 2)}
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    scale = data.get("scale_store", {})
    scale[f"{n}|{args.codec}|pool{args.pool_factor}"] = out
    save("scale_store", scale)
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--cache-dir", type=Path, default=Path("/tmp/m3cache"))
    q.add_argument("--datasets-dir", type=Path, default=REPO.parent / "shared" / "datasets")
    q.add_argument("--collections", nargs="+", default=["med", "cranfield", "cisi", "cacm", "npl", "lisa"])
    q.add_argument("--pool-factors", nargs="+", type=int, default=[1, 2, 3])
    q.add_argument("--codecs", nargs="+", default=[c[0] for c in CODEC_GRID])
    l = sub.add_parser("latency")
    l.add_argument("--dim", type=int, default=1024)
    l.add_argument("--tokens", type=int, default=100)
    l.add_argument("--docs", type=int, default=1000)
    l.add_argument("--candidates", type=int, default=200)
    l.add_argument("--reps", type=int, default=20)
    l.add_argument("--codecs", nargs="+", default=["fp16", "fp32", "int8", "binary", "binary-noscale", "pq-d/16", "pq-d/8"])
    s = sub.add_parser("scale")
    s.add_argument("--docs", type=int, default=10_000)
    s.add_argument("--dim", type=int, default=1024)
    s.add_argument("--tokens", type=int, default=100)
    s.add_argument("--codec", default="binary")
    s.add_argument("--pool-factor", type=int, default=2)
    s.add_argument("--queries", type=int, default=50)
    s.add_argument("--chunk", type=int, default=2000, help="documents per add_encoded call")
    s.add_argument("--checkpoints", type=int, nargs="*", default=[10_000, 100_000],
                   help="also record throughput, RSS and memory_bytes() when the store reaches these sizes")
    args = ap.parse_args()
    {"quality": cmd_quality, "latency": cmd_latency, "scale": cmd_scale}[args.cmd](args)


if __name__ == "__main__":
    main()
