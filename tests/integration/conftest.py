"""A connected client and freshly provisioned, empty streams for each test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NatsClient

from memstream.consumers.nats_server import NatsServer
from memstream.consumers.streams import ensure_streams
from memstream.producers.connection import connect_nats
from memstream.schemas.subjects import DLQ_STREAM, EVENT_STREAM


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NatsClient]:
    client = await connect_nats(nats_server.url, name="memstream-tests")
    js = client.jetstream()
    await ensure_streams(js)
    for stream in (EVENT_STREAM, DLQ_STREAM):
        await js.purge_stream(stream)
    try:
        yield client
    finally:
        await client.close()
