"""memstream.testing, as a user's test suite uses it: a real memstream for the block or
the module, stopped by its pid afterwards."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from memstream import SyncMemoryClient
from memstream.testing import (
    MemstreamNotStarted,
    RunningMemstream,
    memstream_client,
    memstream_server,
    running_memstream,
)
from tests.conftest import pid_alive

__all__ = ["memstream_client", "memstream_server"]  # the plugin's fixtures, used below


def test_the_context_manager_runs_a_memstream_and_stops_it() -> None:
    """Stored, then found; after the block the process and its nats-server are gone,
    and the temporary data dir with them."""
    with running_memstream() as ms:
        pids = [ms.process.pid, ms.info["nats_pid"]]
        assert not ms.url.endswith(":4222")
        with ms.sync_client(tenant="acme") as mem:
            ack = mem.store_knowledge("the cache is warmed at 6", domain="ops", memory_id="k")
            hits = mem.search("cache warmed", min_seq=ack.seq, wait_ms=20_000)
        data_dir = ms.data_dir
    assert ["k"] == [h.memory_id for h in hits]
    assert [False, False] == [pid_alive(p) for p in pids]
    assert not data_dir.exists()


def test_a_memstream_that_cannot_start_says_why() -> None:
    """The log's last words, not a hang."""
    with (
        pytest.raises(MemstreamNotStarted, match="no-such-option"),
        running_memstream(None, "--no-such-option"),
    ):
        pass


async def test_the_fixtures_hand_out_a_server_and_a_client(
    memstream_server: RunningMemstream, memstream_client: SyncMemoryClient
) -> None:
    """The blocking client is the module's memstream's; an async one comes from it too."""
    ack = memstream_client.store_knowledge("fixtures share one memstream", domain="d")
    async with await memstream_server.client() as mem:
        hits = await mem.search("fixtures share", min_seq=ack.seq, wait_ms=20_000)
    assert ["fixtures share one memstream"] == [h.text for h in hits]
    assert "test" == memstream_client.tenant


def test_the_callers_own_settings_do_not_leak_in(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A shell set up for the user's own memstream (its metrics port held, its data dir,
    its embedder) does not reach the test's memstream."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        monkeypatch.setenv("MEMSTREAM_METRICS_PORT", str(held.getsockname()[1]))
        monkeypatch.setenv("MEMSTREAM_DATA_DIR", str(tmp_path / "users"))
        monkeypatch.setenv("MEMSTREAM_EMBEDDER", "openai")
        with running_memstream() as ms:
            assert "hash" == ms.info["embedder"]["kind"]
            assert ms.info.get("metrics_url") is None
    assert not (tmp_path / "users").exists()
