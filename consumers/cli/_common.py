"""What every command group of the CLI shares: options, settings, output, publishing."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import click
import msgspec
from nats.aio.client import Client as NatsClient
from rich.console import Console
from rich.table import Column, Table

from memstream.consumers._runtime import tune_for_throughput
from memstream.consumers.auth import TenantCredentials
from memstream.consumers.deployment import running
from memstream.consumers.log import configure_logging
from memstream.consumers.settings import Settings, load_settings
from memstream.producers._events import PublishAck
from memstream.producers.client import MemoryClient
from memstream.producers.connection import DEFAULT_URL, URL_VAR, NoCredentials, connect_nats
from memstream.schemas.errors import ConfigError, ConnectError, UsageError
from memstream.schemas.events import Event
from memstream.schemas.queries import Request, bounds

__all__ = [
    "SHORT_ID",
    "bounded_option",
    "connect_operator",
    "data_dir_given",
    "data_dir_option",
    "id_column",
    "json_option",
    "load",
    "nats_url_option",
    "out",
    "parse_json_object",
    "print_ack",
    "print_json",
    "print_rows",
    "publish_one",
    "run",
    "shown_id",
    "tenant_agent_options",
    "url_given",
    "whole_id",
    "wide_option",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

out = Console(highlight=False, soft_wrap=True)
_json = msgspec.json.Encoder()


def nats_url_option(f: F) -> F:
    return click.option(
        "--nats-url",
        default=None,
        help=f"NATS URL [default: ${URL_VAR}, else {DEFAULT_URL}].",
    )(f)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")(f)


def tenant_agent_options(f: F) -> F:
    f = click.option("--agent", "-a", required=True, envvar="MEMSTREAM_AGENT",
                     help="Agent id [default: $MEMSTREAM_AGENT].")(f)  # fmt: skip
    return tenant_option(f)


def tenant_option(f: F) -> F:
    """The tenant, from the flag or MEMSTREAM_TENANT (as `memstream mcp` reads it)."""
    return click.option("--tenant", "-t", required=True, envvar="MEMSTREAM_TENANT",
                        help="Tenant id [default: $MEMSTREAM_TENANT].")(f)  # fmt: skip


def data_dir_option(f: F) -> F:
    return click.option(
        "--data-dir",
        default=None,
        help="memstream's data dir [default: $MEMSTREAM_DATA_DIR, else ./.memstream].",
    )(f)


def load(*, service: bool = False, **overrides: Any) -> Settings:
    """Settings and logging. A one-shot command logs only warnings and worse and leaves
    the interpreter's tuning alone; a service (``up``, ``serve``) tunes it for
    throughput."""
    settings = load_settings(**overrides)
    if not (settings.nats_user or settings.nats_creds):
        # On the machine memstream runs on, its commands act as memstream's service user
        # (memstream up --auth keeps it under the data dir).
        identity = TenantCredentials(settings.data_path).service_if_any()
        if identity is not None:
            settings = msgspec.structs.replace(
                settings, nats_user=identity.user, nats_password=identity.password
            )
    level = settings.log_level
    if service:
        tune_for_throughput()
    elif level in ("debug", "info") and "MEMSTREAM_LOG_LEVEL" not in os.environ:
        level = "warning"
    configure_logging(settings.log_format, level)
    if not service and "MEMSTREAM_LOG_LEVEL" not in os.environ:
        # A refused publish or request comes back to a one-shot command as its error,
        # which is its one line: not twice.
        logging.getLogger("memstream.nats.denied").setLevel(logging.ERROR)
    return settings


async def connect_operator(settings: Settings, nats_url_given: bool, name: str) -> NatsClient:
    """The NATS an operator command means: ``--nats-url`` when given, else the one the
    memstream running on the data dir announced, else the default; as that deployment's
    service user when it has one (``load`` found it under the data dir)."""
    data_dir = settings.data_path.resolve()
    here = None if nats_url_given else running(data_dir)
    url = here.nats_url if here is not None and here.nats_url else settings.nats_url
    try:
        return await connect_nats(url, name=name, **settings.nats_auth)
    except NoCredentials as err:
        raise ConfigError(
            f"{err}. memstream's commands act as the service user of the deployment in "
            f"--data-dir, and {data_dir / 'auth'} holds none: pass the --data-dir that "
            "'memstream up --auth' runs on"
        ) from None
    except ConnectError as err:
        if here is not None or nats_url_given:
            raise
        raise ConnectError(
            f"{err}. No memstream runs on {data_dir}: pass the --data-dir of the one "
            "running, or its --nats-url"
        ) from None


def url_given(nats_url: str | None) -> bool:
    """Whether the user named a NATS (a flag or the variable), rather than the default."""
    return nats_url is not None or bool(os.environ.get(URL_VAR))


def data_dir_given(data_dir: str | None) -> bool:
    """Whether the user named a data dir (a flag or the variable), rather than the default."""
    return data_dir is not None or bool(os.environ.get("MEMSTREAM_DATA_DIR"))


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def print_json(data: Any) -> None:
    sys.stdout.write(_json.encode(data).decode() + "\n")
    sys.stdout.flush()


def _cell(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def print_rows(columns: list[str], rows: Sequence[Sequence[Any]], fmt: str) -> None:
    if fmt == "json":
        print_json([dict(zip(columns, map(_cell, row), strict=True)) for row in rows])
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows([[_cell(v) for v in row] for row in rows])
    else:
        table = Table(*columns)
        for row in rows:
            table.add_row(*("" if v is None else str(_cell(v)) for v in row))
        out.print(table)


def write_one(
    settings: Settings,
    tenant: str,
    agent: str,
    write: Callable[[MemoryClient], Awaitable[PublishAck]],
) -> PublishAck:
    """Connect as (tenant, agent), make the write ``write`` makes, return its ack."""

    async def go() -> PublishAck:
        async with await MemoryClient.connect(
            settings.nats_url,
            tenant=tenant,
            agent=agent,
            max_event_bytes=settings.max_event_bytes,
            **settings.nats_auth,
        ) as client:
            return await write(client)

    return run(go())


def publish_one(
    settings: Settings, tenant: str, agent: str, build: Callable[[MemoryClient], Event]
) -> PublishAck:
    """Connect as (tenant, agent), publish the event ``build`` makes, return its ack."""
    return write_one(settings, tenant, agent, lambda client: client.publish(build(client)))


def print_ack(ack: PublishAck, as_json: bool, type_: str, **extra: str) -> None:
    if as_json:
        print_json(
            {**msgspec.structs.asdict(ack), "type": type_, **({} if ack.duplicate else extra)}
        )
        return
    if ack.duplicate:
        # The first copy stands: ids made up for this copy were never stored.
        out.print(
            f"not stored again: event {ack.id} is a duplicate of the {type_} at seq {ack.seq}"
        )
        return
    ids = "".join(f"  {k} {v}" for k, v in extra.items())
    if ack.outcome is not None and ack.outcome.revision:
        ids += f"  revision {ack.outcome.revision}"
    out.print(f"stored {type_} at seq {ack.seq}  id {ack.id}{ids}")


def parse_json_object(value: str, option: str) -> dict[str, Any]:
    """A JSON object given on the command line (``@path`` reads a file, ``-`` the
    standard input)."""
    if value == "-":
        value = sys.stdin.read()
    elif value.startswith("@"):
        try:
            with open(value[1:], "rb") as f:
                value = f.read().decode()
        except OSError as err:
            raise UsageError(f"{option}: cannot read {value[1:]}: {err.strerror}") from None
    try:
        data = msgspec.json.decode(value)
    except msgspec.DecodeError as err:
        raise UsageError(f"{option} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{option} must be a JSON object")
    return data


# A table shows an id longer than 12 characters by its last 8: the random end of a UUID
# (the start of a UUIDv7 is its time, the same for every memory of a minute). Commands
# that take a memory id take those 8 back (`whole_id`).
SHORT_ID = 8
_WHOLE_UP_TO = 12  # an id this short is shown, and taken, as it is


def shown_id(memory_id: str, wide: bool) -> str:
    """An id as a table shows it: whole with --wide, else short."""
    return memory_id if wide or len(memory_id) <= _WHOLE_UP_TO else memory_id[-SHORT_ID:]


def bounded_option(
    name: str, request: type[Request], field: str, **kwargs: Any
) -> Callable[[F], F]:
    """An integer option with the range and default the request's decoder has: one set
    of limits for the SDK, the CLI and the MCP tools."""
    b = bounds(request, field)
    return click.option(
        name, type=click.IntRange(b.ge, b.le), default=b.default, show_default=True, **kwargs
    )


def wide_option(f: F) -> F:
    return click.option(
        "--wide", is_flag=True, help="Whole ids and every column (wider than 80 columns)."
    )(f)


def id_column(ids: list[str]) -> Column:
    """The id column of a table, wide enough that no id is wrapped or cut: an id is what
    a person copies into the next command."""
    return Column("id", no_wrap=True, min_width=max((len(i) for i in ids), default=2))


async def whole_id(client: MemoryClient, given: str) -> str:
    """The memory id that ``given``, a short id from a table, stands for; any other id
    (and a short id no live memory ends with) as given."""
    if len(given) != SHORT_ID:
        return given
    page = await client.list_memories(id_suffix=given, limit=3)
    ids = {
        m.memory_id
        for m in page.memories
        if len(m.memory_id) > _WHOLE_UP_TO or m.memory_id == given
    }
    if given in ids or not ids:
        return given
    if len(ids) > 1:
        raise UsageError(
            f"{len(ids)} memory ids end with {given!r}: give the whole id "
            "(--wide or --json shows it)"
        )
    return ids.pop()
