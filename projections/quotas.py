"""Tenants' quotas on what they store, as both projections decide them.

A tenant's hard limits (memories, bytes of text) come from its ``quota.set`` events, in
stream order, over the deployment's defaults. A store that would take the tenant past a
hard limit is not applied (outcome ``quota_exceeded``); one that takes it past the soft
limit (80% of the hard one) is applied with a warning. Both projections decide from the
memories they hold, so a replay decides the same.

What counts is the tenant's live memories at the event's time: expired ones do not, and
a memory's size is the UTF-8 bytes of its text (a knowledge's content, a solution's
problem and solution), not its tags, metadata, vectors or indexes.

:class:`Quotas` keeps, per tenant with a limit, a ledger of its live memories: loaded
from the projection's storage the first time a batch needs it, then kept by the fold as
it applies events. It describes the storage plus the batch being applied, so a batch
that fails must :meth:`Quotas.forget_usage` before it is tried again.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "MB",
    "NO_LIMITS",
    "SOFT_FRACTION",
    "Limits",
    "Quotas",
    "Usage",
    "text_bytes",
]

# The soft limit, as a fraction of the hard one.
SOFT_FRACTION: Final = 0.8
MB: Final = 1_000_000


def text_bytes(*texts: str | None) -> int:
    """A memory's size as quotas count it: the UTF-8 bytes of its text."""
    return sum(len(t.encode()) for t in texts if t)


@dataclass(frozen=True)
class Limits:
    """Hard limits; 0 is none."""

    memories: int = 0
    storage_bytes: int = 0

    def __bool__(self) -> bool:
        return bool(self.memories or self.storage_bytes)

    def describe(self, limit: Literal["memories", "storage"]) -> str:
        """One hard limit, in words."""
        if limit == "memories":
            return f"its quota of {_memories(self.memories)}"
        return f"its quota of {_mb(self.storage_bytes)} of memory text"

    def status(self, tenant: str, count: int, size: int) -> str | None:
        """How ``count`` memories of ``size`` bytes stand: at a hard limit (the next
        store is refused), past a soft one, or None."""
        if self.memories and count >= self.memories:
            return (
                f"tenant {tenant} is at {self.describe('memories')}: new memories are "
                "refused until some are forgotten or the quota is raised"
            )
        if self.storage_bytes and size >= self.storage_bytes:
            return (
                f"tenant {tenant} is at {self.describe('storage')}: stores that add text "
                "are refused until some are forgotten or the quota is raised"
            )
        return self.warning(tenant, count, size)

    def warning(self, tenant: str, count: int, size: int) -> str | None:
        """What to warn of when ``count`` memories of ``size`` bytes pass a soft limit."""
        if self.memories and count > self.memories * SOFT_FRACTION:
            return (
                f"tenant {tenant} holds {count:,} of its {_memories(self.memories)} "
                "(past 80%): forget some or raise its quota"
            )
        if self.storage_bytes and size > self.storage_bytes * SOFT_FRACTION:
            return (
                f"tenant {tenant} holds {_mb(size)} of its {_mb(self.storage_bytes)} of "
                "memory text (past 80%): forget some or raise its quota"
            )
        return None


NO_LIMITS: Final = Limits()


def _memories(n: int) -> str:
    return f"{n:,} memory" if n == 1 else f"{n:,} memories"


def _mb(n: int) -> str:
    return f"{n / MB:,.1f} MB"


class Usage:
    """One tenant's live memories: id -> (bytes, expiry as epoch seconds or None)."""

    def __init__(self, entries: Iterable[tuple[str, int, float | None]] = ()) -> None:
        self._entries: dict[str, tuple[int, float | None]] = {}
        self._expiring: list[tuple[float, str]] = []
        self.count = 0
        self.bytes = 0
        for memory_id, size, expires in entries:
            self.put(memory_id, size, expires)

    def at(self, epoch: float) -> Usage:
        """Drop what expired by ``epoch`` (an event's time); self."""
        heap = self._expiring
        while heap and heap[0][0] <= epoch:
            expires, memory_id = heapq.heappop(heap)
            entry = self._entries.get(memory_id)
            if entry is not None and entry[1] == expires:
                self.remove(memory_id)
        return self

    def size_of(self, memory_id: str) -> int | None:
        entry = self._entries.get(memory_id)
        return None if entry is None else entry[0]

    def put(self, memory_id: str, size: int, expires: float | None) -> None:
        self.remove(memory_id)
        self._entries[memory_id] = (size, expires)
        self.count += 1
        self.bytes += size
        if expires is not None:
            heapq.heappush(self._expiring, (expires, memory_id))

    def remove(self, memory_id: str) -> None:
        entry = self._entries.pop(memory_id, None)
        if entry is not None:
            self.count -= 1
            self.bytes -= entry[0]


Loader = Callable[[str], Iterable[tuple[str, int, float | None]]]
"""A tenant's live memories in the projection's storage: (memory_id, bytes, expiry)."""


class Quotas:
    """A projection's tenants' limits, and the usage of the tenants that have one."""

    def __init__(
        self, defaults: Limits = NO_LIMITS, limits: dict[str, Limits] | None = None
    ) -> None:
        self.defaults = defaults
        # A tenant's own limits, from its quota.set events.
        self.own: dict[str, Limits] = dict(limits or {})
        self._usage: dict[str, Usage] = {}

    def limits(self, tenant: str) -> Limits:
        return self.own.get(tenant, self.defaults)

    def set(self, tenant: str, memories: int | None, storage_mb: float | None) -> Limits:
        """Apply a quota.set: a limit it leaves out stays as it was."""
        was = self.limits(tenant)
        now = Limits(
            memories=was.memories if memories is None else memories,
            storage_bytes=was.storage_bytes if storage_mb is None else round(storage_mb * MB),
        )
        self.own[tenant] = now
        return now

    def usage(self, tenant: str, load: Loader) -> Usage:
        """The tenant's ledger, loaded with ``load`` the first time."""
        found = self._usage.get(tenant)
        if found is None:
            found = self._usage[tenant] = Usage(load(tenant))
        return found

    def tracked(self, tenant: str) -> Usage | None:
        return self._usage.get(tenant)

    def forget_usage(self, tenant: str | None = None) -> None:
        """Drop the ledgers (one tenant's, or all): loaded again from storage when next
        needed. After a batch that failed, a purge, a swap of the storage."""
        if tenant is None:
            self._usage.clear()
        else:
            self._usage.pop(tenant, None)

    def drop(self, tenant: str) -> None:
        """A purged tenant: its limits went with its events."""
        self.own.pop(tenant, None)
        self.forget_usage(tenant)
