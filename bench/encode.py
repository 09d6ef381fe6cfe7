"""Encode throughput of m3_rag's M3Encoder against FlagEmbedding's BGEM3FlagModel.encode, in one process.

    /work/flagvenv/bin/python bench/encode.py            # with the FlagEmbedding baseline (~4-5 min)
    python bench/encode.py --quick                       # smaller run; the baseline is skipped if not installed

Prints one JSON document. What it measures:

- ``mix``: texts/s and tokens/s on a realistic mix of short and long texts (queries, abstracts, and
  abstracts concatenated up to the 512-token limit, from the shared BEIR collections, or synthetic when
  absent), all three outputs, on a random-weight checkpoint the size of all-MiniLM-L6-v2 (BERT, 6 layers,
  hidden 384, 12 heads, 512 positions, MiniLM tokenizer, both heads) and on a tiny one.
  Contenders: m3_rag with its defaults and FlagEmbedding at its defaults (batch 256) and at batch 16/32/64
  (``flag_best`` is the best of those). Runs are interleaved in a shuffled order and repeated; every
  figure is the median, and ratios compare medians from the same run.
- ``batch_sweep`` / ``length_sweep``: how m3_rag throughput changes with ``batch_size`` and text length.
- ``memory``: peak RSS of a child process encoding 8192-token texts on an XLM-R-like model with 8194
  positions (tiny hidden size), for several ``max_tokens_per_batch`` budgets, and for FlagEmbedding at
  its defaults: the token budget bounds memory.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

DATASETS = ROOT.parent / "shared" / "datasets"


def flag_available() -> bool:
    try:
        import FlagEmbedding  # noqa: F401
    except Exception:
        return False
    return True


# ---------------------------------------------------------------- texts
def _read_jsonl(path: Path, limit: int) -> list[str]:
    out = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            text = (row.get("title", "") + " " + row.get("text", "")).strip()
            if text:
                out.append(text)
            if len(out) >= limit:
                break
    return out


def text_mix(n: int, seed: int = 0) -> tuple[list[str], str]:
    """``n`` texts: 50% queries (~10-25 tokens), 35% abstracts (~50-300), 15% long (hits 512 tokens)."""
    rng = random.Random(seed)
    n_q, n_long = n // 2, max(1, n * 15 // 100)
    n_d = n - n_q - n_long
    if (DATASETS / "cranfield" / "corpus.jsonl").exists():
        queries = _read_jsonl(DATASETS / "cranfield" / "queries.jsonl", 400) + _read_jsonl(
            DATASETS / "cisi" / "queries.jsonl", 400
        )
        docs = _read_jsonl(DATASETS / "cranfield" / "corpus.jsonl", 1400) + _read_jsonl(
            DATASETS / "med" / "corpus.jsonl", 1000
        )
        source = "cranfield+cisi queries, cranfield+med abstracts (shared datasets)"
    else:  # synthetic fallback with a similar length profile
        words = "flow wing boundary layer pressure heat patient cell study results model data method".split()
        queries = [" ".join(rng.choices(words, k=rng.randint(6, 20))) for _ in range(400)]
        docs = [" ".join(rng.choices(words, k=rng.randint(40, 250))) for _ in range(400)]
        source = "synthetic (shared datasets not found)"
    texts = rng.sample(queries, n_q) + rng.sample(docs, n_d)
    texts += [" ".join(rng.sample(docs, 4)) for _ in range(n_long)]
    rng.shuffle(texts)
    return texts, source


# ---------------------------------------------------------------- contenders
def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


CPU_TIMES: dict[str, list[float]] = {}


def run_interleaved(contenders: dict[str, Callable[[], Any]], repeats: int, seed: int = 0) -> dict[str, list[float]]:
    """Wall times of every contender, run ``repeats`` times in a shuffled order each round (the machine is noisy).

    The process CPU time of each run is kept in ``CPU_TIMES`` (with one torch thread it is a steadier
    measure of the work done than the wall time on a shared machine).
    """
    rng = random.Random(seed)
    times: dict[str, list[float]] = {k: [] for k in contenders}
    names = list(contenders)
    for _ in range(repeats):
        rng.shuffle(names)
        for name in names:
            c0, t0 = time.process_time(), time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t0)
            CPU_TIMES.setdefault(name, []).append(time.process_time() - c0)
    return times


def bench_mix(ckpt: Path, texts: list[str], repeats: int, with_flag: bool, flag_kwargs: dict, max_length: int) -> dict:
    from m3_rag import M3Encoder

    enc = M3Encoder.from_pretrained(ckpt, device="cpu")
    n_tokens = sum(len(x) for x in enc.tokenize(texts, max_length))
    contenders: dict[str, Callable[[], Any]] = {
        "m3_rag": lambda: enc.encode(texts, max_length=max_length, show_progress=False),
    }
    if with_flag:
        from FlagEmbedding import BGEM3FlagModel

        flag = BGEM3FlagModel(str(ckpt), use_fp16=False, devices="cpu", **flag_kwargs)
        kw = dict(return_dense=True, return_sparse=True, return_colbert_vecs=True, max_length=max_length)
        contenders["flag_default_b256"] = lambda: flag.encode(texts, **kw)
        for b in (16, 32, 64):
            contenders[f"flag_b{b}"] = lambda b=b: flag.encode(texts, batch_size=b, **kw)
    # warm-up (allocator, lazy init) outside the timings
    enc.encode(texts[:8], max_length=max_length, show_progress=False)
    if with_flag:
        flag.encode(texts[:8], batch_size=8, **kw)
    CPU_TIMES.clear()
    times = run_interleaved(contenders, repeats)
    res: dict[str, Any] = {"n_texts": len(texts), "n_tokens": n_tokens, "max_length": max_length, "runs": {}}
    for name, ts in times.items():
        t, c = median(ts), median(CPU_TIMES[name])
        res["runs"][name] = {
            "median_s": round(t, 4),
            "all_s": [round(x, 4) for x in ts],
            "texts_per_s": round(len(texts) / t, 2),
            "tokens_per_s": round(n_tokens / t, 1),
            "median_cpu_s": round(c, 4),
            "texts_per_cpu_s": round(len(texts) / c, 2),
        }
    if with_flag:
        runs = res["runs"]
        best = max((f"flag_b{b}" for b in (16, 32, 64)), key=lambda k: runs[k]["texts_per_s"])
        best_cpu = max((f"flag_b{b}" for b in (16, 32, 64)), key=lambda k: runs[k]["texts_per_cpu_s"])
        res["flag_best"] = best
        res["ratio_vs_flag_default"] = round(runs["m3_rag"]["texts_per_s"] / runs["flag_default_b256"]["texts_per_s"], 3)
        res["ratio_vs_flag_best"] = round(runs["m3_rag"]["texts_per_s"] / runs[best]["texts_per_s"], 3)
        res["cpu_time_ratio_vs_flag_default"] = round(
            runs["m3_rag"]["texts_per_cpu_s"] / runs["flag_default_b256"]["texts_per_cpu_s"], 3
        )
        res["cpu_time_ratio_vs_flag_best"] = round(runs["m3_rag"]["texts_per_cpu_s"] / runs[best_cpu]["texts_per_cpu_s"], 3)
        res["targets_met"] = {
            ">=1.3x flag default": res["ratio_vs_flag_default"] >= 1.3,
            ">=1.0x flag best of 16/32/64": res["ratio_vs_flag_best"] >= 1.0,
        }
    return res


def bench_batch_sweep(ckpt: Path, texts: list[str], repeats: int, max_length: int) -> dict:
    from m3_rag import M3Encoder

    enc = M3Encoder.from_pretrained(ckpt, device="cpu")
    n_tokens = sum(len(x) for x in enc.tokenize(texts, max_length))
    contenders = {
        f"batch_{b}_no_budget": (
            lambda b=b: enc.encode(texts, batch_size=b, max_tokens_per_batch=1 << 30, max_length=max_length)
        )
        for b in (4, 16, 32, 64, 128)
    }
    for budget in (2048, 4096, 8192, 16384):
        contenders[f"batch_256_budget_{budget}"] = lambda t=budget: enc.encode(
            texts, batch_size=256, max_tokens_per_batch=t, max_length=max_length
        )
    times = run_interleaved(contenders, repeats, seed=1)
    return {
        k: {"texts_per_s": round(len(texts) / median(v), 2), "tokens_per_s": round(n_tokens / median(v), 1)}
        for k, v in times.items()
    }


def bench_length_sweep(ckpt: Path, repeats: int, tokens_per_run: int) -> dict:
    from m3_rag import M3Encoder

    enc = M3Encoder.from_pretrained(ckpt, device="cpu")
    out = {}
    contenders = {}
    meta = {}
    for length in (16, 64, 256, 512):
        n = max(4, tokens_per_run // length)
        texts = [("lorem ipsum dolor sit amet " * (length // 2))] * n  # truncated at `length` tokens
        meta[length] = (n, n * length)
        contenders[f"len_{length}"] = lambda texts=texts, length=length: enc.encode(texts, max_length=length)
    times = run_interleaved(contenders, repeats, seed=2)
    for length, (n, tok) in meta.items():
        t = median(times[f"len_{length}"])
        out[f"len_{length}"] = {"n_texts": n, "texts_per_s": round(n / t, 2), "tokens_per_s": round(tok / t, 1)}
    return out


# ---------------------------------------------------------------- memory (child processes)
_MEMORY_CHILD = r"""
import json, sys
sys.path.insert(0, {tests!r}); sys.path.insert(0, {root!r})
import torch

