"""Search options parsed once into a frozen dataclass: the only place search defaults live."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping, Sequence

from ..filters import compile_filter
from ..fusion import DEFAULT_BM25_WEIGHT, DEFAULT_WEIGHTS, FUSIONS, resolve_weights
from ..types import MODES, STORE_MODES
from ..validation import check_ids, check_k, check_modes

__all__ = ["SearchOptions", "parse_options", "OPTION_NAMES", "DEFAULT_K", "DEFAULT_CANDIDATES", "default_weights",
           "default_modes", "default_fusion", "modes_key"]

DEFAULT_K = 10
#: First-stage depth per mode when ``candidates`` is not given (never fewer than ``k``).
DEFAULT_CANDIDATES = 100
OPTION_NAMES = ("k", "modes", "weights", "fusion", "candidates", "filter", "ids", "explain")


def modes_key(modes: Sequence[str]) -> str:
    """The canonical name of a mode set: its modes in :data:`m3_rag.types.STORE_MODES` order joined by ``+``
    (``"dense+sparse+colbert+bm25"``), the key of a model's ``fusion_weights_by_modes``."""
    return "+".join(m for m in STORE_MODES if m in set(modes))


def default_weights(encoder: Any | None, modes: Sequence[str] | None = None) -> dict[str, float]:
    """The weighted-fusion weights used when none are given, for the mode set ``modes``.

    In order: the model's ``fusion_weights_by_modes[modes_key(modes)]`` (recommended weights for exactly that
    mode set, from its ``m3_model.json``), else its ``fusion_weights`` (``minilm-m3`` declares them), else
    FlagEmbedding's :data:`m3_rag.fusion.DEFAULT_WEIGHTS` (and :data:`m3_rag.fusion.DEFAULT_BM25_WEIGHT` for
    ``bm25``). Returns a weight for every mode of :data:`m3_rag.types.STORE_MODES` (or of ``modes``)."""
    out = dict(DEFAULT_WEIGHTS)
    out["bm25"] = DEFAULT_BM25_WEIGHT
    if encoder is None:
        return out
    declared = getattr(encoder, "fusion_weights", None)
    if isinstance(declared, Mapping):
        out.update({str(m): float(w) for m, w in declared.items()})
    by_modes = getattr(encoder, "fusion_weights_by_modes", None)
    if modes is not None and isinstance(by_modes, Mapping):
        exact = by_modes.get(modes_key(modes))
        if isinstance(exact, Mapping) and all(m in exact for m in modes):
            out.update({str(m): float(w) for m, w in exact.items()})
    return out


def _model_default_applies(encoder: Any | None, held: Sequence[str] | None) -> tuple[str, ...] | None:
    declared = getattr(encoder, "default_modes", None) if encoder is not None else None
    if not declared:
        return None
    modes = tuple(m for m in STORE_MODES if m in declared)
    return modes if (not held or all(m in held for m in modes)) else None


def default_modes(encoder: Any | None, held: Sequence[str] | None) -> tuple[str, ...]:
    """The modes searched when the caller gives none: the model's ``default_modes`` (from its ``m3_model.json``)
    when the store holds every one of them (a recommendation is a whole: ``minilm-m3``'s dense+colbert+bm25 with
    DBSF is not a good choice without bm25); otherwise, for a store holding bm25 (or no M3 mode), every mode it
    holds, else :data:`m3_rag.types.MODES` (searching a mode the store does not hold is an error)."""
    picked = _model_default_applies(encoder, held)
    if picked:
        return picked
    if held and ("bm25" in held or not any(m in MODES for m in held)):
        return tuple(m for m in STORE_MODES if m in held)
    return MODES


def default_fusion(encoder: Any | None, held: Sequence[str] | None = None) -> str:
    """The fusion used when the caller gives none: the model's ``default_fusion`` when its ``default_modes``
    apply (see :func:`default_modes`), else ``"weighted"``."""
    declared = getattr(encoder, "default_fusion", None) if encoder is not None else None
    if (isinstance(declared, str) and declared in FUSIONS
            and (getattr(encoder, "default_modes", None) is None or _model_default_applies(encoder, held))):
        return declared
    return "weighted"


