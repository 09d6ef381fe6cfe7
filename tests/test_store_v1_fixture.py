"""Format-v1 folders written by the pre-refactor HybridStore still load, to identical search results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

FIX = Path(__file__).parent / "fixtures" / "store_v1"
sys.path.insert(0, str(FIX))

from make_store_v1 import queries  # noqa: E402

EXPECTED = json.loads((FIX / "expected.json").read_text())


@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_v1_folder_loads_to_identical_results(dtype: str) -> None:
    from m3_rag import HybridStore

    store = HybridStore.load(FIX / f"colbert_{dtype}")
    exp = EXPECTED[dtype]
    assert store.ids() == exp["ids"]
    assert store.colbert_dtype == dtype
    for key, want in exp["runs"].items():
        modes_s, flt = key.split("|")
        res = store.search_encoded_batch(
            queries(), k=5, modes=tuple(modes_s.split("+")), filter={"tag": "even"} if flt == "filter" else None
        )
        for hits, w in zip(res, want):
            if modes_s == "sparse":  # sparse alone returns only documents sharing a term with the query
                w = [h for h in w if h[1] > 0]
            assert [h.id for h in hits] == [x[0] for x in w], key
            for h, x in zip(hits, w):
                assert h.score == pytest.approx(x[1], abs=1e-6)
                assert h.scores == pytest.approx(x[2], abs=1e-6)
