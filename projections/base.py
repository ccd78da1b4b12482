"""The seam between the runners in ``consumers/`` and each projection."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeAlias, runtime_checkable

from memstream.schemas.errors import MemstreamError
from memstream.schemas.events import AnyEvent, UnknownEvent

__all__ = [
    "Applied",
    "Batch",
    "Projection",
    "StorageFailure",
    "check_writable",
    "storage_guard",
]

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


@contextlib.contextmanager
def storage_guard(
    projection: str, part_of: Callable[[BaseException], str | None]
) -> Iterator[None]:
    """Turn a failure of the projection's storage into :class:`StorageFailure`.

    ``part_of`` names the part of the storage an error belongs to ("embedder", "vector
    engine", ...), or None when the error is not the storage's: then it is the event's,
    and goes on as it is. Each projection declares its parts once, in its ``part_of``;
    the runner decides from the exception's class alone, and never dead-letters a
    StorageFailure.
    """
    try:
        yield
    except StorageFailure:
        raise
    except Exception as err:
        part = part_of(err)
        if part is None:
            raise
        raise StorageFailure(f"the {projection} projection's {part} failed: {err}") from err


# Below this, a file under the directory may not take one more page: a commit would fail.
_MIN_FREE_BYTES = 1 << 20


def check_writable(what: str, directory: Path, min_free: int = _MIN_FREE_BYTES) -> None:
    """Raise StorageFailure when ``directory`` cannot take a write now: a read-only
    mount, or a disk with less than ``min_free`` bytes left."""
    if not os.access(directory, os.W_OK):
        raise StorageFailure(f"the {what} under {directory} is not writable")
    free = shutil.disk_usage(directory).free
    if free < min_free:
        raise StorageFailure(
            f"the {what} under {directory} has {free >> 10} KB free: free some space"
        )


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

    def apply(
        self,
        batch: Batch,
        upto: int = 0,
        bodies: Sequence[bytes] | None = None,
        reapplied: Mapping[int, AnyEvent | UnknownEvent] | None = None,
    ) -> Applied:
        """``bodies``: the events' JSON as published, aligned with ``batch``, if known.
        ``reapplied``: the events the batch's ``quota.reapplied`` events name, by stream
        sequence, as the stream holds them (the runner reads them)."""
        ...

    def check_storage(self) -> None:
        """Raise :class:`StorageFailure` if the storage fails now. Asked before an event
        that failed on its own becomes a dead letter: only an event that fails while its
        storage is fine is one. Cheap, and writes nothing a query could see."""
        ...

    def purge_tenant(self, tenant: str) -> dict[str, int]:
        """Remove everything of ``tenant``; what was removed, by name."""
        ...

    def sweep(self, now: dt.datetime) -> int:
        """Delete what has expired by ``now`` (reads hide it already); how much went.
        Not erasure: the events stay in the stream, and a replay sweeps them again."""
        ...

    def close(self) -> None: ...