@dataclass(frozen=True)
class SearchOptions:
    """Validated search options.

    Attributes:
        k: hits wanted per query.
        modes: the modes searched.
        weights: per-mode fusion weights (resolved).
        fusion: ``"weighted"``, ``"rrf"`` or ``"dbsf"``.
        depths: first-stage mode -> candidate depth.
        explicit_depths: ``True`` when the caller gave per-mode depths (``candidates={mode: n}``): the
            first stages are exactly those modes, unpadded.
        filter: a compiled metadata predicate (``None``: no filter); ``filter_spec`` keeps the original.
        ids: restrict to these ids (``None``: no restriction).
        explain: fill ``Hit.explain`` with matched lexical terms (sparse tokens, ``bm25:`` stems) when ``sparse``
            or ``bm25`` is searched.
        extra: backend-specific options (for example ``server_fusion``).
    """

    k: int
    modes: tuple[str, ...]
    weights: Mapping[str, float]
    fusion: str
    depths: Mapping[str, int]
    explicit_depths: bool
    filter: Callable[[dict], bool] | None
    filter_spec: Any
    ids: frozenset[str] | None
    explain: bool
    extra: Mapping[str, Any] = field(default_factory=dict)


def _first_stages(modes: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(m for m in ("dense", "sparse", "bm25") if m in modes) or (modes[0],)


def parse_options(
    held: Sequence[str] | None,
    *,
    encoder: Any | None = None,
    extra_names: Sequence[str] = (),
    k: int = DEFAULT_K,
    modes: Sequence[str] | str | None = None,
    weights: Sequence[float] | Mapping[str, float] | None = None,
    fusion: str | None = None,
    candidates: int | Mapping[str, int] | None = None,
    filter: Mapping[str, Any] | Callable[[dict], bool] | None = None,
    ids: Collection[str] | None = None,
    explain: bool = False,
    **rest: Any,
) -> SearchOptions:
    """Validate the keyword arguments of ``search*`` for a store holding ``held`` modes (``None``: empty store).

    ``modes=None`` / ``fusion=None`` take the model's defaults (:func:`default_modes`, :func:`default_fusion`);
    weighted fusion without ``weights`` takes :func:`default_weights` for the searched mode set."""
    unknown = sorted(set(rest) - set(extra_names)) if rest else None
    if unknown:
        raise TypeError(f"unknown search option(s) {unknown}; valid: {', '.join(OPTION_NAMES + tuple(extra_names))}")
    k = check_k(k)
    mode_t = check_modes(default_modes(encoder, held) if modes is None else modes)
    if fusion is None:
        fusion = default_fusion(encoder, held)
    if held:
        missing = [m for m in mode_t if m not in held]
        if missing == ["bm25"]:
            raise ValueError(
                f"this store does not hold the bm25 mode (it holds {tuple(held)}); bm25 must be declared when the "
                "store is made, e.g. HybridStore(encoder, modes=('dense', 'sparse', 'colbert', 'bm25'))"
            )
        if missing:
            raise ValueError(
                f"this store holds no {missing} vectors (it holds {tuple(held)}); search modes={tuple(held)} "
                "or add documents with those outputs to a new store"
            )
    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
    if weights is None and fusion == "weighted":
        dw = default_weights(encoder, mode_t)
        weights = {m: dw[m] for m in mode_t}
    w = resolve_weights(mode_t, weights, fusion)
    explicit = isinstance(candidates, Mapping)
    if explicit:
        depths = {}
        for m, d in candidates.items():  # type: ignore[union-attr]
            if m not in mode_t:
                raise ValueError(f"candidates names mode {m!r}, which is not searched ({mode_t})")
            depths[m] = check_k(d, f"candidates[{m!r}]")
        if not depths:
            raise ValueError("candidates is an empty dict; give at least one mode -> depth")
    else:
        if candidates is not None:
            check_k(candidates, "candidates")
        depth = max(int(candidates) if candidates is not None else DEFAULT_CANDIDATES, k)
        depths = {m: depth for m in _first_stages(mode_t)}
    pred = compile_filter(filter) if not (isinstance(filter, Mapping) and not filter) and filter is not None else None
    id_set = frozenset(check_ids(ids, ordered=False)) if ids is not None else None
    if explain:
        if encoder is None and ("sparse" in mode_t or "bm25" not in mode_t):
            raise ValueError("explain=True needs an encoder to turn token ids into strings; pass encoder= to the store")
        if held and "sparse" not in held and "bm25" not in held:
            raise ValueError(f"explain=True needs sparse vectors or bm25 but this store holds {tuple(held)}")
    return SearchOptions(
        k=k, modes=mode_t, weights=w, fusion=fusion, depths=depths, explicit_depths=explicit, filter=pred,
        filter_spec=filter, ids=id_set, explain=bool(explain), extra=dict(rest),
    )
