"""``memstream tenant``: tenants' NATS users and the users within them, a tenant's query
limits and quotas, and purging a tenant's data; ``memstream audit``: a tenant's audit
trail."""

from __future__ import annotations

import datetime as dt

import click
import msgspec

from memstream.consumers.auth import ROLES, TenantCredentials, User
from memstream.consumers.cli._common import (
    connect_operator,
    data_dir_given,
    data_dir_option,
    json_option,
    load,
    nats_url_option,
    out,
    print_json,
    run,
    tenant_option,
    url_given,
)
from memstream.consumers.limits import set_limits
from memstream.consumers.ops import ask_tenant_admin, connect_tenant_user
from memstream.consumers.settings import Settings, load_settings
from memstream.producers.client import MemoryClient
from memstream.projections.quotas import MB
from memstream.schemas.admin import AuditRequest, AuditResult
from memstream.schemas.errors import AdminError, UsageError
from memstream.schemas.events import QuotaReapplied, QuotaSet
from memstream.schemas.ids import validate_tenant
from memstream.schemas.queries import QuotaUsage
from memstream.schemas.subjects import split_nats_user
from memstream.schemas.tenancy import AUDIT_ADMIN, TenantLimits

__all__ = ["audit", "tenant"]


@click.group()
def tenant() -> None:
    """Tenants: their NATS users and roles (with up --auth), query limits, quotas, and
    purging one's data."""


def _creds(data_dir: str | None) -> TenantCredentials:
    return TenantCredentials(load_settings(data_dir=data_dir).data_path)


def _reloaded(creds: TenantCredentials) -> str:
    pid = creds.reload_server()
    if pid is None:
        return "no embedded NATS runs on this data dir: it takes effect at 'memstream up --auth'"
    if not creds.enforced():
        return (
            f"the running NATS (pid {pid}) was started without --auth, so nothing is "
            "enforced: restart it with 'memstream up --auth'"
        )
    return f"the running NATS (pid {pid}) reloaded its users"


@tenant.command(name="add")
@click.argument("name", metavar="TENANT")
@data_dir_option
@json_option
def tenant_add(name: str, data_dir: str | None, as_json: bool) -> None:
    """Create TENANT's NATS user: it may publish only on mem.TENANT.>, request only on
    memq.TENANT.>, and receive only on its own reply inbox. Prints its credentials."""
    creds = _creds(data_dir)
    made = creds.add(name)
    reloaded = _reloaded(creds)
    if as_json:
        print_json({"tenant": name, "user": made.user, "password": made.password})
        return
    out.print(f"tenant {name}: user {made.user}, password {made.password}")
    out.print(f"  ({reloaded})")
    out.print(
        f"Its agents connect with MEMSTREAM_NATS_USER={made.user} "
        f"MEMSTREAM_NATS_PASSWORD={made.password} (or user=/password= in MemoryClient.connect)."
    )


@tenant.command(name="list")
@data_dir_option
@json_option
def tenant_list(data_dir: str | None, as_json: bool) -> None:
    """The tenants that have NATS users."""
    names = sorted(_creds(data_dir).tenants())
    if as_json:
        print_json(names)
        return
    out.print("\n".join(names) if names else "no tenants: add one with 'memstream tenant add'")


@tenant.command(name="remove")
@click.argument("name", metavar="TENANT")
@data_dir_option
def tenant_remove(name: str, data_dir: str | None) -> None:
    """Delete TENANT's NATS user; the server closes its connections. Its data stays
    (see 'memstream tenant purge')."""
    creds = _creds(data_dir)
    if not creds.remove(name):
        raise UsageError(f"tenant {name!r} has no NATS user (see 'memstream tenant list')")
    out.print(f"removed tenant {name}'s user; {_reloaded(creds)}")


