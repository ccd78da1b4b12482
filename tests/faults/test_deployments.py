"""Two deployments on one machine, and a second process started by mistake: nothing acts
on the wrong data, and what is refused is refused before anything is touched."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from memstream.producers import MemoryClient
from memstream.schemas import events as ev
from tests.conftest import pid_alive
from tests.e2e.conftest import Up, run_cli, spawn_ready, start_up
from tests.waiting import wait_for_sync


def _acme_events(url: str, tenant: str, n: int = 3) -> int:
    seq = 0
    for i in range(n):
        result = run_cli(
            "remember", "--nats-url", url, "-t", tenant, "-a", "a1", "-d", "d", f"fact {i}",
            "--json",
        )  # fmt: skip
        assert 0 == result.returncode, result.stderr
        seq = json.loads(result.stdout)["seq"]
    return int(seq)


def _count(up: Up, tenant: str, seq: int) -> int:
    result = run_cli("stats", "--nats-url", up.url, "-t", tenant, "--min-seq", str(seq), "--json")
    assert 0 == result.returncode, result.stderr
    return int(sum(json.loads(result.stdout)["events_by_type"].values()))


@pytest.fixture
def stopped(tmp_path: Path) -> Path:
    """A second deployment with globex's events in it, not running."""
    data = tmp_path / "stopped"
    other = start_up(data)
    try:
        _acme_events(other.url, "globex")
    finally:
        other.stop()
    return data


def test_a_second_up_on_the_same_data_dir_is_refused(up: Up, tmp_path: Path) -> None:
    """One line naming the running process, status 2; the first keeps serving, its broker
    configuration and ports file as they were."""
    data = Path(up.info["data_dir"])
    conf = (data / "nats" / "nats.conf").read_text()
    seq = _acme_events(up.url, "acme", 1)
    second = run_cli("up", "--nats-port", "0", "--data-dir", str(data))
    assert 2 == second.returncode
    (line,) = second.stderr.splitlines()
    assert f"already running on {data} (pid {up.process.pid}, NATS {up.url})" in line
    assert conf == (data / "nats" / "nats.conf").read_text()
    assert pid_alive(up.info["nats_pid"])
    assert 1 == _count(up, "acme", seq)


def test_serve_on_a_data_dir_in_use_is_refused(up: Up) -> None:
    """serve --role history on up's data dir: one line, no DuckDB or Qdrant traceback."""
    data = up.info["data_dir"]
    result = run_cli("serve", "--role", "history", "--nats-url", up.url, "--data-dir", data)
    assert 2 == result.returncode
    (line,) = result.stderr.splitlines()
    assert line.startswith("memstream: error: memstream (") and "already running on" in line


def test_commands_for_a_stopped_deployment_leave_the_running_one_alone(
    up: Up, stopped: Path
) -> None:
    """purge and replay with --data-dir of the stopped deployment act on it, never on the
    one running, and say which data dir they acted on."""
    seq = _acme_events(up.url, "globex")
    purge = run_cli("tenant", "purge", "globex", "--yes", "--data-dir", str(stopped), "--json")
    assert 0 == purge.returncode, purge.stderr
    report = json.loads(purge.stdout)
    assert ([str(stopped)], 3) == (report["data_dirs"], report["stream_messages"])
    replay = run_cli("replay", "history", "--data-dir", str(stopped), "--json")
    assert 0 == replay.returncode, replay.stderr
    assert str(stopped) == json.loads(replay.stdout)["data_dir"]
    assert 3 == _count(up, "globex", seq)


def test_a_request_for_another_deployment_is_refused(up: Up, stopped: Path) -> None:
    """With the running deployment's NATS in the environment and --data-dir of another,
    the running memstream refuses: one line naming where it runs, and nothing purged."""
    seq = _acme_events(up.url, "globex")
    env = {**os.environ, "MEMSTREAM_NATS_URL": up.url}
    purge = run_cli("tenant", "purge", "globex", "--yes", "--data-dir", str(stopped), env=env)
    assert 2 == purge.returncode
    (line,) = purge.stderr.splitlines()
    assert f"serves {up.info['data_dir']} (deployment " in line
    assert 3 == _count(up, "globex", seq)


async def _publish_turns(url: str, n: int) -> int:
    async with await MemoryClient.connect(url, tenant="acme", agent="a1") as mem:
        events = [
            mem.new_event(ev.ConversationTurn, session_id="s", role="user", content=f"turn {i}")
            for i in range(n)
        ]
        acks = await mem.publish_many(events)
        return acks[-1].seq


def _events_in(data_dir: Path, seq: int) -> tuple[int, int]:
    """(events, distinct ids) in a running deployment's history, once it applied seq."""
    query = f"SELECT count(*) AS n, count(DISTINCT id) AS d FROM events WHERE seq <= {seq}"

    def applied() -> bool:
        result = run_cli("sql", "--data-dir", str(data_dir), "--format", "json",
                         "SELECT max(seq) AS m FROM events")  # fmt: skip
        assert 0 == result.returncode, result.stderr
        return (json.loads(result.stdout)[0]["m"] or 0) >= seq

    wait_for_sync(applied, timeout=60, what=f"{data_dir} applied seq {seq}")
    result = run_cli("sql", "--data-dir", str(data_dir), "--format", "json", query)
    assert 0 == result.returncode, result.stderr
    row = json.loads(result.stdout)[0]
    return int(row["n"]), int(row["d"])


def test_a_second_instance_with_its_own_data_dir_is_a_full_replica(up: Up, tmp_path: Path) -> None:
    """serve --role history beside up, on another data dir: each owns its durable
    consumer, so both end with every event, once (they used to split one consumer)."""
    replica, _ = spawn_ready(
        ["serve", "--role", "history", "--data-dir", str(tmp_path / "replica")],
        {"MEMSTREAM_NATS_URL": up.url},
    )
    try:
        last = asyncio.run(_publish_turns(up.url, 3000))
        assert (3000, 3000) == _events_in(Path(up.info["data_dir"]), last)
        assert (3000, 3000) == _events_in(tmp_path / "replica", last)
    finally:
        replica.send_signal(signal.SIGTERM)
        assert 0 == replica.wait(60)
