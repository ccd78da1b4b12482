"""Operating memstream: ``status``, ``replay``, ``sql``, ``dlq`` and ``asyncapi``."""

from __future__ import annotations

import os
import sys
from typing import Any

import click
import msgspec
import nats.js.errors
from rich.console import Console
from rich.table import Table

from memstream.consumers.cli._common import (
    connect_operator,
    data_dir_given,
    data_dir_option,
    json_option,
    load,
    nats_url_option,
    out,
    print_json,
    print_rows,
    run,
    url_given,
)
from memstream.consumers.settings import Settings
from memstream.schemas.admin import ReplayProgress
from memstream.schemas.dead_letters import DeadLetterInfo
from memstream.schemas.errors import UsageError
from memstream.schemas.subjects import DLQ_STREAM, EVENT_STREAM

__all__ = ["asyncapi", "dlq", "replay", "sql_command", "status"]

_json = msgspec.json.Encoder()


def _version(nc: Any) -> str:
    v = nc.connected_server_version
    return f"{v.major}.{v.minor}.{v.patch}"


async def _status(settings: Settings, nats_url_given: bool) -> dict[str, Any]:
    nc = await connect_operator(settings, nats_url_given, "memstream:status")
    url = nc.connected_url.geturl() if nc.connected_url else settings.nats_url
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
        from memstream.consumers.ops import ping_all

        workers = [
            {
                "data_dir": p.data_dir,
                "deployment": p.deployment,
                "roles": p.roles,
                "partition": p.partition,
                "partitions": p.partitions,
                "applied_seq": p.projections,
                "lag": p.pending,
                "ready": not p.not_ready,
                "not_ready": p.not_ready,
                "engine": msgspec.to_builtins(p.engine) if p.engine is not None else None,
            }
            for p in await ping_all(nc)
        ]
        return {
            "nats_url": url,
            "server_version": _version(nc),
            "streams": streams,
            "workers": sorted(workers, key=lambda w: (w["partition"], w["data_dir"])),
        }
    finally:
        await nc.close()


@click.command()
@data_dir_option
@nats_url_option
@json_option
def status(data_dir: str | None, nats_url: str | None, as_json: bool) -> None:
    """The workers answering on the NATS and whether each is ready, the streams with
    their message counts, and the consumers with what they have pending. Exits 1 when
    no worker answers or one is not ready."""
    settings = load(data_dir=data_dir, nats_url=nats_url)
    report = run(_status(settings, url_given(nats_url)))
    workers = report["workers"]
    healthy = bool(workers) and all(w["ready"] for w in workers)
    if as_json:
        print_json(report)
        if not healthy:
            raise SystemExit(1)
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
    if not workers:
        out.print("workers: none answers: start memstream with 'memstream up'")
        raise SystemExit(1)
    for w in workers:
        where = f" partition {w['partition']} of {w['partitions']}" if w["partitions"] > 1 else ""
        roles = "+".join(w["roles"]) or "admin"
        state = "ready" if w["ready"] else "NOT READY: " + "; ".join(w["not_ready"])
        out.print(f"worker {w['data_dir']} ({roles}{where}): {state}")
        engine = w["engine"]
        if engine is not None and engine["up"]:
            out.print(
                f"  vector engine: process {engine['pid']}, {engine['rss_bytes'] >> 20} MB "
                f"resident, {engine['searches']:,} searches, "
                f"{engine['write_calls']:,} write calls, "
                f"waiting {engine['reads_waiting']} reads / {engine['writes_waiting']} writes, "
                f"restarted {engine['restarts']} times"
            )
        elif engine is not None:
            out.print(f"  vector engine: NOT ANSWERING ({engine['error']})")
    if not healthy:
        raise SystemExit(1)


@click.command()
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

    from memstream.consumers import ops

    settings = load(data_dir=data_dir, nats_url=nats_url)
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

    def on_progress(p: ReplayProgress) -> None:
        progress.update(task, completed=p.done, total=p.total, rate=p.rate)

    with progress:
        result = run(
            ops.rebuild(
                settings, projection, url_given(nats_url), on_progress, data_dir_given(data_dir)
            )
        )
        progress.update(
            task,
            completed=result.events + result.dead_letters,
            total=result.events + result.dead_letters,
        )
    if as_json:
        print_json(msgspec.structs.asdict(result))
        return
    out.print(
        f"rebuilt {projection} of {result.data_dir} (NATS {result.nats_url}): "
        f"{result.events} events up to seq {result.last_seq} "
        f"in {result.seconds:.1f}s ({result.dead_letters} dead letters skipped); swapped in"
    )


