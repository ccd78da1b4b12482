"""``MemoryClient``: what an agent imports to publish and query its memory (asyncio)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, TypedDict, TypeVar, Unpack

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js.api import PubAck

from producers._connect import PermissionDenied, connect_nats, denied, or_denied
from producers._queries import QueryMethods
from schemas import events as ev
from schemas.errors import InvalidEvent, PublishError
from schemas.events import DEFAULT_MAX_EVENT_BYTES, Event
from schemas.ids import new_id, validate_agent, validate_tenant
from schemas.subjects import event_subject, reply_inbox_prefix

__all__ = ["GENERATED_IDS", "Causality", "MemoryClient", "PublishAck", "Trace"]

E = TypeVar("E", bound=Event)


class PublishAck(msgspec.Struct, frozen=True):
    """JetStream's receipt for one event."""

    seq: int
    id: str
    # True when JetStream already had this id within its duplicate window: nothing new
    # was stored and ``seq`` is the sequence of the first copy.
    duplicate: bool
    stream: str


class Causality(TypedDict, total=False):
    correlation_id: str
    causation_id: str


class Trace(Causality, total=False):
    # Groups the event into this task's bundle.
    task_id: str


# The id field each creating event gets a fresh UUIDv7 for when the caller gives none.
GENERATED_IDS: dict[str, str] = {
    "knowledge.stored": "memory_id",
    "solution.stored": "memory_id",
    "collab.recorded": "interaction_id",
    "task.created": "task_id",
    "flow.run_recorded": "run_id",
}
# One decoder per event class, to validate an event against the contract before it is
# sent (a Struct's constructor checks types statically only).
_validators = {tag: msgspec.json.Decoder(cls) for tag, cls in ev.EVENT_TYPES.items()}


