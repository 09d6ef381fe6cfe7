"""Run ``m3-rag eval --json`` on several BEIR collections and build the README results table.

Usage:
    python bench/eval_table.py --model minilm-m3 [--datasets-dir ../shared/datasets]
        [--datasets cranfield cisi med cacm npl lisa] [--markdown results.md] [-- EXTRA EVAL ARGS]

Each collection is evaluated by the ``m3-rag eval`` command itself (a subprocess), so the table holds exactly
the numbers that command prints. Prints one JSON object on stdout: ``{"model", "datasets", "runs": [the
eval --json outputs], "seconds": {dataset: wall time}}``; ``--markdown`` also writes an nDCG@10 table (one row
per mode and fusion, one column per collection, plus the mean) and a Recall@100 / MRR@10 table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_DATASETS = ("cranfield", "cisi", "med", "cacm", "npl", "lisa")
REPO = Path(__file__).resolve().parents[1]


def _command() -> list[str]:
    script = Path(sys.executable).parent / "m3-rag"
    if script.exists():
        return [str(script)]
    found = shutil.which("m3-rag")
    return [found] if found else [sys.executable, "-m", "m3_rag.cli"]


def _label(row: dict) -> str:
    modes = "+".join(row["modes"])
    return modes if row["fusion"] is None else f"{modes} ({row['fusion']})"


def markdown(runs: list[dict], metrics: tuple[str, ...] = ("ndcg@10",)) -> str:
    """A markdown table per metric: rows = mode/fusion, columns = collections + mean."""
    names = [r["dataset"] for r in runs]
    labels: list[str] = []
    for r in runs:
        for row in r["results"]:
            if _label(row) not in labels:
                labels.append(_label(row))
    out = []
    for metric in metrics:
        out.append(f"**{metric}**\n")
        out.append("| modes (fusion) | " + " | ".join(names) + " | mean |")
        out.append("|---|" + "---:|" * (len(names) + 1))
        for label in labels:
            values = []
            for r in runs:
                match = [row[metric] for row in r["results"] if _label(row) == label]
                values.append(match[0] if match else None)
            cells = [f"{v:.3f}" if v is not None else "–" for v in values]
            mean = sum(values) / len(values) if all(v is not None for v in values) else None  # type: ignore[arg-type]
            out.append(f"| {label} | " + " | ".join(cells) + f" | {mean:.3f} |" if mean is not None else f"| {label} | " + " | ".join(cells) + " | – |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--datasets-dir", default=str(REPO.parent / "shared" / "datasets"))
    parser.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS))
    parser.add_argument("--markdown", default=None, help="write the markdown tables here")
    parser.add_argument("extra", nargs="*", help="extra arguments for m3-rag eval (after --)")
    args = parser.parse_args(argv)
    runs, seconds = [], {}
    for name in args.datasets:
        cmd = _command() + ["eval", str(Path(args.datasets_dir) / name), "--model", args.model, "--json", "--quiet", *args.extra]
        print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
        t = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        seconds[name] = round(time.perf_counter() - t, 1)
        if proc.returncode != 0:
            print(f"m3-rag eval failed on {name} (exit {proc.returncode})", file=sys.stderr)
            return proc.returncode
        runs.append(json.loads(proc.stdout))
        if args.markdown:  # rewritten after every collection, so a time-boxed run keeps what it finished
            Path(args.markdown).write_text(
                f"Model `{args.model}`; command: `m3-rag eval DATASET --model {args.model} --json"
                f"{' ' + ' '.join(args.extra) if args.extra else ''}` per collection (bench/eval_table.py).\n\n"
                + markdown(runs, ("ndcg@10", "recall@100", "mrr@10"))
            )
    result = {"model": args.model, "datasets": args.datasets, "runs": runs, "seconds": seconds}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
