"""The seam between the runners in ``consumers/`` and each projection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeAlias, runtime_checkable

from schemas.events import AnyEvent, UnknownEvent

__all__ = ["Batch", "Erasing", "Projection"]

Batch: TypeAlias = Sequence[tuple[int, AnyEvent | UnknownEvent]]
"""(stream sequence, event) pairs in stream order."""


@runtime_checkable
class Projection(Protocol):
    """Applies batches in stream order with exactly-once effect.

    ``apply`` must skip every event at or below :attr:`checkpoint` and make the batch's
    effect and the new checkpoint durable together, so a redelivered batch changes
    nothing. The new checkpoint is the batch's last sequence, or ``upto`` when that is
    higher (the runner passes the last sequence it consumed, so messages that went to the
    dead-letter stream are not delivered again). The live runner and the replay runner
    feed the same ``apply``.
    """

    name: str

    @property
    def checkpoint(self) -> int:
        """The last stream sequence applied (0 when nothing was)."""
        ...

    def apply(self, batch: Batch, upto: int = 0, bodies: Sequence[bytes] | None = None) -> None:
        """``bodies``: the events' JSON as published, aligned with ``batch``, if known."""
        ...

    def purge_tenant(self, tenant: str) -> dict[str, int]:
        """Remove everything of ``tenant``; what was removed, by name."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Erasing(Protocol):
    """A projection that finds, when it applies an erase (``memory.forgotten`` with
    ``erase: true``), the earlier events that carried the memory's text."""

    name: str

    def take_erased(self) -> list[int]:
        """Their stream sequences, committed and not yet taken; the runner deletes them
        from the stream."""
        ...
