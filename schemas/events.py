"""The event catalog: one frozen msgspec Struct per event type, in one tagged union.

Schema evolution follows msgspec's rules: a new field always has a default, an existing
field never changes type; a breaking change to an event is a new ``v`` with an upcaster
(see :class:`EventDecoder`). Unknown fields are ignored on decode so that an older worker
still reads the events of a newer producer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, Final, TypeAlias

import msgspec

from memstream.schemas.errors import EventTooLarge, InvalidEvent, SubjectMismatch
from memstream.schemas.ids import _PRINTABLE, _TENANT, AgentId, EventId, RefId, Tenant
from memstream.schemas.partitions import slot_of
from memstream.schemas.subjects import parse_event_subject, published_subject

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "EVENT_TYPES",
    "MAX_DEPTH",
    "OPERATOR_TYPES",
    "AnyEvent",
    "CollabMessage",
    "CollabRecorded",
    "ContextCleared",
    "ContextSet",
    "ConversationTurn",
    "ConversationTurnsRemoved",
    "Envelope",
    "Event",
    "EventDecoder",
    "FlowRunRecorded",
    "KnowledgeStored",
    "MemoryForgotten",
    "MemoryLinked",
    "MemoryRevised",
    "QuotaReapplied",
    "QuotaSet",
    "Scoped",
    "SolutionStored",
    "TaskCompleted",
    "TaskCreated",
    "TaskFailed",
    "TaskStarted",
    "ToolUsed",
    "UnknownEvent",
    "Upcaster",
    "check_depth",
    "check_subject",
    "decode_event",
    "encode_event",
    "utc_now",
]

DEFAULT_MAX_EVENT_BYTES: Final = 1024 * 1024
# The deepest an event's JSON may nest (objects and arrays, the event itself included).
MAX_DEPTH: Final = 64
_TOO_DEEP: Final = (
    f"the event nests more than {MAX_DEPTH} levels of objects and arrays: flatten its "
    "metadata, data, args, result or output"
)

Text = Annotated[str, msgspec.Meta(min_length=1)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Tags = Annotated[tuple[Tag, ...], msgspec.Meta(max_length=64)]
Metadata = dict[str, Any]
Millis = Annotated[int, msgspec.Meta(ge=0)]
Version = Annotated[int, msgspec.Meta(ge=1)]
Timestamp = Annotated[dt.datetime, msgspec.Meta(tz=True)]
# A memory's revision as a writer read it: applied only if the memory still has it (0
# on a store: only if no live memory has the id). Left out, the write is applied as
# before, last writer wins.
Revision = Annotated[int, msgspec.Meta(ge=0)]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """The fields every event shares, whatever its type."""

    id: EventId
    tenant: Tenant
    agent: AgentId
    ts: Timestamp
    v: Version = 1
    correlation_id: RefId | None = None
    causation_id: RefId | None = None
    # Groups any event into a task's bundle.
    task_id: RefId | None = None


class Event(Envelope, frozen=True, kw_only=True, tag_field="type", gc=False):
    """An event of a type this version knows. Subclasses add the event's own fields, flat.

    ``gc=False``: events are never part of a reference cycle, and a batch of tens of
    thousands of tracked objects makes every garbage-collector pass walk them all.
    """

    # The tag, as a plain class attribute: read for every event on the hot paths.
    type: ClassVar[str] = ""


# --- memory -------------------------------------------------------------------------

Seconds = Annotated[int, msgspec.Meta(ge=1)]


def _expiry(
    ts: dt.datetime, ttl_s: int | None, expires_at: dt.datetime | None
) -> dt.datetime | None:
    if expires_at is not None:
        return expires_at.astimezone(dt.UTC)
    return ts + dt.timedelta(seconds=ttl_s) if ttl_s else None


class Scoped(Event, frozen=True, kw_only=True):
    """A memory's scope below the tenant, and when it expires (hidden from every read
    from then on; the event stays in the log). ``expires_at`` wins over ``ttl_s``,
    which counts from the event's ``ts``."""

    user_id: RefId | None = None
    run_id: RefId | None = None
    project: RefId | None = None
    ttl_s: Seconds | None = None
    expires_at: Timestamp | None = None

    def expiry(self) -> dt.datetime | None:
        """When what this event stores expires, or None."""
        return _expiry(self.ts, self.ttl_s, self.expires_at)


