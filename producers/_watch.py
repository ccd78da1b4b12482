"""The change feed: a tenant's own events, in stream order, as they are published.

The query worker makes the JetStream consumer (with the service's rights) and points it
at an inbox of this connection; the feed checks the consumer's own sequence numbers,
and where one is skipped, or neither an event nor a heartbeat came in three heartbeats,
it asks for a new consumer starting right after the last event it yielded. So the
events come each once and in order, across a broker restart too.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from memstream.producers.connection import subscriptions_held
from memstream.schemas.events import AnyEvent, UnknownEvent, decode_event
from memstream.schemas.queries import WatchResult
from memstream.schemas.subjects import reply_inbox_prefix

__all__ = ["Change", "follow"]


@dataclass(frozen=True)
class Change:
    """One event of the feed, with its stream sequence."""

    seq: int
    event: AnyEvent | UnknownEvent


Ask = Callable[..., Awaitable[WatchResult]]


def _heartbeat(msg: Msg) -> bool:
    return bool(msg.headers) and msg.headers.get("Status") == "100"  # type: ignore[union-attr]


async def follow(
    nc: NatsClient,
    tenant: str,
    ask: Ask,
    *,
    types: Sequence[str] = (),
    from_seq: int | None = None,
    heartbeat_s: float = 5.0,
) -> AsyncGenerator[Change, None]:
    """Yield the tenant's events from ``from_seq`` (or from now) on; see the module."""
    next_seq = from_seq
    while True:
        # The connection's own inbox (a user's, with up --auth), or one under the
        # tenant's prefix for a connection made without it.
        inbox = nc.new_inbox()
        if not inbox.startswith(f"{reply_inbox_prefix(tenant)}."):
            inbox = f"{reply_inbox_prefix(tenant)}.{secrets.token_hex(12)}"
        sub = await nc.subscribe(inbox)
        restart = False
        try:
            await subscriptions_held(nc)
            started = await ask(
                deliver_to=inbox, types=list(types) or None, from_seq=next_seq,
                heartbeat_ms=int(heartbeat_s * 1000),
            )  # fmt: skip
            next_seq = started.from_seq
            expected = 1
            while not restart:
                try:
                    msg = await sub.next_msg(timeout=3 * heartbeat_s)
                except (nats.errors.TimeoutError, TimeoutError):
                    restart = True  # silent for three heartbeats: the consumer is gone
                    continue
                if _heartbeat(msg):
                    continue
                meta = msg.metadata
                if meta.sequence.consumer != expected:
                    restart = True  # one was lost on the way: start again after the last
                    continue
                expected += 1
                next_seq = meta.sequence.stream + 1
                yield Change(meta.sequence.stream, decode_event(msg.data))
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
