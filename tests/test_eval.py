"""m3_rag.eval: BEIR loading conventions and errors, trec_eval metrics (checked against ir-measures),
the one-pass grid with its on-disk cache, the weight sweep and the BM25 reference row."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from eval_helpers import write_beir
from m3_rag import eval as ev

ir_measures = pytest.importorskip("ir_measures")
from ir_measures import RR, R, nDCG  # noqa: E402


def _reference(qrels, run) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Independent values from pytrec_eval (trec_eval's C code, through ir-measures), keyed by our names.

    trec_eval has no rank cut-off for reciprocal rank, so MRR@10 is its ``recip_rank`` zeroed below 1/10
    (the first relevant document is within the top 10 exactly when its reciprocal rank is >= 1/10).
    ir-measures' own ``RR@10`` comes from its MS MARCO provider, which breaks score ties by *ascending*
    document id unlike trec_eval; it is compared separately on runs without ties.
    """
    measures = [nDCG @ 10, R @ 100, RR]
    per: dict[str, dict[str, float]] = {q: {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0} for q in qrels}
    for m in ir_measures.pytrec_eval.iter_calc(measures, qrels, run):
        if m.measure == RR:
            per[m.query_id]["mrr@10"] = m.value if m.value >= 0.1 - 1e-12 else 0.0
        else:
            per[m.query_id]["ndcg@10" if m.measure == nDCG @ 10 else "recall@100"] = m.value
    agg = {name: sum(v[name] for v in per.values()) / len(per) for name in ev.METRICS}
    return agg, per


def _assert_agree(qrels, run) -> None:
    ours = ev.evaluate_run(qrels, run)
    ours_per = ev.evaluate_run(qrels, run, per_query=True)
    ref, ref_per = _reference(qrels, run)
    for name in ev.METRICS:
        assert ours[name] == pytest.approx(ref[name], abs=1e-6), name
    for qid, values in ref_per.items():
        for name, value in values.items():
            assert ours_per[qid][name] == pytest.approx(value, abs=1e-6), (qid, name)


def _has_ties(run) -> bool:
    return any(len(set(docs.values())) < len(docs) for docs in run.values())


@pytest.fixture()
def tiny_beir(tmp_path: Path) -> Path:
    return write_beir(tmp_path / "tinybeir")


# ------------------------------------------------------------------ metrics, hand-computed
def test_trec_ranking_breaks_ties_by_descending_id():
    assert ev.trec_ranking({"a": 1.0, "b": 2.0, "c": 1.0, "10": 1.0, "9": 1.0}) == ["b", "c", "a", "9", "10"]


def test_metric_values_by_hand():
    qrels = {"a": 2, "b": 1, "z": 0}
    assert ev.ndcg_at_k(qrels, ["b", "a"], 10) == pytest.approx((1 + 2 / 1.5849625007) / (2 + 1 / 1.5849625007))
    assert ev.ndcg_at_k(qrels, ["z", "x"], 10) == 0.0
    assert ev.recall_at_k(qrels, ["x", "a"], 100) == 0.5
    assert ev.recall_at_k(qrels, ["x", "a"], 1) == 0.0
    assert ev.rr_at_k(qrels, ["z", "x", "b"], 10) == pytest.approx(1 / 3)
    assert ev.rr_at_k(qrels, ["z", "x", "b"], 2) == 0.0
    assert ev.ndcg_at_k({"z": 0}, ["z"], 10) == 0.0  # no relevant document: 0, as trec_eval
    # a judged query missing from the run counts as 0 in the mean
    assert ev.evaluate_run({"q1": {"a": 1}, "q2": {"b": 1}}, {"q1": {"a": 1.0}})["ndcg@10"] == 0.5


def test_metrics_agree_with_ir_measures_on_ties_and_graded_qrels():
    qrels = {"1": {"a": 1, "b": -1, "c": 0, "d": 3, "e": 2}, "2": {"x": 1}, "3": {"q": 0}}  # -1: judged, not relevant
    run = {
        "1": {"a": 1.0, "b": 1.0, "c": 1.0, "10": 1.0, "9": 1.0, "d": 0.5, "e": 0.5},
        "2": {f"n{i}": float(i % 3) for i in range(150)} | {"x": 0.0},
        "3": {"q": 2.0},
    }
    _assert_agree(qrels, run)