class KnowledgeStored(Scoped, frozen=True, tag="knowledge.stored"):
    memory_id: RefId
    domain: Name
    content: Text
    tags: Tags = ()
    metadata: Metadata = {}
    expected_revision: Revision | None = None


class SolutionStored(Scoped, frozen=True, tag="solution.stored"):
    memory_id: RefId
    problem: Text
    solution: Text
    tags: Tags = ()
    metadata: Metadata = {}
    expected_revision: Revision | None = None


class MemoryRevised(Event, frozen=True, tag="memory.revised"):
    """Changes the fields it carries; a field left out (null) stays as it was."""

    memory_id: RefId
    content: Text | None = None
    problem: Text | None = None
    solution: Text | None = None
    tags: Tags | None = None
    metadata: Metadata | None = None
    # A new expiry, counted from this event's ts (or at ``expires_at``); left out, the
    # memory keeps the one it had.
    ttl_s: Seconds | None = None
    expires_at: Timestamp | None = None
    expected_revision: Revision | None = None

    def expiry(self) -> dt.datetime | None:
        """The memory's new expiry, or None to keep the one it had."""
        return _expiry(self.ts, self.ttl_s, self.expires_at)


class MemoryForgotten(Event, frozen=True, tag="memory.forgotten"):
    memory_id: RefId
    reason: str | None = None
    # Also delete the memory's earlier events from the stream itself.
    erase: bool = False
    expected_revision: Revision | None = None


class MemoryLinked(Event, frozen=True, tag="memory.linked"):
    from_id: RefId
    to_id: RefId
    relation: Name


# --- collaboration ------------------------------------------------------------------


class CollabRecorded(Scoped, frozen=True, tag="collab.recorded"):
    interaction_id: RefId
    initiator: AgentId
    participants: tuple[AgentId, ...]
    task_description: Text
    outcome: str | None = None
    metadata: Metadata = {}


class CollabMessage(Event, frozen=True, tag="collab.message"):
    interaction_id: RefId
    sender: AgentId
    recipients: tuple[AgentId, ...]
    content: Text


# --- tasks and flows ----------------------------------------------------------------


class TaskCreated(Event, frozen=True, tag="task.created"):
    task_id: RefId
    title: Text
    assignee: AgentId | None = None
    parent_id: RefId | None = None
    flow_id: RefId | None = None
    metadata: Metadata = {}


class TaskStarted(Event, frozen=True, tag="task.started"):
    task_id: RefId


class TaskCompleted(Event, frozen=True, tag="task.completed"):
    task_id: RefId
    output: Any = None
    metadata: Metadata = {}


class TaskFailed(Event, frozen=True, tag="task.failed"):
    task_id: RefId
    error: Text


class FlowRunRecorded(Event, frozen=True, tag="flow.run_recorded"):
    flow_id: RefId
    run_id: RefId
    status: Name
    duration_ms: Millis | None = None
    data: Any = None


# --- context, conversation, tools ---------------------------------------------------


class ContextSet(Event, frozen=True, tag="context.set"):
    key: RefId
    data: Metadata
    ttl_s: Annotated[float, msgspec.Meta(gt=0)] | None = None


class ContextCleared(Event, frozen=True, tag="context.cleared"):
    key: RefId


class ConversationTurn(Event, frozen=True, tag="conversation.turn"):
    session_id: RefId
    role: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    content: str


class ConversationTurnsRemoved(Event, frozen=True, tag="conversation.turns_removed"):
    """Removes turns from a session's reads (the conversation, recall, a search of turns):
    those at ``seqs``, and with ``clear`` every turn of the session before this event.
    The log keeps them; a replay removes them again. One that names none removes none."""

    session_id: RefId
    seqs: tuple[Annotated[int, msgspec.Meta(ge=1)], ...] = ()
    clear: bool = False


