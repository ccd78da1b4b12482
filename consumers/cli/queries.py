"""The query commands of the CLI: ``search``, ``history``, ``task``, ``context``,
``conversation``, ``recall``, ``stats`` and ``analytics``.

Each sends one request on ``memq.<tenant>.<op>`` through the SDK, as an agent would, and
prints the result as a person reads it, or as JSON with ``--json``.
"""

from __future__ import annotations

import datetime as dt
import functools
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click
import msgspec
from rich.table import Table

from memstream.consumers.cli._common import (
    bounded_option,
    id_column,
    json_option,
    load,
    nats_url_option,
    out,
    parse_json_object,
    print_json,
    print_rows,
    run,
    shown_id,
    tenant_option,
    wide_option,
)
from memstream.producers._queries import no_events_hint
from memstream.producers.client import MemoryClient
from memstream.schemas.errors import QueryError
from memstream.schemas.queries import (
    ANALYTICS_NAMES,
    ConversationRequest,
    HistoryRequest,
    RecallRequest,
    SearchRequest,
)

__all__ = [
    "analytics",
    "context",
    "conversation",
    "history",
    "recall",
    "search",
    "stats",
    "summary",
    "task",
]

R = TypeVar("R")
CLI_AGENT = "memstream-cli"


class Timestamp(click.ParamType):  # type: ignore[type-arg]
    """An ISO 8601 time; without a zone it is taken as UTC."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, dt.datetime):
            return value
        try:
            ts = dt.datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 time (e.g. 2026-11-21T09:30:00Z)", param, ctx)
        return ts if ts.tzinfo else ts.replace(tzinfo=dt.UTC)


TIME = Timestamp()


@dataclass(frozen=True)
class Ask:
    """What every query command takes: the tenant, read-your-writes, NATS, --json."""

    tenant: str
    min_seq: int | None
    wait_ms: int | None
    nats_url: str | None
    as_json: bool
    latest: bool = False

    @property
    def rw(self) -> dict[str, Any]:
        given = (
            ("min_seq", self.min_seq),
            ("wait_ms", self.wait_ms),
            ("consistency", "latest" if self.latest else None),
        )
        return {k: v for k, v in given if v is not None}

    def __call__(self, call: Callable[[MemoryClient], Awaitable[R]]) -> R:
        settings = load(nats_url=self.nats_url)

        async def go() -> tuple[R, bool]:
            async with await MemoryClient.connect(
                settings.nats_url, tenant=self.tenant, agent=CLI_AGENT, **settings.nats_auth
            ) as client:
                try:
                    return await call(client), client.tenant_has_no_events
                except QueryError as err:
                    if client.tenant_has_no_events:
                        raise QueryError(
                            err.code, f"{err.message}; {no_events_hint(self.tenant)}"
                        ) from None
                    raise

        result, unseen = run(go())
        if unseen:
            sys.stderr.write(f"memstream: {no_events_hint(self.tenant)}\n")
        return result


def query_options(body: Callable[..., None]) -> Callable[..., None]:
    """--tenant, --min-seq, --latest, --wait-ms, --nats-url and --json, handed on as
    ``ask``."""

    @functools.wraps(body)
    def command(
        *args: Any,
        tenant: str,
        min_seq: int | None,
        wait_ms: int | None,
        latest: bool,
        nats_url: str | None,
        as_json: bool,
        **kwargs: Any,
    ) -> None:
        body(*args, ask=Ask(tenant, min_seq, wait_ms, nats_url, as_json, latest), **kwargs)

    f = json_option(command)
    f = nats_url_option(f)
    f = click.option(
        "--wait-ms",
        type=click.IntRange(0, 60_000),
        default=None,
        help="How long to wait for --min-seq or --latest [default: 2000].",
    )(f)
    f = click.option(
        "--latest",
        is_flag=True,
        help="Answer once the projection has applied all the stream held when asked.",
    )(f)
    f = click.option(
        "--min-seq",
        type=click.IntRange(0),
        default=None,
        help="Answer once the projection has applied this stream sequence.",
    )(f)
    return tenant_option(f)


def _when(ts: Any) -> str:
    if isinstance(ts, str):
        ts = dt.datetime.fromisoformat(ts)
    return ts.strftime("%Y-%m-%d %H:%M:%S") if isinstance(ts, dt.datetime) else ""


def _short(value: Any, width: int = 72) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


_ENVELOPE = {"type", "id", "tenant", "agent", "ts", "v", "seq", "correlation_id", "causation_id"}


def summary(event: dict[str, Any]) -> str:
    """An event's own fields in one line."""
    fields = {k: v for k, v in event.items() if k not in _ENVELOPE and v not in (None, [], {})}
    return _short(
        ", ".join(f"{k}={v if isinstance(v, str) else _json(v)}" for k, v in fields.items())
    )


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


