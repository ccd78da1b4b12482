"""The memory fold: how a memory's events make its current state, in both projections.

A memory lives in one kind at a time (``knowledge`` or ``solutions``): storing its id as
the other kind moves it. A revision changes only the fields it carries, where the memory
lives now; revising a memory that does not exist, or that expired before the revision's
time, changes nothing (storing its id again makes it anew). Forgetting removes it
from both kinds. Each projection says what a record is (a history row, a vector payload)
by implementing :meth:`MemoryFold.created` and :meth:`MemoryFold.revised`.

Compare-and-set is decided here too, so both projections, live or rebuilt, decide
alike: an event with ``expected_revision`` is applied only if the memory's revision is
still that (0 on a store: no live memory has the id); else its outcome is ``conflict``.
A revise, forget or link (from) a memory that is not live is ``not_found`` (a forget still clears
an expired memory's leftovers). A forget with ``erase`` is applied whatever it finds (a
rebuild never reads the events it erased), unless its expected revision conflicts.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, TypeAlias, TypeVar

from memstream.schemas import events as ev

__all__ = [
    "MEMORY_KINDS",
    "MEMORY_TYPES",
    "REVISABLE_TEXT",
    "Decision",
    "Key",
    "MemoryFold",
    "revision",
]

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


@dataclass(frozen=True)
class Decision:
    """What the fold did with one memory event: ``revision`` is the memory's after it
    (None when not applied), ``current`` what it was when the event was decided (0: no
    live memory; None: not known, a record from before revisions were kept)."""

    outcome: Literal["applied", "conflict", "not_found"]
    revision: int | None
    current: int | None


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
        # stream sequence -> what was decided for the memory event there
        self.decisions: dict[int, Decision] = {}

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

    def revision_of(self, record: R) -> int | None:
        """The record's revision (1 when stored, +1 at each revision or store again);
        None when the record does not say."""
        raise NotImplementedError

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

    def _live_anywhere(self, key: Key, at: dt.datetime) -> tuple[str, R] | None:
        for kind in MEMORY_KINDS:
            record = self.live(kind, key, at)
            if record is not None:
                return kind, record
        return None

    def _conflicts(self, expected: int | None, current: int | None) -> bool:
        # A record that does not know its revision (written before revisions were kept
        # in it) cannot be compared: the write is applied, as it was then.
        return expected is not None and current is not None and expected != current

    def link(self, seq: int, e: ev.MemoryLinked) -> Decision:
        """A link is applied when the memory it starts from is live; ``to_id`` may name
        one not stored yet (another agent's, to come)."""
        found = self._live_anywhere((e.tenant, e.from_id), e.ts)
        if found is None:
            decision = Decision("not_found", None, 0)
        else:
            decision = Decision("applied", None, self.revision_of(found[1]))
        self.decisions[seq] = decision
        return decision

    def apply(self, seq: int, e: MemoryEvent) -> Decision:
        """Fold ``e`` in (or not), and say what was decided."""
        decision = self._decide(seq, e)
        self.decisions[seq] = decision
        return decision

    def _decide(self, seq: int, e: MemoryEvent) -> Decision:
        key = (e.tenant, e.memory_id)
        found = self._live_anywhere(key, e.ts)
        current = self.revision_of(found[1]) if found is not None else 0
        match e:
            case ev.KnowledgeStored() | ev.SolutionStored():
                if self._conflicts(e.expected_revision, current):
                    return Decision("conflict", None, current)
                kind, other = (
                    ("knowledge", "solutions")
                    if isinstance(e, ev.KnowledgeStored)
                    else ("solutions", "knowledge")
                )
                before = found[1] if found is not None and found[0] == kind else None
                record = (
                    self.created(seq, e) if before is None else self.stored_again(before, seq, e)
                )
                self.state[kind][key] = record
                self.state[other][key] = None
                return Decision("applied", self.revision_of(record), current)
            case ev.MemoryRevised():
                if found is None:
                    return Decision("not_found", None, 0)
                if self._conflicts(e.expected_revision, current):
                    return Decision("conflict", None, current)
                kind, record = found
                record = self.state[kind][key] = self.revised(record, kind, seq, e)
                return Decision("applied", self.revision_of(record), current)
            case ev.MemoryForgotten():
                if found is not None and self._conflicts(e.expected_revision, current):
                    return Decision("conflict", None, current)
                for kind in MEMORY_KINDS:
                    left = self.current(kind, key)
                    if left is not None:
                        self.forgotten(left, kind, e)
                    self.state[kind][key] = None
                if e.erase:
                    # Applied whatever it finds: a rebuild reads none of the events it
                    # erased, so it must decide the same without them.
                    return Decision("applied", 0, None)
                if found is None:
                    return Decision("not_found", None, 0)
                return Decision("applied", 0, current)
