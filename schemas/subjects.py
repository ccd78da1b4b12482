"""NATS subjects and stream names of the wire contract: builders and parsers."""

from __future__ import annotations

import re
from typing import NamedTuple

from memstream.schemas.errors import InvalidSubject, InvalidTenant
from memstream.schemas.ids import validate_tenant

__all__ = [
    "ADMIN_PREFIX",
    "AUDIT_PREFIX",
    "AUDIT_STREAM",
    "DLQ_PREFIX",
    "DLQ_STREAM",
    "EVENT_PREFIX",
    "EVENT_STREAM",
    "LOCK_BUCKET",
    "QUERY_PREFIX",
    "EventSubject",
    "QuerySubject",
    "admin_subject",
    "asker",
    "audit_subject",
    "dlq_subject",
    "durable_name",
    "event_subject",
    "lock_key",
    "nats_user",
    "parse_event_subject",
    "parse_query_subject",
    "published_subject",
    "query_subject",
    "reply_inbox_prefix",
    "split_nats_user",
    "tenant_admin_subject",
    "tenant_event_filter",
    "user_name",
]

EVENT_PREFIX = "mem"
QUERY_PREFIX = "memq"
ADMIN_PREFIX = "memadm"
DLQ_PREFIX = "memdlq"
AUDIT_PREFIX = "memaudit"
EVENT_STREAM = "MEMORY"
DLQ_STREAM = "MEMORY_DLQ"
AUDIT_STREAM = "MEMORY_AUDIT"
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


# A user's reply inbox is ``_INBOX_<tenant>.u.<user>``: the token after the tenant's
# prefix is never "u" for the tenant's own user, whose inboxes are ``_INBOX_<tenant>.<nuid>``
# (a nuid is 22 characters).
_USER_INBOX = "u"
_USER = re.compile(r"\A[a-z0-9][a-z0-9_-]{0,62}\Z")


def user_name(user: str) -> str:
    """``user`` if it is a valid name for a user within a tenant (the tenant id's
    rules), else raise InvalidSubject."""
    if not isinstance(user, str) or not _USER.match(user):
        raise InvalidSubject(
            f"user name {user!r} is not valid: use 1 to 63 lowercase letters, digits, "
            "'_' or '-', starting with a letter or digit"
        )
    return user


def nats_user(tenant: str, user: str) -> str:
    """The NATS user name of ``user`` within ``tenant``: ``<user>@<tenant>``."""
    return f"{user_name(user)}@{validate_tenant(tenant)}"


def split_nats_user(name: str | None) -> tuple[str, str] | None:
    """(tenant, user) of a NATS user name ``<user>@<tenant>``; None for any other name."""
    if not name or name.count("@") != 1:
        return None
    user, _, tenant = name.partition("@")
    if not _USER.match(user) or not _USER.match(tenant):
        return None
    return tenant, user


def reply_inbox_prefix(tenant: str, user: str | None = None) -> str:
    """The reply inbox prefix of a tenant's connections: with ``up --auth`` a tenant may
    subscribe under it and nowhere else, so no tenant can read another's replies. A user
    within the tenant (``memstream tenant user add``) has its own, under the tenant's, and
    may subscribe under that one only."""
    prefix = f"_INBOX_{validate_tenant(tenant)}"
    return prefix if user is None else f"{prefix}.{_USER_INBOX}.{user_name(user)}"


def asker(tenant: str, reply: str) -> str:
    """Who asked a query of ``tenant``, told by its reply subject: a user's name, the
    tenant id for the tenant's own user, or "" for a reply outside the tenant's inbox
    (a connection without the SDK's inbox prefix, possible only without ``--auth``).

    With ``--auth`` the server lets a user receive only under its own inbox, so a request
    that names another user's inbox gets its asker no answer."""
    prefix = f"_INBOX_{tenant}."
    if not reply.startswith(prefix):
        return ""
    parts = reply[len(prefix) :].split(".", 2)
    if len(parts) >= 2 and parts[0] == _USER_INBOX and _USER.match(parts[1]):
        return parts[1]
    return tenant


def admin_subject(op: str) -> str:
    return f"{ADMIN_PREFIX}.{_check_token('admin op', op)}"


def tenant_admin_subject(op: str, tenant: str) -> str:
    """``memadm.<op>.<tenant>``: an admin op about one tenant, which that tenant's admin
    users may request (the server's permissions allow them ``memadm.*.<tenant>``)."""
    return f"{ADMIN_PREFIX}.{_check_token('admin op', op)}.{validate_tenant(tenant)}"


def audit_subject(tenant: str) -> str:
    """``memaudit.<tenant>``: the tenant's audit records (stream ``MEMORY_AUDIT``)."""
    return f"{AUDIT_PREFIX}.{validate_tenant(tenant)}"


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
