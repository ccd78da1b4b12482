"""Operator requests (``memadm.<op>``) and their typed replies.

Requests reject unknown fields. Replies use the contract's envelope
(:mod:`schemas.replies`); :func:`decode_admin_reply` turns anything else into one
:class:`AdminError` line rather than a traceback.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec

from memstream.schemas.errors import AdminError, QueryError
from memstream.schemas.ids import Tenant
from memstream.schemas.replies import ErrorBody, TypedReply
from memstream.schemas.tenancy import AuditRecord

__all__ = [
    "ADMIN_OPS",
    "TENANT_ADMIN_OPS",
    "AdminRequest",
    "AuditRequest",
    "AuditResult",
    "EngineInfo",
    "PingRequest",
    "PingResult",
    "PurgeReport",
    "PurgeRequest",
    "PurgeResult",
    "RebuildResult",
    "ReplayAccepted",
    "ReplayProgress",
    "ReplayRequest",
    "ReplayUpdate",
    "SqlRequest",
    "SqlResult",
    "decode_admin_reply",
    "decode_admin_request",
]

R = TypeVar("R")


class AdminRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Fields every admin request accepts."""

    # The deployment (the id in its data dir's deployment.json) the request is meant
    # for: a responder of another deployment refuses it. None: any on this NATS.
    deployment: str | None = None


class PingRequest(AdminRequest, frozen=True):
    pass


class EngineInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The vector engine's own process (Qdrant Edge), where the answering process runs
    one: whether it answers, its pid, its resident memory, its calls, and what waits."""

    up: bool
    pid: int | None = None
    restarts: int = 0
    rss_bytes: int = 0
    searches: int = 0
    write_calls: int = 0
    reads_waiting: int = 0
    writes_waiting: int = 0
    # The longest a search waited for the engine (behind one write call at most).
    search_wait_max_ms: float = 0.0
    error: str | None = None


class PingResult(msgspec.Struct, frozen=True, kw_only=True):
    # Projection name -> the stream sequence it has applied, in the answering process.
    projections: dict[str, int]
    # Where the answering process runs: its deployment id and data dir.
    deployment: str = ""
    data_dir: str = ""
    # The partition it serves, of how many (0 of 1: every tenant); its roles; and per
    # projection, the events of its partition not yet applied.
    partition: int = 0
    partitions: int = 1
    roles: list[str] = []
    pending: dict[str, int] = {}
    # Why it is not ready for work (see /readyz); empty when it is.
    not_ready: list[str] = []
    # Its vector engine's process, if it runs one.
    engine: EngineInfo | None = None


class SqlRequest(AdminRequest, frozen=True):
    sql: Annotated[str, msgspec.Meta(min_length=1, max_length=100_000)]
    max_rows: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000


class SqlResult(msgspec.Struct, frozen=True, kw_only=True):
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool


class ReplayRequest(AdminRequest, frozen=True):
    projection: Literal["history", "vectors"]
    # The inbox that receives ReplayUpdate messages while the rebuild runs.
    progress: str | None = None


class ReplayAccepted(msgspec.Struct, frozen=True, kw_only=True):
    accepted: str


class ReplayProgress(msgspec.Struct, frozen=True, kw_only=True):
    done: int
    total: int
    last_seq: int
    rate: float


class RebuildResult(msgspec.Struct, frozen=True, kw_only=True):
    events: int
    dead_letters: int
    last_seq: int
    seconds: float
    # Where: the data dir whose projection was rebuilt, and the NATS it read.
    data_dir: str = ""
    nats_url: str = ""


class ReplayUpdate(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One message on a rebuild's progress inbox: exactly one field is set."""

    progress: ReplayProgress | None = None
    done: RebuildResult | None = None
    error: ErrorBody | None = None


class PurgeRequest(AdminRequest, frozen=True):
    tenant: Tenant


class PurgeReport(msgspec.Struct, kw_only=True):
    """What a tenant purge removed, where."""

    tenant: str
    stream_messages: int = 0
    dlq_messages: int = 0
    history_rows: dict[str, int] = {}
    vector_points: int = 0
    cached_embeddings: int = 0
    # Where: the data dirs whose projections were purged, and the NATS of the stream.
    data_dirs: list[str] = []
    nats_url: str = ""

    def record(self, projection: str, removed: dict[str, int]) -> None:
        """What a projection's ``purge_tenant`` says it removed."""
        if projection == "history":
            self.history_rows = dict(removed)
        else:
            self.vector_points = removed["points"]
            self.cached_embeddings = removed["cached_embeddings"]

    def merge(self, other: PurgeReport) -> None:
        """Add another process's report (each purges the projections it runs)."""
        self.stream_messages = max(self.stream_messages, other.stream_messages)
        self.dlq_messages = max(self.dlq_messages, other.dlq_messages)
        rows = dict(self.history_rows)
        for table, n in other.history_rows.items():
            rows[table] = rows.get(table, 0) + n
        self.history_rows = rows
        self.vector_points += other.vector_points
        self.cached_embeddings += other.cached_embeddings
        self.data_dirs = sorted({*self.data_dirs, *other.data_dirs})


class PurgeResult(msgspec.Struct, frozen=True, kw_only=True):
    report: PurgeReport
    # The projections the answering process purged.
    projections: list[str]


class AuditRequest(AdminRequest, frozen=True):
    """``memadm.audit.<tenant>``: the tenant's records, oldest first."""

    since: str | None = None  # RFC 3339; default: the last hour
    until: str | None = None
    user: str | None = None
    op: str | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1_000


class AuditResult(msgspec.Struct, frozen=True, kw_only=True):
    records: list[AuditRecord]
    # More matched than the limit let through.
    truncated: bool = False


ADMIN_OPS: Final[dict[str, type[AdminRequest]]] = {
    "ping": PingRequest,
    "sql": SqlRequest,
    "replay": ReplayRequest,
    "purge": PurgeRequest,
    "audit": AuditRequest,
}
# The ops an admin user of a tenant may ask about its own tenant, on memadm.<op>.<tenant>.
TENANT_ADMIN_OPS: Final = ("purge", "audit")
_request_decoders = {op: msgspec.json.Decoder(cls) for op, cls in ADMIN_OPS.items()}
_reply_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def decode_admin_request(op: str, body: bytes) -> AdminRequest:
    """Decode the body of ``memadm.<op>``; raises QueryError('bad_request', ...)."""
    decoder = _request_decoders.get(op)
    if decoder is None:
        raise QueryError("bad_request", f"unknown admin op {op!r}")
    try:
        request: AdminRequest = decoder.decode(body or b"{}")
    except msgspec.DecodeError as err:
        raise QueryError("bad_request", f"{op} request: {err}") from None
    return request


def decode_admin_reply(what: str, body: bytes, result: type[R]) -> R:
    """The result of a reply (or a ReplayUpdate) of type ``result``; raises AdminError
    with the reply's own message, or naming what was malformed."""
    decoder = _reply_decoders.get(result)
    if decoder is None:
        decoder = _reply_decoders[result] = msgspec.json.Decoder(TypedReply[result])  # type: ignore[valid-type]
    try:
        reply = decoder.decode(body)
    except msgspec.DecodeError as err:
        raise AdminError(
            f"the reply to {what} is not what this version of memstream expects ({err}): "
            "are the CLI and the running memstream the same version?",
            "internal",
        ) from None
    if reply.error is not None:
        raise AdminError(reply.error.message, reply.error.code)
    if reply.result is None:
        raise AdminError(f"the reply to {what} carries no result", "internal")
    found: R = reply.result
    return found
