"""``m3-rag index --overwrite`` replaces only an existing m3-rag index: anything else at ``--out``, and an
``--out`` equal to, inside or holding the input folder, is refused with a clear message and left untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from m3_rag import cli
from m3_rag.store import HybridStore


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.txt").write_text("Paris is the capital of France.")
    (root / "b.txt").write_text("Rust is a memory-safe systems language.")
    return root


def _tree(p: Path) -> dict:
    return {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}


def test_overwrite_replaces_an_existing_index(docs, tmp_path, capsys, tiny_ckpt):
    out = tmp_path / "idx"
    assert run(["index", docs, "--out", out, "--model", tiny_ckpt], capsys)[0] == 0
    (docs / "c.txt").write_text("Coffee is brewed from roasted beans.")
    code, _, err = run(["index", docs, "--out", out, "--overwrite", "--model", tiny_ckpt], capsys)
    assert code == 0, err
    assert sorted(HybridStore.load(out).ids()) == ["a.txt", "b.txt", "c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "idx"]  # no temporary folders left


@pytest.mark.parametrize("overwrite", [False, True])
def test_unrelated_folder_is_never_replaced(docs, tmp_path, capsys, tiny_ckpt, overwrite):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8 not an index")
    (out / "store.json").write_text(json.dumps({"format": "something else"}))
    before = _tree(out)
    code, _, err = run(["index", docs, "--out", out, "--model", tiny_ckpt] + (["--overwrite"] if overwrite else []), capsys)
    assert code == 1 and "is not empty and is not an m3-rag index" in err
    assert ("only replaces an existing m3-rag index" in err) == overwrite
    assert _tree(out) == before


def test_file_at_out_is_refused(docs, tmp_path, capsys, tiny_ckpt):
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    code, _, err = run(["index", docs, "--out", out, "--overwrite", "--model", tiny_ckpt], capsys)
    assert code == 1 and "is a file, not a folder" in err and out.read_text() == "keep me"


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_out_overlapping_the_input_is_refused(docs, tmp_path, capsys, tiny_ckpt, where):
    out = {"same": docs, "inside": docs / "index", "parent": tmp_path}[where]
    before = _tree(docs)
    code, _, err = run(["index", docs, "--out", out, "--overwrite", "--model", tiny_ckpt], capsys)
    assert code == 1
    assert {"same": "is the input folder", "inside": "inside the input folder", "parent": "contains the input"}[where] in err
    assert _tree(docs) == before and not (docs / "index").exists()


def test_empty_folder_is_used(docs, tmp_path, capsys, tiny_ckpt):
    out = tmp_path / "empty"
    out.mkdir()
    assert run(["index", docs, "--out", out, "--model", tiny_ckpt], capsys)[0] == 0
    assert len(HybridStore.load(out)) == 2