def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024, 1)

def reset_peak():
    try:  # Linux >= 4.0: reset VmHWM so the peak covers the encode call only
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False

ckpt, mode, value, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
length = int(sys.argv[5]) if len(sys.argv) > 5 else 8192
texts = ["word " * 9000] * n
if mode.endswith("_noarena"):  # probe: ONNX Runtime without its CPU memory arena (not an M3Encoder option)
    import onnxruntime as ort
    class _Opts(ort.SessionOptions):
        def __init__(self):
            super().__init__()
            self.enable_cpu_mem_arena = False
    ort.SessionOptions = _Opts
    mode = mode[: -len("_noarena")]
if mode.startswith("m3"):
    from m3_rag import M3Encoder
    enc = M3Encoder.from_pretrained(ckpt, device="cpu", quantize="int8" if mode.endswith("int8") else None,
                                    backend="onnx" if "onnx" in mode else "torch")
    enc.encode(texts[:1], max_length=64)
    before, was_reset = status("VmRSS"), reset_peak()
    out = enc.encode(texts, max_length=length, max_tokens_per_batch=value, batch_size=256, show_progress=False)
    rows = out.colbert[0].shape[0]
    after = status("VmRSS")
else:
    from FlagEmbedding import BGEM3FlagModel
    m = BGEM3FlagModel(ckpt, use_fp16=False, devices="cpu", colbert_dim=24)
    kw = dict(return_dense=True, return_sparse=True, return_colbert_vecs=True)
    m.encode(texts[:1], max_length=64, batch_size=1, **kw)
    before, was_reset = status("VmRSS"), reset_peak()
    out = m.encode(texts, max_length=length, batch_size=value, **kw)
    rows = out["colbert_vecs"][0].shape[0]
    after = status("VmRSS")
