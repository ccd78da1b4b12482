"""The seam between the runners in ``consumers/`` and each projection."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias, runtime_checkable

from schemas.errors import MemstreamError
from schemas.events import AnyEvent, UnknownEvent

__all__ = ["Applied", "Batch", "Projection", "StorageFailure"]

Batch: TypeAlias = Sequence[tuple[int, AnyEvent | UnknownEvent]]
"""(stream sequence, event) pairs in stream order."""


@dataclass(frozen=True)
class Applied:
    """What one ``apply`` did, committed."""

    # Events newly applied (not at or below the checkpoint, not a repeated id).
    events: int = 0
    # Events skipped because their (tenant, id) had been applied before.
    duplicates: int = 0
    # Stream sequences of earlier events an erase (``memory.forgotten`` with
    # ``erase: true``) removed from the projection: the runner deletes them from the
    # stream too, so no replay brings them back.
    erased: tuple[int, ...] = ()


class StorageFailure(MemstreamError):
    """The projection's storage failed, not the events: the disk full or read-only, an
    I/O error, a corrupt file, the embedder or the vector server unreachable. The runner
    retries the batch until the storage is back, and never dead-letters for this."""

    code = "unavailable"


@runtime_checkable
class Projection(Protocol):
    """Applies batches in stream order with exactly-once effect.

    ``apply`` must skip every event at or below :attr:`checkpoint` and make the batch's
    effect and the new checkpoint durable together, so a redelivered batch changes
    nothing. The new checkpoint is the batch's last sequence, or ``upto`` when that is
    higher (the runner passes the last sequence it consumed, so messages that went to the
    dead-letter stream are not delivered again). The live runner and the replay runner
    feed the same ``apply``, and act on what it returns.
    """

    name: str

    @property
    def checkpoint(self) -> int:
        """The last stream sequence applied (0 when nothing was)."""
        ...

    def apply(self, batch: Batch, upto: int = 0, bodies: Sequence[bytes] | None = None) -> Applied:
        """``bodies``: the events' JSON as published, aligned with ``batch``, if known."""
        ...

    def purge_tenant(self, tenant: str) -> dict[str, int]:
        """Remove everything of ``tenant``; what was removed, by name."""
        ...

    def sweep(self, now: dt.datetime) -> int:
        """Delete what has expired by ``now`` (reads hide it already); how much went.
        Not erasure: the events stay in the stream, and a replay sweeps them again."""
        ...

    def close(self) -> None: ...
