"""A tenant's limits (the KV bucket ``MEMTENANT``) and its audit records
(``memaudit.<tenant>`` in the stream ``MEMORY_AUDIT``).

Limits are the query worker's: how many queries a second a tenant, and each of its users,
may ask, and how many an hour. A value left out takes the server's default
(``MEMSTREAM_QUERIES_PER_SECOND``, ``MEMSTREAM_USER_QUERIES_PER_SECOND``,
``MEMSTREAM_QUERIES_PER_HOUR``); 0 means no limit.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

__all__ = [
    "AGENT_HEADER",
    "AUDIT_ADMIN",
    "LIMITS_BUCKET",
    "AuditRecord",
    "TenantLimits",
]

# The KV bucket of the tenants' limits; a key is a tenant id.
LIMITS_BUCKET: Final = "MEMTENANT"
# The header a query carries its agent in (the SDK sets it), for the audit.
AGENT_HEADER: Final = "Memstream-Agent"
# The audit subject's token for admin ops about no one tenant (sql, replay).
AUDIT_ADMIN: Final = "_admin"

Rate = Annotated[float, msgspec.Meta(ge=0)]


class TenantLimits(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A tenant's query limits; None takes the server's default, 0 is no limit."""

    # Every query of the tenant, all its users together, a second.
    queries_per_second: Rate | None = None
    # How many queries may come at once after a quiet spell (default: a second's worth).
    burst: Annotated[int, msgspec.Meta(ge=1)] | None = None
    # Each user's (the tenant's own user included), a second.
    user_queries_per_second: Rate | None = None
    # Every query of the tenant, an hour.
    queries_per_hour: Annotated[int, msgspec.Meta(ge=0)] | None = None

    def over(self, defaults: TenantLimits) -> TenantLimits:
        """These limits, with what they leave out taken from ``defaults``."""
        fields = msgspec.structs.asdict(defaults)
        fields.update({k: v for k, v in msgspec.structs.asdict(self).items() if v is not None})
        return TenantLimits(**fields)


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One query or admin operation, as the worker that answered it saw it."""

    ts: str  # RFC 3339, UTC, when it was answered
    tenant: str  # the tenant asked about; "_admin" for an op about no one tenant
    user: str  # who asked: a user within the tenant, the tenant's own user, or ""
    agent: str  # the agent the SDK said it is (Memstream-Agent), or ""
    kind: Literal["query", "admin"]
    op: str
    digest: str  # sha-256 of the request's body, hex, first 32 characters
    results: int | None  # hits, events, memories... in the answer; None when not a list
    ms: float  # from arrival to the reply
    outcome: str  # "ok", or the reply's error code
