"""Per-mode indexes behind one batch-first protocol (:class:`ModeIndex`), and ColBERT storage codecs."""

from .base import ModeIndex, topk_stable
from .codecs import CODECS, ColbertCodec, make_codec

__all__ = ["ModeIndex", "topk_stable", "ColbertCodec", "CODECS", "make_codec"]
