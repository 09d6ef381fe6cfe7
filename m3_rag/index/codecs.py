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

__all__ = [
    "ColbertCodec", "Fp32Codec", "Fp16Codec", "Int8Codec", "BinaryCodec", "PQCodec", "CODECS", "make_codec",
]


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


# ------------------------------------------------------------------------------------ compact codecs
def _doc_rows(offsets: np.ndarray, docs: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``(validated doc indices, their token counts)`` of a packed segment (``docs=None``: all)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    n_docs = len(offsets) - 1
    if n_docs < 0 or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
        raise ValueError("maxsim: offsets must start at 0 and be non-decreasing, one more than the documents")
    idx = np.arange(n_docs, dtype=np.int64) if docs is None else np.asarray(docs, dtype=np.int64).reshape(-1)
    bad = idx[(idx < 0) | (idx >= n_docs)]
    if len(bad):
        raise ValueError(f"maxsim: doc_idx {bad[:5].tolist()} out of range for {n_docs} documents (0..{n_docs - 1})")
    return idx, offsets[idx + 1] - offsets[idx]


def _gather_rows(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Token row numbers of several ``[start, start+length)`` ranges, concatenated, without a Python loop."""
    total = int(lengths.sum())
    seg = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=seg[1:])
    return np.arange(total, dtype=np.int64) - np.repeat(seg - starts, lengths)


def _maxsim_blocks(q: np.ndarray, offsets: np.ndarray, docs: np.ndarray | None, sims_of_rows, chunk_tokens: int) -> np.ndarray:
    """MaxSim driver for compact codecs: group the selected documents into chunks of at most
    ``chunk_tokens`` token rows, let ``sims_of_rows(rows) -> (len(rows), m)`` score each chunk in one go,
    then a segmented max (``np.maximum.reduceat``) and the mean over query tokens."""
    q = np.asarray(q, dtype=np.float32)
    if q.ndim != 2 or q.shape[0] == 0:
        raise ValueError(f"maxsim: the query must be a non-empty (m, d) matrix; got shape {q.shape}")
    idx, lengths = _doc_rows(offsets, docs)
    out = np.zeros(len(idx), dtype=np.float32)
    nonempty = np.nonzero(lengths > 0)[0]
    if len(nonempty) == 0:
        return out
    starts = np.asarray(offsets, dtype=np.int64)[idx[nonempty]]
    lens = lengths[nonempty]
    ends_cum = np.cumsum(lens)
    pos = 0
    while pos < len(nonempty):
        base = ends_cum[pos - 1] if pos else 0
        end = max(pos + 1, int(np.searchsorted(ends_cum, base + chunk_tokens, side="right")))
        sel_starts, sel_lens = starts[pos:end], lens[pos:end]
        sims = sims_of_rows(_gather_rows(sel_starts, sel_lens))
        seg = np.zeros(len(sel_lens), dtype=np.int64)
        np.cumsum(sel_lens[:-1], out=seg[1:])
        out[nonempty[pos:end]] = np.maximum.reduceat(sims, seg, axis=0).sum(axis=1) / np.float32(q.shape[0])
        pos = end
    return out


def _check_dim(q: np.ndarray, dim: int | None, codec: str) -> None:
    if dim is not None and q.shape[1] != dim:
        raise ValueError(f"{codec}: the query has dimension {q.shape[1]} but the stored tokens have {dim}")


#: ``_SIGNS[b]`` = the 8 bits of byte ``b`` (most significant first, as ``np.packbits``) as -1.0/+1.0.
_SIGNS = (np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float32) * 2.0 - 1.0)

#: Per-token scales of :class:`BinaryCodec` (how a sign vector ``s`` stands for ``x``: ``x ~= scale * s``).
BINARY_SCALES = ("mean_abs", "l2", "none")


class BinaryCodec(ColbertCodec):
    """One sign bit per dimension (``np.packbits``; ``d/8`` bytes per token) plus a per-token scale, scored
    asymmetrically: the float query against ``scale * sign(x)``.

    ``scale``:
      - ``"mean_abs"`` (default): ``mean(|x|)``, stored as float16 (2 bytes per token). It is the least-squares
        scale of a sign vector (``argmin_a ||x - a*sign(x)||``), so MaxSim comes closest to fp32 in value and in
        ranking (``bench/colbert.py`` measures the three choices);
      - ``"l2"``: ``||x|| / sqrt(d)``, float16 (2 bytes per token);
      - ``"none"``: no stored scale; every token uses ``1/sqrt(d)``, which is the ``"l2"`` scale of unit-norm
        vectors (ColBERT vectors are normalised), so scores keep fp32's magnitude for fusion.

    Scoring decodes a chunk of candidate tokens in one go through a ``(256, 8)`` byte->signs table, one GEMM
    with the query and a segmented max; never a Python loop over documents.
    """

    name = "binary"
    parts = {"tokens": np.uint8, "scale": np.float16}

    def __init__(self, scale: str = "mean_abs", chunk_tokens: int = 32768) -> None:
        if scale not in BINARY_SCALES:
            raise ValueError(f"binary codec: unknown scale {scale!r}; choose one of {', '.join(BINARY_SCALES)}")
        if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
            raise ValueError(f"binary codec: chunk_tokens must be a positive int; got {chunk_tokens!r}")
        self.scale = scale
        self.chunk_tokens = chunk_tokens
        self.parts = {"tokens": np.uint8} if scale == "none" else {"tokens": np.uint8, "scale": np.float16}

    def bytes_per_token(self, dim: int) -> float:
        return float((dim + 7) // 8 + (0 if self.scale == "none" else 2))

    def encode(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"binary codec: expected a (T, d) matrix; got shape {x.shape}")
        out = {"tokens": np.packbits(x > 0, axis=1)}
        if self.scale == "mean_abs":
            out["scale"] = np.abs(x).mean(axis=1).astype(np.float16) if x.shape[1] else np.zeros(len(x), np.float16)
        elif self.scale == "l2":
            out["scale"] = (np.linalg.norm(x, axis=1) / np.sqrt(max(x.shape[1], 1))).astype(np.float16)
        return out

    def _signs(self, packed: np.ndarray, dim: int) -> np.ndarray:
        return _SIGNS[packed].reshape(len(packed), -1)[:, :dim]

    def _scales(self, parts: Mapping[str, np.ndarray], rows, dim: int) -> np.ndarray | np.float32:
        if self.scale == "none":
            return np.float32(1.0 / np.sqrt(dim))
        return parts["scale"][rows].astype(np.float32)

    def decode(self, parts: Mapping[str, np.ndarray], idx: np.ndarray | slice, dim: int | None = None) -> np.ndarray:
        """Float32 ``scale * sign`` vectors of rows ``idx`` (``dim`` defaults to ``8 * bytes``)."""
        packed = parts["tokens"][idx]
        dim = packed.shape[1] * 8 if dim is None else dim
        s = self._scales(parts, idx, dim)
        return self._signs(packed, dim) * (s if np.isscalar(s) else s[:, None])

    def maxsim(self, q: np.ndarray, parts: Mapping[str, np.ndarray], offsets: np.ndarray, docs: np.ndarray | None) -> np.ndarray:
        q = np.asarray(q, dtype=np.float32)
        packed = parts["tokens"]
        if q.ndim != 2 or (packed.shape[0] and (q.shape[1] + 7) // 8 != packed.shape[1]):
            raise ValueError(f"binary codec: query of shape {q.shape} does not match packed tokens of {packed.shape[1]} bytes")
        dim = q.shape[1]
        qt = np.ascontiguousarray(q.T)

        def sims(rows: np.ndarray) -> np.ndarray:
            out = self._signs(packed[rows], dim) @ qt
            s = self._scales(parts, rows, dim)
            out *= s if np.isscalar(s) else s[:, None]
            return out

        return _maxsim_blocks(q, offsets, docs, sims, self.chunk_tokens)

    def __repr__(self) -> str:
        return f"BinaryCodec(scale={self.scale!r})"


class PQCodec(ColbertCodec):
    """FAISS product quantisation: ``m`` sub-quantisers of ``2**nbits`` centroids each, so ``m * nbits / 8``
    bytes per token (``m`` bytes with the default ``nbits=8``). Trained by :meth:`fit` on a sample of the
    corpus's token vectors; FAISS needs at least ``2**nbits`` training vectors (:attr:`min_train`), and more
    (``~40 * 2**nbits``) trains better.

    ``m`` (default ``None`` = ``d // 16``, i.e. 16 dimensions per sub-quantiser: 64 bytes at 1024-d, 24 at
    384-d) must divide ``d``. ``opq=True`` learns an OPQ rotation first (``faiss.OPQMatrix``).

    Scoring uses lookup tables (query sub-vector . centroid) gathered for the candidates' codes in one go per
    sub-quantiser, then a segmented max; :meth:`decode` reconstructs vectors (a gather of centroids). :meth:`state` is FAISS's own serialisation (``faiss.serialize_index`` of an ``IndexPQ``, or of an
    ``IndexPreTransform`` with OPQ) as a ``uint8`` array; :meth:`load_state` checks dimension, ``m`` and
    ``nbits`` against what the index expects.
    """

    name = "pq"
    parts = {"tokens": np.uint8}
    trained = True

    def __init__(self, m: int | None = None, nbits: int = 8, opq: bool = False, chunk_tokens: int = 32768) -> None:
        for label, v in (("m", m), ("nbits", nbits)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"pq codec: {label} must be a positive int; got {v!r}")
        if nbits != 8:
            raise ValueError(f"pq codec: nbits={nbits!r} is not supported; use nbits=8 (one byte per sub-quantiser)")
        self.m, self.nbits, self.opq, self.chunk_tokens = m, nbits, bool(opq), chunk_tokens
        self.dim: int | None = None
        self._index = None  # faiss.IndexPQ or IndexPreTransform(OPQ, IndexPQ)
        self._centroids: np.ndarray | None = None  # (m, ksub, dsub) float32
        self._rotation: np.ndarray | None = None  # (d, d) float32 OPQ matrix: x_rot = x @ R.T

    @property
    def min_train(self) -> int:
        """The fewest training vectors FAISS accepts: one per centroid (``2**nbits``)."""
        return 1 << self.nbits

    @property
    def is_fitted(self) -> bool:
        return self._index is not None

    def _m_for(self, dim: int) -> int:
        m = self.m if self.m is not None else max(1, dim // 16)
        if dim % m:
            raise ValueError(f"pq codec: m={m} must divide the dimension {dim}; pick a divisor of {dim}")
        return m

    def bytes_per_token(self, dim: int) -> float:
        return float(self._m_for(dim) * self.nbits // 8)

    def fit(self, sample: np.ndarray) -> None:
        """Train the quantiser on a ``(T, d)`` float32 sample (at least :attr:`min_train` rows)."""
        import faiss  # a core dependency (dense index)

        x = np.ascontiguousarray(np.asarray(sample, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] == 0:
            raise ValueError(f"pq codec: the training sample must be a (T, d) matrix; got shape {x.shape}")
        if len(x) < self.min_train:
            raise ValueError(
                f"pq codec: {len(x)} token vectors are too few to train {1 << self.nbits} centroids per sub-quantiser; "
                f"it needs at least {self.min_train} (better {40 * self.min_train}): add more documents in the first "
                "batch, or use colbert_storage='binary' / 'int8' which need no training"
            )
        d = x.shape[1]
        m = self._m_for(d)
        if self.opq:
            index = faiss.index_factory(d, f"OPQ{m},PQ{m}x{self.nbits}", faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexPQ(d, m, self.nbits, faiss.METRIC_INNER_PRODUCT)
            index.pq.cp.min_points_per_centroid = 1  # small samples are allowed (>= min_train); no per-call warning
        index.train(x)
        self._install(index, d)

    def _install(self, index, dim: int) -> None:
        import faiss

        if isinstance(index, faiss.IndexPreTransform):
            vt = faiss.downcast_VectorTransform(index.chain.at(0))
            pq_index = faiss.downcast_index(index.index)
            self._rotation = faiss.vector_to_array(vt.A).reshape(vt.d_out, vt.d_in).astype(np.float32)
        else:
            pq_index = index
            self._rotation = None
        pq = pq_index.pq
        self._centroids = faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub).astype(np.float32)
        self._index, self.dim, self.m = index, dim, pq.M

    def _need_fit(self) -> None:
        if self._index is None:
            raise RuntimeError("pq codec: not trained yet; call fit(sample) (the index trains it on its first add)")

    def encode(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self._need_fit()
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"pq codec: expected a (T, {self.dim}) matrix; got shape {x.shape}")
        if self._rotation is not None:
            x = np.ascontiguousarray(x @ self._rotation.T)
        pq = self._pq()
        return {"tokens": pq.compute_codes(x).reshape(len(x), self.m)}

    def _pq(self):
        import faiss

        idx = self._index
        if isinstance(idx, faiss.IndexPreTransform):
            idx = faiss.downcast_index(idx.index)
        return idx.pq

    def _decode_rotated(self, codes: np.ndarray) -> np.ndarray:
        """Reconstruction in the (OPQ-rotated) quantised space: a gather of centroids, ``(T, d)``."""
        assert self._centroids is not None
        return self._centroids[np.arange(self.m), codes].reshape(len(codes), -1)

    def decode(self, parts: Mapping[str, np.ndarray], idx: np.ndarray | slice) -> np.ndarray:
        self._need_fit()
        rec = self._decode_rotated(parts["tokens"][idx])
        return rec @ self._rotation if self._rotation is not None else rec

    def maxsim(self, q: np.ndarray, parts: Mapping[str, np.ndarray], offsets: np.ndarray, docs: np.ndarray | None) -> np.ndarray:
        self._need_fit()
        q = np.asarray(q, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"pq codec: the query must have shape (m, {self.dim}); got {q.shape}")
        codes = parts["tokens"]
        # Asymmetric distance computation: x ~ rec @ R, so x . q = rec . (q @ R.T); one lookup table of
        # q_sub . centroid per sub-quantiser (m, 256, nq), then per chunk of candidate tokens a gather-and-add
        # per sub-quantiser (a loop over the m sub-quantisers, never over documents). Measured ~4x faster than
        # decoding the tokens and one GEMM (bench/colbert.py latency).
        qr = q @ self._rotation.T if self._rotation is not None else q
        assert self._centroids is not None
        m, ksub, dsub = self._centroids.shape
        lut = np.einsum("mkd,qmd->mkq", self._centroids, qr.reshape(len(qr), m, dsub)).reshape(m * ksub, len(qr))
        base = np.arange(m, dtype=np.intp) * ksub

        def sims(rows: np.ndarray) -> np.ndarray:
            c = codes[rows]
            out = np.zeros((len(rows), len(qr)), dtype=np.float32)
            for j in range(m):
                out += lut[c[:, j].astype(np.intp) + base[j]]
            return out

        return _maxsim_blocks(q, offsets, docs, sims, self.chunk_tokens)

    def state(self) -> dict[str, np.ndarray]:
        import faiss

        self._need_fit()
        return {"faiss_index": np.asarray(faiss.serialize_index(self._index), dtype=np.uint8)}

    def load_state(self, state: Mapping[str, np.ndarray], dim: int) -> None:
        import faiss

        if "faiss_index" not in state:
            raise ValueError("pq codec: the saved codec state has no 'faiss_index' array; the index folder is incomplete")
        blob = np.asarray(state["faiss_index"])
        if blob.dtype != np.uint8 or blob.ndim != 1 or blob.size == 0:
            raise ValueError(f"pq codec: the saved codec state must be a non-empty 1-d uint8 array; got {blob.dtype} {blob.shape}")
        try:
            index = faiss.deserialize_index(blob)
        except Exception as exc:  # FAISS raises RuntimeError on truncated or foreign bytes
            raise ValueError(f"pq codec: the saved codec state is corrupt or truncated ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
        pq_index = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index
        if not isinstance(pq_index, faiss.IndexPQ):
            raise ValueError(f"pq codec: the saved codec state holds a {type(pq_index).__name__}, not an IndexPQ")
        if index.d != dim:
            raise ValueError(f"pq codec: the saved quantiser has dimension {index.d} but the ColBERT vectors have {dim}")
        pq = pq_index.pq
        if self.m is not None and pq.M != self.m:
            raise ValueError(f"pq codec: the saved quantiser has m={pq.M} sub-quantisers, expected m={self.m}")
        if pq.nbits != self.nbits:
            raise ValueError(f"pq codec: the saved quantiser has nbits={pq.nbits}, expected nbits={self.nbits}")
        if not index.is_trained:
            raise ValueError("pq codec: the saved quantiser is not trained")
        self.opq = isinstance(index, faiss.IndexPreTransform)
        self._install(index, dim)

    def __repr__(self) -> str:
        return f"PQCodec(m={self.m!r}, nbits={self.nbits}, opq={self.opq})"


#: Codec classes by name (``colbert_dtype`` / ``colbert_storage`` values).
CODECS: dict[str, type[ColbertCodec]] = {c.name: c for c in (Fp32Codec, Fp16Codec, Int8Codec, BinaryCodec, PQCodec)}



def make_codec(name: str, **kwargs: Any) -> ColbertCodec:
    """A codec instance by name; raises ``ValueError`` listing the known names."""
    cls = CODECS.get(name)
    if cls is None:
        raise ValueError(f"unknown ColBERT storage {name!r}; choose one of {', '.join(CODECS)}")
    return cls(**kwargs)