@tenant.command(name="purge")
@click.argument("name", metavar="TENANT")
@click.option("--yes", is_flag=True, help="Really delete everything the tenant has stored.")
@data_dir_option
@nats_url_option
@json_option
def tenant_purge(
    name: str, yes: bool, data_dir: str | None, nats_url: str | None, as_json: bool
) -> None:
    """Delete TENANT's messages from MEMORY and MEMORY_DLQ, its rows from every DuckDB
    table, its Qdrant points and its cached embeddings. Cannot be undone."""
    if not yes:
        raise UsageError(
            f"purging {name} deletes everything it stored, for good: run again with --yes"
        )
    settings = load(data_dir=data_dir, nats_url=nats_url)
    from memstream.consumers import ops

    report = run(ops.purge_tenant(settings, name, url_given(nats_url), data_dir_given(data_dir)))
    if as_json:
        print_json(msgspec.structs.asdict(report))
        return
    out.print(
        f"purged tenant {report.tenant} from {', '.join(report.data_dirs)} "
        f"(NATS {report.nats_url}):"
    )
    out.print(f"  stream MEMORY       {report.stream_messages} messages")
    out.print(f"  stream MEMORY_DLQ   {report.dlq_messages} dead letters")
    rows = sum(report.history_rows.values())
    tables = ", ".join(f"{t} {n}" for t, n in sorted(report.history_rows.items()))
    out.print(f"  history (DuckDB)    {rows} rows" + (f" ({tables})" if tables else ""))
    out.print(f"  vectors (Qdrant)    {report.vector_points} points")
    out.print(f"  embedding cache     {report.cached_embeddings} vectors")


# --- users within a tenant ----------------------------------------------------------


@tenant.group(name="user")
def tenant_user() -> None:
    """Users within a tenant, each with a role the NATS server enforces: reader
    (queries, watch, reading locks), writer (+ publishing events, taking locks), admin
    (+ the tenant's own purge and audit)."""


def _print_user(made: User, as_json: bool, reloaded: str) -> None:
    who = made.credentials
    if as_json:
        print_json({"tenant": made.tenant, "user": made.name, "role": made.role,
                    "nats_user": who.user, "password": who.password})  # fmt: skip
        return
    out.print(f"user {made.name} of {made.tenant} ({made.role}): NATS user {who.user}, "
              f"password {who.password}")  # fmt: skip
    out.print(f"  ({reloaded})")
    out.print(
        f"Its agents connect with MEMSTREAM_NATS_USER={who.user} "
        f"MEMSTREAM_NATS_PASSWORD={who.password} (the SDK then receives under its own inbox)."
    )


@tenant_user.command(name="add")
@click.argument("name", metavar="TENANT")
@click.argument("user", metavar="USER")
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the user may do.")
@data_dir_option
@json_option
def user_add(name: str, user: str, role: str, data_dir: str | None, as_json: bool) -> None:
    """Create USER within TENANT with a role; prints its credentials."""
    creds = _creds(data_dir)
    made = creds.add_user(name, user, role)
    _print_user(made, as_json, _reloaded(creds))


@tenant_user.command(name="list")
@click.argument("name", metavar="TENANT")
@data_dir_option
@json_option
def user_list(name: str, data_dir: str | None, as_json: bool) -> None:
    """TENANT's users and their roles."""
    users = _creds(data_dir).users(name)
    rows = [{"user": u.name, "role": u.role, "nats_user": u.credentials.user} for u in users]
    if as_json:
        print_json(rows)
        return
    if not rows:
        out.print(f"tenant {name} has no users: add one with 'memstream tenant user add'")
    for row in rows:
        out.print(f"{row['user']:<24} {row['role']:<8} {row['nats_user']}")


@tenant_user.command(name="rotate")
@click.argument("name", metavar="TENANT")
@click.argument("user", metavar="USER")
@data_dir_option
@json_option
def user_rotate(name: str, user: str, data_dir: str | None, as_json: bool) -> None:
    """Give USER a new password: the running NATS reloads, and the old one stops working."""
    creds = _creds(data_dir)
    made = creds.rotate_user(name, user)
    _print_user(made, as_json, _reloaded(creds))


@tenant_user.command(name="remove")
@click.argument("name", metavar="TENANT")
@click.argument("user", metavar="USER")
@data_dir_option
def user_remove(name: str, user: str, data_dir: str | None) -> None:
    """Delete USER of TENANT; the server closes its connections."""
    creds = _creds(data_dir)
    if not creds.remove_user(name, user):
        raise UsageError(f"tenant {name} has no user {user!r} (see 'memstream tenant user list')")
    out.print(f"removed user {user} of {name}; {_reloaded(creds)}")