def test_metrics_agree_with_ir_measures_on_real_bm25_runs(datasets_dir: Path):
    pytest.importorskip("bm25s")
    ds = ev.load_beir(datasets_dir / "cranfield")  # graded qrels (0-4), 225 queries
    run = ev.bm25_run(ds)
    _assert_agree(ds.qrels, run)
    # ir-measures' default pipeline (pytrec_eval for nDCG, the MS MARCO code for RR@10), on the queries
    # whose top 10 has no tied scores (BM25 ties on cranfield's duplicate documents)
    top = {q: dict(sorted(docs.items(), key=lambda kv: -kv[1])[:10]) for q, docs in run.items()}
    untied = {q: docs for q, docs in top.items() if not _has_ties({q: docs})}
    qrels = {q: ds.qrels[q] for q in untied}
    assert len(untied) > 150
    agg = ir_measures.calc_aggregate([nDCG @ 10, RR @ 10], qrels, untied)
    ours = ev.evaluate_run(qrels, untied)
    assert ours["ndcg@10"] == pytest.approx(agg[nDCG @ 10], abs=1e-6)
    assert ours["mrr@10"] == pytest.approx(agg[RR @ 10], abs=1e-6)
    # the same run with scores rounded to 0 decimals: most of the ranking is decided by tie-breaking
    _assert_agree(ds.qrels, {q: {d: float(round(s)) for d, s in docs.items()} for q, docs in run.items()})


# ------------------------------------------------------------------ loader
def test_loader_follows_beir_conventions(tiny_beir: Path):
    ds = ev.load_beir(tiny_beir)
    assert ds.name == "tinybeir"
    assert ds.corpus["d1"] == "Paris Paris is the capital of France."
    assert ds.corpus["d2"] == "Berlin is the capital of Germany."  # empty title: no leading space
    assert ds.corpus["d10"] == "Spaces     padded text"  # title + " " + text, stripped
    assert list(ds.queries) == ["q1", "q2", "q3", "q4", "q6"]  # only judged queries
    assert ds.skipped_queries == ["q5"]
    assert ds.qrels["q1"] == {"d1": 2, "d2": 0}
    assert ds.qrels["q6"]["missing-doc"] == 1


def test_missing_files_name_the_file(tmp_path: Path, tiny_beir: Path):
    with pytest.raises(ev.DatasetError, match="not a folder"):
        ev.load_beir(tmp_path / "nope")
    (tiny_beir / "queries.jsonl").unlink()
    with pytest.raises(ev.DatasetError, match=r"queries\.jsonl: file not found"):
        ev.load_beir(tiny_beir)
    with pytest.raises(ev.DatasetError, match=r"dev\.tsv: file not found.*Available splits: \['test'\]"):
        write_beir(tiny_beir)
        ev.load_beir(tiny_beir, split="dev")


@pytest.mark.parametrize(
    "file, line3, message",
    [
        ("corpus.jsonl", '{"_id": "x", "text": "unterminated', r"corpus\.jsonl, line 3: not valid JSON"),
        ("corpus.jsonl", '["a list"]', r"corpus\.jsonl, line 3: expected a JSON object"),
        ("corpus.jsonl", '{"title": "no id", "text": "t"}', r'corpus\.jsonl, line 3: the object has no "_id"'),
        ("corpus.jsonl", '{"_id": "d1", "text": "dup"}', r"corpus\.jsonl, line 3: duplicate document id 'd1'"),
        ("corpus.jsonl", '{"_id": "x", "text": 5}', r'corpus\.jsonl, line 3: "text" must be a string'),
        ("queries.jsonl", '{"_id": "q9"}', r'queries\.jsonl, line 3: the object has no "text"'),
        ("qrels/test.tsv", "q1\td1", r"test\.tsv, line 3: expected 3 tab-separated columns"),
        ("qrels/test.tsv", "q1\td1\thigh", r"test\.tsv, line 3: the score must be an integer; got 'high'"),
    ],
)
def test_malformed_lines_name_file_and_line(tiny_beir: Path, file: str, line3: str, message: str):
    path = tiny_beir / file
    lines = path.read_text().splitlines()
    lines[2] = line3
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ev.DatasetError, match=message):
        ev.load_beir(tiny_beir)


