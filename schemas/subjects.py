"""NATS subjects and stream names of the wire contract: builders and parsers."""

from __future__ import annotations

import re
from typing import NamedTuple

from memstream.schemas.errors import InvalidSubject, InvalidTenant
from memstream.schemas.ids import validate_tenant

__all__ = [
    "ADMIN_PREFIX",
    "DLQ_PREFIX",
    "DLQ_STREAM",
    "EVENT_PREFIX",
    "EVENT_STREAM",
    "LOCK_BUCKET",
    "QUERY_PREFIX",
    "EventSubject",
    "QuerySubject",
    "admin_subject",
    "dlq_subject",
    "durable_name",
    "event_subject",
    "lock_key",
    "parse_event_subject",
    "parse_query_subject",
    "published_subject",
    "query_subject",
    "reply_inbox_prefix",
    "tenant_event_filter",
]

EVENT_PREFIX = "mem"
QUERY_PREFIX = "memq"
ADMIN_PREFIX = "memadm"
DLQ_PREFIX = "memdlq"
EVENT_STREAM = "MEMORY"
DLQ_STREAM = "MEMORY_DLQ"
# The JetStream key-value bucket of the locks; a lock's key is <tenant>.<name>.
LOCK_BUCKET = "MEMLOCK"
_LOCK_NAME = re.compile(r"\A[A-Za-z0-9_=-]+(\.[A-Za-z0-9_=-]+)*\Z")


class EventSubject(NamedTuple):
    tenant: str
    type: str
    # The tenant's slot, as the stream stamped it (``schemas.partitions``); None on an
    # event stored before the stream stamped slots.
    slot: int | None = None


class QuerySubject(NamedTuple):
    tenant: str
    op: str
    slot: int | None = None


# Slots are 0..63 (``schemas.partitions.SLOTS``), written in decimal.
_SLOT = re.compile(r"\A(0|[1-9][0-9]?)\Z")


def _slot(token: str, subject: str, kind: str, expected: str) -> int:
    if not _SLOT.match(token) or int(token) >= 64:
        raise InvalidSubject(
            f"subject {subject!r} is not {kind} subject: expected '{expected}' "
            f"(its last token {token!r} is not a slot)"
        )
    return int(token)


def _check_token(kind: str, token: str) -> str:
    # A token must be one NATS subject token: no separators, wildcards or whitespace.
    if not token or any(c in token for c in ".*> \t\r\n") or not token.isprintable():
        raise InvalidSubject(f"{kind} {token!r} is not a valid subject token")
    return token


def event_subject(tenant: str, type: str) -> str:
    """``mem.<tenant>.<family>.<name>`` for an event type ``<family>.<name>``."""
    validate_tenant(tenant)
    family, sep, name = type.partition(".")
    if not sep:
        raise InvalidSubject(f"event type {type!r} must be '<family>.<name>'")
    _check_token("event family", family)
    _check_token("event name", name)
    return f"{EVENT_PREFIX}.{tenant}.{type}"


def tenant_event_filter(tenant: str) -> str:
    """The subject filter matching every event of one tenant."""
    return f"{EVENT_PREFIX}.{validate_tenant(tenant)}.>"


def parse_event_subject(subject: str) -> EventSubject:
    """An event's subject as published, or as stored with its slot after it."""
    parts = subject.split(".")
    if len(parts) not in (4, 5) or parts[0] != EVENT_PREFIX:
        raise InvalidSubject(
            f"subject {subject!r} is not an event subject: expected "
            f"'{EVENT_PREFIX}.<tenant>.<family>.<name>'"
        )
    tenant = validate_tenant(parts[1])
    slot = (
        _slot(parts[4], subject, "an event", f"{EVENT_PREFIX}.<tenant>.<family>.<name>")
        if len(parts) == 5
        else None
    )
    return EventSubject(tenant, f"{parts[2]}.{parts[3]}", slot)


def published_subject(subject: str) -> str:
    """An event's subject as its publisher gave it: the stored one without its slot."""
    parts = subject.split(".")
    if len(parts) == 5 and parts[0] == EVENT_PREFIX and _SLOT.match(parts[4]):
        return ".".join(parts[:4])
    return subject


def query_subject(tenant: str, op: str) -> str:
    validate_tenant(tenant)
    return f"{QUERY_PREFIX}.{tenant}.{_check_token('query op', op)}"


def parse_query_subject(subject: str) -> QuerySubject:
    """A query's subject as requested, or as the server's mapping delivers it, with the
    tenant's slot after it."""
    parts = subject.split(".")
    if len(parts) not in (3, 4) or parts[0] != QUERY_PREFIX:
        raise InvalidSubject(
            f"subject {subject!r} is not a query subject: expected '{QUERY_PREFIX}.<tenant>.<op>'"
        )
    slot = (
        _slot(parts[3], subject, "a query", f"{QUERY_PREFIX}.<tenant>.<op>")
        if len(parts) == 4
        else None
    )
    return QuerySubject(validate_tenant(parts[1]), parts[2], slot)


def reply_inbox_prefix(tenant: str) -> str:
    """The reply inbox prefix of a tenant's connections: with ``up --auth`` a tenant may
    subscribe under it and nowhere else, so no tenant can read another's replies."""
    return f"_INBOX_{validate_tenant(tenant)}"


def admin_subject(op: str) -> str:
    return f"{ADMIN_PREFIX}.{_check_token('admin op', op)}"


def dlq_subject(projection: str, tenant: str) -> str:
    """``memdlq.<projection>.<tenant>``; an unreadable tenant token files under ``_invalid``."""
    _check_token("projection", projection)
    try:
        validate_tenant(tenant)
    except InvalidTenant:
        tenant = "_invalid"
    return f"{DLQ_PREFIX}.{projection}.{tenant}"


def durable_name(projection: str, instance: str) -> str:
    """``<projection>-<instance>``: each projection instance (a data dir's deployment id)
    consumes its own durable consumer, so a second instance is a replica with every
    event, never a second reader splitting one consumer's messages."""
    _check_token("projection", projection)
    return f"{projection}-{_check_token('instance', instance.replace('-', '')[:16])}"


def lock_key(tenant: str, name: str) -> str:
    """The KV key of ``tenant``'s lock ``name``: ``<tenant>.<name>``."""
    validate_tenant(tenant)
    if not 1 <= len(name) <= 128 or not _LOCK_NAME.match(name):
        raise InvalidSubject(
            f"lock name {name!r} is not valid: use 1 to 128 letters, digits, '_', '-' or "
            "'=', in parts separated by single dots"
        )
    return f"{tenant}.{name}"