# --- query limits ---------------------------------------------------------------------


_QUERIES_PER_HOUR = click.option(
    "--queries-per-hour",
    type=click.IntRange(min=0),
    default=None,
    help="Every query of the tenant, an hour (0: no limit).",
)


@tenant.command(name="limits")
@click.argument("name", metavar="TENANT")
@click.option(
    "--queries-per-second",
    type=click.FloatRange(min=0),
    default=None,
    help="Every query of the tenant, a second (0: no limit).",
)
@click.option(
    "--burst",
    type=click.IntRange(min=1),
    default=None,
    help="Queries that may come at once after a quiet spell [default: a second's].",
)
@click.option(
    "--user-queries-per-second",
    type=click.FloatRange(min=0),
    default=None,
    help="Each user's queries, a second (0: no limit).",
)
@_QUERIES_PER_HOUR
@click.option("--reset", is_flag=True, help="Drop the tenant's own limits: the defaults apply.")
@data_dir_option
@nats_url_option
@json_option
def tenant_limits(
    name: str,
    queries_per_second: float | None,
    burst: int | None,
    user_queries_per_second: float | None,
    queries_per_hour: int | None,
    reset: bool,
    data_dir: str | None,
    nats_url: str | None,
    as_json: bool,
) -> None:
    """Show or set TENANT's query limits. The query workers take a change at once;
    a limit not given keeps its value (or the server's default)."""  # fmt: skip
    validate_tenant(name)
    settings = load(data_dir=data_dir, nats_url=nats_url)
    given = TenantLimits(
        queries_per_second=queries_per_second,
        burst=burst,
        user_queries_per_second=user_queries_per_second,
        queries_per_hour=queries_per_hour,
    )
    own = run(_set_limits(settings, url_given(nats_url), name, given, reset))
    effective = own.over(settings.tenant_limits)
    if as_json:
        print_json({"tenant": name, "own": msgspec.structs.asdict(own),
                    "effective": msgspec.structs.asdict(effective)})  # fmt: skip
        return
    for field in ("queries_per_second", "burst", "user_queries_per_second", "queries_per_hour"):
        value, mine = getattr(effective, field), getattr(own, field)
        shown = "none" if not value else f"{value:g}"
        out.print(f"{field:<24} {shown}{'' if mine is not None else '  (default)'}")


async def _set_limits(
    settings: Settings, nats_url_given: bool, tenant: str, given: TenantLimits, reset: bool
) -> TenantLimits:
    nc = await connect_operator(settings, nats_url_given, "memstream:tenant-limits")
    try:
        return await set_limits(nc, tenant, given, reset=reset, replicas=settings.stream_replicas)
    finally:
        await nc.drain()


# --- quotas ---------------------------------------------------------------------------

# Who the operator's quota events name as their agent.
_OPERATOR_AGENT = "memstream-operator"
# How many refused events one quota.reapplied names (the contract's most).
_REAPPLY_CHUNK = 10_000
# How long a quota command waits for the history to apply its event.
_WAIT_MS = 30_000


@tenant.command(name="quota")
@click.argument("name", metavar="TENANT")
@click.option(
    "--memories",
    type=click.IntRange(min=0),
    default=None,
    help="Live memories the tenant may hold (0: no limit).",
)
@click.option(
    "--storage-mb",
    type=click.FloatRange(min=0),
    default=None,
    help="Megabytes of memory text the tenant may hold (0: no limit).",
)
@_QUERIES_PER_HOUR
@data_dir_option
@nats_url_option
@json_option
def tenant_quota(
    name: str,
    memories: int | None,
    storage_mb: float | None,
    queries_per_hour: int | None,
    data_dir: str | None,
    nats_url: str | None,
    as_json: bool,
) -> None:
    """Show or set TENANT's quotas. A store past a hard limit is not applied (its
    outcome is quota_exceeded; the log keeps it for 'tenant reapply'); past 80% of one
    it is applied with a warning. A limit not given keeps its value: the server's
    default (MEMSTREAM_QUOTA_MEMORIES, MEMSTREAM_QUOTA_STORAGE_MB) until one is set.
    The limits go into the stream, so a replay decides as the live projections did."""
    validate_tenant(name)
    settings = load(data_dir=data_dir, nats_url=nats_url)
    usage, hourly = run(
        _quota(settings, url_given(nats_url), name, memories, storage_mb, queries_per_hour)
    )
    if as_json:
        print_json({"tenant": name, **msgspec.structs.asdict(usage), "queries_per_hour": hourly})
        return
    out.print(f"memories          {usage.memories:,} of {_limit(usage.memories_limit)}")
    storage = f"{usage.storage_bytes / MB:,.1f} MB"
    out.print(f"storage           {storage} of {_limit(usage.storage_limit_bytes, MB, ' MB')}")
    out.print(f"queries an hour   {_limit(hourly)}")
    if usage.warning:
        out.print(usage.warning)


