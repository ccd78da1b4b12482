"""One exception hierarchy for everything memstream reports to a user or a client.

Each message says what was wrong and, where there is one, what to do about it. The
``code`` is the wire error code a reply carries (README, "Queries"). Every exception
memstream raises on purpose derives from :class:`MemstreamError`; those that cross the
wire or reach a user are defined here.
"""

from __future__ import annotations

__all__ = [
    "AdminError",
    "ConfigError",
    "ConnectError",
    "EventDeadLettered",
    "EventTooLarge",
    "Forbidden",
    "InvalidEvent",
    "InvalidId",
    "InvalidSubject",
    "InvalidTenant",
    "LockHeld",
    "LockLost",
    "MemoryNotFound",
    "MemstreamError",
    "NatsServerError",
    "NotCaughtUp",
    "PublishError",
    "QueryError",
    "QuotaExceeded",
    "RebuildBusy",
    "RevisionConflict",
    "SubjectMismatch",
    "UsageError",
]


class MemstreamError(Exception):
    """Base of every error memstream raises on purpose."""

    code = "internal"


class InvalidTenant(MemstreamError):
    code = "bad_request"

    def __init__(self, tenant: object) -> None:
        self.tenant = tenant
        super().__init__(
            f"tenant {tenant!r} is not a valid tenant id: use lowercase letters, digits, "
            "'_' and '-', starting with a letter or digit (at most 63)"
        )


class InvalidId(MemstreamError):
    code = "bad_request"

    def __init__(self, field: str, value: object, limit: int) -> None:
        self.field = field
        self.value = value
        shown = value if not isinstance(value, str) or len(value) <= 40 else value[:37] + "..."
        super().__init__(
            f"{field} {shown!r} is not valid: it must be a string of 1 to {limit} "
            "printable characters"
        )


class InvalidSubject(MemstreamError):
    code = "bad_request"


class InvalidEvent(MemstreamError):
    """An event that does not decode or does not match the contract."""

    code = "bad_request"


class SubjectMismatch(InvalidEvent):
    """The envelope disagrees with the subject it arrived on."""


class EventTooLarge(InvalidEvent):
    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"event is {size} bytes, over the limit of {limit} bytes: store large payloads "
            "elsewhere and put a reference in the event"
        )


class NotCaughtUp(MemstreamError):
    code = "not_caught_up"


class ConfigError(MemstreamError):
    """A setting (environment variable or flag) has a bad value."""

    code = "bad_request"


class NatsServerError(MemstreamError):
    """The embedded nats-server could not be found, started or reached."""

    code = "unavailable"


class ConnectError(MemstreamError):
    """No NATS server could be reached (or it refused the credentials)."""

    code = "unavailable"


class PublishError(MemstreamError):
    """JetStream did not acknowledge one or more events.

    ``failures`` maps the index of each event without an acknowledgement to its error;
    ``acks`` holds the acknowledgement of every event that was stored (None where it
    failed). ``unknown`` holds the indices whose outcome cannot be known (the request
    went out, but no acknowledgement came back: the connection dropped, or JetStream
    answered too late): such an event may have been stored. The other failures were not
    stored. Publishing any of them again is safe: the same id is stored once.
    """

    code = "unavailable"

    def __init__(
        self,
        message: str,
        failures: dict[int, BaseException],
        acks: list[object],
        unknown: frozenset[int] = frozenset(),
    ):
        self.failures = failures
        self.acks = acks
        self.unknown = unknown
        super().__init__(message)

    @property
    def not_stored(self) -> list[int]:
        """Indices of the events that were certainly not stored."""
        return sorted(set(self.failures) - self.unknown)


class Forbidden(MemstreamError):
    """The server refused a publish or request with a permissions violation."""

    code = "forbidden"


class QueryError(MemstreamError):
    """The error a query reply carried, raised on the client's side (or raised by the
    query worker to answer with it)."""

    def __init__(
        self,
        code: str,
        message: str,
        correlation_id: str | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.correlation_id = correlation_id
        # With ``rate_limited``: how long until the query would be answered.
        self.retry_after_ms = retry_after_ms
        super().__init__(f"{code}: {message}")


class AdminError(MemstreamError):
    """An operator request (``memadm.*``) that was refused, or whose reply is not what
    the contract says it should be."""

    def __init__(self, message: str, code: str = "bad_request") -> None:
        self.code = code
        super().__init__(message)


class RebuildBusy(MemstreamError):
    """A rebuild of the projection is running, and the request must wait for it."""

    code = "bad_request"


class UsageError(MemstreamError):
    """A command was given something it cannot act on (the CLI's user mistakes)."""

    code = "bad_request"


class LockHeld(MemstreamError):
    """The lock is held by another holder (and was not released within the wait)."""

    code = "unavailable"


class LockLost(MemstreamError):
    """The lock expired, or another holder took it, before this holder renewed it."""

    code = "unavailable"


class RevisionConflict(MemstreamError):
    """A write's expected_revision was not the memory's: another writer came first.
    ``current_revision`` is what to read again (``get``) before retrying."""

    code = "conflict"

    def __init__(self, message: str, memory_id: str, current_revision: int | None) -> None:
        super().__init__(message)
        self.memory_id = memory_id
        self.current_revision = current_revision


class MemoryNotFound(MemstreamError):
    """A revise, forget or edit of a memory that is not live (never stored, forgotten,
    or expired)."""

    code = "not_found"

    def __init__(self, message: str, memory_id: str) -> None:
        super().__init__(message)
        self.memory_id = memory_id


class QuotaExceeded(MemstreamError):
    """A confirmed store or revise was not applied: it would have taken the tenant past
    its hard quota (memories or storage). The log keeps it: once the quota is raised or
    memories are forgotten, ``memstream tenant reapply`` applies it without publishing
    it again."""

    code = "quota_exceeded"

    def __init__(self, message: str, memory_id: str) -> None:
        super().__init__(message)
        self.memory_id = memory_id


class EventDeadLettered(MemstreamError):
    """A confirmed write could not be applied and went to the dead-letter stream."""

    code = "dead_lettered"
