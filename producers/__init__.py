"""What an agent imports: the memstream producer SDK (publish and query)."""

from producers._events import Causality, PublishAck, Scope, Trace
from producers._watch import Change
from producers.client import MemoryClient
from producers.locks import Lock
from producers.sync import SyncLock, SyncMemoryClient

__all__ = [
    "Causality",
    "Change",
    "Lock",
    "MemoryClient",
    "PublishAck",
    "Scope",
    "SyncLock",
    "SyncMemoryClient",
    "Trace",
]