class ToolUsed(Event, frozen=True, tag="tool.used"):
    tool: Name
    args: Any = None
    result: Any = None
    duration_ms: Millis | None = None
    ok: bool | None = None


# --- quotas (the operator's: a tenant's own users may not publish them) ---------------


class QuotaSet(Event, frozen=True, tag="quota.set"):
    """The tenant's hard limits from here on in the stream: live memories, and megabytes
    of their text (0: none). A limit left out stays as it was (the deployment's default
    until a quota.set gives one)."""

    memories: Annotated[int, msgspec.Meta(ge=0)] | None = None
    storage_mb: Annotated[float, msgspec.Meta(ge=0)] | None = None


class QuotaReapplied(Event, frozen=True, tag="quota.reapplied"):
    """Decides again, here, the tenant's stores and revises at ``seqs`` (refused their
    quota before): each is applied if the quota now allows it and its memory has not
    changed since. Nothing is published again: the projections read them from the log."""

    seqs: Annotated[
        tuple[Annotated[int, msgspec.Meta(ge=1)], ...],
        msgspec.Meta(max_length=10_000),
    ]


AnyEvent: TypeAlias = (
    KnowledgeStored
    | SolutionStored
    | MemoryRevised
    | MemoryForgotten
    | MemoryLinked
    | CollabRecorded
    | CollabMessage
    | TaskCreated
    | TaskStarted
    | TaskCompleted
    | TaskFailed
    | FlowRunRecorded
    | ContextSet
    | ContextCleared
    | ConversationTurn
    | ConversationTurnsRemoved
    | ToolUsed
    | QuotaSet
    | QuotaReapplied
)

# The types only the operator publishes (no tenant's user may: see consumers.auth).
OPERATOR_TYPES: Final = frozenset({"quota.set", "quota.reapplied"})

EVENT_TYPES: Final[dict[str, type[Event]]] = {
    cls.__struct_config__.tag: cls for cls in AnyEvent.__args__
}
for _tag, _cls in EVENT_TYPES.items():
    _cls.type = _tag


class _Typed(Envelope, frozen=True, kw_only=True):
    """The envelope with its type, to read an event whose type this version does not know."""

    type: Annotated[str, msgspec.Meta(pattern=r"\A[^.\s*>]+\.[^.\s*>]+\Z")]


class UnknownEvent(Envelope, frozen=True, kw_only=True):
    """A valid envelope of a type this version does not know (from a newer producer).

    It is kept in the history ``events`` table and skipped by the typed tables.
    ``raw`` is the message body as it arrived.
    """

    type: str
    raw: bytes


Upcaster: TypeAlias = Callable[[dict[str, Any]], dict[str, Any]]
"""Turns the body of an event at version ``n`` into its body at version ``n + 1``."""

_encoder = msgspec.json.Encoder()


def encode_event(event: Event, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> bytes:
    """The event as the JSON body published on the wire; raises EventTooLarge, or
    InvalidEvent when it nests deeper than MAX_DEPTH."""
    try:
        body = _encoder.encode(event)
    except RecursionError:
        raise InvalidEvent(_TOO_DEEP) from None
    if len(body) > max_bytes:
        raise EventTooLarge(len(body), max_bytes)
    check_depth(body)
    return body


def check_depth(body: bytes) -> None:
    """Raise InvalidEvent when the JSON nests deeper than MAX_DEPTH objects and arrays
    (an event is itself one level). Deeper values break what stores them downstream
    (JSON parsers and engines have nesting limits), so the contract bounds them."""
    if body.count(b"{") + body.count(b"[") <= MAX_DEPTH:
        return  # cannot nest deeper than it has brackets: the common case, no scan
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x7B, 0x5B):  # { [
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH:
                raise InvalidEvent(_TOO_DEEP)
        elif byte in (0x7D, 0x5D):  # } ]
            depth -= 1


# msgspec names a failed pattern by its regex; a person needs the rule in words.
_PATTERN_WORDS = {
    _TENANT: "a tenant id (lowercase letters, digits, '_' and '-', at most 63)",
    _PRINTABLE: "printable characters (no control characters)",
}


