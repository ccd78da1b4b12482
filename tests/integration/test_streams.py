"""Stream and consumer provisioning is idempotent and corrects drift."""

from __future__ import annotations

from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, RetentionPolicy, StorageType

from memstream.consumers.streams import consumer_config, ensure_streams


async def test_second_run_changes_nothing(nc: NatsClient) -> None:
    """Provisioning an already provisioned server reports everything unchanged."""
    js = nc.jetstream()
    report = await ensure_streams(js)
    expected = {
        "MEMORY": "unchanged",
        "MEMORY_DLQ": "unchanged",
        "KV_MEMLOCK": "unchanged",
        "MEMORY_AUDIT": "unchanged",
    }
    assert expected == report.streams
    assert {"history": "unchanged", "vectors": "unchanged"} == report.consumers
    assert not report.changed
    assert ["history", "vectors"] == sorted(c.name for c in await js.consumers_info("MEMORY"))
    names = sorted([s.config.name for s in await js.streams_info()])
    assert ["KV_MEMLOCK", "MEMORY", "MEMORY_AUDIT", "MEMORY_DLQ"] == names


async def test_streams_match_the_design(nc: NatsClient) -> None:
    """MEMORY takes mem.>, file storage, limits, no age limit, a 2-minute duplicate window."""
    js = nc.jetstream()
    memory = (await js.stream_info("MEMORY")).config
    assert ["mem.>"] == memory.subjects
    assert StorageType.FILE == memory.storage
    assert RetentionPolicy.LIMITS == memory.retention
    assert 120.0 == memory.duplicate_window
    assert memory.max_age in (0, None)
    assert ["memdlq.>"] == (await js.stream_info("MEMORY_DLQ")).config.subjects
    history = (await js.consumer_info("MEMORY", "history")).config
    assert ("history", AckPolicy.ALL, None) == (
        history.durable_name,
        history.ack_policy,
        history.deliver_subject,
    )


async def test_drift_is_updated_in_place(nc: NatsClient) -> None:
    """A changed setting is put back; a setting we do not own is left as the operator set it."""
    js = nc.jetstream()
    info = await js.stream_info("MEMORY")
    await js.update_stream(info.config.evolve(duplicate_window=30.0, max_msgs=1_000_000))
    await js.add_consumer("MEMORY", consumer_config("vectors").evolve(ack_wait=5.0))
    report = await ensure_streams(js)
    assert "updated" == report.streams["MEMORY"]
    assert "updated" == report.consumers["vectors"]
    memory = (await js.stream_info("MEMORY")).config
    assert (120.0, 1_000_000) == (memory.duplicate_window, memory.max_msgs)
    assert 120.0 == (await js.consumer_info("MEMORY", "vectors")).config.ack_wait
    assert not (await ensure_streams(js)).changed
    await js.update_stream(memory.evolve(max_msgs=-1))