class MemoryClient(QueryMethods):
    """Publishes one tenant's events as one agent. Create it with :meth:`connect`.

    Every typed method builds a contract-conforming event (id as UUIDv7, timestamp now),
    validates it, and publishes it with ``Nats-Msg-Id`` set to the event id, so a retry
    within JetStream's duplicate window is stored once. The query methods (``search``,
    ``history``, ``task``, ``context``, ``conversation``, ``recall``, ``stats``,
    ``analytics``) read the tenant's memory; pass ``min_seq=ack.seq`` to read a write.
    """

    def __init__(
        self,
        nc: NatsClient,
        *,
        tenant: str,
        agent: str,
        window: int = 512,
        ack_timeout: float = 5.0,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        owns_connection: bool = False,
    ) -> None:
        self.tenant = validate_tenant(tenant)
        self.agent = validate_agent(agent)
        if window < 1:
            raise ValueError("window must be at least 1")
        self.nc = nc
        self.window = window
        self.ack_timeout = ack_timeout
        self.max_event_bytes = max_event_bytes
        self._owns_connection = owns_connection
        self._js = nc.jetstream(timeout=ack_timeout, publish_async_max_pending=window)
        # (tenant, type) -> subject: building one validates the tokens, which is not free
        # per event on the hot path of publish_many.
        self._subjects: dict[tuple[str, str], str] = {}

    @classmethod
    async def connect(
        cls,
        url: str | None = None,
        *,
        tenant: str,
        agent: str,
        user: str | None = None,
        password: str | None = None,
        creds: str | None = None,
        window: int = 512,
        ack_timeout: float = 5.0,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> MemoryClient:
        """Connect to NATS (``url`` defaults to ``$MEMSTREAM_NATS_URL``)."""
        validate_tenant(tenant)
        validate_agent(agent)
        nc = await connect_nats(
            url,
            name=f"memstream:{tenant}:{agent}",
            user=user,
            password=password,
            creds=creds,
            # Replies come back under the tenant's own inbox prefix, the only place a
            # tenant's credentials may subscribe (see `memstream up --auth`).
            inbox_prefix=reply_inbox_prefix(tenant),
        )
        return cls(
            nc,
            tenant=tenant,
            agent=agent,
            window=window,
            ack_timeout=ack_timeout,
            max_event_bytes=max_event_bytes,
            owns_connection=True,
        )

    async def close(self) -> None:
        """Wait for in-flight publishes, then close the connection if this client opened it."""
        if self._owns_connection and not self.nc.is_closed:
            await self.nc.drain()

    async def __aenter__(self) -> MemoryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- building and publishing --------------------------------------------------

    def new_event(self, cls: type[E], **fields: Any) -> E:
        """An event of ``cls`` from this client's tenant and agent, with a new id and ts."""
        fields.setdefault("id", new_id())
        fields.setdefault("tenant", self.tenant)
        fields.setdefault("agent", self.agent)
        fields.setdefault("ts", ev.utc_now())
        return cls(**fields)

    def encode(self, event: Event) -> tuple[str, bytes]:
        """Subject and body for ``event``; raises InvalidEvent or EventTooLarge."""
        validator = _validators.get(event.type)
        if validator is None:
            raise InvalidEvent(f"unknown event type {event.type!r}")
        body = ev.encode_event(event, self.max_event_bytes)
        try:
            validator.decode(body)
        except msgspec.ValidationError as err:
            raise InvalidEvent(f"{event.type} event does not match the contract: {err}") from None
        key = (event.tenant, event.type)
        subject = self._subjects.get(key)
        if subject is None:
            if len(self._subjects) > 4096:
                self._subjects.clear()
            subject = self._subjects[key] = event_subject(*key)
        return subject, body

    async def publish(self, event: Event) -> PublishAck:
        """Publish one event and wait for JetStream to store it."""
        subject, body = self.encode(event)
        try:
            ack = await or_denied(
                self.nc,
                subject,
                self._js.publish(
                    subject, body, timeout=self.ack_timeout, headers={"Nats-Msg-Id": event.id}
                ),
            )
        except PermissionDenied as err:
            raise PublishError(
                f"event {event.id} was not stored: these credentials may not publish to "
                f"{subject} ({err})",
                {0: err},
                [None],
            ) from None
        except (nats.errors.Error, TimeoutError) as err:
            raise PublishError(
                f"event {event.id} was not stored: {_reason(err)}", {0: err}, [None]
            ) from err
        return _to_ack(ack, event.id)

    async def publish_many(self, events: Iterable[Event]) -> list[PublishAck]:
        """Publish a batch with up to ``window`` publishes in flight; acks in input order.

        Every event is validated before the first is sent, so an invalid event sends
        nothing. If JetStream does not store some of them, PublishError carries the acks
        of the rest; publishing the whole batch again is safe (ids deduplicate).
        """
        batch = list(events)
        encoded = [self.encode(e) for e in batch]
        futures: list[asyncio.Future[PubAck]] = []
        failures: dict[int, BaseException] = {}
        publish_async = self._js.publish_async
        loop = asyncio.get_running_loop()
        try:
            # Sending blocks only while the window is full; if no ack frees a slot for
            # ack_timeout, JetStream has stalled. The deadline moves every 64 sends
            # rather than every send: a timer per message would cost more than encoding.
            async with asyncio.timeout(self.ack_timeout) as deadline:
                for i, (subject, body) in enumerate(encoded):
                    if not i & 63:
                        deadline.reschedule(loop.time() + self.ack_timeout)
                    futures.append(
                        await publish_async(subject, body, headers={"Nats-Msg-Id": batch[i].id})
                    )
        except (nats.errors.Error, TimeoutError) as err:
            if isinstance(err, TimeoutError):
                err = TimeoutError("JetStream stopped acknowledging while the window was full")
            failures.update(dict.fromkeys(range(len(futures), len(batch)), err))
        results: Sequence[PubAck | BaseException]
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*futures, return_exceptions=True), self.ack_timeout
            )
        except TimeoutError:
            for fut in futures:
                fut.cancel()
            results = [
                f.result()
                if f.done() and not f.cancelled() and f.exception() is None
                else TimeoutError("no acknowledgement from JetStream in time")
                for f in futures
            ]
        acks: list[PublishAck | None] = [None] * len(batch)
        for i, result in enumerate(results):
            if isinstance(result, BaseException):
                failures[i] = result
            else:
                acks[i] = _to_ack(result, batch[i].id)
        if failures:
            first = min(failures)
            reason = _forbidden(self.nc, encoded[first][0]) or _reason(failures[first])
            raise PublishError(
                f"{len(failures)} of {len(batch)} events were not stored "
                f"(first: {reason}); publishing the batch again is safe",
                failures,
                list(acks),
            )
        return acks  # type: ignore[return-value]

    # --- memory -------------------------------------------------------------------

    async def store_knowledge(
        self,
        content: str,
        *,
        domain: str,
        tags: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        memory_id: str | None = None,
        **trace: Unpack[Trace],
    ) -> PublishAck:
        """Store a piece of knowledge; ``memory_id`` is generated when omitted."""
        return await self.publish(
            self.new_event(
                ev.KnowledgeStored,
                memory_id=memory_id or new_id(),
                domain=domain,
                content=content,
                tags=tuple(tags),
                metadata=metadata or {},
                **trace,
            )
        )

    async def store_solution(
        self,
        problem: str,
        solution: str,
        *,
        tags: Sequence[str] = (),
        metadata: dict[str, Any] | None = None,
        memory_id: str | None = None,
        **trace: Unpack[Trace],
    ) -> PublishAck:
        """Store how a problem was solved."""
        return await self.publish(
            self.new_event(
                ev.SolutionStored,
                memory_id=memory_id or new_id(),
                problem=problem,
                solution=solution,
                tags=tuple(tags),
                metadata=metadata or {},
                **trace,
            )
        )

    async def revise(
        self,
        memory_id: str,
        *,
        content: str | None = None,
        problem: str | None = None,
        solution: str | None = None,
        tags: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **trace: Unpack[Trace],
    ) -> PublishAck:
        """Change a stored memory; fields left as None stay as they were."""
        return await self.publish(
            self.new_event(
                ev.MemoryRevised,
                memory_id=memory_id,
                content=content,
                problem=problem,
                solution=solution,
                tags=None if tags is None else tuple(tags),
                metadata=metadata,
                **trace,
            )
        )

    async def forget(
        self,
        memory_id: str,
        *,
        reason: str | None = None,
        erase: bool = False,
        **trace: Unpack[Trace],
    ) -> PublishAck:
        """Forget a memory; ``erase=True`` also removes its earlier events from the stream."""
        return await self.publish(
            self.new_event(
                ev.MemoryForgotten, memory_id=memory_id, reason=reason, erase=erase, **trace
            )
        )

    async def link(
        self, from_id: str, to_id: str, relation: str, **trace: Unpack[Trace]
    ) -> PublishAck:
        """Record a relation between two memories (e.g. ``refines``, ``contradicts``)."""
        return await self.publish(
            self.new_event(
                ev.MemoryLinked, from_id=from_id, to_id=to_id, relation=relation, **trace
            )
        )

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
        **trace: Unpack[Trace],
    ) -> PublishAck:
        """Record who worked with whom on what; the initiator defaults to this agent."""
        return await self.publish(
            self.new_event(
                ev.CollabRecorded,
                interaction_id=interaction_id or new_id(),
                initiator=initiator or self.agent,
                participants=tuple(participants),
                task_description=task_description,
                outcome=outcome,
                metadata=metadata or {},
                **trace,
            )
        )

    async def send_message(
        self,
        interaction_id: str,
        content: str,
        *,
        recipients: Sequence[str],
        sender: str | None = None,
        **trace: Unpack[Trace],
    ) -> PublishAck:
        """Record a message within an interaction; the sender defaults to this agent."""
        return await self.publish(
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

    async def task_created(
        self,
        title: str,
        *,
        task_id: str | None = None,
        assignee: str | None = None,
        parent_id: str | None = None,
        flow_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        **causality: Unpack[Causality],
    ) -> PublishAck:
        """Create a task; ``task_id`` is generated when omitted (read it from the event)."""
        return await self.publish(
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

    async def task_started(self, task_id: str, **causality: Unpack[Causality]) -> PublishAck:
        return await self.publish(self.new_event(ev.TaskStarted, task_id=task_id, **causality))

    async def task_completed(
        self,
        task_id: str,
        *,
        output: Any = None,
        metadata: dict[str, Any] | None = None,
        **causality: Unpack[Causality],
    ) -> PublishAck:
        """Complete a task; ``output`` is any JSON value."""
        return await self.publish(
            self.new_event(
                ev.TaskCompleted,
                task_id=task_id,
                output=output,
                metadata=metadata or {},
                **causality,
            )
        )

    async def task_failed(
        self, task_id: str, error: str, **causality: Unpack[Causality]
    ) -> PublishAck:
        return await self.publish(
            self.new_event(ev.TaskFailed, task_id=task_id, error=error, **causality)
        )

    async def record_flow_run(
        self,
        flow_id: str,
        status: str,
        *,
        run_id: str | None = None,
        duration_ms: int | None = None,
        data: Any = None,
        **trace: Unpack[Trace],
    ) -> PublishAck:
        """Record one run of a flow (a pipeline of tasks) with its status."""
        return await self.publish(
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

    async def set_context(
        self,
        key: str,
        data: dict[str, Any],
        *,
        ttl_s: float | None = None,
        **trace: Unpack[Trace],
    ) -> PublishAck:
        """Set shared context under ``key``; it expires ``ttl_s`` seconds after ``ts``."""
        return await self.publish(
            self.new_event(ev.ContextSet, key=key, data=data, ttl_s=ttl_s, **trace)
        )

    async def clear_context(self, key: str, **trace: Unpack[Trace]) -> PublishAck:
        return await self.publish(self.new_event(ev.ContextCleared, key=key, **trace))

    async def add_turn(
        self, session_id: str, role: str, content: str, **trace: Unpack[Trace]
    ) -> PublishAck:
        """Append a conversation turn (``role``: user, assistant, system, tool, ...)."""
        return await self.publish(
            self.new_event(
                ev.ConversationTurn, session_id=session_id, role=role, content=content, **trace
            )
        )

    async def record_tool_use(
        self,
        tool: str,
        *,
        args: Any = None,
        result: Any = None,
        duration_ms: int | None = None,
        ok: bool | None = None,
        **trace: Unpack[Trace],
    ) -> PublishAck:
        return await self.publish(
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


def _to_ack(ack: PubAck, event_id: str) -> PublishAck:
    return PublishAck(seq=ack.seq, id=event_id, duplicate=bool(ack.duplicate), stream=ack.stream)


def _forbidden(nc: NatsClient, subject: str) -> str | None:
    message = denied(nc, subject)
    return f"these credentials may not publish to {subject} ({message})" if message else None


def _reason(err: BaseException) -> str:
    if isinstance(err, nats.errors.NoRespondersError | nats.js.errors.NoStreamResponseError):
        return "no stream takes this subject: run 'memstream up' (it creates the streams)"
    if isinstance(err, TimeoutError | nats.errors.TimeoutError):
        return "no acknowledgement from JetStream in time"
    if isinstance(err, nats.js.errors.APIError):
        return f"JetStream refused it: {err.description or err}"
    return repr(err)