@click.command()
@click.argument("text", nargs=-1, required=True)
@click.option(
    "--kind",
    "kinds",
    type=click.Choice(["knowledge", "solutions", "collaborations", "turns", "tasks"]),
    multiple=True,
    help="Search this kind (repeatable) [default: knowledge, solutions, collaborations].",
)
@click.option("--session-id", default=None, help="Only turns of this conversation.")
@click.option("--task-id", default=None, help="Only this task, or what carried its id.")
@bounded_option("--top-k", SearchRequest, "top_k", help="How many hits at most.")
@click.option(
    "--mode",
    type=click.Choice(["hybrid", "dense", "keyword"]),
    default="hybrid",
    show_default=True,
    help="By meaning and words fused (hybrid), by meaning (dense) or by words (keyword).",
)
@click.option(
    "--recency-half-life-days",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Weigh recent memories more: one this many days old counts half.",
)
@click.option(
    "--threshold", type=float, default=None, help="The least similarity of meaning to show."
)
@click.option("--agent", default=None, help="Only memories this agent stored.")
@click.option("--domain", default=None, help="Only knowledge of this domain.")
@click.option("--tag", "tags", multiple=True, help="Only memories with this tag (repeatable).")
@click.option("--since", type=TIME, default=None, help="Only memories stored at or after.")
@click.option("--until", type=TIME, default=None, help="Only memories stored before.")
@click.option(
    "--filter", "filter_", default=None, help="A filter as JSON, or @file (see memstream list)."
)
@wide_option
@query_options
def search(
    text: tuple[str, ...],
    kinds: tuple[str, ...],
    session_id: str | None,
    task_id: str | None,
    top_k: int,
    mode: str,
    recency_half_life_days: float | None,
    threshold: float | None,
    agent: str | None,
    domain: str | None,
    tags: tuple[str, ...],
    since: dt.datetime | None,
    until: dt.datetime | None,
    filter_: str | None,
    wide: bool,
    ask: Ask,
) -> None:
    """The tenant's memories most like TEXT: knowledge, solutions, collaborations."""
    filters: dict[str, Any] = {
        k: v
        for k, v in {
            "kinds": kinds, "threshold": threshold, "agent": agent, "domain": domain,
            "tags": tags, "since": since, "until": until, "mode": mode,
            "session_id": session_id, "task_id": task_id,
            "recency_half_life_days": recency_half_life_days,
        }.items()
        if v not in (None, ())
    }  # fmt: skip
    if filter_ is not None:
        filters["filter"] = parse_json_object(filter_, "--filter")
    query = " ".join(text)
    hits = ask(
        lambda c: c.search(query, top_k=top_k, **filters, **ask.rw),
    )
    if ask.as_json:
        print_json(hits)
        return
    if not hits:
        out.print("no matches")
        return
    ids = [shown_id(h.memory_id, wide) for h in hits]
    if wide:
        table = Table(id_column(ids), "score", "kind", "agent", "stored", "text")
        for i, h in zip(ids, hits, strict=True):
            table.add_row(i, f"{h.score:.3f}", h.kind, h.agent, _when(h.ts), _short(h.text))
    else:  # 80 columns: the short id, and the text wraps in what is left
        table = Table(id_column(ids), "score", "kind", "agent", "text")
        for i, h in zip(ids, hits, strict=True):
            table.add_row(i, f"{h.score:.3f}", h.kind, h.agent, _short(h.text))
    out.print(table)


@click.command()
@click.option("--type", "types", multiple=True, help="Only this event type (repeatable).")
@click.option("--agent", default=None, help="Only this agent's events.")
@click.option("--task-id", default=None, help="Only events carrying this task id.")
@click.option("--since", type=TIME, default=None)
@click.option("--until", type=TIME, default=None)
@click.option(
    "--after-seq", type=click.IntRange(0), default=0, help="Start after this stream sequence."
)
@bounded_option("--limit", HistoryRequest, "limit")
@query_options
def history(
    types: tuple[str, ...],
    agent: str | None,
    task_id: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
    after_seq: int,
    limit: int,
    ask: Ask,
) -> None:
    """The tenant's events in stream order, a page at a time."""
    page = ask(
        lambda c: c.history(
            types=types, agent=agent, task_id=task_id, since=since, until=until,
            after_seq=after_seq, limit=limit, **ask.rw,
        ),
    )  # fmt: skip
    if ask.as_json:
        print_json(page)
        return
    table = Table("seq", "time", "type", "agent", "fields")
    for e in page.events:
        table.add_row(str(e["seq"]), _when(e["ts"]), e["type"], e["agent"], summary(e))
    out.print(table)
    if page.next_after_seq is not None:
        out.print(f"more: --after-seq {page.next_after_seq}")


@click.command()
@click.argument("task_id")
@query_options
def task(
    task_id: str,
    ask: Ask,
) -> None:
    """A task: its state, timeline, output, and every event carrying its id."""
    found = ask(lambda c: c.task(task_id, **ask.rw))
    if ask.as_json:
        print_json(found)
        return
    state = found.task
    out.print(f"[bold]{state.get('title') or task_id}[/bold]  ({task_id})")
    for label, key in (("status", "status"), ("assignee", "assignee"), ("flow", "flow_id")):
        if state.get(key):
            out.print(f"  {label:<9} {state[key]}")
    for label, key in (("created", "created_at"), ("started", "started_at")):
        if state.get(key):
            out.print(f"  {label:<9} {_when(state[key])}")
    if state.get("finished_at"):
        out.print(f"  {'finished':<9} {_when(state['finished_at'])}")
    if state.get("error"):
        out.print(f"  error     {state['error']}")
    if found.output is not None:
        out.print(f"  output    {_json(found.output)}")
    bundle = Table("seq", "time", "type", "agent", "fields", title="events of the task")
    for e in found.bundle:
        bundle.add_row(str(e["seq"]), _when(e["ts"]), e["type"], e["agent"], summary(e))
    out.print(bundle)
    if found.bundle_truncated:
        out.print("(the newest events only: the task has more)")


