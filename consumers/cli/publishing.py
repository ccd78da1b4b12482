"""``memstream publish`` and ``memstream remember``: write events as an agent does."""

from __future__ import annotations

import click
import msgspec

from consumers.cli._common import (
    json_option,
    load,
    nats_url_option,
    print_ack,
    publish_one,
    tenant_agent_options,
)
from producers._events import GENERATED_IDS
from producers.client import MemoryClient
from schemas.errors import InvalidEvent, UsageError
from schemas.events import EVENT_TYPES, Event, KnowledgeStored, utc_now
from schemas.ids import new_id

__all__ = ["publish", "remember"]


@click.command()
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
        raise UsageError(
            f"unknown event type {type_!r}: use one of {', '.join(sorted(EVENT_TYPES))}"
        )
    try:
        fields = msgspec.json.decode(data)
    except msgspec.DecodeError as err:
        raise UsageError(f"--data is not valid JSON: {err}") from None
    if not isinstance(fields, dict):
        raise UsageError("--data must be a JSON object of the event's fields")
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
