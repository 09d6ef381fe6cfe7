"""Does a refactor keep the speed? Runs `bench/search.py` of an old checkout and of this one, alternately, in one run.

Both copies run on the same machine, interleaved round by round (old, new, old, new, ...) so load hits them
alike, with the same data (the synthetic generator is seeded). For every metric the median over the rounds is
reported for old and new, with the ratio new/old; the check passes when every ratio is within ``--tolerance``
(default 5%) in the bad direction.

    git worktree add --detach /tmp/old b4912b9        # the pre-refactor commit
    python bench/refactor_check.py --old /tmp/old --rounds 3

Timers read CPU time by default (``--clock cpu``, see ``_CPU_CLOCK``): on a shared machine wall time mostly
measures the other jobs.

Metrics: the store's own p50 for dense-only, sparse-only and hybrid search and per mode in the scaling table,
the store-over-baseline ratios that `search.py` reports, and `add_encoded` docs per CPU-second.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

# (json path, label, lower_is_better)
METRICS = [
    (("dense_only", "store", "p50_ms"), "dense-only search p50 (ms)", True),
    (("dense_only", "ratio_store_over_faiss"), "dense-only ratio store / FAISS flat", True),
    (("sparse_only", "store", "p50_ms"), "sparse-only search p50 (ms)", True),
    (("sparse_only", "speed_ratio_baseline_over_store"), "sparse-only speed ratio baseline / store", False),
    (("hybrid", 0, "store", "p50_ms"), "hybrid 10k (fp16 ColBERT) search p50 (ms)", True),
    (("hybrid", 1, "store", "p50_ms"), "hybrid 100k (int8 ColBERT) search p50 (ms)", True),
    (("scaling", -1, "dense", "p50_ms"), "scaling largest: dense p50 (ms)", True),
    (("scaling", -1, "sparse", "p50_ms"), "scaling largest: sparse p50 (ms)", True),
    (("scaling", -1, "dense+sparse", "p50_ms"), "scaling largest: dense+sparse p50 (ms)", True),
    (("add_encoded_throughput", "docs_per_cpu_s"), "add_encoded dense+sparse docs per CPU-s", False),
    (("add_encoded_throughput", "docs_per_s"), "add_encoded dense+sparse docs/s (wall)", False),
]


# ``--clock cpu``: the same harness change in both copies -- every timer reads this process's CPU time, which a
# machine shared with other jobs inflates far less than wall time; one thread per library keeps it comparable.
_CPU_CLOCK = "import runpy, sys, time; time.perf_counter = time.process_time; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"


def run(tree: str, sections: str, extra: list[str], clock: str) -> dict[str, Any]:
    script = os.path.join(tree, "bench", "search.py")
    env = dict(os.environ)
    if clock == "cpu":
        cmd = [sys.executable, "-c", _CPU_CLOCK, script, "--sections", sections, *extra]
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    else:
        cmd = [sys.executable, script, "--sections", sections, *extra]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tree, env=env).stdout
    res: dict[str, Any] = {}
    for line in out.splitlines():
        if line.startswith("{"):
            res.update({k: v for k, v in json.loads(line).items() if k not in ("machine", "quick", "section_wall_s", "max_rss_gb")})
    return res


def pick(res: Any, path: tuple) -> float | None:
    for key in path:
        try:
            res = res[key]
        except (KeyError, IndexError, TypeError):
            return None
    return float(res)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="a checkout of the old commit (git worktree add --detach DIR COMMIT)")
    ap.add_argument("--new", default=os.path.dirname(HERE), help="the new checkout (default: this one)")
    ap.add_argument("--sections", default="dense,sparse,hybrid,scaling,throughput")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--quick", action="store_true", help="pass --quick to search.py (smoke run)")
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu (default): CPU time, one thread per library, robust on a shared machine; wall: as search.py")
    args = ap.parse_args()
    extra = ["--quick"] if args.quick else ["--sizes", args.sizes]
    runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    for r in range(args.rounds):
        order = ("old", "new") if r % 2 == 0 else ("new", "old")
        for name in order:
            runs[name].append(run(getattr(args, name), args.sections, extra, args.clock))
            print(f"round {r + 1}/{args.rounds}: {name} done", file=sys.stderr, flush=True)
    rows = []
    ok = True
    for path, label, lower in METRICS:
        old = [v for v in (pick(x, path) for x in runs["old"]) if v is not None]
        new = [v for v in (pick(x, path) for x in runs["new"]) if v is not None]
        if not old or not new:
            continue
        o, n = float(np.median(old)), float(np.median(new))
        ratio = n / o if o else float("nan")
        worse = ratio - 1 if lower else 1 - ratio
        met = worse <= args.tolerance
        ok &= met
        rows.append({"metric": label, "old_median": round(o, 4), "new_median": round(n, 4), "new_over_old": round(ratio, 3),
                     "lower_is_better": lower, "within_tolerance": met, "old_runs": old, "new_runs": new})
    print(json.dumps({"old": os.path.abspath(args.old), "new": os.path.abspath(args.new), "rounds": args.rounds, "clock": args.clock,
                      "tolerance": args.tolerance, "all_within_tolerance": ok, "metrics": rows,
                      "load_avg_after": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
