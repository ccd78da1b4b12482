"""replay, sql and dlq from the command line, with memstream up running and without."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import nats

from tests.conftest import pid_alive
from tests.e2e.conftest import Up, run_cli, start_up
from tests.waiting import wait_for_sync


def _publish_raw(url: str, items: list[tuple[str, bytes]]) -> None:
    async def go() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        for subject, body in items:
            await js.publish(subject, body)
        await nc.close()

    asyncio.run(go())


def _sql(up: Up | None, data_dir: Path, query: str) -> list[dict[str, object]]:
    args = ["sql", "--data-dir", str(data_dir), "--format", "json", query]
    if up is not None:
        args += ["--nats-url", up.url]
    result = run_cli(*args)
    assert 0 == result.returncode, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _remember(url: str, n: int) -> None:
    for i in range(n):
        result = run_cli(
            "remember", "--nats-url", url, "-t", "acme", "-a", "a1", "-d", "ops", f"fact number {i}"
        )
        assert 0 == result.returncode, result.stderr


def test_replay_and_sql_through_the_running_process(tmp_path: Path) -> None:
    """With up running: sql reads the live database, replay rebuilds and swaps it in."""
    data_dir = tmp_path / "data"
    up = start_up(data_dir)
    try:
        _remember(up.url, 3)

        def projected() -> bool:
            return [{"n": 3}] == _sql(up, data_dir, "SELECT count(*) AS n FROM knowledge")

        wait_for_sync(projected, what="three memories projected")
        before = sorted(p.name for p in (data_dir / "history").glob("*.duckdb"))
        result = run_cli(
            "replay", "history", "--nats-url", up.url, "--data-dir", str(data_dir), "--json"
        )
        assert 0 == result.returncode, result.stderr
        report = json.loads(result.stdout)
        assert (3, 3) == (report["events"], report["last_seq"])
        after = sorted(p.name for p in (data_dir / "history").glob("*.duckdb"))
        assert 1 == len(after) and after != before
        vectors = run_cli(
            "replay", "vectors", "--nats-url", up.url, "--data-dir", str(data_dir), "--json"
        )
        assert 0 == vectors.returncode, vectors.stderr
        assert 3 == json.loads(vectors.stdout)["events"]
        # Still serving, from the rebuilt file, and still ingesting.
        _remember(up.url, 1)
        wait_for_sync(
            lambda: [{"n": 4}] == _sql(up, data_dir, "SELECT count(*) AS n FROM events"),
            what="ingest continued after the swap",
        )
        refused = run_cli(
            "sql", "--nats-url", up.url, "--data-dir", str(data_dir), "DELETE FROM events"
        )
        assert 2 == refused.returncode
        assert "read-only: it runs SELECT and EXPLAIN, not DELETE" in refused.stderr
    finally:
        assert 0 == up.stop(signal.SIGTERM)
    # With nothing running, sql opens the file itself.
    assert [{"n": 4}] == _sql(None, data_dir, "SELECT count(*) AS n FROM events")


def test_offline_replay_starts_a_broker_over_the_data_dir(tmp_path: Path) -> None:
    """With nothing running, replay opens the stream under the data dir and stops it again."""
    data_dir = tmp_path / "data"
    up = start_up(data_dir)
    _remember(up.url, 5)
    wait_for_sync(
        lambda: [{"n": 5}] == _sql(up, data_dir, "SELECT count(*) AS n FROM events"),
        what="projected",
    )
    nats_pid = up.info["nats_pid"]
    assert 0 == up.stop(signal.SIGTERM)
    assert not pid_alive(nats_pid)
    result = run_cli(
        "replay",
        "history",
        "--data-dir",
        str(data_dir),
        "--nats-url",
        "nats://127.0.0.1:1",
        "--json",
    )
    assert 1 == result.returncode  # an explicit URL that is down is an error, not a guess
    assert "cannot reach NATS at nats://127.0.0.1:1" in result.stderr
    result = run_cli(
        "replay", "history", "--data-dir", str(data_dir), "--json", env={"MEMSTREAM_NATS_URL": ""}
    )
    assert 0 == result.returncode, result.stderr
    assert 5 == json.loads(result.stdout)["events"]
    assert [{"n": 5}] == _sql(None, data_dir, "SELECT count(*) AS n FROM events")
    vectors = run_cli(
        "replay", "vectors", "--data-dir", str(data_dir), "--json", env={"MEMSTREAM_NATS_URL": ""}
    )
    assert 0 == vectors.returncode, vectors.stderr
    assert 5 == json.loads(vectors.stdout)["events"]
    shards = sorted(p.name for p in (data_dir / "vectors").glob("shard-*"))
    assert 1 == len(shards), f"the replaced generation was not deleted: {shards}"


def test_dlq_list_and_retry(up: Up) -> None:
    """Dead letters are listed with their reason; retry publishes them again."""
    envelope = {
        "id": "dl-1",
        "tenant": "acme",
        "agent": "a",
        "ts": "2026-11-21T12:00:00Z",
        "type": "task.started",
    }
    _publish_raw(up.url, [
        ("mem.acme.task.started", b"garbage"),
        ("mem.acme.task.started", json.dumps(envelope).encode()),  # no task_id
    ])  # fmt: skip

    def letters() -> list[dict[str, object]]:
        """The history projection's letters (the vectors projection files its own)."""
        listing = run_cli("dlq", "list", "--nats-url", up.url, "--json")
        assert 0 == listing.returncode, listing.stderr
        every = json.loads(listing.stdout)
        return [d for d in every if str(d["subject"]).startswith("memdlq.history.")]

    wait_for_sync(lambda: len(letters()) == 2, what="two dead letters")
    got = letters()
    assert ["mem.acme.task.started"] * 2 == [d["source_subject"] for d in got]
    assert "event is not valid JSON" in str(got[0]["error"])
    assert "missing required field `task_id`" in str(got[1]["error"])
    table = run_cli("dlq", "list", "--nats-url", up.url)
    assert "history" in table.stdout and "source seq" in table.stdout
    retried = run_cli("dlq", "retry", "--nats-url", up.url, "--seq", str(got[0]["seq"]))
    assert 0 == retried.returncode, retried.stderr
    assert "retried 1 dead letter" in retried.stdout
    # Still bad, so it comes back as a new dead letter; the other one was not touched.
    wait_for_sync(
        lambda: len(letters()) == 2 and letters()[0]["seq"] != got[0]["seq"],
        what="the retried letter dead-lettered again",
    )
