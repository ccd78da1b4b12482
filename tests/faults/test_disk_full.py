"""The data dir's filesystem fills up while events arrive, then space comes back: every
acknowledged event ends up in both projections exactly once, and no storage failure is
ever filed as a dead letter."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumers.nats_server import NatsServer
from consumers.settings import load_settings
from consumers.storage import vector_storage_from_settings
from producers import MemoryClient
from schemas import events as ev
from tests.e2e.conftest import run_cli, start_up
from tests.waiting import wait_for


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 192 MB filesystem (tmpfs), mounted for the test and unmounted after."""
    path = tmp_path / "small"
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=192M", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def _fill(path: Path) -> Path:
    """Take every byte left on the filesystem, down to the last 4 KB block."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 16, 1 << 12):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    return filler


async def _publish(mem: MemoryClient, start: int, n: int) -> int:
    events = [
        mem.new_event(
            ev.KnowledgeStored,
            memory_id=f"m{i}",
            domain="d",
            content=f"fact number {i}: " + "something worth remembering " * 8,
        )
        for i in range(start, start + n)
    ]
    return (await mem.publish_many(events))[-1].seq


async def _health(mem: MemoryClient) -> dict[str, str]:
    return (await mem.stats(wait_ms=0)).health


async def test_a_full_disk_loses_nothing_acknowledged(
    nats_server: NatsServer, nc: object, small_fs: Path
) -> None:
    data = small_fs / "data"
    up = start_up(data, "--nats-url", nats_server.url)
    try:
        async with await MemoryClient.connect(nats_server.url, tenant="acme", agent="a1") as mem:
            seq = await _publish(mem, 0, 300)
            await mem.search("fact", min_seq=seq, wait_ms=60_000)
            filler = _fill(small_fs)
            last = await _publish(mem, 300, 1700)

            async def stalled() -> bool:
                return (await _health(mem)) != {"history": "ok", "vectors": "ok"}

            await wait_for(stalled, timeout=120, what="a projection reporting its disk full")
            filler.unlink()
            await mem.search("fact", min_seq=last, wait_ms=60_000)
            stats = await mem.stats(min_seq=last, wait_ms=60_000)
            assert {"history": "ok", "vectors": "ok"} == stats.health
            assert 0 == stats.dlq_count
    finally:
        assert 0 == up.stop(timeout=120)
    counted = run_cli(
        "sql", "--data-dir", str(data), "--format", "json",
        "SELECT count(*) AS n, count(DISTINCT memory_id) AS d FROM knowledge",
    )  # fmt: skip
    assert 0 == counted.returncode, counted.stderr
    assert [{"n": 2000, "d": 2000}] == json.loads(counted.stdout)
    storage = vector_storage_from_settings(load_settings({}, data_dir=str(data)))
    try:
        assert 2000 == storage.open_current().store.count("acme")
    finally:
        storage.close()
    letters = run_cli("dlq", "list", "--nats-url", nats_server.url, "--json")
    assert [] == json.loads(letters.stdout)
