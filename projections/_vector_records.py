"""What a point of the vector projection holds: the records the fold makes of memories,
tasks, turns and collaborations, and the text each one embeds."""

from __future__ import annotations

from typing import Any

import msgspec

from memstream.projections.embedding_cache import text_key
from memstream.projections.memory import Key, MemoryFold, revision
from memstream.projections.quotas import Loader, Quotas
from memstream.schemas import events as ev

__all__ = [
    "MemoryEvent",
    "Payload",
    "PayloadFold",
    "TaskEvent",
    "base_record",
    "next_revision",
    "scoped",
    "task_record",
    "text_of",
]

Payload = dict[str, Any]


def text_of(kind: str, p: dict[str, Any]) -> str:
    """What a point's vector embeds."""
    if kind == "knowledge":
        return str(p["content"])
    if kind == "solutions":
        return f"{p['problem']}\n{p['solution']}"
    if kind == "turns":
        return f"{p['role']}: {p['content']}"
    if kind == "tasks":
        lines = [str(p.get("title") or p["ref"])]
        if p.get("output") is not None:
            lines.append(as_json(p["output"]))
        if p.get("error"):
            lines.append(f"error: {p['error']}")
        return "\n".join(lines)
    outcome = p.get("outcome")
    return f"{p['task_description']}\n{outcome}" if outcome else str(p["task_description"])


def base_record(seq: int, e: ev.Event) -> Payload:
    epoch = e.ts.timestamp()
    base = {"tenant": e.tenant, "agent": e.agent, "ts": e.ts.isoformat(),
            "ts_epoch": epoch, "created_epoch": epoch, "seq": seq}  # fmt: skip
    if e.task_id:
        base["task_id"] = e.task_id
    return base


def scoped(e: ev.Scoped) -> Payload:
    """A memory's scope and expiry, where it has them."""
    scope = {name: getattr(e, name) for name in ("user_id", "run_id", "project")}
    expiry = e.expiry()
    if expiry is not None:
        scope["expires_epoch"] = expiry.timestamp()
    return {k: v for k, v in scope.items() if v is not None}


def as_json(value: Any) -> str:
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


TaskEvent = ev.TaskCreated | ev.TaskCompleted | ev.TaskFailed
MemoryEvent = ev.KnowledgeStored | ev.SolutionStored | ev.MemoryRevised | ev.MemoryForgotten


def texts_had(kind: str, record: Payload) -> Payload:
    """``record`` with its text's cache key among ``text_keys``: every text a point has
    had, event by event, so an erase can clear their cache entries. Kept at each event,
    not at each write, so a point comes out the same however its events were batched
    (live or in a rebuild)."""
    key = text_key(text_of(kind, record)).hex()
    if key not in record.get("text_keys", ()):
        record["text_keys"] = [*record.get("text_keys", ()), key]
    return record


def task_record(record: Payload | None, seq: int, e: TaskEvent) -> Payload:
    """A task's point as of ``e``: made by its creation, given its outcome later (an
    outcome seen without the creation makes a point without a title)."""
    record = dict(record) if record else {**base_record(seq, e), "ref": e.task_id, "tags": []}
    record.update(seq=seq, task_id=e.task_id)
    if isinstance(e, ev.TaskCreated):
        record.update(base_record(seq, e), title=e.title, assignee=e.assignee, status="created",
                      metadata=e.metadata)  # fmt: skip
    elif isinstance(e, ev.TaskCompleted):
        record.update(status="completed", output=e.output,
                      metadata={**record.get("metadata", {}), **e.metadata})  # fmt: skip
    elif isinstance(e, ev.TaskFailed):
        record.update(status="failed", error=e.error)
    return texts_had("tasks", record)


def next_revision(record: Payload) -> int | None:
    """One more than the record's; None for a point written before points kept their
    revision (a replay of the vectors gives every point its own)."""
    revision = record.get("revision")
    return revision + 1 if isinstance(revision, int) else None


class PayloadFold(MemoryFold[Payload]):
    """The memory fold over point payloads; also gathers the texts an erase removes."""

    def __init__(
        self,
        stored: dict[str, dict[Key, Payload]],
        quotas: Quotas | None = None,
        load_usage: Loader | None = None,
    ) -> None:
        super().__init__(stored, quotas, load_usage)
        # tenant -> cache keys of every text an erased memory had.
        self.erased: dict[str, set[bytes]] = {}

    def created(self, seq: int, e: ev.KnowledgeStored | ev.SolutionStored) -> Payload:
        own: Payload = (
            {"domain": e.domain, "content": e.content}
            if isinstance(e, ev.KnowledgeStored)
            else {"problem": e.problem, "solution": e.solution}
        )
        kind = "knowledge" if isinstance(e, ev.KnowledgeStored) else "solutions"
        return texts_had(kind, {**base_record(seq, e), **scoped(e), "ref": e.memory_id, **own,
                                 "tags": list(e.tags), "metadata": e.metadata,
                                 "revision": 1})  # fmt: skip

    def stored_again(
        self, record: Payload, seq: int, e: ev.KnowledgeStored | ev.SolutionStored
    ) -> Payload:
        again = self.created(seq, e)
        again["revision"] = next_revision(record)
        again["created_epoch"] = record.get("created_epoch", again["created_epoch"])
        again["text_keys"] = [
            *record.get("text_keys", ()),
            *(k for k in again["text_keys"] if k not in record.get("text_keys", ())),
        ]
        return again

    def revised(self, record: Payload, kind: str, seq: int, e: ev.MemoryRevised) -> Payload:
        base = base_record(seq, e)
        revised = {**record, **revision(e, kind), "revision": next_revision(record),
                   "seq": seq, "ts": base["ts"], "ts_epoch": base["ts_epoch"]}  # fmt: skip
        expiry = e.expiry()
        if expiry is not None:
            revised["expires_epoch"] = expiry.timestamp()
        return texts_had(kind, revised)

    def revision_of(self, record: Payload) -> int | None:
        revision: int | None = record.get("revision")
        return revision

    def expiry_of(self, record: Payload) -> float | None:
        expires: float | None = record.get("expires_epoch")
        return expires

    def seq_of(self, record: Payload) -> int:
        return int(record["seq"])

    def forgotten(self, record: Payload, kind: str, e: ev.MemoryForgotten) -> None:
        if e.erase:
            keys = self.erased.setdefault(e.tenant, set())
            keys.update(bytes.fromhex(k) for k in record.get("text_keys", ()))
            keys.add(text_key(text_of(kind, record)))
