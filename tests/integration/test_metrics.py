"""/metrics, /healthz and /readyz of a running memstream, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from prometheus_client.parser import text_string_to_metric_families

from memstream.consumers.nats_server import NatsServer
from memstream.producers import MemoryClient
from tests.e2e.conftest import run_cli
from tests.integration.test_query_worker import running
from tests.waiting import wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


async def fetch(url: str) -> tuple[int, str]:
    return await asyncio.to_thread(get, url)


async def samples(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = await fetch(f"{base}/metrics")
    assert 200 == status
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_move_with_what_was_done(
    nc: NatsClient, nats_server: NatsServer, tmp_path: Path
) -> None:
    async with running(nats_server, tmp_path / "d", MEMSTREAM_METRICS_PORT="0") as info:
        base = info.metrics_url
        assert base is not None
        before = await samples(base)
        mem = MemoryClient(nc, tenant="acme", agent="a")
        last = None
        for i in range(5):
            last = await mem.store_knowledge(f"metrics fact {i}", domain="d")
        assert last is not None
        await mem.query("stats", dict, min_seq=last.seq)
        await mem.search("metrics fact", min_seq=last.seq)
        await mem.search("metrics fact")
        count = "memstream_query_duration_seconds_count"
        found: list[Any] = []

        async def searches_counted() -> bool:
            # The searcher reports what it answered once a second.
            found.append(await samples(base))
            return 2 == value(found[-1], count, op="search") - value(before, count, op="search")

        await wait_for(searches_counted, 10, "the searches in the metrics")
        after = found[-1]

        applied = "memstream_events_applied_total"
        for projection in ("history", "vectors"):
            assert 5 == value(after, applied, projection=projection) - value(
                before, applied, projection=projection
            )
            assert 0 == value(after, "memstream_dead_letters_total", projection=projection)
        assert 1 == value(after, count, op="stats") - value(before, count, op="stats")
        assert 2 == value(after, count, op="search") - value(before, count, op="search")
        misses = "memstream_embedding_cache_misses_total"
        hits = "memstream_embedding_cache_hits_total"
        # five memories and one query text embedded; the second search found it cached
        assert 6 == value(after, misses) - value(before, misses)
        assert value(after, hits) - value(before, hits) >= 1
        assert value(after, "memstream_embedding_requests_total") > value(
            before, "memstream_embedding_requests_total"
        )
        assert 0 == value(after, "memstream_publish_errors_total")
        # The searches reached the engine's process, which answers.
        assert 1 == value(after, "memstream_engine_up")
        assert 0 == value(after, "memstream_engine_restarts_total")
        assert value(after, "memstream_engine_searches_total") >= 2

        async def lag_zero() -> bool:
            found = await samples(base)
            return (
                "memstream_projection_lag",
                (("projection", "history"),),
            ) in found and 0 == value(found, "memstream_projection_lag", projection="history")

        await wait_for(lag_zero, 10, "the lag gauge")
        status, body = await fetch(f"{base}/healthz")
        assert (200, "alive") == (status, json.loads(body)["status"])
        status, body = await fetch(f"{base}/readyz")
        assert 200 == status, body
        ready = json.loads(body)
        assert {"ready": True, "reasons": []} == {
            k: v for k, v in ready.items() if k not in ("projections", "engine")
        }
        # The engine's own process, as the worker last asked it.
        assert ready["engine"]["up"] and ready["engine"]["rss_bytes"] > 0
        assert ready["engine"]["pid"] != os.getpid()


async def test_readyz_says_why_a_projection_is_not_applying(
    nc: NatsClient, nats_server: NatsServer, tmp_path: Path
) -> None:
    """An embedder that fails stalls the vectors: /readyz answers 503 with the reason,
    the health gauge says 0, and memstream status says the worker is not ready."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    env = {
        "MEMSTREAM_METRICS_PORT": "0",
        "MEMSTREAM_EMBEDDER": "openai",
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": dead,
        "MEMSTREAM_EMBEDDING_DIM": "64",
    }
    async with running(nats_server, tmp_path / "d", **env) as info:
        base = info.metrics_url
        await MemoryClient(nc, tenant="acme", agent="a").store_knowledge("stuck", domain="d")

        async def not_ready() -> bool:
            status, _ = await fetch(f"{base}/readyz")
            return status == 503

        await wait_for(not_ready, 30, "readyz to say not ready")
        _, body = await fetch(f"{base}/readyz")
        reasons = json.loads(body)["reasons"]
        assert any(r.startswith("the vectors projection is not applying") for r in reasons), reasons
        assert not any("history" in r for r in reasons)
        status, _ = await fetch(f"{base}/healthz")
        assert 200 == status  # alive, only not ready
        found = await samples(base)
        assert 0 == value(found, "memstream_projection_healthy", projection="vectors")
        assert 1 == value(found, "memstream_projection_healthy", projection="history")
        done = await asyncio.to_thread(run_cli, "status", "--nats-url", nats_server.url)
        assert 1 == done.returncode
        assert "NOT READY: the vectors projection is not applying" in done.stdout
