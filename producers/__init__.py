"""What an agent imports: the memstream producer SDK."""

from producers.client import Causality, MemoryClient, PublishAck, Trace
from producers.sync import SyncMemoryClient

__all__ = ["Causality", "MemoryClient", "PublishAck", "SyncMemoryClient", "Trace"]
