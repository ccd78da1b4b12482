"""The ``memstream`` command line.

A user's mistake prints one line on stderr and exits with status 2; an outage (NATS not
reachable, the broker failing) prints one line and exits with status 1. Never a traceback.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import datetime as dt
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn, TypeVar

import click
import msgspec
import nats.js.errors
from rich.console import Console
from rich.table import Table

from consumers._runtime import tune_for_throughput
from consumers.auth import TenantCredentials
from consumers.log import configure_logging
from consumers.settings import Settings, load_settings
from producers._connect import connect_nats
from producers.client import GENERATED_IDS, MemoryClient, PublishAck
from schemas.errors import InvalidEvent, MemstreamError
from schemas.events import EVENT_TYPES, Event, KnowledgeStored, utc_now
from schemas.ids import new_id
from schemas.subjects import DLQ_STREAM, EVENT_STREAM

__all__ = ["cli", "main"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

out = Console(highlight=False, soft_wrap=True)
_json = msgspec.json.Encoder()


@click.group(
    name="memstream",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="memstream", prog_name="memstream")
def cli() -> None:
    """memstream: event-sourced shared memory for multi-agent AI systems."""


def nats_url_option(f: F) -> F:
    return click.option(
        "--nats-url",
        default=None,
        help="NATS URL [default: $MEMSTREAM_NATS_URL, else nats://127.0.0.1:4222].",
    )(f)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")(f)


def tenant_agent_options(f: F) -> F:
    f = click.option("--agent", "-a", required=True, help="Agent id.")(f)
    return click.option("--tenant", "-t", required=True, help="Tenant id.")(f)


class UserError(MemstreamError):
    code = "bad_request"


def _settings(*, service: bool = False, **overrides: Any) -> Settings:
    """Settings and logging; a one-shot command logs only warnings and worse."""
    settings = load_settings(**overrides)
    if not (settings.nats_user or settings.nats_creds):
        # On the machine memstream runs on, its commands act as memstream's service user
        # (memstream up --auth keeps it under the data dir).
        identity = TenantCredentials(settings.data_path).service_if_any()
        if identity is not None:
            settings = msgspec.structs.replace(
                settings, nats_user=identity.user, nats_password=identity.password
            )
    tune_for_throughput()
    level = settings.log_level
    if not service and level in ("debug", "info") and "MEMSTREAM_LOG_LEVEL" not in os.environ:
        level = "warning"
    configure_logging(settings.log_format, level)
    return settings


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _print_json(data: Any) -> None:
    sys.stdout.write(_json.encode(data).decode() + "\n")
    sys.stdout.flush()


def _publish(
    settings: Settings, tenant: str, agent: str, build: Callable[[MemoryClient], Event]
) -> PublishAck:
    """Connect as (tenant, agent), publish the event ``build`` makes, return its ack."""

    async def go() -> PublishAck:
        async with await MemoryClient.connect(
            settings.nats_url,
            tenant=tenant,
            agent=agent,
            max_event_bytes=settings.max_event_bytes,
            **settings.nats_auth,
        ) as client:
            return await client.publish(build(client))

    return _run(go())


def _print_ack(ack: PublishAck, as_json: bool, type_: str, **extra: str) -> None:
    if as_json:
        _print_json({**msgspec.structs.asdict(ack), "type": type_, **extra})
        return
    dup = " (duplicate: already stored)" if ack.duplicate else ""
    ids = "".join(f"  {k} {v}" for k, v in extra.items())
    out.print(f"stored {type_} at seq {ack.seq}{dup}  id {ack.id}{ids}")


# --- up -------------------------------------------------------------------------------


def data_dir_option(f: F) -> F:
    return click.option(
        "--data-dir",
        default=None,
        help="memstream's data dir [default: $MEMSTREAM_DATA_DIR, else ./.memstream].",
    )(f)


@cli.command()
@click.option(
    "--data-dir",
    default=None,
    help="Where NATS and the projections keep their data "
    "[default: $MEMSTREAM_DATA_DIR, else ./.memstream].",
)
@click.option(
    "--nats-port",
    type=click.IntRange(0, 65535),
    default=4222,
    show_default=True,
    help="Port of the embedded NATS (0: any free port).",
)
@click.option("--nats-url", default=None, help="Use this NATS instead of starting one.")
@click.option(
    "--auth",
    is_flag=True,
    help="Admit only memstream's service user and the tenants' users "
    "(memstream tenant add), each confined to its own subjects.",
)
@json_option
def up(
    data_dir: str | None, nats_port: int, nats_url: str | None, auth: bool, as_json: bool
) -> None:
    """Run memstream on this machine: embedded NATS with JetStream, both projections
    (history in DuckDB, vectors in Qdrant) and the query worker, in one process."""
    from consumers.app import UpInfo, run_up

    settings = _settings(service=True, data_dir=data_dir, nats_url=nats_url)

    def ready(info: UpInfo) -> None:
        if as_json:
            _print_json(
                {
                    "nats_url": info.nats_url,
                    "data_dir": str(info.data_dir),
                    "embedded": info.embedded,
                    "nats_pid": info.nats_pid,
                    "auth": info.auth,
                    "streams": info.provisioned.streams,
                    "consumers": info.provisioned.consumers,
                    "projections": info.projections,
                }
            )
            return
        out.print("memstream is up")
        out.print(f"  NATS      {info.nats_url}" + ("" if info.embedded else " (external)"))
        out.print(f"  data dir  {info.data_dir}")
        for name, checkpoint in info.projections.items():
            out.print(f"  {name:<9} projecting (applied up to seq {checkpoint})")
        streams = ", ".join(f"{k} ({v})" for k, v in info.provisioned.streams.items())
        out.print(f"  streams   {streams}")
        if info.auth:
            out.print("  auth      on: only memstream and the tenants' users may connect")
            out.print(
                "Give each tenant its credentials with 'memstream tenant add TENANT'; agents "
                f"connect with MEMSTREAM_NATS_URL={info.nats_url} MEMSTREAM_NATS_USER=TENANT "
                "MEMSTREAM_NATS_PASSWORD=... Ctrl-C stops."
            )
        else:
            out.print(f"Connect agents with MEMSTREAM_NATS_URL={info.nats_url}. Ctrl-C stops.")

    _run(
        run_up(
            settings,
            nats_port=nats_port,
            external_nats=nats_url is not None,
            on_ready=ready,
            auth=auth,
        )
    )


@cli.command()
@click.option(
    "--role",
    type=click.Choice(["history", "vectors", "query"]),
    required=True,
    help="What this process runs.",
)
@data_dir_option
@nats_url_option
@json_option
def serve(role: str, data_dir: str | None, nats_url: str | None, as_json: bool) -> None:
    """Run one role against an external NATS, for scale-out.

    history: the DuckDB history, answering history, task, context, conversation, stats and
    analytics. vectors: the vector projection (with Qdrant's local mode it also answers
    search and recall). query: search and recall from a Qdrant server
    (MEMSTREAM_QDRANT_URL). Each role can run in several processes; a role's processes
    share its queries in a queue group.
    """
    from consumers.app import UpInfo, run_up

    settings = _settings(service=True, data_dir=data_dir, nats_url=nats_url)

    def ready(info: UpInfo) -> None:
        if as_json:
            _print_json(
                {
                    "role": role,
                    "nats_url": info.nats_url,
                    "data_dir": str(info.data_dir),
                    "projections": info.projections,
                }
            )
            return
        out.print(f"memstream serve: {role} role up on {info.nats_url}")
        for name, checkpoint in info.projections.items():
            out.print(f"  {name:<9} projecting (applied up to seq {checkpoint})")
        out.print("Ctrl-C stops.")

    _run(run_up(settings, external_nats=True, roles=frozenset({role}), on_ready=ready))


# --- publishing -----------------------------------------------------------------------


@cli.command()
@click.argument("type_", metavar="TYPE")
@tenant_agent_options
@click.option("--data", default="{}", help="The event's own fields as a JSON object.")
@nats_url_option
@json_option
def publish(
    type_: str, tenant: str, agent: str, data: str, nats_url: str | None, as_json: bool
) -> None:
    """Publish one event of TYPE (e.g. task.created); ids and ts are filled in when omitted."""
    if type_ not in EVENT_TYPES:
        raise UserError(
            f"unknown event type {type_!r}: use one of {', '.join(sorted(EVENT_TYPES))}"
        )
    try:
        fields = msgspec.json.decode(data)
    except msgspec.DecodeError as err:
        raise UserError(f"--data is not valid JSON: {err}") from None
    if not isinstance(fields, dict):
        raise UserError("--data must be a JSON object of the event's fields")
    for name, given in (("type", type_), ("tenant", tenant), ("agent", agent)):
        if name in fields and fields[name] != given:
            raise UserError(f"--data has {name} {fields[name]!r} but the command says {given!r}")
    fields.update(type=type_, tenant=tenant, agent=agent)
    fields.setdefault("id", new_id())
    fields.setdefault("ts", utc_now().isoformat())
    generated = GENERATED_IDS.get(type_)
    if generated:
        fields.setdefault(generated, new_id())
    try:
        event = msgspec.convert(fields, EVENT_TYPES[type_])
    except msgspec.ValidationError as err:
        raise InvalidEvent(f"{type_} event does not match the contract: {err}") from None
    settings = _settings(nats_url=nats_url)
    extra = {generated: str(getattr(event, generated))} if generated else {}
    ack = _publish(settings, tenant, agent, lambda _: event)
    _print_ack(ack, as_json, type_, **extra)


@cli.command()
@click.argument("text")
@tenant_agent_options
@click.option("--domain", "-d", required=True, help="Knowledge domain, e.g. python.")
@click.option("--tag", multiple=True, help="A tag (repeatable).")
@click.option("--memory-id", default=None, help="Memory id [default: a new UUIDv7].")
@nats_url_option
@json_option
def remember(
    text: str,
    tenant: str,
    agent: str,
    domain: str,
    tag: tuple[str, ...],
    memory_id: str | None,
    nats_url: str | None,
    as_json: bool,
) -> None:
    """Store TEXT as a piece of knowledge (a knowledge.stored event)."""
    settings = _settings(nats_url=nats_url)
    memory_id = memory_id or new_id()

    def build(client: MemoryClient) -> Event:
        return client.new_event(
            KnowledgeStored, memory_id=memory_id, domain=domain, content=text, tags=tag
        )

    _print_ack(
        _publish(settings, tenant, agent, build), as_json, "knowledge.stored", memory_id=memory_id
    )


# --- status ---------------------------------------------------------------------------


def _version(nc: Any) -> str:
    v = nc.connected_server_version
    return f"{v.major}.{v.minor}.{v.patch}"


async def _status(url: str, settings: Settings) -> dict[str, Any]:
    nc = await connect_nats(url, name="memstream:status", **settings.nats_auth)
    try:
        js = nc.jetstream()
        streams: list[dict[str, Any]] = []
        for name in (EVENT_STREAM, DLQ_STREAM):
            try:
                info = await js.stream_info(name)
            except nats.js.errors.NotFoundError:
                streams.append({"name": name, "exists": False})
                continue
            state = info.state
            entry: dict[str, Any] = {
                "name": name,
                "exists": True,
                "messages": state.messages,
                "bytes": state.bytes,
                "first_seq": state.first_seq,
                "last_seq": state.last_seq,
                "subjects": info.config.subjects,
                "consumers": [],
            }
            for c in await js.consumers_info(name):
                if not c.config.durable_name:
                    continue  # a replay's ephemeral consumer, gone when it finishes
                entry["consumers"].append(
                    {
                        "name": c.name,
                        "pending": c.num_pending,
                        "ack_pending": c.num_ack_pending,
                        "delivered_seq": c.delivered.stream_seq if c.delivered else 0,
                        "acked_seq": c.ack_floor.stream_seq if c.ack_floor else 0,
                    }
                )
            streams.append(entry)
        return {"nats_url": url, "server_version": _version(nc), "streams": streams}
    finally:
        await nc.close()


@cli.command()
@nats_url_option
@json_option
def status(nats_url: str | None, as_json: bool) -> None:
    """Streams with their message counts, and consumers with what they have pending."""
    settings = _settings(nats_url=nats_url)
    report = _run(_status(settings.nats_url, settings))
    if as_json:
        _print_json(report)
        return
    out.print(f"NATS {report['nats_url']} (server {report['server_version']})")
    table = Table("stream", "messages", "bytes", "first seq", "last seq")
    consumers = Table("stream", "consumer", "pending", "ack pending", "acked up to seq")
    for s in report["streams"]:
        if not s["exists"]:
            table.add_row(s["name"], "missing: run 'memstream up'", "", "", "")
            continue
        table.add_row(
            s["name"], str(s["messages"]), str(s["bytes"]), str(s["first_seq"]), str(s["last_seq"])
        )
        for c in s["consumers"]:
            consumers.add_row(
                s["name"], c["name"], str(c["pending"]), str(c["ack_pending"]), str(c["acked_seq"])
            )
    out.print(table)
    if consumers.row_count:
        out.print(consumers)


# --- operating the projections -------------------------------------------------------


def _url_given(nats_url: str | None) -> bool:
    return nats_url is not None or bool(os.environ.get("MEMSTREAM_NATS_URL"))


@cli.command()
@click.argument("projection", type=click.Choice(["history", "vectors"]))
@data_dir_option
@nats_url_option
@json_option
def replay(projection: str, data_dir: str | None, nats_url: str | None, as_json: bool) -> None:
    """Rebuild PROJECTION from the whole stream, then swap it in atomically.

    With memstream up running, the running process rebuilds and keeps answering from the
    old database until the swap; otherwise this command works on the files itself.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from consumers import _ops

    settings = _settings(data_dir=data_dir, nats_url=nats_url)
    progress = Progress(
        TextColumn(f"rebuilding {projection}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>10,.0f} events/s"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=as_json,
        transient=False,
    )
    task = progress.add_task(projection, total=None, rate=0.0)

    def on_progress(p: Any) -> None:
        progress.update(task, completed=p.done, total=p.total, rate=p.rate)

    with progress:
        result = _run(_ops.rebuild(settings, projection, _url_given(nats_url), on_progress))
        progress.update(
            task,
            completed=result.events + result.dead_letters,
            total=result.events + result.dead_letters,
        )
    if as_json:
        _print_json(dataclasses.asdict(result))
        return
    out.print(
        f"rebuilt {projection}: {result.events} events up to seq {result.last_seq} "
        f"in {result.seconds:.1f}s ({result.dead_letters} dead letters skipped); swapped in"
    )


@cli.command(name="sql")
@click.argument("query")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
@click.option("--max-rows", type=click.IntRange(1, 1_000_000), default=10_000, show_default=True)
@data_dir_option
@nats_url_option
def sql_command(
    query: str, fmt: str, max_rows: int, data_dir: str | None, nats_url: str | None
) -> None:
    """Run one read-only SQL QUERY over the history (tables: events, knowledge, tasks, ...)."""
    from consumers import _ops

    settings = _settings(data_dir=data_dir, nats_url=nats_url)
    result = _run(_ops.sql(settings, query, _url_given(nats_url), max_rows))
    _print_rows(result.columns, result.rows, fmt)
    if result.truncated:
        sys.stderr.write(f"memstream: showing the first {max_rows} rows (--max-rows)\n")


def _cell(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def _print_rows(columns: list[str], rows: Sequence[Sequence[Any]], fmt: str) -> None:
    if fmt == "json":
        _print_json([dict(zip(columns, map(_cell, row), strict=True)) for row in rows])
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows([[_cell(v) for v in row] for row in rows])
    else:
        table = Table(*columns)
        for row in rows:
            table.add_row(*("" if v is None else str(_cell(v)) for v in row))
        out.print(table)


@cli.group()
def dlq() -> None:
    """Dead letters: events a projection could not apply, with the reason."""


@dlq.command(name="list")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=1000, show_default=True)
@nats_url_option
@json_option
def dlq_list(limit: int, nats_url: str | None, as_json: bool) -> None:
    """Show each dead letter: its reason, source subject and source sequence."""
    from consumers import _ops

    settings = _settings(nats_url=nats_url)

    async def go() -> list[_ops.DeadLetterInfo]:
        nc = await connect_nats(settings.nats_url, name="memstream:dlq", **settings.nats_auth)
        try:
            return await _ops.list_dead_letters(nc, limit)
        finally:
            await nc.close()

    letters = _run(go())
    if as_json:
        _print_json([dataclasses.asdict(d) for d in letters])
        return
    if not letters:
        out.print("no dead letters")
        return
    _print_rows(
        ["dlq seq", "projection", "source subject", "source seq", "reason"],
        [
            (d.seq, d.subject.split(".")[1], d.source_subject, d.source_seq, d.error)
            for d in letters
        ],
        "table",
    )


@dlq.command(name="retry")
@click.option(
    "--seq",
    "seqs",
    type=int,
    multiple=True,
    help="Retry only this DLQ sequence (repeatable) [default: all].",
)
@nats_url_option
@json_option
def dlq_retry(seqs: tuple[int, ...], nats_url: str | None, as_json: bool) -> None:
    """Publish dead letters again to their source subject (once the cause is fixed)."""
    from consumers import _ops

    settings = _settings(nats_url=nats_url)

    async def go() -> list[tuple[_ops.DeadLetterInfo, int]]:
        nc = await connect_nats(settings.nats_url, name="memstream:dlq", **settings.nats_auth)
        try:
            return await _ops.retry_dead_letters(nc, set(seqs) if seqs else None)
        finally:
            await nc.close()

    done = _run(go())
    if as_json:
        _print_json(
            [
                {"dlq_seq": d.seq, "source_subject": d.source_subject, "new_seq": seq}
                for d, seq in done
            ]
        )
        return
    out.print(f"retried {len(done)} dead letter{'s' if len(done) != 1 else ''}")
    for d, seq in done:
        out.print(f"  dlq seq {d.seq}: {d.source_subject} published again as seq {seq}")


# --- tenants --------------------------------------------------------------------------


@cli.group()
def tenant() -> None:
    """Tenants: their NATS users (with up --auth), and purging one's data."""


def _creds(data_dir: str | None) -> TenantCredentials:
    return TenantCredentials(load_settings(data_dir=data_dir).data_path)


def _reloaded(creds: TenantCredentials) -> str:
    pid = creds.reload_server()
    return (
        f"the running NATS (pid {pid}) reloaded its users"
        if pid
        else "no embedded NATS runs on this data dir: it takes effect at 'memstream up --auth'"
    )


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
        _print_json({"tenant": name, "user": made.user, "password": made.password})
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
        _print_json(names)
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
        raise UserError(f"tenant {name!r} has no NATS user (see 'memstream tenant list')")
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
    from consumers import _ops

    if not yes:
        raise UserError(
            f"purging {name} deletes everything it stored, for good: run again with --yes"
        )
    settings = _settings(data_dir=data_dir, nats_url=nats_url)
    report = _run(_ops.purge_tenant(settings, name, _url_given(nats_url)))
    if as_json:
        _print_json(dataclasses.asdict(report))
        return
    out.print(f"purged tenant {report.tenant}:")
    out.print(f"  stream MEMORY       {report.stream_messages} messages")
    out.print(f"  stream MEMORY_DLQ   {report.dlq_messages} dead letters")
    rows = sum(report.history_rows.values())
    tables = ", ".join(f"{t} {n}" for t, n in sorted(report.history_rows.items()))
    out.print(f"  history (DuckDB)    {rows} rows" + (f" ({tables})" if tables else ""))
    out.print(f"  vectors (Qdrant)    {report.vector_points} points")
    out.print(f"  embedding cache     {report.cached_embeddings} vectors")


# --- the contract ---------------------------------------------------------------------


@cli.command()
def asyncapi() -> None:
    """Print the wire contract (events, queries, replies) as an AsyncAPI 3.0 document."""
    from importlib.metadata import version

    from schemas.asyncapi import asyncapi_document

    sys.stdout.write(
        msgspec.json.format(_json.encode(asyncapi_document(version("memstream")))).decode() + "\n"
    )


# --- demo -----------------------------------------------------------------------------


@cli.command()
@nats_url_option
def demo(nats_url: str | None) -> None:
    """Run a scripted multi-agent session against a running memstream, then show search,
    recall, a task's bundle and analytics over it (tenants acme and globex)."""
    from consumers.demo import run_demo

    settings = _settings(nats_url=nats_url)
    _run(run_demo(settings.nats_url, settings.nats_auth, out))


# --- entry point ----------------------------------------------------------------------


def _fail(message: str, status: int) -> NoReturn:
    sys.stderr.write(f"memstream: error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(status)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run a command, turning errors into one line."""
    try:
        cli.main(args=argv, prog_name="memstream", standalone_mode=False)
    except click.exceptions.Exit as done:
        raise SystemExit(done.exit_code) from None
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except click.UsageError as err:
        _fail(err.format_message().replace("\n", " "), 2)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except MemstreamError as err:
        message = str(err).replace("\n", " ")
        _fail(message, 2 if err.code == "bad_request" else 1)
    except OSError as err:
        _fail(f"{err.strerror or err} ({getattr(err, 'filename', '') or ''})", 1)


# The query commands register themselves on the group.
import consumers.cli_queries  # noqa: E402, F401

if __name__ == "__main__":
    main()