peak = status("VmHWM")
print(json.dumps({{"rss_before_encode_mb": before, "peak_rss_mb": peak, "peak_minus_before_mb": round(peak - before, 1),
                  "rss_after_encode_mb": after, "peak_reset_before_encode": was_reset, "colbert_rows": rows}}))
"""


def bench_memory_lengths(tmp: Path, lengths: list[int]) -> dict:
    """Peak RSS growth of one text of each length (in ``lengths``) through torch fp32, torch int8 and ONNX
    (fp32 and int8, with ONNX Runtime's CPU arena as M3Encoder opens it, and with the arena off): shows how
    attention memory scales with length on each path. Same 8194-position, hidden-32, 2-head model."""
    from tiny_checkpoint import make_tiny_xlmr

    ckpt = make_tiny_xlmr(tmp / "xlmr8k", max_position=8194, hidden=32, layers=2, heads=2)
    script = tmp / "memory_child.py"
    script.write_text(_MEMORY_CHILD.format(tests=str(ROOT / "tests"), root=str(ROOT)))
    res: dict[str, Any] = {"model": "XLM-R, 8194 positions, hidden 32, 2 layers, 2 heads", "n_texts": 1}
    for mode in ("m3", "m3int8", "m3onnx", "m3onnx_int8", "m3onnx_noarena", "m3onnx_int8_noarena"):
        for length in lengths:
            proc = subprocess.run(
                [sys.executable, str(script), str(ckpt), mode, "8192", "1", str(length)],
                capture_output=True, text=True, timeout=900,
            )
            key = f"{mode} {length}"
            if proc.returncode != 0:
                res[key] = {"error": proc.stderr.strip().splitlines()[-1:]}
            else:
                res[key] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"[memory] {key}: {res[key]}", file=sys.stderr, flush=True)
    return res


def bench_memory(tmp: Path, n_texts: int, with_flag: bool) -> dict:
    from tiny_checkpoint import make_tiny_xlmr

    ckpt = make_tiny_xlmr(tmp / "xlmr8k", max_position=8194, hidden=32, layers=2, heads=2)
    script = tmp / "memory_child.py"
    script.write_text(_MEMORY_CHILD.format(tests=str(ROOT / "tests"), root=str(ROOT)))
    runs: list[tuple[str, str, int]] = [
        ("m3_rag default budget 8192 (1 text/batch)", "m3", 8192),
        ("m3_rag budget 16384 (2 texts/batch)", "m3", 16384),
        ("m3_rag budget 65536 (all 4 texts in one batch)", "m3", 65536),
        ("m3_rag int8, default budget 8192", "m3int8", 8192),
        ("m3_rag onnx fp32, default budget 8192", "m3onnx", 8192),
        ("m3_rag onnx int8, default budget 8192", "m3onnx_int8", 8192),
    ]
    if with_flag:
        runs.append(("flag default batch 256", "flag", 256))
    res: dict[str, Any] = {"model": "XLM-R, 8194 positions, hidden 32, 2 layers", "n_texts": n_texts, "text_tokens": 8192}
    for label, mode, value in runs:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, str(script), str(ckpt), mode, str(value), str(n_texts)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            res[label] = {"error": proc.stderr.strip().splitlines()[-1:]}
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["seconds"] = round(time.perf_counter() - t0, 1)
        res[label] = row
    return res


# ---------------------------------------------------------------- fast numeric paths (child processes)
_FAST_CHILD = r"""
import json, statistics, sys, time
sys.path.insert(0, {tests!r}); sys.path.insert(0, {root!r})
import torch
def vm_hwm_mb():  # this process's peak RSS (ru_maxrss would include the parent's peak at fork time)
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
ckpt, config, texts_file, max_length, repeats, threads, cache = sys.argv[1:8]
max_length, repeats, threads = int(max_length), int(repeats), int(threads)
torch.set_num_threads(threads)
texts = json.load(open(texts_file))
t0 = time.perf_counter()
if config.startswith("flag_b"):
    from FlagEmbedding import BGEM3FlagModel
    colbert_dim = torch.load(ckpt + "/colbert_linear.pt", weights_only=True)["weight"].shape[0]
    m = BGEM3FlagModel(ckpt, use_fp16=False, devices="cpu", colbert_dim=colbert_dim)
    b = int(config[len("flag_b"):])
    kw = dict(return_dense=True, return_sparse=True, return_colbert_vecs=True, max_length=max_length, batch_size=b)
    run = lambda: m.encode(texts, **kw)
    warm = lambda: m.encode(texts[:2], **{{**kw, "batch_size": 2}})
else:
    from m3_rag import M3Encoder
    quantize = "int8" if config.endswith("int8") else None
    backend = "onnx" if config.startswith("onnx") else "torch"
    enc = M3Encoder.from_pretrained(ckpt, device="cpu", quantize=quantize, backend=backend, num_threads=threads,
                                    onnx_cache_dir=cache)
    run = lambda: enc.encode(texts, max_length=max_length, show_progress_bar=False)
    warm = lambda: enc.encode(texts[:2], max_length=max_length, show_progress_bar=False)
load_s = time.perf_counter() - t0
times, cpu = [], []
if repeats > 0:  # repeats == 0: only load (e.g. to build the ONNX export cache before the timed rounds)
    warm()
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        run()
        times.append(time.perf_counter() - w0); cpu.append(time.process_time() - c0)
print(json.dumps({{"load_s": round(load_s, 2), "all_s": [round(t, 3) for t in times],
                  "all_cpu_s": [round(t, 3) for t in cpu], "peak_rss_mb": vm_hwm_mb()}}))
"""

FAST_CONFIGS = ("fp32", "int8", "onnx_fp32", "onnx_int8")


def make_bge_m3_size(out: Path, vocab: int = 32000) -> Path:
    """XLM-RoBERTa-large shape (24 layers, hidden 1024, 16 heads, intermediate 4096, 8194 positions), random
    weights, BGE-M3 heads (ColBERT 1024->1024, sparse 1024->1), with a ``vocab``-row embedding instead of
    250,002 (saves ~0.9 GB; the forward cost does not depend on it). Tokenizer: the 2,002-id XLM-R-style test one."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    import tiny_checkpoint as tc

    out.mkdir(parents=True, exist_ok=True)
    cfg = XLMRobertaConfig(
        vocab_size=vocab, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        max_position_embeddings=8194, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )
    model = XLMRobertaModel(cfg)
    tc._seeded_init(model, 0)
    with __import__("torch").no_grad():  # BERT-like init scale keeps a 24-layer random stack numerically sane
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.mul_(0.02 / tc.WEIGHT_STD)
    tc._save(model, out)
    for name in tc.XLMR_TOKENIZER_FILES:
        __import__("shutil").copy(tc.XLMR_TOKENIZER_DIR / name, out / name)
    tc._write_heads(out, 1024, 1024, True, True, 0)
    del model
    return out


def summarise_fast(raw: dict[str, list[dict]], export: dict[str, Any], n_texts: int, n_tokens: int) -> dict:
    """Medians over every timed encode of each contender (``raw``: the child rows of every round) and the
    same-run ratios, by process CPU time (``*_cpu``) and by wall time (``*_wall``)."""
    runs_out: dict[str, Any] = {}
    res: dict[str, Any] = {"runs": runs_out}
    for config, rows in raw.items():
        errors = [row["error"] for row in rows if "error" in row]
        if errors:
            runs_out[config] = {"error": errors[0]}
            continue
        wall = [t for row in rows for t in row["all_s"]]
        cpu = [t for row in rows for t in row["all_cpu_s"]]
        t, c = median(wall), median(cpu)
        runs_out[config] = {
            "median_s": round(t, 3),
            "median_cpu_s": round(c, 3),
            "all_s": wall,
            "all_cpu_s": cpu,
            "texts_per_s": round(n_texts / t, 2),
            "tokens_per_s": round(n_tokens / t, 1),
            "texts_per_cpu_s": round(n_texts / c, 2),
            "tokens_per_cpu_s": round(n_tokens / c, 1),
            "load_s": [row["load_s"] for row in rows],
            "peak_rss_mb": max(row["peak_rss_mb"] for row in rows),
            **export.get(config, {}),
        }
    runs = {k: v for k, v in runs_out.items() if "error" not in v}
    if "fp32" in runs:
        for key, suffix in (("texts_per_cpu_s", "_cpu"), ("texts_per_s", "_wall")):
            ours = {k: runs[k][key] for k in FAST_CONFIGS if k in runs}
            fastest = max(ours, key=ours.get)
            res["fastest" + suffix] = fastest
            res["fastest_vs_fp32" + suffix] = round(ours[fastest] / runs["fp32"][key], 3)
            for k in ours:
                res[f"{k}_vs_fp32{suffix}"] = round(ours[k] / runs["fp32"][key], 3)
            flags = {k: v[key] for k, v in runs.items() if k.startswith("flag_b")}
            if flags:
                best = max(flags, key=flags.get)
                res["flag_best" + suffix] = best
                res["fastest_vs_flag_best" + suffix] = round(ours[fastest] / flags[best], 3)
                res["fp32_vs_flag_best" + suffix] = round(runs["fp32"][key] / flags[best], 3)
    return res


def bench_fast_paths(
    tmp: Path,
    texts: list[str],
    models: dict[str, tuple[Path, int, int]],
    repeats: int,
    threads: int,
    flag_python: str | None,
    rounds: int = 1,
    on_model: Callable[[str, dict], None] | None = None,
) -> dict:
    """Each numeric path (and FlagEmbedding at batch 16/32/64) in its own child process, ``rounds`` times in
    a shuffled order per round (the machine is shared and noisy), ``repeats`` timed encodes of ``texts``
    per child after a warm-up. Figures are medians over all timed encodes of a contender: wall time
    (``texts_per_s``) and process CPU time (``texts_per_cpu_s``; all threads of the child, so with one
    thread it measures the work done, not the waiting for a core). ``peak_rss_mb`` is the child's
    ``VmHWM`` (largest over rounds); the ONNX exports are built in a separate child first, whose peak is
    ``export_peak_rss_mb``, so the timed ONNX children open a warm cache."""
    from m3_rag import M3Encoder

    script = tmp / "fast_child.py"
    script.write_text(_FAST_CHILD.format(tests=str(ROOT / "tests"), root=str(ROOT)))
    cache = tmp / "onnx_cache"
    out: dict[str, Any] = {}
    rng = random.Random(0)

    def child(python: str, ckpt: Path, config: str, tf: Path, max_length: int, reps: int) -> dict:
        proc = subprocess.run(
            [python, str(script), str(ckpt), config, str(tf), str(max_length), str(reps), str(threads), str(cache)],
            capture_output=True, text=True, timeout=3600,
        )
        if proc.returncode != 0:
            return {"error": proc.stderr.strip().splitlines()[-3:]}
        return json.loads(proc.stdout.strip().splitlines()[-1])

    for label, (ckpt, n_texts, max_length) in models.items():
        sub = texts[:n_texts]
        tf = tmp / f"texts_{label}.json"
        tf.write_text(json.dumps(sub))
        n_tokens = sum(len(x) for x in M3Encoder.from_pretrained(ckpt, device="cpu").tokenize(sub, max_length))
        configs = [(c, sys.executable) for c in FAST_CONFIGS]
        if flag_python:
            # batch sizes >= the number of texts all run the same single batch: keep the smallest of them
            sizes = [b for b in (16, 32, 64) if b < len(sub)] + [b for b in (16, 32, 64) if b >= len(sub)][:1]
            configs += [(f"flag_b{b}", flag_python) for b in sizes]
        res: dict[str, Any] = {"n_texts": len(sub), "n_tokens": n_tokens, "max_length": max_length, "rounds": rounds,
                               "repeats_per_round": repeats, "runs": {}}
        export: dict[str, Any] = {}
        for config in ("onnx_fp32", "onnx_int8"):  # build the export cache outside the timed children
            row = child(sys.executable, ckpt, config, tf, max_length, 0)
            export[config] = row if "error" in row else {"export_s": row["load_s"], "export_peak_rss_mb": row["peak_rss_mb"]}
            print(f"[fast] {label} export {config}: {export[config]}", file=sys.stderr, flush=True)
        raw: dict[str, list[dict]] = {c: [] for c, _ in configs}
        for r in range(rounds):
            order = list(configs)
            rng.shuffle(order)
            for config, python in order:
                row = child(python, ckpt, config, tf, max_length, repeats)
                raw[config].append(row)
                print(f"[fast] {label} round {r} {config}: {row}", file=sys.stderr, flush=True)
        res.update(summarise_fast(raw, export, len(sub), n_tokens))
        print(f"[fast] {label} summary: {json.dumps(res)}", file=sys.stderr, flush=True)
        if on_model is not None:
            on_model(label, res)
        out[label] = res
    return out


def main_fast(args: argparse.Namespace) -> dict:
    import torch
    import transformers

    from tiny_checkpoint import make_tiny_bert

    flag_python = args.flag_python
    if flag_python is None and flag_available():
        flag_python = sys.executable
    report: dict[str, Any] = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "threads": args.threads or 1,
        "cpu_count": os.cpu_count(),
        "load_avg_start": list(os.getloadavg()),
        "flag_python": flag_python,
        "notes": ["bge_m3_size: XLM-R-large shape, random weights, 32,000-row vocabulary instead of 250,002 "
                  "(forward cost unchanged, ~0.9 GB less memory), 2,002-id test tokenizer"],
    }
    try:
        import onnxruntime

        report["versions"]["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    texts, source = text_mix(max(args.n_texts, args.bge_texts))
    report["texts"] = source
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        wanted = set(args.models)
        models: dict[str, tuple[Path, int, int]] = {}
        if "tiny" in wanted:
            models["tiny"] = (make_tiny_bert(tmp / "tiny"), args.n_texts, 128)
        if "minilm_size" in wanted:
            models["minilm_size"] = (
                make_tiny_bert(tmp / "minilm_size", hidden=384, layers=6, heads=12, intermediate=1536, max_position=512,
                               colbert_dim=None),
                args.n_texts,
                512,
            )
        if "bge_m3_size" in wanted and args.bge_texts > 0:
            models["bge_m3_size"] = (make_bge_m3_size(tmp / "bge_m3_size"), args.bge_texts, 512)
        report["fast_paths"] = {}

        def on_model(label: str, res: dict) -> None:  # keep what is done if a later model is interrupted
            report["fast_paths"][label] = res
            if args.out:
                Path(args.out).write_text(json.dumps(report, indent=1))

        bench_fast_paths(tmp, texts, models, args.repeats, args.threads or 1, flag_python, rounds=args.rounds,
                         on_model=on_model)
    report["load_avg_end"] = list(os.getloadavg())
    report["total_seconds"] = round(time.perf_counter() - t_start, 1)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


# ---------------------------------------------------------------- main
# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-texts", type=int, default=64, help="texts in the length mix (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions per contender (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="fewer texts and repeats, no sweeps on the big model")
    parser.add_argument("--no-flag", action="store_true", help="skip the FlagEmbedding baseline")
    parser.add_argument("--no-memory", action="store_true", help="skip the 8192-token memory runs")
    parser.add_argument("--memory-texts", type=int, default=4, help="8192-token texts in the memory runs")
    parser.add_argument("--fast-paths", action="store_true", help="only the fp32/int8/ONNX comparison (child processes)")
    parser.add_argument("--bge-texts", type=int, default=32, help="texts for the BGE-M3-size model in --fast-paths (0: skip)")
    parser.add_argument("--models", nargs="+", default=["tiny", "minilm_size", "bge_m3_size"],
                        choices=["tiny", "minilm_size", "bge_m3_size"], help="--fast-paths: checkpoints to run")
    parser.add_argument("--rounds", type=int, default=2, help="--fast-paths: shuffled rounds of child processes")
    parser.add_argument("--flag-python", default=None, help="python of a venv with FlagEmbedding, for --fast-paths")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--memory-only", action="store_true", help="only the 8192-token memory runs")
    parser.add_argument("--memory-lengths", type=int, nargs="+", default=None,
                        help="only the per-length memory runs: one text of each length, every numeric path")
    args = parser.parse_args(argv)
    if args.fast_paths:
        return main_fast(args)
    if args.memory_lengths:
        with tempfile.TemporaryDirectory() as tmp_name:
            report = {"memory_by_length": bench_memory_lengths(Path(tmp_name), args.memory_lengths)}
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1))
        print(json.dumps(report, indent=1))
        return report
    if args.memory_only:
        with tempfile.TemporaryDirectory() as tmp_name:
            report = {"memory": bench_memory(Path(tmp_name), args.memory_texts, not args.no_flag and flag_available())}
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1))
        print(json.dumps(report, indent=1))
        return report

    import torch
    import transformers

    from tiny_checkpoint import make_tiny_bert

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.n_texts, args.repeats = min(args.n_texts, 48), min(args.repeats, 2)
    with_flag = not args.no_flag and flag_available()
    report: dict[str, Any] = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_start": list(os.getloadavg()),
        "notes": [],
    }
    if with_flag:
        import FlagEmbedding

        report["versions"]["FlagEmbedding"] = getattr(FlagEmbedding, "__version__", "installed")
    else:
        report["notes"].append(
            "FlagEmbedding baseline skipped: " + ("--no-flag given" if args.no_flag else "FlagEmbedding is not installed")
        )
    texts, source = text_mix(args.n_texts)
    report["texts"] = source
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        minilm = make_tiny_bert(
            tmp / "minilm_size", hidden=384, layers=6, heads=12, intermediate=1536, max_position=512, colbert_dim=None
        )
        tiny = make_tiny_bert(tmp / "tiny")
        report["minilm_size"] = bench_mix(minilm, texts, args.repeats, with_flag, {}, max_length=512)
        report["tiny"] = bench_mix(tiny, texts, args.repeats, with_flag, {"colbert_dim": 24}, max_length=128)
        sweep_ckpt = tiny if args.quick else minilm
        report["batch_sweep"] = {
            "model": "tiny" if args.quick else "minilm_size",
            **bench_batch_sweep(sweep_ckpt, texts[: max(16, len(texts) // 2)], max(1, args.repeats - 1), 512),
        }
        report["length_sweep"] = {
            "model": "tiny" if args.quick else "minilm_size",
            **bench_length_sweep(sweep_ckpt, max(1, args.repeats - 1), 4096 if args.quick else 8192),
        }
        if not args.no_memory:
            report["memory"] = bench_memory(tmp, args.memory_texts, with_flag)
    report["load_avg_end"] = list(os.getloadavg())
    report["total_seconds"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