def test_qrels_for_unknown_queries_are_ignored_with_a_warning(tiny_beir: Path):
    with (tiny_beir / "qrels" / "test.tsv").open("a") as fh:
        fh.write("q404\td1\t1\nq404\td2\t1\n")
    with pytest.warns(UserWarning, match=r"test\.tsv: 1 judged query id\(s\) are not in .*queries\.jsonl.*'q404' at line 10"):
        ds = ev.load_beir(tiny_beir)
    assert "q404" not in ds.qrels and len(ds.queries) == 5


def test_empty_corpus_and_no_judgements(tmp_path: Path):
    with pytest.raises(ev.DatasetError, match=r"corpus\.jsonl: the corpus holds no documents"):
        ev.load_beir(write_beir(tmp_path / "a", docs=[]))
    with pytest.raises(ev.DatasetError, match=r"test\.tsv: no judgements"):
        ev.load_beir(write_beir(tmp_path / "b", qrels=[]))


def test_trec_format_qrels_are_read(tiny_beir: Path):
    (tiny_beir / "qrels" / "trec.tsv").write_text("q1 0 d1 1\nq2 0 d3 2\n")
    assert ev.load_beir(tiny_beir, "trec").qrels == {"q1": {"d1": 1}, "q2": {"d3": 2}}


# ------------------------------------------------------------------ helpers
def test_split_queries_is_deterministic_disjoint_and_order_free():
    ids = [str(i) for i in range(40)]
    dev, test = ev.split_queries(ids, 0.25, seed=1)
    assert len(dev) == 10 and len(test) == 30 and not set(dev) & set(test)
    assert set(dev) | set(test) == set(ids)
    assert ev.split_queries(list(reversed(ids)), 0.25, seed=1)[0] == list(reversed(dev))
    assert ev.split_queries(ids, 0.25, seed=2)[0] != dev
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        ev.split_queries(ids, 1.0)
    with pytest.raises(ValueError, match="at least 2 queries"):
        ev.split_queries(["a"], 0.5)


def test_parse_modes_and_default_grid():
    assert ev.parse_modes("sparse+dense") == ("dense", "sparse")
    assert ev.parse_modes("all") == ("dense", "sparse", "colbert")
    with pytest.raises(ValueError, match="allowed: dense, sparse, colbert"):
        ev.parse_modes("dense+bm42")
    assert ev.default_grid(("dense",)) == [("dense",)]
    assert ev.default_grid(("dense", "sparse", "colbert")) == [
        ("dense",), ("sparse",), ("colbert",), ("dense", "sparse"), ("dense", "sparse", "colbert"),
    ]


def test_bm25_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch, tiny_beir: Path):
    monkeypatch.setitem(sys.modules, "bm25s", None)
    with pytest.raises(ImportError, match=r'pip install "m3-rag\[eval\]"'):
        ev.bm25_run(ev.load_beir(tiny_beir))


def test_bm25_run_excludes_self_id_and_zero_scores(tiny_beir: Path):
    pytest.importorskip("bm25s")
    run = ev.bm25_run(ev.load_beir(tiny_beir))
    assert "q3" not in run["q3"] and "d6" in run["q3"]
    assert "q3" in ev.bm25_run(ev.load_beir(tiny_beir), ignore_identical_ids=False)["q3"]
    assert all(s > 0 for docs in run.values() for s in docs.values())


