"""memstream up supervises its embedded broker: killed, it is started again on the same
port and nothing acknowledged is lost; dying again and again, up stops with one line."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import nats.errors

from memstream.producers import MemoryClient
from memstream.schemas.errors import QueryError
from tests.e2e.conftest import Up, logs
from tests.waiting import wait_for, wait_for_sync


def _running(pid: int) -> bool:
    """Alive and not a zombie: a killed broker stays a zombie until up reaps it, and its
    ports file may still be there, so to os.kill(pid, 0) it looks alive."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def _broker_pid(data_dir: Path) -> int:
    """The running broker's pid, from its ports file (0 while there is none)."""
    for ports in (data_dir / "nats" / "run").glob("*.ports"):
        pid = int(ports.stem.rsplit("_", 1)[1])
        if _running(pid):
            return pid
    return 0


async def _stream_back(mem: MemoryClient) -> bool:
    try:
        await mem.nc.jetstream().stream_info("MEMORY")
    except (nats.errors.Error, OSError):
        return False
    return True


def _serving(url: str) -> bool:
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.5) as sock:
            return sock.recv(5) == b"INFO "
    except OSError:
        return False


def _kill_broker(up: Up, old: int) -> int:
    """SIGKILL the broker, then wait for the one that replaces it to serve; its pid."""
    data_dir = Path(up.info["data_dir"])
    os.kill(old, signal.SIGKILL)
    wait_for_sync(
        lambda: _broker_pid(data_dir) not in (0, old) and _serving(up.url),
        what="the broker restarted",
    )
    return _broker_pid(data_dir)


async def test_a_killed_broker_is_restarted_and_nothing_is_lost(up: Up) -> None:
    """Kill -9 the embedded nats-server: up starts it again on the same URL, the SDK
    reconnects, and every event acknowledged before and after is projected."""
    async with await MemoryClient.connect(up.url, tenant="acme", agent="a1") as mem:
        before = await mem.store_knowledge("before the crash", domain="d")
        await mem.search("crash", min_seq=before.seq, wait_ms=30_000)
        await asyncio.to_thread(_kill_broker, up, up.info["nats_pid"])
        await wait_for(lambda: mem.nc.is_connected, what="the SDK reconnected")
        await wait_for(lambda: _stream_back(mem), what="JetStream recovered the stream")
        after = await mem.store_knowledge("after the crash", domain="d")

        async def both_projected() -> bool:
            # memstream's own connection reconnects on its own schedule: until it has,
            # no worker answers.
            try:
                stats = await mem.stats(min_seq=after.seq, wait_ms=1000)
            except QueryError as err:
                if err.code in ("unavailable", "not_caught_up"):
                    return False
                raise
            return 2 == stats.events_by_type["knowledge.stored"]

        await wait_for(both_projected, what="both events projected")
    assert up.process.poll() is None


def test_a_broker_that_keeps_dying_stops_up_with_one_line(up: Up) -> None:
    """Past three restarts within a minute, up stops: status 1, one line naming the
    broker's log."""
    data = Path(up.info["data_dir"])
    pid = up.info["nats_pid"]
    for _ in range(3):
        pid = _kill_broker(up, pid)
    os.kill(pid, signal.SIGKILL)
    assert 1 == up.process.wait(60)
    lines = [line for line in logs(up.process).splitlines() if "error:" in line]
    assert 1 == len(lines)
    assert "nats-server died 4 times within 60 s; memstream stopped" in lines[0]
    assert str(data / "nats" / "nats.log") in lines[0]
