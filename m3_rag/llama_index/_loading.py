"""Turn the ``model=`` argument of the adapters (hub id, local path or ``M3Encoder``) into an encoder, lazily."""

from __future__ import annotations

import os
import threading
from typing import Any, Mapping

from ..encoder import M3Encoder

ModelRef = str | os.PathLike[str] | M3Encoder


def model_name(model: ModelRef) -> str:
    """A readable name for ``model``: the hub id / path, or the encoder's own name."""
    if isinstance(model, M3Encoder):
        return str(model.name)
    return os.fspath(model)


def check_model_ref(model: Any, *, owner: str) -> None:
    """Raise ``TypeError`` unless ``model`` is a hub id, a local path or an ``M3Encoder``."""
    if isinstance(model, M3Encoder):
        return
    if isinstance(model, (str, os.PathLike)) and os.fspath(model):
        return
    raise TypeError(
        f"{owner}(model=...) takes a Hugging Face hub id (e.g. 'BAAI/bge-m3'), a local checkpoint folder or an "
        f"M3Encoder; got {type(model).__name__} ({model!r:.60})"
    )


class LazyEncoder:
    """Holds a model reference and loads the ``M3Encoder`` on first :meth:`get` (thread-safe).

    An ``M3Encoder`` passed in is used as is (and shared); a hub id or path is loaded with
    ``M3Encoder.from_pretrained(model, **encoder_kwargs)``.
    """

    def __init__(self, model: ModelRef, encoder_kwargs: Mapping[str, Any] | None = None, *, owner: str) -> None:
        check_model_ref(model, owner=owner)
        if isinstance(model, M3Encoder) and encoder_kwargs:
            raise ValueError(
                f"{owner}: encoder_kwargs {sorted(encoder_kwargs)} only apply when model is a hub id or a path; "
                "the M3Encoder you passed is already loaded"
            )
        self._model = model
        self._kwargs = dict(encoder_kwargs or {})
        self._encoder: M3Encoder | None = model if isinstance(model, M3Encoder) else None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Whether the encoder is in memory."""
        return self._encoder is not None

    def get(self) -> M3Encoder:
        """The encoder, loading it on the first call."""
        if self._encoder is None:
            with self._lock:
                if self._encoder is None:
                    self._encoder = M3Encoder.from_pretrained(self._model, **self._kwargs)
        return self._encoder
