"""Index-time ColBERT token pooling as a store option: HybridStore, persistence, QdrantHybridStore, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from m3_rag import HybridStore, M3Output
from m3_rag.index.pooling import pool_tokens
from m3_rag.scoring import colbert_score

N, D, C = 40, 8, 16


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def docs() -> M3Output:
    rng = np.random.default_rng(3)
    lengths = [1, 2, 3] + [int(x) for x in rng.integers(4, 30, N - 3)]
    return M3Output(
        dense=_unit(rng.standard_normal((N, D))),
        sparse=[{int(t): 0.1 + 0.01 * i for i, t in enumerate(rng.choice(50, 5, replace=False))} for _ in range(N)],
        colbert=[_unit(rng.standard_normal((n, C))) for n in lengths],
    )


@pytest.fixture(scope="module")
def query() -> M3Output:
    rng = np.random.default_rng(4)
    return M3Output(dense=_unit(rng.standard_normal((1, D))), sparse=[{1: 0.3, 7: 0.2}],
                    colbert=[_unit(rng.standard_normal((5, C)))])


IDS = [f"d{i}" for i in range(N)]


def _assert_same_colbert_hits(a_store, b_store, query) -> None:
    """ColBERT alone and the three-mode hybrid: the same ids and ColBERT scores (to 1e-5) on both stores."""
    for modes in (("colbert",), ("dense", "sparse", "colbert")):
        a = a_store.search_encoded(query, modes=modes, k=10)
        b = b_store.search_encoded(query, modes=modes, k=10)
        assert [h.id for h in a] == [h.id for h in b]
        for x, y in zip(a, b):
            assert x.scores["colbert"] == pytest.approx(y.scores["colbert"], abs=1e-5)


def test_pooled_store_holds_fewer_tokens_and_scores_maxsim_of_the_means(docs, query):
    full = HybridStore(colbert_dtype="fp32", show_progress=False)
    pooled = HybridStore(colbert_storage="fp32", colbert_pool_factor=2, show_progress=False)
    full.add_encoded(docs, ids=IDS)
    pooled.add_encoded(docs, ids=IDS)
    _, stored, _, _ = pooled.export()
    for raw, kept in zip(docs.colbert, stored.colbert):
        assert kept.shape[0] == max(1, math.ceil(raw.shape[0] / 2)) if raw.shape[0] > 1 else kept.shape[0] == 1
        np.testing.assert_allclose(kept, pool_tokens(raw, 2), rtol=0, atol=1e-7)  # not renormalised
    assert pooled.memory_bytes()["colbert"] < 0.6 * full.memory_bytes()["colbert"]
    hits = pooled.search_encoded(query, modes="colbert", k=N)
    want = {i: colbert_score(query.colbert[0], pool_tokens(m, 2)) for i, m in zip(IDS, docs.colbert)}
    for h in hits:
        assert h.score == pytest.approx(want[h.id], abs=1e-6)
    assert "colbert_pool_factor=2" in repr(pooled)
    q = query  # the query is never pooled: the same query on the unpooled store scores the raw tokens
    raw_hits = {h.id: h.score for h in full.search_encoded(q, modes="colbert", k=N)}
    assert raw_hits["d5"] == pytest.approx(colbert_score(q.colbert[0], docs.colbert[5]), abs=1e-6)


def test_pool_factor_persists_and_reloads_identically(docs, query, tmp_path):
    s = HybridStore(colbert_pool_factor=3, show_progress=False)
    s.add_encoded(docs, ids=IDS)
    s.save(tmp_path / "idx")
    header = json.loads((tmp_path / "idx" / "store.json").read_text())
    assert header["colbert_pool_factor"] == 3
    t = HybridStore.load(tmp_path / "idx", show_progress=False)
    assert t.colbert_pool_factor == 3
    a, b = s.search_encoded(query, k=10), t.search_encoded(query, k=10)
    assert [(h.id, h.score) for h in a] == [(h.id, h.score) for h in b]
    # later adds to the reloaded store are pooled too
    t.add_encoded(docs[5:6], ids=["new"])
    _, e, _, _ = t.export(["new"])
    assert e.colbert[0].shape[0] == math.ceil(docs.colbert[5].shape[0] / 3)


def test_pool_factor_header_is_checked(docs, tmp_path):
    s = HybridStore(colbert_pool_factor=2, show_progress=False)
    s.add_encoded(docs, ids=IDS)
    s.save(tmp_path / "idx")
    path = tmp_path / "idx" / "store.json"
    header = json.loads(path.read_text())
    header["colbert_pool_factor"] = 0
    path.write_text(json.dumps(header))
    with pytest.raises(ValueError, match="colbert_pool_factor"):
        HybridStore.load(tmp_path / "idx")


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_bad_pool_factor(bad):
    with pytest.raises(ValueError, match="colbert_pool_factor"):
        HybridStore(colbert_pool_factor=bad)


def test_storage_alias_and_conflicts():
    assert HybridStore(colbert_storage="int8").colbert_dtype == "int8"
    assert HybridStore(colbert_storage="binary", colbert_dtype="binary").colbert_dtype == "binary"
    with pytest.raises(ValueError, match="not both"):
        HybridStore(colbert_storage="int8", colbert_dtype="fp32")
    with pytest.raises(ValueError, match="colbert_dtype must be one of"):
        HybridStore(colbert_storage="fp8")


def test_qdrant_pools_the_same_and_migration_never_pools_twice(docs, query):
    pytest.importorskip("qdrant_client")
    from m3_rag.qdrant import QdrantHybridStore

    hybrid = HybridStore(colbert_pool_factor=2, show_progress=False)
    hybrid.add_encoded(docs, ids=IDS)
    q = QdrantHybridStore(":memory:", "pooled", show_progress=False, colbert_pool_factor=2)
    q.add_encoded(docs, ids=IDS)
    _assert_same_colbert_hits(hybrid, q, query)
    _, from_q, _, _ = q.export()
    assert [m.shape[0] for m in from_q.colbert] == [m.shape[0] for m in hybrid.export()[1].colbert]
    # HybridStore -> Qdrant -> HybridStore: same token counts, same factor, same results
    moved = QdrantHybridStore.from_store(hybrid, ":memory:", "moved", show_progress=False)
    assert moved.colbert_pool_factor == 2
    back = moved.to_store(show_progress=False)
    assert back.colbert_pool_factor == 2
    assert [m.shape[0] for m in back.export()[1].colbert] == [m.shape[0] for m in hybrid.export()[1].colbert]
    a, c = hybrid.search_encoded(query, k=10), back.search_encoded(query, k=10)
    assert [h.id for h in a] == [h.id for h in c]
    with pytest.raises(ValueError, match="colbert_pool_factor"):
        QdrantHybridStore(":memory:", "bad", colbert_pool_factor=0)


def test_cli_index_and_eval_take_the_storage_flags(tmp_path: Path, tiny_ckpt: Path, capsys):
    from eval_helpers import write_beir

    from m3_rag import cli

    docs_dir = tmp_path / "docs"
    docs_dir.mkdir()
    (docs_dir / "a.txt").write_text("Paris is the capital of France. It lies on the Seine river in the north.")
    (docs_dir / "b.txt").write_text("Coffee is brewed from roasted beans of the coffee plant, grown in the tropics.")
    code = cli.main(["index", str(docs_dir), "--out", str(tmp_path / "idx"), "--model", str(tiny_ckpt),
                     "--colbert-storage", "int8", "--colbert-pool-factor", "2"])
    capsys.readouterr()
    assert code == 0
    header = json.loads((tmp_path / "idx" / "store.json").read_text())
    assert header["colbert_dtype"] == "int8" and header["colbert_pool_factor"] == 2
    ds = write_beir(tmp_path / "ds")
    common = ["--model", str(tiny_ckpt), "--cache-dir", str(tmp_path / "cache"), "--quiet", "--no-bm25", "--json"]
    code = cli.main(["eval", str(ds), "--modes", "colbert", *common])
    base = json.loads(capsys.readouterr().out)
    code2 = cli.main(["eval", str(ds), "--modes", "colbert", "--colbert-pool-factor", "4", "--colbert-storage", "fp32", *common])
    pooled = json.loads(capsys.readouterr().out)
    assert code == 0 and code2 == 0
    assert len(list((tmp_path / "cache").iterdir())) == 2  # each setting is cached apart
    assert base["results"][0]["modes"] == pooled["results"][0]["modes"] == ["colbert"]
    with pytest.raises(SystemExit):
        cli.main(["eval", str(ds), "--colbert-pool-factor", "0", *common])
    capsys.readouterr()


def test_edge_pools_the_same_persists_the_factor_and_migration_never_pools_twice(docs, query, tmp_path):
    pytest.importorskip("qdrant_edge")
    from m3_rag import QdrantEdgeStore

    hybrid = HybridStore(colbert_dtype="fp32", colbert_pool_factor=2, show_progress=False)
    hybrid.add_encoded(docs, ids=IDS)
    counts = [m.shape[0] for m in hybrid.export()[1].colbert]
    with QdrantEdgeStore(tmp_path / "e", colbert_pool_factor=2) as e:
        e.add_encoded(docs, ids=IDS)
        assert [m.shape[0] for m in e.export()[1].colbert] == counts
        _assert_same_colbert_hits(hybrid, e, query)
    # reopened: the recorded factor applies to later adds; another factor is refused
    with pytest.raises(ValueError, match="colbert_pool_factor"):
        QdrantEdgeStore(tmp_path / "e", colbert_pool_factor=3)
    with QdrantEdgeStore(tmp_path / "e") as e:
        assert e.colbert_pool_factor == 2
        e.add_encoded(M3Output(dense=docs.dense[-1:], sparse=docs.sparse[-1:], colbert=docs.colbert[-1:]), ids=["late"])
        assert e.export(["late"])[1].colbert[0].shape[0] == counts[-1]
        e.delete(["late"])
        # Edge -> HybridStore and HybridStore -> Edge keep the pooled tokens as they are
        back = e.to_store(show_progress=False)
    assert back.colbert_pool_factor == 2
    assert [m.shape[0] for m in back.export()[1].colbert] == counts
    with QdrantEdgeStore.from_store(hybrid, tmp_path / "f") as f:
        assert f.colbert_pool_factor == 2
        assert [m.shape[0] for m in f.export()[1].colbert] == counts
    with pytest.raises(ValueError, match="colbert_pool_factor"):
        QdrantEdgeStore(tmp_path / "g", colbert_pool_factor=0)
