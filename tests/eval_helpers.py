"""A small BEIR-format collection written on the fly, shared by test_eval.py and test_cli.py."""

from __future__ import annotations

import json
from pathlib import Path

DOCS = [
    ("d1", "Paris", "Paris is the capital of France."),
    ("d2", "", "Berlin is the capital of Germany."),
    ("d3", "Plants", "Photosynthesis turns sunlight into sugar."),
    ("d4", "Cells", "Mitochondria produce the energy of a cell."),
    ("d5", "", "Python is a readable programming language."),
    ("d6", "Rust", "Rust is a memory-safe systems language."),
    ("d7", "Mountains", "Mount Everest is the highest mountain."),
    ("d8", "", "Coffee is brewed from roasted beans."),
    ("q3", "Self", "A document that shares its id with query q3 and repeats it: which language is memory safe?"),
    ("d10", "  Spaces  ", "  padded text  "),
]
QUERIES = [
    ("q1", "capital of France"),
    ("q2", "how do plants make sugar"),
    ("q3", "which language is memory safe"),
    ("q4", "highest mountain on earth"),
    ("q5", "a query nobody judged"),
    ("q6", "coffee beans"),
]
QRELS = [
    ("q1", "d1", 2),
    ("q1", "d2", 0),
    ("q2", "d3", 1),
    ("q3", "d6", 1),
    ("q3", "q3", 1),  # judged, but excluded from the ranking by the BEIR convention
    ("q4", "d7", 1),
    ("q6", "d8", 1),
    ("q6", "missing-doc", 1),  # a judged document absent from the corpus still counts for recall
]


def write_beir(root: Path, *, docs=DOCS, queries=QUERIES, qrels=QRELS, split: str = "test") -> Path:
    """Write corpus.jsonl, queries.jsonl and qrels/<split>.tsv under ``root``; returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / "corpus.jsonl").open("w") as fh:
        for doc_id, title, text in docs:
            fh.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with (root / "queries.jsonl").open("w") as fh:
        for qid, text in queries:
            fh.write(json.dumps({"_id": qid, "text": text}) + "\n")
    (root / "qrels").mkdir(exist_ok=True)
    with (root / "qrels" / f"{split}.tsv").open("w") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for qid, did, score in qrels:
            fh.write(f"{qid}\t{did}\t{score}\n")
    return root
