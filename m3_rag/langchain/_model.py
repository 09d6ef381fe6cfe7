"""A lazily loaded, shareable :class:`~m3_rag.M3Encoder` reference used by the LangChain components."""

from __future__ import annotations

import os
import threading
from typing import Any, Mapping

from ..encoder import M3Encoder

__all__ = ["EncoderRef", "resolve_encoder_ref"]


class EncoderRef:
    """Holds an :class:`M3Encoder`, loading it with ``M3Encoder.from_pretrained`` on first use.

    Every component built from the same ``EncoderRef`` (for example an ``M3Embeddings`` and the
    ``M3SparseEmbeddings`` made from it) shares one loaded model. Loading is thread-safe, so
    concurrent ``aembed_*`` calls still load the model once.
    """

    def __init__(self, source: str | os.PathLike[str] | M3Encoder, load_kwargs: Mapping[str, Any] | None = None) -> None:
        self._lock = threading.Lock()
        self._load_kwargs = dict(load_kwargs or {})
        if isinstance(source, M3Encoder):
            self._encoder: M3Encoder | None = source
            self.source: str = source.name
        else:
            self._encoder = None
            self.source = os.fspath(source)

    @property
    def loaded(self) -> bool:
        """Whether the model has been loaded (or was given ready-made)."""
        return self._encoder is not None

    def get(self) -> M3Encoder:
        """The encoder, loaded now if this is the first use."""
        encoder = self._encoder
        if encoder is None:
            with self._lock:
                if self._encoder is None:
                    self._encoder = M3Encoder.from_pretrained(self.source, **self._load_kwargs)
                encoder = self._encoder
        return encoder


def resolve_encoder_ref(
    model: Any,
    *,
    device: str | None,
    model_kwargs: Mapping[str, Any] | None,
    owner: str,
) -> EncoderRef:
    """Turn the ``model=`` argument of a component into an :class:`EncoderRef`.

    ``model`` may be a hub id or a local folder (loaded lazily with ``device`` and ``model_kwargs``),
    a ready :class:`M3Encoder`, or another m3_rag LangChain component (its encoder is shared).
    """
    shared = getattr(model, "_encoder_ref", None)
    if isinstance(shared, EncoderRef) or isinstance(model, M3Encoder):
        if device is not None or model_kwargs:
            given = type(model).__name__
            raise ValueError(
                f"{owner}: device= and model_kwargs= only apply when model= is a hub id or a folder to load; "
                f"model= is a ready {given}, so they would be ignored. Drop them, or set them where that encoder is built."
            )
        return shared if isinstance(shared, EncoderRef) else EncoderRef(model)
    if isinstance(model, (str, os.PathLike)):
        if isinstance(model, str) and not model.strip():
            raise ValueError(f"{owner}: model= must be a hub id (e.g. 'BAAI/bge-m3') or a checkpoint folder; got ''")
        if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
            raise TypeError(f"{owner}: model_kwargs must be a dict of M3Encoder.from_pretrained arguments; got {type(model_kwargs).__name__}")
        kwargs = dict(model_kwargs or {})
        if device is not None:
            if "device" in kwargs:
                raise ValueError(f"{owner}: device is given both as device= and in model_kwargs; pass it once")
            kwargs["device"] = device
        return EncoderRef(model, kwargs)
    raise TypeError(
        f"{owner}: model= must be a hub id or local folder (str / os.PathLike), an m3_rag.M3Encoder, or another "
        f"m3_rag LangChain component to share its encoder; got {type(model).__name__}"
    )


def check_text(text: Any, what: str = "text") -> str:
    """``text`` if it is a ``str``, else a ``TypeError`` naming what was given."""
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str; got {type(text).__name__} ({text!r:.60})")
    return text


def check_texts(texts: Any, method: str) -> list[str]:
    """``texts`` as a list of ``str``; a bare string or a non-str item is a ``TypeError``."""
    if isinstance(texts, str):
        raise TypeError(
            f"{method} expects a list of strings; got a single str. Wrap it in a list, or use embed_query for one text."
        )
    if texts is None or not hasattr(texts, "__iter__"):
        raise TypeError(f"{method} expects a list of strings; got {type(texts).__name__}")
    items = list(texts)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise TypeError(f"{method}: texts[{i}] must be a str; got {type(t).__name__} ({t!r:.60})")
    return items


class EncoderComponent:
    """Shared constructor and encoding calls of :class:`M3Embeddings` and :class:`M3SparseEmbeddings`."""

    _encoder_ref: EncoderRef

    def _setup(
        self,
        model: Any,
        *,
        device: str | None,
        model_kwargs: Mapping[str, Any] | None,
        batch_size: int,
        query_max_length: int | None,
        document_max_length: int | None,
        show_progress_bar: bool | None,
    ) -> None:
        owner = type(self).__name__
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"{owner}: batch_size must be a positive int; got {batch_size!r}")
        for name, value in (("query_max_length", query_max_length), ("document_max_length", document_max_length)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 2):
                raise ValueError(f"{owner}: {name} must be None (the encoder default) or an int >= 2; got {value!r}")
        self._encoder_ref = resolve_encoder_ref(model, device=device, model_kwargs=model_kwargs, owner=owner)
        self.batch_size = batch_size
        self.query_max_length = query_max_length
        self.document_max_length = document_max_length
        self.show_progress_bar = show_progress_bar

    @property
    def encoder(self) -> M3Encoder:
        """The :class:`~m3_rag.M3Encoder` (loaded on first access). Pass it to ``HybridStore(encoder=...)``."""
        return self._encoder_ref.get()

    @property
    def is_loaded(self) -> bool:
        """Whether the model is loaded yet (construction never loads it)."""
        return self._encoder_ref.loaded

    def _encode_documents(self, texts: list[str], *, dense: bool, sparse: bool) -> Any:
        return self.encoder.encode_documents(
            texts,
            dense=dense,
            sparse=sparse,
            colbert=False,
            max_length=self.document_max_length,
            batch_size=self.batch_size,
            show_progress=self.show_progress_bar,
        )

    def _encode_query(self, text: str, *, dense: bool, sparse: bool) -> Any:
        return self.encoder.encode_queries(
            [text], dense=dense, sparse=sparse, colbert=False, max_length=self.query_max_length, batch_size=1
        )

    def __repr__(self) -> str:
        state = "loaded" if self.is_loaded else "not loaded"
        return f"{type(self).__name__}(model={self._encoder_ref.source!r}, {state})"