def _describe(err: msgspec.DecodeError) -> str:
    text = str(err)
    if not isinstance(err, msgspec.ValidationError):
        return f"event is not valid JSON: {text}"
    for regex, words in _PATTERN_WORDS.items():
        text = text.replace(f"`str` matching regex {regex!r}", words)
    return f"event does not match the contract: {text}"


class EventDecoder:
    """Decodes event bodies; build one and reuse it (it holds the msgspec decoders).

    ``upcasters`` maps ``(type, v)`` to a function lifting a body from version ``v`` to
    ``v + 1``; ``current_versions`` gives each type's current ``v`` (1 when absent).
    The common case, an event already at its current version, takes one typed decode.
    """

    def __init__(
        self,
        *,
        max_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        upcasters: Mapping[tuple[str, int], Upcaster] | None = None,
        current_versions: Mapping[str, int] | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self._typed = msgspec.json.Decoder(AnyEvent)
        self._envelope = msgspec.json.Decoder(_Typed)
        self._raw = msgspec.json.Decoder(dict[str, Any])
        self._upcasters = dict(upcasters or {})
        self._current = dict(current_versions or {})

    def decode(self, body: bytes) -> AnyEvent | UnknownEvent:
        """Decode one body; raises InvalidEvent (or EventTooLarge) naming the problem."""
        if len(body) > self.max_bytes:
            raise EventTooLarge(len(body), self.max_bytes)
        try:
            event: AnyEvent = self._typed.decode(body)
        except msgspec.DecodeError as err:
            return self._decode_slow(body, err)
        except RecursionError:
            raise InvalidEvent(_TOO_DEEP) from None
        check_depth(body)
        if event.v < self._current.get(event.type, 1):
            return self._upcast(self._raw.decode(body))
        return event

    def _decode_slow(self, body: bytes, err: msgspec.DecodeError) -> AnyEvent | UnknownEvent:
        try:
            env = self._envelope.decode(body)
        except msgspec.DecodeError:
            raise InvalidEvent(_describe(err)) from None
        if env.type not in EVENT_TYPES:
            return UnknownEvent(raw=body, **msgspec.structs.asdict(env))
        if env.v < self._current.get(env.type, 1):
            return self._upcast(self._raw.decode(body))
        raise InvalidEvent(_describe(err)) from None

    def _upcast(self, data: dict[str, Any]) -> AnyEvent:
        type_, v = data["type"], data.get("v", 1)
        target = self._current.get(type_, 1)
        while v < target:
            step = self._upcasters.get((type_, v))
            if step is None:
                raise InvalidEvent(f"no upcaster for {type_!r} from v{v} to v{v + 1}")
            data = step(data)
            v += 1
            data["v"] = v
        try:
            event: AnyEvent = msgspec.convert(data, AnyEvent)
        except msgspec.ValidationError as err:
            raise InvalidEvent(f"event {type_!r} after upcasting to v{v}: {err}") from None
        return event


_default_decoder = EventDecoder()


def decode_event(body: bytes) -> AnyEvent | UnknownEvent:
    """Decode with the default limits; see :class:`EventDecoder`."""
    return _default_decoder.decode(body)


def check_subject(event: Event | UnknownEvent, subject: str) -> None:
    """Raise SubjectMismatch unless tenant and type agree with ``mem.<tenant>.<type>``."""
    parsed = parse_event_subject(subject)
    event_type = event.type
    stored, subject = subject, published_subject(subject)
    if event.tenant != parsed.tenant:
        raise SubjectMismatch(
            f"event tenant {event.tenant!r} disagrees with subject {subject!r}: the tenant "
            "field must equal the subject's tenant token"
        )
    if event_type != parsed.type:
        raise SubjectMismatch(
            f"event type {event_type!r} disagrees with subject {subject!r}: the type field "
            "must equal the subject's <family>.<name> tokens"
        )
    if parsed.slot is not None and parsed.slot != slot_of(parsed.tenant):
        raise SubjectMismatch(
            f"subject {stored!r} names slot {parsed.slot}, but tenant {parsed.tenant!r} is "
            f"in slot {slot_of(parsed.tenant)}: publish to the subject without a slot"
        )