@click.command(name="sql")
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
@click.option(
    "--all-partitions",
    is_flag=True,
    help="Run it on every partition of the deployment at --nats-url, through one worker "
    "of each, and merge the rows (a first column names the partition).",
)
@data_dir_option
@nats_url_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the same as --format json).")
def sql_command(
    query: str,
    fmt: str,
    max_rows: int,
    all_partitions: bool,
    data_dir: str | None,
    nats_url: str | None,
    as_json: bool,
) -> None:
    """Run one read-only SQL QUERY over the history (tables: events, knowledge, tasks, ...):
    of the deployment at --data-dir (one partition's, for a partition's data dir), or of
    every partition with --all-partitions."""
    from memstream.consumers import ops

    settings = load(data_dir=data_dir, nats_url=nats_url)
    if all_partitions:
        if not url_given(nats_url) and not os.environ.get("MEMSTREAM_NATS_URL"):
            raise UsageError("--all-partitions needs the deployment's NATS: give --nats-url")
        result = run(ops.sql_all(settings, query, max_rows))
    else:
        result = run(
            ops.sql(settings, query, url_given(nats_url), max_rows, data_dir_given(data_dir))
        )
    print_rows(result.columns, result.rows, "json" if as_json else fmt)
    if result.truncated:
        sys.stderr.write(f"memstream: showing the first {max_rows} rows (--max-rows)\n")


@click.group()
def dlq() -> None:
    """Dead letters: events a projection could not apply, with the reason."""


@dlq.command(name="list")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=1000, show_default=True)
@data_dir_option
@nats_url_option
@json_option
def dlq_list(limit: int, data_dir: str | None, nats_url: str | None, as_json: bool) -> None:
    """Show each dead letter: its reason, source subject and source sequence."""
    settings = load(data_dir=data_dir, nats_url=nats_url)

    async def go() -> list[DeadLetterInfo]:
        nc = await connect_operator(settings, url_given(nats_url), "memstream:dlq")
        try:
            from memstream.consumers.dead_letters import list_dead_letters

            return await list_dead_letters(nc, limit)
        finally:
            await nc.close()

    letters = run(go())
    if as_json:
        print_json([msgspec.structs.asdict(d) for d in letters])
        return
    if not letters:
        out.print("no dead letters")
        return
    print_rows(
        ["dlq seq", "projection", "source subject", "source seq", "reason"],
        [(d.seq, d.projection, d.source_subject, d.source_seq, d.error) for d in letters],
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
@data_dir_option
@nats_url_option
@json_option
def dlq_retry(
    seqs: tuple[int, ...], data_dir: str | None, nats_url: str | None, as_json: bool
) -> None:
    """Publish dead letters again to their source subject (once the cause is fixed), each
    for the projection that dead-lettered it alone."""
    settings = load(data_dir=data_dir, nats_url=nats_url)

    async def go() -> list[tuple[DeadLetterInfo, int]]:
        nc = await connect_operator(settings, url_given(nats_url), "memstream:dlq")
        try:
            from memstream.consumers.dead_letters import retry_dead_letters

            return await retry_dead_letters(nc, set(seqs) if seqs else None)
        finally:
            await nc.close()

    done = run(go())
    if as_json:
        print_json(
            [
                {
                    "dlq_seq": d.seq,
                    "projection": d.projection,
                    "source_subject": d.source_subject,
                    "new_seq": seq,
                }
                for d, seq in done
            ]
        )
        return
    out.print(f"retried {len(done)} dead letter{'s' if len(done) != 1 else ''}")
    for d, seq in done:
        out.print(
            f"  dlq seq {d.seq}: {d.source_subject} published again as seq {seq}, "
            f"for the {d.projection} projection"
        )


@click.command()
def asyncapi() -> None:
    """Print the wire contract (events, queries, replies) as an AsyncAPI 3.0 document."""
    from importlib.metadata import version

    from memstream.schemas.asyncapi import asyncapi_document

    sys.stdout.write(
        msgspec.json.format(_json.encode(asyncapi_document(version("memstream")))).decode() + "\n"
    )
