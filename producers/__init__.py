"""What an agent imports: the memstream producer SDK (publish and query)."""

from memstream.producers._events import Causality, PublishAck, Scope, Trace
from memstream.producers._watch import Change
from memstream.producers.client import MemoryClient
from memstream.producers.connection import OtherEventLoop
from memstream.producers.locks import Lock, LockHolder
from memstream.producers.sync import SyncLock, SyncMemoryClient

__all__ = [
    "Causality",
    "Change",
    "Lock",
    "LockHolder",
    "MemoryClient",
    "OtherEventLoop",
    "PublishAck",
    "Scope",
    "SyncLock",
    "SyncMemoryClient",
    "Trace",
]
