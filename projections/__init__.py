"""How events become state: the history (DuckDB) and vector (Qdrant) projections.

A projection takes decoded events with their stream sequence and is handed its storage;
it never talks to NATS and reads no settings.
"""

from memstream.projections.base import Applied, Batch, Projection, StorageFailure

__all__ = ["Applied", "Batch", "Projection", "StorageFailure"]
