"""Shared by the search snapshot generator and its test: collections, store build, the run grid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"
K = 10
MODE_SETS = (
    ("dense",), ("sparse",), ("colbert",),
    ("dense", "sparse"), ("dense", "colbert"), ("sparse", "colbert"), ("dense", "sparse", "colbert"),
)
FUSIONS = ("weighted", "rrf", "dbsf")
FILTER = {"bucket": {"$in": [0, 2]}}
RUNS = [
    (modes, fusion, flt)
    for modes in MODE_SETS
    for fusion in (FUSIONS if len(modes) > 1 else ("weighted",))
    for flt in (None, FILTER)
]


def run_key(modes: tuple[str, ...], fusion: str, flt: Any) -> str:
    return f"{'+'.join(modes)}|{fusion}|{'filter' if flt else 'all'}"


def load_collection(name: str, n_docs: int | None, n_queries: int) -> tuple[list, list]:
    folder = DATASETS / name
    docs = []
    with open(folder / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            docs.append((str(row["_id"]), (row.get("title", "") + " " + row.get("text", "")).strip()))
            if n_docs is not None and len(docs) >= n_docs:
                break
    queries = []
    with open(folder / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            queries.append((str(row["_id"]), row["text"]))
            if len(queries) >= n_queries:
                break
    return docs, queries


def build_store(docs: list, queries: list, store_cls: Any = None, **store_kwargs: Any) -> tuple[Any, Any, Any]:
    import torch

    from m3_rag import HybridStore, M3Encoder

    torch.set_num_threads(1)
    enc = M3Encoder.from_pretrained("minilm-m3", device="cpu")
    # The snapshot pins the store, not the model: encode with the sparse rule in force when it was taken
    # (FlagEmbedding's: cls, eos, pad and unk dropped), not minilm-m3's later "drop every special token".
    tok = enc.tokenizer
    enc.unused_token_ids = frozenset(
        int(t) for t in (getattr(tok, f"{n}_token_id", None) for n in ("cls", "eos", "pad", "unk")) if t is not None
    )
    store = HybridStore(enc, show_progress=False, **store_kwargs)
    store.add([t for _, t in docs], ids=[i for i, _ in docs], metadatas=[{"bucket": j % 3} for j in range(len(docs))])
    qenc = enc.encode_queries([t for _, t in queries])
    return store, enc, qenc


def search_run(store: Any, qenc: Any, modes: tuple[str, ...], fusion: str, flt: Any) -> list:
    from m3_rag.fusion import DEFAULT_WEIGHTS

    # FlagEmbedding's weights, explicitly: the snapshot was taken when they were the store default.
    weights = {m: DEFAULT_WEIGHTS[m] for m in modes} if fusion == "weighted" else None
    res = store.search_encoded_batch(qenc, k=K, modes=modes, fusion=fusion, filter=flt, weights=weights)
    return [[[h.id, float(h.score), {m: float(v) for m, v in sorted(h.scores.items())}] for h in hits] for hits in res]
