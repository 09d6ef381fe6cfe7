"""ColBERT index: every document's token vectors packed contiguously per segment, stored by a codec object."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..scoring import pack_colbert
from ._segments import Segments, ranges
from .base import ModeIndex, topk_stable
from .codecs import ColbertCodec, make_codec
from .pooling import check_pool_factor, pool_tokens

__all__ = ["ColbertIndex"]


@dataclass
class _Packed:
    parts: dict[str, np.ndarray]  # codec arrays, first axis = token
    offsets: np.ndarray  # (n + 1,) int64, local


def _concat(segs: list[_Packed], keep: list[np.ndarray] | None) -> _Packed:
    names = list(segs[0].parts)
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in names}
    lens = []
    for i, s in enumerate(segs):
        lengths = np.diff(s.offsets)
        if keep is None:
            for k in names:
                chunks[k].append(s.parts[k])
            lens.append(lengths)
        else:
            rows = keep[i]
            idx = ranges(s.offsets[rows], lengths[rows])
            for k in names:
                chunks[k].append(s.parts[k][idx])
            lens.append(lengths[rows])
    lengths = np.concatenate(lens)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return _Packed({k: np.concatenate(v, axis=0) for k, v in chunks.items()}, offsets)


class ColbertIndex(ModeIndex):
    """Multi-vector (late-interaction) documents scored with MaxSim: ``mean_i max_j q_i . d_j``.

    Args:
        dim: token vector dimension (> 0).
        codec: a :class:`~m3_rag.index.codecs.ColbertCodec` or a codec name (``"fp16"`` default).
        pool_factor: token pooling at index time (:func:`~m3_rag.index.pooling.pool_tokens`): each document's
            ``n`` token vectors are stored as at most ``ceil(n / pool_factor)`` Ward-cluster means (not
            renormalised). ``1`` (default) stores every token. Queries are never pooled.
    """

    mode = "colbert"

    def __init__(self, dim: int, codec: ColbertCodec | str = "fp16", pool_factor: int = 1) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise ValueError(f"ColBERT dimension must be a positive int; got {dim!r}")
        self.dim = int(dim)
        self.codec = make_codec(codec) if isinstance(codec, str) else codec
        self.pool_factor = check_pool_factor(pool_factor)
        self._segs: Segments[_Packed] = Segments(_concat)

    def __len__(self) -> int:
        return len(self._segs)

    def prepare(self, rows: Any) -> _Packed:
        mats = [m if m.shape[0] else np.zeros((0, self.dim), np.float32) for m in rows]
        for m in mats:
            if m.shape[1] != self.dim:
                raise ValueError(f"ColBERT dimensions {m.shape[1]} and {self.dim} differ (the store holds {self.dim})")
            if not np.all(np.isfinite(m)):
                raise ValueError("ColBERT vectors contain NaN or infinity")
        if self.pool_factor > 1:
            mats = [pool_tokens(m, self.pool_factor) if m.shape[0] > 1 else m for m in mats]
        packed, offsets = pack_colbert(mats, np.float32)
        packed = packed.reshape(-1, self.dim)
        if self.codec.trained and not self.codec.is_fitted:
            self.codec.fit(packed)
        return _Packed(self.codec.encode(packed), offsets)

    def _copy_state(self) -> None:
        self._segs = self._segs.copy()

    def append(self, prepared: _Packed) -> None:
        self._segs.append(prepared, len(prepared.offsets) - 1)

    def compact(self, keep: np.ndarray) -> "ColbertIndex":
        out = ColbertIndex(self.dim, self.codec, self.pool_factor)
        out._segs = self._segs.compacted(keep)
        return out

    def _scores(self, q: np.ndarray, slots: np.ndarray) -> np.ndarray:
        out = np.zeros(len(slots), dtype=np.float32)
        if len(slots) == 0:
            return out
        seg_of = self._segs.of(slots)
        for g in np.unique(seg_of).tolist():
            start, n, seg = self._segs.starts[g], self._segs.sizes[g], self._segs.data[g]
            where = np.flatnonzero(seg_of == g)
            local = slots[where] - start
            full = len(local) == n and n > 0 and local[0] == 0 and bool(np.all(np.diff(local) == 1))
            out[where] = self.codec.maxsim(q, seg.parts, seg.offsets, None if full else local)
        return out

    def topk(self, Q: Any, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        slots = np.flatnonzero(allowed) if allowed is not None else np.arange(len(self), dtype=np.int64)
        D = np.full((len(Q), k), -np.inf, dtype=np.float32)
        I = np.full((len(Q), k), -1, dtype=np.int64)
        for i in range(len(Q)):
            s = self._scores(Q[i], slots)
            top = topk_stable(s, k)
            D[i, : len(top)], I[i, : len(top)] = s[top], slots[top]
        return D, I

    def score(self, Q: Any, slots: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self._scores(Q[i], np.asarray(s, dtype=np.int64)) for i, s in enumerate(slots)]

    def rows(self, slots: np.ndarray) -> list[np.ndarray]:
        out = []
        for slot in np.asarray(slots).tolist():
            g = int(self._segs.of(np.array([slot]))[0])
            seg = self._segs.data[g]
            local = slot - self._segs.starts[g]
            out.append(self.codec.decode(seg.parts, slice(int(seg.offsets[local]), int(seg.offsets[local + 1]))))
        return out

    def nbytes(self) -> int:
        return sum(sum(a.nbytes for a in s.parts.values()) + s.offsets.nbytes for s in self._segs.data)

    def n_tokens(self) -> int:
        return sum(int(s.offsets[-1]) for s in self._segs.data)

    def to_arrays(self) -> tuple[dict[str, Any], dict[str, Any]]:
        seg, n = self._segs.single()
        if seg is None and not self.codec.is_fitted:
            raise ValueError(f"nothing to save: the {self.codec.name} codec is not trained (no ColBERT rows were added)")
        if seg is None:
            seg = _Packed(self.codec.encode(np.zeros((0, self.dim), np.float32)), np.zeros(1, np.int64))
        arrays: dict[str, Any] = {f"colbert_{k}.npy": v for k, v in seg.parts.items()}
        arrays["colbert_offsets.npy"] = seg.offsets
        for k, v in self.codec.state().items():
            arrays[f"colbert_codec_{k}.npy"] = v
        meta = {"colbert_dim": self.dim, "colbert_dtype": self.codec.name, "colbert_tokens": int(seg.offsets[-1]),
                "colbert_pool_factor": self.pool_factor}
        return meta, arrays

    @classmethod
    def from_arrays(cls, meta: Mapping[str, Any], load: Any, n: int, codec: ColbertCodec | None = None,
                    state_names: Sequence[str] = ()) -> "ColbertIndex":
        dim = meta["colbert_dim"]
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"colbert_dim must be a positive int; got {dim!r}")
        pf = meta.get("colbert_pool_factor", 1)
        if isinstance(pf, bool) or not isinstance(pf, int) or pf < 1:
            raise ValueError(f"colbert_pool_factor must be an int >= 1; got {pf!r}")
        out = cls(dim, codec if codec is not None else meta["colbert_dtype"], pf)
        if state_names:
            out.codec.load_state({k: np.array(load(f"colbert_codec_{k}.npy", None, None)) for k in state_names}, dim)
        T = meta["colbert_tokens"]
        parts = {}
        for name, dtype in out.codec.parts.items():
            a = load(f"colbert_{name}.npy", dtype, 2 if name == "tokens" else 1, rows=T)
            parts[name] = a
        tokens = parts["tokens"]
        if tokens.ndim == 2 and out.codec.name in ("fp32", "fp16", "int8") and tokens.shape[1] != dim:
            raise ValueError(f"colbert_tokens.npy has shape {tokens.shape}; expected ({T}, {dim})")
        offsets = load("colbert_offsets.npy", np.int64, 1, rows=n + 1)
        if offsets[0] != 0 or offsets[-1] != T or np.any(np.diff(offsets) < 0):
            raise ValueError("colbert_offsets.npy is inconsistent with the token array")
        if out.codec.name in ("fp32", "fp16") and not np.all(np.isfinite(tokens[: min(len(tokens), 1 << 16)])):
            raise ValueError("colbert_tokens.npy holds NaN or infinity")
        if "scale" in parts and not np.all(np.isfinite(parts["scale"])):
            raise ValueError("colbert_scale.npy holds NaN or infinity")
        if n:
            out._segs.append(_Packed(parts, offsets), n)
        return out