# ------------------------------------------------------------------ grid, cache, sweep (tiny model)
def test_grid_rows_cache_and_self_id(tiny_beir: Path, tiny_encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cache = tmp_path / "cache"
    report = ev.evaluate(tiny_beir, tiny_encoder, cache_dir=cache, bm25=False, show_progress=False)
    labels = [(r.label, r.fusion) for r in report.rows]
    assert labels == [("dense", None), ("sparse", None), ("colbert", None)] + [
        (combo, f) for combo in ("dense+sparse", "dense+sparse+colbert") for f in ("weighted", "rrf", "dbsf")
    ]
    assert not report.cached and report.n_queries == 5 and report.skipped_queries == ["q5"]
    ds = ev.load_beir(tiny_beir)
    for row in report.rows:
        assert "q3" not in row.run["q3"]  # the document sharing the query's id is left out
        if row.label == "sparse":  # sparse alone: only documents sharing a token with the query
            assert len(row.run["q3"]) <= 9 and len(row.run["q1"]) <= 10
        else:
            assert len(row.run["q3"]) == 9 and len(row.run["q1"]) == 10  # k > corpus: every other document
        ref, _ = _reference(ds.qrels, row.run)
        for name in ev.METRICS:
            assert row.metrics[name] == pytest.approx(ref[name], abs=1e-6)
    out = report.as_json()
    assert set(out) == {"dataset", "model", "results"}
    assert set(out["results"][3]) == {"modes", "fusion", "ndcg@10", "recall@100", "mrr@10"}
    json.dumps(out)
    (entry,) = [p for p in cache.iterdir()]
    assert entry.name.startswith("tinybeir-") and entry.name.endswith("dense+sparse+colbert")

    def no_encoding(*args, **kwargs):
        raise AssertionError("the corpus was encoded again instead of read from the cache")

    monkeypatch.setattr(tiny_encoder, "encode_documents", no_encoding)
    again = ev.evaluate(tiny_beir, tiny_encoder, cache_dir=cache, bm25=False, show_progress=False)
    assert again.cached
    for a, b in zip(report.rows, again.rows):
        assert a.metrics == pytest.approx(b.metrics, abs=1e-6)
    # a subset of the cached modes is served by the same entry
    dense_only = ev.evaluate(tiny_beir, tiny_encoder, grid=["dense"], cache_dir=cache, bm25=False, show_progress=False)
    assert dense_only.cached and dense_only.rows[0].metrics == pytest.approx(report.rows[0].metrics, abs=1e-6)


def test_cache_key_changes_with_the_corpus(tiny_beir: Path, tiny_encoder, tmp_path: Path):
    cache = tmp_path / "cache"
    ev.evaluate(tiny_beir, tiny_encoder, grid=["dense"], cache_dir=cache, bm25=False, show_progress=False)
    with (tiny_beir / "corpus.jsonl").open("a") as fh:
        fh.write(json.dumps({"_id": "d11", "text": "one more"}) + "\n")
    report = ev.evaluate(tiny_beir, tiny_encoder, grid=["dense"], cache_dir=cache, bm25=False, show_progress=False)
    assert not report.cached and len(list(cache.iterdir())) == 2


def test_grid_validation(tiny_beir: Path, tiny_encoder):
    with pytest.raises(ValueError, match="allowed: weighted, rrf, dbsf"):
        ev.evaluate(tiny_beir, tiny_encoder, fusions=["max"], cache_dir=None, bm25=False)
    with pytest.raises(ValueError, match="candidates must be an int >= 100"):
        ev.evaluate(tiny_beir, tiny_encoder, candidates=10, cache_dir=None, bm25=False)


def test_sweep_matches_store_fusion_and_warns_without_split(tiny_beir: Path, tiny_encoder):
    ds = ev.load_beir(tiny_beir)
    with pytest.warns(UserWarning, match="tuned and scored on the same queries"):
        report = ev.evaluate(
            ds, tiny_encoder, grid=["dense+sparse"], fusions=["weighted"], sweep=True, sweep_step=0.25,
            dev_fraction=None, cache_dir=None, bm25=False, show_progress=False,
        )
    s = report.sweep
    assert s is not None and s.same_queries and s.test_ndcg is None
    assert len(s.table) == 5 and all(sum(w.values()) == pytest.approx(1.0) for w, _ in s.table)
    assert s.tune_ndcg == max(v for _, v in s.table)
    # the sweep re-fuses candidates itself; with the default weights it must equal the store's weighted row
    assert s.default_test_ndcg == pytest.approx(report.rows[0].metrics["ndcg@10"], abs=1e-6)
    assert report.as_json()["sweep"]["tuned_on_scored_queries"] is True

    split = ev.evaluate(
        ds, tiny_encoder, grid=["dense+sparse+colbert"], fusions=["weighted"], sweep=True, sweep_step=0.5,
        dev_fraction=0.4, cache_dir=None, bm25=False, show_progress=False,
    )
    assert not split.sweep.same_queries and split.sweep.n_tune == 2 and split.sweep.n_test == 3
    assert split.sweep.test_ndcg is not None
    assert "tuned on 2 dev queries" in ev.format_table(split)
