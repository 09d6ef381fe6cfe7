"""LlamaIndex index build with M3Embedding over M3VectorStore, against the store-only path, in one process.

    python bench/llama_index_build.py                  # 100 Cranfield documents, minilm-m3, 3 repeats
    python bench/llama_index_build.py --docs 50 --repeats 1

Prints one JSON document. Contenders, each over the same nodes and a fresh store, interleaved and repeated
(figures are medians; the ratio compares medians from this run):

- ``index_build``: ``VectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=...),
  embed_model=M3Embedding(model=encoder))``, the path docs/llama_index.md shows.
- ``store_add``: ``vector_store.add(nodes)`` then ``VectorStoreIndex.from_vector_store(vector_store,
  embed_model=...)``, which encodes each node once by construction.

``backbone_texts`` counts the texts that went through the backbone in each path (one per node when the
embedding's pass is handed to the store).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cranfield" / "corpus.jsonl"
if not DATA.exists():
    DATA = Path("/work/shared/datasets/cranfield/corpus.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="minilm-m3")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode

    from m3_rag import M3Encoder
    from m3_rag.llama_index import M3Embedding, M3VectorStore
    from m3_rag.store import HybridStore

    rows = []
    with open(DATA, encoding="utf-8") as fh:
        for line in fh:
            rows.append(json.loads(line))
            if len(rows) == args.docs:
                break
    nodes = [TextNode(id_=r["_id"], text=(r.get("title", "") + "\n\n" + r["text"]).strip()) for r in rows]
    encoder = M3Encoder.from_pretrained(args.model, device="cpu")
    forward = encoder.backbone.forward
    counted = [0]

    def counting(*a, **kw):
        counted[0] += int(kw["input_ids"].shape[0])
        return forward(*a, **kw)

    encoder.backbone.forward = counting
    embed = M3Embedding(model=encoder)

    def index_build() -> None:
        vs = M3VectorStore(store=HybridStore(encoder, show_progress=False))
        VectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=vs), embed_model=embed)

    def store_add() -> None:
        vs = M3VectorStore(store=HybridStore(encoder, show_progress=False))
        vs.add(nodes)
        VectorStoreIndex.from_vector_store(vs, embed_model=embed)

    contenders = {"index_build": index_build, "store_add": store_add}
    index_build()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in contenders}
    texts: dict[str, int] = {}
    for rep in range(args.repeats):
        for name in (list(contenders) if rep % 2 == 0 else list(reversed(contenders))):
            counted[0] = 0
            t0 = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t0)
            texts[name] = counted[0]
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "model": args.model, "nodes": len(nodes), "repeats": args.repeats, "threads": args.threads,
        "seconds_median": {k: round(v, 3) for k, v in med.items()},
        "seconds_all": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "backbone_texts": texts,
        "ratio_index_build_over_store_add": round(med["index_build"] / med["store_add"], 3),
    }, indent=2))


if __name__ == "__main__":
    main()
