"""The memory fold: how a memory's events make its current state, in both projections.

A memory lives in one kind at a time (``knowledge`` or ``solutions``): storing its id as
the other kind moves it. A revision changes only the fields it carries, where the memory
lives now; revising a memory that does not exist, or that expired before the revision's
time, changes nothing (storing its id again makes it anew). Forgetting removes it
from both kinds. Each projection says what a record is (a history row, a vector payload)
by implementing :meth:`MemoryFold.created` and :meth:`MemoryFold.revised`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final, Generic, TypeAlias, TypeVar

from memstream.schemas import events as ev

__all__ = ["MEMORY_KINDS", "MEMORY_TYPES", "REVISABLE_TEXT", "Key", "MemoryFold", "revision"]

MEMORY_KINDS: Final = ("knowledge", "solutions")
# The event types the fold takes.
MEMORY_TYPES: Final = frozenset(
    {"knowledge.stored", "solution.stored", "memory.revised", "memory.forgotten"}
)
# The text fields a revision may change, by the kind of memory it revises.
REVISABLE_TEXT: Final = {"knowledge": ("content",), "solutions": ("problem", "solution")}

Key: TypeAlias = tuple[str, str]
"""(tenant, memory_id)."""
R = TypeVar("R")
MemoryEvent: TypeAlias = (
    ev.KnowledgeStored | ev.SolutionStored | ev.MemoryRevised | ev.MemoryForgotten
)


def revision(e: ev.MemoryRevised, kind: str) -> dict[str, Any]:
    """The fields ``e`` changes in a memory of ``kind``: only those it carries (not None).

    Metadata comes as the event holds it (a dict); tags as a list.
    """
    changes: dict[str, Any] = {
        name: getattr(e, name) for name in REVISABLE_TEXT[kind] if getattr(e, name) is not None
    }
    if e.tags is not None:
        changes["tags"] = list(e.tags)
    if e.metadata is not None:
        changes["metadata"] = e.metadata
    return changes


class MemoryFold(Generic[R]):
    """Folds memory events in stream order into the final record of each memory.

    ``state[kind][key]`` is the record after the events folded so far, or None where the
    memory is to be deleted from that kind; a key absent from it has not been touched.
    ``stored`` holds the records as they were before the batch, for the keys it may
    touch (loaded by the projection beforehand).
    """

    def __init__(self, stored: dict[str, dict[Key, R]] | None = None) -> None:
        self.stored: dict[str, dict[Key, R]] = stored or {k: {} for k in MEMORY_KINDS}
        self.state: dict[str, dict[Key, R | None]] = {k: {} for k in MEMORY_KINDS}

    def created(self, seq: int, e: ev.KnowledgeStored | ev.SolutionStored) -> R:
        """The record a stored event makes."""
        raise NotImplementedError

    def stored_again(self, record: R, seq: int, e: ev.KnowledgeStored | ev.SolutionStored) -> R:
        """The record a stored event makes of a memory that exists in the same kind:
        by default a new one; a projection that keeps a memory's creation and its count
        of revisions carries them over (storing again is revising every field)."""
        return self.created(seq, e)

    def revised(self, record: R, kind: str, seq: int, e: ev.MemoryRevised) -> R:
        """``record`` (of ``kind``) with the revision applied."""
        raise NotImplementedError

    def forgotten(self, record: R, kind: str, e: ev.MemoryForgotten) -> None:
        """Told of each record a forget removes (before it goes)."""

    def expired(self, record: R, at: dt.datetime) -> bool:
        """Whether ``record`` had expired by ``at`` (an event's time)."""
        return False

    def live(self, kind: str, key: Key, at: dt.datetime) -> R | None:
        """The record as an event at ``at`` finds it: an expired memory is gone, whether
        or not a sweep has deleted it yet, so live ingest and a rebuild agree."""
        record = self.current(kind, key)
        return None if record is None or self.expired(record, at) else record

    def current(self, kind: str, key: Key) -> R | None:
        state = self.state[kind]
        return state[key] if key in state else self.stored[kind].get(key)

    def apply(self, seq: int, e: MemoryEvent) -> None:
        key = (e.tenant, e.memory_id)
        match e:
            case ev.KnowledgeStored() | ev.SolutionStored():
                kind, other = (
                    ("knowledge", "solutions")
                    if isinstance(e, ev.KnowledgeStored)
                    else ("solutions", "knowledge")
                )
                before = self.live(kind, key, e.ts)
                self.state[kind][key] = (
                    self.created(seq, e) if before is None else self.stored_again(before, seq, e)
                )
                self.state[other][key] = None
            case ev.MemoryRevised():
                for kind in MEMORY_KINDS:
                    record = self.live(kind, key, e.ts)
                    if record is not None:
                        self.state[kind][key] = self.revised(record, kind, seq, e)
                        return
            case ev.MemoryForgotten():
                for kind in MEMORY_KINDS:
                    record = self.current(kind, key)
                    if record is not None:
                        self.forgotten(record, kind, e)
                    self.state[kind][key] = None
