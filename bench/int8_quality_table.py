"""Markdown table of int8 vs fp32 quality from ``bench/minilm_m3_eval.py table --json`` results.

    python bench/int8_quality_table.py FP32.json LABEL=INT8.json [LABEL=INT8.json ...]

One row per retrieval mode: the fp32 mean nDCG@10, then for each int8 variant its mean, its delta to fp32
and its worst collection delta. Prints the table (used for docs/encoder.md and the README).
"""

from __future__ import annotations

import json
import sys

MODES = ("dense", "sparse", "colbert", "dense+sparse (weighted)", "all three (weighted)",
         "dense+sparse (RRF)", "all three (RRF)")


def table(fp32_path: str, variants: list[tuple[str, str]]) -> str:
    """The markdown table comparing each ``(label, json path)`` variant with the fp32 result."""
    ref = json.load(open(fp32_path, encoding="utf-8"))["ndcg@10"]
    runs = [(label, json.load(open(p, encoding="utf-8"))["ndcg@10"]) for label, p in variants]
    head = ["mode", "fp32"]
    for label, _ in runs:
        head += [label, "Δ", "worst collection Δ"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for mode in MODES:
        row = [mode, f"{ref[mode]['mean']:.4f}"]
        for _, run in runs:
            deltas = {c: run[mode][c] - ref[mode][c] for c in ref[mode] if c != "mean"}
            worst = min(deltas, key=deltas.get)
            row += [f"{run[mode]['mean']:.4f}", f"{run[mode]['mean'] - ref[mode]['mean']:+.4f}",
                    f"{worst} {deltas[worst]:+.4f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 3 or any("=" not in a for a in sys.argv[2:]):
        sys.exit(__doc__)
    print(table(sys.argv[1], [tuple(a.split("=", 1)) for a in sys.argv[2:]]))
