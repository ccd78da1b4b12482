"""``memstream publish`` and ``memstream remember``: write events as an agent does."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import click
import msgspec

from memstream.consumers.cli._common import (
    json_option,
    load,
    nats_url_option,
    parse_json_object,
    print_ack,
    publish_one,
    tenant_agent_options,
    whole_id,
    write_one,
)
from memstream.producers._events import GENERATED_IDS, PublishAck
from memstream.producers.client import MemoryClient
from memstream.schemas.errors import InvalidEvent, UsageError
from memstream.schemas.events import (
    EVENT_TYPES,
    Event,
    KnowledgeStored,
    MemoryForgotten,
    MemoryLinked,
    MemoryRevised,
    utc_now,
)
from memstream.schemas.ids import new_id

__all__ = ["forget", "link", "publish", "remember", "revise"]


@click.command()
@click.argument("type_", metavar="TYPE")
@tenant_agent_options
@click.option(
    "--data",
    default="{}",
    help="The event's own fields as a JSON object; @file reads it from a file, - from stdin.",
)
@nats_url_option
@json_option
def publish(
    type_: str, tenant: str, agent: str, data: str, nats_url: str | None, as_json: bool
) -> None:
    """Publish one event of TYPE (e.g. task.created); ids and ts are filled in when omitted."""
    if type_ not in EVENT_TYPES:
        raise UsageError(
            f"unknown event type {type_!r}: use one of {', '.join(sorted(EVENT_TYPES))}"
        )
    fields = parse_json_object(data, "--data")
    for name, given in (("type", type_), ("tenant", tenant), ("agent", agent)):
        if name in fields and fields[name] != given:
            raise UsageError(f"--data has {name} {fields[name]!r} but the command says {given!r}")
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
    settings = load(nats_url=nats_url)
    extra = {generated: str(getattr(event, generated))} if generated else {}
    ack = publish_one(settings, tenant, agent, lambda _: event)
    print_ack(ack, as_json, type_, **extra)


@click.command()
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
    settings = load(nats_url=nats_url)
    memory_id = memory_id or new_id()

    def build(client: MemoryClient) -> Event:
        return client.new_event(
            KnowledgeStored, memory_id=memory_id, domain=domain, content=text, tags=tag
        )

    print_ack(
        publish_one(settings, tenant, agent, build),
        as_json,
        "knowledge.stored",
        memory_id=memory_id,
    )


def _publish(
    nats_url: str | None, tenant: str, agent: str, as_json: bool, cls: type[Event], **fields: Any
) -> None:
    settings = load(nats_url=nats_url)
    ack = publish_one(settings, tenant, agent, lambda client: client.new_event(cls, **fields))
    print_ack(ack, as_json, cls.type)


_CONFIRM = click.option(
    "--no-confirm", "no_confirm", is_flag=True,
    help="Do not wait to learn whether it was applied (exit 0 once stored).",
)  # fmt: skip
_EXPECTED = click.option(
    "--expected-revision", type=click.IntRange(0), default=None,
    help="Apply only if the memory is still at this revision (get shows it).",
)  # fmt: skip


def _write(
    nats_url: str | None, tenant: str, agent: str, as_json: bool, type_: str,
    write: Callable[[MemoryClient], Awaitable[PublishAck]],
) -> None:  # fmt: skip
    """A write that says whether it was applied: not applied (a conflict, no such
    memory) is one line and exit 1."""
    settings = load(nats_url=nats_url)
    print_ack(write_one(settings, tenant, agent, write), as_json, type_)


@click.command()
@click.argument("memory_id")
@tenant_agent_options
@click.option("--content", default=None, help="New text of a piece of knowledge.")
@click.option("--problem", default=None, help="New problem of a solution.")
@click.option("--solution", default=None, help="New solution of a solution.")
@click.option("--tag", "tags", multiple=True, help="The new tags (repeatable; replace the old).")
@click.option("--metadata", default=None, help="The new metadata as JSON (replaces the old).")
@click.option("--ttl-s", type=click.IntRange(1), default=None, help="Expire this many s from now.")
@_EXPECTED
@_CONFIRM
@nats_url_option
@json_option
def revise(
    memory_id: str, tenant: str, agent: str, content: str | None, problem: str | None,
    solution: str | None, tags: tuple[str, ...], metadata: str | None, ttl_s: int | None,
    expected_revision: int | None, no_confirm: bool, nats_url: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Change MEMORY_ID: the fields given replace its own; the rest stay. Waits to learn
    whether it was applied: no such memory, or another revision than
    --expected-revision, is one line and exit 1."""
    changes: dict[str, Any] = {
        "content": content, "problem": problem, "solution": solution,
        "tags": tags or None, "ttl_s": ttl_s,
        "metadata": parse_json_object(metadata, "--metadata") if metadata is not None else None,
    }  # fmt: skip
    if all(v is None for v in changes.values()):
        raise UsageError(
            "revise changes nothing: give --content, --problem, --solution, --tag, "
            "--metadata or --ttl-s"
        )

    async def write(c: MemoryClient) -> PublishAck:
        return await c.revise(
            await whole_id(c, memory_id), **changes, expected_revision=expected_revision,
            confirm=not no_confirm,
        )  # fmt: skip

    _write(nats_url, tenant, agent, as_json, MemoryRevised.type, write)


@click.command()
@click.argument("memory_id")
@tenant_agent_options
@click.option("--reason", default=None, help="Why, for whoever reads its revisions.")
@click.option(
    "--erase", is_flag=True, help="Also delete its earlier events (its text) from the stream."
)
@_EXPECTED
@_CONFIRM
@nats_url_option
@json_option
def forget(
    memory_id: str, tenant: str, agent: str, reason: str | None, erase: bool,
    expected_revision: int | None, no_confirm: bool, nats_url: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Forget MEMORY_ID: no read returns it from then on. Waits to learn whether it was
    applied, as revise does."""

    async def write(c: MemoryClient) -> PublishAck:
        return await c.forget(
            await whole_id(c, memory_id), reason=reason, erase=erase,
            expected_revision=expected_revision, confirm=not no_confirm,
        )  # fmt: skip

    _write(nats_url, tenant, agent, as_json, MemoryForgotten.type, write)


@click.command()
@click.argument("from_id")
@click.argument("relation")
@click.argument("to_id")
@tenant_agent_options
@_CONFIRM
@nats_url_option
@json_option
def link(
    from_id: str, relation: str, to_id: str, tenant: str, agent: str, no_confirm: bool,
    nats_url: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Record that FROM_ID is RELATION to TO_ID (e.g. refines, contradicts, depends_on);
    waits until the history has applied it."""

    async def write(c: MemoryClient) -> PublishAck:
        start, end = await whole_id(c, from_id), await whole_id(c, to_id)
        return await c.link(start, end, relation, confirm=not no_confirm)

    _write(nats_url, tenant, agent, as_json, MemoryLinked.type, write)
