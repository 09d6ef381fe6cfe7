"""Storage formats of ColBERT token vectors: one codec object per format, so a new format is a new class.

A codec turns a ``(T, d)`` float32 token matrix into named per-token arrays (first axis ``T``), turns
rows of them back into float32, and scores a query against packed documents with MaxSim. Codecs
with trained parameters (for example product quantisation) keep them in :meth:`ColbertCodec.state`,
persisted next to the index as plain arrays.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import numpy as np

from ..scoring import maxsim_packed

__all__ = ["ColbertCodec", "Fp32Codec", "Fp16Codec", "Int8Codec", "CODECS", "make_codec"]


class ColbertCodec:
    """Base class: float32 storage semantics; subclasses override what differs."""

    name: ClassVar[str] = ""
    #: Per-token array names this codec stores (``"tokens"`` first) and their numpy dtypes.
    parts: ClassVar[dict[str, Any]] = {}
    #: Whether :meth:`fit` must see a sample before :meth:`encode` (trained codecs).
    trained: ClassVar[bool] = False

    def fit(self, sample: np.ndarray) -> None:
        """Train on a ``(T, d)`` float32 sample of token vectors (no-op for untrained codecs)."""

    @property
    def is_fitted(self) -> bool:
        return True

    def encode(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """``(T, d)`` float32 -> per-token arrays (each with first axis ``T``)."""
        raise NotImplementedError

    def decode(self, parts: Mapping[str, np.ndarray], idx: np.ndarray | slice) -> np.ndarray:
        """The float32 vectors of token rows ``idx``."""
        raise NotImplementedError

    def maxsim(self, q: np.ndarray, parts: Mapping[str, np.ndarray], offsets: np.ndarray, docs: np.ndarray | None) -> np.ndarray:
        """MaxSim of query ``q`` (``(m, d)`` float32) against documents ``docs`` (default all) of a packed
        segment: one GEMM per chunk of decoded tokens and a segmented max (see :func:`m3_rag.scoring.maxsim_packed`)."""
        raise NotImplementedError

    def bytes_per_token(self, dim: int) -> float:
        """Stored bytes per token vector of dimension ``dim``."""
        return float(sum(np.dtype(dt).itemsize * (dim if name == "tokens" else 1) for name, dt in self.parts.items()))

    def state(self) -> dict[str, np.ndarray]:
        """Trained parameters to persist (empty for untrained codecs)."""
        return {}

    def load_state(self, state: Mapping[str, np.ndarray], dim: int) -> None:
        """Restore :meth:`state`; raises ``ValueError`` when it does not fit dimension ``dim``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _FloatCodec(ColbertCodec):
    dtype: ClassVar[Any] = np.float32

    def encode(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"tokens": np.asarray(x, dtype=np.float32).astype(self.dtype, copy=False)}

    def decode(self, parts: Mapping[str, np.ndarray], idx: np.ndarray | slice) -> np.ndarray:
        return parts["tokens"][idx].astype(np.float32)

    def maxsim(self, q: np.ndarray, parts: Mapping[str, np.ndarray], offsets: np.ndarray, docs: np.ndarray | None) -> np.ndarray:
        return maxsim_packed(q, parts["tokens"], offsets, docs)


class Fp32Codec(_FloatCodec):
    """float32: 4 bytes per value, exact."""

    name = "fp32"
    parts = {"tokens": np.float32}
    dtype = np.float32


class Fp16Codec(_FloatCodec):
    """float16: 2 bytes per value (the default). Values beyond float16's range (65504) are refused."""

    name = "fp16"
    parts = {"tokens": np.float16}
    dtype = np.float16

    def encode(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = np.asarray(x, dtype=np.float32)
        if x.size and float(np.abs(x).max()) > float(np.finfo(np.float16).max):
            raise ValueError(
                "ColBERT values exceed float16's range (65504); store them with colbert_dtype='fp32' or 'int8'"
            )
        return {"tokens": x.astype(np.float16)}


class Int8Codec(ColbertCodec):
    """Symmetric per-token int8: 1 byte per value plus a float32 scale per token (``x ~= q * scale``)."""

    name = "int8"
    parts = {"tokens": np.int8, "scale": np.float32}

    def encode(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = np.asarray(x, dtype=np.float32)
        amax = np.abs(x).max(axis=1) if x.shape[0] else np.zeros(0, dtype=np.float32)
        scale = (amax / 127.0).astype(np.float32)
        scale[scale == 0] = 1.0
        q = np.rint(x / scale[:, None]).clip(-127, 127).astype(np.int8)
        return {"tokens": q, "scale": scale}

    def decode(self, parts: Mapping[str, np.ndarray], idx: np.ndarray | slice) -> np.ndarray:
        mat = parts["tokens"][idx].astype(np.float32)
        mat *= parts["scale"][idx][:, None]
        return mat

    def maxsim(self, q: np.ndarray, parts: Mapping[str, np.ndarray], offsets: np.ndarray, docs: np.ndarray | None) -> np.ndarray:
        return maxsim_packed(q, parts["tokens"], offsets, docs, scale=parts["scale"])


#: Codec classes by name (``colbert_dtype`` values).
CODECS: dict[str, type[ColbertCodec]] = {c.name: c for c in (Fp32Codec, Fp16Codec, Int8Codec)}


def make_codec(name: str, **kwargs: Any) -> ColbertCodec:
    """A codec instance by name; raises ``ValueError`` listing the known names."""
    cls = CODECS.get(name)
    if cls is None:
        raise ValueError(f"unknown ColBERT storage {name!r}; choose one of {', '.join(CODECS)}")
    return cls(**kwargs)
