"""The m3-rag command line: chunking, index/search/eval/quickstart through ``main([...])``, bad input,
and the console script itself (``--help``, ``eval --json``) in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eval_helpers import write_beir
from m3_rag import cli
from tiny_checkpoint import make_tiny_bert

SCRIPT = Path(sys.executable).parent / "m3-rag"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def docs_dir(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "paris.txt").write_text("Paris is the capital of France.\n\nIt lies on the Seine.")
    (root / "sub" / "notes.md").write_text("# Rust\n\nRust is a memory-safe systems language. 🦀 日本語も大丈夫")
    long_par = " ".join(f"w{i}" for i in range(25))
    (root / "long.txt").write_text(long_par)
    (root / "items.jsonl").write_text(
        json.dumps({"_id": "coffee", "title": "Coffee", "text": "Brewed from roasted beans.", "metadata": {"lang": "en"}})
        + "\n\n"
        + json.dumps({"text": "A line without an id about mountains and Everest."})
        + "\n"
    )
    (root / "ignored.pdf").write_bytes(b"%PDF")
    return root


# ------------------------------------------------------------------ chunking and reading
def test_chunk_text_packs_paragraphs_and_windows_long_ones():
    assert cli.chunk_text("") == []
    assert cli.chunk_text("a  b\n\n\n c\td e", max_words=10) == ["a b\n\nc d e"]
    assert cli.chunk_text("a b\n\nc d e\n\nf", max_words=3) == ["a b", "c d e", "f"]
    words = " ".join(f"w{i}" for i in range(10))
    assert cli.chunk_text("x\n\n" + words + "\n\ny", max_words=4, overlap=1) == [
        "x", "w0 w1 w2 w3", "w3 w4 w5 w6", "w6 w7 w8 w9", "y",
    ]
    with pytest.raises(ValueError, match="overlap must be an int with 0 <= overlap < max_words"):
        cli.chunk_text("a", max_words=3, overlap=3)
    with pytest.raises(ValueError, match="max_words must be a positive int"):
        cli.chunk_text("a", max_words=0)


def test_read_documents_ids_metadata_and_errors(docs_dir: Path, tmp_path: Path):
    docs = {d[0]: d for d in cli.read_documents(docs_dir)}
    assert set(docs) == {"paris.txt", "sub/notes.md", "long.txt", "coffee", "items.jsonl:3"}
    assert docs["coffee"][1] == "Coffee\n\nBrewed from roasted beans."
    assert docs["coffee"][2] == {"source": "items.jsonl", "lang": "en"}
    assert cli.read_documents(docs_dir / "paris.txt")[0][0] == "paris.txt"
    with pytest.raises(cli.CLIError, match="unsupported file type '.pdf'"):
        cli.read_documents(docs_dir / "ignored.pdf")
    with pytest.raises(cli.CLIError, match="no such file or folder"):
        cli.read_documents(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(cli.CLIError, match=r"no \.txt, \.md, \.jsonl files"):
        cli.read_documents(tmp_path / "empty")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": 3}\n')
    with pytest.raises(cli.CLIError, match=r"bad\.jsonl, line 2: expected a JSON object with a string \"text\""):
        cli.read_documents(bad)
    bad.write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(cli.CLIError, match=r"bad\.jsonl, line 2: not valid JSON"):
        cli.read_documents(bad)


# ------------------------------------------------------------------ index and search
def test_index_then_search(docs_dir: Path, tmp_path: Path, tiny_ckpt: Path, capsys):
    index = tmp_path / "index"
    code, out, err = run(["index", docs_dir, "--out", index, "--model", tiny_ckpt, "--chunk-words", "10", "--overlap", "2"], capsys)
    assert code == 0, err
    assert out == ""  # progress and messages go to stderr
    assert "index" in err and "saved 8 chunks" in err  # long.txt: 25 words -> 3 windows; paris.txt: 6+5 words -> 2
    code, out, err = run(["search", index, "capital of France", "--k", "3", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["modes"] == ["dense", "sparse", "colbert"] and result["fusion"] == "weighted"
    assert len(result["hits"]) == 3
    assert set(result["hits"][0]) >= {"id", "score", "scores", "text", "metadata"}
    code, out, err = run(["search", index, "x", "--k", "50", "--json"], capsys)  # k larger than the index
    ids = {h["id"] for h in json.loads(out)["hits"]}
    assert ids == {"paris.txt#0", "paris.txt#1", "sub/notes.md", "long.txt#0", "long.txt#1", "long.txt#2", "coffee", "items.jsonl:3"}
    code, out, err = run(["search", index, "Rust", "--mode", "sparse", "--explain", "--k", "2"], capsys)
    assert code == 0, err
    assert out.startswith("query: Rust\nmodes: sparse") and "sparse" in out.splitlines()[3]
    code, out, err = run(["search", index, "Rust", "--modes", "dense+colbert", "--fusion", "rrf"], capsys)
    assert code == 0 and "dense+colbert (rrf fusion)" in out
    # bad input
    code, out, err = run(["search", index, "q", "--modes", "bm42"], capsys)
    assert code == 1 and "unknown mode(s) ['bm42']" in err
    code, _, err = run(["index", docs_dir, "--out", index, "--model", tiny_ckpt], capsys)
    assert code == 1 and "already exists; pass --overwrite" in err
    code, _, err = run(["search", tmp_path / "nowhere", "q", "--model", tiny_ckpt], capsys)
    assert code == 1 and "no index folder here" in err


def test_search_refuses_an_index_made_with_another_model(docs_dir: Path, tmp_path: Path, tiny_ckpt: Path, capsys):
    index = tmp_path / "index"
    assert run(["index", docs_dir / "paris.txt", "--out", index, "--model", tiny_ckpt], capsys)[0] == 0
    other = make_tiny_bert(tmp_path / "other", seed=1)
    code, out, err = run(["search", index, "France", "--model", other], capsys)
    assert code == 1 and out == ""
    assert "was built with another model" in err and "fingerprint" in err and "rebuild it" in err


def test_missing_model_explains_the_offline_model(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ds = write_beir(tmp_path / "ds")
    code, out, err = run(["eval", ds, "--no-bm25"], capsys)  # default model BAAI/bge-m3 is not available here
    assert code == 1 and out == ""
    assert "the default model 'BAAI/bge-m3' could not be loaded" in err
    assert "--model minilm-m3" in err or "--model all-MiniLM-L6-v2" in err
    code, _, err = run(["quickstart", "--model", tmp_path / "no-such-model"], capsys)
    assert code == 1 and "could not be loaded" in err


# ------------------------------------------------------------------ eval
def test_eval_table_json_and_bad_input(tmp_path: Path, tiny_ckpt: Path, capsys):
    ds = write_beir(tmp_path / "ds")
    cache = tmp_path / "cache"
    common = ["--model", tiny_ckpt, "--cache-dir", cache, "--quiet"]
    code, out, err = run(["eval", ds, "--modes", "dense", "sparse+colbert", "--fusion", "rrf", "--no-bm25", *common], capsys)
    assert code == 0, err
    assert "5 judged queries (1 without qrels skipped)" in out and "1 queries without qrels skipped" in err
    assert [line.split()[:2] for line in out.splitlines()[3:]] == [["dense", "-"], ["sparse+colbert", "rrf"]]
    code, out, err = run(["eval", ds, "--json", "--sweep", "--dev-fraction", "0.4", *common], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == {"dataset", "model", "results", "sweep"} and result["dataset"] == "ds"
    assert [(r["modes"], r["fusion"]) for r in result["results"]][-2:] == [(["dense", "sparse", "colbert"], "dbsf"), (["bm25"], None)]
    assert result["sweep"]["n_tune_queries"] == 2
    # bad input: malformed file, missing split, unknown mode
    lines = (ds / "corpus.jsonl").read_text().splitlines()
    (ds / "corpus.jsonl").write_text("\n".join(lines[:4] + ["{not json"] + lines[4:]))
    code, out, err = run(["eval", ds, *common], capsys)
    assert code == 1 and out == "" and "corpus.jsonl, line 5: not valid JSON" in err
    code, _, err = run(["eval", write_beir(tmp_path / "ds2"), "--split", "dev", *common], capsys)
    assert code == 1 and "dev.tsv: file not found" in err
    code, _, err = run(["eval", tmp_path / "ds2", "--modes", "dense+bm42", *common], capsys)
    assert code == 1 and "allowed: dense, sparse, colbert" in err
    code, _, err = run(["eval", write_beir(tmp_path / "empty", docs=[]), *common], capsys)
    assert code == 1 and "the corpus holds no documents" in err


def test_quickstart_runs_offline(tiny_ckpt: Path, capsys):
    code, out, err = run(["quickstart", "--model", tiny_ckpt, "--k", "2"], capsys)
    assert code == 0, err
    assert "Indexed 10 documents" in out and "dense+sparse+colbert [rrf]" in out and "matched in sparse mode" in out


def test_every_command_has_help(capsys):
    commands = ["index", "search", "eval", "quickstart"]
    try:
        from m3_rag import train

        if hasattr(train, "register_cli"):
            commands.append("train-heads")
    except ImportError:
        pass
    for command in commands:
        with pytest.raises(SystemExit) as exc:
            cli.main([command, "--help"])
        assert exc.value.code == 0
        assert "--model" in capsys.readouterr().out, command
    with pytest.raises(SystemExit):
        cli.main([])
    assert "COMMAND" in capsys.readouterr().err


# ------------------------------------------------------------------ the console script
def _script() -> list[str]:
    return [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "m3_rag.cli"]


def test_console_script_help_and_eval_json(tmp_path: Path, tiny_ckpt: Path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(_script() + ["--help"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0
    for command in ("index", "search", "eval", "quickstart"):
        assert command in proc.stdout
    ds = write_beir(tmp_path / "ds")
    proc = subprocess.run(
        _script() + ["eval", str(ds), "--model", str(tiny_ckpt), "--json", "--modes", "dense", "dense+sparse",
                     "--fusion", "weighted", "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, env=env, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # stdout holds the JSON and nothing else
    assert set(result) == {"dataset", "model", "results"}
    assert result["model"] == str(tiny_ckpt)
    assert [(r["modes"], r["fusion"]) for r in result["results"]] == [
        (["dense"], None), (["dense", "sparse"], "weighted"), (["bm25"], None),
    ]
    for row in result["results"]:
        assert set(row) == {"modes", "fusion", "ndcg@10", "recall@100", "mrr@10"}
        assert all(0.0 <= row[m] <= 1.0 for m in ("ndcg@10", "recall@100", "mrr@10"))


def test_index_tolerates_latin1_empty_and_unsupported_files(tmp_path: Path, tiny_ckpt: Path, capsys):
    docs = tmp_path / "mixed"
    docs.mkdir()
    (docs / "good.txt").write_text("Paris is the capital of France.", encoding="utf-8")
    (docs / "latin1.txt").write_bytes("Le café crème est servi à Paris.".encode("latin-1"))
    (docs / "empty.md").write_text("", encoding="utf-8")
    (docs / "notes.rst").write_text("A reStructuredText file\n=======================\n", encoding="utf-8")
    out = tmp_path / "idx"
    code, _, err = run(["index", docs, "--out", out, "--model", tiny_ckpt], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    assert "warning: skipping latin1.txt: not utf-8 text" in err
    assert "summary: 1 file(s) indexed, 1 chunk(s), 3 file(s) skipped" in err
    assert "skipped empty.md: empty file" in err and "skipped notes.rst: unsupported extension '.rst'" in err
    assert "chunk/s" not in err and "%|" not in err  # a run shorter than PROGRESS_DELAY shows no bar
    # --encoding reads the Latin-1 file (UTF-8 text that is also valid Latin-1 decodes too)
    code, _, err = run(["index", docs, "--out", out, "--overwrite", "--encoding", "latin-1", "--model", tiny_ckpt], capsys)
    assert code == 0, err
    assert "summary: 2 file(s) indexed, 2 chunk(s), 2 file(s) skipped" in err
    code, out_text, _ = run(["search", out, "café crème", "--json", "--model", tiny_ckpt], capsys)
    assert "café crème" in out_text
    # --on-error fail stops at the first undecodable file, naming the fix
    code, _, err = run(["index", docs, "--out", tmp_path / "idx2", "--on-error", "fail", "--model", tiny_ckpt], capsys)
    assert code == 1 and "latin1.txt: not utf-8 text" in err and "--encoding" in err
    code, _, err = run(["index", docs, "--out", tmp_path / "idx3", "--encoding", "nonsense", "--model", tiny_ckpt], capsys)
    assert code == 1 and "unknown text encoding" in err


def test_index_progress_bar_shows_only_for_long_runs_and_never_under_quiet(docs_dir: Path, tmp_path: Path,
                                                                           tiny_ckpt: Path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "PROGRESS_DELAY", 0.0)  # every run counts as long
    code, _, err = run(["index", docs_dir, "--out", tmp_path / "a", "--model", tiny_ckpt], capsys)
    assert code == 0 and "chunk/s" in err
    code, _, err = run(["index", docs_dir, "--out", tmp_path / "b", "--model", tiny_ckpt, "--quiet"], capsys)
    assert code == 0 and "chunk/s" not in err and "%|" not in err
    assert "summary: " in err  # --quiet hides the bar, not the summary


def test_search_mode_is_a_deprecated_alias_of_modes(docs_dir: Path, tmp_path: Path, tiny_ckpt: Path, capsys):
    index = tmp_path / "idx"
    assert run(["index", docs_dir, "--out", index, "--model", tiny_ckpt], capsys)[0] == 0
    new = run(["search", index, "Rust", "--modes", "sparse", "--json"], capsys)
    with pytest.warns(DeprecationWarning, match="--modes"):
        old = run(["search", index, "Rust", "--mode", "sparse", "--json"], capsys)
    assert old[0] == new[0] == 0 and old[1] == new[1]
    assert "--mode is deprecated; use --modes" in old[2]
    code, _, err = run(["search", index, "Rust", "--mode", "sparse", "--modes", "dense"], capsys)
    assert code == 1 and "not both" in err
