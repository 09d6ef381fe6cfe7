"""``M3ColbertRerank``: rerank the nodes of any LlamaIndex retriever by BGE-M3 ColBERT MaxSim."""

from __future__ import annotations

from typing import Any, List, Mapping, Optional

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle

from ..encoder import M3Encoder
from ..scoring import colbert_scores
from ._loading import LazyEncoder, ModelRef, model_name
from ._shared import shared_for
from .nodes import node_text

__all__ = ["M3ColbertRerank"]


class M3ColbertRerank(BaseNodePostprocessor):
    """Rerank retrieved nodes by ColBERT late interaction (MaxSim), keeping the ``top_n`` best.

    Works after any retriever: the query and each node's ``get_content(metadata_mode=MetadataMode.EMBED)``
    are encoded with the ColBERT head only (one ``encode_queries`` and one ``encode_documents`` call per
    query), scored with :func:`m3_rag.colbert_scores`, and the nodes come back best first with
    ``score`` set to the MaxSim score. Ties keep the incoming order.

    The query is not encoded again when the retriever already did it: while this reranker exists,
    ``M3VectorStore`` and ``M3Retriever`` over the same ``M3Encoder`` compute the query's ColBERT vectors in
    their own query pass and leave them in a small cache keyed by the exact query text.

    Args:
        model: hub id, local checkpoint folder or ``M3Encoder`` (with a ColBERT head); a hub id or path is
            loaded on first use.
        top_n: how many nodes to keep.
        batch_size: node texts per encoder batch.
        encoder_kwargs: ``M3Encoder.from_pretrained`` options when ``model`` is a hub id or a path.
    """

    model: str = Field(default="BAAI/bge-m3", description="The model name or path.")
    top_n: int = Field(default=5, gt=0, description="How many nodes to keep.")
    batch_size: int = Field(default=32, gt=0, description="Node texts per encoder batch.")

    _lazy: LazyEncoder = PrivateAttr()

    def __init__(
        self,
        model: ModelRef = "BAAI/bge-m3",
        top_n: int = 5,
        *,
        batch_size: int = 32,
        encoder_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        lazy = LazyEncoder(model, encoder_kwargs, owner="M3ColbertRerank")
        if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n <= 0:
            raise ValueError(f"top_n must be a positive int; got {top_n!r}")
        if lazy.loaded and "colbert" not in lazy.get().available_modes:
            raise ValueError(
                f"M3ColbertRerank needs an encoder with a ColBERT head; {lazy.get()!r} has modes "
                f"{lazy.get().available_modes}. Use a checkpoint that ships colbert_linear.pt."
            )
        super().__init__(model=model_name(model), top_n=top_n, batch_size=batch_size, **kwargs)
        self._lazy = lazy
        if lazy.loaded:
            shared_for(lazy.get()).register_reranker(self)

    @classmethod
    def class_name(cls) -> str:
        return "M3ColbertRerank"

    @property
    def encoder(self) -> M3Encoder:
        """The encoder (loaded on first access)."""
        loaded = self._lazy.loaded
        encoder = self._lazy.get()
        if not loaded:
            shared_for(encoder).register_reranker(self)
        return encoder

    def _postprocess_nodes(
        self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None
    ) -> List[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("M3ColbertRerank needs the query: call postprocess_nodes(nodes, query_str=...)")
        if not nodes:
            return []
        encoder = self.encoder
        query_vecs = shared_for(encoder).get_query_colbert(query_bundle.query_str)
        if query_vecs is None:
            query_vecs = encoder.encode_queries(
                [query_bundle.query_str], dense=False, sparse=False, colbert=True, show_progress=False
            ).colbert[0]  # type: ignore[index]
        docs = encoder.encode_documents(
            [node_text(n.node) for n in nodes], dense=False, sparse=False, colbert=True, batch_size=self.batch_size
        )
        scores = colbert_scores(query_vecs, docs.colbert)  # type: ignore[index,arg-type]
        order = sorted(range(len(nodes)), key=lambda i: -float(scores[i]))[: self.top_n]
        return [NodeWithScore(node=nodes[i].node, score=float(scores[i])) for i in order]
