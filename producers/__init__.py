"""What an agent imports: the memstream producer SDK (publish and query)."""

from producers._events import Causality, PublishAck, Trace
from producers.client import MemoryClient
from producers.sync import SyncMemoryClient

__all__ = ["Causality", "MemoryClient", "PublishAck", "SyncMemoryClient", "Trace"]
