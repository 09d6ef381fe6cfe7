"""Convert between LlamaIndex nodes and HybridStore records: which text is encoded, what is stored, what comes back.

- Encoded (and stored as the record text): ``node.get_content(metadata_mode=MetadataMode.EMBED)``, the same
  text LlamaIndex gives the embedding model, so dense, sparse and ColBERT all see one text.
- Stored metadata: LlamaIndex's ``node_to_metadata_dict(node)``: the node's own metadata (filterable) plus
  ``ref_doc_id``/``doc_id``/``document_id``, ``_node_type`` and ``_node_content`` (the whole node as JSON,
  text included), from which the original node is rebuilt.
- Records not written by LlamaIndex (plain ``HybridStore.add``) come back as ``TextNode(id_=id, text=text,
  metadata=metadata)``.
- Search results carry the exact per-mode scores in ``node.metadata[SCORES_KEY]`` (and, with ``explain``,
  the matched sparse tokens in ``node.metadata[EXPLAIN_KEY]``); both keys are excluded from the LLM and
  embedding views of the node.
"""

from __future__ import annotations

from typing import Any, Mapping

from llama_index.core.schema import BaseNode, MetadataMode, TextNode
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict

from ..types import Hit

__all__ = ["SCORES_KEY", "EXPLAIN_KEY", "REF_DOC_ID_KEY", "node_text", "node_metadata", "record_to_node", "hit_to_node"]

#: node.metadata key holding ``{mode: exact score}`` on nodes returned by a search.
SCORES_KEY = "m3_scores"
#: node.metadata key holding ``{token: contribution}`` when the search ran with ``explain=True``.
EXPLAIN_KEY = "m3_explain"
#: stored metadata key holding the node's source document id (used by ``delete`` and ``doc_ids``).
REF_DOC_ID_KEY = "ref_doc_id"
_NODE_CONTENT = "_node_content"


def node_text(node: BaseNode) -> str:
    """The text m3_rag encodes for a node: ``node.get_content(metadata_mode=MetadataMode.EMBED)``."""
    return node.get_content(metadata_mode=MetadataMode.EMBED)


def node_metadata(node: BaseNode) -> dict[str, Any]:
    """The metadata dict stored for a node (its metadata plus LlamaIndex's bookkeeping keys)."""
    return node_to_metadata_dict(node, remove_text=False, flat_metadata=False)


def record_to_node(id: str, text: str | None, metadata: Mapping[str, Any]) -> BaseNode:
    """Rebuild the node stored under ``id``; records not written by LlamaIndex become a ``TextNode``."""
    if _NODE_CONTENT in metadata:
        return metadata_dict_to_node(dict(metadata))
    return TextNode(id_=id, text=text or "", metadata=dict(metadata))


def hit_to_node(hit: Hit) -> BaseNode:
    """The node behind a search hit, with ``hit.scores`` (and ``hit.explain``) added to its metadata."""
    node = record_to_node(hit.id, hit.text, hit.metadata)
    extra = {SCORES_KEY: {mode: float(s) for mode, s in hit.scores.items()}}
    if hit.explain is not None:
        extra[EXPLAIN_KEY] = {tok: float(v) for tok, v in hit.explain.items()}
    node.metadata.update(extra)
    for keys in (node.excluded_llm_metadata_keys, node.excluded_embed_metadata_keys):
        keys.extend(k for k in extra if k not in keys)
    return node
