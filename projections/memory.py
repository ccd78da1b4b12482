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

Quotas are decided here as well (:mod:`projections.quotas`): a store of a new memory
past the tenant's memory limit, or a store or revise that grows its text past the
storage limit, is ``quota_exceeded``; one past a soft limit is applied with a message.
A ``quota.reapplied`` event decides again, at its own place in the stream, the events
it names (fetched from the stream by the runner).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Generic, Literal, TypeAlias, TypeVar

from memstream.projections.quotas import Loader, Quotas, text_bytes
from memstream.schemas import events as ev

__all__ = [
    "MEMORY_KINDS",
    "MEMORY_TYPES",
    "REVISABLE_TEXT",
    "Decision",
    "Key",
    "MemoryFold",
    "memory_bytes",
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


def memory_bytes(record: Any, kind: str) -> int:
    """A memory's size as quotas count it, from its record (a row or a payload): the
    UTF-8 bytes of its text."""
    if kind == "knowledge":
        return text_bytes(record.get("content"))
    return text_bytes(record.get("problem"), record.get("solution"))


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

    outcome: Literal["applied", "conflict", "not_found", "quota_exceeded"]
    revision: int | None
    current: int | None
    # Why a store was refused its quota, or the soft limit it passed.
    message: str | None = None


class MemoryFold(Generic[R]):
    """Folds memory events in stream order into the final record of each memory.

    ``state[kind][key]`` is the record after the events folded so far, or None where the
    memory is to be deleted from that kind; a key absent from it has not been touched.
    ``stored`` holds the records as they were before the batch, for the keys it may
    touch (loaded by the projection beforehand).
    """

    def __init__(
        self,
        stored: dict[str, dict[Key, R]] | None = None,
        quotas: Quotas | None = None,
        load_usage: Loader | None = None,
    ) -> None:
        """``quotas``: the projection's (none: nothing is limited); ``load_usage``: the
        tenant's live memories in the projection's storage, before this batch."""
        self.stored: dict[str, dict[Key, R]] = stored or {k: {} for k in MEMORY_KINDS}
        self.state: dict[str, dict[Key, R | None]] = {k: {} for k in MEMORY_KINDS}
        # stream sequence -> what was decided for the memory event there
        self.decisions: dict[int, Decision] = {}
        # stream sequence of an event decided again by a quota.reapplied -> the decision
        self.reapplied: dict[int, Decision] = {}
        self.quotas = quotas
        self._load_usage = load_usage
        # Per tenant: stores refused their quota, and applied past a soft limit.
        self.quota_refused: Counter[str] = Counter()
        self.quota_warned: Counter[str] = Counter()

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
        expires = self.expiry_of(record)
        return expires is not None and expires <= at.timestamp()

    def expiry_of(self, record: R) -> float | None:
        """When ``record`` expires, as epoch seconds; None when it does not."""
        return None

    def seq_of(self, record: R) -> int:
        """The stream sequence of the last event that changed ``record``."""
        raise NotImplementedError

    def size(self, record: R, kind: str) -> int:
        """The record's size as quotas count it (see projections.quotas)."""
        return memory_bytes(record, kind)

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
        decision = self._decide(seq, e, e.ts)
        self.decisions[seq] = decision
        return decision

    def set_quota(self, e: ev.QuotaSet) -> None:
        if self.quotas is not None:
            self.quotas.set(e.tenant, e.memories, e.storage_mb)

    def reapply(self, e: ev.QuotaReapplied, found: Mapping[int, Any]) -> None:
        """Decide again, at ``e``'s place, the events it names that ``found`` holds (the
        stream's, by sequence): a store or revise of ``e``'s tenant whose memory has not
        changed since (a later event wins over an older one brought back)."""
        for seq in e.seqs:
            event = found.get(seq)
            if not isinstance(event, ev.KnowledgeStored | ev.SolutionStored | ev.MemoryRevised):
                continue
            if event.tenant != e.tenant:
                continue
            live = self._live_anywhere((event.tenant, event.memory_id), e.ts)
            if live is not None and self.seq_of(live[1]) >= seq:
                continue
            self.reapplied[seq] = self._decide(seq, event, e.ts)

    def _usage_entries(self, tenant: str) -> list[tuple[str, int, float | None]]:
        """The tenant's live memories: the storage's, with this batch's changes so far."""
        entries = {m: (s, x) for m, s, x in (self._load_usage or _none)(tenant)}
        for kind in MEMORY_KINDS:
            for (t, memory_id), record in self.state[kind].items():
                if t == tenant and record is None:
                    entries.pop(memory_id, None)
        for kind in MEMORY_KINDS:
            for (t, memory_id), record in self.state[kind].items():
                if t == tenant and record is not None:
                    entries[memory_id] = (self.size(record, kind), self.expiry_of(record))
        return [(m, s, x) for m, (s, x) in entries.items()]

    def _admit(
        self,
        tenant: str,
        memory_id: str,
        kind: str,
        record: R,
        at: dt.datetime,
        revising: bool = False,
    ) -> tuple[bool, str | None]:
        """Whether ``record`` may be the memory now, by the tenant's quota; the message
        that goes with it (why not, or the soft limit it passes)."""
        if self.quotas is None:
            return True, None
        limits = self.quotas.limits(tenant)
        if not limits:
            self._track(tenant, memory_id, kind, record)
            return True, None
        usage = self.quotas.usage(tenant, self._usage_entries).at(at.timestamp())
        old = usage.size_of(memory_id)
        size = self.size(record, kind)
        count = usage.count + (old is None)
        total = usage.bytes - (old or 0) + size
        broken = None
        if old is None and limits.memories and count > limits.memories:
            broken = limits.describe("memories")
        elif size > (old or 0) and limits.storage_bytes and total > limits.storage_bytes:
            broken = limits.describe("storage")
        if broken is not None:
            self.quota_refused[tenant] += 1
            done = "revised" if revising else "stored"
            return False, (
                f"tenant {tenant} is at {broken}, so memory {memory_id!r} was not {done}: "
                "forget memories or raise the quota (memstream tenant quota), then "
                "memstream tenant reapply"
            )
        usage.put(memory_id, size, self.expiry_of(record))
        warning = limits.warning(tenant, count, total)
        if warning is not None:
            self.quota_warned[tenant] += 1
        return True, warning

    def _track(self, tenant: str, memory_id: str, kind: str, record: R | None) -> None:
        """Keep a tenant's ledger (if one is kept) in step with a change applied."""
        usage = self.quotas.tracked(tenant) if self.quotas is not None else None
        if usage is None:
            return
        if record is None:
            usage.remove(memory_id)
        else:
            usage.put(memory_id, self.size(record, kind), self.expiry_of(record))

    def _decide(self, seq: int, e: MemoryEvent, at: dt.datetime) -> Decision:
        key = (e.tenant, e.memory_id)
        found = self._live_anywhere(key, at)
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
                admitted, message = self._admit(e.tenant, e.memory_id, kind, record, at)
                if not admitted:
                    return Decision("quota_exceeded", None, current, message)
                self.state[kind][key] = record
                self.state[other][key] = None
                return Decision("applied", self.revision_of(record), current, message)
            case ev.MemoryRevised():
                if found is None:
                    return Decision("not_found", None, 0)
                if self._conflicts(e.expected_revision, current):
                    return Decision("conflict", None, current)
                kind, record = found
                record = self.revised(record, kind, seq, e)
                admitted, message = self._admit(e.tenant, e.memory_id, kind, record, at, True)
                if not admitted:
                    return Decision("quota_exceeded", None, current, message)
                self.state[kind][key] = record
                return Decision("applied", self.revision_of(record), current, message)
            case ev.MemoryForgotten():
                if found is not None and self._conflicts(e.expected_revision, current):
                    return Decision("conflict", None, current)
                for kind in MEMORY_KINDS:
                    left = self.current(kind, key)
                    if left is not None:
                        self.forgotten(left, kind, e)
                    self.state[kind][key] = None
                self._track(e.tenant, e.memory_id, "knowledge", None)
                if e.erase:
                    # Applied whatever it finds: a rebuild reads none of the events it
                    # erased, so it must decide the same without them.
                    return Decision("applied", 0, None)
                if found is None:
                    return Decision("not_found", None, 0)
                return Decision("applied", 0, current)


def _none(tenant: str) -> list[tuple[str, int, float | None]]:
    return []
