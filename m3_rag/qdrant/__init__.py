"""QdrantHybridStore: the :class:`~m3_rag.HybridStore` contract over one Qdrant collection.

A small package: :mod:`.schema` (payload keys, point ids, creating and validating the collection),
:mod:`.crud` (upserts, reads, deletes), :mod:`.store` (the public class: construction, migration, search), :mod:`.filters`
(metadata filter dicts to Qdrant payload filters) and :mod:`.backend` (candidates and exact scores for the
shared search pipeline, :mod:`m3_rag.search`).
"""

from .filters import to_qdrant_filter
from .store import M3_NAMESPACE, PAYLOAD_ID, PAYLOAD_META, PAYLOAD_SEQ, PAYLOAD_TEXT, QdrantHybridStore, QdrantWriteError, point_id

__all__ = ["QdrantHybridStore", "QdrantWriteError", "point_id", "to_qdrant_filter", "M3_NAMESPACE", "PAYLOAD_ID", "PAYLOAD_SEQ", "PAYLOAD_TEXT", "PAYLOAD_META"]
