"""The bm25 mode in m3-rag eval (mode sets with bm25, the model's weights for that set) and m3-rag index/search."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("bm25s")
pytest.importorskip("Stemmer")

from eval_helpers import write_beir  # noqa: E402
from m3_rag import cli  # noqa: E402
from m3_rag import eval as ev  # noqa: E402


def run(argv: list, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_parse_modes_accepts_bm25():
    assert ev.parse_modes("bm25+dense+colbert+sparse") == ("dense", "sparse", "colbert", "bm25")
    assert ev.parse_modes("all") == ("dense", "sparse", "colbert")
    with pytest.raises(ValueError, match="bm99"):
        ev.parse_modes("dense+bm99")


def test_eval_bm25_mode_equals_reference_and_fuses(tmp_path: Path, tiny_ckpt: Path):
    from m3_rag import M3Encoder

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    (ckpt / "m3_model.json").write_text(json.dumps(
        {"fusion_weights_by_modes": {"dense+sparse+colbert+bm25": {"dense": 0.0, "sparse": 0.0, "colbert": 0.0,
                                                                   "bm25": 1.0}}}))
    enc = M3Encoder.from_pretrained(ckpt, device="cpu")
    ds = write_beir(tmp_path / "ds")
    report = ev.evaluate(ds, enc, grid=["bm25", "dense+sparse+colbert+bm25"], fusions=["weighted", "rrf"],
                         cache_dir=tmp_path / "cache", show_progress=False)
    rows = {(r.label, r.fusion): r for r in report.rows}
    ref, mode = rows[("bm25", None)], report.rows[0]
    assert report.rows[-1].label == "bm25" and mode.label == "bm25"  # the store's mode first, the bm25s row last
    assert mode.metrics == pytest.approx(report.rows[-1].metrics, abs=1e-3)
    # the model's weights for exactly this set (all on bm25) make the weighted row rank like bm25 alone
    weighted = rows[("dense+sparse+colbert+bm25", "weighted")]
    for qid, run_ in weighted.run.items():
        assert list(run_)[: len(mode.run[qid])] == list(mode.run[qid])
    assert ("dense+sparse+colbert+bm25", "rrf") in rows
    # cached vectors without bm25 are reused for a set with bm25 (the texts come from the dataset)
    again = ev.evaluate(ds, enc, grid=["dense+bm25"], fusions=["rrf"], bm25=False, cache_dir=tmp_path / "cache2",
                        show_progress=False)
    assert not again.cached
    ev.evaluate(ds, enc, grid=["dense"], bm25=False, cache_dir=tmp_path / "cache3", show_progress=False)
    reused = ev.evaluate(ds, enc, grid=["dense+bm25"], fusions=["rrf"], bm25=False, cache_dir=tmp_path / "cache3",
                         show_progress=False)
    assert reused.cached and reused.rows[0].metrics == again.rows[0].metrics


def test_cli_eval_and_index_with_bm25(tmp_path: Path, tiny_ckpt: Path, capsys):
    ds = write_beir(tmp_path / "ds")
    common = ["--model", tiny_ckpt, "--cache-dir", tmp_path / "cache", "--quiet"]
    code, out, err = run(["eval", ds, "--modes", "dense+sparse+colbert+bm25", "--fusion", "weighted", "--json",
                          *common], capsys)
    assert code == 0, err
    rows = json.loads(out)["results"]
    assert [(r["modes"], r["fusion"]) for r in rows] == [(["dense", "sparse", "colbert", "bm25"], "weighted"),
                                                         (["bm25"], None)]
    code, out, err = run(["eval", ds, "--modes", "dense+bm42", *common], capsys)
    assert code != 0 and "bm42" in err
    # index + search
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Apples grow on trees in orchards.\n\nBananas are yellow fruit.")
    (docs / "b.txt").write_text("The orchard keeper sells apple cider.")
    code, out, err = run(["index", docs, "--out", tmp_path / "idx", "--bm25", "--model", tiny_ckpt, "--quiet"], capsys)
    assert code == 0, err and "bm25" in err
    code, out, err = run(["search", tmp_path / "idx", "orchard apples", "--modes", "bm25", "--explain", "--json",
                          "--model", tiny_ckpt], capsys)
    assert code == 0, err
    hits = json.loads(out)["hits"]
    assert hits and all("bm25:orchard" in h["explain"] or "bm25:appl" in h["explain"] for h in hits)
    code, out, err = run(["search", tmp_path / "idx", "orchard apples", "--model", tiny_ckpt, "--json"], capsys)
    assert code == 0, err
    assert set(json.loads(out)["hits"][0]["scores"]) == {"dense", "sparse", "colbert", "bm25"}
    code, out, err = run(["index", docs, "--out", tmp_path / "idx2", "--bm25", "--bm25-language", "klingon",
                          "--model", tiny_ckpt, "--quiet"], capsys)
    assert code != 0 and "klingon" in err


def test_eval_default_grid_adds_the_model_default_row(tmp_path: Path, tiny_ckpt: Path):
    from m3_rag import M3Encoder

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    (ckpt / "m3_model.json").write_text(json.dumps({"default_modes": ["dense", "colbert", "bm25"],
                                                     "default_fusion": "dbsf"}))
    enc = M3Encoder.from_pretrained(ckpt, device="cpu")
    ds = write_beir(tmp_path / "ds")
    report = ev.evaluate(ds, enc, fusions=["weighted"], cache_dir=tmp_path / "cache", show_progress=False)
    got = [(r.label, r.fusion) for r in report.rows]
    # the default grid, then the model's recommended modes with the given fusions and its own (dbsf)
    assert ("dense+colbert+bm25", "weighted") in got and ("dense+colbert+bm25", "dbsf") in got
    assert got[-1] == ("bm25", None)
    plain = ev.evaluate(ds, enc, grid=["dense"], fusions=["weighted"], bm25=False, cache_dir=tmp_path / "cache",
                        show_progress=False)
    assert [(r.label, r.fusion) for r in plain.rows] == [("dense", None)]  # an explicit grid is kept as given
