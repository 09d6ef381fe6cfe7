"""Run the reliability suite (tests/test_reliability.py) and print its counts as a Markdown table.

    python scripts/reliability_report.py [--examples N]

Each case ends in a correct result or a clear error (``TypeError``/``ValueError``, or ``FileNotFoundError``
for a deleted file); the suite fails on anything else, so "other" is always 0 when it passes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=60, help="hypothesis examples per fuzz test (CI default: 60)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "counts.json"
        env = dict(os.environ, M3RAG_FUZZ_EXAMPLES=str(args.examples), M3RAG_RELIABILITY_REPORT=str(report))
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_reliability.py"],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-2000:])
            return proc.returncode
        counts = json.loads(report.read_text())
    print(f"| suite ({args.examples} examples per fuzz test) | cases tried | clear errors | correct results | other |")
    print("| --- | ---: | ---: | ---: | ---: |")
    total = {"cases": 0, "clear errors": 0, "correct results": 0}
    for suite, c in counts.items():
        other = c["cases"] - c.get("clear errors", 0) - c.get("correct results", 0)
        print(f"| {suite} | {c['cases']} | {c.get('clear errors', 0)} | {c.get('correct results', 0)} | {other} |")
        for key in total:
            total[key] += c.get(key, 0)
    print(f"| **total** | {total['cases']} | {total['clear errors']} | {total['correct results']} | "
          f"{total['cases'] - total['clear errors'] - total['correct results']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