def _limit(value: float, unit: float = 1, suffix: str = "") -> str:
    return "no limit" if not value else f"{value / unit:,.{1 if suffix else 0}f}{suffix}"


async def _quota(
    settings: Settings,
    nats_url_given: bool,
    tenant: str,
    memories: int | None,
    storage_mb: float | None,
    queries_per_hour: int | None,
) -> tuple[QuotaUsage, int]:
    nc = await connect_operator(settings, nats_url_given, "memstream:tenant-quota")
    try:
        client = MemoryClient(nc, tenant=tenant, agent=_OPERATOR_AGENT)
        if memories is not None or storage_mb is not None:
            event = client.new_event(QuotaSet, memories=memories, storage_mb=storage_mb)
            # Confirmed: the history has applied it when the stats below are read.
            ack = await client.publish(event)
            await client.outcome(ack.id, min_seq=ack.seq, wait_ms=_WAIT_MS)
        own = await set_limits(
            nc,
            tenant,
            TenantLimits(queries_per_hour=queries_per_hour),
            replicas=settings.stream_replicas,
        )
        hourly = own.over(settings.tenant_limits).queries_per_hour or 0
        stats = await client.stats(consistency="latest")
        if stats.quota is None:
            raise AdminError("the history does not answer for quotas here", "unavailable")
        return stats.quota, int(hourly)
    finally:
        await nc.drain()


@tenant.command(name="reapply")
@click.argument("name", metavar="TENANT")
@data_dir_option
@nats_url_option
@json_option
def tenant_reapply(name: str, data_dir: str | None, nats_url: str | None, as_json: bool) -> None:
    """Apply TENANT's stores that its quota refused, where the quota now allows them,
    without publishing them again: a quota.reapplied event names them, and both
    projections read them back from the log and decide them again at that point. A
    memory changed since by a later write keeps the later one."""
    validate_tenant(name)
    settings = load(data_dir=data_dir, nats_url=nats_url)
    decided = run(_reapply(settings, url_given(nats_url), data_dir_given(data_dir), name))
    if as_json:
        print_json({"tenant": name, "outcomes": decided})
        return
    if not decided:
        out.print(f"tenant {name} has no store its quota refused")
        return
    applied = decided.get("applied", 0)
    still = decided.get("quota_exceeded", 0)
    total = sum(decided.values())
    line = f"reapplied {applied} of {total} refused stores of {name}"
    if still:
        line += f"; {still} still over the quota (raise it with 'memstream tenant quota')"
    others = {k: v for k, v in decided.items() if k not in ("applied", "quota_exceeded")}
    if others:
        line += "; " + ", ".join(f"{v} {k}" for k, v in sorted(others.items()))
    out.print(line)


