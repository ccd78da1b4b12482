"""The typed event methods of the SDK: one per event type, each building a
contract-conforming event (a UUIDv7 id, the time now) and publishing it."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, TypedDict, TypeVar, Unpack

import msgspec

from memstream.schemas import events as ev
from memstream.schemas.errors import (
    EventDeadLettered,
    MemoryNotFound,
    QuotaExceeded,
    RevisionConflict,
)
from memstream.schemas.events import Event
from memstream.schemas.ids import new_id
from memstream.schemas.queries import Memory, OutcomeResult

__all__ = [
    "GENERATED_IDS",
    "SCOPE_FIELDS",
    "Causality",
    "EventMethods",
    "PublishAck",
    "Scope",
    "Trace",
    "dedupe_id",
]

E = TypeVar("E", bound=Event)
# How long a confirmed write waits for the history to decide it.
_CONFIRM_WAIT_MS: Final = 10_000

_log = logging.getLogger("memstream.quota")


class PublishAck(msgspec.Struct, frozen=True):
    """JetStream's receipt for one event."""

    seq: int
    id: str
    # True when JetStream already had this id within its duplicate window: nothing new
    # was stored and ``seq`` is the sequence of the first copy.
    duplicate: bool
    stream: str
    # With confirm=True: what the projections decided (the outcome op's answer).
    outcome: OutcomeResult | None = None


class Causality(TypedDict, total=False):
    correlation_id: str
    causation_id: str


class Trace(Causality, total=False):
    # Groups the event into this task's bundle.
    task_id: str


class Scope(Trace, total=False):
    """A memory's scope below the tenant (the client's defaults when left out) and its
    expiry: ``ttl_s`` seconds from now, or at ``expires_at``."""

    user_id: str
    run_id: str
    project: str
    ttl_s: int
    expires_at: dt.datetime


SCOPE_FIELDS: Final = ("user_id", "run_id", "project")
# The namespace of the memory ids dedupe=True derives from a memory's text.
_DEDUPE_NAMESPACE: Final = uuid.UUID("2b8e4f0a-6c1d-5e3b-8f7a-9d0c1e2f3a4b")


def dedupe_id(tenant: str, kind: str, *texts: str) -> str:
    """The memory id of a text: the same for the same text (case and runs of white
    space aside) in the same tenant and kind, so storing it again revises one memory."""
    normal = "\x1f".join(" ".join(t.casefold().split()) for t in texts)
    return str(uuid.uuid5(_DEDUPE_NAMESPACE, f"{tenant}\x1f{kind}\x1f{normal}"))


# The id field each creating event gets a fresh UUIDv7 for when the caller gives none.
GENERATED_IDS: dict[str, str] = {
    "knowledge.stored": "memory_id",
    "solution.stored": "memory_id",
    "collab.recorded": "interaction_id",
    "task.created": "task_id",
    "flow.run_recorded": "run_id",
}


