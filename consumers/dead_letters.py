"""Dead letters: filing an event a projection cannot apply in ``MEMORY_DLQ``, and reading
and retrying them (``memstream dlq``). The header names are the contract's
(:mod:`schemas.dead_letters`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import nats.js.errors
from nats.aio.client import Client as NatsClient

from memstream.consumers.decoding import DeadLetter
from memstream.consumers.log import get_logger
from memstream.schemas.dead_letters import (
    DeadLetterInfo,
    dead_letter_headers,
    read_dead_letter,
    retry_headers,
)
from memstream.schemas.errors import UsageError
from memstream.schemas.subjects import DLQ_STREAM, dlq_subject

__all__ = ["list_dead_letters", "publish_dead_letters", "retry_dead_letters"]

log = get_logger("memstream.dlq")


async def publish_dead_letters(js: Any, projection: str, dead: Sequence[DeadLetter]) -> None:
    """Store each dead letter in MEMORY_DLQ with its reason; redeliveries dedupe by seq."""
    futures = []
    for d in dead:
        log.warning(
            "dead_letter", projection=projection, seq=d.seq, subject=d.subject, reason=d.reason
        )
        headers = dead_letter_headers(projection, d.reason, d.subject, d.seq)
        futures.append(
            await js.publish_async(
                dlq_subject(projection, d.tenant), d.data, headers=headers, stream=DLQ_STREAM
            )
        )
    await asyncio.gather(*futures)


async def _dead_letters(nc: NatsClient, limit: int) -> AsyncIterator[tuple[DeadLetterInfo, Any]]:
    js = nc.jetstream()
    try:
        info = await js.stream_info(DLQ_STREAM)
    except nats.js.errors.NotFoundError:
        return
    seq, found = info.state.first_seq, 0
    while seq and seq <= info.state.last_seq and found < limit:
        try:
            msg = await js.get_msg(DLQ_STREAM, seq)
        except nats.js.errors.NotFoundError:
            seq += 1
            continue
        yield read_dead_letter(seq, msg.subject or "", msg.headers, len(msg.data or b"")), msg
        found += 1
        seq += 1


async def list_dead_letters(nc: NatsClient, limit: int = 1000) -> list[DeadLetterInfo]:
    return [info async for info, _ in _dead_letters(nc, limit)]


async def retry_dead_letters(
    nc: NatsClient, seqs: set[int] | None = None, limit: int = 100_000
) -> list[tuple[DeadLetterInfo, int]]:
    """Publish dead letters again to their source subject, for the projection that
    dead-lettered each (the others pass the copy by), then drop them from the DLQ.
    Returns (letter, new seq). ``seqs`` naming a letter that does not exist is a
    UsageError, and nothing is retried."""
    js = nc.jetstream()
    letters = [
        (info, msg)
        async for info, msg in _dead_letters(nc, limit)
        if (seqs is None or info.seq in seqs) and info.source_subject and info.projection
    ]
    missing = sorted((seqs or set()) - {info.seq for info, _ in letters})
    if missing:
        raise UsageError(
            f"no dead letter at DLQ seq {', '.join(map(str, missing))}: see 'memstream dlq list'"
        )
    done: list[tuple[DeadLetterInfo, int]] = []
    for info, msg in letters:
        ack = await js.publish(info.source_subject, msg.data or b"", headers=retry_headers(info))
        await js.delete_msg(DLQ_STREAM, info.seq)
        done.append((info, ack.seq))
    return done
