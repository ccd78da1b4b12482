"""``memstream tenant``: tenants' NATS users, and purging a tenant's data."""

from __future__ import annotations

import click
import msgspec

from memstream.consumers.auth import TenantCredentials
from memstream.consumers.cli._common import (
    data_dir_given,
    data_dir_option,
    json_option,
    load,
    nats_url_option,
    out,
    print_json,
    run,
    url_given,
)
from memstream.consumers.settings import load_settings
from memstream.schemas.errors import UsageError

__all__ = ["tenant"]


@click.group()
def tenant() -> None:
    """Tenants: their NATS users (with up --auth), and purging one's data."""


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