@click.command()
@click.argument("key")
@query_options
def context(
    key: str,
    ask: Ask,
) -> None:
    """The shared context value under KEY (not found once expired or cleared)."""
    found = ask(lambda c: c.context(key, **ask.rw))
    if ask.as_json:
        print_json(found)
        return
    out.print(_json(found.data))
    expires = f", expires {_when(found.expires_at)}" if found.expires_at else ""
    out.print(f"set {_when(found.set_at)} by {found.agent}{expires}")


@click.command()
@click.argument("session_id")
@bounded_option("--last-n", ConversationRequest, "last_n")
@query_options
def conversation(
    session_id: str,
    last_n: int,
    ask: Ask,
) -> None:
    """The last turns of a conversation session, oldest first."""
    found = ask(
        lambda c: c.conversation(session_id, last_n=last_n, **ask.rw),
    )
    if ask.as_json:
        print_json(found)
        return
    if not found.turns:
        out.print(f"no turns in session {session_id}")
    for t in found.turns:
        out.print(f"[dim]{_when(t.ts)} {t.agent}[/dim]  [bold]{t.role}[/bold]: {t.content}")


@click.command()
@click.argument("text", nargs=-1)
@click.option("--session-id", default=None, help="Include this session's recent turns.")
@click.option("--task-id", default=None, help="Include this task's state.")
@bounded_option("--budget-chars", RecallRequest, "budget_chars")
@click.option(
    "--strategy",
    type=click.Choice(["relevance", "recency", "balanced"]),
    default="balanced",
    show_default=True,
)
@query_options
def recall(
    text: tuple[str, ...],
    session_id: str | None,
    task_id: str | None,
    budget_chars: int,
    strategy: str,
    ask: Ask,
) -> None:
    """One context bundle for an agent's prompt: what is relevant to TEXT, the session's
    recent turns and the task's state, within --budget-chars."""
    query = " ".join(text) or None
    found = ask(
        lambda c: c.recall(
            query, session_id=session_id, task_id=task_id, budget_chars=budget_chars,
            strategy=strategy, **ask.rw,
        ),
    )  # fmt: skip
    if ask.as_json:
        print_json(found)
        return
    out.print(found.text or "(nothing to recall)", markup=False)
    out.print(f"\n[dim]{found.chars} of {budget_chars} characters, {strategy}; sources:[/dim]")
    for s in found.sources:
        score = f" score {s.score:.3f}" if s.score is not None else ""
        seq = f" seq {s.seq}" if s.seq is not None else ""
        out.print(f"[dim]  {s.kind} {s.ref}{seq}{score}[/dim]")


@click.command()
@query_options
def stats(ask: Ask) -> None:
    """The tenant's events by type and agent, each projection's progress, dead letters."""
    found = ask(lambda c: c.stats(**ask.rw))
    if ask.as_json:
        print_json(found)
        return
    print_rows(["type", "events"], list(found.events_by_type.items()), "table")
    print_rows(["agent", "events"], list(found.events_by_agent.items()), "table")
    print_rows(
        ["projection", "applied up to seq", "behind by"],
        [(n, s, found.lag.get(n, 0)) for n, s in found.last_applied_seq.items()],
        "table",
    )
    out.print(f"dead letters: {found.dlq_count}")


@click.command()
@click.argument("name", type=click.Choice(sorted(ANALYTICS_NAMES)))
@click.option("--since", type=TIME, default=None)
@click.option("--until", type=TIME, default=None)
@click.option("--limit", type=click.IntRange(1, 100_000), default=None)
@click.option(
    "--bucket",
    type=click.Choice(["hour", "day", "week", "month"]),
    default=None,
    help="Period of memory_growth [default: day].",
)
@query_options
def analytics(
    name: str,
    since: dt.datetime | None,
    until: dt.datetime | None,
    limit: int | None,
    bucket: str | None,
    ask: Ask,
) -> None:
    """Rows of a named analytics query over the tenant's whole history."""
    params: dict[str, Any] = {
        k: v.isoformat() if isinstance(v, dt.datetime) else v
        for k, v in {"since": since, "until": until, "limit": limit, "bucket": bucket}.items()
        if v is not None
    }
    found = ask(lambda c: c.analytics(name, params, **ask.rw))
    if ask.as_json:
        print_json([dict(zip(found.columns, row, strict=True)) for row in found.rows])
        return
    if not found.rows:
        out.print(f"{name}: no rows")
        return
    print_rows(found.columns, found.rows, "table")