class EventMethods:
    """Mixed into MemoryClient, which provides ``publish``."""

    tenant: str
    agent: str
    # user_id, run_id, project given at connect(): every memory event carries them
    # unless it says otherwise.
    scope: dict[str, str]

    if TYPE_CHECKING:

        async def publish(self, event: Event) -> PublishAck: ...

        async def outcome(
            self,
            event_id: str | None = None,
            *,
            seq: int | None = None,
            min_seq: int | None = None,
            wait_ms: int | None = None,
        ) -> OutcomeResult: ...

        async def get(
            self,
            memory_id: str,
            *,
            min_seq: int | None = None,
            wait_ms: int | None = None,
            consistency: Literal["any", "latest"] | None = None,
        ) -> Memory: ...

    async def _confirmed(self, ack: PublishAck, memory_id: str, confirm: bool) -> PublishAck:
        """``ack``, with its outcome once the history has decided it (``confirm``); a
        write that was not applied raises what says why. Every write takes ``confirm``:
        for one that is not a memory's, it waits until the history has applied it."""
        if not confirm:
            return ack
        found = await self.outcome(ack.id, min_seq=ack.seq, wait_ms=_CONFIRM_WAIT_MS)
        if found.outcome == "conflict":
            raise RevisionConflict(
                f"memory {memory_id!r} of tenant {self.tenant} is at revision "
                f"{found.current_revision}, not the one this write expected: read it again "
                "(get) and retry",
                memory_id,
                found.current_revision,
            )
        if found.outcome == "not_found":
            raise MemoryNotFound(
                f"no memory {memory_id!r} in tenant {self.tenant} (never stored, forgotten "
                "or expired): search or list first",
                memory_id,
            )
        if found.outcome == "quota_exceeded":
            raise QuotaExceeded(found.message or f"memory {memory_id!r}: quota exceeded", memory_id)
        if found.message:
            # Applied, past a soft limit: the host's logging decides whether it shows.
            _log.warning("%s", found.message)
        if found.outcome == "dead_lettered":
            raise EventDeadLettered(
                f"event {ack.id} (seq {ack.seq}) could not be applied and is in the "
                "dead-letter stream: memstream dlq list says why"
            )
        return msgspec.structs.replace(ack, outcome=found)

    def new_event(self, cls: type[E], **fields: Any) -> E:
        """An event of ``cls`` from this client's tenant and agent, with a new id and ts."""
        fields.setdefault("id", new_id())
        fields.setdefault("tenant", self.tenant)
        fields.setdefault("agent", self.agent)
        fields.setdefault("ts", ev.utc_now())
        if issubclass(cls, ev.Scoped):
            for name, value in self.scope.items():
                if fields.get(name) is None:
                    fields[name] = value
        return cls(**fields)

    # --- collaboration ------------------------------------------------------------

    async def record_collaboration(
        self,
        task_description: str,
        *,
        participants: Sequence[str],
        initiator: str | None = None,
        outcome: str | None = None,
        metadata: dict[str, Any] | None = None,
        interaction_id: str | None = None,
        confirm: bool = False,
        **scope: Unpack[Scope],
    ) -> PublishAck:
        """Record who worked with whom on what; the initiator defaults to this agent."""
        ack = await self.publish(
            self.new_event(
                ev.CollabRecorded,
                interaction_id=interaction_id or new_id(),
                initiator=initiator or self.agent,
                participants=tuple(participants),
                task_description=task_description,
                outcome=outcome,
                metadata=metadata or {},
                **scope,
            )
        )
        return await self._confirmed(ack, "", confirm)

    async def send_message(
        self,
        interaction_id: str,
        content: str,
        *,
        recipients: Sequence[str],
        sender: str | None = None,
        confirm: bool = False,
        **trace: Unpack[Trace],
    ) -> PublishAck:
        """Record a message within an interaction; the sender defaults to this agent."""
        ack = await self.publish(
            self.new_event(
                ev.CollabMessage,
                interaction_id=interaction_id,
                sender=sender or self.agent,
                recipients=tuple(recipients),
                content=content,
                **trace,
            )
        )

        # --- tasks and flows ----------------------------------------------------------
        return await self._confirmed(ack, "", confirm)

    async def task_created(
        self,
        title: str,
        *,
        task_id: str | None = None,
        assignee: str | None = None,
        parent_id: str | None = None,
        flow_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        confirm: bool = False,
        **causality: Unpack[Causality],
    ) -> PublishAck:
        """Create a task; ``task_id`` is generated when omitted (read it from the event)."""
        ack = await self.publish(
            self.new_event(
                ev.TaskCreated,
                task_id=task_id or new_id(),
                title=title,
                assignee=assignee,
                parent_id=parent_id,
                flow_id=flow_id,
                metadata=metadata or {},
                **causality,
            )
        )
        return await self._confirmed(ack, "", confirm)

    async def task_started(
        self, task_id: str, *, confirm: bool = False, **causality: Unpack[Causality]
    ) -> PublishAck:
        ack = await self.publish(self.new_event(ev.TaskStarted, task_id=task_id, **causality))
        return await self._confirmed(ack, "", confirm)

    async def task_completed(
        self,
        task_id: str,
        *,
        output: Any = None,
        metadata: dict[str, Any] | None = None,
        confirm: bool = False,
        **causality: Unpack[Causality],
    ) -> PublishAck:
        """Complete a task; ``output`` is any JSON value."""
        ack = await self.publish(
            self.new_event(
                ev.TaskCompleted,
                task_id=task_id,
                output=output,
                metadata=metadata or {},
                **causality,
            )
        )
        return await self._confirmed(ack, "", confirm)

    async def task_failed(
        self, task_id: str, error: str, *, confirm: bool = False, **causality: Unpack[Causality]
    ) -> PublishAck:
        ack = await self.publish(
            self.new_event(ev.TaskFailed, task_id=task_id, error=error, **causality)
        )
        return await self._confirmed(ack, "", confirm)

    async def record_flow_run(
        self,
        flow_id: str,
        status: str,
        *,
        run_id: str | None = None,
        duration_ms: int | None = None,
        data: Any = None,
        confirm: bool = False,
        **trace: Unpack[Trace],
    ) -> PublishAck:
        """Record one run of a flow (a pipeline of tasks) with its status."""
        ack = await self.publish(
            self.new_event(
                ev.FlowRunRecorded,
                flow_id=flow_id,
                run_id=run_id or new_id(),
                status=status,
                duration_ms=duration_ms,
                data=data,
                **trace,
            )
        )

        # --- context, conversation, tools ---------------------------------------------
        return await self._confirmed(ack, "", confirm)

    async def set_context(
        self,
        key: str,
        data: dict[str, Any],
        *,
        ttl_s: float | None = None,
        confirm: bool = False,
        **trace: Unpack[Trace],
    ) -> PublishAck:
        """Set shared context under ``key``; it expires ``ttl_s`` seconds after ``ts``."""
        ack = await self.publish(
            self.new_event(ev.ContextSet, key=key, data=data, ttl_s=ttl_s, **trace)
        )
        return await self._confirmed(ack, "", confirm)

    async def clear_context(
        self, key: str, *, confirm: bool = False, **trace: Unpack[Trace]
    ) -> PublishAck:
        ack = await self.publish(self.new_event(ev.ContextCleared, key=key, **trace))
        return await self._confirmed(ack, "", confirm)

    async def add_turn(
        self,
        session_id: str,
        role: str,
        content: str,
        *,
        confirm: bool = False,
        **trace: Unpack[Trace],
    ) -> PublishAck:
        """Append a conversation turn (``role``: user, assistant, system, tool, ...)."""
        ack = await self.publish(
            self.new_event(
                ev.ConversationTurn, session_id=session_id, role=role, content=content, **trace
            )
        )
        return await self._confirmed(ack, "", confirm)

    async def remove_turns(
        self,
        session_id: str,
        *,
        seqs: Sequence[int] = (),
        clear: bool = False,
        confirm: bool = False,
        **trace: Unpack[Trace],
    ) -> PublishAck:
        """Remove turns from the session's reads (``conversation``, ``recall``, a search
        of turns): those at ``seqs`` (a turn's ``seq``), and with ``clear=True`` every
        turn the session has now. The log keeps them."""
        if not seqs and not clear:
            raise ValueError("name the turns to remove (seqs), or clear=True for all of them")
        ack = await self.publish(
            self.new_event(
                ev.ConversationTurnsRemoved,
                session_id=session_id,
                seqs=tuple(seqs),
                clear=clear,
                **trace,
            )
        )
        return await self._confirmed(ack, "", confirm)

    async def record_tool_use(
        self,
        tool: str,
        *,
        args: Any = None,
        result: Any = None,
        duration_ms: int | None = None,
        ok: bool | None = None,
        confirm: bool = False,
        **trace: Unpack[Trace],
    ) -> PublishAck:
        ack = await self.publish(
            self.new_event(
                ev.ToolUsed,
                tool=tool,
                args=args,
                result=result,
                duration_ms=duration_ms,
                ok=ok,
                **trace,
            )
        )
        return await self._confirmed(ack, "", confirm)
