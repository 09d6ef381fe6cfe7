"""Plain data containers shared by every part of m3_rag: ``M3Output`` (encoder output) and ``Hit`` (search result)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = ["M3Output", "Hit", "Record", "MODES", "STORE_MODES", "StoreLike"]

#: The three BGE-M3 retrieval modes (the encoder's outputs), in canonical order.
MODES: tuple[str, ...] = ("dense", "sparse", "colbert")
#: Every mode a store can hold, in canonical order: the encoder's three, then ``bm25`` (BM25 over the stored
#: document texts, :mod:`m3_rag.index.bm25`; the query side is the query text, :attr:`M3Output.text`).
STORE_MODES: tuple[str, ...] = MODES + ("bm25",)


@dataclass
class M3Output:
    """The three BGE-M3 representations for ``n`` texts.

    Any field may be ``None`` when that output was not computed.

    Attributes:
        dense: ``float32`` array of shape ``(n, d)``, rows L2-normalised.
        sparse: ``n`` dicts mapping token id (``int``) to a positive weight (``float``).
        colbert: ``n`` ``float32`` arrays of shape ``(tokens_i - 1, d_colbert)``, rows L2-normalised.
        text: ``n`` strings: the texts behind the rows, when known. Not a mode (never in :attr:`modes`); the
            ``bm25`` mode reads a query's text from here (``search`` sets it; ``search_encoded(query_text=...)``).

    ``len(out)`` is ``n``; ``out[i]`` and ``out[a:b]`` return an ``M3Output`` holding those rows.
    """

    dense: np.ndarray | None = None
    sparse: list[dict[int, float]] | None = None
    colbert: list[np.ndarray] | None = None
    text: list[str] | None = None

    def __post_init__(self) -> None:
        lengths = set()
        text_n = None
        if self.text is not None:
            if isinstance(self.text, str):
                self.text = [self.text]
            self.text = list(self.text)
            for i, t in enumerate(self.text):
                if not isinstance(t, str):
                    raise TypeError(f"M3Output.text[{i}] must be a str; got {type(t).__name__}")
            text_n = len(self.text)
        if self.dense is not None:
            dense = np.asarray(self.dense)
            if dense.ndim == 1:
                dense = dense[None, :]
            if dense.ndim != 2:
                raise ValueError(f"M3Output.dense must be 2-D (n, d); got shape {dense.shape}")
            self.dense = np.ascontiguousarray(dense, dtype=np.float32)
            lengths.add(self.dense.shape[0])
        if self.sparse is not None:
            if isinstance(self.sparse, dict):
                self.sparse = [self.sparse]
            if not isinstance(self.sparse, list):
                self.sparse = list(self.sparse)
            for i, row in enumerate(self.sparse):
                if not isinstance(row, dict):
                    raise TypeError(f"M3Output.sparse[{i}] must be a dict[int, float]; got {type(row).__name__}")
            lengths.add(len(self.sparse))
        if self.colbert is not None:
            if isinstance(self.colbert, np.ndarray) and self.colbert.ndim == 2:
                self.colbert = [self.colbert]
            rows = []
            for i, mat in enumerate(self.colbert):
                arr = np.asarray(mat, dtype=np.float32)
                if arr.ndim != 2:
                    raise ValueError(f"M3Output.colbert[{i}] must be 2-D (tokens, d); got shape {arr.shape}")
                rows.append(arr)
            self.colbert = rows
            lengths.add(len(self.colbert))
        if len(lengths) > 1:
            raise ValueError(f"M3Output fields have different numbers of rows: {sorted(lengths)}")
        if text_n is not None and lengths and text_n not in lengths:
            raise ValueError(f"M3Output.text has {text_n} strings but the vectors have {lengths.pop()} rows")

    @property
    def modes(self) -> tuple[str, ...]:
        """The modes this output holds, in canonical order."""
        return tuple(m for m in MODES if getattr(self, m) is not None)

    def __len__(self) -> int:
        if self.dense is not None:
            return int(self.dense.shape[0])
        if self.sparse is not None:
            return len(self.sparse)
        if self.colbert is not None:
            return len(self.colbert)
        if self.text is not None:
            return len(self.text)
        return 0

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> "M3Output":
        n = len(self)
        if isinstance(index, (int, np.integer)):
            i = int(index)
            if i < -n or i >= n:
                raise IndexError(f"M3Output index {i} out of range for {n} rows")
            rows: list[int] = [i % n]
        elif isinstance(index, slice):
            rows = list(range(n))[index]
        else:
            rows = [int(i) for i in np.asarray(index).reshape(-1)]
        return M3Output(
            dense=None if self.dense is None else self.dense[rows].reshape(len(rows), -1),
            sparse=None if self.sparse is None else [self.sparse[i] for i in rows],
            colbert=None if self.colbert is None else [self.colbert[i] for i in rows],
            text=None if self.text is None else [self.text[i] for i in rows],
        )

    def __iter__(self) -> Iterator["M3Output"]:
        for i in range(len(self)):
            yield self[i]

    @staticmethod
    def concat(outputs: Sequence["M3Output"]) -> "M3Output":
        """Stack several outputs row-wise. All must hold the same modes."""
        outputs = list(outputs)
        if not outputs:
            return M3Output()
        modes = outputs[0].modes
        for o in outputs[1:]:
            if o.modes != modes:
                raise ValueError(f"cannot concat M3Outputs holding different modes: {modes} vs {o.modes}")
        return M3Output(
            dense=np.concatenate([o.dense for o in outputs], axis=0) if "dense" in modes else None,  # type: ignore[misc]
            sparse=[r for o in outputs for r in o.sparse] if "sparse" in modes else None,  # type: ignore[union-attr]
            colbert=[r for o in outputs for r in o.colbert] if "colbert" in modes else None,  # type: ignore[union-attr]
            text=[t for o in outputs for t in o.text] if all(o.text is not None for o in outputs) else None,  # type: ignore[union-attr]
        )


@dataclass
class Hit:
    """One search result.

    Attributes:
        id: the document id.
        score: the fused score used for ranking (higher is better).
        text: the stored text, or ``None`` when none was stored.
        metadata: the stored metadata dict (a copy).
        scores: the exact per-mode score of this document, for every mode searched.
        explain: with ``explain=True``, the matched lexical terms as ``{term: contribution}``: sparse tokens as
            they are (when ``sparse`` is searched) and BM25 stems prefixed ``"bm25:"`` (when ``bm25`` is
            searched), sorted by contribution.
    """

    id: str
    score: float
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    explain: dict[str, float] | None = None


@dataclass
class Record:
    """A stored document as returned by ``get``: its id, text and metadata."""

    id: str
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class StoreLike(Protocol):
    """What the adapters need from a store: implemented by ``HybridStore``, ``QdrantHybridStore`` and
    ``QdrantEdgeStore``.

    Adapters check ``isinstance(store, StoreLike)`` so either store plugs in unchanged.
    """

    @property
    def encoder(self) -> Any: ...

    @property
    def modes(self) -> tuple[str, ...]: ...

    @property
    def fingerprint(self) -> str | None: ...

    def __len__(self) -> int: ...

    def add(self, texts: Any, **kwargs: Any) -> list[str]: ...

    def add_encoded(self, encoded: M3Output, **kwargs: Any) -> list[str]: ...

    def delete(self, ids: Any) -> int: ...

    def get(self, ids: Any) -> list[Record]: ...

    def search(self, query: str, **kwargs: Any) -> list[Hit]: ...

    def search_encoded(self, query: M3Output, **kwargs: Any) -> list[Hit]: ...
