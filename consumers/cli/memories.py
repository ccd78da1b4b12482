"""The commands that read one memory or many: ``get``, ``list``, ``revisions`` and
``links``.

Tables show an id by its last 8 characters (whole with ``--wide`` and ``--json``), and
every command that takes a memory id takes those 8 back.
"""

from __future__ import annotations

import click
import msgspec
from rich.table import Table

from memstream.consumers.cli._common import (
    bounded_option,
    id_column,
    out,
    parse_json_object,
    print_json,
    shown_id,
    whole_id,
    wide_option,
)
from memstream.consumers.cli.queries import Ask, _short, _when, query_options
from memstream.producers.client import MemoryClient
from memstream.schemas.queries import (
    LinksRequest,
    LinksResult,
    ListRequest,
    Memory,
    RevisionsResult,
)

__all__ = ["get", "links", "list_command", "revisions"]


def _text(m: Memory) -> str:
    return m.content if m.content is not None else f"{m.problem} → {m.solution}"


@click.command()
@click.argument("memory_id")
@query_options
def get(memory_id: str, ask: Ask) -> None:
    """The memory MEMORY_ID (or the last 8 characters of its id) as it is now."""

    async def go(c: MemoryClient) -> Memory:
        return await c.get(await whole_id(c, memory_id), **ask.rw)

    m = ask(go)
    if ask.as_json:
        print_json(m)
        return
    out.print(f"[bold]{m.memory_id}[/bold]  ({m.kind}, revision {m.revision}, seq {m.seq})")
    out.print(_text(m), markup=False)
    rows = {
        "domain": m.domain, "tags": ", ".join(m.tags) or None, "agent": m.agent,
        "user": m.user_id, "run": m.run_id, "project": m.project, "task": m.task_id,
        "created": _when(m.created_at), "updated": _when(m.updated_at),
        "expires": _when(m.expires_at) if m.expires_at else None,
        "metadata": msgspec.json.encode(m.metadata).decode() if m.metadata else None,
    }  # fmt: skip
    for label, value in rows.items():
        if value:
            out.print(f"  {label:<9} {value}", markup=False)


@click.command("list")
@click.option(
    "--kind",
    "kinds",
    type=click.Choice(["knowledge", "solutions"]),
    multiple=True,
    help="Only this kind (repeatable) [default: both].",
)
@click.option(
    "--filter",
    "filter_",
    default=None,
    help='A filter as JSON, or @file: {"tags": "ops", "metadata.priority": {"$gte": 2}}.',
)
@click.option(
    "--order-by", type=click.Choice(["created_at", "updated_at"]), default="created_at",
    show_default=True,
)  # fmt: skip
@click.option("--ascending", is_flag=True, help="Oldest first [default: newest first].")
@bounded_option("--limit", ListRequest, "limit")
@click.option("--cursor", default=None, help="Where the page starts: a page's next cursor.")
@wide_option
@query_options
def list_command(
    kinds: tuple[str, ...],
    filter_: str | None,
    order_by: str,
    ascending: bool,
    limit: int,
    cursor: str | None,
    wide: bool,
    ask: Ask,
) -> None:
    """The tenant's memories as they are now, a page at a time."""
    flt = parse_json_object(filter_, "--filter") if filter_ is not None else None
    page = ask(
        lambda c: c.list_memories(
            kinds=kinds or None, filter=flt, order_by=order_by,  # type: ignore[arg-type]
            descending=not ascending, limit=limit, cursor=cursor, **ask.rw,
        )
    )  # fmt: skip
    if ask.as_json:
        print_json(page)
        return
    if not page.memories:
        out.print("no memories")
    else:
        ids = [shown_id(m.memory_id, wide) for m in page.memories]
        table = Table(id_column(ids), "kind", "rev", "agent", order_by.replace("_at", ""), "text")
        for i, m in zip(ids, page.memories, strict=True):
            when = m.created_at if order_by == "created_at" else m.updated_at
            table.add_row(i, m.kind, str(m.revision), m.agent, _when(when), _short(_text(m), 60))
        out.print(table)
    if page.next_cursor is not None:
        out.print(f"more: --cursor {page.next_cursor}")


@click.command()
@click.argument("memory_id")
@query_options
def revisions(memory_id: str, ask: Ask) -> None:
    """Every stored, revised and forgotten event of MEMORY_ID, oldest first."""

    async def go(c: MemoryClient) -> RevisionsResult:
        return await c.revisions(await whole_id(c, memory_id), **ask.rw)

    found = ask(go)
    if ask.as_json:
        print_json(found)
        return
    table = Table("seq", "time", "type", "agent", "fields")
    for r in found.revisions:
        fields = ", ".join(
            f"{k}={v if isinstance(v, str) else msgspec.json.encode(v).decode()}"
            for k, v in r.fields.items()
            if v not in (None, [], {})
        )
        table.add_row(str(r.seq), _when(r.ts), r.type, r.agent, _short(fields, 80))
    out.print(table)


@click.command()
@click.argument("memory_id")
@click.option("--relation", default=None, help="Only links of this relation.")
@click.option(
    "--direction", type=click.Choice(["out", "in", "both"]), default="both", show_default=True,
    help="out: what it links to; in: what links to it.",
)  # fmt: skip
@bounded_option("--depth", LinksRequest, "depth")
@bounded_option("--limit", LinksRequest, "limit")
@wide_option
@query_options
def links(
    memory_id: str,
    relation: str | None,
    direction: str,
    depth: int,
    limit: int,
    wide: bool,
    ask: Ask,
) -> None:
    """The memories linked to and from MEMORY_ID, to --depth steps."""

    async def go(c: MemoryClient) -> LinksResult:
        return await c.links(
            await whole_id(c, memory_id), relation=relation,
            direction=direction, depth=depth, limit=limit, **ask.rw,  # type: ignore[arg-type]
        )  # fmt: skip

    found = ask(go)
    if ask.as_json:
        print_json(found)
        return
    table = Table("from", "relation", "to", "seq")
    for e in found.edges:
        table.add_row(shown_id(e.from_id, wide), e.relation, shown_id(e.to_id, wide), str(e.seq))
    out.print(table)
    for node in found.nodes:
        text = (
            "(missing: no such memory now)"
            if node.missing
            else _short(
                node.content if node.content is not None else f"{node.problem} → {node.solution}",
                60,
            )
        )
        out.print(f"  {shown_id(node.memory_id, wide)}  {text}", markup=False)
    if found.truncated:
        out.print(f"(the first {limit} links: there are more)")
