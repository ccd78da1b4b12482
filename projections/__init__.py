"""How events become state: the history (DuckDB) and vector (Qdrant) projections.

A projection takes decoded events with their stream sequence; it never talks to NATS.
"""

from projections.base import Batch, Projection

__all__ = ["Batch", "Projection"]
