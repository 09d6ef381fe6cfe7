"""Shared fixtures: tiny BGE-M3-layout checkpoints built on the fly, and the shared datasets folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# Tiny models are ~50x slower with 2 threads on a loaded 2-core machine; tests only use tiny models.
torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).parent))

from tiny_checkpoint import make_tiny_bert  # noqa: E402

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT backbone (MiniLM tokenizer) with sparse and ColBERT heads."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny") / "ckpt", seed=0)


@pytest.fixture(scope="session")
def tiny_encoder(tiny_ckpt: Path):
    from m3_rag import M3Encoder

    return M3Encoder.from_pretrained(tiny_ckpt, device="cpu")


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    if not DATASETS.is_dir():
        pytest.skip(f"shared datasets not found at {DATASETS}")
    return DATASETS
