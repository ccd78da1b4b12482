"""Identifier rules of the wire contract, and the UUIDv7 generator the SDK uses."""

from __future__ import annotations

import os
import re
import time
import uuid
from typing import Annotated

import msgspec

from memstream.schemas.errors import InvalidId, InvalidTenant

__all__ = [
    "TENANT_PATTERN",
    "AgentId",
    "EventId",
    "RefId",
    "Tenant",
    "new_id",
    "validate_agent",
    "validate_ref_id",
    "validate_tenant",
]

TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
# \Z, not $: "$" also matches before a trailing newline, which must not pass.
_TENANT = r"\A[a-z0-9][a-z0-9_-]{0,62}\Z"
# No control characters: these strings end up in logs, tables and terminals.
_PRINTABLE = r"\A[^\x00-\x1f\x7f]+\Z"

Tenant = Annotated[str, msgspec.Meta(pattern=_TENANT)]
AgentId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=_PRINTABLE)]
EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=_PRINTABLE)]
RefId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=_PRINTABLE)]
"""memory_id, task_id, interaction_id, session_id, flow_id, run_id, key."""

_tenant_re = re.compile(_TENANT)
_printable_re = re.compile(_PRINTABLE)


def validate_tenant(tenant: object) -> str:
    """Return ``tenant`` if it is a valid tenant id, else raise InvalidTenant."""
    if not isinstance(tenant, str) or not _tenant_re.match(tenant):
        raise InvalidTenant(tenant)
    return tenant


def _validate_text_id(field: str, value: object, limit: int) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= limit or not _printable_re.match(value):
        raise InvalidId(field, value, limit)
    return value


def validate_agent(agent: object) -> str:
    return _validate_text_id("agent", agent, 128)


def validate_ref_id(field: str, value: object) -> str:
    return _validate_text_id(field, value, 128)


def new_id() -> str:
    """A UUIDv7 (RFC 9562): time-ordered, so ids sort roughly by creation time."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b
    return str(uuid.UUID(int=value))