async def _reapply(
    settings: Settings, nats_url_given: bool, data_dir_given: bool, tenant: str
) -> dict[str, int]:
    """Name the refused events in quota.reapplied events; what became of them."""
    from memstream.consumers import ops

    # Refused, and their memory not written since (a later store stands).
    refused = await ops.sql(
        settings,
        "SELECT o.seq FROM outcomes o WHERE o.tenant = "
        f"'{tenant}' AND o.outcome = 'quota_exceeded' AND NOT EXISTS ("
        "SELECT 1 FROM outcomes l WHERE l.tenant = o.tenant AND l.memory_id = o.memory_id "
        "AND l.seq > o.seq AND l.outcome = 'applied') ORDER BY o.seq",
        nats_url_given,
        1_000_000,
        data_dir_given,
    )
    seqs = [int(row[0]) for row in refused.rows]
    if not seqs:
        return {}
    nc = await connect_operator(settings, nats_url_given, "memstream:tenant-reapply")
    try:
        client = MemoryClient(nc, tenant=tenant, agent=_OPERATOR_AGENT)
        for start in range(0, len(seqs), _REAPPLY_CHUNK):
            chunk = tuple(seqs[start : start + _REAPPLY_CHUNK])
            ack = await client.publish(client.new_event(QuotaReapplied, seqs=chunk))
            # Applied by the history before its outcomes are read below.
            await client.outcome(ack.id, min_seq=ack.seq, wait_ms=_WAIT_MS)
    finally:
        await nc.drain()
    decided = await ops.sql(
        settings,
        f"SELECT outcome, count(*) FROM outcomes WHERE tenant = '{tenant}' "
        f"AND list_contains({list(seqs)}, seq) GROUP BY outcome",
        nats_url_given,
        100,
        data_dir_given,
    )
    return {str(outcome): int(n) for outcome, n in decided.rows}


# --- audit ----------------------------------------------------------------------------


@click.command(name="audit")
@tenant_option
@click.option(
    "--since",
    default="1h",
    show_default=True,
    help="From when: a time (RFC 3339) or how long ago (30m, 2h, 7d).",
)
@click.option("--until", default=None, help="Up to when (RFC 3339) [default: now].")
@click.option("--user", default=None, help="Only this user's records.")
@click.option("--op", default=None, help="Only this op's records (search, purge...).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=1_000, show_default=True)
@data_dir_option
@nats_url_option
@json_option
def audit(
    tenant: str,
    since: str,
    until: str | None,
    user: str | None,
    op: str | None,
    limit: int,
    data_dir: str | None,
    nats_url: str | None,
    as_json: bool,
) -> None:
    """The tenant's audit trail: every query and admin op, who asked, what came of it.
    An admin user of a tenant (MEMSTREAM_NATS_USER=<user>@<tenant>) reads its own;
    --tenant _admin is the operator's ops about no one tenant (sql, replay)."""
    settings = load(data_dir=data_dir, nats_url=nats_url)
    name = tenant if tenant == AUDIT_ADMIN else validate_tenant(tenant)
    req = AuditRequest(since=_since(since), until=until, user=user, op=op, limit=limit)
    result = run(_read_audit(settings, url_given(nats_url), name, req))
    if as_json:
        print_json([msgspec.structs.asdict(r) for r in result.records])
        return
    if not result.records:
        out.print(f"no audit records of {name} since {req.since}")
    for r in result.records:
        results = "" if r.results is None else f" results={r.results}"
        out.print(f"{r.ts}  {r.kind:<5} {r.op:<12} user={r.user or '-'} agent={r.agent or '-'} "
                  f"{r.outcome}{results} {r.ms:g} ms  {r.digest[:12]}")  # fmt: skip
    if result.truncated:
        out.print(f"(only the first {limit}: narrow with --since/--until, or raise --limit)")


_AGO = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _since(value: str) -> str:
    """An RFC 3339 time, from one or from how long ago (``30m``)."""
    if value[:-1].isdigit() and value[-1:] in _AGO:
        ago = int(value[:-1]) * _AGO[value[-1]]
        when = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=ago)
        return when.isoformat(timespec="seconds").replace("+00:00", "Z")
    try:
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--since {value!r} is neither a time (2026-12-07T08:00:00Z) nor how long ago "
            "(30m, 2h, 7d)"
        ) from None
    return value


async def _read_audit(
    settings: Settings, nats_url_given: bool, tenant: str, req: AuditRequest
) -> AuditResult:
    if split_nats_user(settings.nats_user) is not None:
        nc = await connect_tenant_user(settings, "memstream:audit")
    else:
        nc = await connect_operator(settings, nats_url_given, "memstream:audit")
    try:
        return await ask_tenant_admin(nc, "audit", tenant, req, AuditResult)
    finally:
        await nc.drain()
