"""Write tests/snapshots/search_snapshot.json: ids and scores of every mode x fusion x filter on two shared
collections, with the bundled minilm-m3 model. Run with the store code whose behaviour must be preserved:

    python tests/snapshots/make_search_snapshot.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from snapshot_common import RUNS, build_store, load_collection, run_key, search_run  # noqa: E402


def main() -> None:
    out: dict = {}
    for name, n_docs, n_queries in (("adi", None, 35), ("cisi", 300, 30)):
        docs, queries = load_collection(name, n_docs, n_queries)
        store, enc, qenc = build_store(docs, queries)
        runs = {}
        for modes, fusion, flt in RUNS:
            runs[run_key(modes, fusion, flt)] = search_run(store, qenc, modes, fusion, flt)
        out[name] = {"doc_ids": [d[0] for d in docs], "query_ids": [q[0] for q in queries], "runs": runs}
        print(name, len(docs), "docs", len(queries), "queries", len(runs), "runs")
    (HERE / "search_snapshot.json").write_text(json.dumps(out, sort_keys=True, separators=(",", ":")))


if __name__ == "__main__":
    main()
