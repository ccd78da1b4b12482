"""The audit trail in `memstream sql`: the history's audit table follows the audit
stream, is filled again after a rebuild of the history, and a restart inserts nothing
twice."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.aio.client import Client as NatsClient

from memstream.consumers import ops
from memstream.consumers.nats_server import NatsServer
from memstream.consumers.settings import Settings, load_settings
from memstream.consumers.storage import HistoryStorage
from memstream.producers import MemoryClient
from memstream.schemas.subjects import AUDIT_STREAM
from tests.integration.test_query_worker import running
from tests.waiting import wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


async def _rows(settings: Settings, sql: str) -> list[tuple[object, ...]]:
    return list((await ops.sql(settings, sql, True, 10_000)).rows)


async def _tenants(settings: Settings) -> list[tuple[object, ...]]:
    return await _rows(
        settings,
        "SELECT tenant, user, agent, op, outcome, count(*) FROM audit "
        "WHERE tenant <> '_admin' GROUP BY ALL ORDER BY ALL",
    )


async def test_sql_reads_the_audit_through_rebuilds_and_restarts(
    nc: NatsClient, nats_server: NatsServer, tmp_path: Path
) -> None:
    """Five searches of acme and three stats of beta are rows of `audit`, with the
    agent that asked; a rebuild of the history has them again; after a restart each
    record of the stream is in the table once."""
    data = tmp_path / "data"
    settings = load_settings(nats_url=nats_server.url, data_dir=str(data))
    expected = [
        ("acme", "", "scout", "search", "ok", 5),
        ("beta", "", "auditor", "stats", "ok", 3),
    ]
    async with running(nats_server, data):
        acme = MemoryClient(nc, tenant="acme", agent="scout")
        beta = MemoryClient(nc, tenant="beta", agent="auditor")
        for _ in range(5):
            await acme.search("anything")
        for _ in range(3):
            await beta.stats()

        async def recorded() -> bool:
            return expected == await _tenants(settings)

        await wait_for(recorded, what="the audit records in the table")
        before = HistoryStorage(data).files.current()
        await ops.rebuild(settings, "history", True, lambda _: None)
        assert before != HistoryStorage(data).files.current()  # a new file, swapped in
        await wait_for(recorded, what="the audit records in the rebuilt history")

    async with running(nats_server, data):
        stored = (await nc.jetstream().stream_info(AUDIT_STREAM)).state.messages

        async def caught_up() -> bool:
            (row,) = await _rows(settings, "SELECT count(*), count(DISTINCT seq) FROM audit")
            # The sql asked here is audited too: at least what the stream held before.
            return row[0] == row[1] and int(row[0]) >= stored  # type: ignore[call-overload]

        await wait_for(caught_up, what="the audit table after a restart")
        assert expected == await _tenants(settings)
